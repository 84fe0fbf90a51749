"""The oldest setuptools that pyproject.toml admits builds Sabot and prints no warning: the
lower bound of [build-system] requires is a tested claim, like the current one (test_wheel)."""

import re
import sys

import pytest
from packaging_helpers import BUILD_TIMEOUT, REPO, build_warnings, pyproject, run, tool_env, wheel_files

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]


def test_oldest_allowed_setuptools_builds_quietly(scratch):
    requirement = next(r for r in pyproject()["build-system"]["requires"] if r.startswith("setuptools"))
    oldest = re.search(r">=([\d.]+)", requirement)[1]
    constraints = scratch / "constraints.txt"
    constraints.write_text(f"setuptools=={oldest}\n")
    out = scratch / "dist"
    proc = run([sys.executable, "-m", "build", "--outdir", out, REPO], timeout=BUILD_TIMEOUT,
               env=tool_env(PIP_CONSTRAINT=str(constraints), SABOT_ONLY="graph"))
    log = proc.stdout + proc.stderr
    assert f"setuptools=={oldest}" in log
    assert not build_warnings(log), "\n".join(build_warnings(log))
    (wheel,) = out.glob("*.whl")
    assert any(f.startswith("sabot/_core/graph.") and f.endswith(".so") for f in wheel_files(wheel))

"""The sdist: it carries what a build needs and no generated files, and ``pip install`` of
it builds Sabot from scratch in a fresh virtualenv, on every supported Python.
"""

import re
import shutil
import tarfile

import pytest
from packaging_helpers import (
    EXAMPLE,
    REPO,
    RUN_TIMEOUT,
    Venv,
    check_fraud_output,
    extra_requirements,
    find_python,
    run_suite_slice,
    sdist_files,
    source_version,
    supported_pythons,
    unavailable,
)

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1800)]


def test_sdist_holds_what_a_build_needs(built):
    files = set(sdist_files(built.sdist))
    core = {p.name for p in (REPO / "sabot" / "_core").iterdir() if p.suffix in (".pyx", ".pxd", ".pxi", ".pyi", ".py")}
    assert {f"sabot/_core/{name}" for name in core} <= files
    assert {p.relative_to(REPO).as_posix() for p in (REPO / "sabot").rglob("*.py")} <= files
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "PKG-INFO",
            "examples/fraud_detection.py", "docs/hash.md", "tests/conftest.py"} <= files
    # the dashboard's static files (served by the coordinator)
    assert {f"sabot/cluster/dashboard/{name}" for name in ("index.html", "login.html", "app.js", "style.css")} <= files
    # what the README's commands point to travels with it
    assert {p.relative_to(REPO).as_posix() for p in (REPO / "tests" / "_core").glob("*.py")} <= files


def test_sdist_holds_no_generated_or_built_files(built):
    # this checkout may hold an in-place build (pip install -e . puts .c/.cpp/.so beside the sources)
    # (Cython's annotated .html beside the core; the dashboard's .html are product files)
    generated = [f for f in sdist_files(built.sdist)
                 if re.search(r"\.(c|cpp|so|o|pyc)$|^sabot/_core/.*\.html$|(^|/)(build|__pycache__|\.ci|bench)/", f)]
    assert not generated


def test_sdist_metadata(built):
    with tarfile.open(built.sdist) as t:
        top = t.getnames()[0].split("/")[0]
        pkg_info = t.extractfile(f"{top}/PKG-INFO").read().decode()
    assert top == f"sabot-{source_version()}"
    assert re.search(r"^License-Expression: Apache-2.0$", pkg_info, re.M)
    assert re.search(r"^License-File: LICENSE$", pkg_info, re.M)
    for version in supported_pythons():
        assert f"Classifier: Programming Language :: Python :: {version}\n" in pkg_info


@pytest.fixture(scope="module", params=supported_pythons(), ids=lambda v: f"python{v}")
def sdist_installed(request, built, scratch_root):
    """``pip install`` of the sdist into a fresh virtualenv of each supported Python: a build
    from scratch (pip fetches setuptools, Cython and numpy into an isolated environment)."""
    python = find_python(request.param)
    if python is None:
        unavailable(f"no Python {request.param} interpreter with venv found on this machine")
    root = scratch_root / f"sdist-python{request.param}"
    root.mkdir()
    venv = Venv(root / "venv", python=python)
    workdir = root / "work"
    workdir.mkdir()
    venv.pip_install(built.sdist, cwd=workdir)
    venv.pip_install(*extra_requirements("pytest", "pytest-timeout", "hypothesis"), cwd=workdir)
    # the sdist's own copy of the tests is what runs against the installed package
    with tarfile.open(built.sdist) as t:
        t.extractall(root / "unpacked", filter="data")
    unpacked = next((root / "unpacked").iterdir())
    yield request.param, venv, workdir, unpacked
    venv.kill_leftovers()
    shutil.rmtree(root, ignore_errors=True)


def test_sdist_install_imports_the_compiled_core(sdist_installed):
    version, venv, workdir, _ = sdist_installed
    out = venv.run([venv.python, "-c", "import sys, sabot, sabot._core as c; c.check(); "
                    "print(sys.version_info[:2], sabot.__file__, sabot.__version__)"], cwd=workdir).stdout
    assert f"({version.replace('.', ', ')})" in out
    assert str(venv.path) in out and source_version() in out
    printed = venv.run(["sabot", "--version"], cwd=workdir).stdout.strip()
    assert printed == f"sabot {source_version()}"


def test_sdist_install_runs_the_readme_example(sdist_installed, fraud_expected):
    _, venv, workdir, unpacked = sdist_installed
    shutil.copy(unpacked / "examples" / EXAMPLE.name, workdir / EXAMPLE.name)
    proc = venv.run(["sabot", "run", EXAMPLE.name, "--workers", "2"], cwd=workdir, timeout=RUN_TIMEOUT)
    assert re.search(r"job \w+ FINISHED", proc.stderr), proc.stderr
    check_fraud_output(proc.stdout, fraud_expected)


def test_suite_slice_passes_against_the_sdist_install(sdist_installed):
    _, venv, workdir, unpacked = sdist_installed
    run_suite_slice(venv, unpacked / "tests", workdir)

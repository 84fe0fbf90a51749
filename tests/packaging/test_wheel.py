"""The wheel: built by ``python -m build`` (from the sdist), lean, stripped, repaired to a
manylinux tag, and working when installed into a fresh virtualenv with no checkout in sight.
"""

import io
import json
import re
import shutil
import zipfile
from pathlib import PurePosixPath

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from packaging_helpers import (
    EXAMPLE,
    REPO,
    RUN_TIMEOUT,
    Venv,
    build_warnings,
    check_fraud_output,
    extra_requirements,
    run_suite_slice,
    sdist_files,
    source_version,
    wheel_files,
)

from sabot._core import COMPILED_MODULES

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1800)]

# Cython sources: in the sdist, not in the wheel (which has the compiled modules)
SOURCE_ONLY = re.compile(r"^sabot/_core/[^/]+\.(pyx|pxi)$")


def test_build_prints_no_deprecation_or_setuptools_warning(built):
    noisy = build_warnings(built.log)
    assert not noisy, "\n".join(noisy)
    # and it was a current setuptools that said nothing
    used = re.search(r"setuptools==(\d+)\.", built.log)
    assert used and int(used[1]) >= 80, f"build used setuptools {used and used[0]}"


def test_wheel_holds_the_package_and_nothing_else(built):
    files = wheel_files(built.wheel)
    package = [f for f in files if f.startswith("sabot/")]
    # every file of the package the sdist carries (modules, .pxd/.pyi, data files), less the sources...
    expected = {f for f in sdist_files(built.sdist) if f.startswith("sabot/") and not SOURCE_ONLY.match(f)}
    compiled = {f for f in package if f.endswith(".so")}
    assert set(package) - compiled == expected
    # ...plus one shared object per compiled module
    assert sorted(PurePosixPath(f).name.split(".")[0] for f in compiled) == sorted(COMPILED_MODULES)
    assert all(f.startswith("sabot/_core/") for f in compiled)
    leftovers = [f for f in files
                 if re.search(r"\.(c|cpp|h|o|pyx|pxi|pyc)$|^sabot/_core/.*\.html$|(^|/)(build|__pycache__)/", f)]
    assert not leftovers
    for name in COMPILED_MODULES:
        assert f"sabot/_core/{name}.pxd" in files and f"sabot/_core/{name}.pyi" in files
    # the package is all that is installed besides its metadata
    assert {f.split("/")[0] for f in files} == {"sabot", f"sabot-{source_version()}.dist-info"}


def test_wheel_metadata(built):
    with zipfile.ZipFile(built.wheel) as z:
        dist_info = f"sabot-{source_version()}.dist-info"
        metadata = z.read(f"{dist_info}/METADATA").decode()
        license_text = z.read(f"{dist_info}/licenses/LICENSE").decode()
    assert re.search(rf"^Version: {re.escape(source_version())}$", metadata, re.M)
    assert re.search(r"^License-Expression: Apache-2.0$", metadata, re.M)
    assert not re.search(r"^Classifier: License ::", metadata, re.M)  # PEP 639: the expression replaces them
    assert re.search(r"^Requires-Python: >=3\.11$", metadata, re.M)
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text


def _elf(data):
    elf = ELFFile(io.BytesIO(data))
    sections = [s.name for s in elf.iter_sections()]
    dynamic = next((s for s in elf.iter_sections() if isinstance(s, DynamicSection)), None)
    tags = [t.entry.d_tag for t in dynamic.iter_tags()] if dynamic is not None else []
    return sections, tags


def test_shared_objects_are_stripped_and_point_nowhere(built, manylinux_wheel):
    for wheel in (built.wheel, manylinux_wheel):
        with zipfile.ZipFile(wheel) as z:
            objects = [n for n in z.namelist() if n.endswith(".so")]
            assert len(objects) == len(COMPILED_MODULES)
            for name in objects:
                sections, tags = _elf(z.read(name))
                assert not [s for s in sections if s.startswith(".debug") or s in (".symtab", ".strtab")], \
                    f"{wheel.name}: {name} has debug or symbol sections: {sections}"
                # no RPATH/RUNPATH into the build machine's directories
                assert "DT_RPATH" not in tags and "DT_RUNPATH" not in tags, f"{name}: {tags}"


def test_manylinux_wheel_is_lean(built, manylinux_wheel):
    # nothing grafted (no sabot.libs/): the modules need only libc, libstdc++ and libgcc_s,
    # which every manylinux system provides
    assert set(wheel_files(manylinux_wheel)) == set(wheel_files(built.wheel))
    size_mb = manylinux_wheel.stat().st_size / 1e6
    assert size_mb < 2.5, f"{manylinux_wheel.name} is {size_mb:.2f} MB"


def test_readme_states_the_wheel_size_and_tag(manylinux_wheel):
    readme = (REPO / "README.md").read_text()
    stated = re.search(r"manylinux wheel[^.]*? is about ([\d.]+) MB", readme)
    assert stated, "the README states the wheel's size ('... manylinux wheel ... is about N MB')"
    size_mb = manylinux_wheel.stat().st_size / 1e6
    assert size_mb == pytest.approx(float(stated[1]), rel=0.25), f"the wheel is {size_mb:.2f} MB"
    tag = re.search(r"-(manylinux_\w+)\.whl$", manylinux_wheel.name)[1]
    assert f"tagged `{tag}`" in " ".join(readme.split()), f"the wheel built here is tagged {tag}"


# -- installed into a fresh virtualenv, run from an empty directory ------------------------------


@pytest.fixture(scope="module")
def installed(manylinux_wheel, scratch_root):
    """A fresh virtualenv with the manylinux wheel (and pytest), and an empty working directory."""
    root = scratch_root / "wheel-install"
    root.mkdir()
    venv = Venv(root / "venv")
    venv.pip_install(manylinux_wheel, *extra_requirements("pytest", "pytest-timeout", "hypothesis"))
    workdir = root / "work"
    workdir.mkdir()
    yield venv, workdir
    venv.kill_leftovers()
    shutil.rmtree(root, ignore_errors=True)


def test_installed_wheel_imports_from_site_packages_only(installed):
    venv, workdir = installed
    probe = ("import json, sys, sabot, sabot._core; sabot._core.check(); "
             "print(json.dumps({'file': sabot.__file__, 'path': sys.path, 'version': sabot.__version__}))")
    info = json.loads(venv.run([venv.python, "-c", probe], cwd=workdir).stdout)
    assert info["file"].startswith(str(venv.path) + "/"), info["file"]
    assert not [p for p in info["path"] if p.startswith(str(REPO))], info["path"]
    assert info["version"] == source_version()


def test_installed_sabot_version(installed):
    venv, workdir = installed
    printed = venv.run(["sabot", "--version"], cwd=workdir).stdout.strip()
    metadata = venv.run([venv.python, "-c", "import importlib.metadata as m; print(m.version('sabot'))"],
                        cwd=workdir).stdout.strip()
    assert printed == f"sabot {source_version()}" == f"sabot {metadata}"


def test_installed_wheel_runs_the_readme_example(installed, fraud_expected):
    venv, workdir = installed
    shutil.copy(EXAMPLE, workdir / EXAMPLE.name)
    proc = venv.run(["sabot", "run", EXAMPLE.name, "--workers", "2"], cwd=workdir, timeout=RUN_TIMEOUT)
    assert re.search(r"job \w+ FINISHED", proc.stderr), proc.stderr
    check_fraud_output(proc.stdout, fraud_expected)


def test_suite_slice_passes_against_the_installed_wheel(installed):
    venv, workdir = installed
    run_suite_slice(venv, REPO / "tests", workdir)

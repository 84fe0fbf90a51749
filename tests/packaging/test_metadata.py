"""Packaging facts that need no build: one version, the license, the supported Pythons.

Not marked ``packaging``: these run in a second and belong in every run.
"""

import re
import subprocess
import sys

import pytest
from packaging_helpers import REPO, pyproject, source_version, supported_pythons

import sabot
from sabot.cli import main


def test_version_is_written_once():
    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert pyproject()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sabot._version.__version__"}
    assert sabot.__version__ == source_version()
    # no other file of the package spells the version out
    spelled = [p for p in (REPO / "sabot").rglob("*.py")
               if p.name != "_version.py" and re.search(r"__version__\s*=", p.read_text())]
    assert not spelled


def test_sabot_version_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"sabot {source_version()}"
    proc = subprocess.run([sys.executable, "-m", "sabot.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"sabot {source_version()}"


def test_license_is_an_spdx_expression_with_its_text():
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # PEP 639 forbids both
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_supported_pythons_agree_with_requires_python_and_the_readme():
    versions = supported_pythons()
    assert versions and versions[0] == "3.11"
    assert pyproject()["project"]["requires-python"] == f">={versions[0]}"
    assert "%d.%d" % sys.version_info[:2] in versions  # the Python running the tests is one of them
    listed = ", ".join(versions[:-1]) + " and " + versions[-1]
    assert f"Python {listed}" in (REPO / "README.md").read_text()


def test_build_requires_a_setuptools_that_reads_spdx_licenses():
    requires = pyproject()["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    assert re.fullmatch(r"setuptools>=77\.0\.3,<\d+", setuptools), setuptools
    build_ext_sh = (REPO / "build_ext.sh").read_text()
    assert f'"{setuptools}"' in build_ext_sh  # the in-place build installs the same one

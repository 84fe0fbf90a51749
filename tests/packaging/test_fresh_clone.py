"""The README's first command, literally, from the root of a fresh clone in a fresh virtualenv
(issue 10): ``pip install . && sabot run examples/fraud_detection.py --workers 2``.
"""

import re
import shutil

import pytest
from packaging_helpers import BUILD_TIMEOUT, REPO, Venv, check_fraud_output, run, unavailable

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1800)]


def readme_first_command():
    """The first command of the README's "Two commands" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S)[1].strip()


def test_readme_first_command_from_a_fresh_clone(scratch, fraud_expected):
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        unavailable("needs git and a git checkout to clone")
    command = readme_first_command()
    assert command == "pip install . && sabot run examples/fraud_detection.py --workers 2"
    clone = scratch / "clone"
    run(["git", "clone", "--quiet", REPO, clone], timeout=300)
    venv = Venv(scratch / "venv")
    try:
        proc = venv.run(["bash", "-c", command], cwd=clone, timeout=BUILD_TIMEOUT, check=False)
    finally:
        venv.kill_leftovers()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Successfully installed" in proc.stdout and "sabot-" in proc.stdout
    assert re.search(r"job \w+ FINISHED", proc.stderr), proc.stderr[-3000:]
    check_fraud_output(proc.stdout, fraud_expected)

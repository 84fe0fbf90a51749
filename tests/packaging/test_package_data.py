"""Non-Python files anywhere under sabot/ ship in the sdist and the wheel without a packaging
change (a dashboard's static files, SQL files...), and build leftovers in the tree do not.

The files are fixtures written into a copy of the sources, never product files.
"""

import shutil
import sys

import pytest
from packaging_helpers import BUILD_TIMEOUT, REPO, run, sdist_files, tool_env, wheel_files

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]

DATA_FILES = {
    # a folder without __init__.py under an existing package, several levels down
    "sabot/cluster/dashboard/static/index.html": "<!doctype html><title>fixture</title>\n",
    "sabot/cluster/dashboard/static/app.js": "console.log('fixture');\n",
    "sabot/cluster/dashboard/static/style.css": "body { margin: 0 }\n",
    # a new subpackage with a data folder
    "sabot/nexmark/__init__.py": "",
    "sabot/nexmark/sql/q1.sql": "SELECT 1; -- fixture\n",
    # a data file beside modules
    "sabot/execution/fixture.json": "{}\n",
}

LEFTOVERS = {
    # what in-place and debug builds leave beside the sources
    "sabot/_core/graph.c": "/* stale generated C */\n",
    "sabot/_core/slots.cpp": "/* stale generated C++ */\n",
    "sabot/_core/graph.html": "<html>annotation</html>\n",
    "sabot/_core/stale.cpython-311-x86_64-linux-gnu.so": "not an ELF file\n",
    "sabot/__pycache__/errors.cpython-311.pyc": "bytecode\n",
}


def test_data_files_ship_and_leftovers_do_not(scratch):
    source = scratch / "src"
    shutil.copytree(REPO / "sabot", source / "sabot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.cpp", "*.html"))
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name, text in {**DATA_FILES, **LEFTOVERS}.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    out = scratch / "dist"
    # one small module is enough to make a real wheel from the sdist
    run([sys.executable, "-m", "build", "--outdir", out, source], timeout=BUILD_TIMEOUT,
        env=tool_env(SABOT_ONLY="graph"))
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    in_sdist, in_wheel = set(sdist_files(sdist)), set(wheel_files(wheel))
    assert set(DATA_FILES) <= in_sdist
    assert set(DATA_FILES) <= in_wheel
    assert not set(LEFTOVERS) & in_sdist
    assert not set(LEFTOVERS) & in_wheel
    compiled = [f for f in in_wheel if f.endswith(".so")]
    assert len(compiled) == 1 and compiled[0].startswith("sabot/_core/graph.cpython-")  # SABOT_ONLY=graph

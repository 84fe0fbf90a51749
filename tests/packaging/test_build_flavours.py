"""./build_ext.sh, SABOT_ONLY and SABOT_DEBUG=1 after the packaging changes: a release build
has no debug symbols, a debug build has them (and the annotated HTML), and switching back
to release regenerates the C instead of compiling the debug one.
"""

import io
import shutil

import pytest
from elftools.elf.elffile import ELFFile
from packaging_helpers import BUILD_TIMEOUT, REPO, Venv

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(1200)]


def _sections(path):
    return {s.name for s in ELFFile(io.BytesIO(path.read_bytes())).iter_sections()}


def test_build_ext_sh_release_debug_release(scratch):
    source = scratch / "src"
    shutil.copytree(REPO / "sabot", source / "sabot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.cpp", "*.html"))
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "build_ext.sh"):
        shutil.copy(REPO / name, source / name)
    venv = Venv(scratch / "venv")
    core = source / "sabot" / "_core"

    def build(**env):
        venv.run(["bash", source / "build_ext.sh"], cwd=source, timeout=BUILD_TIMEOUT, SABOT_ONLY="graph", **env)
        objects = sorted(core.glob("*.so"))
        assert [p.name.split(".")[0] for p in objects] == ["graph"]  # SABOT_ONLY
        return _sections(objects[0])

    release = build()
    assert not {s for s in release if s.startswith(".debug")} and ".symtab" not in release
    debug = build(SABOT_DEBUG="1")
    assert {".debug_info", ".debug_line", ".symtab"} <= debug
    assert (core / "graph.html").exists()
    assert "__Pyx_TraceLine(" in (core / "graph.c").read_text()
    release = build()
    assert not {s for s in release if s.startswith(".debug")} and ".symtab" not in release
    assert "__Pyx_TraceLine(" not in (core / "graph.c").read_text()

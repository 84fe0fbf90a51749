"""No silent pure-Python fallback: a missing compiled module fails the import, saying how to build."""

import subprocess
import sys


def test_missing_compiled_module_fails_import_with_build_instructions():
    code = (
        "import sys; sys.modules['sabot._core.partition'] = None\n"
        "try:\n"
        "    import sabot\n"
        "except ImportError as exc:\n"
        "    print('IMPORT-ERROR:', exc)\n"
        "else:\n"
        "    print('IMPORTED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "IMPORT-ERROR:" in out.stdout, out.stdout + out.stderr
    assert "sabot._core.partition" in out.stdout
    assert "build_ext.sh" in out.stdout and "pip install ." in out.stdout

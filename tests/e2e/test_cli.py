"""The ``sabot`` command: help everywhere, run, job submit/list/status/cancel, coordinator + worker processes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from sabot.cli import build_parser, format_table, load_target, main

pytestmark = pytest.mark.timeout(120)

COMMANDS = [[], ["coordinator"], ["worker"], ["cluster"], ["cluster", "start"], ["run"], ["job"],
            ["job", "submit"], ["job", "list"], ["job", "status"], ["job", "cancel"], ["sql"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "sabot")
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command + ["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sabot") and ("--help" in out or "-h" in out)


def test_every_subcommand_is_covered():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {c[0] for c in COMMANDS if c}


JOB_FILE = textwrap.dedent(
    """
    import pyarrow as pa
    from sabot.api.stream import Stream

    table = pa.table({"key": [i % 5 for i in range(1000)], "value": [float(i) for i in range(1000)]})

    def double(batch):
        return batch.set_column(1, "value", pa.compute.multiply(batch.column("value"), 2.0))

    pipeline = (Stream.from_table(table, batch_size=100)
                .map(double)
                .key_by("key").aggregate({"value": ["count", "sum"]})
                .collect(name="totals"))
    """
)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def _parse_table(text, name):
    """Rows of the table the CLI printed under ``<name>: N rows``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:"))
    header = lines[start + 1].split()
    rows = []
    for line in lines[start + 3:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, line.split())))
    return rows


def test_run_a_file_on_a_local_cluster(tmp_path, pid_alive):
    path = tmp_path / "my_job.py"
    path.write_text(JOB_FILE)
    proc = subprocess.run([sys.executable, "-m", "sabot.cli", "run", str(path), "--workers", "2",
                           "--parallelism", "2", "--interval", "0.1"],
                          capture_output=True, text=True, timeout=90, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "FINISHED" in proc.stderr
    rows = _parse_table(proc.stdout, "totals")
    got = {int(r["key"]): (int(r["value_count"]), float(r["value_sum"])) for r in rows}
    expected = {k: (200, 2.0 * sum(float(i) for i in range(1000) if i % 5 == k)) for k in range(5)}
    assert got.keys() == expected.keys()
    for k, (count, total) in expected.items():
        assert got[k][0] == count and got[k][1] == pytest.approx(total, rel=1e-5)


def test_workers_import_the_parents_sabot_whatever_the_current_directory(tmp_path):
    # A newcomer runs the README's command from a source checkout: ./sabot is there but
    # unbuilt. Here a decoy package stands in for it; workers must not import it.
    (tmp_path / "sabot").mkdir()
    (tmp_path / "sabot" / "__init__.py").write_text("raise ImportError('the decoy ./sabot was imported')\n")
    (tmp_path / "my_job.py").write_text(JOB_FILE)
    sabot_command = os.path.join(os.path.dirname(sys.executable), "sabot")
    assert os.path.exists(sabot_command), "the sabot console script is installed next to this python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sabot_command, "run", "my_job.py", "--workers", "2", "--parallelism", "2"],
                          capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoy" not in proc.stderr
    rows = _parse_table(proc.stdout, "totals")
    assert sorted(int(r["key"]) for r in rows) == [0, 1, 2, 3, 4]
    assert all(int(r["value_count"]) == 200 for r in rows)


def test_a_worker_refuses_another_sabot_than_its_parents(tmp_path):
    env = dict(os.environ, SABOT_EXPECTED_PACKAGE=str(tmp_path / "elsewhere" / "sabot"))
    proc = subprocess.run([sys.executable, "-m", "sabot.cli", "worker", "--coordinator", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "elsewhere" in proc.stderr and "imported sabot from" in proc.stderr


def test_run_reports_a_failing_job(tmp_path):
    path = tmp_path / "bad_job.py"
    path.write_text(JOB_FILE.replace("return batch.set_column", "raise KeyError('no such thing')\n    return batch.set_column"))
    proc = subprocess.run([sys.executable, "-m", "sabot.cli", "run", f"{path}:pipeline", "--workers", "1"],
                          capture_output=True, text=True, timeout=90, env=_env(), cwd=tmp_path)
    assert proc.returncode == 1
    assert "FAILED" in proc.stderr and "no such thing" in proc.stderr


def test_load_target_errors(tmp_path, monkeypatch):
    path = tmp_path / "two_jobs.py"
    path.write_text(JOB_FILE + "\nother = pipeline\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="several jobs"):
        load_target(str(path))
    obj, where = load_target(f"{path}:other")
    assert where == str(tmp_path) and hasattr(obj, "to_job_graph")
    with pytest.raises(AttributeError, match="nothing"):
        load_target(f"{path}:nothing")
    with pytest.raises(ModuleNotFoundError):
        load_target("no_such_module_for_sabot")


def test_job_commands_against_a_running_cluster(local_cluster, tmp_path, capsys, user_module, monkeypatch):
    url = local_cluster.url
    # a JSON job file is self-contained: its source is a generator (an in-memory table
    # travels beside a graph, uploaded by SabotClient.submit, not inside its JSON)
    graph = (__import__("sabot.api.stream", fromlist=["Stream"]).Stream
             .from_generator("sabot.runtime.generators:keyed_records", total_rows=1000, batch_size=100,
                             parameters={"num_keys": 10})
             .key_by("key").aggregate({"value": ["sum"]}).collect(name="sums")
             .to_job_graph("cli-job", default_parallelism=1, shippable=True))
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(graph.to_dict()))
    # the LocalCluster made its own secret: without it the CLI is refused
    monkeypatch.delenv("SABOT_TOKEN", raising=False)
    monkeypatch.delenv("SABOT_TOKEN_FILE", raising=False)
    assert main(["job", "submit", str(spec), "--coordinator", url]) == 1
    assert "401" in capsys.readouterr().err
    # a token file others may read is refused; a private one works
    token_file = tmp_path / "token"
    token_file.write_text(local_cluster.token + "\n")
    token_file.chmod(0o644)
    assert main(["job", "list", "--coordinator", url, "--token-file", str(token_file)]) == 1
    assert "chmod 600" in capsys.readouterr().err
    token_file.chmod(0o600)
    monkeypatch.setenv("SABOT_TOKEN_FILE", str(token_file))
    assert main(["job", "submit", str(spec), "--coordinator", url]) == 0
    job_id = capsys.readouterr().out.strip()
    assert local_cluster.wait(job_id, 30) == "FINISHED"
    assert main(["job", "list", "--coordinator", url]) == 0
    out = capsys.readouterr().out
    assert job_id in out and "cli-job" in out and "FINISHED" in out
    assert main(["job", "status", job_id, "--coordinator", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "FINISHED"
    assert main(["job", "status", job_id, "--coordinator", url]) == 0
    assert "sums" in capsys.readouterr().out

    endless = (__import__("sabot.api.stream", fromlist=["Stream"]).Stream
               .from_generator(f"{user_module}:slow_rows", batch_size=10).collect()
               .to_job_graph("endless", default_parallelism=1, shippable=True))
    assert main(["job", "submit", json.dumps(endless.to_dict()), "--coordinator", url]) == 0
    running = capsys.readouterr().out.strip()
    assert main(["job", "cancel", running, "--coordinator", url]) == 0
    assert "CANCELED" in capsys.readouterr().out
    # errors: exit code 1 and the server's message
    assert main(["job", "cancel", running, "--coordinator", url]) == 1
    assert "409" in capsys.readouterr().err
    assert main(["job", "status", "nope", "--coordinator", url]) == 1
    assert "404" in capsys.readouterr().err
    assert main(["job", "list", "--coordinator", "http://127.0.0.1:1"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def _read_line(proc, needle, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r} from {proc.args}; stderr: {proc.stderr.read()[-2000:]}")


def test_coordinator_and_worker_processes(pid_alive):
    coordinator = subprocess.Popen([sys.executable, "-m", "sabot.cli", "coordinator", "--port", "0"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                   start_new_session=True)
    worker = None
    try:
        url = _read_line(coordinator, "listening on").split()[-1]
        worker = subprocess.Popen([sys.executable, "-m", "sabot.cli", "worker", "--coordinator", url, "--slots", "3"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                  start_new_session=True)
        _read_line(worker, "joined")
        with urllib.request.urlopen(f"{url}/nodes", timeout=10) as resp:
            nodes = json.loads(resp.read())["nodes"]
        assert [n["pid"] for n in nodes] == [worker.pid] and nodes[0]["num_slots"] == 3
        # the coordinator stops: the worker notices and exits with an error code
        coordinator.send_signal(signal.SIGINT)
        assert coordinator.wait(15) == 0
        assert worker.wait(15) == 1
        assert "exiting" in worker.stderr.read()
    finally:
        for proc in (coordinator, worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_cluster_start_in_the_foreground(pid_alive):
    proc = subprocess.Popen([sys.executable, "-m", "sabot.cli", "cluster", "start", "--workers", "2", "--slots", "1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), start_new_session=True)
    try:
        line = _read_line(proc, "coordinator http")
        url = line.split("coordinator ")[1].split(",")[0]
        pids = json.loads(line.split("(pids ")[1].split(")")[0])
        # it made its own secret and says where it is: without it, 401
        token_file = _read_line(proc, "SABOT_TOKEN_FILE=").split("SABOT_TOKEN_FILE=")[1].split()[0]
        assert os.stat(token_file).st_mode & 0o777 == 0o600
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/overview", timeout=10)
        assert refused.value.code == 401
        with open(token_file) as f:
            token = f.read().strip()
        request = urllib.request.Request(f"{url}/overview", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["total_slots"] == 2
        # the secret is in no process's command line
        for pid in [proc.pid] + pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert token.encode() not in f.read()
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(20) == 0
        assert all(not pid_alive(p) for p in pids)
        assert not os.path.exists(token_file)  # removed on exit
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_format_table_preview():
    table = pa.table({"a": list(range(25)), "b": [x / 3 for x in range(25)]})
    text = format_table(table, limit=3)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and lines[2].split() == ["0", "0"]
    assert lines[4].split() == ["2", "0.666667"] and "22 more rows" in lines[-1]


def test_progress_line_rates_and_bar():
    from sabot.cli import Progress

    def doc(src_out, agg):
        return {"state": "RUNNING", "operators": [
            {"name": "src", "operator_type": "source", "rows_processed": src_out, "rows_out": src_out,
             "total_rows": 1000},
            {"name": "agg", "operator_type": "aggregate", "rows_processed": agg, "rows_out": 0, "total_rows": None},
        ]}

    progress = Progress()
    first = progress.line(doc(100, 50), now=10.0)
    assert "src 0 rows/s" in first and "10.0%" in first
    second = progress.line(doc(600, 450), now=12.0)
    assert "src 250 rows/s" in second and "agg 200 rows/s" in second and "60.0%" in second

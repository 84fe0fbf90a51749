"""A cluster across hosts: Linux network namespaces joined by veth pairs to a bridge.

Host 1 runs the coordinator, hosts 2 and 3 a worker each, all on their own addresses with
the cluster secret and TLS. A keyed exactly-once job runs across them while a host's worker
is killed (and replaced) and the aggregate is rescaled across hosts; its committed output
must equal pyarrow's reference. A fourth namespace without the secret can do nothing.

Needs root and iproute2 (CI runs as root); skipped with the reason otherwise.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from sabot.api.stream import Stream
from sabot.cluster.client import ApiError, SabotClient
from sabot.cluster.local import worker_environment
from sabot.cluster.tls import TlsConfig
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(240)

E2E_DIR = os.path.dirname(os.path.abspath(__file__))
TOTAL, BATCH, KEYS = 400_000, 500, 200


def _run(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _netns_unavailable():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    probe = f"sabotprobe{secrets.token_hex(3)}"
    result = _run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace here: {result.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    """``n`` namespaces ``10.<a>.<b>.1..n`` on a bridge; the root namespace is ``.254``."""

    def __init__(self, n):
        tag = secrets.token_hex(2)
        a, b = 100 + secrets.randbelow(100), secrets.randbelow(250)
        self.prefix = f"10.{a}.{b}"
        self.bridge = f"sbr{tag}"
        self.names = [f"sabot-{tag}-{i}" for i in range(1, n + 1)]
        self.veths = [f"sv{tag}{i}" for i in range(1, n + 1)]
        self.procs = []
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.names, self.veths), start=1):
            _run("ip", "netns", "add", ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", veth, "master", self.bridge)
            _run("ip", "link", "set", veth, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.prefix}.{i}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def address(self, i):
        return f"{self.prefix}.{i}"

    def spawn(self, i, args, env, log):
        """Run ``python -P -m sabot.cli ARGS`` on host ``i`` (1-based)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.names[i - 1], sys.executable, "-P", "-m", "sabot.cli",
                                 *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def python(self, i, code, env):
        """Run a Python snippet on host ``i``; its stdout."""
        result = subprocess.run(["ip", "netns", "exec", self.names[i - 1], sys.executable, "-c", code], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for ns in self.names:
            _run("ip", "netns", "del", ns, check=False)
        for veth in self.veths:
            _run("ip", "link", "del", veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
def hosts():
    why = _netns_unavailable()
    if why:
        pytest.skip(why)
    made = Hosts(4)
    try:
        yield made
    finally:
        made.close()
        leftover = [p.pid for p in made.procs if p.poll() is None]
        assert not leftover, f"processes left running: {leftover}"


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (ConnectionError, OSError, ApiError):  # not up yet, or 409 while the job restarts
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reference():
    t = pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=KEYS)]).filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")]).select(
        ["key", "value2_count", "value2_sum"])


def test_a_job_across_three_hosts_survives_a_killed_host_worker_and_a_rescale(hosts, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*(hosts.address(i) for i in (1, 2, 3, 254)))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "node.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    tls = TlsConfig(str(tmp_path / "node.pem"), str(tmp_path / "node.key"), str(tmp_path / "ca.pem"))
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = worker_environment([E2E_DIR])
    env.update(tls.to_env())
    env["SABOT_TOKEN_FILE"] = str(token_file)
    env.pop("SABOT_TOKEN", None)
    logs = open(tmp_path / "processes.log", "w")

    coordinator_url = f"https://{hosts.address(1)}:8081"
    hosts.spawn(1, ["coordinator", "--host", hosts.address(1), "--port", "8081", "--heartbeat-timeout", "2"],
                env, logs)
    workers = {i: hosts.spawn(i, ["worker", "--coordinator", coordinator_url, "--host", hosts.address(i),
                                  "--slots", "2", "--node-id", f"host{i}"], env, logs) for i in (2, 3)}
    client = SabotClient(coordinator_url, token=token, tls=tls)
    _wait(lambda: len(client.nodes()["nodes"]) == 2, 60, "two workers on two hosts")
    nodes = {n["node_id"]: n for n in client.nodes()["nodes"]}
    assert nodes["host2"]["url"] == f"https://{hosts.address(2)}:{nodes['host2']['url'].rsplit(':', 1)[1]}"
    assert nodes["host3"]["data_address"].startswith(hosts.address(3))

    out = tmp_path / "out"
    stream = (Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=BATCH,
                                    parameters={"num_keys": KEYS}, name="source").parallelism(2)
              .filter(pc.field("value") > 0.5, name="filter")
              .map("recovery_udfs:slow_add_value2", name="map")
              .key_by("key").aggregate({"value2": ["count", "sum"]}, name="aggregate"))
    graph = stream.to_parquet(str(out), name="sink").parallelism(2).to_job_graph(
        "multihost", default_parallelism=2, shippable=True, checkpoint_interval_ms=200,
        restart_strategy={"type": "fixed-delay", "attempts": 20, "delay_ms": 100})
    aggregate = next(op for op, node in graph.operators.items() if node.name == "aggregate")
    job_id = client.submit(graph)
    _wait(lambda: (client.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 1, 60, "a checkpoint")
    job = client.job(job_id)
    assert {t["node_id"] for t in job["tasks"]} == {"host2", "host3"}, "the job should span both hosts"

    # host 3's worker dies; a replacement starts there; the job restarts from its checkpoint
    workers[3].send_signal(signal.SIGKILL)
    workers[3].wait(10)
    workers[3] = hosts.spawn(3, ["worker", "--coordinator", coordinator_url, "--host", hosts.address(3),
                                 "--slots", "2", "--node-id", "host3b"], env, logs)
    _wait(lambda: client.job(job_id)["restarts"] >= 1 and client.job(job_id)["state"] == "RUNNING", 60,
          "the restart")
    # rescale the aggregate to 3 subtasks: across both hosts' slots
    _wait(lambda: client.rescale(job_id, aggregate, 3) is not None, 30, "a rescale being accepted")
    _wait(lambda: any(r["state"] == "COMPLETED" for r in client.job(job_id)["rescales"]), 60,
          "the rescale to finish")
    agg_nodes = {t["node_id"] for t in client.job(job_id)["tasks"] if t["operator_name"] == "aggregate"}
    assert len(agg_nodes) == 2, f"the rescaled aggregate should span both hosts, got {agg_nodes}"

    assert client.wait(job_id, 180) == "FINISHED", client.job(job_id).get("failure")
    got = ds.dataset(str(out), format="parquet").to_table()
    assert_tables_equal(got.select(["key", "value2_count", "value2_sum"]), reference(), sort_by=["key"])

    # a fourth host without the secret: 401 everywhere, the data plane hangs up on it
    worker_pid = workers[2].pid
    with open(f"/proc/{worker_pid}/status") as f:
        rss_before = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    host2 = client.nodes()["nodes"]
    target = next(n for n in host2 if n["node_id"] == "host2")
    data_host, data_port = target["data_address"].rsplit(":", 1)
    stranger = textwrap.dedent(f"""
        import json, socket, ssl, struct, urllib.request, urllib.error
        ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
        codes = []
        for url, method, body in [("{coordinator_url}/jobs", "GET", None),
                                  ("{coordinator_url}/workers/register", "POST", b"{{}}"),
                                  ("{target['url']}/tasks/deploy", "POST", b"[]")]:
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), context=ctx, timeout=10)
                codes.append(200)
            except urllib.error.HTTPError as exc:
                codes.append(exc.code)
        raw = socket.create_connection(("{data_host}", {data_port}), timeout=10)
        sock = ctx.wrap_socket(raw)
        head = sock.recv(25)
        sock.sendall(struct.pack("<BQ", 10, 48) + b"x" * 48)          # AUTH with a made-up proof
        sock.sendall(struct.pack("<BQ", 3, 16 << 30))                  # then a 16 GiB batch header
        rest = b""
        try:
            while chunk := sock.recv(4096):
                rest += chunk
        except (ConnectionResetError, ssl.SSLError, OSError):
            pass
        print(json.dumps({{"codes": codes, "challenge": head[:1] == b"\\x09", "answer": rest.hex()}}))
    """)
    seen = json.loads(hosts.python(4, stranger, env={k: v for k, v in env.items() if not k.startswith("SABOT_")}))
    assert seen["codes"] == [401, 401, 401], seen
    assert seen["challenge"] and seen["answer"] == "", seen  # a challenge, then nothing: hung up
    with open(f"/proc/{worker_pid}/status") as f:
        rss_after = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    assert rss_after - rss_before < 64 * 1024
    logs.close()

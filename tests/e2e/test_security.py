"""Attacks on a LocalCluster (real worker processes, its own random secret), each of which
must fail harmlessly: the job's result stays exact and nothing is kept for the attacker."""

import json
import socket
import struct
import sys
import time
import urllib.error
import urllib.request

import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster.client import ApiError
from sabot.runtime import network
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)


def http(method, url, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers),
                                    timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_without_the_secret_nothing_is_accepted(local_cluster):
    client = local_cluster.client()
    nodes = client.nodes()["nodes"]
    worker = nodes[0]
    # the coordinator's and the workers' HTTP routes
    assert http("GET", f"{local_cluster.url}/jobs")[0] == 401
    assert http("POST", f"{local_cluster.url}/workers/register",
                {"node_id": "fake", "host": "127.0.0.1", "port": 9, "data_host": "127.0.0.1", "data_port": 9,
                 "num_slots": 64})[0] == 401
    assert http("POST", f"{worker['url']}/tasks/deploy", [])[0] == 401
    assert http("GET", f"{worker['url']}/tasks")[0] == 401
    assert "fake" not in {n["node_id"] for n in client.nodes()["nodes"]}
    # the secret is in no process's command line
    for pid in [p for p in local_cluster.worker_pids if p] + [__import__("os").getpid()]:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert local_cluster.token.encode() not in f.read()


def test_dangerous_function_references_are_refused_without_running_their_module(local_cluster, capsys):
    table = pa.table({"x": [1, 2, 3]})
    client = local_cluster.client()
    sys.modules.pop("this", None)
    for ref, needle in [("os:system", "may not provide user functions"),
                        ("subprocess:check_output", "may not provide user functions"),
                        ("builtins:eval", "may not provide user functions"),
                        ("this:s", "standard library"),
                        ("pyarrow.parquet:write_table", "only pyarrow.compute")]:
        graph = Stream.from_table(table).map(ref, name="evil").collect().to_job_graph("evil", shippable=True)
        with pytest.raises(ApiError) as refused:
            client.submit(graph)
        assert refused.value.status == 400 and needle in str(refused.value) and ref in str(refused.value)
    # `import this` prints the Zen of Python: the coordinator (this process) never imported it
    assert "this" not in sys.modules
    assert "Beautiful is better than ugly" not in capsys.readouterr().out


def _handshake_with(sock, key):
    head = sock.recv(9 + 16, socket.MSG_WAITALL)
    kind, _ = struct.unpack("<BQ", head[:9])
    assert kind == network.CHALLENGE
    nonce = b"s" * 16
    return network.HEADER.pack(network.AUTH, 48) + nonce + network._mac(key, b"sender", head[9:], nonce)


def _refused(sock, challenge_read=False):
    """The server closed the connection having sent nothing but its CHALLENGE."""
    sock.settimeout(5.0)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    if not challenge_read and data[:1] == bytes([network.CHALLENGE]):
        data = data[9 + 16:]
    return data == b""


def test_a_stranger_cannot_inject_rows_or_memory_through_the_data_plane(local_cluster, user_module):
    table = pa.table({"key": pa.array([i % 5 for i in range(20_000)]), "value": pa.array([1.0] * 20_000)})
    graph = (Stream.from_table(table, batch_size=200).map(f"{user_module}:slow_identity", name="slow")
             .key_by("key").aggregate({"value": ["sum"]}, name="agg").collect(name="sums")
             .to_job_graph("victim", default_parallelism=2, shippable=True))
    job_id = local_cluster.submit(graph)
    deadline = time.monotonic() + 30
    while local_cluster.job(job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    info = local_cluster.job(job_id)
    nodes = {n["node_id"]: n for n in local_cluster.client().nodes()["nodes"]}
    by_op = {}
    for t in info["tasks"]:
        by_op.setdefault(t["operator_name"], []).append(t)
    # a channel id that exists right now: slow:0 -> agg:0 (the stranger even knows it)
    up, down = by_op["slow"][0], by_op["agg"][0]
    channel_id = f"{job_id}/{up['task_id']}#{up['attempt']}->{down['task_id']}#{down['attempt']}"
    host, port = nodes[down["node_id"]]["data_address"].rsplit(":", 1)
    pid = nodes[down["node_id"]]["pid"]
    before = rss_kb(pid)
    evil = pa.record_batch({"key": pa.array([0]), "value": pa.array([1e9])})
    for attempt in ("no handshake", "wrong key", "huge header"):
        sock = socket.create_connection((host, int(port)), timeout=5)
        if attempt == "no handshake":
            sock.sendall(network.HEADER.pack(network.HELLO, len(channel_id)) + channel_id.encode()
                         + network.HEADER.pack(network.BATCH, len(evil.serialize())) + evil.serialize().to_pybytes())
        elif attempt == "wrong key":
            sock.sendall(_handshake_with(sock, b"guessed" * 4)
                         + network.HEADER.pack(network.HELLO, len(channel_id)) + channel_id.encode())
        else:
            sock.sendall(network.HEADER.pack(network.AUTH, 16 << 30) + b"\0" * 65536)
        assert _refused(sock, challenge_read=attempt == "wrong key"), attempt
        sock.close()
    assert local_cluster.wait(job_id, 60) == "FINISHED"
    expected = table.group_by("key").aggregate([("value", "sum")])
    assert_tables_equal(local_cluster.result(job_id).table("sums"), expected, sort_by=["key"])
    assert rss_kb(pid) - before < 64 * 1024  # the 16 GiB header allocated nothing
    assert local_cluster.job(job_id)["restarts"] == 0

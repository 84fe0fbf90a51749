"""LocalCluster end to end: a coordinator and real worker processes on 127.0.0.1."""

import asyncio
import json
import time
import urllib.request

import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster.client import ApiError
from sabot.cluster.local import LocalCluster
from sabot.errors import JobFailed
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)


def keyed_table(n=50_000, keys=1000):
    return pa.table({
        "key": pa.array([(i * 7919) % keys for i in range(n)], pa.int64()),
        "value": pa.array([(i % 1013) / 1013.0 for i in range(n)]),
    })


def keyed_count_job(parallelism, table):
    stream = (Stream.from_table(table, batch_size=2000)
              .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))
    return stream.to_job_graph("keyed-count", default_parallelism=parallelism, shippable=True)


def reference_counts(table):
    out = table.group_by("key").aggregate([("value", "count"), ("value", "sum")])
    return out.select(["key", "value_count", "value_sum"])


def unbounded_job(user_module, parallelism, **config):
    stream = (Stream.from_generator(f"{user_module}:slow_rows", total_rows=None, batch_size=100)
              .map(f"{user_module}:slow_identity").collect(name="out"))
    return stream.to_job_graph("endless", default_parallelism=parallelism, shippable=True, **config)


def get_json(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def wait_state(client, job_id, state, timeout=20):
    deadline = time.monotonic() + timeout
    while client.job(job_id)["state"] != state:
        assert time.monotonic() < deadline, f"job {job_id} never reached {state}"
        time.sleep(0.02)


@pytest.mark.parametrize("parallelism", [2, 4])
def test_keyed_count_across_two_worker_processes(local_cluster, parallelism):
    table = keyed_table()
    job_id = local_cluster.submit(keyed_count_job(parallelism, table))
    assert local_cluster.wait(job_id, 60) == "FINISHED"

    # the tasks really ran in both worker processes, and each worker lists its own (until the
    # result is fetched: then the coordinator holds it and the workers let the job go)
    pids = [p for p in local_cluster.worker_pids if p]
    assert len(set(pids)) == 2
    nodes = {n["node_id"]: n for n in local_cluster.client().nodes()["nodes"]}
    info = local_cluster.job(job_id)
    seen_pids = set()
    for node_id, node in nodes.items():
        listing = get_json(f"{node['url']}/tasks", local_cluster.token)
        assert listing["pid"] == node["pid"] and node["pid"] in pids
        mine = {t["task_id"] for t in listing["tasks"] if t["job_id"] == job_id}
        expected = {t["task_id"] for t in info["tasks"] if t["node_id"] == node_id}
        assert mine == expected
        if mine:
            seen_pids.add(node["pid"])
        assert all(t["pid"] == node["pid"] for t in listing["tasks"])
    assert seen_pids == set(pids)
    assert sum(op["parallelism"] for op in info["operators"]) == len(info["tasks"])
    assert_tables_equal(local_cluster.result(job_id).table("counts"), reference_counts(table))


def test_every_endpoint_over_http(local_cluster, user_module):
    client = local_cluster.client()
    assert client.health()["status"] == "ok"
    overview = client.overview()
    assert overview["workers"] == 2 and overview["total_slots"] == 4
    assert len(client.nodes()["nodes"]) == 2
    assert client.slots()["total_slots"] == 4
    assert "/jobs/{job_id}" in client.openapi()["paths"]

    table = keyed_table(10_000, 50)
    job_id = client.submit(keyed_count_job(2, table))  # its table uploaded first, then the graph
    assert client.wait(job_id, 60) == "FINISHED"
    assert_tables_equal(client.result(job_id).table("counts"), reference_counts(table))
    assert job_id in [j["job_id"] for j in client.jobs()]
    details = client.job(job_id)
    assert details["metrics"]["total_tasks"] == len(details["tasks"])
    assert sum(op["rows_in"] for op in details["operators"] if op["operator_type"] == "aggregate") == table.num_rows
    assert "sabot_workers 2.0" in client.metrics()

    with pytest.raises(ApiError) as err:
        client.request("POST", "/jobs/submit", b"{oops")
    assert err.value.status == 400 and "malformed JSON" in str(err.value)
    with pytest.raises(ApiError) as err:
        client.job("nope")
    assert err.value.status == 404
    with pytest.raises(ApiError) as err:
        client.cancel(job_id)
    assert err.value.status == 409

    # a failing job: JobFailed carries the task's error
    failing = (Stream.from_table(pa.table({"value": [0.5, 1.0]}))
               .map(f"{user_module}:fail_on_big_value", name="fragile").collect())
    bad = client.submit(failing.to_job_graph("fails", shippable=True))
    assert client.wait(bad, 30) == "FAILED"
    with pytest.raises(JobFailed, match="ZeroDivisionError"):
        client.result(bad)


def test_second_job_while_one_runs_and_cancel_frees_slots(local_cluster, user_module):
    client = local_cluster.client()
    endless = client.submit(unbounded_job(user_module, 2))
    wait_state(client, endless, "RUNNING")
    table = keyed_table(20_000, 100)
    second = local_cluster.submit(keyed_count_job(2, table))
    assert local_cluster.wait(second, 60) == "FINISHED"
    assert_tables_equal(local_cluster.result(second).table("counts"), reference_counts(table))
    assert client.job(endless)["state"] == "RUNNING"
    rows_before = sum(op["rows_processed"] for op in client.job(endless)["operators"])
    time.sleep(0.6)
    assert sum(op["rows_processed"] for op in client.job(endless)["operators"]) > rows_before  # live metrics

    assert client.slots()["free_slots"] == 2
    assert client.cancel(endless)["state"] == "CANCELED"
    slots = client.slots()
    assert slots["free_slots"] == slots["total_slots"] == 4
    for node in client.nodes()["nodes"]:
        tasks = [t for t in get_json(f"{node['url']}/tasks", local_cluster.token)["tasks"] if t["job_id"] == endless]
        assert tasks and all(t["state"] in ("CANCELED", "FAILED") for t in tasks)


def test_killed_worker_is_detected_within_a_second(user_module, pid_alive):
    with LocalCluster(workers=2, slots_per_worker=1) as cluster:
        client = cluster.client()
        job_id = cluster.submit(unbounded_job(user_module, 2, restart_strategy={"type": "none"}))
        wait_state(client, job_id, "RUNNING")
        node_ids = set(cluster.coordinator.nodes)
        start = time.monotonic()
        pid = cluster.kill_worker(1)
        while len(client.nodes()["nodes"]) != 1:
            assert time.monotonic() - start < 1.0, "killed worker not detected within 1 s"
            time.sleep(0.01)
        assert cluster.wait(job_id, 5) == "FAILED"
        failure = client.job(job_id)["failure"]["error"]
        assert f"pid {pid}" in failure and "lost" in failure
        assert cluster.worker_pids[1] is None
        lost = client.nodes()["lost"]
        assert [n["pid"] for n in lost] == [pid] and lost[0]["node_id"] in node_ids

        # a new worker restores the capacity and jobs run again
        cluster.add_worker()
        assert client.overview()["total_slots"] == 2
        table = keyed_table(5000, 20)
        job_id = cluster.submit(keyed_count_job(2, table))
        assert cluster.wait(job_id, 60) == "FINISHED"
        assert_tables_equal(cluster.result(job_id).table("counts"), reference_counts(table))
        pids = [p for p in cluster.worker_pids if p]
    assert all(not pid_alive(p) for p in pids + [pid])


def test_async_context_manager_and_cleanup_after_error(user_module, pid_alive):
    async def body():
        async with LocalCluster(workers=1, slots_per_worker=2) as cluster:
            table = keyed_table(5000, 10)
            job_id = await cluster.submit_async(keyed_count_job(2, table))
            assert await cluster.wait_async(job_id, 60) == "FINISHED"
            result = await cluster.result_async(job_id)
            assert_tables_equal(result.table("counts"), reference_counts(table))
            return [p for p in cluster.worker_pids if p]

    pids = asyncio.run(asyncio.wait_for(body(), 90))
    assert pids and not any(pid_alive(p) for p in pids)

    cluster = LocalCluster(workers=1, slots_per_worker=1)
    with pytest.raises(RuntimeError, match="boom"):
        with cluster:
            pids = [p for p in cluster.worker_pids if p]
            raise RuntimeError("boom")
    assert pids and not any(pid_alive(p) for p in pids)

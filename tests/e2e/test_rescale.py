"""Live rescaling and auto-rebalancing on real worker processes (issue 7)."""

import time

import pytest

from sabot.cluster.client import ApiError
from sabot.cluster.local import LocalCluster
from sabot.testing import assert_tables_equal
from tests.conftest import wait_rescale

from rescale_jobs import keyed_count_job, reference

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=3, slots_per_worker=2, coordinator_config={"slot_wait_timeout_s": 20})
    pids = []
    try:
        c.start()
        pids = list(c.worker_pids)
        yield c
    finally:
        c.close()
        import os

        for pid in pids:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"worker {pid} still running after close")


def operator_id(detail, name):
    return next(op["operator_id"] for op in detail["operators"] if op["name"] == name)


def source_rows(detail):
    return sum(t["rows_processed"] for t in detail["tasks"] if t["operator_name"] == "source")


def test_rescale_aggregate_2_4_1_3_while_data_flows(cluster):
    total, keys = 600_000, 5000
    client = cluster.client()
    job_id = cluster.submit(keyed_count_job(total, keys, agg_parallelism=2))
    deadline = time.monotonic() + 20
    while client.job(job_id)["state"] != "RUNNING" or source_rows(client.job(job_id)) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    agg = operator_id(client.job(job_id), "aggregate")
    seen = []
    for new_parallelism in (4, 1, 3):
        time.sleep(0.3)
        before = source_rows(client.job(job_id))
        plan = client.request("POST", f"/jobs/{job_id}/rescale",
                              {"operator_id": agg, "new_parallelism": new_parallelism})
        assert plan["status"] == "rescaling" and plan["new_parallelism"] == new_parallelism
        assert len(plan["new_task_ids"]) == new_parallelism
        detail, record = wait_rescale(client, job_id, plan["rescale_id"])
        assert record["state"] == "COMPLETED", record
        assert record["state_rows_moved"] > 0
        assert record["total_ms"] is not None and record["total_ms"] > 0
        # the source kept producing across the rescale (workers report every 0.5 s)
        time.sleep(0.6)
        assert source_rows(client.job(job_id)) > before
        ops = {op["name"]: op["parallelism"] for op in detail["operators"]}
        assert ops["aggregate"] == new_parallelism
        seen.append((record["old_parallelism"], record["new_parallelism"]))
    assert seen == [(2, 4), (4, 1), (1, 3)]
    assert cluster.wait(job_id, 60) == "FINISHED"
    assert_tables_equal(cluster.result(job_id).table("sink"), reference(total, keys), sort_by=["key"])


def test_rescale_without_slots_is_refused_and_result_stays_exact(cluster):
    total, keys = 200_000, 1000
    client = cluster.client()
    job_id = cluster.submit(keyed_count_job(total, keys, agg_parallelism=2))
    deadline = time.monotonic() + 20
    while client.job(job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    agg = operator_id(client.job(job_id), "aggregate")
    with pytest.raises(ApiError) as info:
        client.request("POST", f"/jobs/{job_id}/rescale", {"operator_id": agg, "new_parallelism": 50})
    assert info.value.status == 409
    assert "keeps running at parallelism 2" in str(info.value)
    for bad, status in (({"operator_id": agg}, 400), ({"operator_id": "nope", "new_parallelism": 2}, 404),
                        ({"operator_id": agg, "new_parallelism": 0}, 400)):
        with pytest.raises(ApiError) as info:
            client.request("POST", f"/jobs/{job_id}/rescale", bad)
        assert info.value.status == status, (bad, info.value)
    assert cluster.wait(job_id, 60) == "FINISHED"
    assert_tables_equal(cluster.result(job_id).table("sink"), reference(total, keys), sort_by=["key"])


def test_auto_rebalance_evens_out_zipf_skew(cluster):
    total, keys = 1_500_000, 100_000
    client = cluster.client()
    job_id = cluster.submit(keyed_count_job(total, keys, agg_parallelism=4, zipf=True, name="zipf"))
    deadline = time.monotonic() + 20
    while client.job(job_id)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    threshold = 0.3
    client.request("POST", f"/jobs/{job_id}/auto-rebalance",
                   {"interval_seconds": 1.0, "imbalance_threshold": threshold})
    deadline = time.monotonic() + 30
    rebalances = []
    while True:
        detail = client.job(job_id)
        assert detail["state"] == "RUNNING", (detail["state"], detail.get("failure"))
        rebalances = [r for r in detail["rescales"] if r["kind"] == "rebalance"]
        if rebalances and rebalances[-1]["state"] == "COMPLETED" and rebalances[-1]["imbalance_after"] is not None:
            break
        assert time.monotonic() < deadline, f"no completed rebalance: {detail['auto_rebalance']} {rebalances}"
        time.sleep(0.05)
    first = rebalances[0]
    assert first["imbalance_before"] > threshold
    assert first["new_parallelism"] == first["old_parallelism"] == 4
    assert rebalances[-1]["imbalance_after"] < threshold, rebalances
    assert cluster.wait(job_id, 90) == "FINISHED"
    assert_tables_equal(cluster.result(job_id).table("sink"), reference(total, keys, zipf=True), sort_by=["key"])


def test_seed_api_verbatim_against_a_real_cluster(cluster):
    """The seed's calls, as written in its design note, on the coordinator of a real cluster."""
    total, keys = 300_000, 2000
    coordinator = cluster.coordinator
    job_graph = keyed_count_job(total, keys, agg_parallelism=2, name="seed")

    async def seed():
        job_id = await coordinator.submit_stream_job(job_graph)
        exec_graph = coordinator.active_jobs[job_id]
        while exec_graph.get_metrics_summary()["running_tasks"] < len(exec_graph.tasks):
            import asyncio

            await asyncio.sleep(0.02)
        agg = next(op for op, node in exec_graph.job_graph.operators.items() if node.name == "aggregate")
        rescale_plan = await coordinator.rescale_operator(job_id=job_id, operator_id=agg, new_parallelism=3)
        await coordinator.enable_auto_rebalance(job_id=job_id, interval_seconds=60, imbalance_threshold=0.3)
        metrics = exec_graph.get_metrics_summary()
        return job_id, rescale_plan, metrics

    job_id, plan, metrics = cluster.call(seed(), timeout=60)
    assert {"status", "old_parallelism", "new_parallelism", "old_task_ids", "new_task_ids",
            "requires_state_redistribution"} <= set(plan)
    assert plan["old_parallelism"] == 2 and plan["new_parallelism"] == 3
    assert plan["requires_state_redistribution"] is True
    assert metrics["running_tasks"] >= 1 and metrics["uptime_seconds"] > 0
    assert cluster.wait(job_id, 60) == "FINISHED"
    assert_tables_equal(cluster.result(job_id).table("sink"), reference(total, keys), sort_by=["key"])


def test_failure_during_a_rescale_falls_back_to_the_last_checkpoint(tmp_path):
    """kill -9 a worker right after a rescale starts: the job restarts from its last
    checkpoint at the new parallelism, and the result is still exact."""
    total, keys = 600_000, 3000
    with LocalCluster(workers=3, slots_per_worker=2, coordinator_config={"slot_wait_timeout_s": 20}) as c:
        client = c.client()
        graph = keyed_count_job(total, keys, agg_parallelism=2, name="rescale-failure")
        graph.checkpoint_interval_ms = 150
        graph.config["checkpoint_dir"] = str(tmp_path / "ckpt")
        job_id = c.submit(graph)
        deadline = time.monotonic() + 20
        while client.job(job_id)["checkpoints"]["latest_completed"] is None:
            assert time.monotonic() < deadline, "no checkpoint completed"
            assert client.job(job_id)["state"] in ("DEPLOYING", "RUNNING")
            time.sleep(0.05)
        detail = client.job(job_id)
        agg = operator_id(detail, "aggregate")
        plan = client.request("POST", f"/jobs/{job_id}/rescale", {"operator_id": agg, "new_parallelism": 3})
        # kill a worker that hosts one of the old tasks while the state is being handed over
        old_nodes = {t["node_id"] for t in detail["tasks"] if t["task_id"] in plan["old_task_ids"]}
        victim = next(i for i, node in enumerate(c.node_ids) if node in old_nodes)
        c.kill_worker(victim)
        c.add_worker()
        assert c.wait(job_id, 90) == "FINISHED"
        detail = client.job(job_id)
        assert detail["restarts"] >= 1
        record = next(r for r in detail["rescales"] if r["rescale_id"] == plan["rescale_id"])
        assert record["state"] in ("COMPLETED", "FAILED")
        ops = {op["name"]: op["parallelism"] for op in detail["operators"]}
        assert ops["aggregate"] == 3
        assert_tables_equal(c.result(job_id).table("sink"), reference(total, keys), sort_by=["key"])


def test_rescale_source_1_3_2_while_data_flows(cluster):
    """The generator source moves its units live: 1 -> 3 -> 2 tasks, the result stays exact."""
    total, keys = 600_000, 3000
    client = cluster.client()
    job_id = cluster.submit(keyed_count_job(total, keys, agg_parallelism=2, name="source-rescale"))
    deadline = time.monotonic() + 20
    while client.job(job_id)["state"] != "RUNNING" or source_rows(client.job(job_id)) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    source = operator_id(client.job(job_id), "source")
    records = []
    for new_parallelism in (3, 2):
        time.sleep(0.3)
        plan = client.request("POST", f"/jobs/{job_id}/rescale",
                              {"operator_id": source, "new_parallelism": new_parallelism})
        assert plan["status"] == "rescaling" and len(plan["new_task_ids"]) == new_parallelism
        assert plan["requires_state_redistribution"] is False
        detail, record = wait_rescale(client, job_id, plan["rescale_id"])
        assert record["state"] == "COMPLETED", record
        assert record["splits_moved"] == 32  # DEFAULT_SPLITS strided splits of the generator
        assert record["source_paused_ms"] is not None and record["old_tasks_finished"] == len(plan["old_task_ids"])
        ops = {op["name"]: op["parallelism"] for op in detail["operators"]}
        assert ops["source"] == new_parallelism
        records.append(record)
    assert cluster.wait(job_id, 60) == "FINISHED"
    assert_tables_equal(cluster.result(job_id).table("sink"), reference(total, keys), sort_by=["key"])
    final = client.job(job_id)
    print("source rescales:", [(r["old_parallelism"], r["new_parallelism"], r["pause_ms"], r["source_paused_ms"],
                                r["total_ms"]) for r in final["rescales"]])


@pytest.mark.parametrize("kind", ["files", "table"])
def test_rescale_file_and_table_source_4_2_3_while_data_flows(cluster, tmp_path, kind):
    """A file (table) source moves its file pieces (shares of slices) with their positions live:
    4 -> 2 -> 3 tasks, every row once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rescale_jobs import dataset_job, table_job
    from sabot.runtime.generators import keyed_records

    files, rows = 16, 20_000
    if kind == "files":
        for i in range(files):
            pq.write_table(pa.Table.from_batches([keyed_records(i * rows, rows, num_keys=100)]),
                           tmp_path / f"part-{i:02d}.parquet", row_group_size=4096)
        job = dataset_job(str(tmp_path), parallelism=4)
        splits = files * 2  # 16 files of 5 row groups: each cut into 2 pieces, 32 (DEFAULT_SPLITS) in all
    else:
        job = table_job(pa.Table.from_batches([keyed_records(0, files * rows, num_keys=100)]), parallelism=4)
        splits = 32  # DEFAULT_SPLITS strided shares of the slices
    client = cluster.client()
    job_id = cluster.submit(job)
    deadline = time.monotonic() + 20
    while client.job(job_id)["state"] != "RUNNING" or source_rows(client.job(job_id)) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    source = operator_id(client.job(job_id), "source")
    for new_parallelism in (2, 3):
        time.sleep(0.3)
        assert client.job(job_id)["state"] == "RUNNING", "the job ended before the rescale; slow it down"
        plan = client.request("POST", f"/jobs/{job_id}/rescale",
                              {"operator_id": source, "new_parallelism": new_parallelism})
        assert plan["status"] == "rescaling" and len(plan["new_task_ids"]) == new_parallelism
        detail, record = wait_rescale(client, job_id, plan["rescale_id"])
        assert record["state"] == "COMPLETED", record
        assert record["splits_moved"] == splits  # every split, finished or not, with its position
        ops = {op["name"]: op["parallelism"] for op in detail["operators"]}
        assert ops["source"] == new_parallelism
    assert cluster.wait(job_id, 90) == "FINISHED"
    out = cluster.result(job_id).table("sink")
    # independent reference: ts is the row number over all files, values recomputed by pyarrow
    expected = pa.Table.from_batches([keyed_records(0, files * rows, num_keys=100)])
    assert out.num_rows == expected.num_rows
    assert np.array_equal(np.sort(out["ts"].to_numpy()), np.arange(files * rows))
    got = out.sort_by("ts")
    assert got["value"].equals(expected["value"]) and got["key"].equals(expected["key"])
    # the last tasks really read: rows came from the 3 new source tasks
    final = client.job(job_id)
    last = [t for t in final["tasks"] if t["operator_name"] == "source" and t["task_id"] in plan["new_task_ids"]]
    assert sum(t["rows_processed"] for t in last) > 0

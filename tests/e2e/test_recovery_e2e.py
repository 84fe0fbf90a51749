"""Exactly-once recovery with real worker processes: kill -9, user exceptions, restore.

The keyed-count job (generator source, a slow module-level map, optionally the
keyed aggregate) writes to a files sink with two-phase commit while checkpoints
run every 200 ms. After failures and restarts the committed output, read back
with pyarrow.dataset, must equal a reference computed independently with
pyarrow: no lost and no duplicated rows.
"""

import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from sabot.api.stream import Stream
from sabot.cluster.local import LocalCluster
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(120)

TOTAL = 240_000
BATCH = 500
KEYS = 300
UDFS = "recovery_udfs"


def job_graph(out_dir, aggregate=False, map_fn="slow_add_value2", parallelism=2, agg_parallelism=None,
              interval_ms=200, **config):
    stream = (Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=BATCH,
                                    parameters={"num_keys": KEYS}, name="source").parallelism(parallelism)
              .filter(pc.field("value") > 0.5, name="filter")
              .map(f"{UDFS}:{map_fn}", name="map"))
    if aggregate:
        stream = stream.key_by("key").aggregate({"value2": ["count", "sum"]}, name="aggregate")
        if agg_parallelism:
            stream = stream.parallelism(agg_parallelism)
    sink = stream.to_parquet(str(out_dir), name="sink").parallelism(parallelism)
    return sink.to_job_graph("keyed-count", default_parallelism=parallelism, shippable=True,
                             checkpoint_interval_ms=interval_ms, **config)


def reference(aggregate):
    t = pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=KEYS)])
    t = t.filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    if aggregate:
        return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")]).select(
            ["key", "value2_count", "value2_sum"])
    return t


def committed_output(out_dir):
    return ds.dataset(str(out_dir), format="parquet").to_table()


def check_output(out_dir, aggregate):
    got = committed_output(out_dir)
    expected = reference(aggregate)
    assert got.num_rows == expected.num_rows, (got.num_rows, expected.num_rows)
    if aggregate:
        assert_tables_equal(got.select(expected.column_names), expected, sort_by=["key"])
    else:  # ts is the unique row number: no row lost, none duplicated
        assert pc.count_distinct(got.column("ts")).as_py() == expected.num_rows
        assert_tables_equal(got.select(expected.column_names), expected, sort_by=["ts"])


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def completed_checkpoints(cluster, job_id):
    return (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0)


def node_index(cluster, node_id):
    return cluster.node_ids.index(node_id)


@pytest.fixture
def make_cluster(tmp_path, pid_alive):
    made = []

    def make(workers=2, slots=2, **config):
        config.setdefault("checkpoint_dir", str(tmp_path / "checkpoints"))
        config.setdefault("restart_slot_wait_s", 20)
        cluster = LocalCluster(workers=workers, slots_per_worker=slots, coordinator_config=config)
        made.append(cluster)
        return cluster.start()

    yield make
    pids = []
    for cluster in made:
        pids += [p.pid for p in cluster._procs if p is not None]
        cluster.close()
    assert not [p for p in pids if pid_alive(p)], "worker processes left running"


@pytest.mark.parametrize("aggregate,victim,replacement", [
    (False, "worker-1", True),
    (True, "sink", False),
    (False, "during-checkpoint", False),
])
def test_kill_9_a_worker_output_is_exactly_once(make_cluster, tmp_path, aggregate, victim, replacement):
    out = tmp_path / "out"
    cluster = make_cluster()
    job_id = cluster.submit(job_graph(out, aggregate=aggregate))
    wait_until(lambda: completed_checkpoints(cluster, job_id) >= 2, 20, "two completed checkpoints")
    tasks = cluster.job(job_id)["tasks"]
    if victim == "sink":
        node = next(t["node_id"] for t in tasks if t["operator_name"] == "sink")
        index = node_index(cluster, node)
    elif victim == "during-checkpoint":
        wait_until(lambda: not cluster.checkpoints(job_id)["counts"]["in_progress"], 5, "no checkpoint running")
        try:
            cluster.trigger_checkpoint(job_id)
        except Exception:  # the periodic one won the race: it is in progress now too
            pass
        index = 1
    else:
        index = 1
    assert cluster.job(job_id)["state"] == "RUNNING", "the job ended before the kill; slow it down"
    killed_at = time.monotonic()
    cluster.kill_worker(index)
    if replacement:
        cluster.add_worker()
    assert cluster.wait(job_id, 60) == "FINISHED"
    info = cluster.job(job_id)
    assert info["restarts"] >= 1
    assert "lost" in info["last_failure"]["error"]
    assert info["restored_from"] is not None and info["restored_from"]["checkpoint_id"] >= 1
    history = cluster.checkpoints(job_id)["history"]
    assert any(h["state"] == "COMPLETED" for h in history)
    if victim == "during-checkpoint":
        assert any(h["state"] == "FAILED" for h in history)
    assert time.monotonic() - killed_at < 60
    check_output(out, aggregate)


def test_user_exception_restarts_from_checkpoint_and_output_is_exact(make_cluster, tmp_path, monkeypatch):
    marker = tmp_path / "boom-marker"
    monkeypatch.setenv("SABOT_TEST_MARKER", str(marker))
    out = tmp_path / "out"
    cluster = make_cluster()
    job_id = cluster.submit(job_graph(out, map_fn="boom_once"))
    assert cluster.wait(job_id, 60) == "FINISHED"
    info = cluster.job(job_id)
    assert info["restarts"] == 1
    assert "first call of boom_once" in info["last_failure"]["error"]
    check_output(out, aggregate=False)


def test_always_failing_user_code_exhausts_the_restart_strategy(make_cluster, tmp_path):
    cluster = make_cluster()
    strategy = {"type": "fixed-delay", "attempts": 2, "delay_ms": 20}
    job_id = cluster.submit(job_graph(tmp_path / "out", map_fn="always_boom", restart_strategy=strategy))
    assert cluster.wait(job_id, 30) == "FAILED"
    info = cluster.job(job_id)
    assert info["restarts"] == 2
    assert "cursed batch" in info["failure"]["error"] and "exhausted" in info["failure"]["error"]
    assert cluster.client().slots()["free_slots"] == 4


def test_restore_at_another_parallelism_gives_the_same_result(make_cluster, tmp_path):
    out = tmp_path / "out"
    cluster = make_cluster()
    first = cluster.submit(job_graph(out, aggregate=True, agg_parallelism=2))
    wait_until(lambda: completed_checkpoints(cluster, first) >= 2, 20, "two completed checkpoints")
    assert cluster.cancel(first) == "CANCELED"
    latest = cluster.checkpoints(first)["latest_completed"]["checkpoint_id"]
    # the aggregate goes from 2 to 3 subtasks; sources and sinks keep 2
    second = cluster.submit_restored(job_graph(out, aggregate=True, agg_parallelism=3), first)
    assert cluster.wait(second, 60) == "FINISHED"
    info = cluster.job(second)
    assert info["restored_from"]["job_id"] == first and info["restored_from"]["checkpoint_id"] == latest
    assert {op["name"]: op["parallelism"] for op in info["operators"]}["aggregate"] == 3
    # it resumed: the sources did not read everything again
    source_rows = sum(t["metrics"].get("rows_in", 0) for t in info["tasks"] if t["operator_name"] == "source")
    assert 0 < source_rows < TOTAL
    check_output(out, aggregate=True)

    # sources keep their parallelism: refused, naming the operator
    with pytest.raises(Exception, match="source.*parallelism"):
        cluster.submit_restored(job_graph(tmp_path / "other", aggregate=True, parallelism=3), first)


def test_corrupt_latest_checkpoint_is_skipped_with_its_reason(make_cluster, tmp_path):
    out = tmp_path / "out"
    cluster = make_cluster()
    first = cluster.submit(job_graph(out, aggregate=True))
    wait_until(lambda: completed_checkpoints(cluster, first) >= 2, 20, "two completed checkpoints")
    assert cluster.cancel(first) == "CANCELED"
    view = cluster.checkpoints(first)
    latest = view["latest_completed"]
    # damage one state file of the newest checkpoint
    files = [os.path.join(d, f) for d, _, fs in os.walk(latest["path"]) for f in fs if not f.startswith("_")]
    assert files
    with open(files[0], "r+b") as f:
        f.seek(0)
        f.write(b"\xff\xff\xff\xff")
    second = cluster.submit_restored(job_graph(out, aggregate=True), first)
    assert cluster.wait(second, 60) == "FINISHED"
    restored = cluster.job(second)["restored_from"]
    assert restored["checkpoint_id"] < latest["checkpoint_id"]
    skipped = cluster.checkpoints(second)["skipped"]
    assert [s["checkpoint_id"] for s in skipped] == [latest["checkpoint_id"]]
    assert "checksum" in skipped[0]["reason"]
    check_output(out, aggregate=True)

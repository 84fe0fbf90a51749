"""Chaos: two exactly-once jobs run while workers are killed (-9), paused (SIGSTOP, some
past the heartbeat timeout), operators are rescaled live and checkpoints triggered at
random. Both jobs must finish with the committed output equal to pyarrow's reference:
no row lost, none duplicated. ``bench/bench_chaos.py`` runs the same for longer.
"""

import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from sabot.api.stream import Stream
from sabot.cluster.local import LocalCluster
from sabot.runtime.generators import keyed_records
from sabot.testing import ChaosMonkey, assert_tables_equal

pytestmark = pytest.mark.timeout(420)

TOTAL = 1_600_000
BATCH = 500
KEYS = 300
UDFS = "recovery_udfs"


def chaos_job(out_dir, aggregate):
    stream = (Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=BATCH,
                                    parameters={"num_keys": KEYS}, name="source").parallelism(2)
              .filter(pc.field("value") > 0.5, name="filter")
              .map(f"{UDFS}:slow_add_value2", name="map"))
    if aggregate:
        stream = stream.key_by("key").aggregate({"value2": ["count", "sum"]}, name="aggregate")
    graph = stream.to_parquet(str(out_dir), name="sink").parallelism(2).to_job_graph(
        f"chaos-{'aggregate' if aggregate else 'rows'}", default_parallelism=2, shippable=True,
        checkpoint_interval_ms=300, restart_strategy={"type": "fixed-delay", "attempts": 1000, "delay_ms": 50})
    rescalable = next(op_id for op_id, op in graph.operators.items() if op.name == ("aggregate" if aggregate
                                                                                   else "filter -> map"))
    return graph, rescalable


def reference(aggregate):
    t = pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=KEYS)]).filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    if aggregate:
        return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")]).select(
            ["key", "value2_count", "value2_sum"])
    return t


def check_exact(out_dir, aggregate):
    got = ds.dataset(str(out_dir), format="parquet").to_table()
    expected = reference(aggregate)
    assert got.num_rows == expected.num_rows, (got.num_rows, expected.num_rows)
    if aggregate:
        assert_tables_equal(got.select(expected.column_names), expected, sort_by=["key"])
    else:  # ts is the unique row number: no row lost, none duplicated
        assert pc.count_distinct(got.column("ts")).as_py() == expected.num_rows
        assert_tables_equal(got.select(expected.column_names), expected, sort_by=["ts"])


def test_random_kills_pauses_rescales_and_checkpoints_leave_both_outputs_exact(tmp_path):
    with LocalCluster(workers=3, slots_per_worker=2,
                      coordinator_config={"checkpoint_dir": str(tmp_path / "checkpoints"),
                                          "restart_slot_wait_s": 60}) as cluster:
        jobs = {}
        for aggregate in (False, True):
            graph, rescalable = chaos_job(tmp_path / f"out-{aggregate}", aggregate)
            jobs[cluster.submit(graph)] = (aggregate, rescalable)
        monkey = ChaosMonkey(cluster, seed=11, interval_s=(0.3, 1.2), pause_s=(0.2, 3.0),
                             rescalable={job_id: op for job_id, (_, op) in jobs.items()},
                             log=lambda line: print(line, file=sys.stderr))

        def all_ended():
            return all(cluster.job(j)["state"] in ("FINISHED", "FAILED", "CANCELED") for j in jobs)

        report = monkey.run(seconds=20, stop=all_ended)
        for job_id, (aggregate, _) in jobs.items():
            assert cluster.wait(job_id, 240) == "FINISHED", cluster.job(job_id).get("failure")
            check_exact(tmp_path / f"out-{aggregate}", aggregate)
        restarts = {job_id: cluster.job(job_id)["restarts"] for job_id in jobs}
        print(f"chaos {report.seconds} s, seed {report.seed}: {report.summary()}; restarts {restarts}",
              file=sys.stderr)
        # the run did what it claims: faults happened while the jobs ran
        assert report.count("kill") >= 1 and report.count("pause") >= 1, report.summary()
        assert report.count("rescale") + report.count("rescale", done=False) >= 1, report.summary()
        assert sum(restarts.values()) >= 1

"""The Source API on real worker processes: a directory source in continuous mode picks up
files written after the job started, exactly once, also through a kill -9 of a worker.

The job reads a monitored directory (one split per file, new files discovered every 200 ms),
a slow module-level map adds ``value2``, and a files sink commits by two-phase commit at the
checkpoints (every 200 ms). The source never ends: the test waits until the committed output
holds every row written, cancels the job, and compares the output with a reference computed
independently by pyarrow (``ts`` is the unique row number: nothing lost, nothing twice).
"""

import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sabot.api.stream import Stream
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal

from tests.conftest import started_local_cluster, wait_until

pytestmark = pytest.mark.timeout(150)

ROWS = 20_000  # per file
KEYS = 100


def write_file(directory, index):
    """File ``index`` holds rows [index * ROWS, (index + 1) * ROWS); written under a hidden name
    and renamed when complete (a monitored directory lists only complete files)."""
    table = pa.Table.from_batches([keyed_records(index * ROWS, ROWS, num_keys=KEYS)])
    tmp = directory / f".part-{index:03d}.parquet.tmp"
    pq.write_table(table, tmp, row_group_size=5000)
    tmp.rename(directory / f"part-{index:03d}.parquet")


def reference(num_files):
    t = pa.Table.from_batches([keyed_records(0, num_files * ROWS, num_keys=KEYS)])
    return t.append_column("value2", pc.multiply(t.column("value"), 2.0))


def job_graph(in_dir, out_dir):
    schema = keyed_records(0, 1, num_keys=KEYS).schema
    stream = (Stream.from_dataset(str(in_dir), batch_size=2000, monitor_interval=0.2, schema=schema,
                                  name="source").parallelism(2)
              .map("recovery_udfs:slow_add_value2", name="map"))
    return stream.to_parquet(str(out_dir), name="sink").to_job_graph(
        "monitored-files", default_parallelism=2, shippable=True, checkpoint_interval_ms=200)


def committed_rows(out_dir):
    if not out_dir.exists():
        return 0
    return ds.dataset(str(out_dir), format="parquet").count_rows()


def completed_checkpoints(cluster, job_id):
    return (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0)


def check(out_dir, num_files):
    got = ds.dataset(str(out_dir), format="parquet").to_table()
    expected = reference(num_files)
    assert got.num_rows == expected.num_rows, (got.num_rows, expected.num_rows)
    assert pc.count_distinct(got.column("ts")).as_py() == expected.num_rows
    assert_tables_equal(got.select(expected.column_names), expected, sort_by=["ts"])


@pytest.mark.parametrize("kill", [False, True])
def test_a_monitored_directory_is_read_exactly_once_also_through_a_kill_9(tmp_path, kill):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(3):
        write_file(in_dir, i)
    with started_local_cluster(checkpoint_dir=str(tmp_path / "checkpoints"), restart_slot_wait_s=20) as cluster:
        job_id = cluster.submit(job_graph(in_dir, out_dir))
        try:
            wait_until(lambda: completed_checkpoints(cluster, job_id) >= 2, 30, "two completed checkpoints")
            # files written after the job started: found by the next listing
            for i in range(3, 6):
                write_file(in_dir, i)
            if kill:
                wait_until(lambda: committed_rows(out_dir) > 0, 30, "some committed output")
                assert cluster.job(job_id)["state"] == "RUNNING"
                cluster.kill_worker(1)
                cluster.add_worker()
                for i in range(6, 8):  # and more while the job restarts
                    write_file(in_dir, i)
            num_files = 8 if kill else 6
            wait_until(lambda: committed_rows(out_dir) >= num_files * ROWS, 90, "every row committed")
            time.sleep(0.6)  # a few more checkpoints: nothing may come twice
            info = cluster.job(job_id)
            assert info["state"] == "RUNNING", "a monitored directory source never ends"
            if kill:
                assert info["restarts"] >= 1 and info["restored_from"] is not None
        finally:
            cluster.cancel(job_id)
        check(out_dir, num_files)

"""Channels between the worker processes of a LocalCluster go through shared memory."""

import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster.local import LocalCluster
from sabot.runtime import shm
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not shm.AVAILABLE, reason="needs memfd_create and /proc (Linux)")]

ROWS = 600_000


def keyed_count():
    return (Stream.from_generator("sabot.runtime.generators:keyed_records", total_rows=ROWS, batch_size=65_536,
                                  parameters={"num_keys": 5_000})
            .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts")
            .to_job_graph("shm-keyed-count", default_parallelism=2, shippable=True))


def expected():
    table = pa.Table.from_batches([keyed_records(0, ROWS, num_keys=5_000)])
    return table.group_by("key").aggregate([("value", "count"), ("value", "sum")])


def channel_totals(cluster):
    job = cluster.job(cluster.client().jobs()[0]["job_id"])
    totals = {}
    for task in job["tasks"]:
        for name in ("shm_batches_sent", "shm_batches_received", "shm_bytes_sent", "shm_bytes_received",
                     "wire_bytes_received"):
            totals[name] = totals.get(name, 0) + task["metrics"].get(name, 0)
    return totals


@pytest.mark.parametrize("shm_on", [True, False], ids=["shm", "SABOT_SHM=0"])
def test_a_cluster_job_moves_its_batches_between_workers_through_shared_memory(shm_on, monkeypatch):
    if not shm_on:
        monkeypatch.setenv("SABOT_SHM", "0")  # workers inherit the environment
    with LocalCluster(workers=2, slots_per_worker=2) as cluster:
        result = cluster.run(keyed_count(), timeout=120)
        assert_tables_equal(result.table("counts"), expected(), sort_by=["key"])
        totals = channel_totals(cluster)
    # the job's subtasks are on both workers, so the hash exchange crosses processes
    if shm_on:
        assert totals["shm_batches_sent"] == totals["shm_batches_received"] > 0
        assert totals["shm_bytes_sent"] == totals["shm_bytes_received"] > 2 << 20
        # the connection carried doorbells and the small batches (the aggregates' output)
        assert totals["wire_bytes_received"] < totals["shm_bytes_received"]
    else:
        assert totals["shm_batches_sent"] == totals["shm_batches_received"] == 0
        assert totals["wire_bytes_received"] > 2 << 20

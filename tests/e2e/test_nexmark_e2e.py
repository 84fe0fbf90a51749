"""Every Nexmark query on a LocalCluster (real worker processes) with checkpoints every
200 ms: a worker holding the job's tasks is killed with SIGKILL mid-run, the job restarts
from its latest checkpoint, and the result must equal the independent reference (no row
lost, none counted twice).

About 5 s per query (the generator is slowed down so the kill lands mid-run); one cluster
serves the module, a fresh worker replaces each killed one.
"""

import os
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from sabot.nexmark import generate_tables
from sabot.nexmark.queries import QUERIES, build
from sabot.testing import assert_tables_equal
from tests.conftest import started_local_cluster, wait_until

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nexmark"))
import reference  # noqa: E402

pytestmark = pytest.mark.timeout(180)

N = 16_000
BATCH = 400
CONFIG = {"event_rate": 1_000}
ORDER = sorted(QUERIES, key=lambda q: int(q[1:]))


@pytest.fixture(scope="module")
def tables():
    return generate_tables(N, **CONFIG)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with started_local_cluster(checkpoint_dir=str(tmp_path_factory.mktemp("nexmark-checkpoints")),
                               restart_slot_wait_s=20) as c:
        yield c


@pytest.mark.parametrize("name", ORDER)
def test_query_survives_kill_9_exactly(cluster, tables, tmp_path, name):
    out = tmp_path / "q10"
    stream = build(name, N, batch_size=BATCH, generator="nexmark_udfs:slow_events",
                   path=str(out) if name == "q10" else None, **CONFIG)
    job = stream.to_job_graph(name, default_parallelism=2, shippable=True, checkpoint_interval_ms=200)
    job_id = cluster.submit(job)
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 1, 30,
               "a completed checkpoint")
    info = cluster.job(job_id)
    assert info["state"] == "RUNNING", "the job ended before the kill; slow it down"
    # kill the worker running the second subtask of the job's last stateful operator (or any task)
    tasks = sorted(info["tasks"], key=lambda t: (t["subtask_index"] != 1, t["operator_name"].startswith("nexmark")))
    victim = cluster.node_ids.index(tasks[0]["node_id"])
    cluster.kill_worker(victim)
    cluster.add_worker()
    assert cluster.wait(job_id, 120) == "FINISHED", cluster.job(job_id).get("failure")
    info = cluster.job(job_id)
    assert info["restarts"] >= 1 and info["restored_from"] is not None
    if name == "q10":
        part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
        got = ds.dataset(str(out), partitioning=part).to_table().select(reference.SCHEMAS["q10"].names)
        assert_tables_equal(got, reference.q10(tables))
        return
    got = cluster.result(job_id).table(name)
    if name == "q12":
        reference.check_q12(got, tables)
    else:
        assert_tables_equal(got, reference.QUERIES[name](tables))

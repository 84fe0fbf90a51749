"""Faults that are not kill -9, on real worker processes: a paused worker (SIGSTOP), a worker
whose Python is held by one long C call. The committed output must equal the reference
(no row lost, none duplicated), and a busy worker must not be mistaken for a dead one.
"""

import os
import signal
import time

import pytest

from sabot.cluster.local import LocalCluster
from test_recovery_e2e import check_output, completed_checkpoints, job_graph, wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Three workers, two slots each: a job of parallelism 2 fits on one, with room to move."""
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    with LocalCluster(workers=3, slots_per_worker=2,
                      coordinator_config={"checkpoint_dir": str(checkpoints), "restart_slot_wait_s": 30}) as c:
        yield c


def sink_worker(cluster, job_id):
    """Index of the worker hosting the job's first sink subtask."""
    node = next(t["node_id"] for t in cluster.job(job_id)["tasks"] if t["operator_name"] == "sink")
    return cluster.node_ids.index(node)


def live_workers(cluster):
    return sum(1 for pid in cluster.worker_pids if pid is not None)


@pytest.mark.parametrize("seconds", [0.2, 0.5, 0.75, 1.0, 2.0, 3.0, 10.0])
@pytest.mark.parametrize("round_", [1, 2, 3])
def test_a_paused_sink_worker_leaves_the_committed_output_exact(cluster, tmp_path, seconds, round_):
    if seconds >= 10 and round_ > 2:
        pytest.skip("two rounds of the 10 s pause are enough")
    out = tmp_path / "out"
    strategy = {"type": "fixed-delay", "attempts": 10, "delay_ms": 50}
    job_id = cluster.submit(job_graph(out, restart_strategy=strategy, interval_ms=150))
    wait_until(lambda: completed_checkpoints(cluster, job_id) >= 1, 30, "a completed checkpoint")
    index = sink_worker(cluster, job_id)
    pid = cluster.worker_pids[index]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cluster.wait(job_id, 120) == "FINISHED", cluster.job(job_id).get("failure")
    check_output(out, aggregate=False)
    info = cluster.job(job_id)
    timeout = cluster.coordinator.config.heartbeat_timeout_s
    if seconds < timeout / 2:
        assert info["restarts"] == 0, info["restart_history"]  # a short pause is only a pause
    # every worker is alive and registered again (a dropped one rejoined)
    assert live_workers(cluster) == 3
    wait_until(lambda: len(cluster.coordinator.nodes) == 3, 30, "every worker registered")


def test_a_function_holding_the_gil_for_5_s_does_not_lose_its_worker(tmp_path, monkeypatch):
    marker = tmp_path / "held"
    # the worker processes inherit these: the first call of hold_gil_once holds the GIL 5 s
    monkeypatch.setenv("SABOT_TEST_GIL_MARKER", str(marker))
    monkeypatch.setenv("SABOT_TEST_GIL_SECONDS", "5")
    with LocalCluster(workers=2, slots_per_worker=2,
                      coordinator_config={"checkpoint_dir": str(tmp_path / "checkpoints")}) as cluster:
        other = cluster.submit(job_graph(tmp_path / "other", interval_ms=150))
        held = cluster.submit(job_graph(tmp_path / "held-out", map_fn="hold_gil_once", interval_ms=150))
        assert cluster.wait(held, 120) == "FINISHED", cluster.job(held).get("failure")
        assert cluster.wait(other, 120) == "FINISHED", cluster.job(other).get("failure")
        assert marker.exists(), "the GIL was never held: the test did not test anything"
        for job_id, out in ((held, tmp_path / "held-out"), (other, tmp_path / "other")):
            assert cluster.job(job_id)["restarts"] == 0, cluster.job(job_id)["restart_history"]
            check_output(out, aggregate=False)
        assert not cluster.coordinator.registry.lost  # nobody was declared lost
        assert len(cluster.coordinator.nodes) == 2


def test_big_submissions_beside_a_running_job_leave_it_running(tmp_path):
    """A valid 10,000-operator job runs; a 100-operator graph at parallelism 32,768 (3.3 M tasks)
    is refused before anything is expanded; the unrelated job keeps RUNNING, nobody is lost,
    and the coordinator's loop is never held for long."""
    import pyarrow.compute as pc

    from sabot.api.stream import Stream
    from sabot.cluster.client import ApiError
    from sabot.runtime.generators import keyed_records

    def chain(operators, parallelism=1, max_parallelism=128):
        s = Stream.from_generator(keyed_records, total_rows=100, batch_size=50, parameters={"num_keys": 5}, name="src")
        for i in range(operators - 2):
            s = s.filter(pc.field("value") >= 0.1 * (i % 2), name=f"f{i}")
        graph = s.collect(name="out").to_job_graph(f"chain-{operators}", default_parallelism=parallelism,
                                                   shippable=True)
        for op in graph.operators.values():
            op.max_parallelism = max_parallelism
        return graph

    with LocalCluster(workers=2, slots_per_worker=2,
                      coordinator_config={"checkpoint_dir": str(tmp_path / "checkpoints")}) as cluster:
        client = cluster.client()
        endless = (Stream.from_generator(keyed_records, total_rows=None, batch_size=1000, parameters={"num_keys": 50},
                                         name="s").key_by("key").aggregate({"value": "sum"}, name="a")
                   .collect(name="o"))
        other = cluster.submit(endless.to_job_graph("endless", default_parallelism=1, shippable=True,
                                                    checkpoint_interval_ms=200))
        wait_until(lambda: client.job(other)["state"] == "RUNNING", 30, "the unrelated job running")
        cluster.call(_reset_lag(cluster.coordinator))
        with pytest.raises(ApiError) as refused:
            client.submit(chain(100, parallelism=32768, max_parallelism=32768))
        assert refused.value.status == 400 and "max_tasks_per_job" in str(refused.value)
        big = client.submit(chain(10_000))
        assert cluster.wait(big, 120) == "FINISHED", cluster.job(big).get("failure")
        values = keyed_records(0, 100, num_keys=5).column("value")
        expected = pc.sum(pc.greater_equal(values, 0.1).cast("int64")).as_py()  # the odd filters decide
        assert cluster.result(big).table("out").num_rows == expected
        info = client.job(other)
        assert info["state"] == "RUNNING" and info["restarts"] == 0
        assert len(cluster.coordinator.nodes) == 2 and not cluster.coordinator.registry.lost
        lag = client.overview()["loop_lag"]
        # expanded, checked and serialised off the loop: 8.9 s held before; well under 1 s on a quiet
        # machine, up to ~2 s seen at load average 6 (the bound is about the loop, not speed)
        assert lag["max_ms"] < 3000, lag
        cluster.cancel(other)


async def _reset_lag(coordinator):
    coordinator.loop_lag.reset()


def test_two_jobs_started_at_once_into_one_directory_one_is_refused(cluster, tmp_path):
    """Two jobs writing the same directory: whichever claims it first writes, the other fails
    naming the directory, and the committed output is exactly one job's rows. A rerun into
    the finished directory is refused the same way; mode='append' is the way to add."""
    out = tmp_path / "shared"
    none = {"type": "none"}
    first, second = (cluster.submit(job_graph(out, restart_strategy=none, interval_ms=150)) for _ in range(2))
    states = {job_id: cluster.wait(job_id, 120) for job_id in (first, second)}
    assert sorted(states.values()) == ["FAILED", "FINISHED"], states
    loser = next(j for j, s in states.items() if s == "FAILED")
    winner = next(j for j, s in states.items() if s == "FINISHED")
    error = cluster.job(loser)["failure"]["error"]
    assert str(out) in error and ("claimed at the same moment" in error or winner in error), error
    check_output(out, aggregate=False)  # exactly the winner's rows: none of the loser's
    rerun = cluster.submit(job_graph(out, restart_strategy=none))
    assert cluster.wait(rerun, 120) == "FAILED"
    assert f"holds the output of job {winner}" in cluster.job(rerun)["failure"]["error"]
    check_output(out, aggregate=False)

"""Checkpoint routes and restart strategies of the coordinator (workers in this process)."""

import asyncio
import contextlib

import aiohttp
import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster import protocol
from sabot.cluster.coordinator import ClusterCoordinator
from sabot.cluster.restart import (
    ExponentialBackoffRestart,
    FixedDelayRestart,
    InvalidRestartStrategy,
    NoRestart,
    restart_strategy_from_config,
)
from sabot.cluster.worker import Worker
from sabot.testing import assert_tables_equal

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def cluster(tmp_path, workers=1, slots=2, **config):
    coordinator = ClusterCoordinator(dict(port=0, checkpoint_dir=str(tmp_path / "ckpt"), **config))
    await coordinator.start()
    started = []
    try:
        for _ in range(workers):
            started.append(await Worker(coordinator.url, num_slots=slots).start())
        yield coordinator, started
    finally:
        for w in started:
            await w.stop()
        await coordinator.stop()


async def http(method, url):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url) as resp:
            return resp.status, await resp.json()


async def until(predicate, timeout=10.0, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_restart_strategies_delays_and_limits():
    fixed = restart_strategy_from_config({"type": "fixed-delay", "attempts": 2, "delay_ms": 50})
    assert isinstance(fixed, FixedDelayRestart)
    assert [fixed.next_delay(n) for n in (1, 2, 3)] == [0.05, 0.05, None]
    expo = restart_strategy_from_config({"type": "exponential-backoff", "attempts": 4, "initial_delay_ms": 10,
                                         "max_delay_ms": 35, "multiplier": 2})
    assert isinstance(expo, ExponentialBackoffRestart)
    assert [expo.next_delay(n) for n in (1, 2, 3, 4, 5)] == [0.01, 0.02, 0.035, 0.035, None]
    assert isinstance(restart_strategy_from_config({"type": "none"}), NoRestart)
    default = restart_strategy_from_config(None)
    assert default.attempts == 3 and default.next_delay(4) is None
    with pytest.raises(InvalidRestartStrategy, match="unknown type 'sometimes'"):
        restart_strategy_from_config({"type": "sometimes"})
    with pytest.raises(InvalidRestartStrategy, match="'attempts' must be an integer >= 0"):
        restart_strategy_from_config({"type": "fixed-delay", "attempts": -1})
    with pytest.raises(InvalidRestartStrategy, match="unknown field"):
        restart_strategy_from_config({"type": "fixed-delay", "delay": 5})


def test_bad_restart_strategy_is_refused_at_submit(arun, tmp_path, user_module):
    async def body():
        async with cluster(tmp_path) as (c, _):
            stream = Stream.from_table(pa.table({"value": [1.0]})).collect()
            graph = stream.to_job_graph("bad", shippable=True, restart_strategy={"type": "never"})
            with pytest.raises(protocol.BadRequest, match="unknown type 'never'"):
                await c.submit_stream_job(graph)

    arun(body())


def test_on_demand_checkpoints_over_http(arun, tmp_path, user_module):
    async def body():
        async with cluster(tmp_path) as (c, _):
            stream = (Stream.from_generator(f"{user_module}:slow_rows", total_rows=None, batch_size=100)
                      .key_by("key").aggregate({"value": ["count", "sum"]}, emit="final").collect(name="out"))
            job_id = await c.submit_stream_job(stream.to_job_graph("endless", shippable=True))
            await until(lambda: c.jobs[job_id].state.value == "RUNNING", what="RUNNING")
            status, answer = await http("POST", f"{c.url}/jobs/{job_id}/checkpoints")
            assert status == 202 and answer["checkpoint_id"] == 1
            # one at a time: a second trigger while the first runs is a 409 naming it, or
            # the first already completed and this is checkpoint 2
            status, answer = await http("POST", f"{c.url}/jobs/{job_id}/checkpoints")
            assert (status == 409 and "checkpoint 1 is in progress" in answer["error"]) or \
                (status == 202 and answer["checkpoint_id"] == 2)
            await until(lambda: c.jobs[job_id].checkpointing.latest is not None, what="a completed checkpoint")
            status, view = await http("GET", f"{c.url}/jobs/{job_id}/checkpoints")
            assert status == 200
            done = [h for h in view["history"] if h["state"] == "COMPLETED"]
            assert done and done[0]["size_bytes"] > 0 and done[0]["num_acks"] == done[0]["expected"] == 3
            assert {"id", "trigger_time", "duration_ms", "alignment_ms"} <= set(done[0])
            assert view["latest_completed"]["checkpoint_id"] == done[-1]["id"]
            # the committed checkpoint is in the storage, metadata and all
            latest = c.jobs[job_id].checkpointing.storage.latest(job_id)
            assert latest.checkpoint_id == view["latest_completed"]["checkpoint_id"]
            assert latest.keyed_handles(next(o for o, op in c.jobs[job_id].job_graph.operators.items()
                                             if op.name.startswith("aggregate")))
            await c.cancel_job(job_id)
            status, answer = await http("POST", f"{c.url}/jobs/{job_id}/checkpoints")
            assert status == 409 and "CANCELED" in answer["error"] and "RUNNING" in answer["error"]
            status, answer = await http("POST", f"{c.url}/jobs/nope/checkpoints")
            assert status == 404
            status, doc = await http("GET", f"{c.url}/openapi.json")
            assert {"get", "post"} <= set(doc["paths"]["/jobs/{job_id}/checkpoints"])

    arun(body())


def test_restore_from_unknown_job_or_path_is_refused(arun, tmp_path):
    async def body():
        async with cluster(tmp_path) as (c, _):
            graph = Stream.from_table(pa.table({"value": [1.0]})).collect().to_job_graph("x", shippable=True)
            with pytest.raises(protocol.NotFound, match="neither a job"):
                await c.submit_stream_job(graph, restore_from="no-such-job")
            with pytest.raises(protocol.NotFound, match="no checkpoint directory"):
                await c.submit_stream_job(graph, restore_from=str(tmp_path / "nothing" / "job" / "chk-3"))

    arun(body())


def test_finished_bounded_job_after_checkpoints_has_exact_result(arun, tmp_path):
    table = pa.table({"key": [i % 13 for i in range(30_000)], "value": [float(i) for i in range(30_000)]})

    async def body():
        async with cluster(tmp_path) as (c, _):
            stream = (Stream.from_table(table, batch_size=500)
                      .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))
            job_id = await c.submit_stream_job(stream.to_job_graph("kc", default_parallelism=2, shippable=True,
                                                                   checkpoint_interval_ms=20))
            assert await c.wait_for_job(job_id, 30) == "FINISHED"
            return (await c.job_result(job_id)).table("counts")

    got = arun(body())
    expected = table.group_by("key").aggregate([("value", "count"), ("value", "sum")])
    assert_tables_equal(got, expected.select(["key", "value_count", "value_sum"]), sort_by=["key"])

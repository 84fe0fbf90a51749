"""A long-lived cluster running many short jobs keeps bounded state.

The coordinator keeps the last ``retain_ended_jobs`` ended jobs for ``ended_job_ttl_s``;
a forgotten job is dropped everywhere (coordinator records, rescaler, operator ids,
its checkpoints in the coordinator's own directory, its workers' tasks and channels).
A worker never told bounds its ended tasks by itself.
"""

import asyncio
import os

import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster.retention import EndedJobs
from sabot.runtime.data_server import DataServer
from sabot.runtime.embedded import build_deployment_descriptors
from sabot.runtime.task_manager import TaskManager
from sabot.testing import assert_tables_equal
from tests.cluster.test_coordinator import cluster, http, keyed_table, reference_counts, until

pytestmark = pytest.mark.timeout(120)


def short_job(table, i):
    return (Stream.from_table(table, batch_size=500).key_by("key").aggregate({"value": ["count", "sum"]})
            .collect(name="counts")
            .to_job_graph(f"short-{i}", default_parallelism=2, shippable=True, checkpoint_interval_ms=1))


def test_ended_jobs_capacity_and_expiry():
    ended = EndedJobs(max_jobs=3, ttl_s=10.0, remembered=2)
    for i, job_id in enumerate(["a", "b", "c", "d", "e"]):
        ended.ended(job_id, at=float(i))
    assert ended.due(now=5.0) == ["a", "b"]          # over capacity, oldest first
    assert ended.due(now=13.5) == ["a", "b", "c", "d"]  # and those ended more than 10 s ago
    for job_id in ("a", "b", "c"):
        ended.forget(job_id)
    assert len(ended) == 2
    assert not ended.was_forgotten("a") and ended.was_forgotten("b") and ended.was_forgotten("c")
    with pytest.raises(ValueError, match="retain_ended_jobs"):
        EndedJobs(max_jobs=0, ttl_s=1)
    with pytest.raises(ValueError, match="ended_job_ttl_s"):
        EndedJobs(max_jobs=1, ttl_s=float("nan"))


def test_many_short_jobs_leave_only_the_retained_ones_anywhere(arun, tmp_path):
    async def body():
        table = keyed_table(3000)
        expected = reference_counts(table)
        async with cluster(workers=2, slots=2, retain_ended_jobs=3) as (c, workers):
            ids, had_checkpoints = [], set()
            for i in range(12):
                job_id = await c.submit_stream_job(short_job(table, i))
                assert await c.wait_for_job(job_id, 30) == "FINISHED"
                ids.append(job_id)
                had_checkpoints.update(os.listdir(c.checkpoint_root))
                # the newest job's result is always there, and right
                assert_tables_equal((await c.job_result(job_id)).table("counts"), expected, sort_by=["key"])
            kept, forgotten = ids[-3:], ids[:-3]
            assert had_checkpoints & set(forgotten), "no forgotten job ever had a checkpoint: the test proves nothing"
            assert sorted(c.jobs) == sorted(kept)

            def leftovers():
                return {
                    "tasks": {t.job_id for w in workers for t in w.task_manager.tasks.values()} - set(kept),
                    "released channel ids": set().union(*(w.data_server._released for w in workers)) - set(kept),
                    "checkpoint dirs": set(os.listdir(c.checkpoint_root)) - set(kept),
                }

            # workers release asynchronously: wait until nothing of a forgotten job is left
            await until(lambda: not any(leftovers().values()), what=f"forgotten jobs released: {leftovers()}")
            assert set(os.listdir(c.checkpoint_root)) <= set(kept)
            assert c._operator_ids == set().union(*(c.jobs[j].job_graph.operators for j in kept))
            assert set(c.rescaler.records) <= set(kept)
            for job_id in forgotten[-2:]:
                status, err = await http("GET", f"{c.url}/jobs/{job_id}")
                assert status == 404 and "no longer kept" in err["error"] and "retain_ended_jobs" in err["error"]
            status, err = await http("GET", f"{c.url}/jobs/never-was")
            assert status == 404 and "no longer kept" not in err["error"]
            # what is kept stays whole
            status, result = await http("GET", f"{c.url}/jobs/{kept[0]}/result")
            assert status == 200 and result["tables"]["counts"]["num_rows"] == expected.num_rows

    arun(body(), 100)


def test_ended_jobs_expire(arun):
    async def body():
        table = keyed_table(500)
        async with cluster(workers=1, slots=2, ended_job_ttl_s=0.3, heartbeat_interval_s=0.05) as (c, (w,)):
            job_id = await c.submit_stream_job(short_job(table, 0))
            assert await c.wait_for_job(job_id, 30) == "FINISHED"
            await until(lambda: job_id not in c.jobs, timeout=5, what="the job expired")
            await until(lambda: not w.task_manager.tasks, timeout=5, what="the worker released its tasks")

    arun(body(), 30)


def test_a_worker_never_told_bounds_its_ended_tasks():
    table = pa.table({"key": pa.array([1, 2, 3] * 10), "value": pa.array([1.0] * 30)})

    async def run():
        server = DataServer()
        manager = TaskManager(server, max_ended_tasks=10)
        try:
            for i in range(8):
                graph = Stream.from_table(table).collect(name="out").to_job_graph(f"j{i}", default_parallelism=2)
                manager.tables.add(graph.tables)  # as a worker fetches them
                for tdd in build_deployment_descriptors(graph.to_execution_graph(), graph.job_id).values():
                    await manager.deploy(tdd)
                await asyncio.wait_for(manager.wait(), 30)
                assert len(manager.tasks) <= 10
            kept_jobs = {t.job_id for t in manager.tasks.values()}
            # the most recently ended tasks are the ones kept
            assert graph.job_id in kept_jobs
            assert all(t.state.is_terminal for t in manager.tasks.values())
            released = await manager.release_job(graph.job_id)
            assert released == 4 and graph.job_id not in {t.job_id for t in manager.tasks.values()}
            assert graph.job_id not in server._released
        finally:
            await manager.shutdown()
            await server.stop()

    asyncio.run(asyncio.wait_for(run(), 60))


def test_an_owner_forgets_its_job_and_results_leave_the_workers_once_fetched(arun, user_module):
    from tests.cluster.test_coordinator import unbounded_job

    async def body():
        table = keyed_table(2000)
        async with cluster(workers=1, slots=4) as (c, (w,)):
            running = await c.submit_stream_job(unbounded_job(user_module, 1))
            await until(lambda: c.jobs[running].state.value == "RUNNING", what="RUNNING")
            status, err = await http("DELETE", f"{c.url}/jobs/{running}")
            assert status == 409 and "cancel it first" in err["error"]
            job_id = await c.submit_stream_job(short_job(table, 0))
            assert await c.wait_for_job(job_id, 30) == "FINISHED"
            assert any(t.job_id == job_id for t in w.task_manager.tasks.values())
            status, result = await http("GET", f"{c.url}/jobs/{job_id}/result")
            assert status == 200 and result["tables"]["counts"]["num_rows"] == reference_counts(table).num_rows
            # the coordinator holds the tables now; the worker keeps nothing of the job
            await until(lambda: not any(t.job_id == job_id for t in w.task_manager.tasks.values()),
                        what="the worker released the fetched job")
            status, again = await http("GET", f"{c.url}/jobs/{job_id}/result")
            assert status == 200 and again == result
            status, _ = await http("DELETE", f"{c.url}/jobs/{job_id}")
            assert status == 204 and job_id not in c.jobs
            status, err = await http("GET", f"{c.url}/jobs/{job_id}/result")
            assert status == 404 and "no longer kept" in err["error"]
            assert c.jobs[running].state.value == "RUNNING"
            await c.cancel_job(running)

    arun(body(), 60)

"""Checkpoint scheduling, in-process and deterministic: periodic triggers, completion and
notification, timeouts, declines (TestingCluster: fake workers, manual clock)."""

import pytest

from sabot.errors import Conflict
from sabot.execution.messages import CheckpointComplete, CheckpointDecline, TriggerCheckpoint
from sabot.testing import TestingCluster
from tests.cluster.plans import pipeline


async def running(tc, **config):
    tc.add_worker("w1", slots=1)
    tc.add_worker("w2", slots=1)
    job_id = await tc.coordinator.submit_stream_job(pipeline(2, **config))
    tc.report_all(job_id, "RUNNING")
    return tc.job(job_id)


def sent(tc, kind):
    return [(n, m) for n, m in tc.gateway.sent if isinstance(m, kind)]


def test_periodic_checkpoints_trigger_at_the_interval_and_commit_when_every_task_acked(arun, tmp_path):
    async def scenario():
        async with TestingCluster(checkpoint_dir=str(tmp_path)) as tc:
            job = await running(tc, checkpoint_interval_ms=1000)
            await tc.advance(0.95)
            assert not sent(tc, TriggerCheckpoint)
            await tc.advance(0.1)
            triggers = sent(tc, TriggerCheckpoint)
            sources = {t for t in job.source_task_ids()}
            assert {m.attempt_id.task_id for _, m in triggers} == sources and len(triggers) == 2
            assert {n for n, _ in triggers} == {"w1", "w2"}
            cid = triggers[0][1].checkpoint_id
            tasks = list(job.exec_graph.tasks)
            tc.acknowledge(job.job_id, cid, tasks[:-1])
            await tc.settle()
            assert job.checkpointing.latest is None and not sent(tc, CheckpointComplete)
            tc.acknowledge(job.job_id, cid, tasks[-1:])
            await tc.settle()
            assert job.checkpointing.latest["checkpoint_id"] == cid
            assert job.checkpointing.storage.latest(job.job_id).checkpoint_id == cid
            assert sorted(n for n, _ in sent(tc, CheckpointComplete)) == ["w1", "w2"]
            await tc.advance(1.0)  # the next one follows at the interval
            assert len(sent(tc, TriggerCheckpoint)) == 4

    arun(scenario())


def test_a_checkpoint_not_acknowledged_in_time_is_aborted(arun, tmp_path):
    async def scenario():
        async with TestingCluster(checkpoint_dir=str(tmp_path), checkpoint_timeout_s=2.0) as tc:
            job = await running(tc)
            cid = await tc.coordinator.trigger_checkpoint(job.job_id)
            tc.acknowledge(job.job_id, cid, list(job.exec_graph.tasks)[:1])
            with pytest.raises(Conflict, match=f"checkpoint {cid} is in progress"):
                await tc.coordinator.trigger_checkpoint(job.job_id)
            await tc.advance(1.9)
            assert job.checkpointing.coordinator.pending
            await tc.advance(0.2)
            assert not job.checkpointing.coordinator.pending
            history = job.checkpointing.view()["history"]
            assert history[0]["state"] == "FAILED" and "timed out" in history[0]["failure_reason"]
            assert await tc.coordinator.trigger_checkpoint(job.job_id) == cid + 1

    arun(scenario())


def test_a_declined_checkpoint_is_aborted_and_the_job_goes_on(arun, tmp_path):
    async def scenario():
        async with TestingCluster(checkpoint_dir=str(tmp_path)) as tc:
            job = await running(tc)
            cid = await tc.coordinator.trigger_checkpoint(job.job_id)
            task = next(iter(job.exec_graph.tasks.values()))
            tc.coordinator.on_checkpoint_message(task.node_id, CheckpointDecline(job.job_id, task.attempt_id, cid,
                                                                                 "disk full"))
            await tc.settle()
            history = job.checkpointing.view()["history"]
            assert history[0]["state"] == "FAILED" and "disk full" in history[0]["failure_reason"]
            assert job.state.value == "RUNNING" and job.checkpointing.latest is None

    arun(scenario())


def test_checkpoints_are_taken_only_while_running(arun, tmp_path):
    async def scenario():
        async with TestingCluster(checkpoint_dir=str(tmp_path), refuse_oversized=False) as tc:
            tc.add_worker("w1", slots=1)
            job_id = await tc.coordinator.submit_stream_job(pipeline(2))  # waits for a second slot
            with pytest.raises(Conflict, match="WAITING_FOR_SLOTS"):
                await tc.coordinator.trigger_checkpoint(job_id)

    arun(scenario())

"""Placement, in-process and deterministic: gang scheduling on the slot pool's queue, the
sharing-group rule, spreading, refusals (TestingCluster: fake workers, manual clock)."""

import pytest

from sabot.errors import InvalidRequest, SlotRequestTooLarge
from sabot.testing import TestingCluster
from tests.cluster.plans import op_id, pipeline, tasks_of


def test_a_job_waits_for_all_its_slots_and_starts_when_a_worker_joins(arun):
    async def scenario():
        async with TestingCluster(slot_wait_timeout_s=30) as tc:
            job_id = await tc.coordinator.submit_stream_job(pipeline(2))
            job = tc.job(job_id)
            await tc.settle()
            assert job.state.value == "WAITING_FOR_SLOTS" and not tc.gateway.deployed
            tc.add_worker("w1", slots=1)
            await tc.settle()
            # one slot is not enough for parallelism 2: nothing is taken, nothing deployed
            assert job.state.value == "WAITING_FOR_SLOTS" and tc.coordinator.slot_pool.free_slots == 1
            tc.add_worker("w2", slots=1)
            await tc.settle()
            assert job.state.value == "RUNNING"
            assert sorted(t.task_id for _, t in tc.gateway.deployed) == sorted(job.exec_graph.tasks)
            assert tc.coordinator.slot_pool.free_slots == 0 and tc.coordinator.slot_pool.pending_requests == 0

    arun(scenario())


def test_a_job_waiting_too_long_fails_naming_what_it_needed(arun):
    async def scenario():
        async with TestingCluster(slot_wait_timeout_s=5, refuse_oversized=False) as tc:
            tc.add_worker("w1", slots=1)
            job_id = await tc.coordinator.submit_stream_job(pipeline(2))
            await tc.advance(4.9)
            assert tc.job(job_id).state.value == "WAITING_FOR_SLOTS"
            await tc.advance(0.2)
            job = tc.job(job_id)
            assert job.state.value == "FAILED" and job.failure["type"] == "SlotsExhausted"
            assert "needs 2 free slots" in job.failure["error"] and "1 were free" in job.failure["error"]
            assert tc.coordinator.slot_pool.free_slots == 1 and tc.coordinator.slot_pool.pending_requests == 0

    arun(scenario())


def test_jobs_get_their_slots_in_submission_order(arun):
    async def scenario():
        async with TestingCluster(refuse_oversized=False) as tc:
            tc.add_worker("w1", slots=1)
            first = await tc.coordinator.submit_stream_job(pipeline(2, name="wide"))
            second = await tc.coordinator.submit_stream_job(pipeline(1, name="narrow"))
            await tc.settle()
            # the narrow job would fit the free slot, but it does not overtake the wide one
            assert tc.job(first).state.value == tc.job(second).state.value == "WAITING_FOR_SLOTS"
            tc.add_worker("w2", slots=2)
            await tc.settle()
            assert tc.job(first).state.value == tc.job(second).state.value == "RUNNING"

    arun(scenario())


def test_subtasks_spread_over_workers_and_each_pipeline_shares_one_slot(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=2)
            tc.add_worker("w2", slots=2)
            job = tc.job(await tc.coordinator.submit_stream_job(pipeline(2)))
            by_subtask = {}
            for task in job.exec_graph.tasks.values():
                by_subtask.setdefault(task.subtask_index, set()).add((task.node_id, task.slot_id))
            assert all(len(places) == 1 for places in by_subtask.values())  # a pipeline in one slot
            assert {next(iter(p))[0] for p in by_subtask.values()} == {"w1", "w2"}  # spread
            assert tc.coordinator.slot_pool.free_slots == 2

    arun(scenario())


def test_a_rescaled_operator_stays_in_its_own_sharing_group(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=3)
            tc.add_worker("w2", slots=3)
            job_id = await tc.coordinator.submit_stream_job(pipeline(1, aggregate_group="heavy"))
            job = tc.job(job_id)
            group = f"{job_id}/heavy"
            pool = tc.coordinator.slot_pool
            assert [pool.get_task_slot(t.task_id).sharing_group for t in tasks_of(job, "aggregate")] == [group]
            tc.report_all(job_id, "RUNNING")
            plan = await tc.coordinator.rescale_operator(job_id, op_id(job, "aggregate"), 3)
            await tc.settle()
            new = [pool.get_task_slot(t) for t in plan["new_task_ids"]]
            assert all(s.sharing_group == group for s in new)
            assert len({s.slot_id for s in new}) == 3  # a slot never holds two tasks of one operator
            # the live-rescale steps went out in order: handoff, add_inputs, switch_output
            kinds = [m.TYPE for _, m in tc.gateway.controls]
            assert kinds == sorted(kinds, key=["handoff", "add_inputs", "switch_output"].index)
            assert set(kinds) == {"handoff", "add_inputs", "switch_output"}
            # the old task hands its state over and finishes: its slot is freed
            old = plan["old_task_ids"][0]
            before = pool.free_slots
            tc.report(job_id, old, "FINISHED", handed_off=True)
            assert pool.get_task_slot(old) is None and pool.free_slots >= before
            details = tc.coordinator.job_details(job)
            assert details["rescales"][0]["state"] == "COMPLETED"

    arun(scenario())


def test_a_rescale_without_slots_is_refused_and_the_job_keeps_its_parallelism(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=2)
            job_id = await tc.coordinator.submit_stream_job(pipeline(2))
            job = tc.job(job_id)
            tc.report_all(job_id, "RUNNING")
            from sabot.errors import Conflict

            with pytest.raises(Conflict, match="room for 2 tasks"):
                await tc.coordinator.rescale_operator(job_id, op_id(job, "aggregate"), 3)
            assert job.exec_graph.parallelism_of(op_id(job, "aggregate")) == 2
            assert job.state.value == "RUNNING" and not tc.gateway.controls

    arun(scenario())


def test_jobs_no_worker_could_hold_are_refused_at_submit(arun):
    async def scenario():
        async with TestingCluster() as tc:
            tc.add_worker("w1", slots=1, cpu_cores_per_slot=1.0)
            with pytest.raises(InvalidRequest, match="needs 2 slots .* the whole cluster has 1 slots"):
                await tc.coordinator.submit_stream_job(pipeline(2))
            big = pipeline(1)
            for op in big.operators.values():
                op.cpu_cores = 4.0
            with pytest.raises(SlotRequestTooLarge, match="4 cpu cores"):
                await tc.coordinator.submit_stream_job(big)
            assert not tc.coordinator.jobs and tc.coordinator.slot_pool.free_slots == 1

    arun(scenario())

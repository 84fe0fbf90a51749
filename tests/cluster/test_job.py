"""The job state machine: legal moves only, terminal states end the job."""

import asyncio

import pytest

from sabot.cluster.job import JOB_TRANSITIONS, JobRecord, JobState
from sabot.errors import IllegalStateTransition


def record():
    return JobRecord("j", None, None, now=10.0, wall_now=1000.0)


def test_a_job_runs_restarts_and_finishes():
    job = record()
    for state, now in [(JobState.WAITING_FOR_SLOTS, 11), (JobState.DEPLOYING, 12), (JobState.RUNNING, 13),
                       (JobState.RESTARTING, 14), (JobState.RESTARTING, 15), (JobState.RUNNING, 16),
                       (JobState.FINISHED, 17)]:
        job.transition(state, now, 1000.0 + now)
    assert job.started_at == 13 and job.ended_at == 17 and job.terminal and job.done.is_set()
    assert [s for s, _ in job.state_history] == ["CREATED", "WAITING_FOR_SLOTS", "DEPLOYING", "RUNNING",
                                                 "RESTARTING", "RESTARTING", "RUNNING", "FINISHED"]


@pytest.mark.parametrize("path, illegal", [
    ([], JobState.RUNNING),                                   # never deployed
    ([JobState.WAITING_FOR_SLOTS], JobState.FINISHED),        # finished without running
    ([JobState.WAITING_FOR_SLOTS, JobState.DEPLOYING, JobState.RUNNING, JobState.FINISHED], JobState.RUNNING),
    ([JobState.WAITING_FOR_SLOTS, JobState.CANCELING], JobState.RUNNING),
    ([JobState.FAILED], JobState.CANCELED),                   # an ended job stays ended
])
def test_an_illegal_transition_raises_and_changes_nothing(path, illegal):
    job = record()
    for state in path:
        job.transition(state, 1, 1)
    before = job.state
    with pytest.raises(IllegalStateTransition) as err:
        job.transition(illegal, 2, 2)
    assert job.state == before
    assert f"from {before.value} to {illegal.value}" in str(err.value)


def test_every_state_that_has_not_ended_can_fail_or_be_canceled():
    for state, targets in JOB_TRANSITIONS.items():
        if state.is_terminal:
            assert not targets
        else:
            assert JobState.FAILED in targets
            assert JobState.CANCELING in targets or JobState.CANCELED in targets


def test_done_is_set_only_at_the_end():
    async def scenario():
        job = record()
        job.transition(JobState.WAITING_FOR_SLOTS, 1, 1)
        waiter = asyncio.ensure_future(job.done.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        job.transition(JobState.CANCELING, 2, 2)
        job.transition(JobState.CANCELED, 3, 3)
        await asyncio.wait_for(waiter, 1)

    asyncio.run(scenario())

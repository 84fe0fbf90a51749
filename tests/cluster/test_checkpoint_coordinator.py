"""Tests of sabot.cluster.checkpoints.CheckpointCoordinator, driven by a hand-stepped clock."""

import logging

import pytest

from sabot.cluster.checkpoints import (
    DROP_REASONS,
    CheckpointCoordinator,
    CheckpointState,
    CheckpointTriggerRefused,
    InvalidCheckpointAck,
)
from sabot.errors import SabotError

TASKS = ["src-0", "src-1", "map-0", "sink-0"]
SOURCES = ["src-0", "src-1"]


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def cc(clock):
    return CheckpointCoordinator("job-1", TASKS, SOURCES, timeout_s=5.0, clock=clock,
                                 wall_clock=lambda: 1_700_000_000.0)


def stats(size=0, align=0.0, dur=0.0, handles=()):
    return {"size_bytes": size, "alignment_ms": align, "duration_ms": dur, "handles": list(handles)}


def ack_all(cc, cid, tasks=TASKS, attempt=0):
    out = None
    for t in tasks:
        out = cc.acknowledge(cid, t, attempt, stats(10))
    return out


def test_trigger_numbers_and_targets(cc, clock):
    p = cc.trigger()
    assert p.checkpoint_id == 1
    assert p.source_tasks == {"src-0": 0, "src-1": 0}
    assert p.expected == dict.fromkeys(TASKS, 0)
    assert p.trigger_time == clock.t and p.deadline == clock.t + 5.0
    assert p.trigger_wall_time == 1_700_000_000.0
    ack_all(cc, 1)
    assert cc.trigger().checkpoint_id == 2
    ack_all(cc, 2)
    assert cc.trigger().checkpoint_id == 3


def test_a_restored_job_numbers_its_checkpoints_on_from_the_restored_one(clock):
    cc = CheckpointCoordinator("job-2", TASKS, SOURCES, clock=clock, first_id=8)
    assert cc.next_id == 8 and cc.trigger().checkpoint_id == 8
    ack_all(cc, 8)
    assert cc.trigger().checkpoint_id == 9
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="first_id"):
            CheckpointCoordinator("job-3", TASKS, SOURCES, clock=clock, first_id=bad)


def test_completes_only_when_every_task_acked(cc, clock):
    cc.trigger()
    per_task = {"src-0": (100, 0.0, 3.0), "src-1": (150, 0.5, 4.0), "map-0": (1000, 12.5, 30.0),
                "sink-0": (7, 2.0, 8.0)}
    handles = {t: [{"path": f"{t}.arrow", "operator_id": t.split("-")[0], "size_bytes": per_task[t][0]}]
               for t in TASKS}
    for i, t in enumerate(TASKS):
        clock.advance(0.010)
        size, align, dur = per_task[t]
        res = cc.acknowledge(1, t, 0, stats(size, align, dur, handles[t]))
        if i < len(TASKS) - 1:
            assert res is None
            assert cc.latest_completed_id is None
            assert cc.pending[1].not_yet_acknowledged == set(TASKS[i + 1:])
    assert res is not None and res.state is CheckpointState.COMPLETED
    assert cc.latest_completed_id == 1 and cc.pending == {}
    # figures computed independently from the stats sent
    assert res.size_bytes == sum(v[0] for v in per_task.values())
    assert res.alignment_ms == max(v[1] for v in per_task.values())
    assert res.max_task_duration_ms == max(v[2] for v in per_task.values())
    assert res.duration_ms() == pytest.approx(40.0)
    assert res.handles == [h for t in TASKS for h in handles[t]]
    assert set(res.task_stats) == set(TASKS)
    (entry,) = cc.history()
    assert entry == {"id": 1, "state": "COMPLETED", "trigger_time": 1_700_000_000.0,
                     "duration_ms": pytest.approx(40.0), "size_bytes": 1257, "alignment_ms": 12.5,
                     "max_task_duration_ms": 30.0, "num_acks": 4, "expected": 4, "failure_reason": None,
                     "operator_sizes": {"src": 250, "map": 1000, "sink": 7}}
    assert cc.counts["completed"] == 1 and cc.counts["in_progress"] == 0


def test_duplicates_stale_attempts_and_unknowns_are_dropped(clock, caplog):
    cc = CheckpointCoordinator("job-1", {"src-0": 2, "map-0": 1}, ["src-0"], clock=clock)
    cc.trigger()
    with caplog.at_level(logging.INFO, logger="sabot.cluster.checkpoints"):
        assert cc.acknowledge(1, "src-0", 2, stats(5)) is None
        assert cc.acknowledge(1, "src-0", 2, stats(5)) is None          # duplicate
        assert cc.acknowledge(1, "map-0", 0, stats(5)) is None          # older attempt
        assert cc.acknowledge(1, "map-0", 2, stats(5)) is None          # not the expected attempt
        assert cc.acknowledge(1, "ghost", 0, stats(5)) is None          # unknown task
        assert cc.acknowledge(9, "map-0", 1, stats(5)) is None          # never triggered
    c = cc.counts
    assert c["dropped_by_reason"]["duplicate"] == 1
    assert c["dropped_by_reason"]["stale_attempt"] == 2
    assert c["dropped_by_reason"]["unknown_task"] == 1
    assert c["dropped_by_reason"]["unknown_checkpoint"] == 1
    assert c["dropped_acks"] == 5
    assert set(c["dropped_by_reason"]) == set(DROP_REASONS)
    rec = cc.record(1)
    assert rec.state is CheckpointState.IN_PROGRESS and rec.num_acks == 1 and rec.size_bytes == 5
    assert sum("dropped ack" in r.getMessage() for r in caplog.records) == 5
    done = cc.acknowledge(1, "map-0", 1, stats(6))
    assert done is not None and done.size_bytes == 11
    # acks after completion change nothing
    assert cc.acknowledge(1, "map-0", 1, stats(6)) is None
    assert cc.counts["dropped_by_reason"]["completed"] == 1 and cc.record(1).size_bytes == 11


def test_max_concurrent_refuses_second_trigger(cc, clock):
    cc.trigger()
    assert not cc.can_trigger()
    with pytest.raises(CheckpointTriggerRefused, match="checkpoint 1 waits for 4 of 4 acks") as err:
        cc.trigger()
    assert isinstance(err.value, SabotError) and isinstance(err.value, RuntimeError)
    assert cc.counts["triggered"] == 1


def test_two_concurrent_and_subsumption(clock):
    cc = CheckpointCoordinator("j", ["a", "b"], ["a"], clock=clock, max_concurrent=2)
    cc.trigger()
    cc.trigger()
    cc.acknowledge(2, "a", 0, stats())
    cc.acknowledge(1, "a", 0, stats())
    assert cc.acknowledge(2, "b", 0, stats()).checkpoint_id == 2
    # 1 can never become the latest any more
    assert cc.record(1).state is CheckpointState.FAILED and "subsumed" in cc.record(1).failure_reason
    assert cc.acknowledge(1, "b", 0, stats()) is None
    assert cc.counts["dropped_by_reason"]["aborted"] == 1


def test_timeout_aborts_and_next_checkpoint_proceeds(cc, clock):
    cc.trigger()
    cc.acknowledge(1, "src-0", 0, stats(100))
    clock.advance(4.999)
    assert cc.check_timeouts() == []
    clock.advance(0.002)
    assert cc.can_trigger()
    assert cc.check_timeouts() == [1]
    rec = cc.record(1)
    assert rec.state is CheckpointState.FAILED and "timed out after 5 s with 1/4 acks" in rec.failure_reason
    assert "map-0" in rec.failure_reason
    assert rec.duration_ms() == pytest.approx(5001.0)
    # a late ack for the aborted checkpoint is dropped
    assert cc.acknowledge(1, "src-1", 0, stats()) is None
    assert cc.counts["dropped_by_reason"]["aborted"] == 1
    p = cc.trigger()
    assert p.checkpoint_id == 2
    assert ack_all(cc, 2).state is CheckpointState.COMPLETED
    assert cc.latest_completed_id == 2
    assert [(h["id"], h["state"]) for h in cc.history()] == [(1, "FAILED"), (2, "COMPLETED")]


def test_trigger_expires_overdue_checkpoint_itself(cc, clock):
    cc.trigger()
    clock.advance(6)
    assert cc.trigger().checkpoint_id == 2
    assert cc.record(1).state is CheckpointState.FAILED


def test_abort_on_task_failure(cc, clock):
    ack_all(cc, cc.trigger().checkpoint_id)
    cc.trigger()
    cc.acknowledge(2, "src-0", 0, stats(1))
    assert cc.abort_all("task map-0 failed: ZeroDivisionError") == [2]
    assert cc.record(2).failure_reason == "task map-0 failed: ZeroDivisionError"
    assert cc.latest_completed_id == 1
    assert cc.abort(2, "again") is False
    assert cc.abort_all("nothing pending") == []
    assert cc.counts == {"triggered": 2, "completed": 1, "failed": 1, "in_progress": 0,
                         "dropped_acks": 0, "dropped_by_reason": dict.fromkeys(DROP_REASONS, 0)}
    p = cc.trigger()
    assert cc.abort(p.checkpoint_id, "operator asked") is True


def test_decline_aborts(cc):
    cc.trigger()
    assert cc.decline(1, "ghost", 0, "disk full") is False
    assert cc.record(1).state is CheckpointState.IN_PROGRESS
    assert cc.decline(1, "map-0", 0, "disk full") is True
    assert cc.record(1).failure_reason == "declined by task 'map-0': disk full"


def test_update_tasks_aborts_pending_and_uses_new_attempts(cc):
    cc.trigger()
    cc.acknowledge(1, "src-0", 0, stats())
    new_tasks = {"src-0": 1, "src-1": 1, "map-0": 1, "map-1": 0, "sink-0": 1}
    assert cc.update_tasks(new_tasks, ["src-0", "src-1"]) == [1]
    assert "task set changed" in cc.record(1).failure_reason
    p = cc.trigger()
    assert p.expected == new_tasks and p.source_tasks == {"src-0": 1, "src-1": 1}
    assert cc.acknowledge(2, "src-0", 0, stats()) is None  # the old attempt
    assert cc.counts["dropped_by_reason"]["stale_attempt"] == 1
    for t, a in new_tasks.items():
        res = cc.acknowledge(2, t, a, stats())
    assert res.checkpoint_id == 2 and res.num_acks == 5


def test_history_is_bounded_and_keeps_latest_completed(clock):
    cc = CheckpointCoordinator("j", ["a"], ["a"], clock=clock, max_history=3)
    cc.trigger()
    cc.acknowledge(1, "a", 0, stats())
    for _ in range(5):
        cc.abort(cc.trigger().checkpoint_id, "x")
    cc.trigger()  # in progress: always shown
    ids = [h["id"] for h in cc.history()]
    assert ids == [1, 5, 6, 7]  # 3 finished (the latest completed kept) + the pending one
    in_prog = cc.history()[-1]
    clock.advance(0.25)
    assert cc.history()[-1]["state"] == "IN_PROGRESS"
    assert cc.history()[-1]["duration_ms"] == pytest.approx(in_prog["duration_ms"] + 250.0)
    # an ack for an id evicted from the history
    assert cc.acknowledge(2, "a", 0, stats()) is None
    assert cc.counts["dropped_by_reason"]["old_checkpoint"] == 1


def test_fail_completed_falls_back(cc):
    ack_all(cc, cc.trigger().checkpoint_id)
    ack_all(cc, cc.trigger().checkpoint_id)
    assert cc.fail_completed(2, "metadata write failed") is True
    assert cc.latest_completed_id == 1 and cc.record(2).state is CheckpointState.FAILED
    assert cc.fail_completed(2, "twice") is False
    assert cc.counts["completed"] == 1 and cc.counts["failed"] == 1


def test_bad_arguments_are_named(clock):
    with pytest.raises(ValueError, match="at least one task"):
        CheckpointCoordinator("j", [], [], clock=clock)
    with pytest.raises(ValueError, match=r"source tasks \['x'\] are not among"):
        CheckpointCoordinator("j", ["a"], ["x"], clock=clock)
    with pytest.raises(ValueError, match="source attempts"):
        CheckpointCoordinator("j", {"a": 1}, {"a": 0}, clock=clock)
    with pytest.raises(TypeError, match="single string"):
        CheckpointCoordinator("j", "abc", ["a"], clock=clock)
    with pytest.raises(ValueError, match="timeout_s"):
        CheckpointCoordinator("j", ["a"], ["a"], timeout_s=0, clock=clock)
    cc = CheckpointCoordinator("j", ["a", "b"], ["a"], clock=clock)
    cc.trigger()
    with pytest.raises(InvalidCheckpointAck, match="size_bytes must be an int >= 0, got -1"):
        cc.acknowledge(1, "a", 0, {"size_bytes": -1})
    with pytest.raises(InvalidCheckpointAck, match="alignment_ms"):
        cc.acknowledge(1, "a", 0, {"alignment_ms": float("nan")})
    with pytest.raises(InvalidCheckpointAck, match="handles must be a list"):
        cc.acknowledge(1, "a", 0, {"handles": "x"})
    assert cc.record(1).num_acks == 0  # nothing recorded from a malformed ack
    assert cc.acknowledge(1, "a", 0, None) is None and cc.record(1).num_acks == 1


def test_explicit_now_and_wall_time(clock):
    cc = CheckpointCoordinator("j", ["a"], ["a"], timeout_s=1.0, clock=clock)
    p = cc.trigger(now=50.0, wall_time=123.0)
    assert p.trigger_time == 50.0 and p.deadline == 51.0 and cc.history()[0]["trigger_time"] == 123.0
    rec = cc.acknowledge(1, "a", 0, stats(), now=50.5)
    assert rec.duration_ms() == pytest.approx(500.0)

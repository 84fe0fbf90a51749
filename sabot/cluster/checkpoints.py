"""The checkpoint coordinator: a pure state machine, one per job.

It decides when a checkpoint may start, which tasks must acknowledge it, when it
is complete, aborted or timed out, and keeps the history the REST API shows. It
does no I/O and never sleeps: time comes in through ``now`` arguments or the
``clock`` callable, so the coordinator's event-loop thread (its only owner) can
drive it and tests can step it by hand.

Flow (Flink's CheckpointCoordinator, aligned barriers)::

    pending = cc.trigger()                 # id 1, 2, 3 ...; send the trigger to
    for task_id, attempt in pending.source_tasks.items(): ...   # ... these sources
    record = cc.acknowledge(1, "map-0", 0, {"size_bytes": 10, "alignment_ms": 2.0,
                                           "duration_ms": 5.0, "handles": [...]})
    if record is not None:                 # the last expected ack arrived
        storage.commit(job_id, record.checkpoint_id, {...}, handles=record.handles)
    cc.check_timeouts()                    # from the loop's periodic tick

Acknowledgements that do not belong to a pending checkpoint (unknown, aborted or
completed checkpoints, unknown tasks, other attempts, duplicates) are dropped,
logged and counted by reason; they never change state.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Hashable, Iterable, Mapping

from sabot.errors import SabotError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointCoordinator",
    "CheckpointRecord",
    "CheckpointState",
    "PendingCheckpoint",
    "CheckpointTriggerRefused",
    "InvalidCheckpointAck",
    "DROP_REASONS",
]

#: Why an acknowledgement can be dropped (the keys of ``counts["dropped_by_reason"]``).
DROP_REASONS = ("unknown_checkpoint", "old_checkpoint", "aborted", "completed", "unknown_task",
                "stale_attempt", "duplicate")


class CheckpointTriggerRefused(SabotError, RuntimeError):
    """A checkpoint was triggered while ``max_concurrent`` ones are still in progress."""


class InvalidCheckpointAck(SabotError, ValueError):
    """An acknowledgement's stats are malformed (the message names the field)."""


class CheckpointState(str, Enum):
    """Lifecycle of one checkpoint: IN_PROGRESS -> COMPLETED | FAILED."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass
class PendingCheckpoint:
    """A triggered checkpoint waiting for acknowledgements.

    Attributes:
        checkpoint_id: Its number.
        trigger_time: ``clock()`` at the trigger (seconds; used for durations/timeouts).
        trigger_wall_time: Wall-clock trigger time (seconds since the epoch, for display).
        deadline: ``clock()`` value after which it times out.
        source_tasks: ``{task_id: attempt}`` to send the trigger (barrier injection) to.
        expected: ``{task_id: attempt}`` that must acknowledge.
        acks: ``{task_id: normalised stats}`` received so far.
    """

    checkpoint_id: int
    trigger_time: float
    trigger_wall_time: float
    deadline: float
    source_tasks: dict
    expected: dict
    acks: dict = field(default_factory=dict)

    @property
    def not_yet_acknowledged(self) -> set:
        """Task ids whose acknowledgement is still missing."""
        return set(self.expected) - set(self.acks)


@dataclass
class CheckpointRecord:
    """History entry of one checkpoint; the completion record ``acknowledge`` returns.

    ``duration_ms`` is trigger to completion/abort on the coordinator's clock (for one
    in progress: so far); ``size_bytes`` sums and ``alignment_ms`` /
    ``max_task_duration_ms`` take the maximum over the acknowledgements received.
    ``handles`` concatenates the tasks' state handles in acknowledgement order.
    """

    checkpoint_id: int
    state: CheckpointState
    trigger_time: float
    trigger_wall_time: float
    expected: int
    end_time: float | None = None
    num_acks: int = 0
    size_bytes: int = 0
    alignment_ms: float = 0.0
    max_task_duration_ms: float = 0.0
    failure_reason: str | None = None
    handles: list = field(default_factory=list)
    task_stats: dict = field(default_factory=dict)
    #: ``{task_id: attempt}`` of the attempts that acknowledged (set once COMPLETED): the
    #: only attempts whose output this checkpoint publishes
    attempts: dict = field(default_factory=dict)

    def duration_ms(self, now: float | None = None) -> float | None:
        """Milliseconds from trigger to end (or to ``now`` while in progress)."""
        end = self.end_time if self.end_time is not None else now
        if end is None:
            return None
        return max(0.0, (end - self.trigger_time) * 1000.0)

    def to_dict(self, now: float | None = None) -> dict:
        """What ``GET /jobs/{job_id}/checkpoints`` shows for this checkpoint."""
        return {
            "id": self.checkpoint_id,
            "state": self.state.value,
            "trigger_time": self.trigger_wall_time,
            "duration_ms": self.duration_ms(now),
            "size_bytes": self.size_bytes,
            "alignment_ms": self.alignment_ms,
            "max_task_duration_ms": self.max_task_duration_ms,
            "num_acks": self.num_acks,
            "expected": self.expected,
            "failure_reason": self.failure_reason,
            "operator_sizes": self.operator_sizes(),
        }

    def operator_sizes(self) -> dict:
        """Bytes of state per operator id, from the acknowledged state handles."""
        sizes: dict = {}
        for handle in self.handles:
            if isinstance(handle, Mapping) and handle.get("operator_id") is not None:
                op = handle["operator_id"]
                sizes[op] = sizes.get(op, 0) + int(handle.get("size_bytes") or 0)
        return sizes


def _task_table(tasks, what: str) -> dict:
    """{task_id: attempt} from a mapping task -> attempt or an iterable of task ids (attempt 0)."""
    if isinstance(tasks, (str, bytes)):
        raise TypeError(f"{what} must be an iterable of task ids or a mapping task id -> attempt, "
                        f"got the single string {tasks!r}")
    if isinstance(tasks, Mapping):
        out = {}
        for tid, attempt in tasks.items():
            if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
                raise ValueError(f"{what}: attempt of task {tid!r} must be an int >= 0, got {attempt!r}")
            out[tid] = attempt
        return out
    out = {}
    for tid in tasks:
        if not isinstance(tid, Hashable):
            raise TypeError(f"{what}: task ids must be hashable, got {tid!r}")
        out[tid] = 0
    return out


def _normalise_stats(stats: Mapping[str, Any] | None, checkpoint_id: int, task_id) -> dict:
    if stats is None:
        stats = {}
    if not isinstance(stats, Mapping):
        raise InvalidCheckpointAck(f"ack of checkpoint {checkpoint_id} from {task_id!r}: stats must be "
                                   f"a dict, got {type(stats).__name__}")
    out = dict(stats)
    size = out.get("size_bytes", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidCheckpointAck(f"ack of checkpoint {checkpoint_id} from {task_id!r}: size_bytes "
                                   f"must be an int >= 0, got {size!r}")
    out["size_bytes"] = size
    for key in ("alignment_ms", "duration_ms"):
        v = out.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InvalidCheckpointAck(f"ack of checkpoint {checkpoint_id} from {task_id!r}: {key} "
                                       f"must be a finite number >= 0, got {v!r}")
        out[key] = float(v)
    handles = out.get("handles", [])
    if not isinstance(handles, (list, tuple)):
        raise InvalidCheckpointAck(f"ack of checkpoint {checkpoint_id} from {task_id!r}: handles must "
                                   f"be a list, got {type(handles).__name__}")
    out["handles"] = list(handles)
    return out


class CheckpointCoordinator:
    """Checkpoint bookkeeping of one job (no I/O, no asyncio; time passed in).

    Args:
        job_id: The job.
        tasks_to_ack: Every task that must acknowledge a checkpoint: task ids
            (attempt 0) or a mapping ``task_id -> current attempt``.
        source_tasks: The tasks that get the trigger (sources inject the barrier); a
            subset of ``tasks_to_ack`` (ids, or a mapping with matching attempts).
        timeout_s: A checkpoint not complete this long after its trigger is aborted.
        clock: Monotonic time in seconds (used when ``now`` is not given).
        max_history: How many finished checkpoints :meth:`history` keeps.
        max_concurrent: How many checkpoints may be in progress at once.
        wall_clock: Wall-clock time for display (used when ``wall_time`` is not given).
        first_id: The first checkpoint's id (a job restored from checkpoint ``n`` starts at
            ``n + 1``).

    :meth:`trigger` raises :class:`CheckpointTriggerRefused` when ``max_concurrent``
    checkpoints are in progress (check :meth:`can_trigger` first to skip quietly).
    """

    def __init__(self, job_id: str, tasks_to_ack: Iterable | Mapping, source_tasks: Iterable | Mapping,
                 timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 max_history: int = 100, *, max_concurrent: int = 1,
                 wall_clock: Callable[[], float] = time.time, first_id: int = 1):
        if not (isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
                and timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be an int >= 1, got {max_history!r}")
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ValueError(f"max_concurrent must be an int >= 1, got {max_concurrent!r}")
        self.job_id = job_id
        self.timeout_s = float(timeout_s)
        self.max_history = max_history
        self.max_concurrent = max_concurrent
        self._clock = clock
        self._wall_clock = wall_clock
        self._tasks: dict = {}
        self._sources: dict = {}
        self._set_tasks(tasks_to_ack, source_tasks)
        if isinstance(first_id, bool) or not isinstance(first_id, int) or first_id < 1:
            raise ValueError(f"first_id must be an int >= 1, got {first_id!r}")
        # a job restored from another's checkpoint n numbers its own from n + 1 (as Flink does), so a
        # checkpoint id names one point of the output's history however many jobs carried it on
        self._next_id = first_id
        self._pending: dict[int, PendingCheckpoint] = {}
        self._records: OrderedDict[int, CheckpointRecord] = OrderedDict()
        self._latest_completed: CheckpointRecord | None = None
        self._counts = {"triggered": 0, "completed": 0, "failed": 0}
        self._dropped = dict.fromkeys(DROP_REASONS, 0)

    # ------------------------------------------------------------------ tasks

    def _set_tasks(self, tasks_to_ack, source_tasks) -> None:
        tasks = _task_table(tasks_to_ack, "tasks_to_ack")
        if not tasks:
            raise ValueError(f"job {self.job_id!r}: a checkpoint needs at least one task to acknowledge it")
        sources = _task_table(source_tasks, "source_tasks")
        if not sources:
            raise ValueError(f"job {self.job_id!r}: a checkpoint needs at least one source task to trigger")
        unknown = [t for t in sources if t not in tasks]
        if unknown:
            raise ValueError(f"job {self.job_id!r}: source tasks {unknown} are not among the tasks to "
                             f"acknowledge ({sorted(map(str, tasks))}); sources snapshot offsets and ack too")
        if isinstance(source_tasks, Mapping):
            wrong = {t: a for t, a in sources.items() if tasks[t] != a}
            if wrong:
                raise ValueError(f"job {self.job_id!r}: source attempts {wrong} differ from the "
                                 f"attempts in tasks_to_ack")
        self._tasks = tasks
        self._sources = {t: tasks[t] for t in sources}

    @property
    def tasks_to_ack(self) -> dict:
        """``{task_id: attempt}`` a new checkpoint will wait for."""
        return dict(self._tasks)

    @property
    def source_tasks(self) -> dict:
        """``{task_id: attempt}`` a new checkpoint is triggered on."""
        return dict(self._sources)

    def update_tasks(self, tasks_to_ack, source_tasks, reason: str = "the job's task set changed"
                     ) -> list[int]:
        """Replace the task set (rescale, restart with new attempts); aborts pending checkpoints.

        Returns:
            Ids of the checkpoints aborted.
        """
        self._set_tasks(tasks_to_ack, source_tasks)
        return self.abort_all(reason)

    # ------------------------------------------------------------------ trigger

    def _now(self, now):
        return self._clock() if now is None else now

    def can_trigger(self, now: float | None = None) -> bool:
        """Whether :meth:`trigger` would start a checkpoint at ``now`` (no state change)."""
        now = self._now(now)
        live = sum(1 for p in self._pending.values() if now < p.deadline)
        return live < self.max_concurrent

    def trigger(self, now: float | None = None, wall_time: float | None = None) -> PendingCheckpoint:
        """Start the next checkpoint; the caller then sends it to ``pending.source_tasks``.

        Pending checkpoints past their deadline are aborted first.

        Raises:
            CheckpointTriggerRefused: ``max_concurrent`` checkpoints are still in progress.
        """
        now = self._now(now)
        self.check_timeouts(now)
        if len(self._pending) >= self.max_concurrent:
            oldest = min(self._pending.values(), key=lambda p: p.checkpoint_id)
            raise CheckpointTriggerRefused(
                f"job {self.job_id!r}: cannot trigger a checkpoint while {len(self._pending)} "
                f"(max_concurrent={self.max_concurrent}) are in progress; checkpoint "
                f"{oldest.checkpoint_id} waits for {len(oldest.not_yet_acknowledged)} of "
                f"{len(oldest.expected)} acks and times out in {oldest.deadline - now:.3f} s")
        wall = self._wall_clock() if wall_time is None else wall_time
        cid = self._next_id
        self._next_id += 1
        pending = PendingCheckpoint(checkpoint_id=cid, trigger_time=now, trigger_wall_time=wall,
                                    deadline=now + self.timeout_s, source_tasks=dict(self._sources),
                                    expected=dict(self._tasks))
        self._pending[cid] = pending
        self._records[cid] = CheckpointRecord(checkpoint_id=cid, state=CheckpointState.IN_PROGRESS,
                                              trigger_time=now, trigger_wall_time=wall,
                                              expected=len(pending.expected))
        self._counts["triggered"] += 1
        logger.debug("job %s: triggered checkpoint %d (%d tasks to ack)", self.job_id, cid,
                     len(pending.expected))
        return pending

    # ------------------------------------------------------------------ acks

    def _drop(self, reason: str, checkpoint_id, task_id, attempt, detail: str = "") -> None:
        self._dropped[reason] += 1
        logger.info("job %s: dropped ack of checkpoint %s from task %r attempt %s (%s%s)", self.job_id,
                    checkpoint_id, task_id, attempt, reason, f": {detail}" if detail else "")

    def _match(self, checkpoint_id, task_id, attempt) -> PendingCheckpoint | None:
        """The pending checkpoint this message belongs to, or None (counted as dropped)."""
        pending = self._pending.get(checkpoint_id)
        if pending is None:
            record = self._records.get(checkpoint_id)
            if record is not None:
                reason = "completed" if record.state is CheckpointState.COMPLETED else "aborted"
            elif isinstance(checkpoint_id, int) and 1 <= checkpoint_id < self._next_id:
                reason = "old_checkpoint"
            else:
                reason = "unknown_checkpoint"
            self._drop(reason, checkpoint_id, task_id, attempt)
            return None
        if task_id not in pending.expected:
            self._drop("unknown_task", checkpoint_id, task_id, attempt,
                       f"{len(pending.expected)} tasks expected")
            return None
        if attempt != pending.expected[task_id]:
            self._drop("stale_attempt", checkpoint_id, task_id, attempt,
                       f"the checkpoint waits for attempt {pending.expected[task_id]}")
            return None
        if task_id in pending.acks:
            self._drop("duplicate", checkpoint_id, task_id, attempt)
            return None
        return pending

    def acknowledge(self, checkpoint_id: int, task_id, attempt: int,
                    stats: Mapping[str, Any] | None = None, now: float | None = None
                    ) -> CheckpointRecord | None:
        """Record one task's acknowledgement.

        Args:
            checkpoint_id: The checkpoint acknowledged.
            task_id: The acknowledging task.
            attempt: Its attempt number (an ack from another attempt is dropped).
            stats: ``size_bytes`` (int), ``alignment_ms``, ``duration_ms`` (numbers),
                ``handles`` (list of state handles); other keys are kept per task.
            now: Clock time of arrival (default ``clock()``).

        Returns:
            The completion record (state COMPLETED, handles of all tasks) when this was
            the last expected ack; otherwise None (also when the ack was dropped).

        Raises:
            InvalidCheckpointAck: malformed stats (nothing is recorded).
        """
        norm = _normalise_stats(stats, checkpoint_id, task_id)
        pending = self._match(checkpoint_id, task_id, attempt)
        if pending is None:
            return None
        now = self._now(now)
        pending.acks[task_id] = norm
        record = self._records[checkpoint_id]
        record.num_acks += 1
        record.size_bytes += norm["size_bytes"]
        record.alignment_ms = max(record.alignment_ms, norm["alignment_ms"])
        record.max_task_duration_ms = max(record.max_task_duration_ms, norm["duration_ms"])
        record.handles.extend(norm["handles"])
        record.task_stats[task_id] = norm
        if len(pending.acks) < len(pending.expected):
            return None
        del self._pending[checkpoint_id]
        record.state = CheckpointState.COMPLETED
        record.end_time = now
        record.attempts = dict(pending.expected)
        self._counts["completed"] += 1
        if self._latest_completed is None or checkpoint_id > self._latest_completed.checkpoint_id:
            self._latest_completed = record
        # an older one still in flight can no longer become the latest: Flink subsumes it
        for older in [cid for cid in self._pending if cid < checkpoint_id]:
            self._finish_failed(older, f"subsumed by completed checkpoint {checkpoint_id}", now)
        logger.info("job %s: checkpoint %d completed in %.1f ms (%d bytes, alignment %.1f ms)",
                    self.job_id, checkpoint_id, record.duration_ms(), record.size_bytes,
                    record.alignment_ms)
        self._trim_history()
        return record

    def decline(self, checkpoint_id: int, task_id, attempt: int, reason: str,
                now: float | None = None) -> bool:
        """A task could not take its snapshot: abort the checkpoint. False if the message was dropped."""
        if self._match(checkpoint_id, task_id, attempt) is None:
            return False
        return self.abort(checkpoint_id, f"declined by task {task_id!r}: {reason}", now)

    # ------------------------------------------------------------------ aborts

    def _finish_failed(self, checkpoint_id: int, reason: str, now: float) -> None:
        self._pending.pop(checkpoint_id)
        record = self._records[checkpoint_id]
        record.state = CheckpointState.FAILED
        record.end_time = now
        record.failure_reason = reason
        self._counts["failed"] += 1
        logger.warning("job %s: checkpoint %d aborted: %s", self.job_id, checkpoint_id, reason)

    def abort(self, checkpoint_id: int, reason: str, now: float | None = None) -> bool:
        """Abort a pending checkpoint (the caller then discards its files). False if not pending."""
        if checkpoint_id not in self._pending:
            return False
        self._finish_failed(checkpoint_id, reason, self._now(now))
        self._trim_history()
        return True

    def abort_all(self, reason: str, now: float | None = None) -> list[int]:
        """Abort every pending checkpoint (a task failed); returns their ids."""
        now = self._now(now)
        ids = sorted(self._pending)
        for cid in ids:
            self._finish_failed(cid, reason, now)
        self._trim_history()
        return ids

    def check_timeouts(self, now: float | None = None) -> list[int]:
        """Abort pending checkpoints whose deadline has passed; returns their ids."""
        now = self._now(now)
        ids = sorted(cid for cid, p in self._pending.items() if now >= p.deadline)
        for cid in ids:
            p = self._pending[cid]
            self._finish_failed(cid, f"timed out after {self.timeout_s:g} s with "
                                     f"{len(p.acks)}/{len(p.expected)} acks; missing "
                                     f"{sorted(map(str, p.not_yet_acknowledged))}", now)
        if ids:
            self._trim_history()
        return ids

    def fail_completed(self, checkpoint_id: int, reason: str) -> bool:
        """Turn a COMPLETED checkpoint FAILED (its metadata could not be committed).

        ``latest_completed_id`` falls back to the newest checkpoint still completed.
        Returns False if the checkpoint is not a completed one in the history.
        """
        record = self._records.get(checkpoint_id)
        if record is None or record.state is not CheckpointState.COMPLETED:
            return False
        record.state = CheckpointState.FAILED
        record.failure_reason = reason
        self._counts["completed"] -= 1
        self._counts["failed"] += 1
        if self._latest_completed is record:
            done = [r for r in self._records.values() if r.state is CheckpointState.COMPLETED]
            self._latest_completed = max(done, key=lambda r: r.checkpoint_id) if done else None
        logger.warning("job %s: completed checkpoint %d failed afterwards: %s", self.job_id,
                       checkpoint_id, reason)
        return True

    # ------------------------------------------------------------------ views

    def _trim_history(self) -> None:
        finished = [cid for cid, r in self._records.items() if r.state is not CheckpointState.IN_PROGRESS]
        keep_latest = self._latest_completed.checkpoint_id if self._latest_completed else None
        excess = len(finished) - self.max_history
        for cid in finished:
            if excess <= 0:
                break
            if cid == keep_latest:
                continue
            del self._records[cid]
            excess -= 1

    @property
    def next_id(self) -> int:
        """The id the next triggered checkpoint gets."""
        return self._next_id

    @property
    def pending(self) -> dict[int, PendingCheckpoint]:
        """Checkpoints in progress by id (do not mutate)."""
        return dict(self._pending)

    @property
    def latest_completed_id(self) -> int | None:
        """Id of the newest completed checkpoint, or None."""
        return self._latest_completed.checkpoint_id if self._latest_completed else None

    @property
    def latest_completed(self) -> CheckpointRecord | None:
        """Record of the newest completed checkpoint, or None."""
        return self._latest_completed

    @property
    def counts(self) -> dict:
        """``triggered``, ``completed``, ``failed``, ``in_progress``, ``dropped_acks`` and
        ``dropped_by_reason`` (see :data:`DROP_REASONS`)."""
        return {**self._counts, "in_progress": len(self._pending),
                "dropped_acks": sum(self._dropped.values()), "dropped_by_reason": dict(self._dropped)}

    def record(self, checkpoint_id: int) -> CheckpointRecord | None:
        """The history record of a checkpoint, if still kept."""
        return self._records.get(checkpoint_id)

    def history(self, now: float | None = None) -> list[dict]:
        """Kept checkpoints, oldest first, as dicts: id, state, trigger_time (wall clock),
        duration_ms (so far, for one in progress), size_bytes, alignment_ms (max over
        tasks), max_task_duration_ms, num_acks, expected, failure_reason."""
        now = self._now(now)
        return [r.to_dict(now) for r in self._records.values()]

"""The messages between the coordinator and the tasks it deploys, as typed records.

Worker -> coordinator (over the worker's WebSocket, see :mod:`sabot.cluster.protocol`):

- :class:`TaskUpdate`: an attempt's state, error (with the exception's type, so
  failures are classified by type, not by their text), metrics and final summary;
- :class:`CheckpointAck` / :class:`CheckpointDecline`: a task's answer to a barrier.

Coordinator -> worker:

- :class:`TriggerCheckpoint`: a source task injects a barrier;
- :class:`CheckpointComplete`: a checkpoint is committed (two-phase-commit sinks publish);
- the live-rescale control messages (:data:`CONTROL_MESSAGES`), posted to
  ``/tasks/{task_id}/control`` and applied by the task between two batches.

Every message about a task carries its :class:`~sabot.execution.ids.AttemptId`;
the receiving side drops what belongs to a superseded attempt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sabot.errors import InvalidRequest
from sabot.execution.deployment import ChannelTarget, OutputEdgeSpec
from sabot.execution.execution_graph import TaskState
from sabot.execution.ids import AttemptId
from sabot.execution.records import Record

__all__ = [
    "AddInputs", "CONTROL_MESSAGES", "CheckpointAck", "CheckpointComplete", "CheckpointDecline",
    "ControlMessage", "Handoff", "SourceFinish", "SourcePause", "SourceStart", "SwitchOutput",
    "TaskUpdate", "TriggerCheckpoint", "control_from_dict",
]


@dataclass(frozen=True, slots=True)
class TaskUpdate(Record):
    """What a task reports about its attempt: on every state change and periodically while it runs.

    Attributes:
        error_type: the exception class of a failure (``OperatorError``, ``ChannelClosed``, ...);
            the coordinator classifies failures by it.
        metrics: rows/bytes in and out, busy/idle/back-pressured seconds, per-key-group
            counts of keyed outputs, ... (see :class:`~sabot.runtime.task.Task`).
        summary: a sink's JSON-able summary once FINISHED.
        total_rows: a source's number of rows, when known (progress).
        handed_off: an old task of a live rescale that handed its state (or units) over.
    """

    job_id: str
    attempt_id: AttemptId
    operator_id: str
    operator_name: str
    subtask_index: int
    state: TaskState
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    metrics: dict = field(default_factory=dict)
    summary: Any = None
    total_rows: int | None = None
    handed_off: bool = False

    @property
    def task_id(self) -> str:
        return self.attempt_id.task_id

    @property
    def attempt(self) -> int:
        return self.attempt_id.attempt


@dataclass(frozen=True, slots=True)
class CheckpointAck(Record):
    """A task snapshotted checkpoint ``checkpoint_id`` and wrote it; ``stats`` carry the
    state handles, size, alignment and duration."""

    TYPE = "checkpoint_ack"
    job_id: str
    attempt_id: AttemptId
    checkpoint_id: int
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckpointDecline(Record):
    """A task cannot take part in checkpoint ``checkpoint_id``; ``reason`` says why."""

    TYPE = "checkpoint_declined"
    job_id: str
    attempt_id: AttemptId
    checkpoint_id: int
    reason: str = "no reason given"


#: worker -> coordinator checkpoint answers, by type tag
CHECKPOINT_ANSWERS = {cls.TYPE: cls for cls in (CheckpointAck, CheckpointDecline)}


def checkpoint_answer_from_dict(data) -> CheckpointAck | CheckpointDecline:
    """A :class:`CheckpointAck` or :class:`CheckpointDecline` from its dict."""
    kind = data.get("type") if isinstance(data, dict) else None
    cls = CHECKPOINT_ANSWERS.get(kind)
    if cls is None:
        raise InvalidRequest(f"unknown checkpoint message type {kind!r}; expected {sorted(CHECKPOINT_ANSWERS)}")
    return cls.from_dict(data)


@dataclass(frozen=True, slots=True)
class TriggerCheckpoint(Record):
    """The source task ``attempt_id`` injects the barrier of ``checkpoint_id`` before its next batch."""

    TYPE = "trigger_checkpoint"
    job_id: str
    attempt_id: AttemptId
    checkpoint_id: int
    timestamp_ms: int = 0


@dataclass(frozen=True, slots=True)
class CheckpointComplete(Record):
    """Checkpoint ``checkpoint_id`` of ``job_id`` is committed: the job's sinks publish what it
    covers. ``attempts`` (``{task_id: attempt}``) are the attempts that took part: an
    attempt not listed (a superseded one, e.g. on a worker that was stopped and resumed)
    publishes nothing."""

    TYPE = "checkpoint_complete"
    job_id: str
    checkpoint_id: int
    attempts: dict = field(default_factory=dict)


# -- live rescaling (ARCHITECTURE.md section 8) --------------------------------------------


class ControlMessage(Record):
    """A message for one running task, applied between two batches."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Handoff(ControlMessage):
    """An old task of the rescaled operator: where each new task's state channel is, and
    the key-group table of the new tasks (None: the default ranges)."""

    TYPE = "handoff"
    attempt_id: AttemptId
    rescale_id: str
    state_targets: list[ChannelTarget]
    assignment: list[int] | None = None


@dataclass(frozen=True, slots=True)
class AddInputs(ControlMessage):
    """A downstream task: channels from the new tasks, read after every old one ended."""

    TYPE = "add_inputs"
    attempt_id: AttemptId
    rescale_id: str
    upstream_operator_id: str
    channel_ids: list[str]


@dataclass(frozen=True, slots=True)
class SwitchOutput(ControlMessage):
    """An upstream task: send a rescale barrier on the old channels, then route to ``output``."""

    TYPE = "switch_output"
    attempt_id: AttemptId
    rescale_id: str
    downstream_operator_id: str
    output: OutputEdgeSpec


@dataclass(frozen=True, slots=True)
class SourcePause(ControlMessage):
    """An old source task: stop between two units and answer its split positions."""

    TYPE = "source_pause"
    attempt_id: AttemptId
    rescale_id: str
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class SourceFinish(ControlMessage):
    """An old (paused) source task: its splits went to the new tasks; end its outputs and finish."""

    TYPE = "source_finish"
    attempt_id: AttemptId
    rescale_id: str


@dataclass(frozen=True, slots=True)
class SourceStart(ControlMessage):
    """A new (held) source task: the split positions every old task paused at (one
    ``{"splits": {...}}`` each, see :mod:`sabot.connectors.source`); it takes the splits it owns."""

    TYPE = "source_start"
    attempt_id: AttemptId
    rescale_id: str
    positions: list


#: control message classes by type tag
CONTROL_MESSAGES = {cls.TYPE: cls for cls in (Handoff, AddInputs, SwitchOutput, SourcePause, SourceFinish,
                                               SourceStart)}
#: control messages for source tasks
SOURCE_CONTROLS = (SourcePause, SourceFinish, SourceStart)


def control_from_dict(data) -> ControlMessage:
    """The control message a dict describes (``"type"`` picks the class)."""
    kind = data.get("type") if isinstance(data, dict) else None
    cls = CONTROL_MESSAGES.get(kind)
    if cls is None:
        raise InvalidRequest(
            f"unknown control message type {kind!r}; expected one of {', '.join(CONTROL_MESSAGES)}")
    return cls.from_dict(data)

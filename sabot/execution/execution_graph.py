"""The physical plan: tasks per operator, partitioned edges, task lifecycles.

An :class:`ExecutionGraph` expands a validated ``JobGraph``: each operator becomes
``parallelism`` :class:`TaskVertex` objects, each logical edge one
:class:`ExecutionEdge` with a :class:`Partitioning`. All-to-all edges (HASH,
REBALANCE, BROADCAST) are held once per operator pair, never as N x M objects:
the subtask pairs they connect follow from the partitioning and the two
parallelisms.

Task lifecycles are an explicit state machine (:data:`ALLOWED_TRANSITIONS`);
each task carries an ``attempt`` number that grows on every restart/redeploy, so
that messages from an older attempt can be recognised and dropped.

Example::

    >>> plan = exec_graph.rescale_operator(operator_id=filter_id, new_parallelism=8)
    >>> plan["old_parallelism"], plan["new_parallelism"], len(plan["new_task_ids"])
    (4, 8, 8)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import numpy as np

from sabot._core import graph as _graph
from sabot.errors import IllegalStateTransition
from sabot.execution.ids import AttemptId

log = logging.getLogger(__name__)


class Partitioning(str, Enum):
    """How records of an edge are spread over the downstream tasks."""

    FORWARD = "forward"      # subtask i -> subtask i (equal parallelism)
    HASH = "hash"            # by key group of the downstream's key_by columns
    REBALANCE = "rebalance"  # round-robin over all downstream subtasks
    BROADCAST = "broadcast"  # every record to every downstream subtask

    def __str__(self):
        return self.value

    @classmethod
    def parse(cls, value) -> "Partitioning":
        """A Partitioning from itself or its (case-insensitive) name."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(
                f"unknown partitioning {value!r}; expected one of {[p.value for p in cls]}"
            ) from None


class TaskState(str, Enum):
    """Lifecycle state of one task attempt (Flink's ExecutionState).

    The coordinator's :class:`TaskVertex` and the worker's runtime task use the same
    states; a worker reports RUNNING, FINISHED, FAILED or CANCELED.
    """

    CREATED = "CREATED"
    SCHEDULED = "SCHEDULED"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"
    FAILED = "FAILED"

    def __str__(self):
        return self.value

    @property
    def is_terminal(self) -> bool:
        """FINISHED, CANCELED or FAILED: the attempt does nothing more."""
        return self in TERMINAL_TASK_STATES


#: States an attempt ends in.
TERMINAL_TASK_STATES = frozenset({TaskState.FINISHED, TaskState.CANCELED, TaskState.FAILED})

_S = TaskState
#: Allowed lifecycle moves. Entering CREATED again is a restart (attempt + 1), also
#: from FINISHED, when a failure elsewhere in its pipelined region restarts a task that
#: had already finished.
ALLOWED_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    _S.CREATED: frozenset({_S.SCHEDULED, _S.CANCELED, _S.FAILED}),
    _S.SCHEDULED: frozenset({_S.DEPLOYING, _S.CANCELING, _S.CANCELED, _S.FAILED}),
    _S.DEPLOYING: frozenset({_S.RUNNING, _S.FINISHED, _S.CANCELING, _S.FAILED}),
    _S.RUNNING: frozenset({_S.FINISHED, _S.CANCELING, _S.FAILED}),
    _S.CANCELING: frozenset({_S.CANCELED, _S.FAILED}),
    _S.CANCELED: frozenset({_S.CREATED}),
    _S.FAILED: frozenset({_S.CREATED}),
    _S.FINISHED: frozenset({_S.CREATED}),
}
#: Moves that start a new attempt of the task.
_NEW_ATTEMPT = frozenset({(_S.FAILED, _S.CREATED), (_S.CANCELED, _S.CREATED), (_S.FINISHED, _S.CREATED)})
_ORDERED_STATES = tuple(TaskState)

#: What a worker's report means for the coordinator's view of the attempt:
#: ``(state here, state reported) -> the moves to make``. A report may skip RUNNING (a
#: task that finished or failed before its first report); a task stopped on request
#: while CANCELING ends CANCELED whatever it says. Pairs not listed are protocol errors
#: (:class:`~sabot.errors.IllegalStateTransition`), except reports about an attempt
#: that already ended, which are late and change nothing.
REPORT_STEPS: dict[tuple[TaskState, TaskState], tuple[TaskState, ...]] = {
    (_S.DEPLOYING, _S.RUNNING): (_S.RUNNING,),
    (_S.DEPLOYING, _S.FINISHED): (_S.FINISHED,),
    (_S.DEPLOYING, _S.FAILED): (_S.FAILED,),
    (_S.DEPLOYING, _S.CANCELED): (_S.CANCELING, _S.CANCELED),
    (_S.RUNNING, _S.RUNNING): (),
    (_S.RUNNING, _S.FINISHED): (_S.FINISHED,),
    (_S.RUNNING, _S.FAILED): (_S.FAILED,),
    (_S.RUNNING, _S.CANCELED): (_S.CANCELING, _S.CANCELED),
    (_S.CANCELING, _S.RUNNING): (),
    (_S.CANCELING, _S.FINISHED): (_S.CANCELED,),
    (_S.CANCELING, _S.FAILED): (_S.CANCELED,),
    (_S.CANCELING, _S.CANCELED): (_S.CANCELED,),
}


@dataclass(slots=True, eq=False)
class TaskVertex:
    """One parallel instance (subtask) of an operator, and its current attempt."""

    task_id: str
    operator_id: str
    operator_name: str
    operator_type: Any
    subtask_index: int
    parallelism: int
    max_parallelism: int
    state: TaskState = TaskState.CREATED
    attempt: int = 0
    node_id: str | None = None
    slot_id: str | None = None
    rows_processed: int = 0
    bytes_processed: int = 0
    failure_cause: str | None = None
    created_at: float = 0.0
    #: time of the latest entry into each state (filled on transitions)
    timestamps: dict[str, float] | None = None
    #: the live-task state counts of the graph this task belongs to (None once retired),
    #: kept up to date by every transition so "are all tasks running" is O(1)
    counts: dict | None = None

    def transition(self, new_state: TaskState | str, now: float | None = None) -> None:
        """Move to ``new_state``.

        Args:
            new_state: target state (:class:`TaskState` or its name).
            now: timestamp to record (defaults to ``time.time()``).

        Raises:
            IllegalStateTransition: the move is not in :data:`ALLOWED_TRANSITIONS`
                (the message names the task, both states and the allowed targets).
        """
        try:
            target = new_state if isinstance(new_state, TaskState) else TaskState(str(new_state).upper())
        except ValueError:
            raise ValueError(f"unknown task state {new_state!r}; expected one of {[s.value for s in TaskState]}") \
                from None
        allowed = ALLOWED_TRANSITIONS[self.state]
        if target not in allowed:
            names = ", ".join(s.value for s in _ORDERED_STATES if s in allowed) or "none (terminal state)"
            raise IllegalStateTransition(
                f"task {self.task_id} (attempt {self.attempt}) cannot go from {self.state.value} to "
                f"{target.value}; allowed from {self.state.value}: {names}"
            )
        if (self.state, target) in _NEW_ATTEMPT:
            self.attempt += 1
            if target == TaskState.CREATED:
                self.node_id = None
                self.slot_id = None
        if self.timestamps is None:
            self.timestamps = {}
        self.timestamps[target.value] = time.time() if now is None else now
        if self.counts is not None:
            self.counts[self.state] -= 1
            self.counts[target] += 1
        self.state = target

    def fail(self, cause: str, now: float | None = None) -> None:
        """Move to FAILED, recording ``cause``."""
        self.transition(TaskState.FAILED, now)
        self.failure_cause = str(cause)

    def cancel(self, now: float | None = None) -> None:
        """End this attempt as CANCELED (through CANCELING where the table asks for it);
        an attempt that already ended stays as it is."""
        if self.state.is_terminal:
            return
        if TaskState.CANCELED not in ALLOWED_TRANSITIONS[self.state]:
            self.transition(TaskState.CANCELING, now)
        self.transition(TaskState.CANCELED, now)

    def apply_report(self, reported: TaskState | str, now: float | None = None) -> tuple[TaskState, ...]:
        """Apply a worker's report of this attempt's state (:data:`REPORT_STEPS`).

        Returns the moves made (empty for a repeated or late report).

        Raises:
            IllegalStateTransition: the report does not fit this attempt's state (for
                example RUNNING for a task that was never deployed).
        """
        reported = reported if isinstance(reported, TaskState) else TaskState(str(reported).upper())
        if self.state.is_terminal:
            return ()  # a late report of an attempt that already ended
        steps = REPORT_STEPS.get((self.state, reported))
        if steps is None:
            raise IllegalStateTransition(
                f"task {self.task_id} (attempt {self.attempt}) is {self.state.value} here; a report of "
                f"{reported.value} does not fit"
            )
        for step in steps:
            self.transition(step, now)
        return steps

    @property
    def attempt_id(self) -> AttemptId:
        """The current attempt of this task."""
        return AttemptId(self.task_id, self.attempt)

    @property
    def is_terminal(self) -> bool:
        """FINISHED, CANCELED or FAILED."""
        return self.state.is_terminal

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view of the task."""
        return {
            "task_id": self.task_id,
            "operator_id": self.operator_id,
            "operator_name": self.operator_name,
            "operator_type": getattr(self.operator_type, "value", self.operator_type),
            "subtask_index": self.subtask_index,
            "parallelism": self.parallelism,
            "max_parallelism": self.max_parallelism,
            "state": self.state.value,
            "attempt": self.attempt,
            "node_id": self.node_id,
            "slot_id": self.slot_id,
            "rows_processed": self.rows_processed,
            "bytes_processed": self.bytes_processed,
            "failure_cause": self.failure_cause,
            "created_at": self.created_at,
            "timestamps": dict(self.timestamps or {}),
        }


@dataclass(slots=True, eq=False)
class ExecutionEdge:
    """The data exchange between two operators (one object per operator pair).

    ``explicit`` is True when the partitioning was forced in ``JobGraph.connect``;
    ``pipelined`` is True for streaming exchanges (all of them today), which tie
    both ends into one pipelined region.
    """

    upstream_operator_id: str
    downstream_operator_id: str
    partitioning: Partitioning
    key_by: tuple[str, ...] | None = None
    explicit: bool = False
    pipelined: bool = True

    @property
    def is_all_to_all(self) -> bool:
        """True unless FORWARD (every upstream subtask may send to every downstream one)."""
        return self.partitioning != Partitioning.FORWARD

    def num_channels(self, upstream_parallelism: int, downstream_parallelism: int) -> int:
        """Number of subtask-to-subtask channels this edge implies."""
        if self.partitioning == Partitioning.FORWARD:
            return upstream_parallelism
        return upstream_parallelism * downstream_parallelism

    def to_dict(self) -> dict[str, Any]:
        return {
            "upstream_operator_id": self.upstream_operator_id,
            "downstream_operator_id": self.downstream_operator_id,
            "partitioning": self.partitioning.value,
            "key_by": list(self.key_by) if self.key_by else None,
            "explicit": self.explicit,
            "pipelined": self.pipelined,
        }


def choose_partitioning(explicit: Partitioning | None, upstream_parallelism: int, downstream_parallelism: int,
                        downstream_key_by) -> Partitioning:
    """The partitioning rule: explicit wins; keyed downstream -> HASH (even at equal
    parallelism, so every key meets its state); equal parallelism -> FORWARD;
    otherwise REBALANCE."""
    if explicit is not None:
        return explicit
    if downstream_key_by:
        return Partitioning.HASH
    if upstream_parallelism == downstream_parallelism:
        return Partitioning.FORWARD
    return Partitioning.REBALANCE


class ExecutionGraph:
    """Physical plan of a job: live tasks, edges, rescaling, metrics.

    Built by ``JobGraph.to_execution_graph()``. ``tasks`` holds the live tasks
    only (``task_id -> TaskVertex``); tasks replaced by :meth:`rescale_operator`
    move to ``retired_tasks``.

    Args:
        job_graph: the validated logical plan (kept as ``self.job_graph``; rescaling
            updates its operators' parallelism).
        clock: time source for ``uptime_seconds`` and task timestamps.
    """

    def __init__(self, job_graph, *, clock: Callable[[], float] = time.time):
        self.job_graph = job_graph
        self.job_id: str = job_graph.job_id
        self.job_name: str = job_graph.job_name
        self._clock = clock
        self.created_at = clock()
        self.tasks: dict[str, TaskVertex] = {}
        self.retired_tasks: dict[str, TaskVertex] = {}
        #: how many live tasks are in each state (maintained by TaskVertex.transition)
        self.state_counts: dict[TaskState, int] = {s: 0 for s in TaskState}
        self.rescale_history: list[dict[str, Any]] = []
        self._op_tasks: dict[str, list[TaskVertex]] = {}
        self._generation: dict[str, int] = {}
        self._inputs: dict[str, list[ExecutionEdge]] = {op_id: [] for op_id in job_graph.operators}
        self._outputs: dict[str, list[ExecutionEdge]] = {op_id: [] for op_id in job_graph.operators}
        self.edges: list[ExecutionEdge] = []
        for op_id in job_graph.operators:
            self._generation[op_id] = 0
            self._create_tasks(op_id, job_graph.parallelism_of(op_id))
        for up_id, down_id in job_graph.edges:
            edge = ExecutionEdge(up_id, down_id, Partitioning.FORWARD,
                                 explicit=job_graph.explicit_partitioning(up_id, down_id) is not None)
            self._assign_partitioning(edge)
            self.edges.append(edge)
            self._outputs[up_id].append(edge)
            self._inputs[down_id].append(edge)
        log.debug("execution graph of job %s: %d tasks, %d edges", self.job_name, len(self.tasks), len(self.edges))

    # -- construction ------------------------------------------------------------

    def _create_tasks(self, op_id: str, parallelism: int) -> list[TaskVertex]:
        op = self.job_graph.operators[op_id]
        gen = self._generation[op_id]
        # "<op>:<i>" at first, "<op>:r<n>:<i>" after the n-th rescale: ids never repeat
        prefix = f"{op_id}:r{gen}:" if gen else f"{op_id}:"
        now = self._clock()
        name, optype, maxp = op.name, op.operator_type, op.max_parallelism
        tasks = [TaskVertex(f"{prefix}{i}", op_id, name, optype, i, parallelism, maxp, TaskState.CREATED, 0,
                            None, None, 0, 0, None, now, None, self.state_counts)
                 for i in range(parallelism)]
        self.state_counts[TaskState.CREATED] += parallelism
        self._op_tasks[op_id] = tasks
        self.tasks.update({t.task_id: t for t in tasks})
        return tasks

    def _assign_partitioning(self, edge: ExecutionEdge) -> None:
        jg = self.job_graph
        down = jg.operators[edge.downstream_operator_id]
        keys = down.keys_for(edge.upstream_operator_id)
        edge.partitioning = choose_partitioning(
            jg.explicit_partitioning(edge.upstream_operator_id, edge.downstream_operator_id),
            self.parallelism_of(edge.upstream_operator_id),
            self.parallelism_of(edge.downstream_operator_id),
            keys,
        )
        edge.key_by = tuple(keys) if keys and edge.partitioning == Partitioning.HASH else None

    # -- queries -----------------------------------------------------------------

    def _require_op(self, operator_id: str):
        try:
            return self.job_graph.operators[operator_id]
        except (KeyError, TypeError):
            known = ", ".join(f"{i} ({o.name})" for i, o in self.job_graph.operators.items())
            raise KeyError(f"unknown operator id {operator_id!r} in job {self.job_name!r}; known: {known}") from None

    @property
    def operators(self):
        """The logical operators (``operator_id -> StreamOperatorNode``)."""
        return self.job_graph.operators

    def parallelism_of(self, operator_id: str) -> int:
        """Current parallelism of an operator (number of its live tasks)."""
        self._require_op(operator_id)
        return len(self._op_tasks[operator_id])

    def operator_tasks(self, operator_id: str) -> list[TaskVertex]:
        """Live tasks of an operator, ordered by subtask index."""
        self._require_op(operator_id)
        return list(self._op_tasks[operator_id])

    def inputs_of(self, operator_id: str) -> list[ExecutionEdge]:
        """Edges into an operator."""
        self._require_op(operator_id)
        return list(self._inputs[operator_id])

    def outputs_of(self, operator_id: str) -> list[ExecutionEdge]:
        """Edges out of an operator."""
        self._require_op(operator_id)
        return list(self._outputs[operator_id])

    def get_task(self, task_id: str) -> TaskVertex:
        """A live or retired task by id."""
        task = self.tasks.get(task_id) or self.retired_tasks.get(task_id)
        if task is None:
            raise KeyError(f"unknown task id {task_id!r} in job {self.job_name!r} "
                           f"({len(self.tasks)} live, {len(self.retired_tasks)} retired tasks)")
        return task

    def all_in(self, *states: TaskState) -> bool:
        """True if every live task is in one of ``states`` (O(1))."""
        return sum(self.state_counts[s] for s in states) == len(self.tasks)

    def num_channels(self) -> int:
        """Subtask-to-subtask channels implied by all edges (computed, never materialised)."""
        return sum(e.num_channels(self.parallelism_of(e.upstream_operator_id),
                                  self.parallelism_of(e.downstream_operator_id)) for e in self.edges)

    def pipelined_regions(self) -> list[list[str]]:
        """Groups of operators joined by pipelined edges (which must be scheduled and
        restarted together), via the compiled union-find. Each region lists operator
        ids in job order; regions are ordered by their first operator."""
        ids = list(self.job_graph.operators)
        index = {op_id: i for i, op_id in enumerate(ids)}
        src = np.fromiter((index[e.upstream_operator_id] for e in self.edges), dtype=np.int32, count=len(self.edges))
        dst = np.fromiter((index[e.downstream_operator_id] for e in self.edges), dtype=np.int32, count=len(self.edges))
        mask = np.fromiter((e.pipelined for e in self.edges), dtype=np.bool_, count=len(self.edges))
        labels, count = _graph.pipelined_regions(src, dst, len(ids), mask)
        regions: list[list[str]] = [[] for _ in range(count)]
        for op_id, label in zip(ids, labels.tolist()):
            regions[label].append(op_id)
        return regions

    # -- rescaling ---------------------------------------------------------------

    def rescale_operator(self, operator_id: str, new_parallelism: int) -> dict[str, Any]:
        """Change an operator's parallelism in the plan.

        New tasks (fresh ids, attempt 0, CREATED) replace the old ones, which move
        to ``retired_tasks`` with their state untouched (the coordinator cancels
        them); edge partitionings are recomputed (e.g. FORWARD becomes REBALANCE).

        Returns:
            ``{'status': 'rescaling', 'old_parallelism', 'new_parallelism',
            'old_task_ids', 'new_task_ids', 'requires_state_redistribution'}``, the
            last True iff the operator is stateful or keyed.

        Raises:
            KeyError: unknown operator id.
            ValueError: ``new_parallelism`` not an int in ``[1, max_parallelism]``, or
                an explicit FORWARD edge would join different parallelisms.
        """
        op = self._require_op(operator_id)
        if isinstance(new_parallelism, bool) or not isinstance(new_parallelism, (int, np.integer)):
            raise ValueError(f"new_parallelism for {op.name!r} must be an int, got {new_parallelism!r}")
        new_parallelism = int(new_parallelism)
        if not 1 <= new_parallelism <= op.max_parallelism:
            raise ValueError(
                f"cannot rescale {op.name!r} to {new_parallelism}: expected 1 <= parallelism <= "
                f"max_parallelism = {op.max_parallelism}"
            )
        for edge in self._inputs[operator_id] + self._outputs[operator_id]:
            if edge.explicit and edge.partitioning == Partitioning.FORWARD:
                other = (edge.upstream_operator_id if edge.downstream_operator_id == operator_id
                         else edge.downstream_operator_id)
                if self.parallelism_of(other) != new_parallelism:
                    raise ValueError(
                        f"cannot rescale {op.name!r} to {new_parallelism}: its edge with "
                        f"{self.job_graph.operators[other].name!r} is explicitly FORWARD and that operator "
                        f"has parallelism {self.parallelism_of(other)}"
                    )
        old_tasks = self._op_tasks[operator_id]
        old_parallelism = len(old_tasks)
        for t in old_tasks:
            del self.tasks[t.task_id]
            self.retired_tasks[t.task_id] = t
            self.state_counts[t.state] -= 1
            t.counts = None
        self._generation[operator_id] += 1
        new_tasks = self._create_tasks(operator_id, new_parallelism)
        op.parallelism = new_parallelism
        for edge in self._inputs[operator_id] + self._outputs[operator_id]:
            self._assign_partitioning(edge)
        plan = {
            "status": "rescaling",
            "old_parallelism": old_parallelism,
            "new_parallelism": new_parallelism,
            "old_task_ids": [t.task_id for t in old_tasks],
            "new_task_ids": [t.task_id for t in new_tasks],
            "requires_state_redistribution": bool(op.stateful or op.key_by),
        }
        self.rescale_history.append({"operator_id": operator_id, "at": self._clock(), **plan})
        log.info("job %s: rescale %s %d -> %d", self.job_name, op.name, old_parallelism, new_parallelism)
        return plan

    # -- metrics -----------------------------------------------------------------

    def update_task_metrics(self, task_id: str, rows_processed: int | None = None,
                            bytes_processed: int | None = None) -> None:
        """Record a task's cumulative counters (as reported by its worker)."""
        task = self.get_task(task_id)
        if rows_processed is not None:
            task.rows_processed = int(rows_processed)
        if bytes_processed is not None:
            task.bytes_processed = int(bytes_processed)

    def get_metrics_summary(self) -> dict[str, Any]:
        """Counts and totals over the live tasks.

        Keys: ``total_tasks``, ``running_tasks``, ``failed_tasks``,
        ``finished_tasks``, ``tasks_by_state`` (every state, 0 included),
        ``total_rows_processed``, ``total_bytes_processed``, ``uptime_seconds``,
        ``num_operators``, ``num_edges``, ``retired_tasks``, ``rescales``.
        """
        by_state = {s.value: 0 for s in TaskState}
        rows = nbytes = 0
        for t in self.tasks.values():
            by_state[t.state.value] += 1
            rows += t.rows_processed
            nbytes += t.bytes_processed
        return {
            "job_id": self.job_id,
            "total_tasks": len(self.tasks),
            "running_tasks": by_state[TaskState.RUNNING.value],
            "failed_tasks": by_state[TaskState.FAILED.value],
            "finished_tasks": by_state[TaskState.FINISHED.value],
            "tasks_by_state": by_state,
            "total_rows_processed": rows,
            "total_bytes_processed": nbytes,
            "uptime_seconds": max(0.0, self._clock() - self.created_at),
            "num_operators": len(self.job_graph.operators),
            "num_edges": len(self.edges),
            "retired_tasks": len(self.retired_tasks),
            "rescales": len(self.rescale_history),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view: parallelism per operator, live tasks, edges."""
        return {
            "job_id": self.job_id,
            "job_name": self.job_name,
            "parallelism": {op_id: len(ts) for op_id, ts in self._op_tasks.items()},
            "tasks": [t.to_dict() for ts in self._op_tasks.values() for t in ts],
            "edges": [e.to_dict() for e in self.edges],
        }

    def __repr__(self):
        return f"<ExecutionGraph {self.job_name!r} tasks={len(self.tasks)} edges={len(self.edges)}>"

"""A job as the coordinator holds it: its state machine and its record.

:class:`JobState` moves only along :data:`JOB_TRANSITIONS`; anything else raises
:class:`~sabot.errors.IllegalStateTransition` naming both states, so a bug in the
control plane surfaces where it happens. :class:`JobRecord` holds what belongs to
the job itself (its plans, state, timings, reports, failure and restart history).
Placement lives in the slot pool (:mod:`sabot.cluster.placement`), checkpoints in
the job's :class:`~sabot.cluster.checkpoint_scheduler.JobCheckpointing`, rescales
in the :class:`~sabot.cluster.rescaling.Rescaler`.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from sabot.errors import IllegalStateTransition

__all__ = ["JOB_TRANSITIONS", "JobRecord", "JobState"]


class JobState(str, Enum):
    """Lifecycle of a job (Flink's JobStatus)."""

    CREATED = "CREATED"
    WAITING_FOR_SLOTS = "WAITING_FOR_SLOTS"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    CANCELING = "CANCELING"
    FINISHED = "FINISHED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"

    def __str__(self):
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATES


TERMINAL_JOB_STATES = frozenset({JobState.FINISHED, JobState.CANCELED, JobState.FAILED})

_J = JobState
#: Allowed moves. A job waits for slots, deploys, runs; a failure while deploying or
#: running restarts regions (RESTARTING, again RESTARTING if another failure comes
#: meanwhile); every state that has not ended can be canceled or fail.
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.CREATED: frozenset({_J.WAITING_FOR_SLOTS, _J.CANCELED, _J.FAILED}),
    _J.WAITING_FOR_SLOTS: frozenset({_J.DEPLOYING, _J.CANCELING, _J.CANCELED, _J.FAILED}),
    _J.DEPLOYING: frozenset({_J.RUNNING, _J.RESTARTING, _J.CANCELING, _J.FAILED}),
    _J.RUNNING: frozenset({_J.RESTARTING, _J.FINISHED, _J.CANCELING, _J.FAILED}),
    _J.RESTARTING: frozenset({_J.RUNNING, _J.RESTARTING, _J.CANCELING, _J.FAILED}),
    _J.CANCELING: frozenset({_J.CANCELED, _J.FAILED}),
    _J.FINISHED: frozenset(),
    _J.CANCELED: frozenset(),
    _J.FAILED: frozenset(),
}


class JobRecord:
    """Everything that belongs to one job itself (owned by the coordinator's loop thread).

    Attributes:
        job_graph, exec_graph: the logical and physical plans.
        state: the :class:`JobState` (changed only by :meth:`transition`).
        reports: ``{task_id: TaskUpdate}``, the latest report of each live attempt.
        failure: ``{"error", "traceback", "task_id", "type"}`` once FAILED.
        assignments: ``{operator_id: key-group table}`` of operators whose key groups a
            rebalance moved (written only by the rescaler).
        checkpointing: the job's :class:`~sabot.cluster.checkpoint_scheduler.JobCheckpointing`.
        restart_strategy, failures, restarts, restart_history, last_failure: failover.
        restored_from: where the last (re)start took its state from.
        initial_restore: the restore spec a job submitted with ``restore_from`` starts with.
    """

    def __init__(self, job_id, job_graph, exec_graph, now, wall_now, operator_order=None):
        self.job_id = job_id
        self.job_graph = job_graph
        self.exec_graph = exec_graph
        #: operator ids in topological order (the shape never changes; rescales change parallelism)
        if operator_order is None:
            operator_order = [op.operator_id for op in job_graph.topological_sort()] if job_graph else []
        self.operator_order = list(operator_order)
        self.state = JobState.CREATED
        self.submitted_at = now
        self.wall_submitted_at = wall_now
        self.started_at = None
        self.ended_at = None
        self.state_history = [(JobState.CREATED.value, wall_now)]
        self.failure = None
        self.reports = {}
        self.assignments = {}
        self.done = asyncio.Event()
        self.deployed = asyncio.Event()
        self._running = asyncio.Event()
        self.result = None
        self.result_fetch = None  # the one fetch of the result tables from the workers, while it runs
        self.checkpointing = None
        self.restart_strategy = None
        self.failures = 0  # failures counted against the restart strategy
        self.restarts = 0
        self.restart_history = []
        self.last_failure = None
        self.restored_from = None
        self.initial_restore = None
        self.demand = None  # the slots and slot size it needs (placement.Demand; updated by rescales)
        self.skipped_checkpoints = []
        self.finishing = False  # every task finished; the workers are publishing staged output

    def __repr__(self):
        return f"<JobRecord {self.job_id} {self.state.value}>"

    @property
    def terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def name(self) -> str:
        return self.job_graph.job_name

    def transition(self, target: JobState, now: float, wall_now: float) -> None:
        """Move to ``target``.

        Raises:
            IllegalStateTransition: the move is not in :data:`JOB_TRANSITIONS`.
        """
        allowed = JOB_TRANSITIONS[self.state]
        if target not in allowed:
            names = ", ".join(s.value for s in JobState if s in allowed) or "none (the job has ended)"
            raise IllegalStateTransition(
                f"job {self.job_id} cannot go from {self.state.value} to {target.value}; allowed: {names}")
        self.state = target
        self.state_history.append((target.value, wall_now))
        if target == JobState.RUNNING:
            self._running.set()
            if self.started_at is None:
                self.started_at = now
        if target.is_terminal:
            self.ended_at = now
            self.done.set()

    async def wait_running(self) -> JobState:
        """Wait until the job first runs (every task reported running) or ends; its state then."""
        running = asyncio.ensure_future(self._running.wait())
        ended = asyncio.ensure_future(self.done.wait())
        try:
            await asyncio.wait({running, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            running.cancel()
            ended.cancel()
        return self.state

    def sinks(self, kind=None):
        """Operator ids of the sinks (of parameter ``kind``, e.g. "collect")."""
        return [op_id for op_id, op in self.job_graph.operators.items()
                if op.operator_type.value == "sink" and (kind is None or (op.parameters or {}).get("kind",
                                                                                                   "collect") == kind)]

    def sources(self):
        """Operator ids of the sources."""
        return [op_id for op_id, op in self.job_graph.operators.items() if op.operator_type.value == "source"]

    def source_task_ids(self):
        return [t.task_id for op_id in self.sources() for t in self.exec_graph.operator_tasks(op_id)]

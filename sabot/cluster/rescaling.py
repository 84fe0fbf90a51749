"""Live rescaling and automatic rebalancing of a running job (ARCHITECTURE.md section 8).

A rescale of operator X:

1. checks the job can take it (RUNNING, no other rescale, no checkpoint in flight,
   slots for the new tasks; if not, it is refused and the job keeps its parallelism);
2. changes the plan (``ExecutionGraph.rescale_operator``), gives every new task a
   slot in X's sharing group and deploys it, where it waits for state;
3. tells every old X task where each key group goes, every downstream task which
   new channels to read after the old ones end, and finally every upstream task to
   send a rescale barrier and route to the new tasks from the next batch on;
4. watches the old tasks hand their state over and finish, frees their slots and
   records the timing: total time, and the pause of X (its last record processed by
   the old tasks to its first record processed by the new ones).

A source moves its splits instead of state (:mod:`sabot.connectors.source`): the new
source tasks are deployed held, the old ones pause between two units and answer their
split positions, then finish; every new task gets all the positions and reads the splits
it owns from there (exactly once in total). Only the source pauses.

Nothing else stops. Auto-rebalance is the same move at the same parallelism with a
new key-group table, planned from the per-key-group load that the upstream tasks'
hash partitioners measure (:func:`sabot.execution.rebalance.plan_assignment`).

The :class:`Rescaler` gets what it needs through its constructor (placement,
deployment, the gateway, a failure callback) and never sees the coordinator.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math

import numpy as np

from sabot._core import partition
from sabot.cluster.job import JobState
from sabot.errors import Conflict, InvalidRequest, NotFound
from sabot.execution.execution_graph import TaskState
from sabot.execution.rebalance import imbalance, plan_assignment
from sabot.execution.rescale import build_rescale_messages, build_source_resume_messages
from sabot.runtime.operators import source_is_rescalable

log = logging.getLogger(__name__)

__all__ = ["AutoRebalance", "RescaleRecord", "Rescaler"]

_ids = itertools.count(1)


class RescaleRecord:
    """One live rescale or rebalance of one operator, as the job detail shows it."""

    def __init__(self, rescale_id, job_id, operator_id, operator_name, kind, plan, wall_now, requested_at=None):
        self.rescale_id = rescale_id
        self.job_id = job_id
        self.operator_id = operator_id
        self.operator_name = operator_name
        self.kind = kind
        self.plan = plan
        self.state = "IN_PROGRESS"
        self.started_at = wall_now
        self.completed_at = None
        self.error = None
        self.old_done = {}  # old task id -> its final metrics
        self.new_first_record = {}  # new task id -> wall time of its first record
        self.imbalance_before = None
        self.imbalance_predicted = None
        self.imbalance_after = None
        self.moved_key_groups = None
        self.splits_moved = None  # a source rescale: the splits the old tasks handed over
        # the timeline (wall clock): asked for, new tasks deployed, upstream routing
        # switched to them, every old task's state handed over
        self.requested_at = wall_now if requested_at is None else requested_at
        self.deployed_at = None
        self.switched_at = None
        self.handoffs_at = {}  # old task id -> when its state handoff was reported
        self.assignment_before = None  # key group -> subtask, of a keyed operator
        self.assignment_after = None
        self.done = asyncio.Event()

    @property
    def pause_ms(self):
        """Last record of the old tasks to first record of the new tasks, in ms."""
        last = [m.get("last_record_at") for m in self.old_done.values() if m.get("last_record_at")]
        first = list(self.new_first_record.values())
        if not last or not first:
            return None
        return max(0.0, (min(first) - max(last)) * 1e3)

    def timeline(self):
        """The steps of the move in order, each with its wall time and ms since it was requested.

        A step not reached (yet) has ``at`` None. ``resumed`` is the first record the
        new tasks processed.
        """
        first = min(self.new_first_record.values()) if self.new_first_record else None
        steps = [
            ("requested", self.requested_at),
            ("deployed", self.deployed_at),
            ("switched", self.switched_at),
            ("state_moved", max(self.handoffs_at.values())
             if self.handoffs_at and len(self.handoffs_at) == len(self.plan["old_task_ids"]) else None),
            ("resumed", first),
            ("completed", self.completed_at),
        ]
        return [{"step": step, "at": at,
                 "offset_ms": None if at is None else round((at - self.requested_at) * 1e3, 3)}
                for step, at in steps]

    def to_dict(self):
        total = None if self.completed_at is None else (self.completed_at - self.started_at) * 1e3
        return {
            "rescale_id": self.rescale_id,
            "kind": self.kind,
            "operator_id": self.operator_id,
            "operator_name": self.operator_name,
            "old_parallelism": self.plan["old_parallelism"],
            "new_parallelism": self.plan["new_parallelism"],
            "old_task_ids": self.plan["old_task_ids"],
            "new_task_ids": self.plan["new_task_ids"],
            "requires_state_redistribution": self.plan["requires_state_redistribution"],
            "state": self.state,
            "error": self.error,
            "started_at": self.started_at,
            "total_ms": total,
            "pause_ms": self.pause_ms,
            "state_rows_moved": sum(m.get("state_rows_handed_off", 0) for m in self.old_done.values()),
            "old_tasks_finished": len(self.old_done),
            "imbalance_before": self.imbalance_before,
            "imbalance_predicted": self.imbalance_predicted,
            "imbalance_after": self.imbalance_after,
            "moved_key_groups": self.moved_key_groups,
            "splits_moved": self.splits_moved,
            "source_paused_ms": max((m["source_paused_ms"] for m in self.old_done.values()
                                     if m.get("source_paused_ms") is not None), default=None),
            "requested_at": self.requested_at,
            "completed_at": self.completed_at,
            "timeline": self.timeline(),
        }


class AutoRebalance:
    """The auto-rebalance setting of one job and what it measured."""

    def __init__(self, interval_seconds, imbalance_threshold):
        self.interval_seconds = interval_seconds
        self.imbalance_threshold = imbalance_threshold
        self.task = None
        self.samples = {}  # operator id -> {upstream task id: (cumulative rows per key group, report time)}
        self.last_imbalance = {}  # operator id -> imbalance measured over the last interval
        self.checks = 0

    def to_dict(self):
        return {
            "enabled": True,
            "interval_seconds": self.interval_seconds,
            "imbalance_threshold": self.imbalance_threshold,
            "checks": self.checks,
            "imbalance": dict(self.last_imbalance),
        }


#: accepted ranges (inclusive) of the auto-rebalance settings
AUTO_REBALANCE_INTERVAL_S = (0.1, 86_400.0)
AUTO_REBALANCE_THRESHOLD = (0.001, 100.0)


def _bounded_number(name, value, low, high):
    """``value`` as a float if it is a JSON number within ``[low, high]``, else InvalidRequest."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return float(value)


def auto_rebalance_settings(interval_seconds, imbalance_threshold):
    """``(interval_seconds, imbalance_threshold)`` as floats, or InvalidRequest naming the bad one."""
    return (_bounded_number("interval_seconds", interval_seconds, *AUTO_REBALANCE_INTERVAL_S),
            _bounded_number("imbalance_threshold", imbalance_threshold, *AUTO_REBALANCE_THRESHOLD))


class Rescaler:
    """Carries out live rescales and auto-rebalancing.

    Args:
        get_job: ``fn(job_id) -> JobRecord`` (raises NotFound).
        placer, deployer, gateway: placement, deployment and the workers.
        clock, spawn: time and background tasks.
        offload: ``async fn(callable, *args, **kwargs)`` running blocking work off the loop.
        on_failure: ``fn(job, message, task_ids, traceback=None)``: a failure for failover.
        fail_job: ``fn(job, message)``: the job cannot go on.
    """

    def __init__(self, *, get_job, placer, deployer, gateway, clock, spawn, on_failure, fail_job,
                 offload=asyncio.to_thread):
        self.get_job = get_job
        self.placer = placer
        self.deployer = deployer
        self.gateway = gateway
        self.clock = clock
        self.spawn = spawn
        self.on_failure = on_failure
        self.fail_job = fail_job
        self.offload = offload
        self.records = {}  # job id -> [RescaleRecord]
        self.active = {}  # job id -> RescaleRecord in progress
        self.auto = {}  # job id -> AutoRebalance
        self.preparing = set()  # job ids waiting for a checkpoint in flight before a rescale

    # -- checks ------------------------------------------------------------------------

    def _check(self, job, operator_id, new_parallelism):
        if job.state != JobState.RUNNING:
            raise Conflict(f"job {job.job_id} is {job.state.value}; only a RUNNING job can be rescaled")
        if job.job_id in self.active:
            raise Conflict(
                f"job {job.job_id} is already rescaling {self.active[job.job_id].operator_name!r} "
                f"({self.active[job.job_id].rescale_id}); wait for it to finish")
        ops = job.job_graph.operators
        if operator_id not in ops:
            known = ", ".join(f"{i} ({o.name})" for i, o in ops.items())
            raise NotFound(f"job {job.job_id} has no operator {operator_id!r}; operators: {known}")
        node = ops[operator_id]
        kind = node.operator_type.value
        if kind == "sink":
            raise InvalidRequest(
                f"operator {node.name!r} is a sink: live rescaling of sinks is not supported yet (their "
                "committed output would have to move); rescale the operators before it")
        if kind == "source":
            source_kind = (node.parameters or {}).get("kind")
            rescalable, why = source_is_rescalable(source_kind)
            if not rescalable:
                raise InvalidRequest(f"source {node.name!r} cannot be rescaled live: {why}")
        if isinstance(new_parallelism, bool) or not isinstance(new_parallelism, int):
            raise InvalidRequest(f"new_parallelism must be an int, got {new_parallelism!r}")
        if not 1 <= new_parallelism <= node.max_parallelism:
            raise InvalidRequest(
                f"cannot rescale {node.name!r} to {new_parallelism}: expected 1 <= new_parallelism <= "
                f"max_parallelism = {node.max_parallelism}")
        states = {t.state for t in job.exec_graph.tasks.values()}
        if states != {TaskState.RUNNING}:
            raise Conflict(
                f"job {job.job_id} has tasks that are not RUNNING ({sorted(s.value for s in states)}): its "
                "sources may have ended; a rescale needs every task running")
        return node

    # -- rescale -----------------------------------------------------------------------

    async def rescale(self, job_id, operator_id, new_parallelism, *, assignment=None, kind="rescale"):
        """Start a live rescale; returns the seed's plan dict plus ``rescale_id``.

        The move itself goes on in the background; ``GET /jobs/{id}`` shows it.

        Raises:
            NotFound: unknown job or operator.
            InvalidRequest: a bad parallelism, a sink, or a source that cannot move.
            Conflict: the job is not RUNNING, another rescale goes on, or there are not
                enough slots (the job keeps its parallelism).
        """
        requested_at = self.clock.wall()
        job = self.get_job(job_id)
        node = self._check(job, operator_id, new_parallelism)
        await self._quiesce_checkpoints(job)
        node = self._check(job, operator_id, new_parallelism)  # the job may have moved on meanwhile
        capacity = self.placer.capacity_for(job, node)
        current = job.exec_graph.parallelism_of(operator_id)
        if new_parallelism > capacity:
            raise Conflict(
                f"cannot rescale {node.name!r} to {new_parallelism}: the job's slots plus the free ones give room "
                f"for {capacity} tasks of it; the job keeps running at parallelism {current}. Add workers or ask "
                "for less")
        rescale_id = f"rescale-{next(_ids)}"
        before = self.assignment_of(job, operator_id).tolist() if node.key_by else None
        plan = job.exec_graph.rescale_operator(operator_id, new_parallelism)
        job.demand = self.placer.demand(job.job_graph)
        new_tasks = [job.exec_graph.tasks[t] for t in plan["new_task_ids"]]
        # a new task may share a slot with an old one of its operator: they overlap briefly
        if not self.placer.place_now(job, new_tasks, operator_key=lambda t: f"{t.operator_id}@{rescale_id}"):
            # the capacity check above makes this a bug; the plan already changed, so the job cannot go on
            message = (f"job {job_id}: rescale {rescale_id} of {node.name!r} could not get the slots its capacity "
                       f"check promised ({capacity})")
            self.fail_job(job, message)
            raise Conflict(message)
        record = RescaleRecord(rescale_id, job_id, operator_id, node.name, kind, plan, self.clock.wall(),
                               requested_at=requested_at)
        self.records.setdefault(job_id, []).append(record)
        self.active[job_id] = record
        if assignment is not None:
            job.assignments[operator_id] = [int(x) for x in assignment]
        else:
            job.assignments.pop(operator_id, None)
        if before is not None:
            record.assignment_before = before
            record.assignment_after = self.assignment_of(job, operator_id).tolist()
        if job.checkpointing is not None:
            job.checkpointing.tasks_changed("the job was rescaled")
        self.spawn(self._carry_out(job, record, assignment))
        return dict(plan, rescale_id=rescale_id)

    async def _quiesce_checkpoints(self, job):
        """Let a checkpoint in flight finish first: its barriers must not meet a rescale.

        A checkpoint completes only once every task acknowledged, that is once its
        barriers have passed every task; no new one is triggered meanwhile.
        """
        checkpointing = job.checkpointing
        if checkpointing is None:
            return
        self.preparing.add(job.job_id)
        try:
            if not await checkpointing.wait_idle(checkpointing.timeout_s + 1.0):
                raise Conflict(f"job {job.job_id}: a checkpoint is still in progress; retry the rescale when it "
                               "is done")
        finally:
            self.preparing.discard(job.job_id)

    def blocks_checkpoints(self, job):
        """Why no checkpoint may start now (a rescale is prepared or carried out), or None."""
        if job.job_id in self.active or job.job_id in self.preparing:
            return "the job is rescaling"
        return None

    async def _carry_out(self, job, record, assignment):
        try:
            min_checkpoint_id = job.checkpointing.next_id if job.checkpointing is not None else 0
            checkpoint = job.checkpointing.spec if job.checkpointing is not None else None
            msgs = await self.offload(  # thousands of tasks: not on the event loop
                build_rescale_messages, job.exec_graph, job.job_id, record.operator_id, record.plan,
                record.rescale_id, locations=self.placer.locations(job), checkpoint=checkpoint, assignment=assignment,
                assignments=dict(job.assignments), min_checkpoint_id=min_checkpoint_id)
            errors = await self.deployer.deploy(job, list(msgs.deploy.values()))
            if errors:
                raise errors[0]
            record.deployed_at = self.clock.wall()
            if msgs.is_source:
                await self._carry_out_source(job, record, msgs)
                return
            # order matters: old tasks must know their targets and downstream tasks their
            # new inputs before any upstream task switches
            for step in (msgs.handoff, msgs.add_inputs, msgs.switch_output):
                if self.active.get(job.job_id) is not record:
                    return  # given up meanwhile (a failure and restart): send nothing more
                await asyncio.gather(*(self._control(m) for m in step.values()))
            record.switched_at = self.clock.wall()
        except Exception as exc:
            if self.active.get(job.job_id) is not record:
                return  # this rescale was already given up; the job has moved on
            log.warning("rescale %s of job %s failed: %s", record.rescale_id, job.job_id, exc)
            self.abort(job, f"{type(exc).__name__}: {exc}")
            self.on_failure(job, f"rescale {record.rescale_id} of {record.operator_name!r} failed: {exc}", [])

    async def _carry_out_source(self, job, record, msgs):
        """A source: new tasks are deployed held; pause the old ones, move their splits.

        The downstream tasks first learn the new channels (read only after every old
        one ended). Each old task stops between two units and answers its split
        positions; the old tasks then finish, and every new task gets all positions and
        reads the splits it owns from there.
        """
        await asyncio.gather(*(self._control(m) for m in msgs.add_inputs.values()))
        answers = await asyncio.gather(*(self._control(m) for m in msgs.source_pause.values()))
        replies = [a.get("reply") for a in answers]
        if any(r is None or not isinstance(r.get("position"), dict) for r in replies):
            raise RuntimeError(f"a paused source task answered without its split positions: {answers}")
        if self.active.get(job.job_id) is not record:
            return
        positions = [r["position"] for r in replies]
        record.splits_moved = sum(len(p.get("splits") or {}) for p in positions)
        resume = build_source_resume_messages(job.exec_graph, record.plan, record.rescale_id, positions)
        await asyncio.gather(*(self._control(m) for step in ("source_finish", "source_start")
                               for m in resume[step].values()))
        record.switched_at = self.clock.wall()

    async def _control(self, message):
        """Send a control message to the worker of the task it names; the worker's answer."""
        node_id = self.placer.node_of(message.attempt_id.task_id)
        return await self.gateway.control(node_id, message)

    # -- reports from the workers --------------------------------------------------------

    def on_task_update(self, job, node_id, update):
        """Reports of tasks taking part in a rescale. Returns True if consumed here."""
        task_id = update.task_id
        first = update.metrics.get("first_record_at")
        if first:
            # the new tasks' first record may be reported after the rescale completed
            for rec in reversed(self.records.get(job.job_id, [])):
                if task_id in rec.plan["new_task_ids"]:
                    rec.new_first_record.setdefault(task_id, first)
                    break
        record = self.active.get(job.job_id)
        if record is None or task_id in record.plan["new_task_ids"]:
            return False  # live tasks: the coordinator's usual handling applies
        if task_id not in record.plan["old_task_ids"] or self.placer.node_of(task_id) != node_id:
            return False
        task = job.exec_graph.get_task(task_id)
        if update.attempt != task.attempt:
            return True  # a report of an older attempt of an old task: nothing to do
        state = update.state
        if state == TaskState.FINISHED and update.handed_off:
            record.old_done[task_id] = update.metrics
            record.handoffs_at[task_id] = self.clock.wall()
            task.apply_report(state)
            self.placer.release([task_id])
            if len(record.old_done) == len(record.plan["old_task_ids"]):
                self._finish(job, record)
        elif state in (TaskState.FAILED, TaskState.CANCELED, TaskState.FINISHED):
            # FINISHED without a handoff: its input ended before the barrier came, so it
            # emitted its results itself while new tasks wait for state that never comes
            error = update.error or (
                f"task {task_id} ended before it could hand its state over" if state == TaskState.FINISHED
                else f"task {task_id} was {state.value} during the rescale")
            self.abort(job, error)
            self.on_failure(job, f"old task {task_id} of rescale {record.rescale_id}: {error}", [task_id],
                            traceback=update.traceback)
        return True

    def _finish(self, job, record, error=None):
        record.completed_at = self.clock.wall()
        record.state = "FAILED" if error else "COMPLETED"
        record.error = error
        if self.active.get(job.job_id) is record:
            del self.active[job.job_id]
        record.done.set()
        log.info("job %s: %s %s of %s %s in %.1f ms", job.job_id, record.kind, record.rescale_id,
                 record.operator_name, record.state, (record.completed_at - record.started_at) * 1e3)

    def abort(self, job, reason):
        """The job fails or restarts during a rescale: give it up and stop its old tasks.

        The restart then redeploys the operator at its new parallelism from the last
        checkpoint (keyed state is re-split by key group), so nothing is lost.
        """
        record = self.active.get(job.job_id)
        if record is None:
            return
        self._finish(job, record, error=f"given up: {reason}")
        stale = [t for t in record.plan["old_task_ids"] if self.placer.node_of(t) is not None]
        if stale:
            self.spawn(self._stop_old_tasks(job, stale))

    async def _stop_old_tasks(self, job, task_ids):
        await self.deployer.cancel(job, task_ids)
        self.placer.release(task_ids)

    def forget(self, job_id):
        """The coordinator forgot the (ended) job: so does the rescaler."""
        self.records.pop(job_id, None)
        self.active.pop(job_id, None)
        auto = self.auto.pop(job_id, None)
        if auto is not None and auto.task is not None:
            auto.task.cancel()

    def job_ended(self, job):
        """The job ended: no rescale goes on."""
        record = self.active.get(job.job_id)
        if record is not None:
            if job.state == JobState.FINISHED:
                # every live (new) task finished: the move took effect, whatever old
                # task reports are still on their way
                self._finish(job, record)
            else:
                self._finish(job, record, error=f"the job became {job.state.value} during the rescale")
        auto = self.auto.pop(job.job_id, None)
        if auto is not None and auto.task is not None:
            auto.task.cancel()

    def details(self, job):
        return {
            "rescales": [r.to_dict() for r in self.records.get(job.job_id, [])],
            "auto_rebalance": self.auto[job.job_id].to_dict() if job.job_id in self.auto else {"enabled": False},
            "assignments": {op: "custom" for op in job.assignments},
        }

    # -- auto-rebalance -------------------------------------------------------------------

    def enable_auto_rebalance(self, job_id, interval_seconds=60.0, imbalance_threshold=0.3):
        job = self.get_job(job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} is {job.state.value}; auto-rebalance needs a job that runs")
        interval_seconds, imbalance_threshold = auto_rebalance_settings(interval_seconds, imbalance_threshold)
        self.disable_auto_rebalance(job_id)
        auto = self.auto[job_id] = AutoRebalance(interval_seconds, imbalance_threshold)
        auto.task = self.spawn(self._auto_loop(job, auto))
        return auto.to_dict()

    def disable_auto_rebalance(self, job_id):
        self.get_job(job_id)
        auto = self.auto.pop(job_id, None)
        if auto is not None and auto.task is not None:
            auto.task.cancel()
        return {"enabled": False}

    async def _auto_loop(self, job, auto):
        while not job.terminal:
            await self.clock.sleep(auto.interval_seconds)
            if job.terminal:
                return
            auto.checks += 1
            try:
                await self.rebalance_once(job, auto)
            except (Conflict, InvalidRequest) as exc:
                log.info("auto-rebalance of job %s skipped: %s", job.job_id, exc)
            except Exception:
                log.exception("auto-rebalance of job %s failed", job.job_id)

    def _keyed_operators(self, job):
        for op_id, node in job.job_graph.operators.items():
            if node.key_by and node.operator_type.value not in ("source", "sink"):
                yield op_id, node

    def measure(self, job, auto, op_id):
        """Rows per second per key group routed to ``op_id`` since the last sample.

        The upstream tasks' hash partitioners count the rows they route per key group
        (cumulative, reported with their metrics and the time of the report). Each
        upstream task's difference between two reports, divided by the time between
        them, is its rate per key group; the operator's load is their sum (so tasks
        whose reports are not aligned in time still add up correctly). Returns None
        when there is no earlier sample, or an upstream task restarted, was rescaled
        or has not reported since.
        """
        exec_graph = job.exec_graph
        previous = auto.samples.get(op_id)
        now = {}
        for edge in exec_graph.inputs_of(op_id):
            for task in exec_graph.operator_tasks(edge.upstream_operator_id):
                report = job.reports.get(task.task_id)
                metrics = report.metrics if report is not None else {}
                counts = (metrics.get("key_group_counts") or {}).get(op_id)
                if counts is not None and metrics.get("sampled_at") is not None:
                    now[task.task_id] = (np.asarray(counts, dtype=np.int64), float(metrics["sampled_at"]))
        auto.samples[op_id] = now
        if previous is None or not now:
            return None
        rates = np.zeros(job.job_graph.operators[op_id].max_parallelism, dtype=np.float64)
        for task_id, (counts, at) in now.items():
            before = previous.get(task_id)
            if before is None or before[0].shape != counts.shape or np.any(counts < before[0]) or at <= before[1]:
                return None
            rates += (counts - before[0]) / (at - before[1])
        return rates

    def assignment_of(self, job, op_id):
        """The key-group table of an operator: key group -> subtask (numpy int32)."""
        current = job.assignments.get(op_id)
        if current is None:
            node = job.job_graph.operators[op_id]
            return partition.default_assignment(node.max_parallelism, job.exec_graph.parallelism_of(op_id))
        return np.asarray(current, dtype=np.int32)

    async def rebalance_once(self, job, auto):
        """Measure every keyed operator; move key groups where the imbalance is too high."""
        if job.state != JobState.RUNNING or job.job_id in self.active:
            auto.samples.clear()  # a rescale changes who routes what: start measuring afresh
            return None
        for op_id, node in self._keyed_operators(job):
            kg = self.measure(job, auto, op_id)
            if kg is None or kg.sum() <= 0:
                continue
            parallelism = job.exec_graph.parallelism_of(op_id)
            current = self.assignment_of(job, op_id)
            measured = imbalance(np.bincount(current, weights=kg, minlength=parallelism))
            auto.last_imbalance[node.name] = round(float(measured), 4)
            previous = [r for r in self.records.get(job.job_id, []) if r.operator_id == op_id and r.kind == "rebalance"]
            if previous and previous[-1].imbalance_after is None:
                previous[-1].imbalance_after = round(float(measured), 4)
            if measured <= auto.imbalance_threshold:
                continue
            plan = plan_assignment(kg, current, parallelism, target_imbalance=auto.imbalance_threshold / 2)
            if not plan.changed or plan.imbalance_after >= plan.imbalance_before:
                log.info("job %s: %s is imbalanced (%.2f) but no better key-group table exists (bound %.2f)",
                         job.job_id, node.name, measured, plan.lower_bound_imbalance)
                continue
            result = await self.rescale(job.job_id, op_id, parallelism, assignment=plan.assignment, kind="rebalance")
            record = self.records[job.job_id][-1]
            record.imbalance_before = round(float(measured), 4)
            record.imbalance_predicted = round(float(plan.imbalance_after), 4)
            record.moved_key_groups = len(plan.moves)
            auto.samples.clear()
            return result
        return None

"""Live rescaling and automatic rebalancing of a running job (ARCHITECTURE.md section 8).

The coordinator owns one :class:`Rescaler`. A rescale of operator X:

1. checks the job can take it (RUNNING, no other rescale, slots for the new tasks:
   if not, it is refused and the job keeps its parallelism);
2. changes the plan (``ExecutionGraph.rescale_operator``), gives every new task a
   slot and deploys it on its worker, where it waits for state;
3. tells every old X task where each key group goes, every downstream task which
   new channels to read after the old ones end, and finally every upstream task
   to send a rescale barrier and route to the new tasks from the next batch on;
4. watches the old tasks hand their state over and finish, frees their slots and
   records the timing: total time, and the pause of X (its last record processed
   by the old tasks to its first record processed by the new ones).

A source (table or generator) moves its units instead of state: the new source
tasks are deployed held, the old ones pause between two units and answer their
next unit, the highest is the frontier F; the old tasks emit their units below F
and finish, the new tasks emit the units from F on (exactly once in total). Only
the source pauses, for that round trip.

Nothing else stops. Auto-rebalance is the same move at the same parallelism with
a new key-group table, planned from the per-key-group load that the upstream
tasks' hash partitioners measure (:func:`sabot.execution.rebalance.plan_assignment`).
"""

import asyncio
import itertools
import logging
import time

import numpy as np

from sabot._core import partition
from sabot.cluster.protocol import BadRequest, Conflict, NotFound
from sabot.execution.deployment import build_rescale_messages, build_source_resume_messages, source_frontier
from sabot.execution.rebalance import imbalance, plan_assignment
from sabot.execution.slot_pool import SlotRequest

log = logging.getLogger(__name__)

_ids = itertools.count(1)

#: source kinds whose units can move between subtasks during a live rescale
RESCALABLE_SOURCE_KINDS = ("table", "generator")


def _op_type(node):
    return getattr(node.operator_type, "value", node.operator_type)


class RescaleRecord:
    """One live rescale or rebalance of one operator, as the job detail shows it."""

    def __init__(self, rescale_id, job_id, operator_id, operator_name, kind, plan):
        self.rescale_id = rescale_id
        self.job_id = job_id
        self.operator_id = operator_id
        self.operator_name = operator_name
        self.kind = kind
        self.plan = plan
        self.state = "IN_PROGRESS"
        self.started_at = time.time()
        self.completed_at = None
        self.error = None
        self.old_done = {}  # old task id -> its final metrics
        self.new_first_record = {}  # new task id -> wall time of its first record
        self.imbalance_before = None
        self.imbalance_predicted = None
        self.imbalance_after = None
        self.moved_key_groups = None
        self.frontier = None  # a source rescale: first unit left to the new tasks
        self.done = asyncio.Event()

    @property
    def pause_ms(self):
        """Last record of the old tasks to first record of the new tasks, in ms."""
        last = [m.get("last_record_at") for m in self.old_done.values() if m.get("last_record_at")]
        first = list(self.new_first_record.values())
        if not last or not first:
            return None
        return max(0.0, (min(first) - max(last)) * 1e3)

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
            "frontier": self.frontier,
            "source_paused_ms": max((m["source_paused_ms"] for m in self.old_done.values()
                                     if m.get("source_paused_ms") is not None), default=None),
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


class Rescaler:
    """Carries out live rescales and auto-rebalancing for a ClusterCoordinator."""

    def __init__(self, coordinator):
        self.coordinator = coordinator
        self.records = {}  # job id -> [RescaleRecord]
        self.active = {}  # job id -> RescaleRecord in progress
        self.assignments = {}  # job id -> {operator id: key-group table}
        self.auto = {}  # job id -> AutoRebalance
        self.preparing = set()  # job ids waiting for a checkpoint in flight before a rescale

    # -- checks ------------------------------------------------------------------------

    def _check(self, job, operator_id, new_parallelism):
        from sabot.cluster.coordinator import JobState

        if job.state != JobState.RUNNING:
            raise Conflict(f"job {job.job_id} is {job.state.value}; only a RUNNING job can be rescaled")
        if job.job_id in self.active:
            raise Conflict(
                f"job {job.job_id} is already rescaling {self.active[job.job_id].operator_name!r} "
                f"({self.active[job.job_id].rescale_id}); wait for it to finish"
            )
        ops = job.job_graph.operators
        if operator_id not in ops:
            known = ", ".join(f"{i} ({o.name})" for i, o in ops.items())
            raise NotFound(f"job {job.job_id} has no operator {operator_id!r}; operators: {known}")
        node = ops[operator_id]
        if _op_type(node) == "sink":
            raise BadRequest(
                f"operator {node.name!r} is a sink: live rescaling of sinks is not supported yet (their "
                "committed output would have to move); rescale the operators before it"
            )
        if _op_type(node) == "source":
            kind = (node.parameters or {}).get("kind")
            if kind == "dataset":
                raise BadRequest(
                    f"operator {node.name!r} reads files: rescaling a file source is not supported yet; "
                    "table and generator sources can be rescaled"
                )
            if kind not in RESCALABLE_SOURCE_KINDS:
                raise BadRequest(
                    f"source {node.name!r} of kind {kind!r} cannot be rescaled live; rescalable source "
                    f"kinds: {', '.join(RESCALABLE_SOURCE_KINDS)}"
                )
        if isinstance(new_parallelism, bool) or not isinstance(new_parallelism, int):
            raise BadRequest(f"new_parallelism must be an int, got {new_parallelism!r}")
        if not 1 <= new_parallelism <= node.max_parallelism:
            raise BadRequest(
                f"cannot rescale {node.name!r} to {new_parallelism}: expected 1 <= new_parallelism <= "
                f"max_parallelism = {node.max_parallelism}"
            )
        states = {str(getattr(t.state, "name", t.state)) for t in job.exec_graph.tasks.values()}
        if states != {"RUNNING"}:
            raise Conflict(
                f"job {job.job_id} has tasks that are not RUNNING ({sorted(states)}): its sources may "
                "have ended; a rescale needs every task running"
            )
        return node

    def _capacity(self, job, node):
        """Slots a new task of ``node`` could use: the job's own slots, or free ones that fit."""
        pool = self.coordinator.slot_pool
        own = {slot.slot_id for slot in job.slots.values() if slot.sharing_group == job.job_id}
        free = 0
        for n in self.coordinator.nodes.values():
            if n.cpu_cores_per_slot >= float(node.cpu_cores or 0) and n.memory_mb_per_slot >= int(node.memory_mb or 0):
                free += pool.get_free_slots(n.node_id)
        return len(own) + free

    # -- rescale -----------------------------------------------------------------------

    async def rescale(self, job_id, operator_id, new_parallelism, *, assignment=None, kind="rescale"):
        """Start a live rescale; returns the seed's plan dict plus ``rescale_id``.

        The move itself goes on in the background; ``GET /jobs/{id}`` shows it.
        """
        job = self.coordinator.get_job(job_id)
        node = self._check(job, operator_id, new_parallelism)
        await self._quiesce_checkpoints(job)
        node = self._check(job, operator_id, new_parallelism)  # the job may have moved on meanwhile
        capacity = self._capacity(job, node)
        if new_parallelism > capacity:
            raise Conflict(
                f"cannot rescale {node.name!r} to {new_parallelism}: the job's slots plus the free ones "
                f"give room for {capacity} tasks of it; the job keeps running at parallelism "
                f"{job.exec_graph.parallelism_of(operator_id)}. Add workers or ask for less"
            )
        rescale_id = f"rescale-{next(_ids)}"
        plan = job.exec_graph.rescale_operator(operator_id, new_parallelism)
        record = RescaleRecord(rescale_id, job_id, operator_id, node.name, kind, plan)
        self.records.setdefault(job_id, []).append(record)
        self.active[job_id] = record
        if assignment is not None:
            self.assignments.setdefault(job_id, {})[operator_id] = [int(x) for x in assignment]
        else:
            self.assignments.get(job_id, {}).pop(operator_id, None)
        try:
            self._allocate(job, node, plan, rescale_id)
        except Exception as exc:  # cannot happen after the capacity check; fail loudly if it does
            record.state, record.error = "FAILED", str(exc)
            self.active.pop(job_id, None)
            self.coordinator._fail_job(job, f"job {job_id}: rescale {rescale_id} could not get slots: {exc}")
            raise
        self.coordinator.tasks_changed(job)
        self.coordinator._spawn(self._carry_out(job, record, assignment))
        return dict(plan, rescale_id=rescale_id)

    async def _quiesce_checkpoints(self, job):
        """Let a checkpoint in flight finish first: its barriers must not meet a rescale.

        A checkpoint completes only once every task acknowledged, that is once its
        barriers have passed every task; no new one is triggered meanwhile.
        """
        cc = job.checkpoints
        if cc is None or not cc.pending:
            return
        self.preparing.add(job.job_id)
        try:
            deadline = asyncio.get_running_loop().time() + float(cc.timeout_s) + 1.0
            while cc.pending and not job.terminal:
                if asyncio.get_running_loop().time() > deadline:
                    raise Conflict(f"job {job.job_id}: checkpoint(s) {sorted(cc.pending)} still in progress; "
                                   "retry the rescale when they are done")
                await asyncio.sleep(0.01)
        finally:
            self.preparing.discard(job.job_id)

    def blocks_checkpoints(self, job):
        """No checkpoint is triggered while a rescale of the job is prepared or carried out."""
        return job.job_id in self.active or job.job_id in self.preparing

    def _allocate(self, job, node, plan, rescale_id):
        coordinator = self.coordinator
        nodes = sorted(coordinator.nodes.values(), key=lambda n: -coordinator.slot_pool.get_free_slots(n.node_id))
        for i, task_id in enumerate(plan["new_task_ids"]):
            task = job.exec_graph.tasks[task_id]
            request = SlotRequest(
                task_id=task_id,
                # a new task may share a slot with an old one of its operator: they overlap briefly
                operator_id=f"{node.operator_id}@{rescale_id}",
                cpu_cores=float(node.cpu_cores or 0),
                memory_mb=int(node.memory_mb or 0),
                sharing_group=job.job_id,
                preferred_node=nodes[i % len(nodes)].node_id if nodes else None,
            )
            slot = coordinator.slot_pool.request_slot(request)
            if slot is None:
                coordinator.slot_pool.cancel_request(task_id)
                raise RuntimeError(f"no slot for {task_id}")
            job.slots[task_id] = slot
            job.task_node[task_id] = slot.node_id
            task.slot_id, task.node_id = slot.slot_id, slot.node_id
            coordinator.nodes[slot.node_id].task_ids.add(task_id)
            coordinator._advance(task, "SCHEDULED")

    async def _carry_out(self, job, record, assignment):
        coordinator = self.coordinator
        try:
            locations = {tid: coordinator.nodes[nid].data_address
                         for tid, nid in job.task_node.items() if nid in coordinator.nodes}
            msgs = build_rescale_messages(
                job.exec_graph, job.job_id, record.operator_id, record.plan, record.rescale_id,
                locations=locations, checkpoint=job.checkpoint_spec, assignment=assignment,
                assignments=self.assignments.get(job.job_id),
                min_checkpoint_id=job.checkpoints.next_id if job.checkpoints is not None else 0,
            )
            per_node = {}
            for task_id, tdd in msgs["deploy"].items():
                per_node.setdefault(job.task_node[task_id], []).append(tdd)
                coordinator._advance(job.exec_graph.tasks[task_id], "DEPLOYING")
            await asyncio.gather(*(coordinator._post_deploy(n, tdds) for n, tdds in per_node.items()))
            if "source_pause" in msgs:
                await self._carry_out_source(job, record, msgs)
                return
            # order matters: old tasks must know their targets and downstream tasks their
            # new inputs before any upstream task switches
            for step in ("handoff", "add_inputs", "switch_output"):
                if self.active.get(job.job_id) is not record:
                    return  # given up meanwhile (a failure and restart): send nothing more
                await asyncio.gather(*(self._control(job, task_id, msg) for task_id, msg in msgs[step].items()))
        except Exception as exc:
            if self.active.get(job.job_id) is not record:
                return  # this rescale was already given up; the job has moved on
            log.warning("rescale %s of job %s failed: %s", record.rescale_id, job.job_id, exc)
            self.abort(job, f"{type(exc).__name__}: {exc}")
            coordinator.task_failed(
                job, None, f"rescale {record.rescale_id} of {record.operator_name!r} failed: {exc}"
            )

    async def _carry_out_source(self, job, record, msgs):
        """A source: new tasks are deployed held; pause the old ones, agree a frontier, resume.

        The downstream tasks first learn the new channels (read only after every old
        one ended). Each old task stops between two units and answers its next unit;
        the highest is the frontier F. Old tasks then emit their units below F and
        finish; the new tasks emit the units from F on.
        """
        await asyncio.gather(*(self._control(job, task_id, msg) for task_id, msg in msgs["add_inputs"].items()))
        answers = await asyncio.gather(
            *(self._control(job, task_id, msg) for task_id, msg in msgs["source_pause"].items())
        )
        replies = [a.get("reply") for a in answers]
        if any(r is None or "next_unit" not in r for r in replies):
            raise RuntimeError(f"a paused source task answered without its next unit: {answers}")
        if self.active.get(job.job_id) is not record:
            return
        record.frontier = source_frontier(replies)
        resume = build_source_resume_messages(record.plan, record.rescale_id, record.frontier)
        await asyncio.gather(*(self._control(job, task_id, msg)
                               for step in ("source_finish", "source_start")
                               for task_id, msg in resume[step].items()))

    async def _control(self, job, task_id, message):
        """POST a control message to the task's worker; returns the worker's JSON answer."""
        return await self.coordinator.post_to_worker(
            job.task_node.get(task_id), f"/tasks/{task_id}/control", message, f"{message['type']} for {task_id}"
        )

    # -- reports from the workers --------------------------------------------------------

    def on_task_update(self, job, node_id, update):
        """Reports of tasks taking part in a rescale. Returns True if consumed here."""
        task_id = update.get("task_id")
        metrics = update.get("metrics") or {}
        if metrics.get("first_record_at"):
            # the new tasks' first record may be reported after the rescale completed
            for rec in reversed(self.records.get(job.job_id, [])):
                if task_id in rec.plan["new_task_ids"]:
                    rec.new_first_record.setdefault(task_id, metrics["first_record_at"])
                    break
        record = self.active.get(job.job_id)
        if record is None or task_id in record.plan["new_task_ids"]:
            return False  # live tasks: the coordinator's usual handling applies
        if task_id not in record.plan["old_task_ids"] or job.task_node.get(task_id) != node_id:
            return False
        state = update.get("state")
        if state == "FINISHED" and update.get("handed_off"):
            record.old_done[task_id] = metrics
            self.coordinator._advance(job.exec_graph.get_task(task_id), "FINISHED")
            self.coordinator._release_task_slot(job, task_id)
            job.task_node.pop(task_id, None)
            self._maybe_complete(job, record)
        elif state in ("FAILED", "CANCELED") or state == "FINISHED":
            # FINISHED without a handoff: its input ended before the barrier came, so it
            # emitted its results itself while new tasks wait for state that never comes
            error = update.get("error") or (
                f"task {task_id} ended before it could hand its state over" if state == "FINISHED"
                else f"task {task_id} was {state} during the rescale")
            self.abort(job, error)
            self.coordinator.task_failed(job, task_id, f"old task {task_id} of rescale {record.rescale_id}: {error}",
                                         traceback=update.get("traceback"))
        return True

    def _maybe_complete(self, job, record):
        if len(record.old_done) == len(record.plan["old_task_ids"]):
            self._finish(job, record)

    def _finish(self, job, record, error=None):
        record.completed_at = time.time()
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
        stale = [(tid, job.task_node[tid]) for tid in record.plan["old_task_ids"] if tid in job.task_node]
        for task_id, _ in stale:
            self.coordinator._release_task_slot(job, task_id)
            job.task_node.pop(task_id, None)
        if stale:
            self.coordinator._spawn(self.coordinator._cancel_on_workers(job, stale))

    def job_ended(self, job):
        """The job ended: no rescale goes on."""
        record = self.active.get(job.job_id)
        if record is not None:
            if job.state.value == "FINISHED":
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
            "assignments": {op: "custom" for op in self.assignments.get(job.job_id, {})},
        }

    # -- auto-rebalance -------------------------------------------------------------------

    def enable_auto_rebalance(self, job_id, interval_seconds=60.0, imbalance_threshold=0.3):
        job = self.coordinator.get_job(job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} is {job.state.value}; auto-rebalance needs a job that runs")
        try:
            interval_seconds = float(interval_seconds)
            imbalance_threshold = float(imbalance_threshold)
        except (TypeError, ValueError):
            raise BadRequest(
                f"interval_seconds and imbalance_threshold must be numbers, got {interval_seconds!r} "
                f"and {imbalance_threshold!r}"
            ) from None
        if not interval_seconds > 0 or not imbalance_threshold > 0:
            raise BadRequest(
                f"interval_seconds ({interval_seconds}) and imbalance_threshold ({imbalance_threshold}) "
                "must be positive"
            )
        self.disable_auto_rebalance(job_id)
        auto = self.auto[job_id] = AutoRebalance(interval_seconds, imbalance_threshold)
        auto.task = self.coordinator._spawn(self._auto_loop(job, auto))
        return auto.to_dict()

    def disable_auto_rebalance(self, job_id):
        self.coordinator.get_job(job_id)
        auto = self.auto.pop(job_id, None)
        if auto is not None and auto.task is not None:
            auto.task.cancel()
        return {"enabled": False}

    async def _auto_loop(self, job, auto):
        while not job.terminal:
            await asyncio.sleep(auto.interval_seconds)
            if job.terminal:
                return
            auto.checks += 1
            try:
                await self.rebalance_once(job, auto)
            except (Conflict, BadRequest) as exc:
                log.info("auto-rebalance of job %s skipped: %s", job.job_id, exc)
            except Exception:
                log.exception("auto-rebalance of job %s failed", job.job_id)

    def _keyed_operators(self, job):
        for op_id, node in job.job_graph.operators.items():
            if node.key_by and _op_type(node) not in ("source", "sink"):
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
                metrics = (job.task_status.get(task.task_id) or {}).get("metrics") or {}
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

    def _assignment(self, job, op_id):
        current = self.assignments.get(job.job_id, {}).get(op_id)
        if current is None:
            node = job.job_graph.operators[op_id]
            return partition.default_assignment(node.max_parallelism, job.exec_graph.parallelism_of(op_id))
        return np.asarray(current, dtype=np.int32)

    async def rebalance_once(self, job, auto):
        """Measure every keyed operator; move key groups where the imbalance is too high."""
        from sabot.cluster.coordinator import JobState

        if job.state != JobState.RUNNING or job.job_id in self.active:
            auto.samples.clear()  # a rescale changes who routes what: start measuring afresh
            return None
        for op_id, node in self._keyed_operators(job):
            kg = self.measure(job, auto, op_id)
            if kg is None or kg.sum() <= 0:
                continue
            parallelism = job.exec_graph.parallelism_of(op_id)
            current = self._assignment(job, op_id)
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

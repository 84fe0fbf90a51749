"""Where tasks run, and getting them there (Flink's ExecutionSlotAllocator + ExecutionDeployer).

:class:`TaskPlacer` is the only writer of placement. The slot pool is the one place
that stores which task holds which slot; ``TaskVertex.node_id`` / ``slot_id`` are a
view the placer sets for the JSON API. The first deployment of a job, the restart of
a region and a live rescale all ask the placer for slots, all or nothing, with the
one sharing-group rule (:func:`sharing_group`), and wait on the pool's queue (never
by polling).

:class:`ExecutionDeployer` builds the task deployment descriptors, groups them per
worker and sends them through the gateway; it also cancels tasks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

from sabot.errors import InvalidRequest, SlotRequestTooLarge, SlotsExhausted
from sabot.execution.deployment import build_deployment_descriptors
from sabot.execution.execution_graph import TaskState
from sabot.execution.slot_pool import SlotRequest

log = logging.getLogger(__name__)

#: how long a loop over many tasks may hold the event loop before it lets others run
YIELD_EVERY_S = 0.005

__all__ = ["Demand", "ExecutionDeployer", "TaskPlacer", "sharing_group"]


def sharing_group(job_id, operator) -> str:
    """The slot-sharing group of an operator's tasks: the job's, or the operator's own
    named group within the job. Tasks of one group may share a slot (one slot can hold a
    whole pipeline); a slot never holds two tasks of one operator."""
    group = operator.sharing_group
    return f"{job_id}/{group}" if group else job_id


@dataclass(frozen=True)
class Demand:
    """What a job needs: slots (per sharing group, its widest operator) and the largest
    cpu / memory any of its operators asks of a slot."""

    slots: int
    cpu_cores: float
    memory_mb: int


@dataclass
class PendingPlacement:
    """A request for the slots of a set of tasks (placed, or waiting in the pool's queue)."""

    job_id: str
    tasks: list
    requests: list
    placed: bool


class TaskPlacer:
    """Slots for tasks, from the slot pool; the only writer of placement.

    Args:
        slot_pool: the :class:`~sabot.execution.slot_pool.SlotPool`.
        registry: the :class:`~sabot.cluster.nodes.NodeRegistry` (node resources, addresses).
        clock: times the waits (a :class:`~sabot.cluster.clock.Clock`).
    """

    def __init__(self, slot_pool, registry, clock):
        self.slot_pool = slot_pool
        self.registry = registry
        self.clock = clock

    # -- what a job needs --------------------------------------------------------------

    @staticmethod
    def demand(job_graph) -> Demand:
        """What a job needs, read off its logical plan (no expansion into tasks needed)."""
        groups = collections.defaultdict(int)
        cpu, memory = 0.0, 0
        for op_id, op in job_graph.operators.items():
            group = sharing_group(job_graph.job_id, op)
            groups[group] = max(groups[group], job_graph.parallelism_of(op_id))
            cpu = max(cpu, float(op.cpu_cores or 0))
            memory = max(memory, int(op.memory_mb or 0))
        return Demand(sum(groups.values()), cpu, memory)

    def fitting_nodes(self, demand):
        return [n for n in self.registry.values()
                if n.cpu_cores_per_slot >= demand.cpu_cores and n.memory_mb_per_slot >= demand.memory_mb]

    def check_fits(self, job_graph, demand, refuse_oversized=True) -> None:
        """Refuse at once a job no registered worker could ever hold (before its tasks exist).

        Raises:
            SlotRequestTooLarge: an operator asks for more cpu / memory than any slot has.
            InvalidRequest: (``refuse_oversized``) more slots than all fitting workers hold.
        """
        if not len(self.registry):
            return  # the cluster is starting up: the job waits for workers
        job = job_graph
        fitting = self.fitting_nodes(demand)
        if not fitting:
            largest = max(self.registry.values(), key=lambda n: (n.cpu_cores_per_slot, n.memory_mb_per_slot))
            raise SlotRequestTooLarge(
                f"job {job.job_name!r} has an operator asking for {demand.cpu_cores:g} cpu cores / "
                f"{demand.memory_mb} MB per slot; the largest slot has {largest.cpu_cores_per_slot:g} cpu "
                f"cores / {largest.memory_mb_per_slot} MB")
        total = sum(n.num_slots for n in fitting)
        if refuse_oversized and demand.slots > total:
            raise InvalidRequest(
                f"job {job.job_name!r} needs {demand.slots} slots (its widest operator's parallelism, per sharing "
                f"group) but the whole cluster has {total} slots on {len(self.registry)} worker(s); lower the "
                "parallelism or add workers")

    def shortage(self, job) -> str:
        """Why a job could not get its slots, for error messages."""
        demand = job.demand
        free = sum(self.slot_pool.get_free_slots(n.node_id) for n in self.fitting_nodes(demand))
        return (f"it needs {demand.slots} free slots ({demand.cpu_cores:g} cpu / {demand.memory_mb} MB each) "
                f"but {free} were free (cluster: {self.slot_pool.total_slots} slots on {len(self.registry)} "
                "workers)")

    # -- placing -----------------------------------------------------------------------

    def _requests(self, job, tasks, operator_key=None):
        """One request per task; subtask ``i`` prefers the ``i``-th freest fitting worker, so
        a job spreads over the cluster and the subtasks of a pipeline meet in one slot."""
        demand = job.demand
        free = {n.node_id: self.slot_pool.get_free_slots(n.node_id) for n in self.fitting_nodes(demand)}
        plan = []
        for _ in range(max(1, min(len(tasks), demand.slots))):
            if not free:
                break
            node_id = max(free, key=lambda n: free[n])
            plan.append(node_id)
            free[node_id] -= 1
        operators = job.job_graph.operators
        requests = []
        for task in tasks:
            op = operators[task.operator_id]
            requests.append(SlotRequest(
                task_id=task.task_id,
                operator_id=operator_key(task) if operator_key else task.operator_id,
                cpu_cores=float(op.cpu_cores or 0), memory_mb=int(op.memory_mb or 0),
                sharing_group=sharing_group(job.job_id, op),
                preferred_node=plan[task.subtask_index % len(plan)] if plan else None,
            ))
        return requests

    def _placed(self, tasks, slots):
        for task, slot in zip(tasks, slots):
            task.node_id, task.slot_id = slot.node_id, slot.slot_id
            task.transition(TaskState.SCHEDULED)

    def keep(self, task) -> None:
        """A new attempt of ``task`` runs in the slot its task already holds."""
        slot = self.slot_pool.get_task_slot(task.task_id)
        task.node_id, task.slot_id = slot.node_id, slot.slot_id
        task.transition(TaskState.SCHEDULED)

    def request(self, job, tasks, operator_key=None) -> "PendingPlacement":
        """Ask for slots for every task (all or nothing): placed now, or queued in FIFO order
        with every other request; :meth:`wait` for a queued one (or :meth:`withdraw` it).

        ``operator_key(task)`` overrides the operator a task counts as in its slot (the new
        tasks of a live rescale may share a slot with the old task of their operator).
        """
        # subtask by subtask: the pool joins a task to the group's newest slot, so asking in this
        # order puts subtask i of every operator in one slot (a pipeline shares its slot, and
        # FORWARD channels stay in one worker)
        tasks = sorted(tasks, key=lambda t: t.subtask_index)
        requests = self._requests(job, tasks, operator_key)
        slots = self.slot_pool.request_slots(requests) if tasks else []
        if slots is not None:
            self._placed(tasks, slots)
        return PendingPlacement(job.job_id, tasks, requests, placed=slots is not None)

    def withdraw(self, pending) -> None:
        if not pending.placed and pending.requests:
            self.slot_pool.cancel_request(pending.requests[0].task_id)

    def place_now(self, job, tasks, operator_key=None) -> bool:
        """Slots for every task now, or none (nothing is held or queued); True if placed."""
        pending = self.request(job, tasks, operator_key)
        if not pending.placed:
            self.withdraw(pending)
        return pending.placed

    async def wait(self, job, pending, timeout) -> None:
        """Wait (on the pool's queue, timed by the clock) until a queued request is placed.

        Raises:
            SlotsExhausted: not placed within ``timeout`` seconds; the request is withdrawn
                and nothing is held (the message says what was needed and free).
        """
        if pending.placed:
            return
        waiter = asyncio.ensure_future(self.slot_pool.wait_for_slots(pending.requests))
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            done, _ = await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()  # withdraws the request from the pool's queue
                await asyncio.gather(waiter, return_exceptions=True)
        if waiter not in done or waiter.cancelled():
            raise SlotsExhausted(f"no free slots for {len(pending.tasks)} task(s) of job {job.job_id} within "
                                 f"{timeout:g} s: {self.shortage(job)}")
        self._placed(pending.tasks, waiter.result())
        pending.placed = True

    async def place(self, job, tasks, timeout) -> None:
        """Slots for every task, waiting on the pool's queue for up to ``timeout`` seconds."""
        await self.wait(job, self.request(job, tasks), timeout)

    def release(self, task_ids) -> None:
        """Free the slots of ``task_ids`` (tasks that hold none are skipped)."""
        for task_id in task_ids:
            if self.slot_pool.get_task_slot(task_id) is not None:
                self.slot_pool.release_task(task_id)

    def release_job(self, job) -> None:
        self.release(list(job.exec_graph.tasks) + list(job.exec_graph.retired_tasks))

    # -- where things are ----------------------------------------------------------------

    def node_of(self, task_id):
        """The node whose slot holds ``task_id``, or None."""
        slot = self.slot_pool.get_task_slot(task_id)
        return slot.node_id if slot is not None else None

    def nodes_of(self, job):
        """Nodes holding any of the job's tasks."""
        return {n for n in (self.node_of(t) for t in list(job.exec_graph.tasks) + list(job.exec_graph.retired_tasks))
                if n is not None}

    def locations(self, job):
        """``{task_id: (data host, data port)}`` of every placed task of the job."""
        out = {}
        for task_id in list(job.exec_graph.tasks) + list(job.exec_graph.retired_tasks):
            address = self.registry.data_address(self.node_of(task_id))
            if address is not None:
                out[task_id] = address
        return out

    def capacity_for(self, job, operator) -> int:
        """Slots a new task of ``operator`` could use: the job's own slots of its sharing group,
        or free ones that fit."""
        group = sharing_group(job.job_id, operator)
        own = sum(1 for s in self.slot_pool.get_slots() if s.sharing_group == group)
        demand = Demand(1, float(operator.cpu_cores or 0), int(operator.memory_mb or 0))
        free = sum(self.slot_pool.get_free_slots(n.node_id) for n in self.fitting_nodes(demand))
        return own + free


class ExecutionDeployer:
    """Deploys and cancels task attempts through the gateway (Flink's ExecutionOperations).

    Args:
        placer: where each task runs.
        gateway: a :class:`~sabot.cluster.gateway.WorkerGateway`.
        offload: ``async fn(callable, *args, **kwargs)`` running blocking work off the loop.
    """

    def __init__(self, placer, gateway, offload=asyncio.to_thread):
        self.placer = placer
        self.gateway = gateway
        self.offload = offload

    async def descriptors(self, job, restore=None):
        """The deployment descriptors of every live task of the job (built on a thread: for
        thousands of tasks that takes longer than the loop may be held)."""
        checkpoint = job.checkpointing.spec if job.checkpointing is not None else None
        locations = self.placer.locations(job)
        assignments = dict(job.assignments)
        return await self.offload(build_deployment_descriptors, job.exec_graph, job.job_id, locations,
                                       restore=restore, checkpoint=checkpoint, assignments=assignments)

    async def deploy(self, job, tdds) -> list[BaseException]:
        """Send ``tdds`` to the workers holding their slots (one request per worker, all at
        once); the tasks move to DEPLOYING. Returns the errors (empty when every worker took
        its tasks)."""
        per_node = collections.defaultdict(list)
        started = time.perf_counter()
        for tdd in tdds:
            per_node[self.placer.node_of(tdd.task_id)].append(tdd)
            job.exec_graph.tasks[tdd.task_id].transition(TaskState.DEPLOYING)
            if time.perf_counter() - started > YIELD_EVERY_S:
                await asyncio.sleep(0)  # thousands of tasks: let heartbeats and reports through
                started = time.perf_counter()
        nodes = list(per_node)
        results = await asyncio.gather(*(self.gateway.deploy(n, per_node[n]) for n in nodes), return_exceptions=True)
        return [r for r in results if isinstance(r, BaseException)]

    def cancel(self, job, task_ids):
        """Cancel the live attempts of ``task_ids`` on their workers; await the result to wait
        until they stopped (they end CANCELED).

        Which worker holds each task is read now, so the cancel reaches the workers even if
        the slots are released before it is awaited (a job that ends at once).
        """
        graph = job.exec_graph
        live = [t for t in (graph.get_task(tid) for tid in task_ids) if not t.state.is_terminal]
        for task in live:
            if task.state in (TaskState.DEPLOYING, TaskState.RUNNING):
                task.transition(TaskState.CANCELING)
        on_nodes = [(t.task_id, self.placer.node_of(t.task_id)) for t in live]
        return self._cancel(live, on_nodes)

    async def _cancel(self, live, on_nodes):
        await asyncio.gather(*(self.gateway.cancel(n, t) for t, n in on_nodes if n is not None))
        for task in live:
            task.cancel()

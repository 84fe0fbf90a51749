"""Flink-style slot management: ``SlotPool``, ``Slot``, ``SlotRequest``.

Worker nodes register a number of equal slots (cpu cores and memory per slot).
Tasks ask for a slot with a :class:`SlotRequest`; the pool places them with the
compiled slot table (``sabot._core.slots``) and keeps the string-keyed view.

Rules the pool enforces:

* **Fit.** A request's ``cpu_cores`` / ``memory_mb`` are the *minimum slot size*
  it needs: it is placed only in a slot at least that big. Accounting counts the
  slot's resources, never the request's: a slot is either free or allocated as a
  whole, and the tasks sharing one slot share its cpu and memory (Flink's model
  without fine-grained resource management). A request that no registered slot
  could ever hold is refused at once with :class:`~sabot.errors.SlotRequestTooLarge`
  (with no node registered yet, requests wait instead).
* **Placement.** The preferred node is used when it has a free slot that fits;
  otherwise the smallest fitting slot size, on the node with the most free slots
  (ties round robin), so a job spreads across a small cluster.
* **Sharing.** Requests with the same ``sharing_group`` may share a slot, but a
  slot never holds two tasks of the same operator: a job of 4 operators, each of
  parallelism 4, in one group needs 4 slots. Requests without a group get a
  slot of their own.
* **Queue.** A request that cannot be placed waits in a FIFO queue (``request_slot``
  returns None). The queue is served from its head whenever a slot frees or a
  node registers; a request never overtakes an earlier one, except that a shared
  request that can join an already allocated slot of its group (using no free
  slot) is placed at once. The asker can ``await pool.wait_for_slot(request,
  timeout=...)`` or pass a ``callback``, called exactly once with the Slot when
  the request is placed (at once or later).
* **All or nothing.** ``request_slots(requests)`` / ``wait_for_slots`` place a set of
  requests (the tasks of a job, of a restarted region, of a rescaled operator)
  together or not at all: one queue entry, placed when every request fits, so two
  half-placed jobs never hold slots the other waits for (gang scheduling).
* **Node loss.** ``unregister_node`` frees everything on the node and returns the
  requests that lost their slot, so the coordinator can fail / restart them.

The pool is **not thread-safe**: one thread owns it (the coordinator's event-loop
thread); other threads must post to that loop (``loop.call_soon_threadsafe``).

Example:
    >>> pool = SlotPool()
    >>> _ = pool.register_node("node-1", num_slots=4)
    >>> slot = pool.request_slot(SlotRequest(task_id="t0", operator_id="map",
    ...                                      cpu_cores=0.5, memory_mb=256))
    >>> slot.node_id, pool.utilization
    ('node-1', 25.0)
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional

from sabot._core.slots import SlotTable
from sabot.errors import SabotError, SlotRequestTooLarge, SlotsExhausted, UnknownNode

logger = logging.getLogger(__name__)

__all__ = ["Slot", "SlotPool", "SlotRequest", "SlotState", "UnknownSlot"]


class UnknownSlot(SabotError, KeyError):
    """A slot id (or a task id holding a slot) that the slot pool does not know."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SlotState(str, Enum):
    """Lifecycle of a slot: FREE <-> ALLOCATED, and LOST once its node is gone."""

    FREE = "free"
    ALLOCATED = "allocated"
    LOST = "lost"


@dataclass(eq=False)
class Slot:
    """One slot of a worker node.

    Attributes:
        slot_id: ``"<node_id>-slot-<i>"``, unique while the node is registered.
        node_id: the node the slot lives on.
        cpu_cores: cpu cores of the slot (shared by all tasks in it).
        memory_mb: memory of the slot in MB (shared by all tasks in it).
        task_ids: ids of the tasks placed in the slot (several when shared).
        sharing_group: the sharing group of its tasks, or None.
        state: FREE, ALLOCATED or LOST.
    """

    slot_id: str
    node_id: str
    cpu_cores: float
    memory_mb: int
    task_ids: List[str] = field(default_factory=list)
    sharing_group: Optional[str] = None
    state: SlotState = SlotState.FREE
    _index: int = field(default=-1, repr=False)

    @property
    def is_free(self) -> bool:
        return self.state is SlotState.FREE

    @property
    def is_shared(self) -> bool:
        return self.sharing_group is not None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "slot_id": self.slot_id,
            "node_id": self.node_id,
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "task_ids": list(self.task_ids),
            "sharing_group": self.sharing_group,
            "state": self.state.value,
        }


def _check_resources(owner: str, cpu_cores: Any, memory_mb: Any) -> None:
    if (
        isinstance(cpu_cores, bool)
        or not isinstance(cpu_cores, numbers.Real)
        or not math.isfinite(cpu_cores)
        or cpu_cores < 0
    ):
        raise ValueError(f"{owner}: cpu_cores must be a finite number >= 0, got {cpu_cores!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, numbers.Integral) or memory_mb < 0:
        raise ValueError(f"{owner}: memory_mb must be an integer >= 0 (MB), got {memory_mb!r}")


@dataclass(eq=False)
class SlotRequest:
    """What a task needs: the minimum slot size, a sharing group, a preferred node.

    Args:
        task_id: the task asking (one slot per task at a time).
        operator_id: the task's operator; within a sharing group a slot never
            holds two tasks of the same operator.
        cpu_cores: minimum cpu cores of the slot (0 = any slot).
        memory_mb: minimum memory of the slot in MB (0 = any slot).
        sharing_group: tasks of the same group may share a slot; None = a slot
            of its own.
        preferred_node: node to use when it has a fitting free slot (a hint; an
            unknown node is ignored).
        callback: called with the :class:`Slot` once the request is placed.
    """

    task_id: str
    operator_id: str
    cpu_cores: float = 0.0
    memory_mb: int = 0
    sharing_group: Optional[str] = None
    preferred_node: Optional[str] = None
    callback: Optional[Callable[[Slot], Any]] = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"SlotRequest: task_id must be a non-empty string, got {self.task_id!r}")
        if not isinstance(self.operator_id, str) or not self.operator_id:
            raise ValueError(
                f"SlotRequest({self.task_id!r}): operator_id must be a non-empty string, "
                f"got {self.operator_id!r}"
            )
        _check_resources(f"SlotRequest({self.task_id!r})", self.cpu_cores, self.memory_mb)
        if self.sharing_group is not None and (
            not isinstance(self.sharing_group, str) or not self.sharing_group
        ):
            raise ValueError(
                f"SlotRequest({self.task_id!r}): sharing_group must be None or a non-empty "
                f"string, got {self.sharing_group!r}"
            )
        if self.preferred_node is not None and not isinstance(self.preferred_node, str):
            raise ValueError(
                f"SlotRequest({self.task_id!r}): preferred_node must be None or a node id "
                f"string, got {self.preferred_node!r}"
            )
        if self.callback is not None and not callable(self.callback):
            raise ValueError(
                f"SlotRequest({self.task_id!r}): callback must be callable, got {self.callback!r}"
            )

    def describe(self) -> str:
        """One-line description used in error messages."""
        text = (
            f"task {self.task_id!r} (operator {self.operator_id!r}, {self.cpu_cores:g} cpu cores, "
            f"{self.memory_mb} MB"
        )
        if self.sharing_group is not None:
            text += f", sharing group {self.sharing_group!r}"
        if self.preferred_node is not None:
            text += f", preferred node {self.preferred_node!r}"
        return text + ")"

    def to_dict(self) -> Dict[str, Any]:
        return {
            "task_id": self.task_id,
            "operator_id": self.operator_id,
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "sharing_group": self.sharing_group,
            "preferred_node": self.preferred_node,
        }


class _Pending:
    """A queued request, or a set of requests placed all or nothing, with whoever waits for it."""

    __slots__ = ("requests", "bulk", "callbacks", "waiters", "cancelled")

    def __init__(self, requests: List[SlotRequest], callbacks: List[Callable[[Any], Any]], bulk: bool = False):
        self.requests = requests
        self.bulk = bulk
        self.callbacks = callbacks
        self.waiters: List[asyncio.Future] = []
        self.cancelled = False

    @property
    def request(self) -> SlotRequest:
        return self.requests[0]

    def describe(self) -> str:
        if not self.bulk:
            return self.request.describe()
        return f"{len(self.requests)} tasks placed together (first: {self.request.describe()})"


class _Node:
    __slots__ = ("node_id", "index", "slots", "cpu_cores_per_slot", "memory_mb_per_slot", "metadata")

    def __init__(self, node_id, index, slots, cpu, memory, metadata):
        self.node_id = node_id
        self.index = index
        self.slots = slots
        self.cpu_cores_per_slot = cpu
        self.memory_mb_per_slot = memory
        self.metadata = metadata


class SlotPool:
    """Slots of all registered nodes, allocation, sharing and the pending queue.

    Not thread-safe: call it from one thread (the coordinator's event loop).
    See the module docstring for the placement, sharing and queueing rules.
    """

    def __init__(self) -> None:
        self._table = SlotTable()
        self._nodes: Dict[str, _Node] = {}
        self._slots: Dict[int, Slot] = {}
        self._slots_by_id: Dict[str, Slot] = {}
        self._task_slot: Dict[str, Slot] = {}
        self._task_request: Dict[str, SlotRequest] = {}
        self._task_gop: Dict[str, int] = {}
        self._groups: Dict[str, int] = {}
        self._group_ops: Dict[str, Dict[str, int]] = {}
        self._group_pending: Dict[str, int] = {}
        self._queue: Deque[_Pending] = deque()
        self._pending: Dict[str, _Pending] = {}
        self._cancelled_in_queue = 0
        self._serving = False

    # ------------------------------------------------------------------ nodes

    def register_node(
        self,
        node_id: str,
        num_slots: int,
        cpu_cores_per_slot: float = 1.0,
        memory_mb_per_slot: int = 1024,
        metadata: Optional[Mapping[str, Any]] = None,
    ) -> List[Slot]:
        """Add a node with ``num_slots`` equal slots; serve waiting requests.

        Args:
            node_id: unique node id.
            num_slots: number of slots, >= 1.
            cpu_cores_per_slot: cpu cores of each slot, >= 0.
            memory_mb_per_slot: memory of each slot in MB, >= 0.
            metadata: free-form facts about the node (address, ...), shown in
                :meth:`get_status`.

        Returns:
            The node's new slots.

        Raises:
            ValueError: duplicate node id, num_slots < 1, negative resources.
        """
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"register_node: node_id must be a non-empty string, got {node_id!r}")
        if node_id in self._nodes:
            raise ValueError(
                f"register_node: node {node_id!r} is already registered "
                f"(with {len(self._nodes[node_id].slots)} slots); unregister it first"
            )
        if isinstance(num_slots, bool) or not isinstance(num_slots, numbers.Integral) or num_slots < 1:
            raise ValueError(
                f"register_node({node_id!r}): num_slots must be an integer >= 1, got {num_slots!r}"
            )
        _check_resources(f"register_node({node_id!r})", cpu_cores_per_slot, memory_mb_per_slot)
        cpu = float(cpu_cores_per_slot)
        memory = int(memory_mb_per_slot)
        index = self._table.add_node(int(num_slots), cpu, memory)
        slots = []
        for i, s in enumerate(self._table.node_slots_of(index)):
            slot = Slot(f"{node_id}-slot-{i}", node_id, cpu, memory, _index=s)
            self._slots[s] = slot
            self._slots_by_id[slot.slot_id] = slot
            slots.append(slot)
        self._nodes[node_id] = _Node(node_id, index, slots, cpu, memory, dict(metadata or {}))
        logger.info(
            "registered node %s: %d slots of %g cpu cores / %d MB",
            node_id, num_slots, cpu, memory,
        )
        self._serve_queue()
        return list(slots)

    def unregister_node(self, node_id: str) -> List[SlotRequest]:
        """Remove a node; return the requests of the tasks that lost their slot.

        The lost tasks no longer hold a slot (do not release them again); the
        coordinator fails or restarts them. Queued requests stay queued.

        Raises:
            UnknownNode: ``node_id`` is not registered.
        """
        node = self._nodes.get(node_id)
        if node is None:
            raise UnknownNode(
                f"unregister_node: node {node_id!r} is not registered "
                f"(registered: {self._node_list_text()})"
            )
        lost: List[SlotRequest] = []
        touched_groups = set()
        for slot in node.slots:
            for task_id in list(slot.task_ids):
                lost.append(self._task_request[task_id])
                if slot.sharing_group is not None:
                    touched_groups.add(slot.sharing_group)
                self._drop_task(task_id, forget_groups=False)
        self._table.remove_node(node.index)
        for slot in node.slots:
            slot.state = SlotState.LOST
            del self._slots[slot._index]
            del self._slots_by_id[slot.slot_id]
        del self._nodes[node_id]
        for group in touched_groups:
            self._maybe_forget_group(group)
        if lost:
            logger.warning(
                "node %s unregistered: %d task(s) lost their slot: %s",
                node_id, len(lost), ", ".join(r.task_id for r in lost),
            )
        else:
            logger.info("node %s unregistered", node_id)
        return lost

    # ------------------------------------------------------------------ requests

    def request_slot(
        self, request: SlotRequest, callback: Optional[Callable[[Slot], Any]] = None
    ) -> Optional[Slot]:
        """Place ``request`` now, or queue it and return None.

        ``callback`` (and ``request.callback``) is called once with the Slot when
        the request is placed, now or later; an exception it raises is logged.

        Raises:
            SlotRequestTooLarge: no registered slot is big enough.
            ValueError: the task already holds a slot or has a queued request.
        """
        if not isinstance(request, SlotRequest):
            raise TypeError(f"request_slot expects a SlotRequest, got {type(request).__name__}")
        if callback is not None and not callable(callback):
            raise ValueError(f"request_slot: callback must be callable, got {callback!r}")
        task_id = request.task_id
        if task_id in self._task_slot:
            raise ValueError(
                f"request_slot: task {task_id!r} already holds slot "
                f"{self._task_slot[task_id].slot_id!r}; release it first"
            )
        if task_id in self._pending:
            raise ValueError(f"request_slot: task {task_id!r} already has a queued request")
        self._check_fits(request)
        callbacks = [c for c in (request.callback, callback) if c is not None]
        pending = _Pending([request], callbacks)
        slots = self._place_or_queue(pending)
        return None if slots is None else slots[0]

    def request_slots(
        self, requests: List[SlotRequest], callback: Optional[Callable[[List[Slot]], Any]] = None
    ) -> Optional[List[Slot]]:
        """Place every request of ``requests`` now, or queue them as one entry and return None.

        All or nothing: either every request gets a slot (returned in request order) or
        none does and the set waits, in FIFO order with every other request, until all
        of them fit together. ``callback`` is called once with the list of slots.

        Raises:
            SlotRequestTooLarge: a request is larger than every registered slot.
            ValueError: empty, a task twice, or a task that already holds or awaits a slot.
        """
        requests = list(requests)
        if not requests or not all(isinstance(r, SlotRequest) for r in requests):
            raise ValueError("request_slots expects a non-empty list of SlotRequests")
        seen = set()
        for request in requests:
            task_id = request.task_id
            if task_id in seen:
                raise ValueError(f"request_slots: task {task_id!r} appears twice")
            seen.add(task_id)
            if task_id in self._task_slot:
                raise ValueError(f"request_slots: task {task_id!r} already holds slot "
                                 f"{self._task_slot[task_id].slot_id!r}; release it first")
            if task_id in self._pending:
                raise ValueError(f"request_slots: task {task_id!r} already has a queued request")
            self._check_fits(request)
        return self._place_or_queue(_Pending(requests, [callback] if callback else [], bulk=True))

    def _place_or_queue(self, pending: _Pending) -> Optional[List[Slot]]:
        if not self._pending:
            slots = self._try_place_all(pending.requests)
        elif all(r.sharing_group is not None for r in pending.requests):
            # joining live shared slots takes nothing from those queued ahead
            slots = self._try_place_all(pending.requests, join_only=True)
        else:
            slots = None
        if slots is not None:
            self._notify(pending, slots)
            return slots
        self._queue.append(pending)
        for request in pending.requests:
            self._pending[request.task_id] = pending
            if request.sharing_group is not None:
                self._group_pending[request.sharing_group] = self._group_pending.get(request.sharing_group, 0) + 1
        logger.debug("queued %s (%d pending)", pending.describe(), len(self._pending))
        return None

    async def wait_for_slot(self, request: SlotRequest, timeout: Optional[float] = None) -> Slot:
        """Return the slot of ``request``, submitting it first if needed, waiting if queued.

        Must run on the event loop of the thread that owns the pool.

        Args:
            request: the request (submitted with :meth:`request_slot` or not).
            timeout: seconds to wait; None waits forever.

        Raises:
            SlotsExhausted: no slot within ``timeout`` (the request is then
                withdrawn from the queue unless someone else still waits for it),
                or the request was cancelled.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout < 0
        ):
            raise ValueError(f"wait_for_slot: timeout must be None or a number >= 0, got {timeout!r}")
        task_id = request.task_id
        if self._task_request.get(task_id) is request:
            return self._task_slot[task_id]
        pending = self._pending.get(task_id)
        if pending is None:
            slot = self.request_slot(request)
            if slot is not None:
                return slot
            pending = self._pending[task_id]
        elif pending.request is not request or pending.bulk:
            raise ValueError(
                f"wait_for_slot: another request for task {task_id!r} is queued; "
                f"wait for that one"
            )
        slots = await self._wait(pending, timeout)
        return slots[0]

    async def wait_for_slots(self, requests: List[SlotRequest], timeout: Optional[float] = None) -> List[Slot]:
        """Place ``requests`` all or nothing (:meth:`request_slots`), waiting while they are queued.

        ``requests`` may be a set already submitted with :meth:`request_slots` (the same
        list of request objects): then this waits for that queue entry.

        Raises:
            SlotsExhausted: not all placed within ``timeout`` (the set is withdrawn and
                nothing is held), or the request was cancelled.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout < 0
        ):
            raise ValueError(f"wait_for_slots: timeout must be None or a number >= 0, got {timeout!r}")
        requests = list(requests)
        queued = self._pending.get(requests[0].task_id) if requests else None
        if queued is not None and queued.bulk and queued.requests == requests:
            return await self._wait(queued, timeout)  # submitted with request_slots before
        if requests and all(self._task_request.get(r.task_id) is r for r in requests):
            return [self._task_slot[r.task_id] for r in requests]  # already placed
        slots = self.request_slots(requests)
        if slots is not None:
            return slots
        return await self._wait(self._pending[requests[0].task_id], timeout)

    async def _wait(self, pending: _Pending, timeout: Optional[float]) -> List[Slot]:
        future = asyncio.get_running_loop().create_future()
        pending.waiters.append(future)
        first = pending.request.task_id
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise SlotsExhausted(
                f"no slot for {pending.describe()} within {timeout:g} s; pool: "
                f"{self._status_text()}"
            ) from None
        finally:
            if future in pending.waiters:
                pending.waiters.remove(future)
            if (
                not pending.waiters
                and not pending.cancelled
                and self._pending.get(first) is pending
                and (future.cancelled() or not future.done())
            ):
                self._withdraw(pending)

    def cancel_request(self, task_id: str) -> bool:
        """Withdraw the queued request of ``task_id``; False if none is queued.

        Whoever awaits it gets :class:`~sabot.errors.SlotsExhausted`.
        """
        pending = self._pending.get(task_id)
        if pending is None:
            return False
        self._withdraw(pending)
        for future in pending.waiters:
            if not future.done():
                future.set_exception(
                    SlotsExhausted(f"the slot request of {pending.describe()} was cancelled")
                )
        return True

    def release_slot(self, slot_id: str, task_id: Optional[str] = None) -> List[str]:
        """Release one task from a slot, or the whole slot; serve waiting requests.

        Args:
            slot_id: the slot.
            task_id: the task leaving it; None releases every task in the slot.

        Returns:
            The ids of the released tasks.

        Raises:
            UnknownSlot: no such slot.
            ValueError: the slot is free, or ``task_id`` is not in it.
        """
        slot = self._slots_by_id.get(slot_id)
        if slot is None:
            raise UnknownSlot(
                f"release_slot: slot {slot_id!r} does not exist "
                f"({len(self._slots_by_id)} slots on nodes {self._node_list_text()})"
            )
        if slot.state is not SlotState.ALLOCATED:
            raise ValueError(f"release_slot: slot {slot_id!r} is {slot.state.value}, not allocated")
        if task_id is None:
            tasks = list(slot.task_ids)
        elif task_id in slot.task_ids:
            tasks = [task_id]
        else:
            raise ValueError(
                f"release_slot: task {task_id!r} is not in slot {slot_id!r} "
                f"(it holds {slot.task_ids})"
            )
        for t in tasks:
            self._drop_task(t)
        self._serve_queue()
        return tasks

    def release_task(self, task_id: str) -> Slot:
        """Release the slot (share) held by ``task_id``; return the slot it left.

        Raises:
            UnknownSlot: the task holds no slot.
        """
        slot = self._task_slot.get(task_id)
        if slot is None:
            raise UnknownSlot(f"release_task: task {task_id!r} holds no slot")
        self._drop_task(task_id)
        self._serve_queue()
        return slot

    # ------------------------------------------------------------------ queries

    @property
    def total_slots(self) -> int:
        return self._table.total_slots

    @property
    def free_slots(self) -> int:
        return self._table.free_slots

    @property
    def allocated_slots(self) -> int:
        return self._table.total_slots - self._table.free_slots

    @property
    def pending_requests(self) -> int:
        """Number of queued requests."""
        return len(self._pending)

    @property
    def utilization(self) -> float:
        """Allocated slots as a percentage of all slots (0.0 without slots)."""
        return self.get_utilization()

    def get_utilization(self) -> float:
        """Allocated slots as a percentage of all slots (0.0 without slots)."""
        total = self._table.total_slots
        if total == 0:
            return 0.0
        return 100.0 * (total - self._table.free_slots) / total

    def get_free_slots(self, node_id: Optional[str] = None) -> int:
        """Free slots of one node, or of the whole pool."""
        if node_id is None:
            return self._table.free_slots
        return self._table.node_usage(self._node(node_id).index).free_slots

    def get_slot(self, slot_id: str) -> Slot:
        slot = self._slots_by_id.get(slot_id)
        if slot is None:
            raise UnknownSlot(f"get_slot: slot {slot_id!r} does not exist")
        return slot

    def get_task_slot(self, task_id: str) -> Optional[Slot]:
        """The slot ``task_id`` is placed in, or None."""
        return self._task_slot.get(task_id)

    def get_slots(self, node_id: Optional[str] = None) -> List[Slot]:
        """Slots of one node, or of every node (in registration order)."""
        if node_id is not None:
            return list(self._node(node_id).slots)
        return [slot for node in self._nodes.values() for slot in node.slots]

    def get_pending_requests(self) -> List[SlotRequest]:
        """Queued requests, in the order they will be served."""
        return [r for p in self._queue if not p.cancelled for r in p.requests]

    @property
    def nodes(self) -> List[str]:
        return list(self._nodes)

    def get_status(self) -> Dict[str, Any]:
        """Counts, utilization (percent), cpu / memory accounting and per-node info."""
        table = self._table
        nodes = {}
        for node_id, node in self._nodes.items():
            usage = table.node_usage(node.index)
            nodes[node_id] = {
                "total_slots": usage.num_slots,
                "free_slots": usage.free_slots,
                "allocated_slots": usage.allocated_slots,
                "cpu_cores_per_slot": usage.cpu_cores_per_slot,
                "memory_mb_per_slot": usage.memory_mb_per_slot,
                "total_cpu_cores": usage.total_cpu_cores,
                "allocated_cpu_cores": usage.allocated_cpu_cores,
                "total_memory_mb": usage.total_memory_mb,
                "allocated_memory_mb": usage.allocated_memory_mb,
                "utilization": 100.0 * usage.allocated_slots / usage.num_slots,
                "tasks": sum(len(s.task_ids) for s in node.slots),
                "metadata": dict(node.metadata),
            }
        return {
            "total_slots": table.total_slots,
            "free_slots": table.free_slots,
            "allocated_slots": table.allocated_slots,
            "pending_requests": len(self._pending),
            "utilization": self.get_utilization(),
            "num_nodes": table.num_nodes,
            "num_tasks": len(self._task_slot),
            "total_cpu_cores": table.total_cpu_cores,
            "allocated_cpu_cores": table.allocated_cpu_cores,
            "total_memory_mb": table.total_memory_mb,
            "allocated_memory_mb": table.allocated_memory_mb,
            "nodes": nodes,
        }

    def __repr__(self) -> str:
        return f"SlotPool({self._status_text()})"

    # ------------------------------------------------------------------ internals

    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise UnknownNode(
                f"node {node_id!r} is not registered (registered: {self._node_list_text()})"
            )
        return node

    def _node_list_text(self) -> str:
        names = list(self._nodes)
        if not names:
            return "none"
        shown = ", ".join(repr(n) for n in names[:10])
        return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")

    def _status_text(self) -> str:
        return (
            f"{self._table.free_slots} of {self._table.total_slots} slots free on "
            f"{self._table.num_nodes} node(s), {len(self._pending)} request(s) pending"
        )

    def _check_fits(self, request: SlotRequest) -> None:
        table = self._table
        if table.num_nodes == 0 or table.fits_any(request.cpu_cores, request.memory_mb):
            return
        sizes = sorted(table.slot_sizes(), reverse=True)
        if len(sizes) == 1:
            cpu, memory = sizes[0]
            have = f"the largest slot available has {cpu:g} cpu cores and {memory} MB"
        else:
            have = "the slots available have " + ", ".join(
                f"{cpu:g} cpu cores / {memory} MB" for cpu, memory in sizes
            )
        raise SlotRequestTooLarge(
            f"slot request for {request.describe()} is larger than every registered slot: "
            f"it asks for {request.cpu_cores:g} cpu cores and {request.memory_mb} MB, {have}"
        )

    def _group_op(self, group: str, operator_id: str) -> int:
        ops = self._group_ops.get(group)
        if ops is None:
            self._groups[group] = self._table.add_group()
            ops = self._group_ops[group] = {}
        gop = ops.get(operator_id)
        if gop is None:
            gop = ops[operator_id] = self._table.add_group_op(self._groups[group])
        return gop

    def _try_place(self, request: SlotRequest, join_only: bool = False) -> Optional[Slot]:
        preferred = -1
        if request.preferred_node is not None:
            node = self._nodes.get(request.preferred_node)
            if node is not None:
                preferred = node.index
        group = request.sharing_group
        if group is None:
            index = self._table.allocate(request.cpu_cores, request.memory_mb, preferred)
        else:
            gop = self._group_op(group, request.operator_id)
            index = self._table.allocate_shared(
                gop, request.cpu_cores, request.memory_mb, preferred, join_only
            )
            if index >= 0:
                self._task_gop[request.task_id] = gop
        if index < 0:
            if group is not None:
                self._maybe_forget_group(group)
            return None
        slot = self._slots[index]
        slot.state = SlotState.ALLOCATED
        slot.sharing_group = group
        slot.task_ids.append(request.task_id)
        self._task_slot[request.task_id] = slot
        self._task_request[request.task_id] = request
        return slot

    def _drop_task(self, task_id: str, forget_groups: bool = True) -> None:
        slot = self._task_slot.pop(task_id)
        request = self._task_request.pop(task_id)
        slot.task_ids.remove(task_id)
        group = slot.sharing_group
        if group is None:
            self._table.release(slot._index)
        else:
            self._table.release_shared(slot._index, self._task_gop.pop(task_id))
        if not slot.task_ids:
            slot.state = SlotState.FREE
            slot.sharing_group = None
        if group is not None and forget_groups:
            self._maybe_forget_group(group)
        logger.debug("released %s from %s", request.describe(), slot.slot_id)

    def _maybe_forget_group(self, group: str) -> None:
        """Return a group's table indices once it holds no task and none is queued."""
        index = self._groups.get(group)
        if index is None or self._group_pending.get(group, 0) > 0:
            return
        if self._table.group_refs_of(index) == 0:
            self._table.free_group(index)
            del self._groups[group]
            del self._group_ops[group]

    def _try_place_all(self, requests: List[SlotRequest], join_only: bool = False) -> Optional[List[Slot]]:
        """Place every request, or none (the ones placed are taken back)."""
        placed: List[Slot] = []
        for request in requests:
            slot = self._try_place(request, join_only)
            if slot is None:
                for earlier in requests[: len(placed)]:
                    self._drop_task(earlier.task_id)
                return None
            placed.append(slot)
        return placed

    def _unqueue(self, pending: _Pending) -> None:
        """Forget the pending bookkeeping of a queue entry (placed or withdrawn)."""
        for request in pending.requests:
            del self._pending[request.task_id]
            group = request.sharing_group
            if group is not None:
                left = self._group_pending[group] - 1
                if left:
                    self._group_pending[group] = left
                else:
                    del self._group_pending[group]

    def _withdraw(self, pending: _Pending) -> None:
        """Take a request out of the queue (lazily: the deque entry is skipped later)."""
        pending.cancelled = True
        self._unqueue(pending)
        for group in {r.sharing_group for r in pending.requests if r.sharing_group is not None}:
            self._maybe_forget_group(group)
        self._cancelled_in_queue += 1
        if self._cancelled_in_queue > 64 and self._cancelled_in_queue > len(self._pending):
            # compact so that withdrawn entries never dominate the deque
            self._queue = deque(p for p in self._queue if not p.cancelled)
            self._cancelled_in_queue = 0
        logger.debug("withdrew the slot request of %s", pending.describe())

    def _serve_queue(self) -> None:
        """Place queued requests from the head until the head cannot be placed.

        O(1) per placed request. Re-entrant calls (a callback releasing a slot)
        return at once; the outer loop sees the freed slot.
        """
        if self._serving:
            return
        self._serving = True
        try:
            queue = self._queue
            while queue:
                pending = queue[0]
                if pending.cancelled:
                    queue.popleft()
                    self._cancelled_in_queue -= 1
                    continue
                slots = self._try_place_all(pending.requests)
                if slots is None:
                    break
                queue.popleft()
                self._unqueue(pending)
                self._notify(pending, slots)
                queue = self._queue  # a callback may have compacted the queue
        finally:
            self._serving = False

    def _notify(self, pending: _Pending, slots: List[Slot]) -> None:
        for future in pending.waiters:
            if not future.done():
                future.set_result(slots)
        result = slots if pending.bulk else slots[0]
        for callback in pending.callbacks:
            try:
                callback(result)
            except Exception:
                logger.exception(
                    "slot callback for %s raised; the slot stays allocated",
                    pending.describe(),
                )

"""The workers the coordinator knows: registration, liveness, loss (Flink's
ResourceManager worker registry + HeartbeatManager, at Python scale).

A worker registers once (:meth:`NodeRegistry.register`); its slots join the slot
pool. It is *live* while its connection stays open and it is heard from within
``heartbeat_timeout_s``: a dropped connection means the process is gone and is
reported at once by the gateway (:meth:`NodeRegistry.lose`); a silent one is found
by :meth:`NodeRegistry.check` on the heartbeat tick. Losing a node takes its slots
out of the pool and calls ``on_lost(node, reason, task_ids)`` with the tasks that
ran there, so failover can restart them. Time comes from the injected clock.
"""

from __future__ import annotations

import collections
import logging

from sabot.cluster.protocol import NodeInfo, RegisterRequest
from sabot.errors import Conflict

log = logging.getLogger(__name__)

__all__ = ["NodeRegistry"]

#: lost or departed workers kept for ``GET /nodes``
LOST_HISTORY = 100


class NodeRegistry:
    """Live workers by node id, and the recently lost ones.

    Args:
        slot_pool: the pool the nodes' slots join and leave.
        clock: a :class:`~sabot.cluster.clock.Clock`.
        heartbeat_timeout_s: a worker silent for longer is declared lost.
        on_lost: ``callback(node, reason, task_ids)`` after a node left the pool.
    """

    def __init__(self, slot_pool, clock, heartbeat_timeout_s, on_lost=None, scheme="http"):
        self.scheme = scheme  # of the workers' URLs: https when the cluster runs TLS
        self.slot_pool = slot_pool
        self.clock = clock
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.on_lost = on_lost
        self.nodes: dict[str, NodeInfo] = {}
        self.lost: collections.OrderedDict[str, NodeInfo] = collections.OrderedDict()
        self.quiet = False  # the coordinator is stopping: losses are expected
        self.stalls = 0  # times the coordinator found itself stalled
        self.losses = 0  # workers declared lost so far (a rejoined one counts again if lost again)

    def __contains__(self, node_id):
        return node_id in self.nodes

    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def get(self, node_id) -> NodeInfo | None:
        return self.nodes.get(node_id)

    def values(self):
        return self.nodes.values()

    def register(self, request: RegisterRequest) -> NodeInfo:
        """Add a worker and its slots.

        Raises:
            Conflict: the node id, or the address, is already registered.
        """
        existing = self.nodes.get(request.node_id)
        if existing is not None:
            raise Conflict(f"node {request.node_id!r} is already registered (pid {existing.pid}, {existing.url}); "
                           "a worker registers once")
        for node in self.nodes.values():
            if (node.host, node.port) == (request.host, request.port):
                raise Conflict(f"a worker at {request.host}:{request.port} is already registered as node "
                               f"{node.node_id!r}")
        now = self.clock.now()
        node = NodeInfo(
            node_id=request.node_id, host=request.host, port=request.port, data_host=request.data_host,
            data_port=request.data_port, num_slots=request.num_slots,
            cpu_cores_per_slot=request.cpu_cores_per_slot, memory_mb_per_slot=request.memory_mb_per_slot,
            pid=request.pid, last_heartbeat=now, scheme=self.scheme,
        )
        self.slot_pool.register_node(request.node_id, request.num_slots, request.cpu_cores_per_slot,
                                     request.memory_mb_per_slot, metadata={"url": node.url, "pid": request.pid})
        self.nodes[request.node_id] = node
        self.lost.pop(request.node_id, None)
        log.info("worker %s registered: %d slots, %s (pid %d)", request.node_id, request.num_slots, node.url,
                 request.pid)
        return node

    def connected(self, node_id) -> None:
        node = self.nodes[node_id]
        node.state = "CONNECTED"
        node.last_heartbeat = self.clock.now()

    def heard_from(self, node_id) -> None:
        """Any message from the worker counts as a heartbeat."""
        node = self.nodes.get(node_id)
        if node is not None:
            node.last_heartbeat = self.clock.now()

    def coordinator_stalled(self, seconds, now=None) -> None:
        """The coordinator itself could not run for ``seconds``: the beats that arrived
        meanwhile may not be read yet (uvloop runs due timers before reading sockets), so
        nobody is judged on that silence; every node starts a fresh timeout."""
        now = self.clock.now() if now is None else now
        self.stalls += 1
        log.warning("the coordinator was stalled for %.2f s: worker silence over that time is not judged", seconds)
        for node in self.nodes.values():
            node.last_heartbeat = max(node.last_heartbeat, now)

    def check(self, now=None) -> list[str]:
        """Declare lost every node silent for more than ``heartbeat_timeout_s``; return their ids."""
        now = self.clock.now() if now is None else now
        silent = [n for n in self.nodes.values() if now - n.last_heartbeat > self.heartbeat_timeout_s]
        for node in silent:
            self.lose(node.node_id, f"no heartbeat for {now - node.last_heartbeat:.2f} s "
                                    f"(timeout {self.heartbeat_timeout_s} s)")
        return [n.node_id for n in silent]

    def lose(self, node_id, reason, *, left=False) -> NodeInfo | None:
        """Drop a node: its slots leave the pool, ``on_lost`` hears of the tasks it ran."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return None
        node.state = "LEFT" if left else "LOST"
        node.lost_reason = reason
        self.losses += not left
        self.lost[node_id] = node
        while len(self.lost) > LOST_HISTORY:
            self.lost.popitem(last=False)
        level = logging.INFO if self.quiet or left else logging.WARNING
        log.log(level, "worker %s %s: %s", node_id, "left" if left else "lost", reason)
        task_ids = [r.task_id for r in self.slot_pool.unregister_node(node_id)]
        if self.on_lost is not None:
            self.on_lost(node, reason, task_ids)
        return node

    def data_address(self, node_id):
        node = self.nodes.get(node_id)
        return node.data_address if node is not None else None

    def view(self):
        """``GET /nodes``: live workers (with free slots and tasks) and recently lost ones."""
        now = self.clock.now()
        pool = self.slot_pool
        live = []
        for node in self.nodes.values():
            item = node.to_dict(now)
            item["free_slots"] = pool.get_free_slots(node.node_id)
            item["running_tasks"] = sum(len(s.task_ids) for s in pool.get_slots(node.node_id))
            live.append(item)
        return {"nodes": live, "lost": [n.to_dict(now) for n in self.lost.values()]}

"""NodeRegistry: registration, liveness judged on an injected clock, node loss."""

import pytest

from sabot.cluster.nodes import NodeRegistry
from sabot.cluster.protocol import RegisterRequest
from sabot.errors import Conflict
from sabot.execution.slot_pool import SlotPool, SlotRequest
from sabot.testing import ManualClock


def request(node_id, port, slots=2):
    return RegisterRequest(node_id, "127.0.0.1", port, "127.0.0.1", port + 1, slots)


def registry():
    lost = []
    reg = NodeRegistry(SlotPool(), ManualClock(), heartbeat_timeout_s=0.5,
                       on_lost=lambda node, reason, tasks: lost.append((node.node_id, reason, sorted(tasks))))
    return reg, lost


def test_register_once_and_at_one_address():
    reg, _ = registry()
    reg.register(request("a", 1000))
    with pytest.raises(Conflict, match="already registered"):
        reg.register(request("a", 2000))
    with pytest.raises(Conflict, match="127.0.0.1:1000 is already registered as node 'a'"):
        reg.register(request("b", 1000))
    assert list(reg) == ["a"] and reg.slot_pool.total_slots == 2


def test_silent_workers_are_lost_after_the_timeout_and_their_tasks_reported():
    import asyncio

    async def scenario():
        reg, lost = registry()
        reg.register(request("a", 1000))
        reg.register(request("b", 1010))
        reg.slot_pool.request_slot(SlotRequest(task_id="t1", operator_id="op", preferred_node="a"))
        await reg.clock.advance(0.3)
        reg.heard_from("b")
        assert reg.check() == []
        await reg.clock.advance(0.3)  # a: 0.6 s silent, b: 0.3 s
        assert reg.check() == ["a"]
        assert lost == [("a", "no heartbeat for 0.60 s (timeout 0.5 s)", ["t1"])]
        assert reg.lost["a"].state == "LOST" and "a" not in reg and reg.slot_pool.total_slots == 2
        reg.lose("b", "it shut down", left=True)
        assert reg.lost["b"].state == "LEFT" and len(reg) == 0
        assert reg.lose("b", "again") is None and len(lost) == 2

    asyncio.run(scenario())


def test_a_lost_worker_may_register_again():
    reg, _ = registry()
    reg.register(request("a", 1000))
    reg.lose("a", "its connection closed")
    reg.register(request("a", 1000))
    assert "a" in reg and "a" not in reg.lost
    view = reg.view()
    assert view["nodes"][0]["free_slots"] == 2 and view["nodes"][0]["running_tasks"] == 0

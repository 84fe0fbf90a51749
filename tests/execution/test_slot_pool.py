"""Tests of ``sabot.execution.slot_pool``: the seed's SlotPool API and its rules."""

import asyncio
import logging
import random

import pytest
import uvloop

from sabot.errors import SabotError, SlotRequestTooLarge, SlotsExhausted, UnknownNode
from sabot.execution.slot_pool import Slot, SlotPool, SlotRequest, SlotState, UnknownSlot


def req(task_id, operator_id=None, **kw):
    return SlotRequest(task_id=task_id, operator_id=operator_id or f"op-{task_id}", **kw)


def two_node_pool(slots=4, **kw):
    pool = SlotPool()
    pool.register_node("node-1", slots, **kw)
    pool.register_node("node-2", slots, **kw)
    return pool


def run_async(coro_fn, loop_kind):
    """Run ``coro_fn()`` on asyncio's default loop or on uvloop, bounded in time."""

    async def bounded():
        return await asyncio.wait_for(coro_fn(), timeout=10)

    if loop_kind == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(bounded())
    return asyncio.run(bounded())


def check_accounting(pool):
    """Status figures recomputed from the Slot objects."""
    slots = pool.get_slots()
    allocated = [s for s in slots if s.state is SlotState.ALLOCATED]
    status = pool.get_status()
    assert status["total_slots"] == len(slots)
    assert status["allocated_slots"] == len(allocated)
    assert status["free_slots"] == len(slots) - len(allocated)
    assert status["allocated_cpu_cores"] == pytest.approx(sum(s.cpu_cores for s in allocated))
    assert status["total_cpu_cores"] == pytest.approx(sum(s.cpu_cores for s in slots))
    assert status["allocated_memory_mb"] == sum(s.memory_mb for s in allocated)
    assert status["total_memory_mb"] == sum(s.memory_mb for s in slots)
    assert status["num_tasks"] == sum(len(s.task_ids) for s in slots)
    for s in slots:
        assert (s.state is SlotState.FREE) == (not s.task_ids)
        if s.sharing_group is not None:
            ops = [pool._task_request[t].operator_id for t in s.task_ids]
            assert len(ops) == len(set(ops)), f"{s.slot_id} holds two subtasks of one operator"
        else:
            assert len(s.task_ids) <= 1
        for t in s.task_ids:
            assert pool.get_task_slot(t) is s
    for node_id, info in status["nodes"].items():
        node_slots = pool.get_slots(node_id)
        busy = sum(1 for s in node_slots if s.state is SlotState.ALLOCATED)
        assert info["allocated_slots"] == busy and info["total_slots"] == len(node_slots)
    if slots:
        assert status["utilization"] == pytest.approx(100.0 * len(allocated) / len(slots))


# --------------------------------------------------------------------------- seed scenario 3


def test_seed_scenario_three_two_nodes_six_of_eight():
    pool = SlotPool()
    pool.register_node("node-1", num_slots=4)
    pool.register_node("node-2", num_slots=4)
    slots = [
        pool.request_slot(
            SlotRequest(task_id=f"task_{i}", operator_id=f"op_{i}", cpu_cores=0.5, memory_mb=256)
        )
        for i in range(6)
    ]
    assert all(isinstance(s, Slot) for s in slots)
    assert len({s.slot_id for s in slots}) == 6
    assert pool.total_slots == 8
    assert pool.free_slots == 2
    assert pool.get_free_slots() == 2
    assert pool.allocated_slots == 6
    assert pool.utilization == 75.0
    assert pool.get_utilization() == 75.0
    status = pool.get_status()
    assert status["total_slots"] == 8 and status["free_slots"] == 2
    assert status["allocated_slots"] == 6 and status["pending_requests"] == 0
    assert status["utilization"] == 75.0
    # the job spreads across both nodes
    assert status["nodes"]["node-1"]["allocated_slots"] == 3
    assert status["nodes"]["node-2"]["allocated_slots"] == 3
    check_accounting(pool)


def test_seed_sharing_example_shape():
    pool = SlotPool()
    pool.register_node("node-1", num_slots=4)
    slot = pool.request_slot(
        SlotRequest(task_id="filter_task_0", operator_id="filter_0", cpu_cores=0.5,
                    memory_mb=256, sharing_group="job-123")
    )
    assert slot.node_id == "node-1" and slot.task_ids == ["filter_task_0"]
    assert slot.sharing_group == "job-123" and slot.state is SlotState.ALLOCATED
    assert (slot.cpu_cores, slot.memory_mb) == (1.0, 1024)  # the slot's resources


# --------------------------------------------------------------------------- validation


def test_register_node_validation():
    pool = SlotPool()
    pool.register_node("n", 2)
    with pytest.raises(ValueError, match="'n' is already registered"):
        pool.register_node("n", 2)
    with pytest.raises(ValueError, match="num_slots must be an integer >= 1, got 0"):
        pool.register_node("m", 0)
    with pytest.raises(ValueError, match="num_slots"):
        pool.register_node("m", 2.5)
    with pytest.raises(ValueError, match="cpu_cores must be a finite number >= 0, got -1"):
        pool.register_node("m", 1, cpu_cores_per_slot=-1)
    with pytest.raises(ValueError, match="memory_mb must be an integer >= 0"):
        pool.register_node("m", 1, memory_mb_per_slot=-10)
    with pytest.raises(ValueError, match="cpu_cores"):
        pool.register_node("m", 1, cpu_cores_per_slot=float("nan"))
    with pytest.raises(ValueError, match="node_id"):
        pool.register_node("", 1)
    assert pool.nodes == ["n"] and pool.total_slots == 2


def test_request_validation():
    with pytest.raises(ValueError, match="task_id"):
        SlotRequest(task_id="", operator_id="x")
    with pytest.raises(ValueError, match="operator_id"):
        SlotRequest(task_id="t", operator_id=None)
    with pytest.raises(ValueError, match="cpu_cores must be a finite number >= 0, got -0.5"):
        SlotRequest(task_id="t", operator_id="x", cpu_cores=-0.5)
    with pytest.raises(ValueError, match="memory_mb"):
        SlotRequest(task_id="t", operator_id="x", memory_mb=1.5)
    with pytest.raises(ValueError, match="sharing_group"):
        SlotRequest(task_id="t", operator_id="x", sharing_group="")
    with pytest.raises(ValueError, match="callback"):
        SlotRequest(task_id="t", operator_id="x", callback=42)
    pool = two_node_pool()
    with pytest.raises(TypeError, match="SlotRequest"):
        pool.request_slot({"task_id": "t"})
    pool.request_slot(req("t"))
    with pytest.raises(ValueError, match="task 't' already holds slot"):
        pool.request_slot(req("t"))


def test_oversized_request_is_refused_at_once():
    pool = SlotPool()
    pool.register_node("small", 2, cpu_cores_per_slot=1.0, memory_mb_per_slot=1024)
    with pytest.raises(SlotRequestTooLarge) as info:
        pool.request_slot(req("big", cpu_cores=2.0, memory_mb=512))
    msg = str(info.value)
    assert "'big'" in msg and "2 cpu cores and 512 MB" in msg
    assert "largest slot available has 1 cpu cores and 1024 MB" in msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, SabotError)
    with pytest.raises(SlotRequestTooLarge, match="4096 MB"):
        pool.request_slot(req("mem", memory_mb=4096))
    # cpu fits one size, memory another: no single slot fits both
    pool.register_node("fat", 1, cpu_cores_per_slot=0.5, memory_mb_per_slot=8192)
    with pytest.raises(SlotRequestTooLarge, match="1 cpu cores / 1024 MB, 0.5 cpu cores / 8192 MB"):
        pool.request_slot(req("both", cpu_cores=1.0, memory_mb=2048))
    assert pool.pending_requests == 0 and pool.free_slots == 3


def test_request_before_any_node_waits_and_is_served_on_register():
    pool = SlotPool()
    assert pool.request_slot(req("early", cpu_cores=2.0)) is None
    assert pool.pending_requests == 1
    pool.register_node("tiny", 1, cpu_cores_per_slot=1.0)  # too small: keeps waiting
    assert pool.pending_requests == 1
    pool.register_node("big", 1, cpu_cores_per_slot=4.0)
    assert pool.pending_requests == 0
    assert pool.get_task_slot("early").node_id == "big"


# --------------------------------------------------------------------------- placement


def test_preferred_node_honoured_when_it_has_room():
    pool = two_node_pool(slots=2)
    a = pool.request_slot(req("a", preferred_node="node-2"))
    b = pool.request_slot(req("b", preferred_node="node-2"))
    c = pool.request_slot(req("c", preferred_node="node-2"))
    assert (a.node_id, b.node_id, c.node_id) == ("node-2", "node-2", "node-1")
    d = pool.request_slot(req("d", preferred_node="no-such-node"))  # a hint only
    assert d.node_id == "node-1"


def test_spreads_round_robin_over_nodes():
    pool = two_node_pool(slots=4)
    nodes = [pool.request_slot(req(f"t{i}")).node_id for i in range(8)]
    assert nodes == ["node-1", "node-2"] * 4
    assert pool.request_slot(req("t8")) is None


def test_best_fit_keeps_big_slots_for_big_requests():
    pool = SlotPool()
    pool.register_node("big", 1, cpu_cores_per_slot=8.0, memory_mb_per_slot=16384)
    pool.register_node("small", 2, cpu_cores_per_slot=1.0, memory_mb_per_slot=1024)
    assert pool.request_slot(req("s1", cpu_cores=0.5)).node_id == "small"
    assert pool.request_slot(req("s2", cpu_cores=0.5)).node_id == "small"
    assert pool.request_slot(req("b1", cpu_cores=4.0)).node_id == "big"


# --------------------------------------------------------------------------- release


def test_release_slot_and_task():
    pool = two_node_pool(slots=1)
    a = pool.request_slot(req("a"))
    assert pool.release_slot(a.slot_id) == ["a"]
    assert a.state is SlotState.FREE and a.task_ids == [] and pool.free_slots == 2
    with pytest.raises(ValueError, match="is free, not allocated"):
        pool.release_slot(a.slot_id)
    with pytest.raises(UnknownSlot, match="'nope' does not exist"):
        pool.release_slot("nope")
    b = pool.request_slot(req("b"))
    with pytest.raises(ValueError, match="task 'zz' is not in slot"):
        pool.release_slot(b.slot_id, task_id="zz")
    assert pool.release_slot(b.slot_id, task_id="b") == ["b"]
    c = pool.request_slot(req("c"))
    assert pool.release_task("c") is c and c.is_free
    with pytest.raises(UnknownSlot, match="task 'c' holds no slot"):
        pool.release_task("c")
    check_accounting(pool)


# --------------------------------------------------------------------------- sharing


def test_sharing_four_operators_of_parallelism_four_need_four_slots():
    pool = two_node_pool(slots=4)
    placed = {}
    for op in ["source", "filter", "map", "sink"]:
        for i in range(4):
            slot = pool.request_slot(req(f"{op}_{i}", op, sharing_group="job"))
            assert slot is not None
            placed[f"{op}_{i}"] = slot
    used = {s.slot_id: s for s in placed.values()}
    assert len(used) == 4 and pool.allocated_slots == 4 and pool.free_slots == 4
    for s in used.values():
        assert sorted(t.split("_")[0] for t in s.task_ids) == ["filter", "map", "sink", "source"]
        assert s.is_shared and s.sharing_group == "job"
    # the shared slots spread too: two per node
    assert sorted(s.node_id for s in used.values()) == ["node-1", "node-1", "node-2", "node-2"]
    # a task without group gets its own slot
    own = pool.request_slot(req("solo"))
    assert own.slot_id not in used and own.task_ids == ["solo"]
    check_accounting(pool)


def test_same_operator_never_shares_and_groups_are_separate():
    pool = SlotPool()
    pool.register_node("n", 3)
    a0 = pool.request_slot(req("a0", "A", sharing_group="g"))
    a1 = pool.request_slot(req("a1", "A", sharing_group="g"))
    assert a0 is not a1
    other = pool.request_slot(req("x0", "A", sharing_group="other-job"))
    assert other not in (a0, a1)
    assert pool.request_slot(req("a2", "A", sharing_group="g")) is None  # no 4th slot
    # another operator of g fits in g's live slots
    b0 = pool.request_slot(req("b0", "B", sharing_group="g"))
    assert b0 in (a0, a1)
    check_accounting(pool)


def test_shared_slot_freed_only_when_last_task_leaves():
    pool = SlotPool()
    pool.register_node("n", 2)
    s = pool.request_slot(req("a0", "A", sharing_group="g"))
    assert pool.request_slot(req("b0", "B", sharing_group="g")) is s
    pool.release_task("a0")
    assert s.state is SlotState.ALLOCATED and s.task_ids == ["b0"] and pool.free_slots == 1
    pool.release_task("b0")
    assert s.is_free and s.sharing_group is None and pool.free_slots == 2
    # releasing a whole shared slot releases every task in it
    s = pool.request_slot(req("a1", "A", sharing_group="g"))
    pool.request_slot(req("b1", "B", sharing_group="g"))
    assert sorted(pool.release_slot(s.slot_id)) == ["a1", "b1"]
    assert pool.free_slots == 2 and pool.get_task_slot("b1") is None
    check_accounting(pool)


def test_shared_request_joins_live_slot_even_while_queue_waits():
    pool = SlotPool()
    pool.register_node("n", 1)
    s = pool.request_slot(req("a0", "A", sharing_group="g"))
    assert pool.request_slot(req("a1", "A", sharing_group="g")) is None  # queued
    # B's first subtask can share a0's slot: it takes no free slot from a1
    assert pool.request_slot(req("b0", "B", sharing_group="g")) is s
    # an exclusive request queues behind a1
    assert pool.request_slot(req("solo")) is None
    assert [r.task_id for r in pool.get_pending_requests()] == ["a1", "solo"]


# --------------------------------------------------------------------------- queue


def test_queue_is_served_in_fifo_order_with_callbacks():
    pool = two_node_pool(slots=1)
    held = [pool.request_slot(req(f"h{i}")) for i in range(2)]
    served = []
    for name in ["q1", "q2", "q3"]:
        r = req(name, callback=lambda slot, name=name: served.append((name, slot.slot_id)))
        assert pool.request_slot(r) is None
    assert pool.pending_requests == 3 and pool.get_status()["pending_requests"] == 3
    pool.release_slot(held[1].slot_id)
    assert served == [("q1", held[1].slot_id)]
    pool.release_task("h0")
    assert served[1] == ("q2", held[0].slot_id)
    pool.register_node("node-3", 1)
    assert [name for name, _ in served] == ["q1", "q2", "q3"]
    assert served[2][1] == "node-3-slot-0"
    assert pool.pending_requests == 0


def test_callback_argument_and_immediate_callback():
    pool = two_node_pool(slots=1)
    got = []
    slot = pool.request_slot(req("a"), callback=got.append)
    assert got == [slot]  # called once, also when placed at once


def test_head_of_line_request_is_not_overtaken():
    pool = SlotPool()
    pool.register_node("big", 1, cpu_cores_per_slot=4.0)
    pool.register_node("small", 1, cpu_cores_per_slot=1.0)
    b = pool.request_slot(req("b", cpu_cores=4.0))
    s = pool.request_slot(req("s", cpu_cores=1.0))
    assert pool.request_slot(req("big2", cpu_cores=4.0)) is None
    assert pool.request_slot(req("small2", cpu_cores=1.0)) is None
    pool.release_task("s")  # a small slot frees, but the big request is first in line
    assert pool.get_task_slot("small2") is None
    pool.release_task("b")
    assert pool.get_task_slot("big2").node_id == "big"
    assert pool.get_task_slot("small2").node_id == "small"
    assert s.slot_id == pool.get_task_slot("small2").slot_id


def test_cancel_request_and_callback_errors_are_contained(caplog):
    pool = SlotPool()
    pool.register_node("n", 1)
    pool.request_slot(req("h"))
    pool.request_slot(req("q1"))
    assert pool.cancel_request("q1") and not pool.cancel_request("q1")
    assert pool.pending_requests == 0

    def boom(slot):
        raise RuntimeError("callback bug")

    pool.request_slot(req("q2", callback=boom))
    with caplog.at_level(logging.ERROR, logger="sabot.execution.slot_pool"):
        pool.release_task("h")
    assert "callback bug" in caplog.text
    assert pool.get_task_slot("q2") is not None and pool.pending_requests == 0
    check_accounting(pool)


def test_callback_that_releases_keeps_serving_in_order():
    pool = SlotPool()
    pool.register_node("n", 1)
    pool.request_slot(req("h"))
    order = []
    pool.request_slot(req("q1", callback=lambda s: (order.append("q1"), pool.release_task("q1"))))
    pool.request_slot(req("q2", callback=lambda s: order.append("q2")))
    pool.release_task("h")
    assert order == ["q1", "q2"] and pool.get_task_slot("q2") is not None


# --------------------------------------------------------------------------- node loss


def test_unregister_node_returns_lost_requests():
    pool = two_node_pool(slots=2)
    placed = {}
    for i in range(2):
        for op in ["A", "B"]:
            r = req(f"{op}{i}", op, sharing_group="g")
            placed[r.task_id] = (r, pool.request_slot(r))
    solo_req = req("solo", preferred_node="node-1")
    assert pool.request_slot(solo_req).node_id == "node-1"
    pool.request_slot(req("waiting"))  # pool is full now? one slot left on node-2
    expected_lost = {t for t, (_, s) in placed.items() if s.node_id == "node-1"} | {"solo"}
    if pool.get_task_slot("waiting").node_id == "node-1":
        expected_lost.add("waiting")
    lost = pool.unregister_node("node-1")
    assert {r.task_id for r in lost} == expected_lost
    assert any(r is solo_req for r in lost)
    for t in expected_lost:
        assert pool.get_task_slot(t) is None
    assert pool.nodes == ["node-2"] and pool.total_slots == 2
    lost_slots = [s for _, s in placed.values() if s.node_id == "node-1"]
    assert all(s.state is SlotState.LOST for s in lost_slots)
    with pytest.raises(UnknownNode, match="'node-1' is not registered"):
        pool.unregister_node("node-1")
    # the lost tasks can be requested again and the node can come back
    pool.register_node("node-1", 2)
    for r in lost:
        pool.request_slot(SlotRequest(task_id=r.task_id, operator_id=r.operator_id,
                                      sharing_group=r.sharing_group))
    assert all(pool.get_task_slot(r.task_id) is not None for r in lost)
    check_accounting(pool)


def test_unregister_keeps_queue_and_other_node_intact():
    pool = two_node_pool(slots=1)
    a = pool.request_slot(req("a"))
    b = pool.request_slot(req("b"))
    pool.request_slot(req("q"))
    lost = pool.unregister_node(a.node_id)
    assert [r.task_id for r in lost] == ["a"]
    assert pool.pending_requests == 1 and b.state is SlotState.ALLOCATED
    pool.release_task("b")
    assert pool.get_task_slot("q") is b


# --------------------------------------------------------------------------- async waiting


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_wait_for_slot_is_served_when_a_slot_frees(loop_kind):
    async def scenario():
        pool = SlotPool()
        pool.register_node("n", 1)
        pool.request_slot(req("h"))
        r1, r2 = req("w1"), req("w2")
        waiters = [asyncio.ensure_future(pool.wait_for_slot(r, timeout=5)) for r in (r1, r2)]
        await asyncio.sleep(0)
        assert pool.pending_requests == 2
        asyncio.get_running_loop().call_later(0.01, pool.release_task, "h")
        slot1 = await waiters[0]
        assert slot1.task_ids == ["w1"] and not waiters[1].done()
        pool.release_task("w1")
        slot2 = await waiters[1]
        assert slot2 is slot1 and slot2.task_ids == ["w2"]
        # already placed: returns at once
        assert await pool.wait_for_slot(r2, timeout=0) is slot2
        # not yet submitted and room available: placed directly
        pool.register_node("m", 1)
        assert (await pool.wait_for_slot(req("direct"), timeout=1)).node_id == "m"

    run_async(scenario, loop_kind)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_wait_for_slot_timeout_raises_and_withdraws(loop_kind):
    async def scenario():
        pool = SlotPool()
        pool.register_node("n", 1)
        pool.request_slot(req("h"))
        r = req("late", "opX", cpu_cores=0.5)
        with pytest.raises(SlotsExhausted) as info:
            await pool.wait_for_slot(r, timeout=0.05)
        msg = str(info.value)
        assert "'late'" in msg and "'opX'" in msg and "0.05 s" in msg
        assert "0 of 1 slots free" in msg
        assert isinstance(info.value, RuntimeError)
        assert pool.pending_requests == 0
        pool.release_task("h")
        assert pool.get_task_slot("late") is None  # withdrawn: it did not take the slot
        assert pool.free_slots == 1

    run_async(scenario, loop_kind)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_cancel_request_wakes_waiter_with_error(loop_kind):
    async def scenario():
        pool = SlotPool()
        pool.register_node("n", 1)
        pool.request_slot(req("h"))
        r = req("w")
        task = asyncio.ensure_future(pool.wait_for_slot(r, timeout=5))
        await asyncio.sleep(0)
        assert pool.cancel_request("w")
        with pytest.raises(SlotsExhausted, match="was cancelled"):
            await task
        # a cancelled waiting coroutine withdraws its request too
        task2 = asyncio.ensure_future(pool.wait_for_slot(req("w2"), timeout=5))
        await asyncio.sleep(0)
        assert pool.pending_requests == 1
        task2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task2
        assert pool.pending_requests == 0

    run_async(scenario, loop_kind)


def test_wait_for_slot_rejects_bad_timeout():
    pool = two_node_pool()

    async def scenario():
        with pytest.raises(ValueError, match="timeout"):
            await pool.wait_for_slot(req("x"), timeout=-1)

    run_async(scenario, "asyncio")


# --------------------------------------------------------------------------- random model


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(5))
def test_random_operations_keep_pool_consistent(seed):
    rng = random.Random(seed)
    pool = SlotPool()
    next_node = 0
    fifo_model = []  # task ids in the order they were queued
    for step in range(600):
        action = rng.random()
        if action < 0.08 or not pool.nodes:
            pool.register_node(f"n{next_node}", rng.randint(1, 4),
                               cpu_cores_per_slot=rng.choice([1.0, 2.0]))
            next_node += 1
        elif action < 0.12 and len(pool.nodes) > 1:
            victim = rng.choice(pool.nodes)
            on_victim = {t for s in pool.get_slots(victim) for t in s.task_ids}
            lost = pool.unregister_node(victim)
            assert {r.task_id for r in lost} == on_victim
        elif action < 0.6:
            group = rng.choice([None, "g1", "g2"])
            r = SlotRequest(task_id=f"t{step}", operator_id=rng.choice("ABC"),
                            cpu_cores=rng.choice([0.5, 1.0, 2.0]), sharing_group=group)
            was_pending = pool.pending_requests
            if not any(sl.cpu_cores >= r.cpu_cores for sl in pool.get_slots()):
                with pytest.raises(SlotRequestTooLarge):
                    pool.request_slot(r)
                continue
            slot = pool.request_slot(r)
            if slot is None:
                fifo_model.append(r.task_id)
            else:
                # an exclusive request never overtakes a queued one
                assert was_pending == 0 or group is not None
        else:
            held = [t for s in pool.get_slots() for t in s.task_ids]
            if held:
                pool.release_task(rng.choice(held))
        live = {r.task_id for r in pool.get_pending_requests()}
        fifo_model = [t for t in fifo_model if t in live]
        assert [r.task_id for r in pool.get_pending_requests()] == fifo_model
        check_accounting(pool)


# ------------------------------------------------------------------ all or nothing


def reqs(prefix, n, op="op", group=None):
    return [SlotRequest(task_id=f"{prefix}{i}", operator_id=op, sharing_group=group) for i in range(n)]


def test_request_slots_places_all_or_queues_all():
    pool = SlotPool()
    pool.register_node("n1", num_slots=3)
    placed = pool.request_slots(reqs("a", 2))
    assert [s.node_id for s in placed] == ["n1", "n1"] and pool.free_slots == 1
    assert pool.request_slots(reqs("b", 2)) is None  # 1 free slot: nothing is taken
    assert pool.free_slots == 1 and pool.pending_requests == 2
    assert [r.task_id for r in pool.get_pending_requests()] == ["b0", "b1"]
    pool.release_task("a0")  # now 2 free: the set is placed together
    assert pool.pending_requests == 0 and pool.free_slots == 0
    assert {pool.get_task_slot(t).node_id for t in ("b0", "b1")} == {"n1"}


def test_a_waiting_set_is_not_overtaken_and_holds_nothing():
    pool = SlotPool()
    pool.register_node("n1", num_slots=2)
    pool.request_slot(SlotRequest(task_id="x", operator_id="op"))
    assert pool.request_slots(reqs("big", 2)) is None
    assert pool.request_slot(SlotRequest(task_id="small", operator_id="op")) is None  # FIFO: waits behind
    assert pool.free_slots == 1
    pool.release_task("x")
    assert pool.get_task_slot("big0") and pool.get_task_slot("big1") and pool.get_task_slot("small") is None


def test_a_set_in_one_sharing_group_shares_slots():
    pool = SlotPool()
    pool.register_node("n1", num_slots=2)
    group = reqs("src", 2, op="src", group="job") + reqs("map", 2, op="map", group="job")
    slots = pool.request_slots(group)
    assert len({s.slot_id for s in slots}) == 2 and pool.free_slots == 0


def test_wait_for_slots_times_out_and_withdraws_the_whole_set(arun):
    async def scenario():
        pool = SlotPool()
        pool.register_node("n1", num_slots=1)
        with pytest.raises(SlotsExhausted, match="2 tasks placed together"):
            await pool.wait_for_slots(reqs("t", 2), timeout=0.05)
        assert pool.pending_requests == 0 and pool.free_slots == 1
        waiting = asyncio.ensure_future(pool.wait_for_slots(reqs("u", 2), timeout=5))
        await asyncio.sleep(0)
        pool.register_node("n2", num_slots=1)  # a worker joins: the set fits now
        slots = await waiting
        assert {s.node_id for s in slots} == {"n1", "n2"}
        cancelled = asyncio.ensure_future(pool.wait_for_slots(reqs("v", 1), timeout=5))
        await asyncio.sleep(0)
        assert pool.cancel_request("v0")
        with pytest.raises(SlotsExhausted, match="cancelled"):
            await cancelled

    arun(scenario())


def test_request_slots_refuses_bad_sets():
    pool = SlotPool()
    pool.register_node("n1", num_slots=2, cpu_cores_per_slot=1.0)
    with pytest.raises(ValueError, match="appears twice"):
        pool.request_slots(reqs("t", 1) + reqs("t", 1))
    with pytest.raises(SlotRequestTooLarge):
        pool.request_slots([SlotRequest(task_id="huge", operator_id="op", cpu_cores=8.0)])
    pool.request_slots(reqs("held", 1))
    with pytest.raises(ValueError, match="already holds"):
        pool.request_slots(reqs("held", 1))
    with pytest.raises(ValueError, match="non-empty"):
        pool.request_slots([])

"""Tests of the compiled slot table ``sabot._core.slots`` against a pure-Python model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot._core.slots import NodeUsage, SlotTable


class ModelTable:
    """Independent reference of the placement policy.

    Preferred node if it has a fitting free slot; else the smallest fitting slot
    size; within it the node with the most free slots, ties going to the node
    that has had its current free count for longest. Slots of a node come off a
    LIFO stack whose first pop is the node's first slot.
    """

    def __init__(self):
        self.nodes = {}  # node -> dict(cpu, mem, free(list stack), slots, since)
        self.clock = 0
        self.owner = {}  # slot -> node
        self.allocated = set()

    def add_node(self, node, slots, cpu, mem):
        self.clock += 1
        self.nodes[node] = dict(cpu=cpu, mem=mem, free=list(reversed(slots)), slots=list(slots),
                                since=self.clock)
        for s in slots:
            self.owner[s] = node

    def remove_node(self, node):
        for s in self.nodes[node]["slots"]:
            del self.owner[s]
        del self.nodes[node]

    def _touch(self, node):
        self.clock += 1
        self.nodes[node]["since"] = self.clock

    def pick(self, cpu, mem, preferred=-1):
        def fits(n):
            return cpu <= self.nodes[n]["cpu"] + 1e-9 and mem <= self.nodes[n]["mem"]

        if preferred in self.nodes and self.nodes[preferred]["free"] and fits(preferred):
            return preferred
        candidates = [n for n in self.nodes if self.nodes[n]["free"] and fits(n)]
        if not candidates:
            return -1
        size = min((self.nodes[n]["cpu"], self.nodes[n]["mem"]) for n in candidates)
        same = [n for n in candidates if (self.nodes[n]["cpu"], self.nodes[n]["mem"]) == size]
        return max(same, key=lambda n: (len(self.nodes[n]["free"]), -self.nodes[n]["since"]))

    def allocate(self, cpu, mem, preferred=-1):
        n = self.pick(cpu, mem, preferred)
        if n < 0:
            return -1
        s = self.nodes[n]["free"].pop()
        self._touch(n)
        self.allocated.add(s)
        return s

    def release(self, s):
        n = self.owner[s]
        self.allocated.remove(s)
        self.nodes[n]["free"].append(s)
        self._touch(n)

    def free_slots(self):
        return sum(len(v["free"]) for v in self.nodes.values())


def test_register_allocate_release_accounting():
    t = SlotTable()
    a = t.add_node(4, 1.0, 1024)
    b = t.add_node(4, 1.0, 1024)
    assert (t.total_slots, t.free_slots, t.num_nodes) == (8, 8, 2)
    got = [t.allocate(0.5, 256) for _ in range(6)]
    assert len(set(got)) == 6 and -1 not in got
    assert t.free_slots == 2 and t.allocated_slots == 6
    assert t.allocated_cpu_cores == pytest.approx(6.0)
    assert t.allocated_memory_mb == 6 * 1024
    assert t.total_cpu_cores == pytest.approx(8.0) and t.total_memory_mb == 8192
    # spread: A, B, A, B, ...
    assert [t.node_of(s) for s in got] == [a, b, a, b, a, b]
    usage = t.node_usage(a)
    assert isinstance(usage, NodeUsage)
    assert (usage.num_slots, usage.free_slots, usage.allocated_slots) == (4, 1, 3)
    assert usage.allocated_cpu_cores == pytest.approx(3.0) and usage.total_memory_mb == 4096
    for s in got:
        t.release(s)
    assert t.free_slots == 8 and t.allocated_cpu_cores == 0


def test_exhaustion_and_errors():
    t = SlotTable()
    n = t.add_node(2, 1.0, 512)
    s1, s2 = t.allocate(1.0, 512), t.allocate(0, 0)
    assert t.allocate(0, 0) == -1
    with pytest.raises(ValueError, match="not allocated"):
        t.release(s1) or t.release(s1)
    with pytest.raises(ValueError, match="does not exist"):
        t.release(999)
    with pytest.raises(ValueError, match="num_slots must be >= 1"):
        t.add_node(0, 1.0, 1)
    with pytest.raises(ValueError, match="cpu_cores_per_slot"):
        t.add_node(1, -1.0, 1)
    with pytest.raises(ValueError, match="memory_mb_per_slot"):
        t.add_node(1, 1.0, -5)
    with pytest.raises(ValueError, match="not a registered node"):
        t.allocate(0, 0, 7)
    with pytest.raises(ValueError, match="still has 1 allocated"):
        t.remove_node(n)
    t.release(s2)
    assert sorted(t.remove_node(n)) == sorted([s1, s2])
    assert (t.total_slots, t.free_slots, t.num_nodes) == (0, 0, 0)
    with pytest.raises(ValueError, match="not a registered node"):
        t.remove_node(n)


def test_fit_and_best_fit():
    t = SlotTable()
    small = t.add_node(2, 1.0, 1024)
    big = t.add_node(2, 4.0, 8192)
    assert t.fits_any(4.0, 8192) and not t.fits_any(4.5, 10) and not t.fits_any(1, 9000)
    assert sorted(t.slot_sizes()) == [(1.0, 1024), (4.0, 8192)]
    # small requests go to the small slots first (best fit), big ones to big slots
    assert t.node_of(t.allocate(0.5, 100)) == small
    assert t.node_of(t.allocate(2.0, 100)) == big
    assert t.node_of(t.allocate(0.5, 100)) == small
    # small node full: a small request may use a big slot
    assert t.node_of(t.allocate(0.5, 100)) == big
    assert t.allocate(0.5, 100) == -1
    assert not t.can_allocate(0, 0)
    # float noise: 0.1 + 0.2 fits a 0.3 slot
    t2 = SlotTable()
    t2.add_node(1, 0.3, 1)
    assert t2.allocate(0.1 + 0.2, 1) >= 0


def test_preferred_node():
    t = SlotTable()
    a = t.add_node(2, 1.0, 1024)
    b = t.add_node(2, 1.0, 1024)
    assert t.node_of(t.allocate(0, 0, b)) == b
    assert t.node_of(t.allocate(0, 0, b)) == b
    # b full: falls back to the other node
    assert t.node_of(t.allocate(0, 0, b)) == a
    # preferred node too small is ignored
    c = t.add_node(1, 0.5, 10)
    assert t.node_of(t.allocate(1.0, 0, c)) == a


def test_node_and_slot_indices_are_reused():
    t = SlotTable()
    a = t.add_node(3, 1.0, 1)
    slots_a = t.node_slots_of(a)
    t.remove_node(a)
    b = t.add_node(3, 1.0, 1)
    assert b == a and sorted(t.node_slots_of(b)) == sorted(slots_a)
    assert t.total_slots == 3 and t.free_slots == 3


def test_batch_kernels_match_single_calls():
    t1, t2 = SlotTable(), SlotTable()
    for t in (t1, t2):
        for _ in range(5):
            t.add_node(3, 1.0, 1024)
    batch = t1.allocate_many(20, 0.5, 0)
    single = [t2.allocate(0.5, 0) for _ in range(20)]
    assert batch.dtype == np.int32
    assert batch.tolist() == single
    assert (batch[:15] >= 0).all() and (batch[15:] == -1).all()
    assert t1.release_many(batch[:15]) == 15 and t1.free_slots == 15
    again = t1.allocate_many(2, 0, 0)
    with pytest.raises(ValueError, match="entry 1"):
        t1.release_many(np.array([again[0], 12345], dtype=np.int32))
    assert not t1.is_allocated(int(again[0])) and t1.is_allocated(int(again[1]))


def test_sharing_four_operators_parallelism_four_need_four_slots():
    t = SlotTable()
    t.add_node(4, 1.0, 1024)
    t.add_node(4, 1.0, 1024)
    g = t.add_group()
    ops = [t.add_group_op(g) for _ in range(4)]
    placed = {k: [t.allocate_shared(k, 0.5, 256) for _ in range(4)] for k in ops}
    used = set().union(*placed.values())
    assert len(used) == 4 and t.free_slots == 4
    for k, slots in placed.items():
        assert len(set(slots)) == 4  # never two subtasks of one operator per slot
    for s in used:
        assert t.refs_of(s) == 4 and t.group_of(s) == g
    assert t.group_refs_of(g) == 16
    # a fifth subtask of operator 0 needs a fifth slot
    s5 = t.allocate_shared(ops[0], 0.5, 256)
    assert s5 not in used and t.free_slots == 3
    # slot is freed only when its last task leaves
    s = placed[ops[0]][0]
    for k in ops[:3]:
        t.release_shared(s, k)
        assert t.is_allocated(s)
    t.release_shared(s, ops[3])
    assert not t.is_allocated(s) and t.free_slots == 4
    # operator 1 re-placing rejoins a live lane it left, without a new slot
    s2 = placed[ops[1]][1]
    t.release_shared(s2, ops[1])
    assert t.allocate_shared(ops[1], 0.5, 256) == s2
    with pytest.raises(ValueError, match="release it with release_shared"):
        t.release(s2)


def test_join_only_and_group_reuse():
    t = SlotTable()
    t.add_node(1, 1.0, 1024)
    g = t.add_group()
    a, b = t.add_group_op(g), t.add_group_op(g)
    assert t.allocate_shared(b, 0, 0, -1, True) == -1  # nothing to join yet
    s = t.allocate_shared(a, 0, 0)
    assert t.allocate_shared(b, 0, 0, -1, True) == s
    assert t.allocate_shared(a, 0, 0, -1, True) == -1  # a already holds that lane
    with pytest.raises(ValueError, match="still holds 2"):
        t.free_group(g)
    t.release_shared(s, a)
    t.release_shared(s, b)
    t.free_group(g)
    with pytest.raises(ValueError, match="not registered"):
        t.allocate_shared(a, 0, 0)
    g2 = t.add_group()
    assert g2 == g
    k = t.add_group_op(g2)
    assert t.allocate_shared(k, 0, 0) == s


def test_shared_lane_too_small_is_skipped():
    t = SlotTable()
    t.add_node(1, 1.0, 100)
    t.add_node(1, 4.0, 100)
    g = t.add_group()
    small_op, big_op = t.add_group_op(g), t.add_group_op(g)
    s_small = t.allocate_shared(small_op, 0.5, 0)
    s_big = t.allocate_shared(big_op, 3.0, 0)
    assert s_small != s_big and t.node_of(s_big) != t.node_of(s_small)


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["add", "alloc", "alloc", "alloc", "release", "release", "remove"]),
        st.integers(0, 10**6),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(ops_strategy)
def test_matches_reference_model(ops):
    t, m = SlotTable(), ModelTable()
    sizes = [(1.0, 1024), (2.0, 2048), (0.5, 4096)]
    live = []
    for op, r in ops:
        if op == "add" or not m.nodes:
            cpu, mem = sizes[r % 3]
            n_slots = 1 + r % 5
            n = t.add_node(n_slots, cpu, mem)
            m.add_node(n, t.node_slots_of(n), cpu, mem)
        elif op == "alloc":
            cpu = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0][r % 6]
            mem = [0, 1024, 2048, 4096][(r // 7) % 4]
            nodes = sorted(m.nodes)
            preferred = nodes[r % len(nodes)] if r % 3 == 0 else -1
            expected = m.allocate(cpu, mem, preferred)
            got = t.allocate(cpu, mem, preferred)
            assert got == expected
            if got >= 0:
                live.append(got)
        elif op == "release" and live:
            s = live.pop(r % len(live))
            t.release(s)
            m.release(s)
        elif op == "remove":
            idle = sorted(n for n in m.nodes if not any(m.owner[s] == n for s in live))
            if idle:
                n = idle[r % len(idle)]
                t.remove_node(n)
                m.remove_node(n)
        assert t.free_slots == m.free_slots()
        assert t.total_slots == sum(len(v["slots"]) for v in m.nodes.values())
        assert t.allocated_cpu_cores == pytest.approx(sum(m.nodes[m.owner[s]]["cpu"] for s in live))
        assert t.allocated_memory_mb == sum(m.nodes[m.owner[s]]["mem"] for s in live)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, 10**6)), max_size=150))
def test_sharing_never_doubles_an_operator_and_packs(events):
    t = SlotTable()
    t.add_node(6, 1.0, 1024)
    t.add_node(6, 1.0, 1024)
    g = t.add_group()
    ops = [t.add_group_op(g) for _ in range(5)]
    held = {k: [] for k in ops}
    for op_i, alloc, r in events:
        k = ops[op_i]
        live = set().union(*held.values())
        if alloc or not held[k]:
            joinable = live - set(held[k])
            s = t.allocate_shared(k, 0, 0)
            if joinable:
                # a live shared slot that k does not hold is always used first
                assert s in joinable
            elif len(live) < 12:
                assert s >= 0 and s not in live
            else:
                assert s == -1
            if s >= 0:
                held[k].append(s)
        else:
            s = held[k].pop(r % len(held[k]))
            t.release_shared(s, k)
        occupancy = {}
        for slots in held.values():
            assert len(slots) == len(set(slots))  # never two subtasks of one operator
            for s in slots:
                occupancy[s] = occupancy.get(s, 0) + 1
        assert t.free_slots == 12 - len(occupancy)
        assert t.group_refs_of(g) == sum(occupancy.values())
        for s, c in occupancy.items():
            assert t.refs_of(s) == c and t.group_of(s) == g

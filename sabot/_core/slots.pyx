# cython: language_level=3
# distutils: language = c++
"""Slot table: the compiled core behind ``sabot.execution.SlotPool``.

All operations are O(1) (amortised, because the C++ vectors grow), except
choosing among slot *sizes*, which is O(P) for P distinct slot sizes (usually 1).

Placement policy, in order:

1. the preferred node, if it is alive, has a free slot and its slots fit;
2. otherwise the smallest slot size that fits (best fit: big slots stay free
   for big requests), and within it the node with the most free slots; ties go
   round robin (a node that just changed its free count goes to the back of its
   bucket). On a 2 x 4 cluster, eight requests land A, B, A, B, ... which is the
   spreading users of a small cluster expect.

Sharing groups follow Flink: every sharing group has *lanes*, one shared slot
each. A task of operator X joins a live lane that X does not hold yet, if there
is one, and otherwise opens a new lane on a free slot. So a slot never holds two
subtasks of the same operator, and a group of operators each of parallelism at
most N needs N slots. A lane's slot is freed when its last task leaves.
Joining and leaving are O(1); opening or closing a lane is O(operators in the
group), because the lane becomes (un)available to each of them.
"""

from libc.math cimport isfinite
from libc.stdint cimport int32_t, int64_t, uint8_t
from libcpp.vector cimport vector

import numpy as np

# A request fits a slot when it asks no more than the slot has; the slack
# absorbs float noise such as 0.1 + 0.2 > 0.3.
cdef double _CPU_EPS = 1e-9


cdef class NodeUsage:
    """Accounting of one node: slot count, free slots, per-slot resources."""

    @staticmethod
    cdef NodeUsage new(int node, int num_slots, int free_slots,
                       double cpu, int64_t memory_mb):
        cdef NodeUsage u = NodeUsage.__new__(NodeUsage)
        u.node = node
        u.num_slots = num_slots
        u.free_slots = free_slots
        u.cpu_cores_per_slot = cpu
        u.memory_mb_per_slot = memory_mb
        return u

    @property
    def allocated_slots(self):
        return self.num_slots - self.free_slots

    @property
    def total_cpu_cores(self):
        return self.num_slots * self.cpu_cores_per_slot

    @property
    def allocated_cpu_cores(self):
        return (self.num_slots - self.free_slots) * self.cpu_cores_per_slot

    @property
    def total_memory_mb(self):
        return self.num_slots * self.memory_mb_per_slot

    @property
    def allocated_memory_mb(self):
        return (self.num_slots - self.free_slots) * self.memory_mb_per_slot

    def __repr__(self):
        return (f"NodeUsage(node={self.node}, num_slots={self.num_slots}, "
                f"free_slots={self.free_slots}, cpu_cores_per_slot={self.cpu_cores_per_slot}, "
                f"memory_mb_per_slot={self.memory_mb_per_slot})")


cdef inline int32_t _pop(vector[int32_t]& v) noexcept nogil:
    cdef int32_t x = v.back()
    v.pop_back()
    return x


cdef class SlotTable:
    """Int-indexed slot table. Not thread-safe: one thread owns it.

    Example:
        >>> t = SlotTable()
        >>> n = t.add_node(4, 1.0, 1024)
        >>> s = t.allocate(0.5, 256)
        >>> t.release(s)
        0
    """

    def __cinit__(self):
        self.total_slots = 0
        self.free_slots = 0
        self.num_nodes = 0

    # ------------------------------------------------------------------ internals

    cdef bint _fits(self, int32_t profile, double cpu, int64_t memory_mb) noexcept nogil:
        return (cpu <= self.prof_cpu[profile] + _CPU_EPS
                and memory_mb <= self.prof_memory[profile])

    cdef void _bucket_unlink(self, int32_t node) noexcept nogil:
        cdef int32_t p = self.node_profile[node]
        cdef int32_t c = self.node_num_free[node]
        cdef int32_t prev = self.node_bucket_prev[node]
        cdef int32_t nxt = self.node_bucket_next[node]
        if prev >= 0:
            self.node_bucket_next[prev] = nxt
        else:
            self.prof_bucket_head[p][c] = nxt
        if nxt >= 0:
            self.node_bucket_prev[nxt] = prev
        else:
            self.prof_bucket_tail[p][c] = prev
        self.node_bucket_prev[node] = -1
        self.node_bucket_next[node] = -1

    cdef void _bucket_append(self, int32_t node) noexcept nogil:
        cdef int32_t p = self.node_profile[node]
        cdef int32_t c = self.node_num_free[node]
        cdef int32_t tail = self.prof_bucket_tail[p][c]
        self.node_bucket_prev[node] = tail
        self.node_bucket_next[node] = -1
        if tail >= 0:
            self.node_bucket_next[tail] = node
        else:
            self.prof_bucket_head[p][c] = node
        self.prof_bucket_tail[p][c] = node
        if c > self.prof_max_free[p]:
            self.prof_max_free[p] = c

    cdef int32_t _pick_node(self, double cpu, int64_t memory_mb,
                            int32_t preferred) noexcept nogil:
        cdef int32_t p, best = -1
        cdef size_t nprof = self.prof_cpu.size()
        if (preferred >= 0 and <size_t>preferred < self.node_alive.size()
                and self.node_alive[preferred] and self.node_num_free[preferred] > 0
                and self._fits(self.node_profile[preferred], cpu, memory_mb)):
            return preferred
        for p in range(<int32_t>nprof):
            if self.prof_max_free[p] > 0 and self._fits(p, cpu, memory_mb):
                if (best < 0 or self.prof_cpu[p] < self.prof_cpu[best]
                        or (self.prof_cpu[p] == self.prof_cpu[best]
                            and self.prof_memory[p] < self.prof_memory[best])):
                    best = p
        if best < 0:
            return -1
        return self.prof_bucket_head[best][self.prof_max_free[best]]

    cdef int32_t _take_slot(self, int32_t node) noexcept nogil:
        """Pop a free slot of ``node`` (which must have one)."""
        cdef int32_t s = self.node_free_head[node]
        cdef int32_t p = self.node_profile[node]
        cdef int32_t c = self.node_num_free[node]
        self.node_free_head[node] = self.slot_next_free[s]
        self.slot_next_free[s] = -1
        self._bucket_unlink(node)
        self.node_num_free[node] = c - 1
        self._bucket_append(node)
        if self.prof_max_free[p] == c and self.prof_bucket_head[p][c] < 0:
            self.prof_max_free[p] = c - 1
        self.slot_state[s] = SLOT_ALLOCATED
        self.free_slots -= 1
        self.prof_free_slots[p] -= 1
        return s

    cdef void _give_slot(self, int32_t s) noexcept nogil:
        """Push an allocated slot back on its node's free stack."""
        cdef int32_t node = self.slot_node[s]
        cdef int32_t p = self.node_profile[node]
        self.slot_next_free[s] = self.node_free_head[node]
        self.node_free_head[node] = s
        self._bucket_unlink(node)
        self.node_num_free[node] += 1
        self._bucket_append(node)
        self.slot_state[s] = SLOT_FREE
        self.slot_refs[s] = 0
        self.slot_group[s] = -1
        self.slot_lane[s] = -1
        self.free_slots += 1
        self.prof_free_slots[p] += 1

    cdef int32_t _allocate(self, double cpu, int64_t memory_mb,
                           int32_t preferred) noexcept nogil:
        cdef int32_t n = self._pick_node(cpu, memory_mb, preferred)
        cdef int32_t s
        if n < 0:
            return -1
        s = self._take_slot(n)
        self.slot_refs[s] = 1
        return s

    cdef int _release(self, int32_t s) noexcept nogil:
        """0 on success; -1 no such slot, -2 not allocated, -3 shared slot."""
        if s < 0 or <size_t>s >= self.slot_state.size():
            return -1
        if self.slot_state[s] != SLOT_ALLOCATED:
            return -2
        if self.slot_group[s] >= 0:
            return -3
        self._give_slot(s)
        return 0

    cdef int _avail_add(self, int32_t k, int32_t lane) except -1:
        cdef vector[int32_t]* pos = &self.gop_pos[k]
        if <size_t>lane >= pos.size():
            pos.resize(lane + 1, -1)
        pos[0][lane] = <int32_t>self.gop_avail[k].size()
        self.gop_avail[k].push_back(lane)
        return 0

    cdef void _avail_remove(self, int32_t k, int32_t lane) noexcept nogil:
        cdef vector[int32_t]* avail = &self.gop_avail[k]
        cdef int32_t p = self.gop_pos[k][lane]
        cdef int32_t last = avail.back()
        avail[0][p] = last
        self.gop_pos[k][last] = p
        avail.pop_back()
        self.gop_pos[k][lane] = -1

    cdef int32_t _allocate_shared(self, int32_t k, double cpu, int64_t memory_mb,
                                  int32_t preferred, bint join_only) except -2:
        cdef int32_t g = self.gop_group[k]
        cdef vector[int32_t]* lanes = &self.group_lane_slot[g]
        cdef vector[int32_t]* dead = &self.group_dead_lanes[g]
        cdef vector[int32_t]* ops = &self.group_ops[g]
        cdef int32_t lane, s, n, j
        cdef size_t i
        # 1. join a live shared slot of the group that this operator does not hold.
        #    Only the most recent candidate is checked: when the group's slots
        #    differ in size and it is too small, a new slot is taken instead
        #    (keeps this O(1); slots of one size never hit that case).
        if self.gop_avail[k].size() > 0:
            lane = self.gop_avail[k].back()
            s = lanes[0][lane]
            if self._fits(self.node_profile[self.slot_node[s]], cpu, memory_mb):
                self._avail_remove(k, lane)
                self.slot_refs[s] += 1
                self.group_refs[g] += 1
                return s
        if join_only:
            return -1
        # 2. a new shared slot on a dead lane (or a new lane); it becomes
        #    available to every other operator of the group
        n = self._pick_node(cpu, memory_mb, preferred)
        if n < 0:
            return -1
        if dead.size() > 0:
            lane = dead.back()
        else:
            lane = <int32_t>lanes.size()
            lanes.push_back(-1)
        for i in range(ops.size()):
            j = ops[0][i]
            if j != k:
                self._avail_add(j, lane)
        if dead.size() > 0 and dead.back() == lane:
            dead.pop_back()
        s = self._take_slot(n)
        lanes[0][lane] = s
        self.slot_group[s] = g
        self.slot_lane[s] = lane
        self.slot_refs[s] = 1
        self.group_refs[g] += 1
        return s

    cdef int _release_shared(self, int32_t s, int32_t k) except -1:
        cdef int32_t g = self.gop_group[k]
        cdef int32_t lane = self.slot_lane[s]
        cdef vector[int32_t]* ops = &self.group_ops[g]
        cdef int32_t j
        cdef size_t i
        if self.slot_refs[s] > 1:
            self._avail_add(k, lane)
            self.slot_refs[s] -= 1
            self.group_refs[g] -= 1
            return 0
        # last task leaves: the lane dies; it was available to every other operator
        self.group_dead_lanes[g].push_back(lane)
        for i in range(ops.size()):
            j = ops[0][i]
            if j != k:
                self._avail_remove(j, lane)
        self.group_lane_slot[g][lane] = -1
        self.group_refs[g] -= 1
        self._give_slot(s)
        return 0

    cdef int _check_node(self, int node) except -1:
        if node < 0 or <size_t>node >= self.node_alive.size() or not self.node_alive[node]:
            raise ValueError(f"node index {node} is not a registered node "
                             f"({self.num_nodes} nodes registered)")
        return 0

    cdef int _check_slot(self, int slot) except -1:
        if slot < 0 or <size_t>slot >= self.slot_state.size() or self.slot_state[slot] == SLOT_RETIRED:
            raise ValueError(f"slot index {slot} is not a slot of a registered node "
                             f"({self.total_slots} slots registered)")
        return 0

    cdef int _check_gop(self, int k) except -1:
        if k < 0 or <size_t>k >= self.gop_group.size() or self.gop_group[k] < 0:
            raise ValueError(f"group operator index {k} is not registered "
                             f"(use add_group_op to register one)")
        return 0

    # -------------------------------------------------------------- nodes

    cpdef int add_node(self, int num_slots, double cpu_cores_per_slot,
                       int64_t memory_mb_per_slot) except -1:
        """Register a node of ``num_slots`` equal slots; return its node index."""
        cdef int32_t p = -1, i, n, s
        cdef size_t j
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        if not isfinite(cpu_cores_per_slot) or cpu_cores_per_slot < 0:
            raise ValueError(f"cpu_cores_per_slot must be a finite number >= 0, "
                             f"got {cpu_cores_per_slot}")
        if memory_mb_per_slot < 0:
            raise ValueError(f"memory_mb_per_slot must be >= 0, got {memory_mb_per_slot}")
        for j in range(self.prof_cpu.size()):
            if (self.prof_cpu[j] == cpu_cores_per_slot
                    and self.prof_memory[j] == memory_mb_per_slot):
                p = <int32_t>j
                break
        if p < 0:
            p = <int32_t>self.prof_cpu.size()
            self.prof_cpu.push_back(cpu_cores_per_slot)
            self.prof_memory.push_back(memory_mb_per_slot)
            self.prof_num_nodes.push_back(0)
            self.prof_total_slots.push_back(0)
            self.prof_free_slots.push_back(0)
            self.prof_max_free.push_back(0)
            self.prof_bucket_head.push_back(vector[int32_t]())
            self.prof_bucket_tail.push_back(vector[int32_t]())
        if self.prof_bucket_head[p].size() < <size_t>(num_slots + 1):
            self.prof_bucket_head[p].resize(num_slots + 1, -1)
            self.prof_bucket_tail[p].resize(num_slots + 1, -1)

        if self.free_node_ids.size() > 0:
            n = _pop(self.free_node_ids)
        else:
            n = <int32_t>self.node_alive.size()
            self.node_alive.push_back(0)
            self.node_profile.push_back(-1)
            self.node_free_head.push_back(-1)
            self.node_num_free.push_back(0)
            self.node_num_slots.push_back(0)
            self.node_bucket_prev.push_back(-1)
            self.node_bucket_next.push_back(-1)
            self.node_slots.push_back(vector[int32_t]())
        self.node_alive[n] = 1
        self.node_profile[n] = p
        self.node_free_head[n] = -1
        self.node_num_slots[n] = num_slots
        self.node_slots[n].clear()
        self.node_slots[n].reserve(num_slots)
        for i in range(num_slots):
            if self.free_slot_ids.size() > 0:
                s = _pop(self.free_slot_ids)
            else:
                s = <int32_t>self.slot_state.size()
                self.slot_node.push_back(-1)
                self.slot_next_free.push_back(-1)
                self.slot_refs.push_back(0)
                self.slot_group.push_back(-1)
                self.slot_lane.push_back(-1)
                self.slot_state.push_back(SLOT_RETIRED)
            self.slot_node[s] = n
            self.slot_refs[s] = 0
            self.slot_group[s] = -1
            self.slot_lane[s] = -1
            self.slot_state[s] = SLOT_FREE
            self.node_slots[n].push_back(s)
        # free stack in reverse, so the node's first slot is handed out first
        for i in range(num_slots - 1, -1, -1):
            s = self.node_slots[n][i]
            self.slot_next_free[s] = self.node_free_head[n]
            self.node_free_head[n] = s
        self.node_num_free[n] = num_slots
        self._bucket_append(n)
        self.prof_num_nodes[p] += 1
        self.prof_total_slots[p] += num_slots
        self.prof_free_slots[p] += num_slots
        self.total_slots += num_slots
        self.free_slots += num_slots
        self.num_nodes += 1
        return n

    cpdef object remove_node(self, int node):
        """Retire a node whose slots are all free; return its slot indices.

        Release the node's tasks first (the Python layer does, so that it can
        report them); a node with allocated slots raises ValueError.
        """
        cdef int32_t p, c, s
        cdef size_t j
        cdef int busy
        self._check_node(node)
        busy = self.node_num_slots[node] - self.node_num_free[node]
        if busy:
            raise ValueError(f"node index {node} still has {busy} allocated slot(s); "
                             f"release them before removing the node")
        p = self.node_profile[node]
        c = self.node_num_free[node]
        self._bucket_unlink(node)
        while self.prof_max_free[p] > 0 and self.prof_bucket_head[p][self.prof_max_free[p]] < 0:
            self.prof_max_free[p] -= 1
        out = []
        for j in range(self.node_slots[node].size()):
            s = self.node_slots[node][j]
            out.append(s)
            self.slot_state[s] = SLOT_RETIRED
            self.slot_node[s] = -1
            self.slot_next_free[s] = -1
            self.free_slot_ids.push_back(s)
        self.node_slots[node].clear()
        self.prof_num_nodes[p] -= 1
        self.prof_total_slots[p] -= c
        self.prof_free_slots[p] -= c
        self.total_slots -= c
        self.free_slots -= c
        self.num_nodes -= 1
        self.node_alive[node] = 0
        self.node_num_slots[node] = 0
        self.node_num_free[node] = 0
        self.node_free_head[node] = -1
        self.free_node_ids.push_back(node)
        return out

    # -------------------------------------------------------------- exclusive slots

    cpdef int allocate(self, double cpu_cores, int64_t memory_mb,
                       int preferred_node=-1) except -2:
        """Allocate a slot of its own; return the slot index, or -1 if none fits."""
        if preferred_node >= 0:
            self._check_node(preferred_node)
        return self._allocate(cpu_cores, memory_mb, preferred_node)

    cpdef int release(self, int slot) except -1:
        """Free a slot taken by :meth:`allocate`."""
        cdef int rc = self._release(slot)
        if rc == 0:
            return 0
        if rc == -1:
            raise ValueError(f"slot index {slot} does not exist "
                             f"({self.slot_state.size()} slot indices in use)")
        if rc == -2:
            raise ValueError(f"slot index {slot} is not allocated")
        raise ValueError(f"slot index {slot} is shared by sharing group "
                         f"{self.slot_group[slot]}; release it with release_shared")

    def allocate_many(self, Py_ssize_t count, double cpu_cores, int64_t memory_mb,
                      int preferred_node=-1):
        """Allocate ``count`` exclusive slots in one call (GIL released).

        Returns an int32 array of slot indices; entries past the point where the
        table ran out of fitting slots are -1.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if preferred_node >= 0:
            self._check_node(preferred_node)
        out = np.full(count, -1, dtype=np.int32)
        cdef int32_t[::1] view = out
        cdef Py_ssize_t i
        cdef int32_t s
        with nogil:
            for i in range(count):
                s = self._allocate(cpu_cores, memory_mb, preferred_node)
                if s < 0:
                    break
                view[i] = s
        return out

    def release_many(self, slots):
        """Release every slot index in ``slots`` (an int32 array; GIL released).

        Stops at the first index that is not an allocated exclusive slot and
        raises ValueError naming it; the slots before it are released.
        """
        cdef const int32_t[::1] view = np.ascontiguousarray(slots, dtype=np.int32)
        cdef Py_ssize_t i, n = view.shape[0], bad = -1
        cdef int rc = 0
        with nogil:
            for i in range(n):
                rc = self._release(view[i])
                if rc != 0:
                    bad = i
                    break
        if bad >= 0:
            raise ValueError(f"release_many: entry {bad} (slot index {view[bad]}) is not an "
                             f"allocated exclusive slot (code {rc}); entries before it were released")
        return n

    # -------------------------------------------------------------- sharing groups

    cpdef int add_group(self) except -1:
        """Create a sharing group; return its index."""
        cdef int32_t g
        if self.free_group_ids.size() > 0:
            g = _pop(self.free_group_ids)
        else:
            g = <int32_t>self.group_alive.size()
            self.group_alive.push_back(0)
            self.group_refs.push_back(0)
            self.group_lane_slot.push_back(vector[int32_t]())
            self.group_dead_lanes.push_back(vector[int32_t]())
            self.group_ops.push_back(vector[int32_t]())
        self.group_alive[g] = 1
        self.group_refs[g] = 0
        self.group_lane_slot[g].clear()
        self.group_dead_lanes[g].clear()
        self.group_ops[g].clear()
        return g

    cpdef int add_group_op(self, int group) except -1:
        """Register an operator of ``group``; return its (group, operator) index."""
        cdef int32_t k, lane
        cdef size_t i
        if group < 0 or <size_t>group >= self.group_alive.size() or not self.group_alive[group]:
            raise ValueError(f"sharing group index {group} is not registered")
        if self.free_gop_ids.size() > 0:
            k = _pop(self.free_gop_ids)
        else:
            k = <int32_t>self.gop_group.size()
            self.gop_group.push_back(-1)
            self.gop_avail.push_back(vector[int32_t]())
            self.gop_pos.push_back(vector[int32_t]())
        self.gop_group[k] = group
        self.gop_avail[k].clear()
        self.gop_pos[k].clear()
        self.group_ops[group].push_back(k)
        # every live shared slot of the group is open to a new operator
        for i in range(self.group_lane_slot[group].size()):
            if self.group_lane_slot[group][i] >= 0:
                lane = <int32_t>i
                self._avail_add(k, lane)
        return k

    cpdef int free_group(self, int group) except -1:
        """Forget a sharing group that holds no slot (its indices are reused)."""
        cdef size_t j
        cdef int32_t k
        if group < 0 or <size_t>group >= self.group_alive.size() or not self.group_alive[group]:
            raise ValueError(f"sharing group index {group} is not registered")
        if self.group_refs[group] != 0:
            raise ValueError(f"sharing group index {group} still holds "
                             f"{self.group_refs[group]} task(s)")
        for j in range(self.group_ops[group].size()):
            k = self.group_ops[group][j]
            self.gop_group[k] = -1
            self.gop_avail[k].clear()
            self.gop_pos[k].clear()
            self.free_gop_ids.push_back(k)
        self.group_ops[group].clear()
        self.group_lane_slot[group].clear()
        self.group_dead_lanes[group].clear()
        self.group_alive[group] = 0
        self.free_group_ids.push_back(group)
        return 0

    cpdef int allocate_shared(self, int group_op, double cpu_cores, int64_t memory_mb,
                              int preferred_node=-1, bint join_only=False) except -2:
        """Place one task of a (group, operator) pair; return the slot or -1.

        Joins a live shared slot of the group that this operator does not hold
        yet and that fits the request (the preferred node is then ignored:
        sharing wins); else, unless ``join_only``, takes a new slot with the
        usual placement policy.
        """
        self._check_gop(group_op)
        if preferred_node >= 0:
            self._check_node(preferred_node)
        return self._allocate_shared(group_op, cpu_cores, memory_mb, preferred_node, join_only)

    cpdef int release_shared(self, int slot, int group_op) except -1:
        """Remove one task of ``group_op`` from shared ``slot``.

        The caller guarantees that this operator has a task in the slot (the
        Python layer keeps the task -> slot map). The slot is freed when its
        last task leaves.
        """
        self._check_gop(group_op)
        self._check_slot(slot)
        if self.slot_state[slot] != SLOT_ALLOCATED or self.slot_group[slot] != self.gop_group[group_op]:
            raise ValueError(f"slot index {slot} is not a shared slot of sharing group "
                             f"{self.gop_group[group_op]} (its group is {self.slot_group[slot]})")
        return self._release_shared(slot, group_op)

    # -------------------------------------------------------------- queries

    cpdef bint fits_any(self, double cpu_cores, int64_t memory_mb):
        """True if some registered slot (free or not) is big enough."""
        cdef size_t p
        for p in range(self.prof_cpu.size()):
            if self.prof_num_nodes[p] > 0 and self._fits(<int32_t>p, cpu_cores, memory_mb):
                return True
        return False

    cpdef bint can_allocate(self, double cpu_cores, int64_t memory_mb):
        """True if a free slot big enough exists right now."""
        cdef size_t p
        for p in range(self.prof_cpu.size()):
            if self.prof_max_free[p] > 0 and self._fits(<int32_t>p, cpu_cores, memory_mb):
                return True
        return False

    def slot_sizes(self):
        """Distinct (cpu_cores, memory_mb) slot sizes of the registered nodes."""
        cdef size_t p
        return [(self.prof_cpu[p], self.prof_memory[p])
                for p in range(self.prof_cpu.size()) if self.prof_num_nodes[p] > 0]

    def node_usage(self, int node):
        """Accounting of one node as a :class:`NodeUsage`."""
        self._check_node(node)
        cdef int32_t p = self.node_profile[node]
        return NodeUsage.new(node, self.node_num_slots[node], self.node_num_free[node],
                             self.prof_cpu[p], self.prof_memory[p])

    def node_slots_of(self, int node):
        """Slot indices of a node, in registration order."""
        self._check_node(node)
        return [s for s in self.node_slots[node]]

    def node_of(self, int slot):
        """Node index that owns ``slot``."""
        self._check_slot(slot)
        return self.slot_node[slot]

    def refs_of(self, int slot):
        """Number of tasks in ``slot`` (0 when free)."""
        self._check_slot(slot)
        return self.slot_refs[slot]

    def is_allocated(self, int slot):
        self._check_slot(slot)
        return self.slot_state[slot] == SLOT_ALLOCATED

    def group_of(self, int slot):
        """Sharing group index of ``slot``, or -1 for an exclusive / free slot."""
        self._check_slot(slot)
        return self.slot_group[slot]

    def group_refs_of(self, int group):
        """Number of tasks of ``group`` currently placed."""
        if group < 0 or <size_t>group >= self.group_alive.size() or not self.group_alive[group]:
            raise ValueError(f"sharing group index {group} is not registered")
        return self.group_refs[group]

    @property
    def allocated_slots(self):
        return self.total_slots - self.free_slots

    @property
    def total_cpu_cores(self):
        cdef size_t p
        return sum(self.prof_cpu[p] * self.prof_total_slots[p] for p in range(self.prof_cpu.size()))

    @property
    def allocated_cpu_cores(self):
        cdef size_t p
        return sum(self.prof_cpu[p] * (self.prof_total_slots[p] - self.prof_free_slots[p])
                   for p in range(self.prof_cpu.size()))

    @property
    def total_memory_mb(self):
        cdef size_t p
        return sum(self.prof_memory[p] * self.prof_total_slots[p] for p in range(self.prof_cpu.size()))

    @property
    def allocated_memory_mb(self):
        cdef size_t p
        return sum(self.prof_memory[p] * (self.prof_total_slots[p] - self.prof_free_slots[p])
                   for p in range(self.prof_cpu.size()))

    def __repr__(self):
        return (f"SlotTable(nodes={self.num_nodes}, total_slots={self.total_slots}, "
                f"free_slots={self.free_slots})")

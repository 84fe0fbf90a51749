# cython: language_level=3
"""Contract of the slot table (``sabot._core.slots``).

Everything is an int index here: nodes, slots, sharing groups and
(sharing group, operator) pairs. ``sabot.execution.slot_pool`` maps them to
``Slot`` objects and string ids.

Layout (structure of arrays, C++ vectors indexed by the int ids):

* slots: owning node, state, task count, sharing group and lane, and the
  intrusive link of their node's free stack;
* nodes: slot size profile, free-stack head, free / total counts, the links of
  the "free count" bucket list of their profile, and the list of their slots;
* profiles (one per distinct slot size): cpu, memory, and buckets of nodes by
  number of free slots, with the highest non-empty bucket, so that "the node
  with the most free slots" is found in O(1);
* sharing groups: lane -> slot; a lane is one shared slot of the group;
* (group, operator) pairs: the set of live lanes the operator does not hold
  (a vector plus a lane -> position index), so that joining a shared slot is
  O(1) and an operator never holds two lanes of its group (Flink's rule that a
  slot never holds two subtasks of the same operator).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t
from libcpp.vector cimport vector

cdef enum SlotStateCode:
    SLOT_FREE = 0
    SLOT_ALLOCATED = 1
    SLOT_RETIRED = 2      # index not in use (its node left, or never assigned)


cdef class NodeUsage:
    """Read-only accounting snapshot of one node (built by a cdef factory)."""
    cdef readonly int node
    cdef readonly int num_slots
    cdef readonly int free_slots
    cdef readonly double cpu_cores_per_slot
    cdef readonly int64_t memory_mb_per_slot

    @staticmethod
    cdef NodeUsage new(int node, int num_slots, int free_slots,
                       double cpu, int64_t memory_mb)


cdef class SlotTable:
    # slots
    cdef vector[int32_t] slot_node
    cdef vector[int32_t] slot_next_free
    cdef vector[int32_t] slot_refs
    cdef vector[int32_t] slot_group
    cdef vector[int32_t] slot_lane
    cdef vector[uint8_t] slot_state
    cdef vector[int32_t] free_slot_ids

    # nodes
    cdef vector[uint8_t] node_alive
    cdef vector[int32_t] node_profile
    cdef vector[int32_t] node_free_head
    cdef vector[int32_t] node_num_free
    cdef vector[int32_t] node_num_slots
    cdef vector[int32_t] node_bucket_prev
    cdef vector[int32_t] node_bucket_next
    cdef vector[vector[int32_t]] node_slots
    cdef vector[int32_t] free_node_ids

    # slot size profiles
    cdef vector[double] prof_cpu
    cdef vector[int64_t] prof_memory
    cdef vector[int32_t] prof_num_nodes
    cdef vector[int64_t] prof_total_slots
    cdef vector[int64_t] prof_free_slots
    cdef vector[int32_t] prof_max_free
    cdef vector[vector[int32_t]] prof_bucket_head
    cdef vector[vector[int32_t]] prof_bucket_tail

    # sharing groups and (group, operator) pairs
    cdef vector[vector[int32_t]] group_lane_slot   # lane -> slot, -1 = dead lane
    cdef vector[vector[int32_t]] group_dead_lanes  # dead lanes, reused before new ones
    cdef vector[int64_t] group_refs
    cdef vector[uint8_t] group_alive
    cdef vector[vector[int32_t]] group_ops
    cdef vector[int32_t] free_group_ids
    cdef vector[int32_t] gop_group
    cdef vector[vector[int32_t]] gop_avail         # live lanes this operator does not hold
    cdef vector[vector[int32_t]] gop_pos           # lane -> position in gop_avail, or -1
    cdef vector[int32_t] free_gop_ids

    # totals
    cdef readonly int64_t total_slots
    cdef readonly int64_t free_slots
    cdef readonly int num_nodes
    # cpu / memory totals are properties computed from the per-profile counts,
    # so that they never drift by float rounding over millions of operations

    # internals (no Python objects, callable without the GIL)
    cdef bint _fits(self, int32_t profile, double cpu, int64_t memory_mb) noexcept nogil
    cdef void _bucket_unlink(self, int32_t node) noexcept nogil
    cdef void _bucket_append(self, int32_t node) noexcept nogil
    cdef int32_t _pick_node(self, double cpu, int64_t memory_mb,
                            int32_t preferred) noexcept nogil
    cdef int32_t _take_slot(self, int32_t node) noexcept nogil
    cdef void _give_slot(self, int32_t slot) noexcept nogil
    cdef int32_t _allocate(self, double cpu, int64_t memory_mb,
                           int32_t preferred) noexcept nogil
    cdef int _release(self, int32_t slot) noexcept nogil
    # these two grow C++ vectors (which may throw), so they keep the GIL
    cdef int32_t _allocate_shared(self, int32_t group_op, double cpu,
                                  int64_t memory_mb, int32_t preferred,
                                  bint join_only) except -2
    cdef int _release_shared(self, int32_t slot, int32_t group_op) except -1
    cdef int _avail_add(self, int32_t group_op, int32_t lane) except -1
    cdef void _avail_remove(self, int32_t group_op, int32_t lane) noexcept nogil
    cdef int _check_node(self, int node) except -1
    cdef int _check_slot(self, int slot) except -1
    cdef int _check_gop(self, int gop) except -1

    # Python-visible operations
    cpdef int add_node(self, int num_slots, double cpu_cores_per_slot,
                       int64_t memory_mb_per_slot) except -1
    cpdef object remove_node(self, int node)
    cpdef int allocate(self, double cpu_cores, int64_t memory_mb,
                       int preferred_node=*) except -2
    cpdef int release(self, int slot) except -1
    cpdef int add_group(self) except -1
    cpdef int add_group_op(self, int group) except -1
    cpdef int free_group(self, int group) except -1
    cpdef int allocate_shared(self, int group_op, double cpu_cores,
                              int64_t memory_mb, int preferred_node=*,
                              bint join_only=*) except -2
    cpdef int release_shared(self, int slot, int group_op) except -1
    cpdef bint fits_any(self, double cpu_cores, int64_t memory_mb)
    cpdef bint can_allocate(self, double cpu_cores, int64_t memory_mb)

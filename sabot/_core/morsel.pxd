# Module map of sabot._core.morsel: morsels (zero-copy slices of a batch) and a
# work-stealing scheduler that runs Python callables or nogil kernels over them.
#
# The queues are one packed 64-bit word per thread, (next << 32) | stop over a
# contiguous block of morsel indices: the owner takes from the front, thieves from
# the back, each with one compare-and-swap, so a take never needs the GIL or a lock.

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef class MorselScheduler:
    cdef readonly int num_threads
    cdef uint64_t* _queues       # one packed range per thread
    cdef int _cancel             # set (atomically) when a morsel failed
    cdef int _running            # one run at a time per scheduler

    cdef void _reset(self, int64_t num_morsels) noexcept
    cdef bint _take(self, int tid, int64_t* morsel) noexcept nogil

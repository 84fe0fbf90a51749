# Module map of sabot._core.state: the compiled keyed-state table behind keyed
# running aggregates (count / sum / min / max / mean per key, stored per key group).
#
# Layout (see state.pyx for the why):
#   * groups are dense ids 0..num_keys-1; every per-group attribute is a column
#     (numpy array of capacity _gcap) indexed by group id;
#   * an open-addressing table of _Slot {tag, gid} (power-of-two size, linear
#     probing, load <= 1/2) maps a key to its group id. For integer keys the tag is
#     the key itself, so a probe never leaves the slot array; for byte keys the tag
#     is the caller's 64-bit hash and the bytes are compared in the arena;
#   * the null key, if seen, is one group of its own (_null_gid), outside the slots.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t


cdef struct _Slot:
    uint64_t tag
    int64_t gid


# Packed multi-column keys (keypack.pxi): pack_keys / unpack_keys turn several key
# columns into one binary column of canonical bytes and back. One struct per key
# column describes its Arrow buffers to the nogil kernels.
cdef struct _PackCol:
    int kind                  # _PK_FIXED / _PK_BOOL / _PK_VAR32 / _PK_VAR64 / _PK_NULL
    int64_t width             # value bytes of fixed-width and boolean columns
    int64_t offset            # element offset of the array (also the validity bit offset)
    const uint8_t* validity   # NULL: no nulls
    const uint8_t* data       # values / offsets / boolean bitmap
    const uint8_t* vdata      # variable-width bytes


cdef struct _UnpackCol:
    int kind
    int64_t width
    bint large                # 64-bit offsets for variable-width output
    int64_t total             # variable width: bytes of values (counted by the scan)
    int64_t nulls
    uint8_t* validity         # zeroed bitmap; a bit is set per valid row
    uint8_t* data             # fixed values / offsets / boolean bitmap
    uint8_t* vdata


cdef class _ColumnState:
    """Partial aggregates of one value column, one entry per group."""
    cdef readonly str name
    cdef readonly bint is_float
    cdef readonly bint has_sum
    cdef readonly bint has_min
    cdef readonly bint has_max
    cdef object value_type           # Arrow type fixed at first sight (None before)
    cdef object cnt_arr, sum_arr, min_arr, max_arr
    cdef int64_t* cnt
    cdef void* sum
    cdef void* mn
    cdef void* mx

    cdef int _resize(self, int64_t old_n, int64_t new_cap) except -1
    cdef int _init_range(self, int64_t start, int64_t stop) except -1
    cdef int _bind(self) except -1


cdef class KeyedAggregateTable:
    cdef readonly object key_type
    cdef readonly str key_name
    cdef readonly int max_parallelism
    cdef readonly tuple aggregates
    cdef readonly int64_t num_keys

    cdef bint _var_width             # string / binary keys (bytes in the arena)
    cdef bint _busy                  # a kernel is running without the GIL
    cdef object _key_np_dtype        # numpy dtype of fixed-width key storage input
    cdef list _columns               # list[_ColumnState], in first-mention order
    cdef dict _column_index          # value column name -> _ColumnState

    # per-group columns (capacity _gcap)
    cdef int64_t _gcap
    cdef object _hash_arr, _kg_arr, _ikey_arr, _koff_arr, _rows_arr
    cdef uint64_t* _hash
    cdef int32_t* _kg
    cdef int64_t* _ikey              # integer keys (bit pattern as int64)
    cdef int64_t* _koff              # byte keys: offsets into the arena, num_keys+1 used
    cdef int64_t* _rows              # rows seen per group (count(*))
    cdef int64_t _null_gid

    # byte-key arena
    cdef object _arena_arr
    cdef uint8_t* _arena
    cdef int64_t _arena_cap

    # hash slots
    cdef object _slots_arr
    cdef _Slot* _slots
    cdef uint64_t _slot_mask
    cdef int _slot_shift

    cdef int _grow_groups(self, int64_t min_cap) except -1
    cdef int _grow_arena(self, int64_t min_cap) except -1
    cdef int _rebuild_slots(self, int64_t n_slots) except -1
    cdef int _bind(self) except -1
    cdef object _assign_groups(self, tuple prepared)

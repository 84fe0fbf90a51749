# Module map of sabot._core.partition: stable key hashing, key groups and the
# counting-sort scatter that splits one batch into P batches.
#
# Layout (see partition.pyx and docs/hash.md for the why):
#   * hash.pxi     the documented 64-bit key hash (xxHash64 of canonical bytes) and
#                  the per-type nogil kernels that write one uint64 per row;
#   * scatter.pxi  the push-scatter kernels: rows are read once, in order, and
#                  appended to P sequential output streams (fixed width, bits,
#                  variable width, row indices for nested types).
#
# repartition() runs the range kernels below on slices of one batch from several
# native threads (num_threads); every kernel touches only the rows [start, stop) it
# is given and needs no GIL.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t

# Column kinds understood by the hash kernel.
cdef enum ColKind:
    KIND_INT = 0        # signed integers and temporal types (sign-extended to 64 bits)
    KIND_UINT = 1       # unsigned integers (zero-extended to 64 bits)
    KIND_BOOL = 2       # bit-packed booleans (hashed as the integers 0 / 1)
    KIND_FLOAT32 = 3    # widened to float64, then normalised
    KIND_FLOAT64 = 4    # -0.0 -> 0.0, every NaN -> 0x7FF8000000000000
    KIND_BIN32 = 5      # string / binary: int32 offsets + bytes
    KIND_BIN64 = 6      # large_string / large_binary: int64 offsets + bytes
    KIND_FIXEDBIN = 7   # fixed_size_binary(width)
    KIND_DICT = 8       # dictionary: per-row hash = hash of dictionary[index]
    KIND_NULL = 9       # null type: every row is null


cdef struct ColSpec:
    int kind
    int width                   # value width in bytes (index width for KIND_DICT)
    bint index_signed           # KIND_DICT: signed index type
    int64_t offset              # the array's offset (elements / bits)
    const uint8_t* validity     # NULL when the column has no nulls
    const uint8_t* data         # values, bits or offsets
    const uint8_t* var_data     # KIND_BIN32/64: the bytes buffer
    const uint64_t* dict_hashes # KIND_DICT: hash of every dictionary value


cdef class HashPlan:
    """Pointers into the key columns of one batch, checked once with the GIL held."""
    cdef ColSpec* cols
    cdef readonly int num_columns
    cdef readonly int64_t num_rows
    cdef list _keep              # the arrays (and dictionary hashes) the pointers point into

    cdef int _add_column(self, int i, object arr) except -1


# Kernels over rows [start, stop); outputs are written from index 0 (the caller
# passes out + start). Nothing in them can fail.
cdef void hash_range(const ColSpec* cols, int ncols, int64_t start, int64_t stop,
                     uint64_t* out) noexcept nogil
cdef void partition_ids_range(const uint64_t* hashes, int64_t n, uint64_t max_parallelism,
                              const uint16_t* table, uint16_t* pids,
                              int64_t* kg_counts) noexcept nogil

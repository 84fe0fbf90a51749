# cython: language_level=3
"""Stable key hashing, key groups and repartitioning over Arrow buffers.

The hash is specified in ``docs/hash.md`` (xxHash64 of each value's canonical bytes,
nulls a constant, columns folded in order); key groups follow Flink:
``key_group = hash % max_parallelism`` and subtask ``i`` of ``p`` owns the contiguous
range of key groups ``g`` with ``g * p // max_parallelism == i``. An explicit
key-group -> subtask table (``assignment``) replaces the ranges after a rebalance.

``repartition`` computes partition ids (hash -> key group -> table lookup, counting
rows per key group on the way; 1-byte ids when P <= 256), turns the counts into
partition offsets and scatters every column in one sequential pass, so each output
keeps input order. Fixed-width columns of one width go through per-partition 64-byte
staging lines together (software write combining, non-temporal flushes). Large
batches split their rows over a few threads (``num_threads``): each thread hashes
and scatters a contiguous row range, its rows of partition p landing right after
those of the threads before it, so order is kept. All loops run without the GIL over
pointers into the Arrow buffers (offsets and validity bitmaps respected); nested
columns go through ``Array.take`` with the computed permutation.
"""

import logging
import os

import numpy as np
import pyarrow as pa

cimport cython
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free, malloc

from sabot.errors import SabotError

include "scatter.pxi"
include "hash.pxi"

log = logging.getLogger(__name__)

#: Hash of a null value (see docs/hash.md).
NULL_HASH = 0x9E3779B97F4A7C15
#: Largest supported max_parallelism (Flink's bound, 2**15).
MAX_MAX_PARALLELISM = 32768
#: Largest number of output partitions of one repartition (partition ids are uint16).
MAX_PARTITIONS = 65536
DEFAULT_MAX_PARALLELISM = 128

cdef uint8_t _EMPTY_BYTES[8]


class KeyColumnError(SabotError, ValueError):
    """A key column that the batch does not have (the message lists the columns it has)."""


class UnsupportedKeyType(SabotError, TypeError):
    """A key column whose Arrow type has no defined hash (the message names both)."""


_SUPPORTED = ("int8..int64, uint8..uint64, float32, float64, bool, date32/64, time32/64, "
              "timestamp, duration, string, large_string, binary, large_binary, "
              "fixed_size_binary, string_view/binary_view, dictionary of these, null")


cdef inline uint64_t _address(object buf):
    if buf is None:
        return <uint64_t>&_EMPTY_BYTES[0]
    return <uint64_t>buf.address


cdef class HashPlan:
    """The key columns of one batch as hashable pointers.

    Built with the GIL held (types checked, buffer addresses taken, dictionaries
    hashed); after that ``hash_range(plan.cols, plan.num_columns, ...)`` runs without it.
    """

    def __cinit__(self, arrays, names=None):
        arrays = list(arrays)
        if not arrays:
            raise ValueError("a key needs at least one column; got an empty list of key columns")
        self.num_columns = len(arrays)
        self.cols = <ColSpec*>calloc(self.num_columns, sizeof(ColSpec))
        if self.cols == NULL:
            raise MemoryError()
        self._keep = []
        self.num_rows = len(arrays[0])
        names = list(names) if names is not None else [f"#{i}" for i in range(len(arrays))]
        for i, arr in enumerate(arrays):
            if len(arr) != self.num_rows:
                raise ValueError(
                    f"key columns must have the same length: column {names[i]!r} has "
                    f"{len(arr)} rows, column {names[0]!r} has {self.num_rows}")
            try:
                self._add_column(i, arr)
            except UnsupportedKeyType as exc:
                raise UnsupportedKeyType(f"key column {names[i]!r}: {exc}") from None

    def __dealloc__(self):
        free(self.cols)

    cdef int _add_column(self, int i, object arr) except -1:
        cdef ColSpec* c = &self.cols[i]
        cdef object t = arr.type
        cdef object bufs
        cdef object dh
        cdef uint64_t[::1] dh_view
        if isinstance(t, pa.ExtensionType):
            arr = arr.storage
            t = arr.type
        if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            # Views hash their bytes like string/binary: cast to the offset layout.
            arr = arr.cast(pa.large_string() if pa.types.is_string_view(t) else pa.large_binary())
            t = arr.type
        self._keep.append(arr)
        c.offset = arr.offset
        c.validity = NULL
        c.var_data = NULL
        c.dict_hashes = NULL
        if pa.types.is_null(t):
            c.kind = KIND_NULL
            c.data = NULL
            return 0
        if pa.types.is_dictionary(t):
            indices = arr.indices
            dh = hash_columns(arr.dictionary) if len(arr.dictionary) else np.zeros(1, np.uint64)
            self._keep.append(indices)
            self._keep.append(dh)
            dh_view = dh
            c.kind = KIND_DICT
            c.width = t.index_type.bit_width // 8
            c.index_signed = pa.types.is_signed_integer(t.index_type)
            c.offset = indices.offset
            bufs = indices.buffers()
            if indices.null_count > 0:
                c.validity = <const uint8_t*><uint64_t>bufs[0].address
            c.data = <const uint8_t*>_address(bufs[1])
            c.dict_hashes = &dh_view[0]
            return 0
        bufs = arr.buffers()
        if arr.null_count > 0:
            c.validity = <const uint8_t*><uint64_t>bufs[0].address
        c.data = <const uint8_t*>_address(bufs[1])
        if pa.types.is_signed_integer(t) or pa.types.is_temporal(t) and not pa.types.is_interval(t):
            c.kind = KIND_INT
            c.width = t.bit_width // 8
        elif pa.types.is_unsigned_integer(t):
            c.kind = KIND_UINT
            c.width = t.bit_width // 8
        elif pa.types.is_boolean(t):
            c.kind = KIND_BOOL
            c.width = 0
        elif t == pa.float64():
            c.kind = KIND_FLOAT64
            c.width = 8
        elif t == pa.float32():
            c.kind = KIND_FLOAT32
            c.width = 4
        elif pa.types.is_string(t) or pa.types.is_binary(t):
            c.kind = KIND_BIN32
            c.var_data = <const uint8_t*>_address(bufs[2])
        elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            c.kind = KIND_BIN64
            c.var_data = <const uint8_t*>_address(bufs[2])
        elif pa.types.is_fixed_size_binary(t) and not pa.types.is_decimal(t):
            c.kind = KIND_FIXEDBIN
            c.width = t.byte_width
        else:
            raise UnsupportedKeyType(f"type {t} cannot be hashed as a key; supported: {_SUPPORTED}")
        return 0


# --------------------------------------------------------------------------- inputs

def _field_index(names, key, what):
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if not 0 <= key < len(names):
            raise KeyColumnError(
                f"key column index {key} is out of range: the {what} has {len(names)} columns {names}")
        return int(key)
    if not isinstance(key, str):
        raise TypeError(f"a key column is a column name (str) or index (int), got {key!r}")
    hits = [i for i, n in enumerate(names) if n == key]
    if not hits:
        raise KeyColumnError(f"key column {key!r} is not in the {what}; its columns are {names}")
    if len(hits) > 1:
        raise KeyColumnError(f"key column {key!r} is ambiguous: the {what} has {len(hits)} columns of that name")
    return hits[0]


def _as_array(col):
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if isinstance(col, pa.Array):
        return col
    raise TypeError(f"expected a pyarrow Array or ChunkedArray, got {type(col).__name__}")


def _key_list(key_columns):
    if key_columns is None:
        return None
    if isinstance(key_columns, (str, int, np.integer)):
        return [key_columns]
    keys = list(key_columns)
    if not keys:
        raise ValueError("key_columns is empty: name at least one key column")
    return keys


def _resolve_key_arrays(data, key_columns):
    """(arrays, names) of the key columns of data."""
    keys = _key_list(key_columns)
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        what = "batch" if isinstance(data, pa.RecordBatch) else "table"
        names = data.schema.names
        idx = list(range(len(names))) if keys is None else [_field_index(names, k, what) for k in keys]
        if not idx:
            raise ValueError(f"the {what} has no columns to hash")
        return [_as_array(data.column(i)) for i in idx], [names[i] for i in idx]
    if keys is not None:
        raise TypeError("key_columns applies to a RecordBatch or Table; "
                        f"got key_columns={key_columns!r} with a {type(data).__name__}")
    if isinstance(data, (pa.Array, pa.ChunkedArray)):
        return [_as_array(data)], ["#0"]
    if isinstance(data, (list, tuple)):
        return [_as_array(a) for a in data], [f"#{i}" for i in range(len(data))]
    raise TypeError("hash_columns takes a pyarrow RecordBatch, Table, Array, ChunkedArray or a "
                    f"list of Arrays, got {type(data).__name__}")


def _check_max_parallelism(max_parallelism):
    if isinstance(max_parallelism, bool) or not isinstance(max_parallelism, (int, np.integer)):
        raise TypeError(f"max_parallelism must be an int, got {max_parallelism!r}")
    if not 1 <= max_parallelism <= MAX_MAX_PARALLELISM:
        raise ValueError(f"max_parallelism must be in 1..{MAX_MAX_PARALLELISM}, got {max_parallelism}")
    return int(max_parallelism)


def _check_parallelism(parallelism, max_parallelism, name="parallelism"):
    if isinstance(parallelism, bool) or not isinstance(parallelism, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {parallelism!r}")
    if not 1 <= parallelism <= max_parallelism:
        raise ValueError(f"{name} must be in 1..max_parallelism={max_parallelism}, got {parallelism}")
    return int(parallelism)


# --------------------------------------------------------------------------- hashing

def hash_columns(data, key_columns=None):
    """Stable 64-bit key hash of every row (see docs/hash.md).

    Args:
        data: a ``pyarrow.RecordBatch`` or ``Table`` (hash ``key_columns``, all columns
            when None), an ``Array``/``ChunkedArray``, or a list of Arrays (one key).
        key_columns: column name(s) or index(es), combined in the order given.

    Returns:
        numpy.ndarray of uint64, one hash per row.

    Example:
        >>> hash_columns(pa.array([1, None]))  # doctest: +SKIP
        array([..., 11400714819323198485], dtype=uint64)
    """
    arrays, names = _resolve_key_arrays(data, key_columns)
    cdef HashPlan plan = HashPlan(arrays, names)
    out = np.empty(plan.num_rows, dtype=np.uint64)
    cdef uint64_t[::1] ov = out
    if plan.num_rows:
        with nogil:
            hash_range(plan.cols, plan.num_columns, 0, plan.num_rows, &ov[0])
    return out


def _as_hashes(hashes):
    if isinstance(hashes, (pa.Array, pa.ChunkedArray)):
        if hashes.type != pa.uint64() or hashes.null_count:
            raise TypeError(f"hashes must be uint64 without nulls, got {hashes.type} "
                            f"with {hashes.null_count} nulls")
        hashes = hashes.to_numpy()
    h = np.asarray(hashes)
    if h.dtype != np.uint64:
        raise TypeError(f"hashes must be a uint64 array (from hash_columns), got dtype {h.dtype}")
    if h.ndim != 1:
        raise ValueError(f"hashes must be one-dimensional, got shape {h.shape}")
    return np.ascontiguousarray(h)


def key_groups(hashes, max_parallelism):
    """Key group of each hash: ``hash % max_parallelism`` as an int32 numpy array."""
    cdef uint64_t mp = _check_max_parallelism(max_parallelism)
    h = _as_hashes(hashes)
    out = np.empty(len(h), dtype=np.int32)
    cdef const uint64_t[::1] hv = h
    cdef int32_t[::1] ov = out
    cdef int64_t i, n = len(h)
    cdef uint64_t mask = mp - 1
    with nogil:
        if mp & mask == 0:
            for i in range(n):
                ov[i] = <int32_t>(hv[i] & mask)
        else:
            for i in range(n):
                ov[i] = <int32_t>(hv[i] % mp)
    return out


def key_group(hash_value, max_parallelism):
    """Key group of one hash value (a Python int in [0, 2**64))."""
    mp = _check_max_parallelism(max_parallelism)
    h = int(hash_value)
    if not 0 <= h < 1 << 64:
        raise ValueError(f"a hash is an unsigned 64-bit value, got {hash_value!r}")
    return h % mp


def subtask_for_key_group(key_group, max_parallelism, parallelism):
    """Subtask owning ``key_group`` under the default range assignment (Flink's
    ``key_group * parallelism // max_parallelism``)."""
    mp = _check_max_parallelism(max_parallelism)
    p = _check_parallelism(parallelism, mp)
    kg = int(key_group)
    if not 0 <= kg < mp:
        raise ValueError(f"key_group must be in 0..{mp - 1} (max_parallelism={mp}), got {key_group}")
    return kg * p // mp


def key_group_range(subtask, max_parallelism, parallelism):
    """Half-open range ``(start, stop)`` of key groups that ``subtask`` owns by default.

    Exactly the key groups ``g`` with ``subtask_for_key_group(g, ...) == subtask``;
    the ranges of subtasks 0..parallelism-1 tile 0..max_parallelism-1.
    """
    mp = _check_max_parallelism(max_parallelism)
    p = _check_parallelism(parallelism, mp)
    s = int(subtask)
    if not 0 <= s < p:
        raise ValueError(f"subtask must be in 0..{p - 1} (parallelism={p}), got {subtask}")
    # smallest g with g*p//mp >= s is ceil(s*mp/p)
    return (s * mp + p - 1) // p, ((s + 1) * mp + p - 1) // p


def default_assignment(max_parallelism, parallelism):
    """Key group -> subtask table (int32, length max_parallelism) of the range assignment."""
    mp = _check_max_parallelism(max_parallelism)
    p = _check_parallelism(parallelism, mp)
    return (np.arange(mp, dtype=np.int64) * p // mp).astype(np.int32)


def _partition_table(num_partitions, assignment, max_parallelism):
    """(uint16 key group -> partition table, number of partitions)."""
    mp = _check_max_parallelism(max_parallelism)
    if assignment is None:
        if num_partitions is None:
            raise ValueError("give num_partitions or an assignment table (key group -> partition)")
        p = _check_parallelism(num_partitions, mp, "num_partitions")
        return (np.arange(mp, dtype=np.int64) * p // mp).astype(np.uint16), p
    if isinstance(assignment, (pa.Array, pa.ChunkedArray)):
        assignment = assignment.to_numpy(zero_copy_only=False)
    a = np.asarray(assignment)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise TypeError(f"assignment must be a 1-D integer array (key group -> partition), "
                        f"got dtype {a.dtype} with shape {a.shape}")
    if len(a) != mp:
        raise ValueError(f"assignment has {len(a)} entries but max_parallelism is {mp}: "
                         "it needs one partition per key group")
    lo, hi = (int(a.min()), int(a.max())) if len(a) else (0, 0)
    if num_partitions is None:
        p = hi + 1
    else:
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
            raise TypeError(f"num_partitions must be an int, got {num_partitions!r}")
        p = int(num_partitions)
    if not 1 <= p <= MAX_PARTITIONS:
        raise ValueError(f"num_partitions must be in 1..{MAX_PARTITIONS}, got {p}")
    if lo < 0 or hi >= p:
        bad = int(np.flatnonzero((a < 0) | (a >= p))[0])
        raise ValueError(f"assignment[{bad}] = {int(a[bad])} is not a partition in 0..{p - 1}")
    return a.astype(np.uint16), p


# --------------------------------------------------------------------------- scatter

#: Below this many rows a batch is scattered with plain stores: the staging lines
#: cost P * 64 bytes of setup and flushing per column group.
STAGED_MIN_ROWS = 4096
#: repartition's default uses one thread per this many rows (at most AUTO_MAX_THREADS);
#: smaller batches (every streaming batch) stay on the calling thread.
PARALLEL_MIN_ROWS = 1 << 19
AUTO_MAX_THREADS = 2
#: repartition takes batches of fewer rows with one Arrow take (see bench/bench_partition.py)
TAKE_BELOW_ROWS = 4096


cdef inline int64_t _round8(int64_t x) noexcept nogil:
    return (x + 7) & ~(<int64_t>7)


cdef inline const void* _pid_ptr(object pids):
    """Address of a contiguous uint8/uint16 partition-id array (1- or 2-byte ids)."""
    return <const void*><uintptr_t>pids.ctypes.data


cdef void _bits_any(const void* pids, int pb, int64_t n, const uint8_t* src, int64_t src_off,
                    uint8_t* dst, int64_t* cur, int64_t* ones) noexcept nogil:
    if pb == 1:
        _scatter_bits(<const uint8_t*>pids, n, src, src_off, dst, cur, ones)
    else:
        _scatter_bits(<const uint16_t*>pids, n, src, src_off, dst, cur, ones)


cdef void _fixed_plain(const void* pids, int pb, int64_t r0, int64_t r1, const uint8_t* src,
                       int w, uint8_t* dst, int64_t* cur) noexcept nogil:
    if pb == 1:
        _scatter_fixed(<const uint8_t*>pids, r0, r1, src, w, dst, cur)
    else:
        _scatter_fixed(<const uint16_t*>pids, r0, r1, src, w, dst, cur)


cdef struct _FixedJob:
    # one thread's share of the fixed-width columns: rows [r0, r1), all columns
    int pid_bytes
    const void* pids
    int64_t r0
    int64_t r1
    int P
    int ncols
    const int32_t* widths       # bytes per value, columns sorted so equal widths are adjacent
    const void** srcs           # first value of each column (array offset applied)
    void** dsts                 # each column's output data buffer
    const int64_t* start        # this thread's first slot of every partition (P)
    int64_t* cur                # scratch cursors (P)
    bint staged


cdef void _fixed_job(void* arg) noexcept nogil:
    """Scatter rows [r0, r1) of every fixed-width column of the job: columns of one
    width go through the staging lines together, up to SABOT_WC_MAX_COLS at a time."""
    cdef _FixedJob* j = <_FixedJob*>arg
    cdef int c = 0, g, k, w
    cdef size_t cb = <size_t>j.P * sizeof(int64_t)
    while c < j.ncols:
        w = j.widths[c]
        g = 1
        while c + g < j.ncols and g < SABOT_WC_MAX_COLS and j.widths[c + g] == w:
            g += 1
        memcpy(j.cur, j.start, cb)
        if not (j.staged and (w == 8 or w == 4 or w == 2 or w == 1) and
                sabot_scatter_wc(j.pid_bytes, j.pids, j.r0, j.r1, w, g,
                                 &j.srcs[c], &j.dsts[c], j.cur, j.P) == 0):
            for k in range(c, c + g):
                memcpy(j.cur, j.start, cb)
                _fixed_plain(j.pids, j.pid_bytes, j.r0, j.r1, <const uint8_t*>j.srcs[k],
                             j.widths[k], <uint8_t*>j.dsts[k], j.cur)
        c += g


cdef list _scatter_fixed_columns(list cols, object pids, int64_t total, object tstart,
                                 object bounds):
    """New data buffers of the fixed-width (non-bool) columns ``cols``, rows placed at
    the partition slots; thread t of ``len(bounds) - 1`` takes rows
    [bounds[t], bounds[t+1]) starting at slots tstart[t]."""
    cdef int k = len(cols), i, t
    cdef int nt = len(bounds) - 1
    cdef int P = tstart.shape[1]
    cdef int64_t n = bounds[nt]
    if k == 0:
        return []
    order = sorted(range(k), key=lambda i: cols[i].type.bit_width)
    widths = np.empty(k, dtype=np.int32)
    srcs = np.empty(k, dtype=np.uintp)
    dsts = np.empty(k, dtype=np.uintp)
    out = [None] * k
    for i, ci in enumerate(order):
        col = cols[ci]
        w = col.type.bit_width // 8
        data = pa.allocate_buffer(max(total * w, 1))
        out[ci] = data
        widths[i] = w
        srcs[i] = _address(col.buffers()[1]) + col.offset * w
        dsts[i] = data.address
    starts = np.ascontiguousarray(tstart, dtype=np.int64)
    curs = np.empty((nt, P), dtype=np.int64)
    cdef int32_t[::1] wv = widths
    cdef uintptr_t[::1] sv = srcs
    cdef uintptr_t[::1] dv = dsts
    cdef int64_t[:, ::1] stv = starts
    cdef int64_t[:, ::1] cuv = curs
    cdef _FixedJob* jobs = <_FixedJob*>calloc(nt, sizeof(_FixedJob))
    cdef void** args = <void**>calloc(nt, sizeof(void*))
    if jobs == NULL or args == NULL:
        free(jobs)
        free(args)
        raise MemoryError()
    for t in range(nt):
        jobs[t].pid_bytes = pids.itemsize
        jobs[t].pids = _pid_ptr(pids)
        jobs[t].r0 = bounds[t]
        jobs[t].r1 = bounds[t + 1]
        jobs[t].P = P
        jobs[t].ncols = k
        jobs[t].widths = &wv[0]
        jobs[t].srcs = <const void**>&sv[0]
        jobs[t].dsts = <void**>&dv[0]
        jobs[t].start = &stv[t, 0]
        jobs[t].cur = &cuv[t, 0]
        jobs[t].staged = n >= STAGED_MIN_ROWS
        args[t] = &jobs[t]
    try:
        with nogil:
            sabot_run_parallel(_fixed_job, args, nt)  # nt == 1 runs on this thread, no thread started
    finally:
        free(jobs)
        free(args)
    return out


cdef object _validity_outputs(object col, object pids, int64_t n,
                              int64_t[::1] pstart, int64_t[::1] counts, int P):
    """Per-partition (validity buffer or None, null_count) of col."""
    cdef int64_t p, total = 0
    for p in range(P):
        total += _round8(counts[p])
    if col.null_count == 0 or n == 0:
        return [(None, 0)] * P
    vbuf = pa.allocate_buffer(max(total // 8, 1))
    cdef uint8_t* dst = <uint8_t*><uint64_t>vbuf.address
    cdef const uint8_t* src = <const uint8_t*><uint64_t>col.buffers()[0].address
    cdef int64_t off = col.offset
    cdef const void* pp = _pid_ptr(pids)
    cdef int pb = pids.itemsize
    cur = np.array(pstart, dtype=np.int64)
    ones = np.zeros(P, dtype=np.int64)
    cdef int64_t[::1] cv = cur
    cdef int64_t[::1] onv = ones
    with nogil:
        memset(dst, 0, total // 8 if total else 1)
        _bits_any(pp, pb, n, src, off, dst, &cv[0], &onv[0])
    out = []
    for p in range(P):
        nulls = counts[p] - onv[p]
        if nulls == 0:
            out.append((None, 0))
        else:
            out.append((vbuf.slice(pstart[p] // 8, (counts[p] + 7) // 8), nulls))
    return out


cdef bint _is_fixed_width(object t):
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or
            (pa.types.is_temporal(t) and not pa.types.is_interval(t)) or
            pa.types.is_decimal(t) or pa.types.is_fixed_size_binary(t))


cdef list _fixed_pieces(object col, object data, object validity, int64_t[::1] pstart,
                        int64_t[::1] counts, int P):
    cdef object t = col.type
    cdef int w = t.bit_width // 8
    return [pa.Array.from_buffers(t, counts[p],
                                  [validity[p][0], data.slice(pstart[p] * w, counts[p] * w)],
                                  null_count=validity[p][1])
            for p in range(P)]


cdef list _scatter_column(object col, object pids, int64_t n, int64_t[::1] pstart,
                          int64_t[::1] counts, int P, object take_rows):
    """The P pieces of one column (fixed-width columns of a batch normally go through
    _scatter_fixed_columns together; this handles them one at a time, e.g. dictionary
    indices)."""
    cdef object t = col.type
    cdef int64_t p, coff, total = 0
    cdef const uint8_t* src
    cdef uint8_t* dst
    cdef int64_t[::1] cv
    cdef int64_t[::1] nbv
    cdef const void* pp = _pid_ptr(pids)
    cdef int pb = pids.itemsize
    for p in range(P):
        total += _round8(counts[p])
    if pa.types.is_null(t):
        return [pa.nulls(counts[p], t) for p in range(P)]
    if pa.types.is_dictionary(t):
        pieces = _scatter_column(col.indices, pids, n, pstart, counts, P, take_rows)
        return [pa.DictionaryArray.from_arrays(ix, col.dictionary, safe=False, ordered=t.ordered)
                for ix in pieces]
    if pa.types.is_boolean(t):
        validity = _validity_outputs(col, pids, n, pstart, counts, P)
        bufs = col.buffers()
        cur = np.array(pstart, dtype=np.int64)
        cv = cur
        data = pa.allocate_buffer(max(total // 8, 1))
        dst = <uint8_t*><uint64_t>data.address
        src = <const uint8_t*>_address(bufs[1])
        coff = col.offset
        ones = np.zeros(P, dtype=np.int64)
        nbv = ones
        with nogil:
            memset(dst, 0, total // 8 if total else 1)
            if n:
                _bits_any(pp, pb, n, src, coff, dst, &cv[0], &nbv[0])
        return [pa.Array.from_buffers(t, counts[p],
                                      [validity[p][0], data.slice(pstart[p] // 8, (counts[p] + 7) // 8)],
                                      null_count=validity[p][1])
                for p in range(P)]
    if _is_fixed_width(t):
        validity = _validity_outputs(col, pids, n, pstart, counts, P)
        data = _scatter_fixed_columns([col], pids, total, np.asarray(pstart)[None, :], [0, n])[0]
        return _fixed_pieces(col, data, validity, pstart, counts, P)
    if (pa.types.is_string(t) or pa.types.is_binary(t) or
            pa.types.is_large_string(t) or pa.types.is_large_binary(t)):
        return _scatter_var_column(col, pids, n, pstart, counts, P)
    # Nested, view, union, extension and interval types: Arrow's take over the
    # stable permutation, one call per column, then zero-copy slices.
    idx, starts = take_rows()
    taken = col.take(idx)
    return [taken.slice(starts[p], counts[p]) for p in range(P)]


cdef list _scatter_var_column(object col, object pids, int64_t n, int64_t[::1] pstart,
                              int64_t[::1] counts, int P):
    cdef object t = col.type
    cdef bint large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
    cdef int ow = 8 if large else 4
    cdef int64_t p, k
    cdef int64_t total_bytes = 0
    cdef int64_t total_offs = 0
    cdef const void* pp = _pid_ptr(pids)
    cdef bint small = pids.itemsize == 1
    validity = _validity_outputs(col, pids, n, pstart, counts, P)
    bufs = col.buffers()
    cdef int64_t coff = col.offset
    cdef const uint8_t* soffs = <const uint8_t*>_address(bufs[1]) + coff * ow
    cdef const uint8_t* sdata = <const uint8_t*>_address(bufs[2])
    cdef int64_t slen = bufs[2].size if bufs[2] is not None else 0
    nbytes = np.zeros(P, dtype=np.int64)
    cdef int64_t[::1] nbv = nbytes
    # pass 1: bytes per partition
    with nogil:
        if n:
            if large and small:
                _var_sizes(<const uint8_t*>pp, n, <const int64_t*>soffs, &nbv[0])
            elif large:
                _var_sizes(<const uint16_t*>pp, n, <const int64_t*>soffs, &nbv[0])
            elif small:
                _var_sizes(<const uint8_t*>pp, n, <const int32_t*>soffs, &nbv[0])
            else:
                _var_sizes(<const uint16_t*>pp, n, <const int32_t*>soffs, &nbv[0])
    dstart = np.zeros(P, dtype=np.int64)
    ostart = np.zeros(P, dtype=np.int64)
    cdef int64_t[::1] dsv = dstart
    cdef int64_t[::1] osv = ostart
    for p in range(P):
        dsv[p] = total_bytes
        osv[p] = total_offs
        # 16 bytes of slack per partition: _scatter_var copies short values as two
        # 8-byte words that may run past the value's end
        total_bytes += _round8(nbv[p]) + 16
        total_offs += counts[p] + 1
    data = pa.allocate_buffer(max(total_bytes, 1))
    offs = pa.allocate_buffer(total_offs * ow)
    cdef uint8_t* ddata = <uint8_t*><uint64_t>data.address
    cdef uint8_t* doffs = <uint8_t*><uint64_t>offs.address
    cur = ostart.copy()
    dcur = dstart.copy()
    cdef int64_t[::1] cv = cur
    cdef int64_t[::1] dcv = dcur
    # pass 2: copy bytes and write partition-relative offsets
    with nogil:
        for p in range(P):
            if large:
                (<int64_t*>doffs)[osv[p]] = 0
            else:
                (<int32_t*>doffs)[osv[p]] = 0
        if n:
            if large and small:
                _scatter_var(<const uint8_t*>pp, n, <const int64_t*>soffs, sdata, slen,
                             <int64_t*>doffs, ddata, &cv[0], &dcv[0], &dsv[0])
            elif large:
                _scatter_var(<const uint16_t*>pp, n, <const int64_t*>soffs, sdata, slen,
                             <int64_t*>doffs, ddata, &cv[0], &dcv[0], &dsv[0])
            elif small:
                _scatter_var(<const uint8_t*>pp, n, <const int32_t*>soffs, sdata, slen,
                             <int32_t*>doffs, ddata, &cv[0], &dcv[0], &dsv[0])
            else:
                _scatter_var(<const uint16_t*>pp, n, <const int32_t*>soffs, sdata, slen,
                             <int32_t*>doffs, ddata, &cv[0], &dcv[0], &dsv[0])
    return [pa.Array.from_buffers(t, counts[p],
                                  [validity[p][0], offs.slice(osv[p] * ow, (counts[p] + 1) * ow),
                                   data.slice(dsv[p], nbv[p])],
                                  null_count=validity[p][1])
            for p in range(P)]


cdef list _scatter_batch(object batch, object pids, object counts, object tcounts=None,
                         object bounds=None):
    """Split batch by pids (uint8 or uint16, one per row) into len(counts) batches,
    order kept. With per-thread partition counts ``tcounts`` (threads x P) of the row
    ranges [bounds[t], bounds[t+1]), the fixed-width columns are scattered by
    len(bounds) - 1 threads, thread t writing its rows of partition p right after
    those of threads < t."""
    cdef int P = len(counts)
    cdef int64_t n = batch.num_rows
    cdef int64_t p, acc = 0
    cdef int64_t[::1] cnt = counts
    pstart = np.zeros(P, dtype=np.int64)
    cdef int64_t[::1] psv = pstart
    for p in range(P):
        psv[p] = acc
        acc += _round8(cnt[p])
    if tcounts is None or len(bounds) <= 2:
        bounds = [0, n]
        tstart = pstart[None, :]
    else:
        tc = np.asarray(tcounts, dtype=np.int64)
        tstart = pstart[None, :] + np.cumsum(tc, axis=0) - tc
    cache = []

    def take_rows():
        # the stable counting-sort permutation, computed at most once per batch
        if not cache:
            idx = np.empty(n, dtype=np.int64)
            starts = np.zeros(P, dtype=np.int64)
            if P > 1:
                np.cumsum(counts[:P - 1], out=starts[1:])
            _fill_rows(pids, idx, starts.copy())
            cache.append((pa.array(idx), starts))
        return cache[0]

    arrays = [_as_array(batch.column(i)) for i in range(batch.num_columns)]
    columns = [None] * len(arrays)
    fixed = [i for i, a in enumerate(arrays) if _is_fixed_width(a.type)]
    # all fixed-width columns in one (possibly parallel) staged pass
    datas = _scatter_fixed_columns([arrays[i] for i in fixed], pids, acc, tstart, bounds)
    for i, data in zip(fixed, datas):
        validity = _validity_outputs(arrays[i], pids, n, psv, cnt, P)
        columns[i] = _fixed_pieces(arrays[i], data, validity, psv, cnt, P)
    for i, a in enumerate(arrays):
        if columns[i] is None:
            columns[i] = _scatter_column(a, pids, n, psv, cnt, P, take_rows)
    schema = batch.schema
    return [pa.RecordBatch.from_arrays([c[p] for c in columns], schema=schema) for p in range(P)]


def _fill_rows(pids, idx, cur):
    cdef const void* pp = _pid_ptr(pids)
    cdef int64_t[::1] iv = idx
    cdef int64_t[::1] cv = cur
    cdef int64_t n = len(pids)
    cdef bint small = pids.itemsize == 1
    if n:
        with nogil:
            if small:
                _scatter_rows(<const uint8_t*>pp, n, &iv[0], &cv[0])
            else:
                _scatter_rows(<const uint16_t*>pp, n, &iv[0], &cv[0])


def _as_batch(batch):
    if isinstance(batch, pa.RecordBatch):
        return batch
    if isinstance(batch, pa.Table):
        combined = batch.combine_chunks()
        batches = combined.to_batches()
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=batch.schema)
        return batches[0] if len(batches) == 1 else pa.concat_batches(batches)
    raise TypeError(f"repartition takes a pyarrow RecordBatch (or Table), got {type(batch).__name__}")


def partition_ids(batch, key_columns, num_partitions=None, *, assignment=None,
                  max_parallelism=DEFAULT_MAX_PARALLELISM):
    """Partition id (uint16) of every row and the per-key-group row counts (int64).

    The first half of ``repartition``; exposed for callers that route rows themselves.
    """
    table, P = _partition_table(num_partitions, assignment, max_parallelism)
    pids, kgc, _, _ = _compute_pids(batch, key_columns, table, max_parallelism, 2, 1)
    return pids, kgc


cdef struct _PidJob:
    # one thread's share of pass 1: hash rows [r0, r1), map to partition ids, count
    const ColSpec* cols
    int ncols
    int64_t r0
    int64_t r1
    uint64_t mp
    const uint16_t* table
    void* pids
    int pid_bytes
    int64_t* kgc                # this thread's rows per key group (mp entries)


cdef void _pid_job(void* arg) noexcept nogil:
    cdef _PidJob* j = <_PidJob*>arg
    cdef uint64_t scratch[2048]
    cdef int64_t i = j.r0, chunk
    # hash a block into L1-resident scratch, then map it to partition ids: the
    # row hashes are never written to memory
    while i < j.r1:
        chunk = j.r1 - i
        if chunk > 2048:
            chunk = 2048
        hash_range(j.cols, j.ncols, i, i + chunk, scratch)
        if j.pid_bytes == 1:
            _pids_from_hashes(scratch, chunk, j.mp, j.table, <uint8_t*>j.pids + i, j.kgc)
        else:
            _pids_from_hashes(scratch, chunk, j.mp, j.table, <uint16_t*>j.pids + i, j.kgc)
        i += chunk


cdef tuple _compute_pids(object data, object key_columns, object table, int64_t mp,
                         int pid_bytes, int nt):
    """(pids, rows per key group, rows per key group per thread (nt x mp), row bounds
    of the nt threads); pids are uint8 when pid_bytes is 1, else uint16."""
    arrays, names = _resolve_key_arrays(data, key_columns)
    cdef HashPlan plan = HashPlan(arrays, names)
    cdef int64_t n = plan.num_rows
    cdef int t
    if n < nt:
        nt = 1
    pids = np.empty(n, dtype=np.uint8 if pid_bytes == 1 else np.uint16)
    tkgc = np.zeros((nt, mp), dtype=np.int64)
    bounds = [n * t // nt for t in range(nt + 1)]
    cdef int64_t[:, ::1] kv = tkgc
    cdef const uint16_t[::1] tv = table
    cdef _PidJob* jobs = <_PidJob*>calloc(nt, sizeof(_PidJob))
    cdef void** args = <void**>calloc(nt, sizeof(void*))
    if jobs == NULL or args == NULL:
        free(jobs)
        free(args)
        raise MemoryError()
    for t in range(nt):
        jobs[t].cols = plan.cols
        jobs[t].ncols = plan.num_columns
        jobs[t].r0 = bounds[t]
        jobs[t].r1 = bounds[t + 1]
        jobs[t].mp = <uint64_t>mp
        jobs[t].table = &tv[0]
        jobs[t].pids = <void*><uintptr_t>pids.ctypes.data
        jobs[t].pid_bytes = pid_bytes
        jobs[t].kgc = &kv[t, 0]
        args[t] = &jobs[t]
    try:
        with nogil:
            sabot_run_parallel(_pid_job, args, nt)  # nt == 1 runs on this thread, no thread started
    finally:
        free(jobs)
        free(args)
    return pids, tkgc.sum(axis=0) if nt > 1 else tkgc[0], tkgc, bounds


def _partition_counts(kgc, table, P):
    return np.bincount(table.astype(np.int64), weights=kgc, minlength=P).astype(np.int64)


def _auto_threads(int64_t n, num_threads):
    if num_threads is None:
        return int(max(1, min(AUTO_MAX_THREADS, os.cpu_count() or 1, n // PARALLEL_MIN_ROWS)))
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int or None, got {num_threads!r}")
    if not 1 <= num_threads <= SABOT_MAX_THREADS:
        raise ValueError(f"num_threads must be in 1..{SABOT_MAX_THREADS} (or None), got {num_threads}")
    return int(num_threads)


def repartition(batch, key_columns, num_partitions=None, *, assignment=None,
                max_parallelism=DEFAULT_MAX_PARALLELISM, key_group_counts=False,
                num_threads=None):
    """Split ``batch`` by key into partitions, keeping input order within each.

    Row ``r`` goes to ``subtask_for_key_group(key_group(hash(r)), max_parallelism,
    num_partitions)``, or to ``assignment[key_group]`` when an assignment table is given.

    Args:
        batch: a ``pyarrow.RecordBatch`` (a Table is combined into one batch).
        key_columns: key column name(s) or index(es).
        num_partitions: number of outputs (1..max_parallelism) for the range assignment,
            or with ``assignment`` the number of outputs (default: ``max(assignment) + 1``).
        assignment: int array of length max_parallelism, key group -> partition.
        max_parallelism: number of key groups.
        key_group_counts: also return rows per key group (int64[max_parallelism]).
        num_threads: threads for hashing and the fixed-width columns (1..16); None
            picks one per ``PARALLEL_MIN_ROWS`` rows, at most ``AUTO_MAX_THREADS``, so
            ordinary streaming batches stay on the calling thread. The result does
            not depend on it.

    Returns:
        ``list[pyarrow.RecordBatch]`` (one per partition, same schema, possibly empty),
        or ``(batches, counts)`` when ``key_group_counts`` is true. When every row goes
        to one partition (always with one partition), that partition's batch is ``batch``
        itself, not a copy.
    """
    batch = _as_batch(batch)
    if key_columns is None:
        raise ValueError("repartition needs key_columns (the column name(s) to hash)")
    table, P = _partition_table(num_partitions, assignment, max_parallelism)
    nt = _auto_threads(batch.num_rows, num_threads)
    pids, kgc, tkgc, bounds = _compute_pids(batch, key_columns, table, max_parallelism,
                                            1 if P <= 256 else 2, nt)
    counts = _partition_counts(kgc, table, P)
    filled = np.flatnonzero(counts)
    if len(filled) == 1:  # every row goes to one partition (P = 1, or one key): the batch as it is
        only = int(filled[0])
        empty = batch.slice(0, 0)
        out = [batch if p == only else empty for p in range(P)]
    elif batch.num_rows < TAKE_BELOW_ROWS:
        # a small batch: one take over the stable order by partition (Arrow's C++, without
        # the GIL) costs less than the scatter's per-column set-up
        starts = np.cumsum(counts) - counts
        taken = batch.take(pa.array(np.argsort(np.asarray(pids), kind="stable")))
        out = [taken.slice(int(starts[p]), int(counts[p])) for p in range(P)]
    elif len(bounds) > 2:
        tcounts = np.stack([_partition_counts(k, table, P) for k in tkgc])
        out = _scatter_batch(batch, pids, counts, tcounts, bounds)
    else:
        out = _scatter_batch(batch, pids, counts)
    return (out, kgc) if key_group_counts else out


def split_state_table(table, num_partitions=None, *, assignment=None,
                      max_parallelism=DEFAULT_MAX_PARALLELISM, key_group_column="_key_group"):
    """Split a keyed state table into per-subtask tables by its stored key-group column.

    Used by live rescaling: old subtasks cut their state for the new parallelism
    (range assignment) or for a rebalanced ``assignment``. Rows keep their order.

    Returns:
        ``list[pyarrow.Table]``, one per new subtask (possibly empty, same schema).
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise TypeError(f"split_state_table takes a pyarrow Table, got {type(table).__name__}")
    lookup, P = _partition_table(num_partitions, assignment, max_parallelism)
    cdef int64_t mp = _check_max_parallelism(max_parallelism)
    ci = _field_index(table.schema.names, key_group_column, "state table")
    kt = table.schema.field(ci).type
    if not pa.types.is_integer(kt):
        raise TypeError(f"key-group column {key_group_column!r} must be an integer column, got {kt}")
    pieces = [[] for _ in range(P)]
    cdef const uint16_t[::1] tv = lookup
    cdef uint16_t[::1] pv
    cdef int64_t[::1] kv
    cdef int64_t n, bad
    cdef int w = kt.bit_width // 8
    cdef bint signed = pa.types.is_signed_integer(kt)
    cdef const uint8_t* kg
    cdef int64_t off
    for rb in table.to_batches():
        n = rb.num_rows
        if n == 0:
            continue
        kcol = rb.column(ci)
        if kcol.null_count:
            raise ValueError(f"key-group column {key_group_column!r} has {kcol.null_count} nulls; "
                             "every state row needs a key group")
        pids = np.empty(n, dtype=np.uint16)
        kgc = np.zeros(mp, dtype=np.int64)
        pv = pids
        kv = kgc
        kg = <const uint8_t*>_address(kcol.buffers()[1])
        off = kcol.offset
        with nogil:
            bad = _pids_from_key_groups(kg, w, signed, off, n, mp, &tv[0], &pv[0], &kv[0])
        if bad >= 0:
            raise ValueError(f"key-group column {key_group_column!r} holds {kcol[bad].as_py()} at "
                             f"row {bad}, outside 0..{mp - 1} (max_parallelism={mp})")
        for p, part in enumerate(_scatter_batch(rb, pids, _partition_counts(kgc, lookup, P))):
            if part.num_rows:
                pieces[p].append(part)
    return [pa.Table.from_batches(ps, schema=table.schema) for ps in pieces]


def scatter(batch, pids, num_partitions):
    """Split ``batch`` by a precomputed partition id per row (uint16), order kept.

    ``partition_ids`` + ``scatter`` is ``repartition`` in two steps, for callers that
    route rows by something other than the key hash.
    """
    batch = _as_batch(batch)
    p = int(num_partitions)
    if not 1 <= p <= MAX_PARTITIONS:
        raise ValueError(f"num_partitions must be in 1..{MAX_PARTITIONS}, got {num_partitions}")
    ids = np.ascontiguousarray(pids)
    if ids.dtype not in (np.uint8, np.uint16) or ids.ndim != 1:
        raise TypeError(f"pids must be a 1-D uint16 (or uint8) array, got dtype {ids.dtype} shape {ids.shape}")
    if len(ids) != batch.num_rows:
        raise ValueError(f"pids has {len(ids)} entries for a batch of {batch.num_rows} rows")
    counts = np.bincount(ids, minlength=p).astype(np.int64)
    if len(counts) > p:
        raise ValueError(f"pids holds partition {int(ids.max())}, outside 0..{p - 1}")
    return _scatter_batch(batch, ids, counts)

# cython: language_level=3
"""Selecting the rows of an Arrow batch where a boolean mask is true (the filter kernel).

The mask is read once into 64-bit words (its validity ANDed in: a null drops the row, as
``pyarrow.compute.filter``'s default), and every fixed-width column without nulls (1, 2,
4 or 8 bytes a value: integers, floats, dates, times, timestamps, durations) is compacted
word by word without the GIL, straight from its Arrow buffer into the new one: a word
with no row selected is skipped, a word with all 64 selected is one memcpy, a sparse
word walks its set bits, and a dense one copies every value and advances the output by
the bit (no branch to mispredict). Other columns (strings, booleans, nested, decimals,
columns with nulls) go through Arrow's own filter with the same mask, which also runs
without the GIL.

Over 64k-row batches of int64/float64 columns at 50 % random selectivity this takes
about half the time of ``RecordBatch.filter`` (``bench/bench_overhead.py``'s filter
section measures it against Arrow in the same process).
"""

import numpy as np
import pyarrow as pa

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    static inline int sabot_popcount64(unsigned long long w) { return __builtin_popcountll(w); }
    static inline int sabot_ctz64(unsigned long long w) { return __builtin_ctzll(w); }
    """
    int sabot_popcount64(unsigned long long w) nogil
    int sabot_ctz64(unsigned long long w) nogil

__all__ = ["filter_batch_by_mask"]

ctypedef fused elem_t:
    uint8_t
    uint16_t
    uint32_t
    uint64_t

#: a word with at most this many rows selected walks its set bits; more: the branchless copy
cdef int SPARSE_BITS = 16
cdef uint64_t ALL_ROWS = 0xFFFFFFFFFFFFFFFF


cdef void _load_bits(const uint8_t* src, int64_t src_bytes, int64_t bit_offset, int64_t n,
                     uint64_t* words) noexcept nogil:
    """Bits [bit_offset, bit_offset + n) of src (Arrow's LSB-first order) into words, bits
    past n zero. Never reads past src_bytes."""
    cdef uint8_t* out = <uint8_t*>words
    cdef int64_t nbytes = (n + 7) // 8
    cdef int64_t first = bit_offset // 8
    cdef int shift = bit_offset % 8
    cdef int64_t b
    cdef uint8_t lo, hi
    memset(words, 0, ((n + 63) // 64) * 8)
    if shift == 0:
        memcpy(out, src + first, nbytes)
    else:
        for b in range(nbytes):
            lo = src[first + b] >> shift
            hi = 0
            if first + b + 1 < src_bytes:
                hi = <uint8_t>(src[first + b + 1] << (8 - shift))
            out[b] = lo | hi
    if n % 64:
        words[n // 64] &= ((<uint64_t>1) << (n % 64)) - 1


cdef int64_t _compact(const uint64_t* words, int64_t n, const elem_t* src, elem_t* dst) noexcept nogil:
    """The values of src at the set bits of words (n rows) into dst, in order; their count.
    dst holds count + 1 values: a dense word's copy writes one past the last it keeps."""
    cdef int64_t full = n // 64
    cdef int64_t i, j = 0
    cdef int k
    cdef uint64_t w
    cdef const elem_t* base
    for i in range(full):
        w = words[i]
        if w == 0:
            continue
        base = src + i * 64
        if w == ALL_ROWS:
            memcpy(dst + j, base, 64 * sizeof(elem_t))
            j += 64
        elif sabot_popcount64(w) <= SPARSE_BITS:
            while w:
                dst[j] = base[sabot_ctz64(w)]
                j += 1
                w &= w - 1
        else:
            for k in range(64):
                dst[j] = base[k]
                j += (w >> k) & 1
    if n % 64:
        # the last, partial word: only its set bits, so no value past the column is read
        w = words[full]
        base = src + full * 64
        while w:
            dst[j] = base[sabot_ctz64(w)]
            j += 1
            w &= w - 1
    return j


cdef inline uintptr_t _address(object buf):
    return <uintptr_t>buf.address


cdef object _mask_words(object mask):
    """(numpy uint64 words of the mask's selected rows, their count)."""
    cdef int64_t n = len(mask)
    cdef int64_t nwords = (n + 63) // 64
    words = np.zeros(max(nwords, 1), dtype=np.uint64)
    bufs = mask.buffers()
    if n == 0 or bufs[1] is None:  # (no data buffer: nothing is true)
        return words, 0
    cdef uint64_t[::1] wv = words
    cdef uint64_t* valid = NULL
    cdef const uint8_t* data = <const uint8_t*>_address(bufs[1])
    cdef int64_t data_size = bufs[1].size
    cdef const uint8_t* vsrc = NULL
    cdef int64_t vsize = 0
    cdef int64_t off = mask.offset
    cdef int64_t i, count = 0
    if mask.null_count and bufs[0] is not None:
        vsrc = <const uint8_t*>_address(bufs[0])
        vsize = bufs[0].size
        valid = <uint64_t*>malloc(nwords * 8)
        if valid == NULL:
            raise MemoryError()
    try:
        with nogil:
            _load_bits(data, data_size, off, n, &wv[0])
            if valid != NULL:
                _load_bits(vsrc, vsize, off, n, valid)
                for i in range(nwords):
                    wv[i] &= valid[i]
            for i in range(nwords):
                count += sabot_popcount64(wv[i])
    finally:
        free(valid)
    return words, count


cdef _check_mask(object mask):
    if not isinstance(mask, pa.BooleanArray):
        raise TypeError(f"the mask must be a pyarrow BooleanArray, got {type(mask).__name__}"
                        + (f" of {mask.type}" if isinstance(mask, pa.Array) else ""))


cdef int _width(object col):
    """Bytes per value of a column this kernel compacts, else 0 (Arrow filters it)."""
    cdef object t = col.type
    if col.null_count:
        return 0
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or
            (pa.types.is_temporal(t) and not pa.types.is_interval(t))):
        return 0
    if t.bit_width not in (8, 16, 32, 64):
        return 0
    return t.bit_width // 8


def filter_batch_by_mask(batch, mask):
    """The rows of ``batch`` (a pyarrow RecordBatch) where ``mask`` is true, in order.

    A null in the mask drops its row (``pyarrow.compute.filter``'s default). The same
    result as ``batch.filter(mask)``; when every row is selected, ``batch`` itself.

    Raises:
        TypeError: ``batch`` is not a RecordBatch or ``mask`` not a BooleanArray.
        ValueError: the mask's length is not the batch's.
    """
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"filter_batch_by_mask takes a pyarrow RecordBatch, got {type(batch).__name__}")
    _check_mask(mask)
    cdef int64_t n = batch.num_rows
    if len(mask) != n:
        raise ValueError(f"the mask has {len(mask)} values for a batch of {n} rows")
    words, count = _mask_words(mask)
    if count == n:
        return batch
    if count == 0:
        return batch.slice(0, 0)
    cdef uint64_t[::1] wv = words
    cdef int ncols = batch.num_columns
    columns = [None] * ncols
    cdef uintptr_t* srcs = <uintptr_t*>malloc(max(ncols, 1) * sizeof(uintptr_t))
    cdef uintptr_t* dsts = <uintptr_t*>malloc(max(ncols, 1) * sizeof(uintptr_t))
    cdef int* widths = <int*>malloc(max(ncols, 1) * sizeof(int))
    cdef int64_t* got = <int64_t*>malloc(max(ncols, 1) * sizeof(int64_t))
    cdef int c, w, nfixed = 0
    cdef int64_t kept = count
    if srcs == NULL or dsts == NULL or widths == NULL or got == NULL:
        free(srcs); free(dsts); free(widths); free(got)
        raise MemoryError()
    try:
        fixed = []
        for c in range(ncols):
            col = batch.column(c)
            w = _width(col)
            if w == 0:
                columns[c] = col.filter(mask)
                continue
            # one spare value: a dense word's branchless copy writes one past the last kept
            out = pa.allocate_buffer((count + 1) * w)
            srcs[nfixed] = _address(col.buffers()[1]) + <uintptr_t>(col.offset * w)
            dsts[nfixed] = _address(out)
            widths[nfixed] = w
            fixed.append((c, col.type, out))
            nfixed += 1
        with nogil:
            for c in range(nfixed):
                if widths[c] == 8:
                    got[c] = _compact(&wv[0], n, <const uint64_t*>srcs[c], <uint64_t*>dsts[c])
                elif widths[c] == 4:
                    got[c] = _compact(&wv[0], n, <const uint32_t*>srcs[c], <uint32_t*>dsts[c])
                elif widths[c] == 2:
                    got[c] = _compact(&wv[0], n, <const uint16_t*>srcs[c], <uint16_t*>dsts[c])
                else:
                    got[c] = _compact(&wv[0], n, <const uint8_t*>srcs[c], <uint8_t*>dsts[c])
        for i, (c, t, out) in enumerate(fixed):
            if got[i] != kept:  # never expected: the words were counted above
                raise RuntimeError(f"compacting column {c} kept {got[i]} rows, expected {kept}")
            columns[c] = pa.Array.from_buffers(t, kept, [None, out.slice(0, kept * widths[i])], null_count=0)
    finally:
        free(srcs); free(dsts); free(widths); free(got)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)

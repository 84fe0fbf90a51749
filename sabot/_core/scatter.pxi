# Push-scatter kernels: split rows by partition id, keeping input order.
#
# Every kernel reads its source once, front to back, and appends each row to the
# write cursor of its partition (cur[p], initialised to the partition's start). The
# outputs are P sequential streams, so both sides stream through memory; a gather
# through a row-index permutation would instead sweep the source once per partition.
# Row indices are only materialised for nested types, which go through Arrow's take.

ctypedef fused offset_t:
    int32_t
    int64_t


cdef extern from *:
    """
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Flush one 64-byte staging line to 64-byte-aligned dst: non-temporal stores
       where available (the line is not read again soon, so skip the read-for-ownership). */
    static inline void sabot_flush_line(void* dst, const void* src) {
    #if defined(__SSE2__)
        if ((((uintptr_t)dst) & 15) == 0) {
            const __m128i* s = (const __m128i*)src;
            __m128i* d = (__m128i*)dst;
            _mm_stream_si128(d, _mm_load_si128(s));
            _mm_stream_si128(d + 1, _mm_load_si128(s + 1));
            _mm_stream_si128(d + 2, _mm_load_si128(s + 2));
            _mm_stream_si128(d + 3, _mm_load_si128(s + 3));
            return;
        }
    #endif
        memcpy(dst, src, 64);
    }
    static inline void sabot_store_fence(void) {
    #if defined(__SSE2__)
        _mm_sfence();
    #endif
    }
    """
    void sabot_flush_line(void* dst, const void* src) noexcept nogil
    void sabot_store_fence() noexcept nogil


cdef int _scatter_fixed8_wc(const uint16_t* pids, int64_t n, const uint64_t* src,
                            uint64_t* dst, int64_t* cur, int P) noexcept nogil:
    """8-byte scatter through per-partition 64-byte staging lines (software write
    combining): each partition's output is written a whole cache line at a time.
    Needs every cur[p] to start at a multiple of 8 elements. Returns -1 if the
    staging memory could not be allocated (the caller falls back)."""
    cdef uint64_t* raw = <uint64_t*>malloc((<size_t>P * 8 + 8) * sizeof(uint64_t))
    cdef uint8_t* fill = <uint8_t*>calloc(P, 1)
    cdef uint64_t* stage
    cdef int64_t i
    cdef uint16_t p
    cdef uint8_t k
    cdef int j
    if raw == NULL or fill == NULL:
        free(raw)
        free(fill)
        return -1
    stage = <uint64_t*>((<uintptr_t>raw + 63) & ~(<uintptr_t>63))
    for i in range(n):
        p = pids[i]
        k = fill[p]
        stage[p * 8 + k] = src[i]
        k += 1
        if k == 8:
            sabot_flush_line(dst + cur[p], stage + p * 8)
            cur[p] += 8
            k = 0
        fill[p] = k
    sabot_store_fence()
    for p in range(P):
        for j in range(fill[p]):
            dst[cur[p] + j] = stage[p * 8 + j]
        cur[p] += fill[p]
    free(raw)
    free(fill)
    return 0


cdef void _scatter_fixed(const uint16_t* pids, int64_t n, const uint8_t* src, int w,
                         uint8_t* dst, int64_t* cur) noexcept nogil:
    """dst[cur[p]++] = src[i] for w-byte values (cur in elements)."""
    cdef int64_t i
    cdef uint16_t p
    if w == 8:
        for i in range(n):
            p = pids[i]
            (<uint64_t*>dst)[cur[p]] = (<const uint64_t*>src)[i]
            cur[p] += 1
    elif w == 4:
        for i in range(n):
            p = pids[i]
            (<uint32_t*>dst)[cur[p]] = (<const uint32_t*>src)[i]
            cur[p] += 1
    elif w == 2:
        for i in range(n):
            p = pids[i]
            (<uint16_t*>dst)[cur[p]] = (<const uint16_t*>src)[i]
            cur[p] += 1
    elif w == 1:
        for i in range(n):
            p = pids[i]
            dst[cur[p]] = src[i]
            cur[p] += 1
    else:
        for i in range(n):
            p = pids[i]
            memcpy(dst + cur[p] * w, src + i * w, w)
            cur[p] += 1


cdef void _scatter_bits(const uint16_t* pids, int64_t n, const uint8_t* src, int64_t src_off,
                        uint8_t* dst, int64_t* cur, int64_t* ones) noexcept nogil:
    """Bit i of src (from bit src_off) to bit cur[p]++ of dst (zeroed); ones[p] counts set bits."""
    cdef int64_t i, k, b
    cdef uint16_t p
    for i in range(n):
        p = pids[i]
        k = cur[p]
        b = src_off + i
        if (src[b >> 3] >> (b & 7)) & 1:
            dst[k >> 3] |= <uint8_t>(1 << (k & 7))
            ones[p] += 1
        cur[p] = k + 1


cdef void _var_sizes(const uint16_t* pids, int64_t n, const offset_t* offs,
                     int64_t* nbytes) noexcept nogil:
    """nbytes[p] += length of row i (offs already points at the array's first offset)."""
    cdef int64_t i
    for i in range(n):
        nbytes[pids[i]] += offs[i + 1] - offs[i]


cdef void _scatter_var(const uint16_t* pids, int64_t n, const offset_t* offs,
                       const uint8_t* data, offset_t* dst_offs, uint8_t* dst_data,
                       int64_t* cur, int64_t* dcur, const int64_t* dstart) noexcept nogil:
    """Append row i's bytes to partition p: bytes at dcur[p], its end offset (relative to
    the partition's data start dstart[p]) at dst_offs[cur[p] + 1]."""
    cdef int64_t i, k, a, L
    cdef uint16_t p
    for i in range(n):
        p = pids[i]
        a = offs[i]
        L = offs[i + 1] - a
        if L > 0:
            memcpy(dst_data + dcur[p], data + a, L)
            dcur[p] += L
        k = cur[p] + 1
        dst_offs[k] = <offset_t>(dcur[p] - dstart[p])
        cur[p] = k


cdef void _scatter_rows(const uint16_t* pids, int64_t n, int64_t* idx,
                        int64_t* cur) noexcept nogil:
    """The stable counting-sort permutation: idx[cur[p]++] = i."""
    cdef int64_t i
    cdef uint16_t p
    for i in range(n):
        p = pids[i]
        idx[cur[p]] = i
        cur[p] += 1


cdef int64_t _pids_from_key_groups(const uint8_t* kg, int w, bint is_signed, int64_t off,
                                   int64_t n, int64_t max_parallelism, const uint16_t* table,
                                   uint16_t* pids, int64_t* kg_counts) noexcept nogil:
    """pids from a stored key-group column; returns the first row whose key group is out
    of [0, max_parallelism), or -1."""
    cdef int64_t i, g
    for i in range(n):
        if is_signed:
            g = sabot_load_int(kg + (off + i) * w, w)
        else:
            g = <int64_t>sabot_load_uint(kg + (off + i) * w, w)
        if g < 0 or g >= max_parallelism:
            return i
        pids[i] = table[g]
        kg_counts[g] += 1
    return -1

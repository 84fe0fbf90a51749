# Push-scatter kernels: split rows by partition id, keeping input order.
#
# Every kernel reads its source once, front to back, and appends each row to the
# write cursor of its partition (cur[p], initialised to the partition's start). The
# outputs are P sequential streams, so both sides stream through memory; a gather
# through a row-index permutation would instead sweep the source once per partition.
# Row indices are only materialised for nested types, which go through Arrow's take.

from libc.string cimport memcpy, memset

ctypedef fused offset_t:
    int32_t
    int64_t


ctypedef fused pid_t:
    uint8_t
    uint16_t


cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <pthread.h>
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

    /* Fixed-width scatter of K columns at once through staging lines (software write
       combining). For rows [r0, r1): dst[c][cur[p]++] = src[c][i], p = pids[i].
       All K columns share one fill count per partition (they have the same rows),
       so the partition id and the fill are loaded once per row, not once per column.
       The staging line of partition p mirrors the 64-byte destination line that
       cur[p] falls in, so any start works: a line whose start lies before this call's
       first slot of p (lo[p], e.g. another thread's rows of p) is written from lo[p]
       on with plain stores; full lines go out with non-temporal stores. */
    #define SABOT_DEF_WC(NAME, PID_T, VAL_T)                                                \
    static inline __attribute__((always_inline)) void NAME##_body(                          \
            const PID_T* pids, int64_t r0, int64_t r1, const int K,                         \
            const VAL_T* const* src, VAL_T* const* dst, int64_t* cur, int P,                \
            VAL_T* stage, uint8_t* fill, int64_t* lo) {                                     \
        enum { L = 64 / sizeof(VAL_T) };                                                    \
        int64_t i; int c, p;                                                                \
        for (p = 0; p < P; p++) {                                                           \
            lo[p] = cur[p];                                                                 \
            fill[p] = (uint8_t)(cur[p] & (L - 1));                                          \
            cur[p] -= fill[p];                        /* cur: base of the open line */      \
        }                                                                                   \
        for (i = r0; i < r1; i++) {                                                         \
            unsigned q = pids[i];                                                           \
            unsigned k = fill[q];                                                           \
            for (c = 0; c < K; c++)                                                         \
                stage[((size_t)c * P + q) * L + k] = src[c][i];                             \
            if (++k == L) {                                                                 \
                int64_t base = cur[q];                                                      \
                if (base >= lo[q]) {                                                        \
                    for (c = 0; c < K; c++)                                                 \
                        sabot_flush_line(dst[c] + base, stage + ((size_t)c * P + q) * L);   \
                } else {                                                                    \
                    int64_t h = lo[q] - base;                                               \
                    for (c = 0; c < K; c++)                                                 \
                        memcpy(dst[c] + lo[q], stage + ((size_t)c * P + q) * L + h,         \
                               (size_t)(L - h) * sizeof(VAL_T));                            \
                }                                                                           \
                cur[q] = base + L;                                                          \
                k = 0;                                                                      \
            }                                                                               \
            fill[q] = (uint8_t)k;                                                           \
        }                                                                                   \
        sabot_store_fence();                                                                \
        for (p = 0; p < P; p++) {                                                           \
            int64_t base = cur[p];                                                          \
            int64_t from = lo[p] > base ? lo[p] - base : 0;                                 \
            if (fill[p] > from)                                                             \
                for (c = 0; c < K; c++)                                                     \
                    memcpy(dst[c] + base + from, stage + ((size_t)c * P + p) * L + from,    \
                           (size_t)(fill[p] - from) * sizeof(VAL_T));                       \
            cur[p] = base + fill[p];                                                        \
        }                                                                                   \
    }                                                                                       \
    static void NAME(const PID_T* pids, int64_t r0, int64_t r1, int K,                      \
                     const VAL_T* const* src, VAL_T* const* dst, int64_t* cur, int P,       \
                     VAL_T* stage, uint8_t* fill, int64_t* lo) {                            \
        switch (K) {                                                                        \
            case 1: NAME##_body(pids, r0, r1, 1, src, dst, cur, P, stage, fill, lo); break; \
            case 2: NAME##_body(pids, r0, r1, 2, src, dst, cur, P, stage, fill, lo); break; \
            case 3: NAME##_body(pids, r0, r1, 3, src, dst, cur, P, stage, fill, lo); break; \
            default: NAME##_body(pids, r0, r1, 4, src, dst, cur, P, stage, fill, lo); break;\
        }                                                                                   \
    }
    SABOT_DEF_WC(sabot_wc_p8_w8, uint8_t, uint64_t)
    SABOT_DEF_WC(sabot_wc_p8_w4, uint8_t, uint32_t)
    SABOT_DEF_WC(sabot_wc_p8_w2, uint8_t, uint16_t)
    SABOT_DEF_WC(sabot_wc_p8_w1, uint8_t, uint8_t)
    SABOT_DEF_WC(sabot_wc_p16_w8, uint16_t, uint64_t)
    SABOT_DEF_WC(sabot_wc_p16_w4, uint16_t, uint32_t)
    SABOT_DEF_WC(sabot_wc_p16_w2, uint16_t, uint16_t)
    SABOT_DEF_WC(sabot_wc_p16_w1, uint16_t, uint8_t)

    /* Most columns in one staged pass (the staging memory is K * P * 64 bytes). */
    #define SABOT_WC_MAX_COLS 4

    /* Dispatch on partition-id width (1 or 2 bytes) and value width (1, 2, 4, 8);
       K <= SABOT_WC_MAX_COLS columns. Returns -1 if the staging memory could not be
       allocated (nothing was written then), else 0. */
    static int sabot_scatter_wc(int pid_bytes, const void* pids, int64_t r0, int64_t r1,
                                int width, int K, const void* const* src, void* const* dst,
                                int64_t* cur, int P) {
        char* raw = (char*)malloc((size_t)K * P * 64 + 64);
        uint8_t* fill = (uint8_t*)malloc((size_t)P);
        int64_t* lo = (int64_t*)malloc((size_t)P * sizeof(int64_t));
        void* stage;
        if (raw == NULL || fill == NULL || lo == NULL) {
            free(raw); free(fill); free(lo);
            return -1;
        }
        stage = (void*)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    #define SABOT_WC_CALL(PB, W, VT)                                                        \
        sabot_wc_p##PB##_w##W((const void*)pids, r0, r1, K, (const VT* const*)src,          \
                              (VT* const*)dst, cur, P, (VT*)stage, fill, lo)
        if (pid_bytes == 1) {
            switch (width) {
                case 8: SABOT_WC_CALL(8, 8, uint64_t); break;
                case 4: SABOT_WC_CALL(8, 4, uint32_t); break;
                case 2: SABOT_WC_CALL(8, 2, uint16_t); break;
                default: SABOT_WC_CALL(8, 1, uint8_t); break;
            }
        } else {
            switch (width) {
                case 8: SABOT_WC_CALL(16, 8, uint64_t); break;
                case 4: SABOT_WC_CALL(16, 4, uint32_t); break;
                case 2: SABOT_WC_CALL(16, 2, uint16_t); break;
                default: SABOT_WC_CALL(16, 1, uint8_t); break;
            }
        }
    #undef SABOT_WC_CALL
        free(raw); free(fill); free(lo);
        return 0;
    }

    /* Run fn(args[t]) for t < nt on nt threads, t == 0 on the calling thread. A thread
       that cannot be started runs on the caller afterwards, so the work always gets done. */
    typedef void (*sabot_task_fn)(void*);
    typedef struct { sabot_task_fn fn; void* arg; } sabot_task;
    static void* sabot_task_tramp(void* t) {
        ((sabot_task*)t)->fn(((sabot_task*)t)->arg);
        return NULL;
    }
    #define SABOT_MAX_THREADS 16
    static void sabot_run_parallel(sabot_task_fn fn, void** args, int nt) {
        pthread_t th[SABOT_MAX_THREADS];
        sabot_task tasks[SABOT_MAX_THREADS];
        int started[SABOT_MAX_THREADS];
        int t;
        if (nt > SABOT_MAX_THREADS) nt = SABOT_MAX_THREADS;
        for (t = 1; t < nt; t++) {
            tasks[t].fn = fn;
            tasks[t].arg = args[t];
            started[t] = pthread_create(&th[t], NULL, sabot_task_tramp, &tasks[t]) == 0;
        }
        fn(args[0]);
        for (t = 1; t < nt; t++) {
            if (started[t]) pthread_join(th[t], NULL);
            else fn(args[t]);
        }
    }
    """
    void sabot_flush_line(void* dst, const void* src) noexcept nogil
    void sabot_store_fence() noexcept nogil
    int SABOT_WC_MAX_COLS
    int SABOT_MAX_THREADS
    int sabot_scatter_wc(int pid_bytes, const void* pids, int64_t r0, int64_t r1,
                         int width, int K, const void* const* src, void* const* dst,
                         int64_t* cur, int P) noexcept nogil
    ctypedef void (*sabot_task_fn)(void*) noexcept nogil
    void sabot_run_parallel(sabot_task_fn fn, void** args, int nt) noexcept nogil


cdef void _scatter_fixed(const pid_t* pids, int64_t r0, int64_t r1, const uint8_t* src, int w,
                         uint8_t* dst, int64_t* cur) noexcept nogil:
    """dst[cur[p]++] = src[i] for w-byte values, rows [r0, r1) (cur in elements); the
    plain loop, for small inputs where staging lines do not pay off."""
    cdef int64_t i
    cdef unsigned p
    if w == 8:
        for i in range(r0, r1):
            p = pids[i]
            (<uint64_t*>dst)[cur[p]] = (<const uint64_t*>src)[i]
            cur[p] += 1
    elif w == 4:
        for i in range(r0, r1):
            p = pids[i]
            (<uint32_t*>dst)[cur[p]] = (<const uint32_t*>src)[i]
            cur[p] += 1
    elif w == 2:
        for i in range(r0, r1):
            p = pids[i]
            (<uint16_t*>dst)[cur[p]] = (<const uint16_t*>src)[i]
            cur[p] += 1
    elif w == 1:
        for i in range(r0, r1):
            p = pids[i]
            dst[cur[p]] = src[i]
            cur[p] += 1
    else:
        for i in range(r0, r1):
            p = pids[i]
            memcpy(dst + cur[p] * w, src + i * w, w)
            cur[p] += 1


cdef void _scatter_bits(const pid_t* pids, int64_t n, const uint8_t* src, int64_t src_off,
                        uint8_t* dst, int64_t* cur, int64_t* ones) noexcept nogil:
    """Bit i of src (from bit src_off) to bit cur[p]++ of dst (zeroed); ones[p] counts set bits."""
    cdef int64_t i, k, b
    cdef unsigned p
    for i in range(n):
        p = pids[i]
        k = cur[p]
        b = src_off + i
        if (src[b >> 3] >> (b & 7)) & 1:
            dst[k >> 3] |= <uint8_t>(1 << (k & 7))
            ones[p] += 1
        cur[p] = k + 1


cdef void _var_sizes(const pid_t* pids, int64_t n, const offset_t* offs,
                     int64_t* nbytes) noexcept nogil:
    """nbytes[p] += length of row i (offs already points at the array's first offset)."""
    cdef int64_t i
    for i in range(n):
        nbytes[pids[i]] += offs[i + 1] - offs[i]


cdef void _scatter_var(const pid_t* pids, int64_t n, const offset_t* offs,
                       const uint8_t* data, int64_t data_len, offset_t* dst_offs, uint8_t* dst_data,
                       int64_t* cur, int64_t* dcur, const int64_t* dstart) noexcept nogil:
    """Append row i's bytes to partition p: bytes at dcur[p], its end offset (relative to
    the partition's data start dstart[p]) at dst_offs[cur[p] + 1].

    Values of up to 16 bytes are copied as two fixed 8-byte words (no memcpy call):
    the copy may run up to 16 bytes past the value, so it needs 16 readable bytes in
    the source (checked against data_len) and 16 bytes of slack after every
    partition's output region (the caller's layout guarantees that). Bytes past a
    partition's current end are overwritten by its next value or never exposed."""
    cdef int64_t i, k, a, L
    cdef unsigned p
    cdef uint8_t* d
    cdef uint64_t w0, w1
    for i in range(n):
        p = pids[i]
        a = offs[i]
        L = offs[i + 1] - a
        d = dst_data + dcur[p]
        if L <= 16 and a + 16 <= data_len:
            memcpy(&w0, data + a, 8)
            memcpy(&w1, data + a + 8, 8)
            memcpy(d, &w0, 8)
            memcpy(d + 8, &w1, 8)
            dcur[p] += L
        elif L > 0:
            memcpy(d, data + a, L)
            dcur[p] += L
        k = cur[p] + 1
        dst_offs[k] = <offset_t>(dcur[p] - dstart[p])
        cur[p] = k


cdef void _scatter_rows(const pid_t* pids, int64_t n, int64_t* idx,
                        int64_t* cur) noexcept nogil:
    """The stable counting-sort permutation: idx[cur[p]++] = i."""
    cdef int64_t i
    cdef unsigned p
    for i in range(n):
        p = pids[i]
        idx[cur[p]] = i
        cur[p] += 1


cdef int64_t _pids_from_key_groups(const uint8_t* kg, int w, bint is_signed, int64_t off,
                                   int64_t n, int64_t max_parallelism, const uint16_t* table,
                                   pid_t* pids, int64_t* kg_counts) noexcept nogil:
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
        pids[i] = <pid_t>table[g]
        kg_counts[g] += 1
    return -1

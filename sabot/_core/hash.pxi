# The key hash (specified in docs/hash.md; golden vectors in tests/_core/test_hash_golden.py).
#
# Every value is reduced to canonical bytes and hashed with xxHash64 (seed 0):
# integers, booleans and temporal values as the 8 little-endian bytes of their
# 64-bit two's-complement value, floats as the 8 bytes of the normalised float64,
# strings / binaries as their bytes. A null is the constant NULL_HASH. A key of
# several columns folds the column hashes in order: H = h0, H = xxh64(le64(H) || le64(hi)).
#
# xxHash64 is written out below, in C, so that every hot step inlines into the
# per-type loops; it follows the reference algorithm exactly (and is checked
# against the published test values of xxHash).

from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    #define SABOT_P1 0x9E3779B185EBCA87ULL
    #define SABOT_P2 0xC2B2AE3D27D4EB4FULL
    #define SABOT_P3 0x165667B19E3779F9ULL
    #define SABOT_P4 0x85EBCA77C2B2AE63ULL
    #define SABOT_P5 0x27D4EB2F165667C5ULL
    /* Hash of a null value: 2^64 / golden ratio. */
    #define SABOT_NULL_HASH 0x9E3779B97F4A7C15ULL
    /* Canonical NaN (float64 bit pattern) every NaN is normalised to. */
    #define SABOT_CANONICAL_NAN 0x7FF8000000000000ULL

    static inline uint64_t sabot_rotl64(uint64_t x, int r) {
        return (x << r) | (x >> (64 - r));
    }
    static inline uint64_t sabot_read64le(const uint8_t* p) {
        uint64_t v; memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }
    static inline uint32_t sabot_read32le(const uint8_t* p) {
        uint32_t v; memcpy(&v, p, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap32(v);
    #endif
        return v;
    }
    static inline uint64_t sabot_xxh_round(uint64_t acc, uint64_t input) {
        acc += input * SABOT_P2;
        acc = sabot_rotl64(acc, 31);
        return acc * SABOT_P1;
    }
    static inline uint64_t sabot_xxh_merge(uint64_t acc, uint64_t val) {
        acc ^= sabot_xxh_round(0, val);
        return acc * SABOT_P1 + SABOT_P4;
    }
    static inline uint64_t sabot_xxh_avalanche(uint64_t h) {
        h ^= h >> 33; h *= SABOT_P2;
        h ^= h >> 29; h *= SABOT_P3;
        h ^= h >> 32;
        return h;
    }
    /* xxHash64(seed 0) of the 8 little-endian bytes of v: the short path of the
       reference algorithm for an input of length 8. */
    static inline uint64_t sabot_hash_u64(uint64_t v) {
        uint64_t h = SABOT_P5 + 8;
        h ^= sabot_xxh_round(0, v);
        h = sabot_rotl64(h, 27) * SABOT_P1 + SABOT_P4;
        return sabot_xxh_avalanche(h);
    }
    /* xxHash64(seed 0) of the 16 bytes le64(a) || le64(b): folds column hashes. */
    static inline uint64_t sabot_hash_combine(uint64_t a, uint64_t b) {
        uint64_t h = SABOT_P5 + 16;
        h ^= sabot_xxh_round(0, a);
        h = sabot_rotl64(h, 27) * SABOT_P1 + SABOT_P4;
        h ^= sabot_xxh_round(0, b);
        h = sabot_rotl64(h, 27) * SABOT_P1 + SABOT_P4;
        return sabot_xxh_avalanche(h);
    }
    /* xxHash64 (seed 0) of len bytes at p. */
    static inline uint64_t sabot_hash_bytes(const uint8_t* p, uint64_t len) {
        const uint8_t* end = p + len;
        uint64_t h;
        if (len >= 32) {
            const uint8_t* limit = end - 32;
            uint64_t v1 = SABOT_P1 + SABOT_P2;
            uint64_t v2 = SABOT_P2;
            uint64_t v3 = 0;
            uint64_t v4 = (uint64_t)0 - SABOT_P1;
            do {
                v1 = sabot_xxh_round(v1, sabot_read64le(p)); p += 8;
                v2 = sabot_xxh_round(v2, sabot_read64le(p)); p += 8;
                v3 = sabot_xxh_round(v3, sabot_read64le(p)); p += 8;
                v4 = sabot_xxh_round(v4, sabot_read64le(p)); p += 8;
            } while (p <= limit);
            h = sabot_rotl64(v1, 1) + sabot_rotl64(v2, 7) + sabot_rotl64(v3, 12) + sabot_rotl64(v4, 18);
            h = sabot_xxh_merge(h, v1);
            h = sabot_xxh_merge(h, v2);
            h = sabot_xxh_merge(h, v3);
            h = sabot_xxh_merge(h, v4);
        } else {
            h = SABOT_P5;
        }
        h += len;
        while (p + 8 <= end) {
            h ^= sabot_xxh_round(0, sabot_read64le(p));
            h = sabot_rotl64(h, 27) * SABOT_P1 + SABOT_P4;
            p += 8;
        }
        if (p + 4 <= end) {
            h ^= (uint64_t)sabot_read32le(p) * SABOT_P1;
            h = sabot_rotl64(h, 23) * SABOT_P2 + SABOT_P3;
            p += 4;
        }
        while (p < end) {
            h ^= (uint64_t)(*p) * SABOT_P5;
            h = sabot_rotl64(h, 11) * SABOT_P1;
            p++;
        }
        return sabot_xxh_avalanche(h);
    }
    static inline uint64_t sabot_float64_bits(double d) {
        uint64_t b;
        if (d != d) return SABOT_CANONICAL_NAN;
        if (d == 0.0) d = 0.0;          /* -0.0 -> +0.0 */
        memcpy(&b, &d, 8);
        return b;
    }
    /* sabot_hash_u64 over an array. The loop is the same C; where the CPU has
       AVX-512 (64-bit lane multiplies and rotates) a clone compiled for it hashes
       8 keys per instruction (the build itself targets baseline x86-64), chosen
       once at run time. Same function, same bits: only the instructions differ. */
    #define SABOT_HASH_U64_LOOP                                                        \
        for (int64_t i = 0; i < n; i++) out[i] = sabot_hash_u64(in[i]);
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
    __attribute__((target("avx512f,avx512dq")))
    static void sabot_hash_u64_array_avx512(const uint64_t* __restrict in, int64_t n,
                                            uint64_t* __restrict out) {
        SABOT_HASH_U64_LOOP
    }
    static void sabot_hash_u64_array_base(const uint64_t* __restrict in, int64_t n,
                                          uint64_t* __restrict out) {
        SABOT_HASH_U64_LOOP
    }
    static int sabot_has_avx512 = -1;
    static void sabot_hash_u64_array(const uint64_t* __restrict in, int64_t n,
                                     uint64_t* __restrict out) {
        if (sabot_has_avx512 < 0) {
            __builtin_cpu_init();
            sabot_has_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
        }
        if (sabot_has_avx512) sabot_hash_u64_array_avx512(in, n, out);
        else sabot_hash_u64_array_base(in, n, out);
    }
    #else
    static void sabot_hash_u64_array(const uint64_t* __restrict in, int64_t n,
                                     uint64_t* __restrict out) {
        SABOT_HASH_U64_LOOP
    }
    #endif
    static inline int64_t sabot_load_int(const uint8_t* p, int width) {
        switch (width) {
            case 1: return *(const int8_t*)p;
            case 2: { int16_t v; memcpy(&v, p, 2); return v; }
            case 4: { int32_t v; memcpy(&v, p, 4); return v; }
            default: { int64_t v; memcpy(&v, p, 8); return v; }
        }
    }
    static inline uint64_t sabot_load_uint(const uint8_t* p, int width) {
        switch (width) {
            case 1: return *p;
            case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
            case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
            default: { uint64_t v; memcpy(&v, p, 8); return v; }
        }
    }
    """
    const uint64_t SABOT_NULL_HASH
    const uint64_t SABOT_CANONICAL_NAN
    uint64_t sabot_hash_u64(uint64_t v) noexcept nogil
    uint64_t sabot_hash_combine(uint64_t a, uint64_t b) noexcept nogil
    uint64_t sabot_hash_bytes(const uint8_t* p, uint64_t n) noexcept nogil
    void sabot_hash_u64_array(const uint64_t* inp, int64_t n, uint64_t* out) noexcept nogil
    uint64_t sabot_float64_bits(double d) noexcept nogil
    int64_t sabot_load_int(const uint8_t* p, int width) noexcept nogil
    uint64_t sabot_load_uint(const uint8_t* p, int width) noexcept nogil


cdef inline bint _bit(const uint8_t* bits, int64_t i) noexcept nogil:
    return (bits[i >> 3] >> (i & 7)) & 1


cdef inline void _emit(uint64_t* out, int64_t i, uint64_t h, bint fold) noexcept nogil:
    # out points at the first row of the range, so i is range-relative here
    if fold:
        out[i] = sabot_hash_combine(out[i], h)
    else:
        out[i] = h


cdef void _hash_column(const ColSpec* c, int64_t start, int64_t stop, uint64_t* out,
                       bint fold) noexcept nogil:
    """Hash rows [start, stop) of one column into out[0:stop-start] (or fold into it).

    A column with nulls is never folded directly (hash_range hashes it into a
    scratch block first), so null rows simply overwrite their slot with NULL_HASH.
    """
    cdef int64_t i, a, b
    cdef int w = c.width
    cdef int64_t off = c.offset
    cdef const uint8_t* d = c.data
    cdef const int64_t* d64
    cdef const double* f64
    cdef const float* f32
    cdef const int32_t* o32
    cdef const int64_t* o64
    cdef uint64_t h, idx
    if c.kind == KIND_NULL:
        for i in range(start, stop):
            _emit(out, i - start, SABOT_NULL_HASH, fold)
        return
    # Values first (null slots hash their garbage), then nulls overwrite: keeps the
    # value loops branch-free.
    if c.kind == KIND_INT or c.kind == KIND_UINT:
        if w == 8 and not fold:
            d64 = <const int64_t*>d + off
            sabot_hash_u64_array(<const uint64_t*>d64 + start, stop - start, out)
        elif w == 8:
            d64 = <const int64_t*>d + off
            for i in range(start, stop):
                _emit(out, i - start, sabot_hash_u64(<uint64_t>d64[i]), fold)
        elif c.kind == KIND_INT:
            for i in range(start, stop):
                _emit(out, i - start, sabot_hash_u64(<uint64_t>sabot_load_int(d + (off + i) * w, w)), fold)
        else:
            for i in range(start, stop):
                _emit(out, i - start, sabot_hash_u64(sabot_load_uint(d + (off + i) * w, w)), fold)
    elif c.kind == KIND_BOOL:
        for i in range(start, stop):
            _emit(out, i - start, sabot_hash_u64(_bit(d, off + i)), fold)
    elif c.kind == KIND_FLOAT64:
        f64 = <const double*>d + off
        for i in range(start, stop):
            _emit(out, i - start, sabot_hash_u64(sabot_float64_bits(f64[i])), fold)
    elif c.kind == KIND_FLOAT32:
        f32 = <const float*>d + off
        for i in range(start, stop):
            _emit(out, i - start, sabot_hash_u64(sabot_float64_bits(<double>f32[i])), fold)
    elif c.kind == KIND_BIN32:
        o32 = <const int32_t*>d + off
        for i in range(start, stop):
            a = o32[i]
            b = o32[i + 1]
            _emit(out, i - start, sabot_hash_bytes(c.var_data + a, <uint64_t>(b - a)), fold)
    elif c.kind == KIND_BIN64:
        o64 = <const int64_t*>d + off
        for i in range(start, stop):
            a = o64[i]
            b = o64[i + 1]
            _emit(out, i - start, sabot_hash_bytes(c.var_data + a, <uint64_t>(b - a)), fold)
    elif c.kind == KIND_FIXEDBIN:
        for i in range(start, stop):
            _emit(out, i - start, sabot_hash_bytes(d + (off + i) * w, <uint64_t>w), fold)
    elif c.kind == KIND_DICT:
        for i in range(start, stop):
            if c.index_signed:
                idx = <uint64_t>sabot_load_int(d + (off + i) * w, w)
            else:
                idx = sabot_load_uint(d + (off + i) * w, w)
            # Null index slots may hold anything: read the dictionary only for valid rows.
            if c.validity != NULL and not _bit(c.validity, off + i):
                h = SABOT_NULL_HASH
            else:
                h = c.dict_hashes[idx]
            _emit(out, i - start, h, fold)
        return
    if c.validity != NULL:
        for i in range(start, stop):
            if not _bit(c.validity, off + i):
                out[i - start] = SABOT_NULL_HASH


cdef void hash_range(const ColSpec* cols, int ncols, int64_t start, int64_t stop,
                     uint64_t* out) noexcept nogil:
    """Key hash of rows [start, stop) of the plan's columns, written to out[0:stop-start]."""
    cdef int k
    cdef int64_t i, j, chunk
    # Columns with nulls are hashed into a small scratch block first, so the null
    # rows are fixed before folding; the block stays in L1.
    cdef uint64_t scratch[1024]
    if ncols <= 0 or stop <= start:
        return
    _hash_column(&cols[0], start, stop, out, False)
    for k in range(1, ncols):
        if cols[k].validity == NULL or cols[k].kind == KIND_DICT or cols[k].kind == KIND_NULL:
            _hash_column(&cols[k], start, stop, out, True)
            continue
        i = start
        while i < stop:
            chunk = stop - i
            if chunk > 1024:
                chunk = 1024
            _hash_column(&cols[k], i, i + chunk, scratch, False)
            for j in range(chunk):
                out[i - start + j] = sabot_hash_combine(out[i - start + j], scratch[j])
            i += chunk


cdef void partition_ids_range(const uint64_t* hashes, int64_t n, uint64_t max_parallelism,
                              const uint16_t* table, uint16_t* pids,
                              int64_t* kg_counts) noexcept nogil:
    """pids[i] = table[hashes[i] % max_parallelism] for i < n; counts rows per key group
    into kg_counts unless it is NULL."""
    _pids_from_hashes(hashes, n, max_parallelism, table, pids, kg_counts)


cdef inline void _pids_from_hashes(const uint64_t* hashes, int64_t n, uint64_t max_parallelism,
                                   const uint16_t* table, pid_t* pids,
                                   int64_t* kg_counts) noexcept nogil:
    """partition_ids_range for 1- or 2-byte partition ids (1 byte when P <= 256: half
    the id traffic of the scatter that reads them back once per column group)."""
    cdef int64_t i
    cdef uint64_t kg
    cdef uint64_t mask = max_parallelism - 1
    # max_parallelism is usually a power of two (128 by default): a mask, not a division.
    if max_parallelism & mask == 0:
        if kg_counts != NULL:
            for i in range(n):
                kg = hashes[i] & mask
                pids[i] = <pid_t>table[kg]
                kg_counts[kg] += 1
        else:
            for i in range(n):
                pids[i] = <pid_t>table[hashes[i] & mask]
    else:
        if kg_counts != NULL:
            for i in range(n):
                kg = hashes[i] % max_parallelism
                pids[i] = <pid_t>table[kg]
                kg_counts[kg] += 1
        else:
            for i in range(n):
                pids[i] = <pid_t>table[hashes[i] % max_parallelism]

# cython: language_level=3
"""Compiled keyed state for running aggregates (count, sum, min, max, mean per key).

:class:`KeyedAggregateTable` holds the state of one keyed running aggregation in an
open-addressing hash table over plain arrays, so a batch update is two tight loops
without the GIL: one that maps every row's key to a dense group id (inserting new
keys), one per value column that folds the values into that group's partial
aggregates. Nothing on the hot path creates a Python object per row.

State is kept *per key group* (Flink's design): every group remembers the key group
its key hashes to, so a snapshot, a restore or a hand-off during live rescaling can
cut the table by key-group ranges without looking at keys again.

Several key columns are stored as one byte string per key: :func:`pack_keys` packs
them into a binary column of canonical bytes (keypack.pxi), :func:`unpack_keys`
restores the columns from it.

The caller supplies the 64-bit key hashes and key groups (``sabot._core.partition``
computes them). The table is correct for any hash function, however bad, provided
the same key always comes with the same hash; a weak hash only costs speed.
"""

import logging

import numpy as np
cimport numpy as cnp
import pyarrow as pa

cimport cython
from libc.stdint cimport INT64_MAX, INT64_MIN, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy

from sabot.errors import StateInputError, UnsupportedStateType

cnp.import_array()

logger = logging.getLogger(__name__)

__all__ = [
    "KeyedAggregateTable",
    "pack_keys",
    "unpack_keys",
    "check_key_types",
    "AGGREGATE_FUNCTIONS",
    "aggregate_output_name",
    "StateInputError",
    "UnsupportedStateType",
]

#: Aggregate functions a table can keep.
AGGREGATE_FUNCTIONS = ("count", "sum", "min", "max", "mean")


def aggregate_output_name(column, fn):
    """The result column of one aggregate: ``"<column>_<fn>"``, ``"count"`` for count(*).

    The one naming rule of Sabot's aggregates (the Stream API, the runtime operators and
    this table all use it, through ``sabot.execution.operator_spec``).
    """
    return "count" if column is None or column == "*" else f"{column}_{fn}"


# Fibonacci hashing: the top bits of hash * 2^64/phi depend on every bit of the hash.
# The caller's hash is reused for key groups (hash % max_parallelism), so a subtask
# only ever sees hashes with a few values in the low bits; indexing slots by the low
# bits would pile them up.
cdef uint64_t _GOLDEN = 0x9E3779B97F4A7C15ULL

cdef int64_t _MIN_SLOTS = 16
cdef int64_t _MIN_GROUPS = 16

ctypedef fused num_t:
    double
    int64_t


cdef inline bint _bit(const uint8_t* bitmap, int64_t i) noexcept nogil:
    return (bitmap[i >> 3] >> (i & 7)) & 1


cdef inline int64_t _next_pow2(int64_t n) noexcept nogil:
    cdef int64_t p = 1
    while p < n:
        p <<= 1
    return p


cdef inline int _log2(int64_t p) noexcept nogil:
    cdef int k = 0
    while (<int64_t>1 << k) < p:
        k += 1
    return k


cdef inline void _fold(
    const int64_t* gids, const num_t* vals, const uint8_t* valid, int64_t voff,
    int64_t n, int64_t* cnt, num_t* s, num_t* mn, num_t* mx,
) noexcept nogil:
    """Fold n values into their groups' partial aggregates; null values are skipped.

    Float min/max follow Arrow: NaN is ignored unless a group only ever saw NaN
    (the state starts as NaN and any number replaces it).
    """
    cdef int64_t i, g
    cdef num_t v
    for i in range(n):
        if valid != NULL and not _bit(valid, voff + i):
            continue
        g = gids[i]
        v = vals[i]
        cnt[g] += 1
        if s != NULL:
            if num_t is double:
                s[g] += v
            else:
                # wrap like Arrow's int64 sum instead of signed-overflow UB
                s[g] = <int64_t>(<uint64_t>s[g] + <uint64_t>v)
        if mn != NULL:
            if num_t is double:
                if v < mn[g] or mn[g] != mn[g]:
                    mn[g] = v
            else:
                if v < mn[g]:
                    mn[g] = v
        if mx != NULL:
            if num_t is double:
                if v > mx[g] or mx[g] != mx[g]:
                    mx[g] = v
            else:
                if v > mx[g]:
                    mx[g] = v


cdef inline void _combine(
    const int64_t* gids, const int64_t* cnt_in, const num_t* s_in, const num_t* mn_in,
    const num_t* mx_in, int64_t n, int64_t* cnt, num_t* s, num_t* mn, num_t* mx,
) noexcept nogil:
    """Combine partial aggregates (one snapshot row per entry) into groups."""
    cdef int64_t i, g
    cdef num_t v
    for i in range(n):
        if cnt_in[i] == 0:
            continue  # nothing seen: sum/min/max of that row are nulls, not values
        g = gids[i]
        cnt[g] += cnt_in[i]
        if s != NULL:
            if num_t is double:
                s[g] += s_in[i]
            else:
                s[g] = <int64_t>(<uint64_t>s[g] + <uint64_t>s_in[i])
        if mn != NULL:
            v = mn_in[i]
            if num_t is double:
                if v < mn[g] or mn[g] != mn[g]:
                    mn[g] = v
            else:
                if v < mn[g]:
                    mn[g] = v
        if mx != NULL:
            v = mx_in[i]
            if num_t is double:
                if v > mx[g] or mx[g] != mx[g]:
                    mx[g] = v
            else:
                if v > mx[g]:
                    mx[g] = v


cdef void _gather_bytes(
    const int64_t* src_off, const uint8_t* src, const int64_t* idx, int64_t m,
    int64_t* dst_off, uint8_t* dst,
) noexcept nogil:
    """dst = concatenation of the byte strings src[idx[j]], dst_off = their offsets."""
    cdef int64_t j, g, ln, pos = 0
    dst_off[0] = 0
    for j in range(m):
        g = idx[j]
        ln = src_off[g + 1] - src_off[g]
        if ln > 0:
            memcpy(dst + pos, src + src_off[g], ln)
        pos += ln
        dst_off[j + 1] = pos


# ----------------------------------------------------------------------------------
# Arrow plumbing (with the GIL, once per batch)

_VAR_FAMILIES = {
    "string": (pa.string(), pa.large_string()),
    "binary": (pa.binary(), pa.large_binary()),
}


def _var_family(t):
    if t in _VAR_FAMILIES["string"]:
        return "string"
    if t in _VAR_FAMILIES["binary"]:
        return "binary"
    return None


def _fixed_key_dtype(t):
    """numpy integer dtype that stores keys of Arrow type t, or None if t is not int-like."""
    if pa.types.is_integer(t):
        return np.dtype(t.to_pandas_dtype())
    if (pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t)
            or pa.types.is_duration(t)):
        return np.dtype("int%d" % t.bit_width)
    return None


def _as_array(obj, what):
    """Accept pa.Array, pa.ChunkedArray or a numpy array; return a pa.Array."""
    if isinstance(obj, pa.ChunkedArray):
        return obj.combine_chunks()
    if isinstance(obj, pa.Array):
        return obj
    if isinstance(obj, np.ndarray):
        return pa.array(obj)
    raise StateInputError(
        f"{what} must be a pyarrow Array, ChunkedArray or numpy array, got {type(obj).__name__}"
    )


def _values_view(arr, dtype):
    """numpy view over an Arrow primitive array's value buffer, honouring its offset."""
    buf = arr.buffers()[1]
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    if buf is None:  # e.g. an all-null array cast from the null type
        return np.zeros(len(arr), dtype=dtype)
    return np.frombuffer(buf, dtype=dtype, count=arr.offset + len(arr))[arr.offset:]


def _validity(arr):
    """(bitmap buffer or None, bit offset) of an Arrow array; None when it has no nulls."""
    if arr.null_count == 0:
        return None, 0
    return arr.buffers()[0], arr.offset


cdef inline const uint8_t* _buf_ptr(object buf):
    if buf is None:
        return NULL
    return <const uint8_t*><size_t>buf.address


def _bitmap_from_mask(valid):
    """Arrow validity buffer (LSB order) from a boolean numpy array, or None if all valid."""
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def _normalise_aggregates(aggregates):
    if isinstance(aggregates, (str, bytes)) or not hasattr(aggregates, "__iter__"):
        raise StateInputError(
            f"aggregates must be a list of (column, function) pairs, got {aggregates!r}"
        )
    out = []
    names = set()
    for item in aggregates:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise StateInputError(
                f"each aggregate must be a (column, function) pair, got {item!r}"
            )
        col, fn = item
        if fn not in AGGREGATE_FUNCTIONS:
            raise StateInputError(
                f"unknown aggregate function {fn!r} for column {col!r}; "
                f"available: {', '.join(AGGREGATE_FUNCTIONS)}"
            )
        if col is None or col == "*":
            if fn != "count":
                raise StateInputError(
                    f"only 'count' can count rows (column None or '*'); got {fn!r} of {col!r}"
                )
            col = None
        elif not isinstance(col, str):
            raise StateInputError(f"aggregate column names must be str, got {col!r}")
        name = aggregate_output_name(col, fn)
        if name in names:
            raise StateInputError(f"aggregate {name!r} is listed twice in {aggregates!r}")
        names.add(name)
        out.append((col, fn))
    if not out:
        raise StateInputError("aggregates must name at least one (column, function) pair")
    return tuple(out)


def _value_kind(t, col):
    """True for float state, False for int64 state; raise for anything else."""
    if pa.types.is_floating(t):
        return True
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return False
    raise UnsupportedStateType(
        f"value column {col!r} has type {t}; aggregates need an integer, boolean or "
        f"floating-point column"
    )


@cython.final
cdef class _ColumnState:

    def __cinit__(self, str name, bint has_sum, bint has_min, bint has_max):
        self.name = name
        self.has_sum = has_sum
        self.has_min = has_min
        self.has_max = has_max
        self.value_type = None

    def _set_kind(self, bint is_float, value_type, int64_t cap):
        self.is_float = is_float
        self.value_type = value_type
        dt = np.float64 if is_float else np.int64
        self.cnt_arr = np.empty(cap, dtype=np.int64)
        self.sum_arr = np.empty(cap, dtype=dt) if self.has_sum else None
        self.min_arr = np.empty(cap, dtype=dt) if self.has_min else None
        self.max_arr = np.empty(cap, dtype=dt) if self.has_max else None
        self._bind()
        self._init_range(0, cap)

    cdef int _bind(self) except -1:
        cdef cnp.ndarray a
        self.cnt = NULL
        self.sum = self.mn = self.mx = NULL
        if self.cnt_arr is not None:
            a = self.cnt_arr
            self.cnt = <int64_t*>cnp.PyArray_DATA(a)
        if self.sum_arr is not None:
            a = self.sum_arr
            self.sum = cnp.PyArray_DATA(a)
        if self.min_arr is not None:
            a = self.min_arr
            self.mn = cnp.PyArray_DATA(a)
        if self.max_arr is not None:
            a = self.max_arr
            self.mx = cnp.PyArray_DATA(a)
        return 0

    cdef int _init_range(self, int64_t start, int64_t stop) except -1:
        if self.cnt_arr is None or stop <= start:
            return 0
        self.cnt_arr[start:stop] = 0
        if self.sum_arr is not None:
            self.sum_arr[start:stop] = 0
        if self.is_float:
            if self.min_arr is not None:
                self.min_arr[start:stop] = np.nan
            if self.max_arr is not None:
                self.max_arr[start:stop] = np.nan
        else:
            if self.min_arr is not None:
                self.min_arr[start:stop] = INT64_MAX
            if self.max_arr is not None:
                self.max_arr[start:stop] = INT64_MIN
        return 0

    cdef int _resize(self, int64_t old_n, int64_t new_cap) except -1:
        if self.cnt_arr is None:
            return 0
        def grown(old):
            if old is None:
                return None
            new = np.empty(new_cap, dtype=old.dtype)
            new[:old_n] = old[:old_n]
            return new

        self.cnt_arr = grown(self.cnt_arr)
        self.sum_arr = grown(self.sum_arr)
        self.min_arr = grown(self.min_arr)
        self.max_arr = grown(self.max_arr)
        self._bind()
        self._init_range(old_n, new_cap)
        return 0

    def _arrays(self):
        return [a for a in (self.cnt_arr, self.sum_arr, self.min_arr, self.max_arr)
                if a is not None]

    def _compact(self, keep_idx, int64_t old_n):
        cdef int64_t m = len(keep_idx)
        for a in self._arrays():
            a[:m] = a[:old_n][keep_idx]
        self._init_range(m, old_n)


@cython.final
cdef class KeyedAggregateTable:
    """State of a keyed running aggregation, stored per key group.

    Args:
        key_type: Arrow type of the key column. Integer types (signed and unsigned, any
            width), timestamp/date/time/duration, and ``string`` / ``large_string`` /
            ``binary`` / ``large_binary`` are supported (string and large_string are
            interchangeable in updates, as are binary and large_binary). Other key
            types raise :class:`UnsupportedStateType`; several key columns (or
            boolean, dictionary, fixed-size-binary keys) are packed into one binary
            column with :func:`pack_keys` and unpacked with :func:`unpack_keys`.
        aggregates: ``(column, function)`` pairs, function one of ``count``, ``sum``,
            ``min``, ``max``, ``mean``. ``(None, "count")`` or ``("*", "count")``
            counts rows; ``(col, "count")`` counts the non-null values of ``col``.
        max_parallelism: number of key groups; every ``key_groups`` entry must lie in
            ``[0, max_parallelism)``.
        key_name: name of the key column in :meth:`result` and :meth:`snapshot`.
        value_types: optional ``{column: pa.DataType}`` fixing the state type of value
            columns up front; otherwise it is fixed by the first update (float columns
            keep float64 state, integer and boolean columns int64 state).
        initial_capacity: number of keys to size the table for.

    Semantics follow ``pyarrow.Table.group_by(...).aggregate(...)``: null values are
    skipped by every aggregate except the row count; ``sum``/``min``/``max``/``mean`` of
    a group that saw no non-null value are null; a NaN poisons sum and mean, and is
    ignored by min/max unless the group saw only NaN. Integer sums wrap around on int64
    overflow. Null keys form one group of their own (with the key group of their first
    row). Sum, min and max of integer columns are int64, of floating columns float64;
    mean is float64; counts are int64.

    A table is owned by one task: updates release the GIL, and a second thread calling
    into a table that is busy gets a RuntimeError rather than corrupt state.

    Example:
        >>> t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")])
        >>> keys = pa.array([1, 2, 1]); h = np.array([11, 22, 11], dtype=np.uint64)
        >>> t.update(keys, h, (h % 128).astype(np.int32), {"v": pa.array([1.0, 2.0, 3.0])})
        >>> t.result().to_pydict()
        {'key': [1, 2], 'count': [2, 1], 'v_sum': [4.0, 2.0]}
    """

    def __cinit__(self):
        self.num_keys = 0
        self._null_gid = -1
        self._busy = False

    def __init__(self, key_type, aggregates, int max_parallelism=128, *,
                 str key_name="key", value_types=None, int64_t initial_capacity=1024):
        if not isinstance(key_type, pa.DataType):
            raise UnsupportedStateType(
                f"key_type must be a pyarrow DataType, got {key_type!r}"
            )
        if max_parallelism < 1:
            raise StateInputError(f"max_parallelism must be >= 1, got {max_parallelism}")
        if _var_family(key_type) is not None:
            self._var_width = True
            self._key_np_dtype = None
        else:
            self._key_np_dtype = _fixed_key_dtype(key_type)
            if self._key_np_dtype is None:
                raise UnsupportedStateType(
                    f"unsupported key type {key_type}: keyed state takes integer, "
                    f"temporal, string, large_string, binary or large_binary keys "
                    f"(for several key columns or other key types, key the table on "
                    f"large_binary and pack the columns with pack_keys)"
                )
            self._var_width = False
        self.key_type = key_type
        self.key_name = key_name
        self.max_parallelism = max_parallelism
        self.aggregates = _normalise_aggregates(aggregates)

        needs = {}
        for col, fn in self.aggregates:
            if col is None:
                continue
            flags = needs.setdefault(col, set())
            if fn in ("sum", "mean"):
                flags.add("sum")
            elif fn in ("min", "max"):
                flags.add(fn)
        self._columns = []
        self._column_index = {}
        for col, flags in needs.items():
            cs = _ColumnState(col, "sum" in flags, "min" in flags, "max" in flags)
            self._columns.append(cs)
            self._column_index[col] = cs

        cap = max(_MIN_GROUPS, _next_pow2(max(initial_capacity, 1)))
        self._gcap = 0
        self._arena_cap = 0
        self._hash_arr = np.empty(0, dtype=np.uint64)
        self._kg_arr = np.empty(0, dtype=np.int32)
        self._rows_arr = np.empty(0, dtype=np.int64)
        self._ikey_arr = None if self._var_width else np.empty(0, dtype=np.int64)
        self._koff_arr = np.zeros(1, dtype=np.int64) if self._var_width else None
        self._arena_arr = np.empty(0, dtype=np.uint8) if self._var_width else None
        self._grow_groups(cap)
        if self._var_width:
            self._grow_arena(16 * cap)
        self._rebuild_slots(max(_MIN_SLOTS, 2 * cap))

        if value_types:
            for col, t in dict(value_types).items():
                cs = self._column_index.get(col)
                if cs is None:
                    raise StateInputError(
                        f"value_types names column {col!r}, which no aggregate uses; "
                        f"aggregated columns: {sorted(self._column_index)}"
                    )
                cs._set_kind(_value_kind(t, col), t, self._gcap)

    # ------------------------------------------------------------------ storage

    cdef int _bind(self) except -1:
        cdef cnp.ndarray a
        a = self._hash_arr
        self._hash = <uint64_t*>cnp.PyArray_DATA(a)
        a = self._kg_arr
        self._kg = <int32_t*>cnp.PyArray_DATA(a)
        a = self._rows_arr
        self._rows = <int64_t*>cnp.PyArray_DATA(a)
        self._ikey = NULL
        self._koff = NULL
        self._arena = NULL
        if self._ikey_arr is not None:
            a = self._ikey_arr
            self._ikey = <int64_t*>cnp.PyArray_DATA(a)
        if self._koff_arr is not None:
            a = self._koff_arr
            self._koff = <int64_t*>cnp.PyArray_DATA(a)
        if self._arena_arr is not None:
            a = self._arena_arr
            self._arena = <uint8_t*>cnp.PyArray_DATA(a)
        a = self._slots_arr if self._slots_arr is not None else None
        if a is not None:
            self._slots = <_Slot*>cnp.PyArray_DATA(a)
        return 0

    cdef int _grow_groups(self, int64_t min_cap) except -1:
        cdef int64_t n = self.num_keys
        cdef int64_t new_cap = max(self._gcap * 2, _next_pow2(min_cap), _MIN_GROUPS)
        cdef _ColumnState cs

        def grown(old, dtype, fill):
            new = np.empty(new_cap + (1 if fill == "offsets" else 0), dtype=dtype)
            if fill == "offsets":
                new[:n + 1] = old[:n + 1]
            else:
                new[:n] = old[:n]
                if fill is not None:
                    new[n:] = fill
            return new

        self._hash_arr = grown(self._hash_arr, np.uint64, None)
        self._kg_arr = grown(self._kg_arr, np.int32, None)
        self._rows_arr = grown(self._rows_arr, np.int64, 0)
        if self._var_width:
            self._koff_arr = grown(self._koff_arr, np.int64, "offsets")
        else:
            self._ikey_arr = grown(self._ikey_arr, np.int64, None)
        self._gcap = new_cap
        self._bind()
        for cs in self._columns:
            cs._resize(n, new_cap)
        return 0

    cdef int _grow_arena(self, int64_t min_cap) except -1:
        cdef int64_t used = self._koff[self.num_keys] if self._koff != NULL else 0
        cdef int64_t new_cap = max(self._arena_cap * 2, min_cap, 1024)
        new = np.empty(new_cap, dtype=np.uint8)
        new[:used] = self._arena_arr[:used]
        self._arena_arr = new
        self._arena_cap = new_cap
        self._bind()
        return 0

    cdef int _rebuild_slots(self, int64_t n_slots) except -1:
        """(Re)build the slot array with n_slots (a power of two) from the group columns."""
        cdef int64_t g, pos, n = self.num_keys, null_gid = self._null_gid
        cdef uint64_t mask, h
        cdef int shift
        cdef bint var = self._var_width
        cdef _Slot* slots
        cdef uint64_t* hashes
        cdef int64_t* ikey
        n_slots = _next_pow2(max(n_slots, _MIN_SLOTS))
        arr = np.empty(n_slots * 2, dtype=np.int64)   # _Slot is {uint64, int64}
        arr[1::2] = -1
        self._slots_arr = arr
        self._slot_mask = <uint64_t>(n_slots - 1)
        self._slot_shift = 64 - _log2(n_slots)
        self._bind()
        slots = self._slots
        mask = self._slot_mask
        shift = self._slot_shift
        hashes = self._hash
        ikey = self._ikey
        with nogil:
            for g in range(n):
                if g == null_gid:
                    continue
                h = hashes[g]
                pos = <int64_t>((h * _GOLDEN) >> shift)
                while slots[pos].gid >= 0:
                    pos = <int64_t>((<uint64_t>pos + 1) & mask)
                slots[pos].tag = h if var else <uint64_t>ikey[g]
                slots[pos].gid = g
        return 0

    def reserve(self, int64_t n_keys):
        """Size the table so that ``n_keys`` keys fit without growing."""
        if n_keys > self._gcap:
            self._grow_groups(n_keys)
        if 2 * n_keys > <int64_t>(self._slot_mask + 1):
            self._rebuild_slots(2 * n_keys)

    def _enter(self):
        if self._busy:
            raise RuntimeError(
                "KeyedAggregateTable is in use by another thread; a table is owned by one task"
            )
        self._busy = True

    # ------------------------------------------------------------------ key -> group

    def _key_input(self, keys):
        """Check the key array's type; return (arr, data, offsets) ready for the kernel."""
        keys = _as_array(keys, "keys")
        if isinstance(keys.type, pa.DictionaryType):
            keys = keys.dictionary_decode()
        if self._var_width:
            fam = _var_family(keys.type)
            if fam != _var_family(self.key_type):
                raise UnsupportedStateType(
                    f"keys have type {keys.type}, but this table holds {self.key_type} keys"
                )
            n = len(keys)
            bufs = keys.buffers()
            odt = np.int64 if keys.type in (pa.large_string(), pa.large_binary()) else np.int32
            if n == 0:
                offsets = np.zeros(1, dtype=np.int64)
            else:
                offsets = np.frombuffer(bufs[1], dtype=odt, count=keys.offset + n + 1)
                offsets = offsets[keys.offset:].astype(np.int64, copy=False)
            return keys, bufs[2], offsets
        if keys.type != self.key_type:
            raise UnsupportedStateType(
                f"keys have type {keys.type}, but this table holds {self.key_type} keys"
            )
        data = _values_view(keys, self._key_np_dtype)
        if data.dtype != np.int64:
            data = data.astype(np.int64)
        return keys, data, None

    def _prepare_keys(self, keys, hashes, key_groups):
        """Validate one batch's keys, hashes and key groups (no state is touched)."""
        cdef int64_t n, maxp = self.max_parallelism
        keys, kdata_obj, offsets = self._key_input(keys)
        n = len(keys)
        hashes = np.asarray(hashes)
        if hashes.dtype == np.int64:
            hashes = hashes.view(np.uint64)
        if hashes.dtype != np.uint64 or hashes.ndim != 1:
            raise StateInputError(
                f"hashes must be a 1-d uint64 numpy array, got dtype {hashes.dtype} "
                f"with shape {hashes.shape}"
            )
        key_groups = np.asarray(key_groups)
        if key_groups.ndim != 1 or key_groups.dtype.kind not in "iu":
            raise StateInputError(
                f"key_groups must be a 1-d integer numpy array, got dtype "
                f"{key_groups.dtype} with shape {key_groups.shape}"
            )
        if len(hashes) != n or len(key_groups) != n:
            raise StateInputError(
                f"keys, hashes and key_groups must have the same length; got "
                f"{n}, {len(hashes)} and {len(key_groups)}"
            )
        # checked up front so that a bad batch is rejected whole, not half applied
        if n and (key_groups.min() < 0 or key_groups.max() >= maxp):
            lo, hi = key_groups.min(), key_groups.max()
            bad = int(np.flatnonzero((key_groups < 0) | (key_groups >= maxp))[0])
            raise StateInputError(
                f"key_groups[{bad}] = {key_groups[bad]} is outside [0, {maxp}) "
                f"(max_parallelism={maxp}); the batch's key groups range from {lo} to {hi}"
            )
        if key_groups.dtype != np.int32:
            key_groups = key_groups.astype(np.int32)
        if self._var_width:
            offsets = np.ascontiguousarray(offsets)
        else:
            kdata_obj = np.ascontiguousarray(kdata_obj)
        return (keys, kdata_obj, offsets, np.ascontiguousarray(hashes),
                np.ascontiguousarray(key_groups))

    cdef object _assign_groups(self, tuple prepared):
        """Group id (int64) of every row's key, inserting keys not seen before."""
        cdef int64_t n, i = 0, nk, limit, g, pos, klen = 0, kstart = 0, used, need = 0
        cdef int64_t null_gid, maxp = self.max_parallelism, bad_row = -1
        cdef int stop, shift
        cdef uint64_t h, tag, mask, GOLD = _GOLDEN
        cdef int32_t kgv
        cdef const uint8_t* valid
        cdef int64_t voff
        cdef const int64_t* ikeys = NULL
        cdef const int64_t* offs = NULL
        cdef const uint8_t* kdata = NULL
        cdef const uint64_t* hp
        cdef const int32_t* kgp
        cdef int64_t* out
        cdef _Slot* slots
        cdef _Slot* s
        cdef bint var = self._var_width
        cdef bint found
        cdef cnp.ndarray a_h, a_kg, a_out, a_keys, a_offs

        keys, kdata_obj, offsets, a_h, a_kg = prepared
        n = len(keys)
        a_out = np.empty(n, dtype=np.int64)
        hp = <const uint64_t*>cnp.PyArray_DATA(a_h)
        kgp = <const int32_t*>cnp.PyArray_DATA(a_kg)
        out = <int64_t*>cnp.PyArray_DATA(a_out)
        vbuf, voff = _validity(keys)
        valid = _buf_ptr(vbuf)
        if var:
            a_offs = offsets
            offs = <const int64_t*>cnp.PyArray_DATA(a_offs)
            kdata = _buf_ptr(kdata_obj)
        else:
            a_keys = kdata_obj
            ikeys = <const int64_t*>cnp.PyArray_DATA(a_keys)

        self._enter()
        try:
            while True:
                nk = self.num_keys
                limit = min(self._gcap, <int64_t>((self._slot_mask + 1) >> 1))
                slots = self._slots
                mask = self._slot_mask
                shift = self._slot_shift
                null_gid = self._null_gid
                used = self._koff[nk] if var else 0
                stop = 0
                with nogil:
                    while i < n:
                        if valid != NULL and not _bit(valid, voff + i):
                            if null_gid < 0:
                                if nk >= limit:
                                    stop = 1
                                    break
                                kgv = kgp[i]
                                if kgv < 0 or kgv >= maxp:
                                    stop = 3
                                    bad_row = i
                                    break
                                null_gid = nk
                                self._hash[nk] = hp[i]
                                self._kg[nk] = kgv
                                if var:
                                    self._koff[nk + 1] = used
                                else:
                                    self._ikey[nk] = 0
                                nk += 1
                            out[i] = null_gid
                            i += 1
                            continue
                        h = hp[i]
                        if var:
                            kstart = offs[i]
                            klen = offs[i + 1] - kstart
                            tag = h
                        else:
                            tag = <uint64_t>ikeys[i]
                        pos = <int64_t>((h * GOLD) >> shift)
                        found = False
                        while True:
                            s = &slots[pos]
                            if s.gid < 0:
                                break
                            if s.tag == tag:
                                if not var:
                                    found = True
                                    break
                                g = s.gid
                                if (self._koff[g + 1] - self._koff[g] == klen and
                                        memcmp(self._arena + self._koff[g],
                                               kdata + kstart, klen) == 0):
                                    found = True
                                    break
                            pos = <int64_t>((<uint64_t>pos + 1) & mask)
                        if found:
                            out[i] = s.gid
                            i += 1
                            continue
                        # insert a new group at the empty slot s
                        if nk >= limit:
                            stop = 1
                            break
                        kgv = kgp[i]
                        if kgv < 0 or kgv >= maxp:
                            stop = 3
                            bad_row = i
                            break
                        if var:
                            if used + klen > self._arena_cap:
                                stop = 2
                                need = used + klen
                                break
                            if klen > 0:
                                memcpy(self._arena + used, kdata + kstart, klen)
                            used += klen
                            self._koff[nk + 1] = used
                        else:
                            self._ikey[nk] = ikeys[i]
                        self._hash[nk] = h
                        self._kg[nk] = kgv
                        s.tag = tag
                        s.gid = nk
                        out[i] = nk
                        nk += 1
                        i += 1
                self.num_keys = nk
                self._null_gid = null_gid
                if stop == 0:
                    break
                if stop == 3:
                    raise StateInputError(
                        f"key_groups[{bad_row}] = {a_kg[bad_row]} is outside "
                        f"[0, {maxp}) (max_parallelism={maxp})"
                    )
                if stop == 2:
                    self._grow_arena(need)
                else:
                    if nk >= self._gcap:
                        self._grow_groups(nk + 1)
                    if 2 * (nk + 1) > <int64_t>(self._slot_mask + 1):
                        self._rebuild_slots(<int64_t>(self._slot_mask + 1) * 2)
        finally:
            self._busy = False
        return a_out

    # ------------------------------------------------------------------ updates

    def _value_arrays(self, values, int64_t n):
        """Per column state: (ColumnState, numpy values, validity buffer, bit offset)."""
        cdef _ColumnState cs
        out = []
        if not self._columns:
            return out
        if values is None:
            raise StateInputError(
                f"values are required for columns {sorted(self._column_index)}"
            )
        if isinstance(values, (pa.RecordBatch, pa.Table)):
            available = values.schema.names
            getter = values.column
        else:
            available = list(values)
            getter = values.__getitem__
        for cs in self._columns:
            if cs.name not in available:
                raise StateInputError(
                    f"value column {cs.name!r} is missing; available columns: {available}"
                )
            arr = _as_array(getter(cs.name), f"value column {cs.name!r}")
            if len(arr) != n:
                raise StateInputError(
                    f"value column {cs.name!r} has {len(arr)} rows, keys have {n}"
                )
            is_float = _value_kind(arr.type, cs.name)
            if cs.cnt_arr is not None:
                if is_float and not cs.is_float:
                    raise UnsupportedStateType(
                        f"value column {cs.name!r} has type {arr.type}, but its state holds "
                        f"integers (first seen as {cs.value_type}); cast it to an integer type"
                    )
                is_float = cs.is_float
            target = pa.float64() if is_float else pa.int64()
            if arr.type != target:
                try:
                    arr = arr.cast(target)
                except pa.ArrowInvalid as exc:
                    raise StateInputError(
                        f"value column {cs.name!r} of type {arr.type} cannot be held as "
                        f"{target}: {exc}"
                    ) from exc
            vbuf, voff = _validity(arr)
            out.append((cs, is_float, arr.type if cs.value_type is None else None,
                        np.ascontiguousarray(_values_view(arr, np.float64 if is_float else np.int64)),
                        vbuf, voff))
        return out

    def _fix_kinds(self, cols):
        """Fix the state type of columns seen for the first time (after validation)."""
        cdef _ColumnState cs
        for cs, is_float, first_type, _, _, _ in cols:
            if cs.cnt_arr is None:
                cs._set_kind(is_float, first_type, self._gcap)

    def update(self, keys, hashes, key_groups, values=None, *, bint return_groups=False):
        """Fold one batch into the running aggregates.

        Args:
            keys: key column (pa.Array / ChunkedArray / numpy), of the table's key type.
                Slices are fine; null keys form one group of their own.
            hashes: uint64 numpy array, the stable 64-bit hash of each key (int64 is
                reinterpreted). Equal keys must come with equal hashes.
            key_groups: integer numpy array, each row's key group in
                ``[0, max_parallelism)``; it is recorded when a key is first seen.
            values: mapping (or RecordBatch / Table) from value column name to a
                pa.Array / numpy array with one entry per key; every aggregated column
                must be present. Nulls are skipped.
            return_groups: also return the group id of every row (int64 numpy array),
                e.g. ``np.unique`` of it feeds :meth:`result` to emit updated keys.

        Returns:
            None, or the per-row group ids when ``return_groups`` is true.
        """
        cdef int64_t n
        cdef _ColumnState cs
        cdef cnp.ndarray a_g, a_v
        cdef const int64_t* gp
        cdef int64_t* rows
        cdef const uint8_t* valid
        cdef int64_t voff, i
        prepared = self._prepare_keys(keys, hashes, key_groups)
        n = len(prepared[0])
        cols = self._value_arrays(values, n)
        self._fix_kinds(cols)
        a_g = self._assign_groups(prepared)
        gp = <const int64_t*>cnp.PyArray_DATA(a_g)
        self._enter()
        try:
            rows = self._rows
            with nogil:
                for i in range(n):
                    rows[gp[i]] += 1
            for cs, _, _, a_v, vbuf, voff in cols:
                valid = _buf_ptr(vbuf)
                if cs.is_float:
                    with nogil:
                        _fold(gp, <const double*>cnp.PyArray_DATA(a_v), valid, voff, n,
                              cs.cnt, <double*>cs.sum, <double*>cs.mn, <double*>cs.mx)
                else:
                    with nogil:
                        _fold(gp, <const int64_t*>cnp.PyArray_DATA(a_v), valid, voff, n,
                              cs.cnt, <int64_t*>cs.sum, <int64_t*>cs.mn, <int64_t*>cs.mx)
        finally:
            self._busy = False
        return a_g if return_groups else None

    # ------------------------------------------------------------------ reading

    def __len__(self):
        return self.num_keys

    def __repr__(self):
        return (f"KeyedAggregateTable(key_type={self.key_type}, aggregates={list(self.aggregates)}, "
                f"max_parallelism={self.max_parallelism}, num_keys={self.num_keys})")

    @property
    def memory_bytes(self):
        """Bytes held by the table's arrays (group columns, slots, key arena)."""
        cdef _ColumnState cs
        total = 0
        for a in (self._hash_arr, self._kg_arr, self._rows_arr, self._ikey_arr,
                  self._koff_arr, self._arena_arr, self._slots_arr):
            if a is not None:
                total += a.nbytes
        for cs in self._columns:
            total += sum(a.nbytes for a in cs._arrays())
        return total

    def _group_index(self, groups):
        if groups is None:
            return None
        idx = np.asarray(groups)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise StateInputError(
                f"groups must be a 1-d array of group ids, got dtype {idx.dtype} "
                f"with shape {idx.shape}"
            )
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_keys):
            raise StateInputError(
                f"group ids must lie in [0, {self.num_keys}) (the table holds "
                f"{self.num_keys} keys); got values from {idx.min()} to {idx.max()}"
            )
        return idx

    def _take(self, arr, idx):
        """arr[:num_keys] or arr[idx], as a fresh array."""
        if idx is None:
            return arr[:self.num_keys].copy()
        return arr[idx]

    def _key_column(self, idx):
        cdef int64_t n = self.num_keys
        cdef int64_t m = n if idx is None else len(idx)
        cdef cnp.ndarray a_idx, a_off, a_dst
        if idx is None:
            valid = np.ones(n, dtype=bool)
            if self._null_gid >= 0:
                valid[self._null_gid] = False
        else:
            valid = idx != self._null_gid
        bitmap = _bitmap_from_mask(valid)
        if not self._var_width:
            data = self._take(self._ikey_arr, idx).astype(self._key_np_dtype, copy=False)
            return pa.Array.from_buffers(self.key_type, m, [bitmap, pa.py_buffer(data)])
        large = pa.large_string() if _var_family(self.key_type) == "string" else pa.large_binary()
        if idx is None:
            offsets = self._koff_arr[:n + 1].copy()
            data = self._arena_arr[:offsets[n]].copy()
        else:
            a_idx = np.ascontiguousarray(idx, dtype=np.int64)
            lens = self._koff_arr[1:n + 1] - self._koff_arr[:n]
            a_off = np.empty(m + 1, dtype=np.int64)
            a_dst = np.empty(int(lens[idx].sum()) if m else 0, dtype=np.uint8)
            with nogil:
                _gather_bytes(self._koff, self._arena, <const int64_t*>cnp.PyArray_DATA(a_idx),
                              m, <int64_t*>cnp.PyArray_DATA(a_off),
                              <uint8_t*>cnp.PyArray_DATA(a_dst))
            offsets, data = a_off, a_dst
        arr = pa.Array.from_buffers(large, m, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)])
        if arr.type != self.key_type:
            arr = arr.cast(self.key_type)
        return arr

    def result(self, groups=None):
        """The current aggregates as a pa.Table.

        Args:
            groups: None for every key (in first-seen order), or group ids (as returned
                by ``update(..., return_groups=True)``) to emit only those, in the given
                order.

        Returns:
            Table with the key column (``key_name``) and one column per aggregate:
            one per aggregate named by :func:`aggregate_output_name` (``"<column>_<fn>"``,
            ``count`` for the row count).
        """
        cdef _ColumnState cs
        idx = self._group_index(groups)
        names = [self.key_name]
        cols = [self._key_column(idx)]
        for col, fn in self.aggregates:
            if col is None:
                names.append("count")
                cols.append(pa.array(self._take(self._rows_arr, idx), type=pa.int64()))
                continue
            names.append(aggregate_output_name(col, fn))
            cs = self._column_index[col]
            if cs.cnt_arr is None:  # never saw a value: counts 0, everything else null
                m = self.num_keys if idx is None else len(idx)
                if fn == "count":
                    cols.append(pa.array(np.zeros(m, dtype=np.int64)))
                else:
                    cols.append(pa.nulls(m, type=pa.float64()))
                continue
            cnt = self._take(cs.cnt_arr, idx)
            empty = cnt == 0
            if fn == "count":
                cols.append(pa.array(cnt, type=pa.int64()))
            elif fn == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = self._take(cs.sum_arr, idx) / cnt
                cols.append(pa.array(mean, mask=empty, type=pa.float64()))
            else:
                src = {"sum": cs.sum_arr, "min": cs.min_arr, "max": cs.max_arr}[fn]
                cols.append(pa.array(self._take(src, idx), mask=empty))
        return pa.Table.from_arrays(cols, names=names)

    def key_group_counts(self):
        """Number of keys per key group (int64 array of length max_parallelism)."""
        return np.bincount(self._kg_arr[:self.num_keys],
                           minlength=self.max_parallelism).astype(np.int64)

    # ------------------------------------------------------------------ snapshots

    def _kg_mask(self, selection):
        """Boolean mask over key groups from None, (start, stop), a bool mask or ids."""
        maxp = self.max_parallelism
        if selection is None:
            return np.ones(maxp, dtype=bool)
        if isinstance(selection, tuple) and len(selection) == 2 and all(
                isinstance(x, (int, np.integer)) for x in selection):
            start, stop = int(selection[0]), int(selection[1])
            if not 0 <= start <= stop <= maxp:
                raise StateInputError(
                    f"key-group range ({start}, {stop}) must satisfy "
                    f"0 <= start <= stop <= max_parallelism={maxp}"
                )
            mask = np.zeros(maxp, dtype=bool)
            mask[start:stop] = True
            return mask
        sel = np.asarray(selection)
        if sel.dtype == bool:
            if sel.shape != (maxp,):
                raise StateInputError(
                    f"a key-group mask needs one entry per key group ({maxp}), "
                    f"got shape {sel.shape}"
                )
            return sel
        if sel.ndim == 1 and (sel.size == 0 or sel.dtype.kind in "iu"):
            if sel.size and (sel.min() < 0 or sel.max() >= maxp):
                raise StateInputError(
                    f"key groups must lie in [0, {maxp}); got values from "
                    f"{sel.min()} to {sel.max()}"
                )
            mask = np.zeros(maxp, dtype=bool)
            mask[sel.astype(np.int64)] = True
            return mask
        raise StateInputError(
            "select key groups with None, a (start, stop) range, a boolean mask of "
            f"length {maxp} or an array of key-group ids; got {selection!r}"
        )

    def _selected_groups(self, selection):
        if selection is None:
            return None
        mask = self._kg_mask(selection)
        if mask.all():
            return None
        return np.flatnonzero(mask[self._kg_arr[:self.num_keys]])

    def snapshot(self, key_groups=None):
        """Raw state of some key groups as a pa.Table (the unit of checkpoints and hand-off).

        Args:
            key_groups: None (all), a ``(start, stop)`` range, a boolean mask of length
                ``max_parallelism``, or an array of key-group ids.

        Returns:
            Table with the key column, ``_key_group`` (int32), ``_hash`` (uint64),
            ``_rows`` (int64, rows seen) and for every aggregated value column
            ``_count_{col}`` (non-null values seen) plus, as the aggregates need them,
            ``_sum_{col}``, ``_min_{col}``, ``_max_{col}`` (int64 or float64; min/max
            null where the count is 0). :meth:`merge` / :meth:`restore` take it back.
        """
        cdef _ColumnState cs
        idx = self._selected_groups(key_groups)
        names = [self.key_name, "_key_group", "_hash", "_rows"]
        cols = [
            self._key_column(idx),
            pa.array(self._take(self._kg_arr, idx), type=pa.int32()),
            pa.array(self._take(self._hash_arr, idx), type=pa.uint64()),
            pa.array(self._take(self._rows_arr, idx), type=pa.int64()),
        ]
        m = len(cols[0])
        for cs in self._columns:
            vt = pa.float64() if cs.is_float else pa.int64()
            if cs.cnt_arr is None:
                # the value type was never fixed; an empty-state column is all zero / null
                names.append(f"_count_{cs.name}")
                cols.append(pa.array(np.zeros(m, dtype=np.int64)))
                for flag, part in ((cs.has_sum, "sum"), (cs.has_min, "min"), (cs.has_max, "max")):
                    if flag:
                        names.append(f"_{part}_{cs.name}")
                        cols.append(pa.nulls(m, type=pa.float64()))
                continue
            cnt = self._take(cs.cnt_arr, idx)
            names.append(f"_count_{cs.name}")
            cols.append(pa.array(cnt, type=pa.int64()))
            if cs.has_sum:
                names.append(f"_sum_{cs.name}")
                cols.append(pa.array(self._take(cs.sum_arr, idx), type=vt))
            for flag, part, src in ((cs.has_min, "min", cs.min_arr), (cs.has_max, "max", cs.max_arr)):
                if flag:
                    names.append(f"_{part}_{cs.name}")
                    cols.append(pa.array(self._take(src, idx), mask=cnt == 0, type=vt))
        return pa.Table.from_arrays(cols, names=names)

    def merge(self, snapshot):
        """Combine a :meth:`snapshot` table into this table.

        Keys already present have their partial aggregates combined (counts and sums
        add, min/max take the extreme); new keys are inserted with the snapshot's key
        group and hash. Works on an empty or a non-empty table.
        """
        cdef int64_t n
        cdef _ColumnState cs
        cdef cnp.ndarray a_g, a_rows, a_cnt, a_s, a_mn, a_mx
        cdef const int64_t* gp
        cdef int64_t* rows
        cdef const int64_t* rin
        cdef int64_t i
        cdef void* ps
        cdef void* pmn
        cdef void* pmx
        if isinstance(snapshot, pa.RecordBatch):
            snapshot = pa.Table.from_batches([snapshot])
        if not isinstance(snapshot, pa.Table):
            raise StateInputError(
                f"merge/restore take a pa.Table from snapshot(), got {type(snapshot).__name__}"
            )
        snapshot = snapshot.combine_chunks()
        names = snapshot.schema.names
        required = [self.key_name, "_key_group", "_hash", "_rows"]
        for cs in self._columns:
            required.append(f"_count_{cs.name}")
            for flag, part in ((cs.has_sum, "sum"), (cs.has_min, "min"), (cs.has_max, "max")):
                if flag:
                    required.append(f"_{part}_{cs.name}")
        missing = [c for c in required if c not in names]
        if missing:
            raise StateInputError(
                f"snapshot lacks columns {missing} needed by aggregates "
                f"{list(self.aggregates)}; it has {names}"
            )

        def col(name):
            c = snapshot.column(name)
            return c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()

        def plain(name, dtype):
            arr = col(name)
            if name in ("_rows",) or name.startswith("_count_"):
                if arr.null_count:
                    raise StateInputError(f"snapshot column {name!r} has nulls")
            if arr.type != pa.from_numpy_dtype(np.dtype(dtype)):
                arr = arr.cast(pa.from_numpy_dtype(np.dtype(dtype)))
            return np.ascontiguousarray(_values_view(arr, dtype))

        n = snapshot.num_rows
        # Work out every column's state kind and read every input before touching any
        # state, so that a bad snapshot is rejected whole.
        kinds = {}
        for cs in self._columns:
            parts = [p for p, flag in (("sum", cs.has_sum), ("min", cs.has_min),
                                       ("max", cs.has_max)) if flag]
            t = snapshot.schema.field(f"_{parts[0]}_{cs.name}").type if parts else pa.int64()
            if pa.types.is_null(t):   # the snapshotted table never saw a value
                t = None
            snap_float = None if t is None else _value_kind(t, cs.name)
            if cs.cnt_arr is not None:
                if snap_float and not cs.is_float:
                    raise UnsupportedStateType(
                        f"snapshot holds float state for column {cs.name!r}, "
                        f"this table integer state"
                    )
                kinds[cs.name] = (cs.is_float, None)
            elif snap_float is not None:
                kinds[cs.name] = (snap_float, t)
        prepared_keys = self._prepare_keys(
            col(self.key_name), plain("_hash", np.uint64), plain("_key_group", np.int32))
        a_rows = plain("_rows", np.int64)
        prepared = []
        for cs in self._columns:
            if cs.name not in kinds:
                continue  # neither side ever saw a value for this column
            is_float, first_type = kinds[cs.name]
            dt = np.float64 if is_float else np.int64
            arrs = [plain(f"_count_{cs.name}", np.int64)]
            for flag, part in ((cs.has_sum, "sum"), (cs.has_min, "min"), (cs.has_max, "max")):
                arrs.append(plain(f"_{part}_{cs.name}", dt) if flag
                            else np.zeros(0, dtype=dt))
            prepared.append((cs, arrs))
        for cs in self._columns:
            if cs.cnt_arr is None and cs.name in kinds:
                cs._set_kind(kinds[cs.name][0], kinds[cs.name][1], self._gcap)

        self.reserve(self.num_keys + n)
        a_g = self._assign_groups(prepared_keys)
        gp = <const int64_t*>cnp.PyArray_DATA(a_g)
        self._enter()
        try:
            rows = self._rows
            rin = <const int64_t*>cnp.PyArray_DATA(a_rows)
            with nogil:
                for i in range(n):
                    rows[gp[i]] += rin[i]
            for cs, arrs in prepared:
                a_cnt, a_s, a_mn, a_mx = arrs
                ps = cnp.PyArray_DATA(a_s) if cs.has_sum else NULL
                pmn = cnp.PyArray_DATA(a_mn) if cs.has_min else NULL
                pmx = cnp.PyArray_DATA(a_mx) if cs.has_max else NULL
                if cs.is_float:
                    with nogil:
                        _combine(gp, <const int64_t*>cnp.PyArray_DATA(a_cnt),
                                 <const double*>ps, <const double*>pmn, <const double*>pmx, n,
                                 cs.cnt, <double*>cs.sum, <double*>cs.mn, <double*>cs.mx)
                else:
                    with nogil:
                        _combine(gp, <const int64_t*>cnp.PyArray_DATA(a_cnt),
                                 <const int64_t*>ps, <const int64_t*>pmn, <const int64_t*>pmx, n,
                                 cs.cnt, <int64_t*>cs.sum, <int64_t*>cs.mn, <int64_t*>cs.mx)
        finally:
            self._busy = False

    def restore(self, snapshot):
        """Replace the table's whole state with a :meth:`snapshot` table."""
        self.clear()
        self.merge(snapshot)

    def clear(self):
        """Drop every key (capacity is kept)."""
        self.remove_key_groups(None)

    def remove_key_groups(self, key_groups):
        """Delete the state of the selected key groups; returns the number of keys removed.

        Args:
            key_groups: same forms as :meth:`snapshot` (None removes everything).
        """
        cdef int64_t n = self.num_keys, m, used
        cdef _ColumnState cs
        cdef cnp.ndarray a_idx, a_off, a_dst
        if n == 0:
            self._kg_mask(key_groups)  # still validate the selection
            return 0
        mask = self._kg_mask(key_groups)
        drop = mask[self._kg_arr[:n]]
        keep_idx = np.flatnonzero(~drop)
        m = len(keep_idx)
        if m == n:
            return 0
        self._enter()
        try:
            for arr in (self._hash_arr, self._kg_arr, self._rows_arr, self._ikey_arr):
                if arr is not None:
                    arr[:m] = arr[:n][keep_idx]
            self._rows_arr[m:n] = 0
            if self._var_width:
                a_idx = np.ascontiguousarray(keep_idx, dtype=np.int64)
                lens = self._koff_arr[1:n + 1] - self._koff_arr[:n]
                used = int(lens[keep_idx].sum()) if m else 0
                a_off = np.empty(m + 1, dtype=np.int64)
                a_dst = np.empty(max(used, 1024), dtype=np.uint8)
                with nogil:
                    _gather_bytes(self._koff, self._arena,
                                  <const int64_t*>cnp.PyArray_DATA(a_idx), m,
                                  <int64_t*>cnp.PyArray_DATA(a_off),
                                  <uint8_t*>cnp.PyArray_DATA(a_dst))
                self._koff_arr[:m + 1] = a_off
                self._arena_arr = a_dst
                self._arena_cap = len(a_dst)
            for cs in self._columns:
                cs._compact(keep_idx, n)
            if self._null_gid >= 0:
                self._null_gid = -1 if drop[self._null_gid] else int(
                    np.searchsorted(keep_idx, self._null_gid))
            self.num_keys = m
            self._bind()
        finally:
            self._busy = False
        # shrink the slot array with the table, never below what it was sized for initially
        self._rebuild_slots(max(_MIN_SLOTS, min(<int64_t>(self._slot_mask + 1), 4 * m)))
        return n - m

    def extract(self, key_groups):
        """Take the selected key groups out: their :meth:`snapshot`, then removal."""
        snap = self.snapshot(key_groups)
        self.remove_key_groups(key_groups)
        return snap


include "keypack.pxi"

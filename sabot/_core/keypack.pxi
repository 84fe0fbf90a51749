# Packed multi-column keys (included by state.pyx).
#
# A keyed aggregate over several key columns stores each key as ONE byte string, so
# the table's byte-key path (hash tag + memcmp in the arena) serves any number of
# columns. The bytes are canonical: two rows have equal keys exactly when their
# packed bytes are equal. Per row, per key column, in order:
#
#   validity byte (1 = value, 0 = null), then
#     fixed width (integers, temporal, fixed_size_binary): `width` little-endian
#         bytes of the value; zeros for a null (so every fixed-width row has one size)
#     boolean: one byte, 0 or 1 (0 for a null)
#     string / binary (any offset width, views): 4-byte little-endian length, then
#         the bytes; length 0 for a null
#     null type: nothing after the validity byte (always 0)
#
# Dictionary columns pack their decoded values, so a dictionary-encoded column and
# its plain form give the same bytes. Floats are refused, as for single keys: -0.0
# vs 0.0 and the many NaNs would need a canonical form the rest of the state (its
# min/max/equality on keys) does not define. Both kernels run without the GIL over
# the Arrow buffers, honouring offsets and validity bitmaps.

from libc.stdlib cimport calloc, free
from libc.string cimport memset

cdef enum:
    _PK_FIXED = 0
    _PK_BOOL = 1
    _PK_VAR32 = 2
    _PK_VAR64 = 3
    _PK_NULL = 4


cdef inline void _set_bit(uint8_t* bitmap, int64_t i) noexcept nogil:
    bitmap[i >> 3] |= <uint8_t>(1 << (i & 7))


def _pack_layout(t):
    """(kind, width, storage type to read/write) of a key column of Arrow type t.

    The storage type is what the kernels see: dictionary columns their value type,
    views their offset form, extension types their storage. Raises
    UnsupportedStateType for anything that cannot be a key.
    """
    base = t
    if isinstance(base, pa.ExtensionType):
        base = base.storage_type
    if pa.types.is_dictionary(base):
        base = base.value_type
    if pa.types.is_string_view(base):
        base = pa.large_string()
    elif pa.types.is_binary_view(base):
        base = pa.large_binary()
    if pa.types.is_null(base):
        return _PK_NULL, 0, base
    if pa.types.is_boolean(base):
        return _PK_BOOL, 1, base
    if pa.types.is_integer(base) or (pa.types.is_temporal(base) and not pa.types.is_interval(base)):
        return _PK_FIXED, base.bit_width // 8, base
    if pa.types.is_fixed_size_binary(base) and not pa.types.is_decimal(base):
        return _PK_FIXED, base.byte_width, base
    if pa.types.is_string(base) or pa.types.is_binary(base):
        return _PK_VAR32, 0, base
    if pa.types.is_large_string(base) or pa.types.is_large_binary(base):
        return _PK_VAR64, 0, base
    if pa.types.is_floating(base):
        raise UnsupportedStateType(
            f"key type {t} is a floating-point type; keyed state does not take float keys "
            f"(-0.0/0.0 and NaN payloads make equality ambiguous): cast the column to an "
            f"integer or string type first"
        )
    raise UnsupportedStateType(
        f"unsupported key type {t}: packed keys take integer, temporal, boolean, string, "
        f"binary (plain, large or view), fixed_size_binary, null or dictionary columns "
        f"of those"
    )


def check_key_types(types, names=None):
    """Raise UnsupportedStateType unless every type can be part of a packed key.

    Args:
        types: Arrow types of the key columns, in key order.
        names: optional column names, used in the error message.
    """
    types = list(types)
    for i, t in enumerate(types):
        try:
            _pack_layout(t)
        except UnsupportedStateType as exc:
            what = f"key column {names[i]!r}" if names else f"key column {i}"
            raise UnsupportedStateType(f"{what}: {exc}") from None


# _PackCol (one key column being packed) is declared in state.pxd.


cdef int _pack_lengths(const _PackCol* cols, int k, int64_t n, int64_t* out_off,
                       int64_t* bad_row, int* bad_col) noexcept nogil:
    """Row offsets of the packed output (out_off[0..n]); 1 if a value exceeds 4 GiB."""
    cdef int64_t i, pos = 0, ln, j
    cdef int c
    cdef const _PackCol* col
    out_off[0] = 0
    for i in range(n):
        for c in range(k):
            col = &cols[c]
            pos += 1
            if col.kind == _PK_FIXED or col.kind == _PK_BOOL:
                pos += col.width
            elif col.kind == _PK_VAR32 or col.kind == _PK_VAR64:
                pos += 4
                if col.validity == NULL or _bit(col.validity, col.offset + i):
                    j = col.offset + i
                    if col.kind == _PK_VAR32:
                        ln = (<const int32_t*>col.data)[j + 1] - (<const int32_t*>col.data)[j]
                    else:
                        ln = (<const int64_t*>col.data)[j + 1] - (<const int64_t*>col.data)[j]
                    if ln > <int64_t>0xFFFFFFFF:
                        bad_row[0] = i
                        bad_col[0] = c
                        return 1
                    pos += ln
        out_off[i + 1] = pos
    return 0


cdef inline void _put_u32le(uint8_t* p, uint64_t v) noexcept nogil:
    p[0] = <uint8_t>(v & 0xFF)
    p[1] = <uint8_t>((v >> 8) & 0xFF)
    p[2] = <uint8_t>((v >> 16) & 0xFF)
    p[3] = <uint8_t>((v >> 24) & 0xFF)


cdef inline int64_t _get_u32le(const uint8_t* p) noexcept nogil:
    return (<int64_t>p[0] | (<int64_t>p[1] << 8) | (<int64_t>p[2] << 16)
            | (<int64_t>p[3] << 24))


cdef void _pack_fill(const _PackCol* cols, int k, int64_t n, const int64_t* out_off,
                     uint8_t* out) noexcept nogil:
    """Write every row's packed bytes at out + out_off[row]."""
    cdef int64_t i, j, s, ln
    cdef int c
    cdef uint8_t* p
    cdef bint ok
    cdef const _PackCol* col
    for i in range(n):
        p = out + out_off[i]
        for c in range(k):
            col = &cols[c]
            j = col.offset + i
            ok = col.validity == NULL or _bit(col.validity, j)
            if col.kind == _PK_NULL:
                p[0] = 0
                p += 1
                continue
            p[0] = 1 if ok else 0
            p += 1
            if col.kind == _PK_FIXED:
                # Arrow buffers hold values in the machine's order, little-endian on
                # every platform Sabot builds for, so the bytes are copied as they are.
                if ok:
                    memcpy(p, col.data + j * col.width, col.width)
                else:
                    memset(p, 0, col.width)
                p += col.width
            elif col.kind == _PK_BOOL:
                p[0] = <uint8_t>(_bit(col.data, j) if ok else 0)
                p += 1
            else:
                if not ok:
                    _put_u32le(p, 0)
                    p += 4
                    continue
                if col.kind == _PK_VAR32:
                    s = (<const int32_t*>col.data)[j]
                    ln = (<const int32_t*>col.data)[j + 1] - s
                else:
                    s = (<const int64_t*>col.data)[j]
                    ln = (<const int64_t*>col.data)[j + 1] - s
                _put_u32le(p, <uint64_t>ln)
                p += 4
                if ln > 0:
                    memcpy(p, col.vdata + s, ln)
                p += ln


def _key_arrays(columns):
    if isinstance(columns, (pa.Array, pa.ChunkedArray)):
        raise StateInputError(
            "pack_keys takes a sequence of key columns (one Array per column), "
            "got a single array; wrap it in a list"
        )
    """(arrays, labels for messages) of pack_keys' input."""
    if isinstance(columns, (pa.RecordBatch, pa.Table)):
        labels = [f"key column {name!r}" for name in columns.schema.names]
        return [_as_array(c, lab) for c, lab in zip(columns.columns, labels)], labels
    try:
        cols = list(columns)
    except TypeError:
        raise StateInputError(
            f"pack_keys takes a sequence of key columns, got {type(columns).__name__}"
        ) from None
    labels = [f"key column {i}" for i in range(len(cols))]
    return [_as_array(c, lab) for c, lab in zip(cols, labels)], labels


def pack_keys(columns):
    """Pack key columns row by row into one ``large_binary`` column of canonical bytes.

    Two rows get equal bytes exactly when all their key values are equal (nulls equal
    nulls), so the packed column can stand for the composite key in a byte-keyed
    :class:`KeyedAggregateTable`. :func:`unpack_keys` reverses it.

    Args:
        columns: a sequence of key columns (pa.Array / ChunkedArray / numpy, all of one
            length) or a RecordBatch / Table whose columns are the key columns.
            Slices and nulls are fine; dictionary columns pack their decoded values.

    Returns:
        pa.LargeBinaryArray without nulls, one entry per row.

    Raises:
        UnsupportedStateType: a column is floating point or of another non-key type.
        StateInputError: the columns have different lengths, or there are none.

    Example:
        >>> packed = pack_keys([pa.array([1, None], pa.int32()), pa.array(["a", "b"])])
        >>> unpack_keys(packed, [pa.int32(), pa.string()])[0].to_pylist()
        [1, None]
    """
    cdef int64_t n, total, bad_row = -1
    cdef int k, c, rc, bad_col = -1
    cdef _PackCol* cols = NULL
    cdef cnp.ndarray a_off, a_out
    arrays, labels = _key_arrays(columns)
    k = len(arrays)
    if k == 0:
        raise StateInputError("pack_keys needs at least one key column")
    n = len(arrays[0])
    for c in range(k):
        if len(arrays[c]) != n:
            raise StateInputError(
                f"key columns must have the same length; column 0 has {n} rows, "
                f"column {c} has {len(arrays[c])}"
            )
    keep = []
    cols = <_PackCol*>calloc(k, sizeof(_PackCol))
    if cols == NULL:
        raise MemoryError()
    try:
        for c in range(k):
            arr = arrays[c]
            try:
                kind, width, storage = _pack_layout(arr.type)
            except UnsupportedStateType as exc:
                raise UnsupportedStateType(f"{labels[c]}: {exc}") from None
            if isinstance(arr.type, pa.ExtensionType):
                arr = arr.storage
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if arr.type != storage:
                arr = arr.cast(storage)
            keep.append(arr)
            bufs = arr.buffers()
            cols[c].kind = kind
            cols[c].width = width
            cols[c].offset = arr.offset
            cols[c].validity = _buf_ptr(bufs[0]) if arr.null_count and len(bufs) else NULL
            if kind == _PK_NULL:
                cols[c].validity = NULL
            elif n:
                cols[c].data = _buf_ptr(bufs[1])
                if kind == _PK_VAR32 or kind == _PK_VAR64:
                    cols[c].vdata = _buf_ptr(bufs[2])
                if cols[c].data == NULL:
                    if arr.null_count != len(arr):
                        raise StateInputError(f"{labels[c]} ({arr.type}) has no value buffer")
                    # all null without a value buffer: read every row as null, never a value
                    zero = np.zeros((n + 7) // 8 + 1, dtype=np.uint8)
                    keep.append(zero)
                    a_off = zero
                    cols[c].validity = <const uint8_t*>cnp.PyArray_DATA(a_off)
                    cols[c].offset = 0
        a_off = np.empty(n + 1, dtype=np.int64)
        with nogil:
            rc = _pack_lengths(cols, k, n, <int64_t*>cnp.PyArray_DATA(a_off), &bad_row, &bad_col)
        if rc:
            raise StateInputError(
                f"{labels[bad_col]}, row {bad_row}: a packed value is limited to 4 GiB"
            )
        total = a_off[n]
        a_out = np.empty(max(total, 1), dtype=np.uint8)
        with nogil:
            _pack_fill(cols, k, n, <const int64_t*>cnp.PyArray_DATA(a_off),
                       <uint8_t*>cnp.PyArray_DATA(a_out))
    finally:
        free(cols)
    return pa.Array.from_buffers(pa.large_binary(), n,
                                 [None, pa.py_buffer(a_off), pa.py_buffer(a_out[:total])])


# _UnpackCol (one key column being rebuilt) is declared in state.pxd.


cdef int _unpack_scan(const int64_t* offs, int offw, int64_t offset, const uint8_t* src,
                      _UnpackCol* cols, int k, int64_t n,
                      int64_t* bad_row, int* bad_col) noexcept nogil:
    """Check every row's structure; count nulls and var-width bytes per column.

    Returns 0, or 1 (bad validity byte), 2 (row too short), 3 (bytes left over).
    """
    cdef int64_t i, s, e, p, ln
    cdef int c
    cdef uint8_t v
    for i in range(n):
        if offw == 4:
            s = (<const int32_t*>offs)[offset + i]
            e = (<const int32_t*>offs)[offset + i + 1]
        else:
            s = offs[offset + i]
            e = offs[offset + i + 1]
        p = s
        for c in range(k):
            bad_row[0] = i
            bad_col[0] = c
            if p >= e:
                return 2
            v = src[p]
            p += 1
            if v > 1 or (v == 1 and cols[c].kind == _PK_NULL):
                return 1
            if v == 0:
                cols[c].nulls += 1
            if cols[c].kind == _PK_FIXED or cols[c].kind == _PK_BOOL:
                p += cols[c].width
                if p > e:
                    return 2
            elif cols[c].kind == _PK_VAR32 or cols[c].kind == _PK_VAR64:
                if p + 4 > e:
                    return 2
                ln = _get_u32le(src + p)
                p += 4 + ln
                if p > e:
                    return 2
                cols[c].total += ln
        if p != e:
            bad_row[0] = i
            bad_col[0] = k
            return 3
    return 0


cdef void _unpack_fill(const int64_t* offs, int offw, int64_t offset, const uint8_t* src,
                       _UnpackCol* cols, int k, int64_t n, int64_t* vpos) noexcept nogil:
    """Scatter the (already checked) packed rows into the output column buffers.

    vpos: k zeroed counters (bytes written so far per var-width column).
    """
    cdef int64_t i, p, ln
    cdef int c
    cdef _UnpackCol* col
    for i in range(n):
        if offw == 4:
            p = (<const int32_t*>offs)[offset + i]
        else:
            p = offs[offset + i]
        for c in range(k):
            col = &cols[c]
            if src[p]:
                _set_bit(col.validity, i)
            p += 1
            if col.kind == _PK_FIXED:
                memcpy(col.data + i * col.width, src + p, col.width)
                p += col.width
            elif col.kind == _PK_BOOL:
                if src[p]:
                    _set_bit(col.data, i)
                p += 1
            elif col.kind == _PK_VAR32 or col.kind == _PK_VAR64:
                ln = _get_u32le(src + p)
                p += 4
                if ln > 0:
                    memcpy(col.vdata + vpos[c], src + p, ln)
                p += ln
                vpos[c] += ln
                if col.large:
                    (<int64_t*>col.data)[i + 1] = vpos[c]
                else:
                    (<int32_t*>col.data)[i + 1] = <int32_t>vpos[c]


def unpack_keys(packed, types):
    """Split a :func:`pack_keys` column back into its key columns.

    Args:
        packed: binary or large_binary array (or ChunkedArray) of packed keys, without
            nulls; slices are fine.
        types: the Arrow types of the key columns, in key order, as given to
            :func:`pack_keys` (dictionary types come back dictionary-encoded, views and
            extension types as themselves).

    Returns:
        list of pa.Array, one per type, of ``len(packed)`` rows.

    Raises:
        StateInputError: the bytes do not follow the layout of ``types`` (wrong types,
            or not produced by :func:`pack_keys`), or ``packed`` has nulls.
        UnsupportedStateType: a type cannot be a key.
    """
    cdef int64_t n, offset, bad_row = -1
    cdef int k, c, rc, offw, bad_col = -1
    cdef _UnpackCol* cols = NULL
    cdef const int64_t* offs = NULL
    cdef const uint8_t* src = NULL
    cdef cnp.ndarray a
    packed = _as_array(packed, "packed keys")
    if packed.type not in (pa.binary(), pa.large_binary()):
        raise StateInputError(
            f"packed keys must be a binary or large_binary array, got {packed.type}"
        )
    if packed.null_count:
        raise StateInputError(
            f"packed keys have {packed.null_count} nulls; pack_keys never produces a null"
        )
    types = list(types)
    k = len(types)
    if k == 0:
        raise StateInputError("unpack_keys needs at least one key type")
    layouts = [_pack_layout(t) for t in types]
    n = len(packed)
    offw = 8 if packed.type == pa.large_binary() else 4
    offset = packed.offset
    bufs = packed.buffers()
    cols = <_UnpackCol*>calloc(k, sizeof(_UnpackCol))
    if cols == NULL:
        raise MemoryError()
    try:
        for c in range(k):
            kind, width, storage = layouts[c]
            cols[c].kind = kind
            cols[c].width = width
            cols[c].large = pa.types.is_large_string(storage) or pa.types.is_large_binary(storage)
        if n:
            offs = <const int64_t*>_buf_ptr(bufs[1])
            # NULL when every row is empty: the scan then stops at row 0, reading nothing
            src = _buf_ptr(bufs[2])
            with nogil:
                rc = _unpack_scan(offs, offw, offset, src, cols, k, n, &bad_row, &bad_col)
            if rc:
                what = {1: "a validity byte is not 0 or 1 (or a null-type column holds a value)",
                        2: "the row ends before its last key column",
                        3: "bytes are left after the last key column"}[rc]
                raise StateInputError(
                    f"packed key at row {bad_row} does not match key types "
                    f"{[str(t) for t in types]}: {what} (column {bad_col})"
                )
        # allocate every output buffer (numpy, zeroed where bits are set one by one)
        held = []
        for c in range(k):
            kind, width, storage = layouts[c]
            valid = np.zeros((n + 7) // 8 + 1, dtype=np.uint8)
            a = valid
            cols[c].validity = <uint8_t*>cnp.PyArray_DATA(a)
            data = vdata = None
            if kind == _PK_FIXED:
                data = np.empty(max(n * width, 1), dtype=np.uint8)
            elif kind == _PK_BOOL:
                data = np.zeros((n + 7) // 8 + 1, dtype=np.uint8)
            elif kind == _PK_VAR32 or kind == _PK_VAR64:
                if not cols[c].large and cols[c].total > 0x7FFFFFFF:
                    raise StateInputError(
                        f"key column {c} ({types[c]}) would hold {cols[c].total} bytes, more "
                        f"than 32-bit offsets allow; use a large_string / large_binary key"
                    )
                data = np.zeros(n + 1, dtype=np.int64 if cols[c].large else np.int32)
                vdata = np.empty(max(cols[c].total, 1), dtype=np.uint8)
                a = vdata
                cols[c].vdata = <uint8_t*>cnp.PyArray_DATA(a)
            if data is not None:
                a = data
                cols[c].data = <uint8_t*>cnp.PyArray_DATA(a)
            held.append((valid, data, vdata))
        vpos = np.zeros(k, dtype=np.int64)
        a = vpos
        if n:
            with nogil:
                _unpack_fill(offs, offw, offset, src, cols, k, n, <int64_t*>cnp.PyArray_DATA(a))
        out = []
        for c in range(k):
            kind, width, storage = layouts[c]
            valid, data, vdata = held[c]
            bitmap = pa.py_buffer(valid) if cols[c].nulls else None
            if kind == _PK_NULL:
                arr = pa.nulls(n)
            elif kind == _PK_FIXED or kind == _PK_BOOL:
                arr = pa.Array.from_buffers(storage, n, [bitmap, pa.py_buffer(data)],
                                            null_count=cols[c].nulls)
            else:
                arr = pa.Array.from_buffers(storage, n, [bitmap, pa.py_buffer(data),
                                                         pa.py_buffer(vdata)],
                                            null_count=cols[c].nulls)
            out.append(_as_key_type(arr, types[c]))
    finally:
        free(cols)
    return out


def _as_key_type(arr, t):
    """Turn an unpacked storage array into the key column's own type."""
    if arr.type == t:
        return arr
    if isinstance(t, pa.ExtensionType):
        return pa.ExtensionArray.from_storage(t, _as_key_type(arr, t.storage_type))
    if pa.types.is_dictionary(t):
        enc = arr.dictionary_encode()
        if enc.type != t:
            enc = enc.cast(t)
        return enc
    return arr.cast(t)

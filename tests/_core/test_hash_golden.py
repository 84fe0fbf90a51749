"""Golden vectors of the key hash, and the compiled hash against an independent reference.

The reference below is a pure-Python implementation of docs/hash.md (and of the
xxHash64 reference algorithm), written from the specification, not from the Cython
code. It is checked against xxHash's published test values; the golden vectors pin
the hash so that state written by one build is found by every later one.
"""


import math
import struct

import pyarrow as pa

M64 = (1 << 64) - 1
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
P4 = 0x85EBCA77C2B2AE63
P5 = 0x27D4EB2F165667C5
NULL_HASH = 0x9E3779B97F4A7C15
CANONICAL_NAN_BITS = 0x7FF8000000000000


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    acc = (acc + lane * P2) & M64
    return (_rotl(acc, 31) * P1) & M64


def _merge(acc, val):
    acc ^= _round(0, val)
    return (acc * P1 + P4) & M64


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 as in the reference implementation (xxhash.h)."""
    n = len(data)
    p = 0
    if n >= 32:
        v1 = (seed + P1 + P2) & M64
        v2 = (seed + P2) & M64
        v3 = seed & M64
        v4 = (seed - P1) & M64
        while p + 32 <= n:
            v1 = _round(v1, int.from_bytes(data[p:p + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[p + 8:p + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[p + 16:p + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[p + 24:p + 32], "little"))
            p += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & M64
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while p + 8 <= n:
        h ^= _round(0, int.from_bytes(data[p:p + 8], "little"))
        h = (_rotl(h, 27) * P1 + P4) & M64
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p:p + 4], "little") * P1) & M64
        h = (_rotl(h, 23) * P2 + P3) & M64
        p += 4
    while p < n:
        h ^= (data[p] * P5) & M64
        h = (_rotl(h, 11) * P1) & M64
        p += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


def hash_int(v: int) -> int:
    """Integers (and bool, temporal values): 8 LE bytes of the 64-bit two's complement."""
    return xxh64((v & M64).to_bytes(8, "little"))


def hash_float(x: float) -> int:
    if math.isnan(x):
        bits = CANONICAL_NAN_BITS
    else:
        if x == 0.0:
            x = 0.0
        bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    return xxh64(bits.to_bytes(8, "little"))


def hash_bytes(b: bytes) -> int:
    return xxh64(bytes(b))


def combine(a: int, b: int) -> int:
    return xxh64(a.to_bytes(8, "little") + b.to_bytes(8, "little"))


def _storage_ints(arr):
    """Stored integer of every slot of a temporal/integer array (None for nulls)."""
    t = arr.type
    width = t.bit_width
    signed = not pa.types.is_unsigned_integer(t)
    storage_type = {8: pa.int8(), 16: pa.int16(), 32: pa.int32(), 64: pa.int64()}[width]
    if not signed:
        storage_type = {8: pa.uint8(), 16: pa.uint16(), 32: pa.uint32(), 64: pa.uint64()}[width]
    return arr.view(storage_type).to_pylist()


def column_hashes(arr):
    """Reference hash of every row of one Arrow array."""
    t = arr.type
    if pa.types.is_dictionary(t):
        dh = column_hashes(arr.dictionary)
        return [NULL_HASH if i is None else dh[i] for i in arr.indices.to_pylist()]
    if pa.types.is_null(t):
        return [NULL_HASH] * len(arr)
    if pa.types.is_boolean(t):
        vals = [None if v is None else int(v) for v in arr.to_pylist()]
        return [NULL_HASH if v is None else hash_int(v) for v in vals]
    if pa.types.is_floating(t):
        return [NULL_HASH if v is None else hash_float(v) for v in arr.to_pylist()]
    if pa.types.is_integer(t) or pa.types.is_temporal(t):
        return [NULL_HASH if v is None else hash_int(v) for v in _storage_ints(arr)]
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return [NULL_HASH if v is None else hash_bytes(v.encode("utf-8")) for v in arr.to_pylist()]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [NULL_HASH if v is None else hash_bytes(v) for v in arr.to_pylist()]
    raise TypeError(f"no reference hash for {t}")


def key_hashes(arrays):
    """Reference key hash of rows of several key columns, folded in order."""
    cols = [column_hashes(a) for a in arrays]
    out = list(cols[0])
    for c in cols[1:]:
        out = [combine(a, b) for a, b in zip(out, c)]
    return out


# --------------------------------------------------------------------------- tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sabot._core.partition as partition  # noqa: E402

# xxHash64 (seed 0) test values published with xxHash / python-xxhash.
PUBLISHED_XXH64 = {
    b"": 0xEF46DB3751D8E999,
    b"a": 0xD24EC4F1A98C6E5B,
    b"abc": 0x44BC2CF5AD770999,
    b"xxhash": 0x32DD38952C4BC720,
    b"Nobody inspects the spammish repetition": 0xFBCEA83C8A378BF1,
}

# The pinned hash of Sabot keys. Changing any of these breaks every stored keyed state.
GOLDEN = {
    "int_5": 0x89BE0B2DD5C2593D,
    "int_-1": 0x85D136ADB773C6C9,
    "int_0": 0x34C96ACDCADB1BBB,
    "int_max64": 0xFF70CC60366E770C,
    "float_1.5": 0x49F7B96B6B5CCAF9,
    "float_nan": 0xE9ADB09FEE122AAC,
    "float_inf": 0xFA3D9D79A96B3705,
    "str_empty": 0xEF46DB3751D8E999,
    "str_abc": 0x44BC2CF5AD770999,
    "str_unicode": 0xC5E2E8C2F6042B03,  # "straße €"
    "str_long": 0xED714233C5A9A792,  # "the quick brown fox jumps over the lazy dog"
    "combine_1_a": 0x709062132786B2BE,  # key (int 1, string "a")
    "combine_null_null": 0xDC5CCC52BA536D6D,
    "null": 0x9E3779B97F4A7C15,
}


def h(arr):
    return [int(x) for x in partition.hash_columns(arr)]


@pytest.mark.parametrize("data,expected", sorted(PUBLISHED_XXH64.items()))
def test_reference_xxh64_matches_published_values(data, expected):
    assert xxh64(data) == expected


def test_reference_reproduces_golden_vectors():
    assert hash_int(5) == GOLDEN["int_5"]
    assert hash_int(-1) == GOLDEN["int_-1"]
    assert hash_int(0) == GOLDEN["int_0"]
    assert hash_int(2**63 - 1) == GOLDEN["int_max64"]
    assert hash_float(1.5) == GOLDEN["float_1.5"]
    assert hash_float(float("nan")) == GOLDEN["float_nan"]
    assert hash_float(float("inf")) == GOLDEN["float_inf"]
    assert hash_bytes(b"abc") == GOLDEN["str_abc"]
    assert hash_bytes("straße €".encode()) == GOLDEN["str_unicode"]
    assert combine(hash_int(1), hash_bytes(b"a")) == GOLDEN["combine_1_a"]
    assert combine(NULL_HASH, NULL_HASH) == GOLDEN["combine_null_null"]
    assert NULL_HASH == GOLDEN["null"] == partition.NULL_HASH


@pytest.mark.parametrize("typ", [pa.int8(), pa.int16(), pa.int32(), pa.int64()])
def test_golden_signed_integers(typ):
    # every signed width widens to the same int64 value: int8 5 == int64 5
    assert h(pa.array([5, -1, 0, None], typ)) == [GOLDEN["int_5"], GOLDEN["int_-1"], GOLDEN["int_0"], GOLDEN["null"]]


@pytest.mark.parametrize("typ", [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()])
def test_golden_unsigned_integers(typ):
    assert h(pa.array([5, 0, None], typ)) == [GOLDEN["int_5"], GOLDEN["int_0"], GOLDEN["null"]]


def test_golden_uint64_max_is_bit_pattern_of_minus_one():
    assert h(pa.array([2**64 - 1], pa.uint64())) == [GOLDEN["int_-1"]]
    assert h(pa.array([2**63 - 1], pa.int64())) == [GOLDEN["int_max64"]]


def test_golden_bool_hashes_as_integers():
    assert h(pa.array([True, False, None])) == [hash_int(1), GOLDEN["int_0"], GOLDEN["null"]]


@pytest.mark.parametrize("typ", [pa.float32(), pa.float64()])
def test_golden_floats_normalised(typ):
    neg_nan = np.frombuffer(np.uint64(0xFFF8000000000001).tobytes(), np.float64)[0]
    got = h(pa.array([1.5, 0.0, -0.0, float("nan"), neg_nan, float("inf"), None], typ))
    assert got == [GOLDEN["float_1.5"], hash_float(0.0), hash_float(0.0), GOLDEN["float_nan"],
                   GOLDEN["float_nan"], GOLDEN["float_inf"], GOLDEN["null"]]
    assert got[1] == got[2] and got[3] == got[4]


def test_float_zero_is_not_integer_zero_domain():
    # floats hash their float64 bits: 0.0 has bit pattern 0, the same bytes as integer 0
    assert h(pa.array([0.0])) == [GOLDEN["int_0"]]
    assert h(pa.array([1.0])) != h(pa.array([1]))


@pytest.mark.parametrize("typ,value", [
    (pa.date32(), 5), (pa.date64(), 5), (pa.time32("s"), 5), (pa.time64("us"), 5),
    (pa.timestamp("ms"), 5), (pa.timestamp("ns", tz="UTC"), 5), (pa.duration("s"), 5),
])
def test_golden_temporal_hash_stored_integer(typ, value):
    storage = {32: pa.int32(), 64: pa.int64()}[typ.bit_width]
    arr = pa.array([value, None], storage).view(typ)
    assert h(arr) == [GOLDEN["int_5"], GOLDEN["null"]]


@pytest.mark.parametrize("typ", [pa.string(), pa.large_string()])
def test_golden_strings(typ):
    arr = pa.array(["", "abc", "straße €", "the quick brown fox jumps over the lazy dog", None], typ)
    assert h(arr) == [GOLDEN["str_empty"], GOLDEN["str_abc"], GOLDEN["str_unicode"],
                      GOLDEN["str_long"], GOLDEN["null"]]


@pytest.mark.parametrize("typ", [pa.binary(), pa.large_binary()])
def test_golden_binary(typ):
    assert h(pa.array([b"abc", b"", None], typ)) == [GOLDEN["str_abc"], GOLDEN["str_empty"], GOLDEN["null"]]


def test_golden_fixed_size_binary_and_views():
    assert h(pa.array([b"abc", None], pa.binary(3))) == [GOLDEN["str_abc"], GOLDEN["null"]]
    assert h(pa.array(["abc", None], pa.string_view())) == [GOLDEN["str_abc"], GOLDEN["null"]]


def test_golden_dictionary_hashes_the_value():
    arr = pa.array(["abc", None, "", "abc"]).dictionary_encode()
    assert h(arr) == [GOLDEN["str_abc"], GOLDEN["null"], GOLDEN["str_empty"], GOLDEN["str_abc"]]
    # a null entry inside the dictionary is a null too
    d = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array([None, "abc"]))
    assert h(d) == [GOLDEN["null"], GOLDEN["str_abc"]]


def test_golden_null_type_and_multi_column():
    assert h(pa.nulls(2)) == [GOLDEN["null"]] * 2
    got = partition.hash_columns([pa.array([1, None]), pa.array(["a", None])])
    assert [int(x) for x in got] == [GOLDEN["combine_1_a"], GOLDEN["combine_null_null"]]


def test_hash_independent_of_python_hash_seed():
    import subprocess
    import sys
    code = ("import pyarrow as pa, sabot._core.partition as p;"
            "print(int(p.hash_columns(pa.array(['abc']))[0]))")
    outs = set()
    for seed in ("0", "12345"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        import os
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout.strip()
        outs.add(int(out))
    assert outs == {GOLDEN["str_abc"]}


# --------------------------------------------------------------------------- property tests

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def _int_values(typ):
    w = typ.bit_width
    if pa.types.is_signed_integer(typ):
        return st.integers(-(2 ** (w - 1)), 2 ** (w - 1) - 1)
    return st.integers(0, 2**w - 1)


@st.composite
def key_arrays(draw):
    kind = draw(st.sampled_from(["int", "float", "str", "lstr", "bin", "bool", "dict", "ts"]))
    n = draw(st.integers(0, 40))
    if kind == "int":
        typ = draw(st.sampled_from(INT_TYPES))
        vals = draw(st.lists(st.one_of(st.none(), _int_values(typ)), min_size=n, max_size=n))
        arr = pa.array(vals, typ)
    elif kind == "float":
        typ = draw(st.sampled_from([pa.float32(), pa.float64()]))
        fl = st.floats(allow_nan=True, allow_infinity=True, width=typ.bit_width)
        arr = pa.array(draw(st.lists(st.one_of(st.none(), fl, st.sampled_from([0.0, -0.0])),
                                     min_size=n, max_size=n)), typ)
    elif kind in ("str", "lstr", "dict"):
        vals = draw(st.lists(st.one_of(st.none(), st.text(max_size=40)), min_size=n, max_size=n))
        arr = pa.array(vals, pa.large_string() if kind == "lstr" else pa.string())
        if kind == "dict":
            arr = arr.dictionary_encode()
    elif kind == "bin":
        arr = pa.array(draw(st.lists(st.one_of(st.none(), st.binary(max_size=70)), min_size=n, max_size=n)),
                       pa.binary())
    elif kind == "bool":
        arr = pa.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)), pa.bool_())
    else:
        vals = draw(st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), min_size=n, max_size=n))
        arr = pa.array(vals, pa.int64()).view(pa.timestamp("us"))
    # slices with a non-zero offset are the common case
    start = draw(st.integers(0, len(arr)))
    stop = draw(st.integers(start, len(arr)))
    return arr.slice(start, stop - start)


@settings(max_examples=300, deadline=None)
@given(key_arrays())
def test_hash_matches_reference_single_column(arr):
    assert h(arr) == column_hashes(arr)


@settings(max_examples=150, deadline=None)
@given(st.lists(key_arrays(), min_size=2, max_size=3))
def test_hash_matches_reference_multi_column(arrays):
    n = min(len(a) for a in arrays)
    arrays = [a.slice(0, n) for a in arrays]
    got = [int(x) for x in partition.hash_columns(arrays)]
    assert got == key_hashes(arrays)

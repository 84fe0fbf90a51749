"""Tests of sabot._core.state.KeyedAggregateTable against pyarrow / pure-Python references."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.errors import SabotError
from sabot._core.state import (
    KeyedAggregateTable,
    StateInputError,
    UnsupportedStateType,
)

MAXP = 128
ALL_AGGS = [(None, "count"), ("v", "count"), ("v", "sum"), ("v", "min"), ("v", "max"), ("v", "mean")]


# ---------------------------------------------------------------- stand-in hashes

def splitmix64(x):
    z = np.asarray(x).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def int_hashes(keys):
    """Hash of an integer key array; null keys hash to a fixed value."""
    k = pc.fill_null(keys.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    return splitmix64(k)


def str_hashes(keys):
    """Deterministic (FNV-1a) hash of string/binary keys, pure Python."""
    out = np.empty(len(keys), dtype=np.uint64)
    for i, s in enumerate(keys.to_pylist()):
        h = 0xCBF29CE484222325
        data = b"" if s is None else (s.encode() if isinstance(s, str) else s)
        for b in data:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        out[i] = h
    return out


def groups_of(hashes):
    return (hashes % np.uint64(MAXP)).astype(np.int32)


# ---------------------------------------------------------------- references

def arrow_reference(keys, values, aggs=ALL_AGGS):
    """pyarrow group_by over everything, as a {key: {output name: value}} dict."""
    t = pa.table({"k": keys, "v": values})
    spec = []
    for col, fn in aggs:
        spec.append(([], "count_all") if col is None else (col, fn))
    res = t.group_by("k", use_threads=False).aggregate(spec).to_pydict()
    out = {}
    names = ["count" if col is None else f"{col}_{fn}" for col, fn in aggs]
    arrow_names = ["count_all" if col is None else f"{col}_{fn}" for col, fn in aggs]
    for i, k in enumerate(res["k"]):
        out[k] = {n: res[a][i] for n, a in zip(names, arrow_names)}
    return out


def table_as_dict(table, key_name="key"):
    d = table.to_pydict()
    keys = d.pop(key_name)
    return {k: {n: d[n][i] for n in d} for i, k in enumerate(keys)}


def assert_same(got, want):
    assert set(got) == set(want), (set(got) ^ set(want))
    for k in want:
        for name, w in want[k].items():
            g = got[k][name]
            if w is None or g is None:
                assert g is None and w is None, (k, name, g, w)
            elif isinstance(w, float) and math.isnan(w):
                assert isinstance(g, float) and math.isnan(g), (k, name, g, w)
            elif isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-9, abs=1e-9), (k, name, g, w)
            else:
                assert g == w, (k, name, g, w)


def feed(table, keys, values, batch, hash_fn=int_hashes, return_groups=False):
    """Update table with keys/values in batches of `batch` rows (sliced arrays)."""
    hashes = hash_fn(keys)
    kgs = groups_of(hashes)
    out = []
    for s in range(0, len(keys), batch):
        g = table.update(keys.slice(s, batch), hashes[s:s + batch], kgs[s:s + batch],
                         {"v": values.slice(s, batch)}, return_groups=return_groups)
        out.append(g)
    return out


def random_data(rng, n, n_keys, key_nulls=0.0, value_nulls=0.1, int_values=False):
    k = rng.integers(-n_keys, n_keys, n)
    kmask = rng.random(n) < key_nulls
    keys = pa.array(k, mask=kmask, type=pa.int64())
    vmask = rng.random(n) < value_nulls
    v = rng.integers(-1000, 1000, n) if int_values else rng.normal(size=n)
    values = pa.array(v, mask=vmask)
    return keys, values


# ---------------------------------------------------------------- correctness

@pytest.mark.parametrize("batch", [1, 7, 1000, 100_000])
def test_int64_keys_match_arrow_group_by(batch):
    rng = np.random.default_rng(batch)
    keys, values = random_data(rng, 20_000, 500, key_nulls=0.02)
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, keys, values, batch)
    assert t.num_keys == len(pc.unique(keys))
    assert_same(table_as_dict(t.result()), arrow_reference(keys, values))


def test_integer_values_keep_int64_state():
    rng = np.random.default_rng(1)
    keys, values = random_data(rng, 5000, 50, int_values=True)
    values = values.cast(pa.int32())
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, keys, values, 333)
    res = t.result()
    assert res.schema.field("v_sum").type == pa.int64()
    assert res.schema.field("v_min").type == pa.int64()
    assert res.schema.field("v_mean").type == pa.float64()
    assert_same(table_as_dict(res), arrow_reference(keys, values))


def test_sliced_inputs_with_offsets_and_validity():
    rng = np.random.default_rng(2)
    keys, values = random_data(rng, 3000, 40, key_nulls=0.1, value_nulls=0.3)
    # slices whose offsets are not multiples of 8 exercise the bitmap bit offset
    k, v = keys.slice(13, 2500), values.slice(13, 2500)
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, k, v, 101)
    assert_same(table_as_dict(t.result()), arrow_reference(k, v))


def test_null_keys_are_one_group():
    keys = pa.array([None, 1, None, 2, None], type=pa.int64())
    # deliberately different hashes for the null rows: the null group must still be one
    hashes = np.array([5, 1, 6, 2, 7], dtype=np.uint64)
    t = KeyedAggregateTable(pa.int64(), [(None, "count")], MAXP)
    t.update(keys, hashes, groups_of(hashes))
    assert table_as_dict(t.result()) == {None: {"count": 3}, 1: {"count": 1}, 2: {"count": 1}}


def test_nan_and_all_null_groups_follow_arrow():
    keys = pa.array([1, 1, 2, 2, 3, 4, 4], type=pa.int64())
    values = pa.array([math.nan, 1.0, math.nan, math.nan, None, 2.0, math.inf])
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, keys, values, 3)
    assert_same(table_as_dict(t.result()), arrow_reference(keys, values))


@pytest.mark.parametrize("bad", ["constant", "mod3"])
def test_bad_hash_with_many_collisions(bad):
    rng = np.random.default_rng(3)
    keys, values = random_data(rng, 5000, 300, key_nulls=0.01)

    def hash_fn(k):
        ints = pc.fill_null(k, 0).to_numpy(zero_copy_only=False)
        if bad == "constant":
            return np.full(len(k), 12345, dtype=np.uint64)
        return (np.abs(ints) % 3).astype(np.uint64)

    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP, initial_capacity=1)
    feed(t, keys, values, 512, hash_fn=hash_fn)
    assert_same(table_as_dict(t.result()), arrow_reference(keys, values))


@pytest.mark.parametrize("key_type", [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()])
def test_variable_width_keys(key_type):
    rng = np.random.default_rng(4)
    words = ["", "a", "ab", "abc", "b", "ba", "longer key with spaces", "ü-ñ", "a\x00b", "a\x00c"]
    picks = rng.integers(0, len(words), 4000)
    mask = rng.random(4000) < 0.05
    py = [None if m else words[p] for p, m in zip(picks, mask)]
    if pa.types.is_binary(key_type) or pa.types.is_large_binary(key_type):
        py = [None if s is None else s.encode() for s in py]
    keys = pa.array(py, type=key_type).slice(3)
    values = pa.array(rng.normal(size=4000), mask=rng.random(4000) < 0.1).slice(3)
    t = KeyedAggregateTable(key_type, ALL_AGGS, MAXP, initial_capacity=1)
    feed(t, keys, values, 257, hash_fn=str_hashes)
    res = t.result()
    assert res.schema.field("key").type == key_type
    assert_same(table_as_dict(res), arrow_reference(keys, values))


def test_string_keys_with_colliding_hashes_and_mixed_widths():
    rng = np.random.default_rng(5)
    n = 3000
    ints = rng.integers(0, 400, n)
    strs = [f"user-{i}" for i in ints]
    values = pa.array(rng.random(n))
    t = KeyedAggregateTable(pa.string(), [(None, "count"), ("v", "sum")], MAXP,
                            initial_capacity=1)
    hashes = (ints % 5).astype(np.uint64)   # very bad hash, five buckets
    for s in range(0, n, 500):
        typ = pa.large_string() if (s // 500) % 2 else pa.string()
        t.update(pa.array(strs[s:s + 500], type=typ), hashes[s:s + 500],
                 groups_of(hashes[s:s + 500]), {"v": values.slice(s, 500)})
    want = arrow_reference(pa.array(strs), values, [(None, "count"), ("v", "sum")])
    assert_same(table_as_dict(t.result()), want)


@pytest.mark.parametrize("key_type, make", [
    (pa.int8(), lambda rng, n: rng.integers(-128, 128, n)),
    (pa.int32(), lambda rng, n: rng.integers(-2**31, 2**31, n) // 1000),
    (pa.uint32(), lambda rng, n: rng.integers(0, 2**32, n) // 1000),
    (pa.uint64(), lambda rng, n: (rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2)) // np.uint64(10**15)
     + np.uint64(2**63)),
    (pa.timestamp("us"), lambda rng, n: rng.integers(0, 10**12, n) // 10**9),
    (pa.date32(), lambda rng, n: rng.integers(0, 20000, n) // 50),
])
def test_other_integer_like_key_types(key_type, make):
    rng = np.random.default_rng(6)
    raw = make(rng, 2000)
    storage = pa.from_numpy_dtype(np.dtype("int%d" % key_type.bit_width)) if not pa.types.is_integer(key_type) else key_type
    keys = pa.array(raw).cast(storage, safe=False)
    if keys.type != key_type:
        keys = keys.view(key_type)
    values = pa.array(rng.random(2000))
    hashes = splitmix64(keys.view(storage).cast(pa.int64(), safe=False).to_numpy()
                        if pa.types.is_integer(storage) and storage != pa.uint64()
                        else np.asarray(raw).astype(np.uint64))
    t = KeyedAggregateTable(key_type, [(None, "count"), ("v", "max")], MAXP)
    t.update(keys, hashes, groups_of(hashes), {"v": values})
    res = t.result()
    assert res.schema.field("key").type == key_type
    assert_same(table_as_dict(res), arrow_reference(keys, values, [(None, "count"), ("v", "max")]))


def test_many_updates_grow_the_table():
    rng = np.random.default_rng(7)
    n = 300_000
    keys = pa.array(rng.permutation(n).astype(np.int64) * 3)   # every key distinct
    values = pa.array(rng.random(n))
    t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP, initial_capacity=1)
    small = t.memory_bytes
    feed(t, keys, values, 4096)
    feed(t, keys.slice(0, 1000), values.slice(0, 1000), 100)
    assert t.num_keys == n == len(t)
    assert t.memory_bytes > small
    res = t.result()
    counts = dict(zip(res.column("key").to_pylist(), res.column("count").to_pylist()))
    assert sum(counts.values()) == n + 1000
    first = set(keys.slice(0, 1000).to_pylist())
    assert all(counts[k] == (2 if k in first else 1) for k in counts)
    # insertion order is first-seen order
    assert res.column("key").combine_chunks().equals(keys)


def test_multiple_value_columns_from_record_batch():
    rng = np.random.default_rng(8)
    n = 4000
    batch = pa.record_batch({
        "k": pa.array(rng.integers(0, 60, n)),
        "a": pa.array(rng.random(n), mask=rng.random(n) < 0.2),
        "b": pa.array(rng.integers(0, 100, n)),
    })
    aggs = [("a", "mean"), ("b", "sum"), ("b", "min"), (None, "count"), ("a", "max")]
    t = KeyedAggregateTable(pa.int64(), aggs, MAXP, key_name="k")
    h = int_hashes(batch.column("k"))
    t.update(batch.column("k"), h, groups_of(h), batch)
    ref = pa.Table.from_batches([batch]).group_by("k").aggregate(
        [("a", "mean"), ("b", "sum"), ("b", "min"), ("k", "count"), ("a", "max")]).sort_by("k")
    res = t.result().sort_by("k")
    assert res.column_names == ["k", "a_mean", "b_sum", "b_min", "count", "a_max"]
    assert res.column("k").equals(ref.column("k"))
    assert np.allclose(res.column("a_mean").to_numpy(), ref.column("a_mean").to_numpy())
    assert res.column("b_sum").equals(ref.column("b_sum"))
    assert res.column("b_min").to_pylist() == ref.column("b_min").to_pylist()
    assert res.column("count").equals(ref.column("k_count"))
    assert res.column("a_max").equals(ref.column("a_max"))


def test_numpy_inputs_and_return_groups_feed_result():
    keys = np.array([10, 20, 10, 30, 20, 10], dtype=np.int64)
    vals = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    h = splitmix64(keys)
    t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
    g = t.update(keys, h, groups_of(h), {"v": vals}, return_groups=True)
    assert g.dtype == np.int64 and len(g) == len(keys)
    # rows with equal keys got equal group ids, and result(groups) returns those keys
    assert t.result(g).column("key").to_pylist() == keys.tolist()
    g2 = t.update(keys[:2], h[:2], groups_of(h[:2]), {"v": vals[:2]}, return_groups=True)
    upd = t.result(np.unique(g2))
    assert table_as_dict(upd) == {10: {"count": 4, "v_sum": 11.0}, 20: {"count": 3, "v_sum": 9.0}}


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(-5, 5)),
                  st.one_of(st.none(), st.integers(-10**6, 10**6))),
        max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=5),
    bad_hash=st.booleans(),
)
def test_hypothesis_against_pure_python(rows, cuts, bad_hash):
    keys = pa.array([r[0] for r in rows], type=pa.int64())
    values = pa.array([r[1] for r in rows], type=pa.int64())
    hashes = np.zeros(len(rows), dtype=np.uint64) if bad_hash else int_hashes(keys)
    kgs = groups_of(hashes)
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP, initial_capacity=1)
    bounds = sorted({0, len(rows), *[c for c in cuts if c <= len(rows)]})
    for a, b in zip(bounds, bounds[1:]):
        t.update(keys.slice(a, b - a), hashes[a:b], kgs[a:b], {"v": values.slice(a, b - a)})
    want = {}
    for k, v in rows:
        w = want.setdefault(k, {"rows": 0, "vals": []})
        w["rows"] += 1
        if v is not None:
            w["vals"].append(v)
    expected = {
        k: {"count": w["rows"], "v_count": len(w["vals"]),
            "v_sum": sum(w["vals"]) if w["vals"] else None,
            "v_min": min(w["vals"]) if w["vals"] else None,
            "v_max": max(w["vals"]) if w["vals"] else None,
            "v_mean": sum(w["vals"]) / len(w["vals"]) if w["vals"] else None}
        for k, w in want.items()
    }
    assert_same(table_as_dict(t.result()), expected)


# ---------------------------------------------------------------- snapshots

def built_table(seed=9, key_type=pa.int64(), n=6000, n_keys=700):
    rng = np.random.default_rng(seed)
    if key_type == pa.int64():
        keys, values = random_data(rng, n, n_keys, key_nulls=0.01)
        hash_fn = int_hashes
    else:
        keys = pa.array([None if i % 97 == 0 else f"k{i}" for i in rng.integers(0, n_keys, n)],
                        type=key_type)
        values = pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1)
        hash_fn = str_hashes
    t = KeyedAggregateTable(key_type, ALL_AGGS, MAXP)
    feed(t, keys, values, 1024, hash_fn=hash_fn)
    return t, keys, values


def sorted_result(t):
    return t.result().sort_by([("key", "ascending")])


@pytest.mark.parametrize("key_type", [pa.int64(), pa.string()])
def test_snapshot_restore_round_trip_through_ipc(key_type):
    t, keys, values = built_table(key_type=key_type)
    snap = t.snapshot()
    assert snap.num_rows == t.num_keys
    for c in ("_key_group", "_hash", "_rows", "_count_v", "_sum_v", "_min_v", "_max_v"):
        assert c in snap.column_names
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, snap.schema) as w:
        w.write_table(snap)
    snap2 = pa.ipc.open_stream(sink.getvalue()).read_all()
    fresh = KeyedAggregateTable(key_type, ALL_AGGS, MAXP)
    fresh.restore(snap2)
    assert fresh.result().equals(t.result())
    assert fresh.snapshot().equals(snap)
    # restore replaces whatever was there
    fresh.restore(snap2)
    assert fresh.result().equals(t.result())


@pytest.mark.parametrize("key_type", [pa.int64(), pa.string()])
def test_split_by_key_groups_then_merge_equals_original(key_type):
    t, _, _ = built_table(key_type=key_type)
    original = sorted_result(t)
    ranges = [(0, 40), (40, 41), (41, 100), (100, MAXP)]
    parts = [t.snapshot(r) for r in ranges]
    assert sum(p.num_rows for p in parts) == t.num_keys
    for (a, b), p in zip(ranges, parts):
        kg = p.column("_key_group").to_numpy()
        assert ((kg >= a) & (kg < b)).all()
    merged = KeyedAggregateTable(key_type, ALL_AGGS, MAXP)
    for p in reversed(parts):
        merged.merge(p)
    assert sorted_result(merged).equals(original)


def test_merge_into_non_empty_table_combines_keys():
    rng = np.random.default_rng(10)
    k1, v1 = random_data(rng, 4000, 300, key_nulls=0.02)
    k2, v2 = random_data(rng, 4000, 300, key_nulls=0.02)
    a = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    b = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(a, k1, v1, 999)
    feed(b, k2, v2, 999)
    a.merge(b.snapshot())
    want = arrow_reference(pa.concat_arrays([k1, k2]), pa.concat_arrays([v1, v2]))
    assert_same(table_as_dict(a.result()), want)


def test_extract_removes_exactly_those_key_groups_and_table_keeps_working():
    rng = np.random.default_rng(11)
    keys, values = random_data(rng, 8000, 1000, key_nulls=0.01)
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, keys, values, 2048)
    before = t.snapshot()
    kg_before = before.column("_key_group").to_numpy()
    mask = np.zeros(MAXP, dtype=bool)
    mask[rng.choice(MAXP, 50, replace=False)] = True
    out = t.extract(mask)
    assert out.num_rows == int(mask[kg_before].sum())
    assert mask[out.column("_key_group").to_numpy()].all()
    rest = t.snapshot()
    assert not mask[rest.column("_key_group").to_numpy()].any()
    assert rest.num_rows + out.num_rows == before.num_rows
    assert np.array_equal(t.key_group_counts(),
                          np.bincount(kg_before[~mask[kg_before]], minlength=MAXP))
    # the remaining keys keep their state, and new updates find them (slots rebuilt)
    k2, v2 = random_data(rng, 3000, 1000, key_nulls=0.01)
    feed(t, k2, v2, 500)
    t.merge(out)
    want = arrow_reference(pa.concat_arrays([keys, k2]), pa.concat_arrays([values, v2]))
    assert_same(table_as_dict(t.result()), want)


def test_remove_key_groups_with_string_keys_and_null_group():
    t, keys, values = built_table(key_type=pa.string())
    snap = t.snapshot()
    null_kg = snap.filter(pc.is_null(snap.column("key"))).column("_key_group")[0].as_py()
    removed = t.remove_key_groups([null_kg, (null_kg + 1) % MAXP])
    assert removed > 0
    assert t.result().column("key").null_count == 0
    kept = snap.filter(pc.invert(pc.is_in(snap.column("_key_group"),
                                          pa.array([null_kg, (null_kg + 1) % MAXP], pa.int32()))))
    assert set(t.result().column("key").to_pylist()) == set(kept.column("key").to_pylist())
    # re-adding the null key creates a fresh null group
    h = np.array([1], dtype=np.uint64)
    t.update(pa.array([None], type=pa.string()), h, groups_of(h), {"v": pa.array([1.0])})
    r = t.result()
    assert r.filter(pc.is_null(r.column("key"))).column("count").to_pylist() == [1]
    t.clear()
    assert t.num_keys == 0 and t.result().num_rows == 0


def test_key_group_selection_forms_agree():
    t, _, _ = built_table()
    ids = [3, 4, 5, 6]
    mask = np.zeros(MAXP, dtype=bool)
    mask[3:7] = True
    a = t.snapshot((3, 7))
    assert a.equals(t.snapshot(mask))
    assert a.equals(t.snapshot(np.array(ids)))
    assert t.snapshot(None).num_rows == t.num_keys


# ---------------------------------------------------------------- bad input

def test_errors_name_what_was_wrong():
    with pytest.raises(StateInputError, match="unknown aggregate function 'median'.*count, sum"):
        KeyedAggregateTable(pa.int64(), [("v", "median")])
    with pytest.raises(UnsupportedStateType, match="struct"):
        KeyedAggregateTable(pa.struct([("a", pa.int64())]), [(None, "count")])
    with pytest.raises(UnsupportedStateType, match="double"):
        KeyedAggregateTable(pa.float64(), [(None, "count")])
    with pytest.raises(StateInputError, match="listed twice"):
        KeyedAggregateTable(pa.int64(), [("v", "sum"), ("v", "sum")])
    with pytest.raises(StateInputError, match="only 'count'"):
        KeyedAggregateTable(pa.int64(), [(None, "sum")])

    t = KeyedAggregateTable(pa.int64(), [("v", "sum")], MAXP)
    k = pa.array([1, 2, 3])
    h = np.array([1, 2, 3], dtype=np.uint64)
    kg = groups_of(h)
    with pytest.raises(StateInputError, match=r"'v' is missing; available columns: \['w'\]"):
        t.update(k, h, kg, {"w": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(UnsupportedStateType, match="keys have type int32.*int64"):
        t.update(k.cast(pa.int32()), h, kg, {"v": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(StateInputError, match="same length; got 3, 2 and 3"):
        t.update(k, h[:2], kg, {"v": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(StateInputError, match="has 2 rows, keys have 3"):
        t.update(k, h, kg, {"v": pa.array([1.0, 2.0])})
    with pytest.raises(StateInputError, match=r"outside \[0, 128\)"):
        t.update(k, h, np.array([0, 1, 128], dtype=np.int32), {"v": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(StateInputError, match="uint64"):
        t.update(k, h.astype(np.float64), kg, {"v": pa.array([1.0, 2.0, 3.0])})
    with pytest.raises(UnsupportedStateType, match="'v' has type string"):
        t.update(k, h, kg, {"v": pa.array(["a", "b", "c"])})
    t.update(k, h, kg, {"v": pa.array([1, 2, 3])})            # fixes int state
    with pytest.raises(UnsupportedStateType, match="state holds integers"):
        t.update(k, h, kg, {"v": pa.array([1.5, 2.0, 3.0])})
    with pytest.raises(StateInputError, match=r"range \(5, 2\)"):
        t.snapshot((5, 2))
    with pytest.raises(StateInputError, match="lacks columns"):
        t.merge(pa.table({"key": [1]}))
    with pytest.raises(StateInputError, match=r"group ids must lie in \[0, 3\)"):
        t.result([5])
    # every error is a SabotError and a built-in
    assert issubclass(StateInputError, (SabotError, ValueError))
    assert issubclass(UnsupportedStateType, TypeError)
    # after all those rejected calls, the table still holds exactly the accepted update
    assert table_as_dict(t.result()) == {1: {"v_sum": 1}, 2: {"v_sum": 2}, 3: {"v_sum": 3}}


def test_integer_state_survives_snapshot_into_fresh_table():
    rng = np.random.default_rng(12)
    keys, values = random_data(rng, 3000, 100, key_nulls=0.02, value_nulls=0.3, int_values=True)
    t = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    feed(t, keys, values, 700)
    fresh = KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP)
    for part in (t.snapshot((64, MAXP)), t.snapshot((0, 64))):
        fresh.merge(part)
    assert fresh.result().schema.field("v_sum").type == pa.int64()
    assert_same(table_as_dict(fresh.result()), arrow_reference(keys, values))
    # a float batch can no longer go into the integer state restored from the snapshot
    h = np.array([1], dtype=np.uint64)
    with pytest.raises(UnsupportedStateType, match="state holds integers"):
        fresh.update(pa.array([1]), h, groups_of(h), {"v": pa.array([0.5])})


def test_value_types_declared_up_front_and_empty_table_snapshot():
    t = KeyedAggregateTable(pa.int64(), [("v", "sum"), ("v", "min")], MAXP,
                            value_types={"v": pa.float32()})
    snap = t.snapshot()
    assert snap.num_rows == 0 and snap.schema.field("_sum_v").type == pa.float64()
    h = np.array([3, 4], dtype=np.uint64)
    t.update(pa.array([1, 2]), h, groups_of(h), {"v": pa.array([2, 5], pa.int8())})
    assert t.result().to_pydict() == {"key": [1, 2], "v_sum": [2.0, 5.0], "v_min": [2.0, 5.0]}
    with pytest.raises(StateInputError, match="no aggregate uses"):
        KeyedAggregateTable(pa.int64(), [("v", "sum")], value_types={"w": pa.int64()})


def test_updates_on_separate_tables_run_in_parallel_threads():
    """Updates release the GIL; two tasks' tables updated from two threads stay correct."""
    import threading

    rng = np.random.default_rng(13)
    data = [random_data(rng, 200_000, 5000) for _ in range(2)]
    tables = [KeyedAggregateTable(pa.int64(), ALL_AGGS, MAXP) for _ in range(2)]
    errors = []

    def work(t, keys, values):
        try:
            feed(t, keys, values, 8192)
        except Exception as exc:  # surfaced below, a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t, *d)) for t, d in zip(tables, data)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors and not any(th.is_alive() for th in threads)
    for t, (keys, values) in zip(tables, data):
        assert_same(table_as_dict(t.result()), arrow_reference(keys, values))


# ---------------------------------------------------------------- packed multi-column keys

import struct  # noqa: E402  (used only by the packed-key tests below)

from sabot._core.state import check_key_types, pack_keys, unpack_keys  # noqa: E402


def python_pack(arrays):
    """Pure-Python encoder of the documented packed-key layout (independent reference)."""
    fmt = {8: "<b", 16: "<h", 32: "<i", 64: "<q"}
    out = []
    for i in range(len(arrays[0])):
        row = b""
        for arr in arrays:
            t = arr.type
            if pa.types.is_dictionary(t):
                t = t.value_type
            v = arr[i].as_py() if not pa.types.is_temporal(t) else arr[i].cast(
                pa.int64() if t.bit_width == 64 else pa.int32()).as_py()
            if pa.types.is_null(t):
                row += b"\0"
                continue
            row += b"\1" if v is not None else b"\0"
            if pa.types.is_boolean(t):
                row += bytes([1 if v else 0])
            elif pa.types.is_fixed_size_binary(t):
                row += v if v is not None else bytes(t.byte_width)
            elif pa.types.is_integer(t) or pa.types.is_temporal(t):
                f = fmt[t.bit_width]
                if pa.types.is_unsigned_integer(t):
                    f = f.upper()
                row += struct.pack(f, v if v is not None else 0)
            else:
                b = b"" if v is None else (v.encode() if isinstance(v, str) else v)
                row += struct.pack("<I", len(b)) + b
        out.append(row)
    return out


def test_pack_bytes_follow_the_documented_layout():
    rng = np.random.default_rng(21)
    n = 300

    def mask():
        return rng.random(n) < 0.2

    arrays = [
        pa.array(rng.integers(-128, 127, n), pa.int8(), mask=mask()),
        pa.array(rng.integers(0, 65535, n), pa.uint16(), mask=mask()),
        pa.array(rng.integers(-2**62, 2**62, n), pa.int64(), mask=mask()),
        pa.array(rng.integers(0, 10**12, n), pa.int64(), mask=mask()).cast(pa.timestamp("ms")),
        pa.array(rng.integers(0, 20000, n).astype(np.int32), mask=mask()).cast(pa.date32()),
        pa.array(rng.random(n) < 0.5, mask=mask()),
        pa.array([bytes(rng.integers(0, 256, 3).astype(np.uint8)) for _ in range(n)],
                 pa.binary(3), mask=mask()),
        pa.array([("é" * int(k)) for k in rng.integers(0, 4, n)], pa.string(), mask=mask()),
        pa.array([b"\0" * int(k) for k in rng.integers(0, 4, n)], pa.large_binary(), mask=mask()),
        pa.nulls(n),
    ]
    # slices with different offsets per column
    arrays = [a.slice(k % 5, n - 10) for k, a in enumerate(arrays)]
    packed = pack_keys(arrays)
    assert packed.type == pa.large_binary() and packed.null_count == 0
    assert packed.to_pylist() == python_pack(arrays)
    back = unpack_keys(packed, [a.type for a in arrays])
    for a, b in zip(arrays, back):
        assert b.type == a.type
        assert b.to_pylist() == a.to_pylist()


key_rows = st.lists(
    st.tuples(
        st.one_of(st.none(), st.integers(-2**31, 2**31 - 1)),
        st.one_of(st.none(), st.text(max_size=6)),
        st.one_of(st.none(), st.booleans()),
        st.one_of(st.none(), st.integers(-10**5, 10**5)),
        st.one_of(st.none(), st.binary(max_size=5)),
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(rows=key_rows, start=st.integers(0, 8), cut=st.integers(0, 8), large=st.booleans())
def test_pack_unpack_round_trip_with_slices_and_nulls(rows, start, cut, large):
    types = [pa.int32(), pa.large_string() if large else pa.string(), pa.bool_(), pa.date32(),
             pa.large_binary() if large else pa.binary()]
    # padding rows around the slice, so offsets into the parents are not zero
    pad = [(7, "pad", True, 1, b"p")] * 8
    full = pad[:start] + rows + pad[:cut]
    arrays = [pa.array([r[c] for r in full], type=t).slice(start, len(rows)) for c, t in enumerate(types)]
    packed = pack_keys(arrays)
    assert len(packed) == len(rows)
    # canonical: equal key tuples <=> equal bytes
    by_bytes = {}
    for r, b in zip(rows, packed.to_pylist()):
        by_bytes.setdefault(b, set()).add(r)
    assert all(len(v) == 1 for v in by_bytes.values())
    assert len(by_bytes) == len(set(rows))
    # a sliced packed column unpacks too
    if len(rows) > 2:
        sub = unpack_keys(packed.slice(1, len(rows) - 2), types)
        assert [a.to_pylist() for a in sub] == [a.slice(1, len(rows) - 2).to_pylist() for a in arrays]
    back = unpack_keys(packed, types)
    assert [a.to_pylist() for a in back] == [a.to_pylist() for a in arrays]
    assert [a.type for a in back] == types
    # 32-bit offsets in the packed input are fine as well
    assert [a.to_pylist() for a in unpack_keys(packed.cast(pa.binary()), types)] == [
        a.to_pylist() for a in arrays]


def test_equivalent_encodings_pack_the_same_bytes():
    words = pa.array(["b", None, "a", "b", ""])
    ints = pa.array([1, 2, None, 1, 3], pa.int16())
    want = pack_keys([words, ints])
    assert pack_keys([words.cast(pa.large_string()), ints]).equals(want)
    assert pack_keys([words.cast(pa.string_view()), ints]).equals(want)
    assert pack_keys([words.dictionary_encode(), ints]).equals(want)
    assert pack_keys([pa.chunked_array([words[:2], words[2:]]), ints]).equals(want)
    assert pack_keys(pa.record_batch([words, ints], names=["w", "i"])).equals(want)
    # a dictionary column comes back as a dictionary column of the same type
    dict_type = pa.dictionary(pa.int8(), pa.string())
    back = unpack_keys(want, [dict_type, pa.int16()])
    assert back[0].type == dict_type and back[0].to_pylist() == words.to_pylist()


def test_pack_and_unpack_errors_say_what_was_wrong():
    with pytest.raises(UnsupportedStateType, match=r"key column 1.*floating-point"):
        pack_keys([pa.array([1]), pa.array([1.5])])
    with pytest.raises(UnsupportedStateType, match=r"'x'.*floating-point"):
        check_key_types([pa.int64(), pa.float32()], ["k", "x"])
    with pytest.raises(UnsupportedStateType, match=r"unsupported key type list"):
        pack_keys([pa.array([[1]])])
    with pytest.raises(StateInputError, match=r"same length; column 0 has 2 rows, column 1 has 1"):
        pack_keys([pa.array([1, 2]), pa.array(["a"])])
    with pytest.raises(StateInputError, match=r"at least one key column"):
        pack_keys([])
    with pytest.raises(StateInputError, match=r"wrap it in a list"):
        pack_keys(pa.array([1, 2]))
    packed = pack_keys([pa.array([1, 2], pa.int32()), pa.array(["a", "bc"])])
    with pytest.raises(StateInputError, match=r"row 0 .*bytes are left"):
        unpack_keys(packed, [pa.int32()])
    with pytest.raises(StateInputError, match=r"row 0 .*ends before"):
        unpack_keys(packed, [pa.int64(), pa.string()])
    with pytest.raises(StateInputError, match=r"validity byte"):
        unpack_keys(pa.array([b"\x05\0\0\0\0"]), [pa.int32()])
    with pytest.raises(StateInputError, match=r"1 nulls"):
        unpack_keys(pa.array([None], pa.binary()), [pa.int32()])
    with pytest.raises(StateInputError, match=r"binary or large_binary.*got string"):
        unpack_keys(pa.array(["x"]), [pa.int32()])


def test_empty_and_all_null_columns_pack():
    assert len(pack_keys([pa.array([], pa.int64()), pa.array([], pa.string())])) == 0
    assert [len(a) for a in unpack_keys(pa.array([], pa.large_binary()), [pa.int64(), pa.string()])] == [0, 0]
    nulls = pa.nulls(4, pa.int32())
    packed = pack_keys([nulls, pa.nulls(4, pa.string())])
    assert packed.to_pylist() == [b"\0\0\0\0\0" + b"\0\0\0\0\0"] * 4
    back = unpack_keys(packed, [pa.int32(), pa.string()])
    assert [a.null_count for a in back] == [4, 4]


def test_packed_keys_in_the_table_match_group_by_and_survive_split_and_merge():
    from sabot._core import partition

    rng = np.random.default_rng(17)
    n = 20_000
    a = pa.array(rng.integers(0, 30, n), pa.int64(), mask=rng.random(n) < 0.05)
    b = pa.array(np.array(["p", "q", "rr", ""], dtype=object)[rng.integers(0, 4, n)],
                 pa.large_string(), mask=rng.random(n) < 0.05)
    c = pa.array(rng.integers(0, 5, n).astype(np.int32), mask=rng.random(n) < 0.05).cast(pa.date32())
    v = pa.array(rng.normal(size=n), mask=rng.random(n) < 0.1)
    src = pa.table({"a": a, "b": b, "c": c, "v": v})
    t = KeyedAggregateTable(pa.large_binary(), ALL_AGGS, MAXP, key_name="packed")
    for batch in src.to_batches(max_chunksize=1500):
        h = partition.hash_columns(batch, ["a", "b", "c"])
        t.update(pack_keys([batch["a"], batch["b"], batch["c"]]), h,
                 partition.key_groups(h, MAXP), {"v": batch["v"]})

    def as_table(res):
        keys = unpack_keys(res["packed"], [pa.int64(), pa.large_string(), pa.date32()])
        return pa.table(dict(zip(["a", "b", "c"], keys))).append_column("v_sum", res["v_sum"]).append_column(
            "count", res["count"]).append_column("v_max", res["v_max"])

    ref = src.group_by(["a", "b", "c"], use_threads=False).aggregate(
        [("v", "sum"), ([], "count_all"), ("v", "max")]).rename_columns(["a", "b", "c", "v_sum", "count", "v_max"])
    from sabot.testing import assert_tables_equal

    assert_tables_equal(as_table(t.result()), ref, sort_by=["a", "b", "c"])
    # split by key groups into 3 parts, merge at parallelism 2 and back into one
    parts = partition.split_state_table(t.snapshot(), 3, max_parallelism=MAXP)
    merged = KeyedAggregateTable(pa.large_binary(), ALL_AGGS, MAXP, key_name="packed")
    for p in parts:
        merged.merge(p)
    assert_tables_equal(as_table(merged.result()), ref, sort_by=["a", "b", "c"])

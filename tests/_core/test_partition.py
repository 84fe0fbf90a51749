"""Tests of sabot._core.partition: key groups, repartition and state splitting.

Expected results come from the pure-Python reference hash (test_hash_golden.py)
and from pyarrow's own filter/take, never from the kernels under test.
"""

import decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sabot._core.partition as partition
from test_hash_golden import key_hashes
from sabot.errors import SabotError


def ref_pids(arrays, num_partitions=None, assignment=None, max_parallelism=128):
    hashes = key_hashes(arrays)
    kgs = [x % max_parallelism for x in hashes]
    if assignment is None:
        return [kg * num_partitions // max_parallelism for kg in kgs], kgs
    return [int(assignment[kg]) for kg in kgs], kgs


def ref_split(batch, pids, num_partitions):
    pids = np.asarray(pids, dtype=np.int64)
    return [batch.filter(pa.array(pids == p)) for p in range(num_partitions)]


def all_types_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < 0.2
    ints = rng.integers(-50, 50, n)
    return pa.record_batch({
        "k": pa.array(ints, mask=mask),
        "i8": pa.array(rng.integers(-100, 100, n).astype(np.int8)),
        "u16": pa.array(rng.integers(0, 60000, n).astype(np.uint16), mask=rng.random(n) < 0.3),
        "f32": pa.array(rng.random(n).astype(np.float32)),
        "f64": pa.array(rng.random(n), mask=rng.random(n) < 0.1),
        "b": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
        "s": pa.array([None if x % 7 == 0 else "s" * (x % 13) + str(x) for x in ints]),
        "ls": pa.array([str(x) * 3 for x in ints], pa.large_string()),
        "bin": pa.array([bytes([x % 256]) * (x % 5) for x in range(n)], pa.binary()),
        "lbin": pa.array([b"x" * (x % 4) for x in range(n)], pa.large_binary()),
        "d": pa.array([["a", "bb", None, "ccc"][x % 4] for x in range(n)]).dictionary_encode(),
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("us", tz="UTC")),
        "date": pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.int32()).view(pa.date32()),
        "dec": pa.array([decimal.Decimal(x) / 100 for x in range(n)], pa.decimal128(10, 2)),
        "fsb": pa.array([bytes([x % 256, 1, 2]) for x in range(n)], pa.binary(3)),
        "lst": pa.array([None if x % 5 == 0 else list(range(x % 4)) for x in range(n)], pa.list_(pa.int64())),
        "st": pa.array([{"a": x, "b": str(x)} for x in range(n)]),
        "nul": pa.nulls(n),
        "row": pa.array(np.arange(n)),
    })


# --------------------------------------------------------------------------- key groups

@pytest.mark.parametrize("max_parallelism", [1, 7, 100, 128])
def test_key_group_ranges_tile_every_parallelism(max_parallelism):
    for p in range(1, max_parallelism + 1):
        owners = [-1] * max_parallelism
        for s in range(p):
            start, stop = partition.key_group_range(s, max_parallelism, p)
            for kg in range(start, stop):
                assert owners[kg] == -1, f"key group {kg} owned twice (p={p})"
                owners[kg] = s
        assert -1 not in owners, f"p={p}: key groups {[i for i, o in enumerate(owners) if o < 0]} unowned"
        # the ranges are exactly the inverse of subtask_for_key_group
        assert owners == [kg * p // max_parallelism for kg in range(max_parallelism)]
        assert owners == [partition.subtask_for_key_group(kg, max_parallelism, p) for kg in range(max_parallelism)]
        assert partition.default_assignment(max_parallelism, p).tolist() == owners


def test_key_group_ranges_contiguous_and_ordered():
    ranges = [partition.key_group_range(s, 128, 5) for s in range(5)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 128
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_key_group_scalar_and_vector():
    hashes = np.array([0, 1, 127, 128, 2**64 - 1, 12345678901234567890], dtype=np.uint64)
    expect = [int(x) % 128 for x in hashes]
    assert partition.key_groups(hashes, 128).tolist() == expect
    assert partition.key_groups(hashes, 128).dtype == np.int32
    assert partition.key_groups(hashes, 100).tolist() == [int(x) % 100 for x in hashes]
    assert [partition.key_group(int(x), 128) for x in hashes] == expect


def test_key_group_bad_input():
    with pytest.raises(TypeError, match="uint64"):
        partition.key_groups(np.array([1, 2], dtype=np.int64), 128)
    with pytest.raises(ValueError, match="max_parallelism"):
        partition.key_groups(np.array([1], dtype=np.uint64), 0)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        partition.key_group(-1, 128)
    with pytest.raises(ValueError, match="parallelism"):
        partition.key_group_range(0, 128, 129)
    with pytest.raises(ValueError, match="subtask"):
        partition.key_group_range(3, 128, 3)
    with pytest.raises(ValueError, match="key_group"):
        partition.subtask_for_key_group(128, 128, 4)


# --------------------------------------------------------------------------- repartition

@pytest.fixture(params=["take", "scatter"])
def small_batch_path(request, monkeypatch):
    """Batches under TAKE_BELOW_ROWS rows go through one Arrow take; the same tests run
    them through the scatter kernels too."""
    if request.param == "scatter":
        monkeypatch.setattr(partition, "TAKE_BELOW_ROWS", 0)
    return request.param


@pytest.mark.parametrize("num_partitions", [1, 3, 8, 64])
@pytest.mark.parametrize("offset", [0, 5])
def test_repartition_all_types_matches_reference(num_partitions, offset, small_batch_path):
    full = all_types_batch(700)
    batch = full.slice(offset, 600)
    out, counts = partition.repartition(batch, "k", num_partitions, key_group_counts=True)
    pids, kgs = ref_pids([batch.column("k")], num_partitions)
    expected = ref_split(batch, pids, num_partitions)
    assert len(out) == num_partitions
    for got, exp in zip(out, expected):
        assert got.schema == batch.schema
        got.validate(full=True)
        assert got.to_pylist() == exp.to_pylist()
    assert counts.dtype == np.int64 and counts.tolist() == np.bincount(kgs, minlength=128).tolist()
    # every row exactly once, in input order within each partition
    rows = [r for b in out for r in b.column("row").to_pylist()]
    assert sorted(rows) == batch.column("row").to_pylist()
    for b in out:
        r = b.column("row").to_pylist()
        assert r == sorted(r)


def test_repartition_sends_a_batch_whose_rows_all_go_to_one_partition_as_it_is(small_batch_path):
    batch = all_types_batch(300).slice(7)
    out, counts = partition.repartition(batch, "k", 1, key_group_counts=True)
    assert out[0] is batch  # not copied
    assert counts.tolist() == np.bincount(ref_pids([batch.column("k")], 1)[1], minlength=128).tolist()
    one_key = batch.filter(pc.equal(batch.column("k"), 7))
    out = partition.repartition(one_key, "k", 4)
    target = ref_pids([one_key.column("k")], 4)[0][0]
    assert out[target] is one_key and all(b.num_rows == 0 and b.schema == batch.schema
                                          for p, b in enumerate(out) if p != target)


def test_repartition_multi_column_key_and_assignment():
    batch = all_types_batch(500, seed=3)
    keys = ["s", "k", "d"]
    rng = np.random.default_rng(1)
    assignment = rng.integers(0, 5, 128).astype(np.int32)
    out = partition.repartition(batch, keys, assignment=assignment)
    pids, _ = ref_pids([batch.column(k) for k in keys], assignment=assignment)
    assert len(out) == 5
    for got, exp in zip(out, ref_split(batch, pids, 5)):
        assert got.to_pylist() == exp.to_pylist()


def test_repartition_assignment_with_explicit_num_partitions_and_odd_max_parallelism():
    batch = all_types_batch(300, seed=4)
    assignment = [kg % 3 for kg in range(100)]
    out = partition.repartition(batch, ["f64"], 6, assignment=assignment, max_parallelism=100)
    pids, _ = ref_pids([batch.column("f64")], assignment=assignment, max_parallelism=100)
    assert len(out) == 6 and all(b.num_rows == 0 for b in out[3:])
    for got, exp in zip(out, ref_split(batch, pids, 6)):
        assert got.to_pylist() == exp.to_pylist()


def test_repartition_empty_batch_and_table_input():
    batch = all_types_batch(10).slice(0, 0)
    out = partition.repartition(batch, "k", 4)
    assert [b.num_rows for b in out] == [0, 0, 0, 0]
    assert all(b.schema == batch.schema for b in out)
    table = pa.Table.from_batches([all_types_batch(50), all_types_batch(30, seed=2)])
    out = partition.repartition(table, "k", 2)
    assert sum(b.num_rows for b in out) == 80


def test_repartition_large_batch_strings():
    n = 200_000
    rng = np.random.default_rng(5)
    keys = pa.array([f"key-{x:08d}" for x in rng.integers(0, 50_000, n)])
    batch = pa.record_batch({"key": keys, "v": pa.array(np.arange(n))}).slice(17)
    out = partition.repartition(batch, "key", 16)
    hashes = partition.hash_columns(batch, "key")
    pids = (hashes % np.uint64(128)).astype(np.int64) * 16 // 128
    for p, got in enumerate(out):
        exp = batch.filter(pa.array(pids == p))
        assert got.equals(exp)


def test_partition_ids_and_scatter():
    batch = all_types_batch(400, seed=6)
    pids, kgc = partition.partition_ids(batch, "k", 8)
    ref, kgs = ref_pids([batch.column("k")], 8)
    assert pids.dtype == np.uint16 and pids.tolist() == ref
    assert kgc.tolist() == np.bincount(kgs, minlength=128).tolist()
    parts = partition.scatter(batch, pids, 8)
    for got, exp in zip(parts, ref_split(batch, ref, 8)):
        assert got.to_pylist() == exp.to_pylist()


@settings(max_examples=60, deadline=None)
@given(
    vals=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=200),
    strs=st.data(),
    num_partitions=st.integers(1, 32),
    offset=st.integers(0, 20),
)
def test_repartition_property(vals, strs, num_partitions, offset):
    n = len(vals)
    svals = strs.draw(st.lists(st.one_of(st.none(), st.text(max_size=12)), min_size=n, max_size=n))
    for take_below in (0, partition.TAKE_BELOW_ROWS):  # through the scatter kernels, and one take
        _check_repartition(vals, svals, num_partitions, offset, take_below)


def _check_repartition(vals, svals, num_partitions, offset, take_below):
    n = len(vals)
    batch = pa.record_batch({"a": pa.array(vals, pa.int64()), "s": pa.array(svals, pa.string()),
                             "row": pa.array(np.arange(n))})
    batch = batch.slice(min(offset, n))
    default, partition.TAKE_BELOW_ROWS = partition.TAKE_BELOW_ROWS, take_below
    try:
        out = partition.repartition(batch, ["a", "s"], num_partitions)
    finally:
        partition.TAKE_BELOW_ROWS = default
    pids, _ = ref_pids([batch.column("a"), batch.column("s")], num_partitions)
    for got, exp in zip(out, ref_split(batch, pids, num_partitions)):
        assert got.to_pylist() == exp.to_pylist()


def staged_batch(n, seed):
    """Enough rows for the staged (write-combining) scatter, every value width."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-(2**40), 2**40, n)
    return pa.record_batch({
        "k": pa.array(k, mask=rng.random(n) < 0.05),
        "i8": pa.array(rng.integers(-100, 100, n).astype(np.int8)),
        "i16": pa.array(rng.integers(-3000, 3000, n).astype(np.int16), mask=rng.random(n) < 0.1),
        "i32": pa.array(rng.integers(-(2**31), 2**31 - 1, n).astype(np.int32)),
        "f32": pa.array(rng.random(n).astype(np.float32)),
        "f64": pa.array(rng.random(n), mask=rng.random(n) < 0.1),
        "ts": pa.array(rng.integers(0, 10**12, n), pa.timestamp("ms")),
        "u64": pa.array(rng.integers(0, 2**63, n, dtype=np.uint64)),
        "fsb": pa.array([bytes([x % 256, 7, x // 256 % 256]) for x in range(n)], pa.binary(3)),
        "b": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
        "s": pa.array([None if x % 11 == 0 else "v" * (x % 23) + str(x) for x in range(n)]),
        "d": pa.array([["x", "yy", None][x % 3] for x in range(n)]).dictionary_encode(),
        "row": pa.array(np.arange(n)),
    })


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("num_partitions,max_parallelism", [(3, 128), (64, 128), (300, 512)])
def test_repartition_staged_threads_widths_nulls_slices(num_threads, num_partitions, max_parallelism):
    # 1-byte partition ids for P <= 256, 2-byte above; threads split the rows, so the
    # threads' runs of one partition meet mid cache line; the slice starts mid line too
    batch = staged_batch(30_011, seed=num_partitions).slice(13, 30_000)
    out, counts = partition.repartition(batch, "k", num_partitions, max_parallelism=max_parallelism,
                                        num_threads=num_threads, key_group_counts=True)
    pids, kgs = ref_pids([batch.column("k")], num_partitions, max_parallelism=max_parallelism)
    assert counts.tolist() == np.bincount(kgs, minlength=max_parallelism).tolist()
    # the expected split: a stable sort of the rows by reference partition id
    order = np.argsort(np.asarray(pids), kind="stable")
    taken = batch.take(pa.array(order))
    sizes = np.bincount(pids, minlength=num_partitions)
    start = 0
    assert len(out) == num_partitions
    for p, got in enumerate(out):
        got.validate(full=True)
        assert got.equals(taken.slice(start, sizes[p])), f"partition {p}"
        start += sizes[p]


def test_repartition_threads_do_not_change_result():
    batch = staged_batch(50_000, seed=9)
    one = partition.repartition(batch, ["k", "s"], 16, num_threads=1)
    for nt in (2, 4):
        many = partition.repartition(batch, ["k", "s"], 16, num_threads=nt)
        assert all(a.equals(b) for a, b in zip(one, many))


def test_repartition_num_threads_bad_input():
    batch = staged_batch(10, seed=1)
    with pytest.raises(ValueError, match="num_threads"):
        partition.repartition(batch, "k", 2, num_threads=0)
    with pytest.raises(TypeError, match="num_threads"):
        partition.repartition(batch, "k", 2, num_threads=1.5)


def test_scatter_short_strings_at_buffer_end():
    # short values are copied as two 8-byte words: the last values of the source
    # buffer (fewer than 16 readable bytes after them) must take the exact path
    n = 5000
    vals = [("ab" * (x % 9))[: x % 17] for x in range(n)]
    batch = pa.record_batch({"s": pa.array(vals), "ls": pa.array(vals, pa.large_string())})
    pids = (np.arange(n) * 7919 % 5).astype(np.uint8)
    parts = partition.scatter(batch, pids, 5)
    for p, got in enumerate(parts):
        got.validate(full=True)
        exp = [v for v, q in zip(vals, pids) if q == p]
        assert got.column("s").to_pylist() == exp and got.column("ls").to_pylist() == exp


# --------------------------------------------------------------------------- state splitting

def test_split_state_table_ranges_and_assignment():
    rng = np.random.default_rng(7)
    kg = rng.integers(0, 128, 1000).astype(np.int32)
    table = pa.Table.from_batches([
        pa.record_batch({"_key_group": pa.array(kg[:600]), "v": pa.array(np.arange(600))}),
        pa.record_batch({"_key_group": pa.array(kg[600:]), "v": pa.array(np.arange(600, 1000))}),
    ])
    parts = partition.split_state_table(table, 3)
    owner = kg.astype(np.int64) * 3 // 128
    for p, got in enumerate(parts):
        assert got.schema == table.schema
        assert got.column("v").to_pylist() == np.flatnonzero(owner == p).tolist()
    assignment = rng.integers(0, 4, 128)
    parts = partition.split_state_table(table, assignment=assignment)
    for p, got in enumerate(parts):
        assert got.column("v").to_pylist() == np.flatnonzero(assignment[kg] == p).tolist()


def test_split_state_table_errors():
    t = pa.table({"_key_group": pa.array([0, 200], pa.int16()), "v": [1, 2]})
    with pytest.raises(ValueError, match=r"holds 200 at row 1"):
        partition.split_state_table(t, 2)
    with pytest.raises(ValueError, match="'kg' is not in the state table"):
        partition.split_state_table(t, 2, key_group_column="kg")
    with pytest.raises(TypeError, match="integer"):
        partition.split_state_table(pa.table({"_key_group": ["a"]}), 2)
    with pytest.raises(ValueError, match="nulls"):
        partition.split_state_table(pa.table({"_key_group": pa.array([1, None])}), 2)


# --------------------------------------------------------------------------- bad input

def test_bad_input_messages():
    batch = pa.record_batch({"k": [1, 2], "l": pa.array([[1], [2]])})
    with pytest.raises(ValueError, match=r"key column 'missing' is not in the batch; its columns are \['k', 'l'\]") as e:
        partition.repartition(batch, "missing", 2)
    assert isinstance(e.value, SabotError)
    with pytest.raises(TypeError, match=r"key column 'l': type list<item: int64> cannot be hashed"):
        partition.repartition(batch, "l", 2)
    with pytest.raises(TypeError, match="float16|halffloat"):
        partition.hash_columns(pa.array(np.array([1.0], dtype=np.float16)))
    with pytest.raises(ValueError, match="num_partitions must be in 1..max_parallelism=128, got 0"):
        partition.repartition(batch, "k", 0)
    with pytest.raises(ValueError, match="num_partitions or an assignment"):
        partition.repartition(batch, "k")
    with pytest.raises(ValueError, match="assignment has 3 entries but max_parallelism is 128"):
        partition.repartition(batch, "k", assignment=[0, 1, 2])
    with pytest.raises(ValueError, match=r"assignment\[5\] = 9 is not a partition in 0..3"):
        a = np.zeros(128, dtype=np.int32)
        a[5] = 9
        partition.repartition(batch, "k", 4, assignment=a)
    with pytest.raises(ValueError, match="key column index 4 is out of range"):
        partition.hash_columns(batch, [4])
    with pytest.raises(ValueError, match="same length"):
        partition.hash_columns([pa.array([1, 2]), pa.array([1])])
    with pytest.raises(TypeError, match="RecordBatch"):
        partition.repartition({"k": [1]}, "k", 2)
    with pytest.raises(ValueError, match="empty"):
        partition.repartition(batch, [], 2)

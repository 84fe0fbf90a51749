"""Tests of sabot.runtime.partitioner against pyarrow-computed expectations."""

import numpy as np
import pyarrow as pa
import pytest

import sabot._core.partition as partition
from sabot.runtime.partitioner import (
    BroadcastPartitioner,
    ForwardPartitioner,
    HashPartitioner,
    Partitioner,
    RebalancePartitioner,
    make_partitioner,
)


def make_batch(n, start=0):
    rng = np.random.default_rng(start)
    return pa.record_batch({
        "user": pa.array([f"u{x}" for x in rng.integers(0, 100, n)]),
        "x": pa.array(rng.integers(0, 1000, n)),
        "row": pa.array(np.arange(start, start + n)),
    })


def expected_channels(batch, keys, num_partitions, assignment=None, max_parallelism=128):
    kg = (partition.hash_columns(batch, keys) % np.uint64(max_parallelism)).astype(np.int64)
    if assignment is None:
        return kg * num_partitions // max_parallelism, kg
    return np.asarray(assignment)[kg], kg


def test_interface():
    for p in (ForwardPartitioner(), HashPartitioner("x", 2), RebalancePartitioner(2), BroadcastPartitioner(2)):
        assert isinstance(p, Partitioner)
        assert p.route(make_batch(0)) == []


def test_forward_and_broadcast():
    b = make_batch(10)
    assert ForwardPartitioner().route(b) == [(0, b)]
    routed = BroadcastPartitioner(3).route(b)
    assert [c for c, _ in routed] == [0, 1, 2] and all(x.equals(b) for _, x in routed)


def test_hash_partitioner_routes_by_key_group_and_counts():
    hp = HashPartitioner(["user"], 4)
    counts = np.zeros(128, dtype=np.int64)
    for start in (0, 1000):
        b = make_batch(500, start)
        routed = hp.route(b)
        chan, kg = expected_channels(b, ["user"], 4)
        counts += np.bincount(kg, minlength=128)
        assert [c for c, _ in routed] == sorted(set(chan.tolist()))
        for c, part in routed:
            assert part.num_rows > 0
            assert part.equals(b.filter(pa.array(chan == c)))
    np.testing.assert_array_equal(hp.key_group_counts, counts)
    np.testing.assert_array_equal(hp.reset_key_group_counts(), counts)
    assert hp.key_group_counts.sum() == 0


def test_hash_partitioner_set_assignment():
    hp = HashPartitioner(["user", "x"], 3, max_parallelism=64)
    assignment = np.arange(64) % 3
    hp.set_assignment(assignment)
    b = make_batch(300)
    chan, _ = expected_channels(b, ["user", "x"], 3, assignment, 64)
    for c, part in hp.route(b):
        assert part.equals(b.filter(pa.array(chan == c)))
    hp.set_assignment(None)
    chan, _ = expected_channels(b, ["user", "x"], 3, None, 64)
    for c, part in hp.route(b):
        assert part.equals(b.filter(pa.array(chan == c)))
    with pytest.raises(ValueError, match="assignment has 10 entries but max_parallelism is 64"):
        hp.set_assignment(np.zeros(10, dtype=np.int32))
    with pytest.raises(ValueError, match=r"assignment\[0\] = 3 is not a partition in 0..2"):
        hp.set_assignment(np.full(64, 3))


def test_rebalance_by_batch_round_robin():
    rp = RebalancePartitioner(3)
    chans = [rp.route(make_batch(5, i))[0][0] for i in range(7)]
    assert chans == [0, 1, 2, 0, 1, 2, 0]


def test_rebalance_by_rows_deals_rows_in_turn():
    rp = RebalancePartitioner(3, by="rows")
    got = {0: [], 1: [], 2: []}
    pos = 0
    for size in (4, 1, 7, 2):
        b = make_batch(size, pos)
        for c, part in rp.route(b):
            got[c].extend(part.column("row").to_pylist())
        pos += size
    for c in range(3):
        assert got[c] == [r for r in range(pos) if r % 3 == c]


def test_make_partitioner():
    assert isinstance(make_partitioner("forward", 1), ForwardPartitioner)
    hp = make_partitioner("HASH", 4, key_columns=["user"], max_parallelism=32)
    assert isinstance(hp, HashPartitioner) and hp.max_parallelism == 32 and hp.num_partitions == 4
    assert isinstance(make_partitioner("rebalance", 2), RebalancePartitioner)
    assert isinstance(make_partitioner("broadcast", 2), BroadcastPartitioner)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown partitioning 'zigzag'"):
        make_partitioner("zigzag", 2)
    with pytest.raises(ValueError, match="key_columns"):
        make_partitioner("hash", 2)
    with pytest.raises(ValueError, match="num_partitions must be >= 1, got 0"):
        RebalancePartitioner(0)
    with pytest.raises(ValueError, match="by must be"):
        RebalancePartitioner(2, by="bytes")
    with pytest.raises(ValueError, match="max_parallelism=128, got 200"):
        HashPartitioner("x", 200)
    with pytest.raises(ValueError, match="not in the batch"):
        HashPartitioner("nope", 2).route(make_batch(3))
    with pytest.raises(TypeError, match="RecordBatch"):
        BroadcastPartitioner(2).route([1, 2])

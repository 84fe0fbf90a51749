"""sabot.kernels: the public face of the partitioning kernels, checked against pyarrow/numpy."""

import doctest

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import sabot.kernels as kernels


def test_the_docstring_examples_run():
    assert doctest.testmod(kernels).failed == 0


def test_repartition_equals_a_pyarrow_filter_per_partition():
    rng = np.random.default_rng(3)
    n = 50_000
    batch = pa.record_batch({"k": pa.array(rng.integers(0, 1000, n)), "s": pa.array([f"v{i % 97}" for i in range(n)]),
                             "x": pa.array(rng.random(n))})
    parts = kernels.repartition(batch, ["k", "s"], 8)
    # the owner of each row by the documented rule, computed with numpy from the hashes
    groups = kernels.key_groups(kernels.hash_columns(batch, ["k", "s"]), kernels.DEFAULT_MAX_PARALLELISM)
    owners = groups.astype(np.int64) * 8 // kernels.DEFAULT_MAX_PARALLELISM
    for p, part in enumerate(parts):
        expected = batch.filter(pa.array(owners == p))  # pyarrow keeps input order
        assert part.equals(expected)
    assert sum(p.num_rows for p in parts) == n


def test_key_group_ranges_cover_every_group_once():
    for parallelism in (1, 3, 7, 128):
        ranges = [kernels.key_group_range(i, 128, parallelism) for i in range(parallelism)]
        covered = [g for start, end in ranges for g in range(start, end)]  # half-open ranges
        assert covered == list(range(128))
        assignment = kernels.default_assignment(128, parallelism)
        assert all(kernels.subtask_for_key_group(g, 128, parallelism) == assignment[g] for g in range(128))


def test_hash_is_stable_and_nulls_hash_to_the_constant():
    batch = pa.record_batch({"k": pa.array([5, None, 5], pa.int64())})
    h = kernels.hash_columns(batch, "k")
    assert h[0] == h[2] and h[1] == kernels.NULL_HASH
    assert pc.equal(pa.array(kernels.key_groups(h, 128)), pa.array((h % 128).astype(np.int32))).to_pylist() == \
        [True] * 3

"""Benchmark of the compiled keyed-state table (sabot._core.state.KeyedAggregateTable).

Measures, in one process:
  1. running count + sum of a float64 column over int64 keys, fed in batches of 65,536
     rows (5,000,000 rows over 100,000 keys by default): rows/s, and the ratio to one
     ``pyarrow.Table.group_by(...).aggregate(...)`` over the same data (the baseline);
  2. the same with string keys (same baseline shape, string key column);
  3. snapshot() and restore() time for 100k and 1M keys.

Hashing is excluded on purpose (the table takes precomputed hashes, which come from
sabot._core.partition in the engine); a numpy splitmix64 stands in here and is done
before timing.

Usage: python bench/bench_state.py [--quick]
"""

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from sabot._core.state import KeyedAggregateTable  # noqa: E402

BATCH = 65_536
MAX_PARALLELISM = 128


def splitmix64(x):
    """Stand-in stable hash of int64 keys (vectorised splitmix64 finaliser)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_updates(n_rows, n_keys, repeat, string_keys=False):
    rng = np.random.default_rng(42)
    key_ints = rng.integers(0, n_keys, n_rows, dtype=np.int64)
    values = rng.random(n_rows)
    hashes = splitmix64(key_ints)
    kgs = (hashes % np.uint64(MAX_PARALLELISM)).astype(np.int32)
    if string_keys:
        keys = pa.array(np.char.add("user-", key_ints.astype(str)).astype(object), pa.string())
        key_type = pa.string()
    else:
        keys = pa.array(key_ints)
        key_type = pa.int64()
    vals = pa.array(values)
    batches = [
        (keys.slice(s, BATCH), hashes[s:s + BATCH], kgs[s:s + BATCH], {"v": vals.slice(s, BATCH)})
        for s in range(0, n_rows, BATCH)
    ]

    def run_table():
        t = KeyedAggregateTable(key_type, [(None, "count"), ("v", "sum")], MAX_PARALLELISM)
        for k, h, g, v in batches:
            t.update(k, h, g, v)
        return t

    table = pa.table({"k": keys, "v": vals})

    def run_arrow():
        return table.group_by("k").aggregate([("v", "count"),
                                              ("v", "sum")])

    t_state = best_of(run_table, repeat)
    t_arrow = best_of(run_arrow, repeat)
    # sanity: both computed the same thing (not timed)
    ours = run_table().result().sort_by("key")
    ref = run_arrow().sort_by("k")
    assert ours.column("key").equals(ref.column("k"))
    assert ours.column("count").equals(ref.column("v_count"))
    assert np.allclose(ours.column("v_sum").to_numpy(), ref.column("v_sum").to_numpy())
    kind = "string" if string_keys else "int64"
    print(f"update count+sum, {kind} keys, {n_rows:,} rows / {n_keys:,} keys, batches of {BATCH:,}:")
    print(f"  KeyedAggregateTable     {t_state * 1e3:8.1f} ms   {n_rows / t_state / 1e6:7.1f} M rows/s")
    print(f"  pyarrow group_by (1x)   {t_arrow * 1e3:8.1f} ms   {n_rows / t_arrow / 1e6:7.1f} M rows/s")
    print(f"  ratio table/arrow time  {t_state / t_arrow:8.2f}x  (< 1 means faster than one group_by)")


def bench_snapshot(n_keys, repeat):
    rng = np.random.default_rng(7)
    keys = rng.permutation(np.arange(n_keys, dtype=np.int64) * 7919)
    hashes = splitmix64(keys)
    kgs = (hashes % np.uint64(MAX_PARALLELISM)).astype(np.int32)
    t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAX_PARALLELISM)
    t.update(pa.array(keys), hashes, kgs, {"v": pa.array(rng.random(n_keys))})

    t_snap = best_of(t.snapshot, repeat)
    snap = t.snapshot()
    fresh = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAX_PARALLELISM)
    t_restore = best_of(lambda: fresh.restore(snap), repeat)
    t_half = best_of(lambda: t.snapshot((0, MAX_PARALLELISM // 2)), repeat)
    assert fresh.result().equals(t.result())
    # baseline: a plain copy of the same bytes (what a snapshot cannot beat)
    t_copy = best_of(lambda: [c.to_numpy().copy() for c in snap.columns], repeat)
    print(f"snapshot / restore, {n_keys:,} int64 keys ({snap.nbytes / 1e6:.1f} MB of state):")
    print(f"  snapshot()              {t_snap * 1e3:8.2f} ms   ({t_snap / t_copy:5.2f}x a numpy copy of its columns)")
    print(f"  snapshot(half range)    {t_half * 1e3:8.2f} ms")
    print(f"  restore() into empty    {t_restore * 1e3:8.2f} ms   ({t_restore / t_copy:5.2f}x a numpy copy)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    args = ap.parse_args()
    if args.quick:
        bench_updates(500_000, 10_000, 2)
        bench_updates(200_000, 10_000, 2, string_keys=True)
        bench_snapshot(100_000, 2)
    else:
        bench_updates(5_000_000, 100_000, 3)
        bench_updates(2_000_000, 100_000, 2, string_keys=True)
        bench_snapshot(100_000, 3)
        bench_snapshot(1_000_000, 3)


if __name__ == "__main__":
    main()

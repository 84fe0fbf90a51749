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

Every group is run interleaved after a warm-up (median of ``--repeat``); the table's
result is checked against pyarrow's on every run, a restore against the snapshotted table.

Usage: python bench/bench_state.py [--quick] [--repeat N] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table as results_table  # noqa: E402
from sabot._core.state import KeyedAggregateTable  # noqa: E402

BATCH = 65_536
MAX_PARALLELISM = 128


def splitmix64(x):
    """Stand-in stable hash of int64 keys (vectorised splitmix64 finaliser)."""
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


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

    ref = run_arrow().sort_by("k")

    def check(name, out):
        if name == "KeyedAggregateTable":
            ours = out.result().sort_by("key")
            assert ours.column("key").equals(ref.column("k")), "keys differ from pyarrow's"
            assert ours.column("count").equals(ref.column("v_count")), "counts differ from pyarrow's"
            assert np.allclose(ours.column("v_sum").to_numpy(), ref.column("v_sum").to_numpy()), "sums differ"

    results = measure({"pyarrow group_by": run_arrow, "KeyedAggregateTable": run_table},
                      repeat=repeat, warmup=1, check=check)
    kind = "string" if string_keys else "int64"
    print(f"update count+sum, {kind} keys, {n_rows:,} rows / {n_keys:,} keys, batches of {BATCH:,} "
          f"(< 1 means faster than one group_by):")
    print(results_table(results, baseline="pyarrow group_by", work=n_rows, unit="rows"))
    return results


def bench_snapshot(n_keys, repeat):
    rng = np.random.default_rng(7)
    keys = rng.permutation(np.arange(n_keys, dtype=np.int64) * 7919)
    hashes = splitmix64(keys)
    kgs = (hashes % np.uint64(MAX_PARALLELISM)).astype(np.int32)
    t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAX_PARALLELISM)
    t.update(pa.array(keys), hashes, kgs, {"v": pa.array(rng.random(n_keys))})

    snap = t.snapshot()
    fresh = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAX_PARALLELISM)
    expected = t.result()

    def restore():
        fresh.restore(snap)
        return fresh

    def check(name, out):
        if name == "snapshot()":
            assert out.equals(snap), "snapshot changed"
        elif name == "restore() into empty":
            assert out.result().equals(expected), "restored table differs"
        elif name == "numpy copy of its columns":
            assert len(out) == snap.num_columns

    # baseline: a plain copy of the same bytes (what a snapshot cannot beat)
    results = measure({"numpy copy of its columns": lambda: [c.to_numpy().copy() for c in snap.columns],
                       "snapshot()": t.snapshot,
                       "snapshot(half range)": lambda: t.snapshot((0, MAX_PARALLELISM // 2)),
                       "restore() into empty": restore}, repeat=repeat, warmup=1, check=check)
    print(f"snapshot / restore, {n_keys:,} int64 keys ({snap.nbytes / 1e6:.1f} MB of state):")
    print(results_table(results, baseline="numpy copy of its columns"))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 5, --quick 3)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    repeat = args.repeat or (3 if args.quick else 5)
    report = Report("bench_state", repeat=repeat, batch=BATCH)
    if args.quick:
        updates = [(500_000, 10_000, False), (200_000, 10_000, True)]
        snapshots = [100_000]
    else:
        updates = [(5_000_000, 100_000, False), (2_000_000, 100_000, True)]
        snapshots = [100_000, 1_000_000]
    for rows, keys, strings in updates:
        group = f"update, {'string' if strings else 'int64'} keys, {rows:,} rows / {keys:,} keys"
        report.add(group, bench_updates(rows, keys, repeat, string_keys=strings), baseline="pyarrow group_by")
        report.headline(f"keyed-state update (count + sum), {rows:,} rows / {keys:,} "
                        f"{'string' if strings else 'int64'} keys", group, "KeyedAggregateTable")
    for keys in snapshots:
        group = f"snapshot, {keys:,} keys"
        report.add(group, bench_snapshot(keys, repeat), baseline="numpy copy of its columns")
    report.headline(f"keyed-state snapshot, {snapshots[-1]:,} keys", group, "snapshot()")
    if args.json:
        report.write(args.json)


if __name__ == "__main__":
    main()

"""Benchmark: key-hash repartitioning (sabot._core.partition) against same-run baselines.

    python bench/bench_partition.py           # the reference task: 10,000,000 rows
    python bench/bench_partition.py --quick   # 1,000,000 rows

Reference task (issue 3): rows of (key int64 over 1,000,000 distinct keys, value
float64, ts int64) = 240 MB, into P = 8 / 64 / 256 partitions, all columns, input
order kept within each partition; then the same with a string key (1,000,000
distinct ~12-character strings). Baselines, measured in this process on the same data:

* memcpy   numpy copy of the same column bytes (the memory-bandwidth floor);
* polars   ``DataFrame.partition_by("pid", maintain_order=True)`` on a precomputed
           partition-id column (polars is not charged for hashing);
* argsort  ``np.argsort(pids, kind="stable")`` + ``RecordBatch.take`` + slices
           (also on precomputed partition ids).

Sabot's time includes hashing the key. ``sabot`` is ``repartition`` as called by
default (``num_threads=None``: 2 threads for batches this large on a machine with 2+
cores); ``sabot-1t`` forces one thread (the baselines are single threaded, except
polars, which uses its own thread pool). Each figure is the median of ``--repeat`` runs
interleaved across the contenders after a warm-up (the machine is shared and noisy).
Sabot's partitions are checked against argsort+take's (same rows, same order) on the
first run and their sizes on every run; the baselines' row counts on every run.

    python bench/bench_partition.py [--quick] [--rows N] [--repeat 5] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table  # noqa: E402

import sabot._core.partition as partition  # noqa: E402

try:
    import polars as pl
except ImportError:  # pragma: no cover - polars is a bench extra
    pl = None


def make_int_batch(n, distinct, rng):
    return pa.record_batch({
        "key": pa.array(rng.integers(0, distinct, n, dtype=np.int64)),
        "value": pa.array(rng.random(n)),
        "ts": pa.array(np.arange(n, dtype=np.int64) * 1000),
    })


def make_str_batch(n, distinct, rng):
    # distinct ~12-character keys ("k" + 11 digits), drawn with repetition
    pool = pa.array([f"k{i * 7919 % 10**11:011d}" for i in range(distinct)])
    idx = pa.array(rng.integers(0, distinct, n, dtype=np.int64))
    return pa.record_batch({
        "key": pool.take(idx),
        "value": pa.array(rng.random(n)),
        "ts": pa.array(np.arange(n, dtype=np.int64) * 1000),
    })


def memcpy_all(batch):
    out = []
    for col in batch.columns:
        for buf in col.buffers():
            if buf is not None:
                out.append(np.frombuffer(buf, dtype=np.uint8).copy())
    return out


def argsort_take(batch, pids, num_partitions):
    order = np.argsort(pids, kind="stable")
    taken = batch.take(pa.array(order))
    counts = np.bincount(pids, minlength=num_partitions)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [taken.slice(s, c) for s, c in zip(starts, counts)]


def partition_check(batch, pids, num_partitions):
    """check(name, out): sabot's partitions equal argsort+take's (first time: every row;
    then the sizes); the baselines hold every row."""
    counts = np.bincount(pids, minlength=num_partitions)
    reference = argsort_take(batch, pids, num_partitions)
    checked = set()

    def check(name, out):
        if name.startswith("sabot"):
            assert [b.num_rows for b in out] == counts.tolist(), f"{name}: partition sizes differ"
            if name not in checked:
                for i, (got, want) in enumerate(zip(out, reference)):
                    assert got.equals(want), f"{name}: partition {i} differs from argsort+take's"
                checked.add(name)
        elif name == "memcpy":
            assert sum(a.nbytes for a in out) >= batch.nbytes - 64 * len(out), "memcpy copied too little"
        elif name == "polars":
            assert sum(df.height for df in out) == batch.num_rows and len(out) == int((counts > 0).sum())
        else:
            assert [b.num_rows for b in out] == counts.tolist(), f"{name}: partition sizes differ"
    return check


def run_case(label, batch, num_partitions, repeat):
    mp = max(128, num_partitions)
    pids, _ = partition.partition_ids(batch, "key", num_partitions, max_parallelism=mp)
    cases = {
        "memcpy": lambda: memcpy_all(batch),
        "sabot": lambda: partition.repartition(batch, "key", num_partitions, max_parallelism=mp),
        "sabot-1t": lambda: partition.repartition(batch, "key", num_partitions, max_parallelism=mp, num_threads=1),
        "argsort+take": lambda: argsort_take(batch, pids, num_partitions),
    }
    if pl is not None:
        df = pl.from_arrow(batch).with_columns(pl.Series("pid", pids.astype(np.int32)))
        cases["polars"] = lambda: df.partition_by("pid", maintain_order=True)
    results = measure(cases, repeat=repeat, warmup=1, check=partition_check(batch, pids, num_partitions))
    print(f"\n{label} P={num_partitions}, {batch.nbytes / 1e6:.0f} MB (sabot's time includes hashing the key):")
    print(table(results, baseline="memcpy", work=batch.num_rows, unit="rows"))
    return results


def bench_hashing(batch, keys, n, repeat):
    ref_hash = partition.hash_columns(keys)

    def check_hash(name, out):
        if name == "hash int64 keys (1 thread)":
            assert np.array_equal(out, ref_hash), "hash_columns is not deterministic"
        elif name.startswith("repartition"):
            assert sum(b.num_rows for b in out) == n

    hashing = measure({
        "memcpy of the keys": lambda: np.frombuffer(keys.buffers()[1], dtype=np.uint8).copy(),
        "hash int64 keys (1 thread)": lambda: partition.hash_columns(keys),
        "repartition into 64, 1 native thread": lambda: partition.repartition(batch, "key", 64, num_threads=1),
        "repartition into 64, 2 native threads": lambda: partition.repartition(batch, "key", 64, num_threads=2),
    }, repeat=repeat + 2, warmup=1, check=check_hash)
    print("\nhashing and repartition by thread count:")
    print(table(hashing, baseline="memcpy of the keys", work=n, unit="rows"))
    return hashing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000,000 rows instead of 10,000,000")
    ap.add_argument("--rows", type=int, default=None, help="rows per batch (overrides --quick)")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    n = args.rows or (1_000_000 if args.quick else 10_000_000)
    distinct = min(1_000_000, n)
    repeat = args.repeat
    rng = np.random.default_rng(42)
    print(f"rows={n:,} distinct keys={distinct:,} cpu_count={os.cpu_count()} "
          f"polars={'yes' if pl is not None else 'missing'}; median of {repeat} interleaved runs", flush=True)
    report = Report("bench_partition", rows=n, distinct_keys=distinct, repeat=repeat)

    batch = make_int_batch(n, distinct, rng)
    keys = batch.column("key")
    report.add("hash", bench_hashing(batch, keys, n, repeat), baseline="memcpy of the keys")

    for p in (8, 64, 256):
        report.add(f"int64-key P={p}", run_case("int64-key", batch, p, repeat), baseline="memcpy")
    del batch, keys
    sbatch = make_str_batch(n, distinct, rng)
    shash = measure({"hash string keys": lambda: partition.hash_columns(sbatch, "key")}, repeat=repeat, warmup=1)
    t_shash = shash["hash string keys"].median
    sbytes = sbatch.column("key").nbytes / 1e9
    print(f"\nhash string keys: {t_shash * 1e3:.1f} ms = {sbytes / t_shash:.2f} GB/s "
          f"({n / t_shash / 1e6:.0f} M keys/s)", flush=True)
    report.add("str-key P=64", run_case("str-key", sbatch, 64, repeat), baseline="memcpy")

    print("\nsummary (ratios; >1 means sabot is faster, memcpy column is sabot/memcpy):")
    for group, g in report.groups.items():
        if group == "hash":
            continue
        r = {k: v.median for k, v in g["results"].items()}
        pol = f"{r['polars'] / r['sabot']:5.2f}" if "polars" in r else "  n/a"
        print(f"  {group:<14} vs polars {pol}  vs argsort+take "
              f"{r['argsort+take'] / r['sabot']:5.2f}  sabot/memcpy {r['sabot'] / r['memcpy']:5.2f}"
              f"  | 1 thread: vs polars {r.get('polars', float('nan')) / r['sabot-1t']:5.2f}"
              f"  vs argsort+take {r['argsort+take'] / r['sabot-1t']:5.2f}"
              f"  sabot/memcpy {r['sabot-1t'] / r['memcpy']:5.2f}")
    title = f"repartition {n / 1e6:g}M rows ({n * 24 / 1e6:.0f} MB) into 64 partitions"
    report.headline(title + " vs a memcpy", "int64-key P=64", "sabot")
    if pl is not None:
        report.headline(title + " vs polars partition_by", "int64-key P=64", "sabot", baseline="polars")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

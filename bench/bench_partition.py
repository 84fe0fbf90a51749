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
polars, which uses its own thread pool). Each figure is the median of several runs
(the machine is shared and noisy).
"""

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sabot._core.partition as partition  # noqa: E402

try:
    import polars as pl
except ImportError:  # pragma: no cover - polars is a bench extra
    pl = None


def best(fn, repeat):
    """Median wall time of ``repeat`` runs (named best for history)."""
    ts = []
    for _ in range(repeat):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    ts.sort()
    return ts[len(ts) // 2]


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


def run_case(label, batch, num_partitions, repeat, results):
    mp = max(128, num_partitions)
    pids, _ = partition.partition_ids(batch, "key", num_partitions, max_parallelism=mp)
    t_sabot = best(lambda: partition.repartition(batch, "key", num_partitions, max_parallelism=mp), repeat)
    t_sabot1 = best(lambda: partition.repartition(batch, "key", num_partitions, max_parallelism=mp,
                                                  num_threads=1), repeat)
    t_copy = best(lambda: memcpy_all(batch), repeat)
    t_argsort = best(lambda: argsort_take(batch, pids, num_partitions), max(1, repeat - 1))
    row = {"case": label, "P": num_partitions, "sabot": t_sabot, "sabot1": t_sabot1, "memcpy": t_copy,
           "argsort+take": t_argsort}
    if pl is not None:
        df = pl.from_arrow(batch).with_columns(pl.Series("pid", pids.astype(np.int32)))
        row["polars"] = best(lambda: df.partition_by("pid", maintain_order=True), max(1, repeat - 1))
    results.append(row)
    mb = batch.nbytes / 1e6
    line = (f"{label:<10} P={num_partitions:<4} {mb:7.0f} MB  sabot {t_sabot * 1e3:6.1f} ms"
            f" (1t {t_sabot1 * 1e3:6.1f} ms, x{t_sabot1 / t_copy:4.2f} memcpy)"
            f"  memcpy {t_copy * 1e3:7.1f} ms (x{t_sabot / t_copy:4.2f})"
            f"  argsort+take {t_argsort * 1e3:8.1f} ms (sabot {t_argsort / t_sabot:4.1f}x faster)")
    if "polars" in row:
        line += f"  polars {row['polars'] * 1e3:8.1f} ms (sabot {row['polars'] / t_sabot:4.1f}x faster)"
    print(line, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000,000 rows instead of 10,000,000")
    ap.add_argument("--rows", type=int, default=None, help="rows per batch (overrides --quick)")
    args = ap.parse_args(argv)
    n = args.rows or (1_000_000 if args.quick else 10_000_000)
    distinct = min(1_000_000, n)
    repeat = 5
    rng = np.random.default_rng(42)
    print(f"rows={n:,} distinct keys={distinct:,} cpu_count={os.cpu_count()} "
          f"polars={'yes' if pl is not None else 'missing'}", flush=True)

    batch = make_int_batch(n, distinct, rng)
    keys = batch.column("key")
    # --- hashing alone
    t_hash = best(lambda: partition.hash_columns(keys), repeat + 2)
    t_rep1 = best(lambda: partition.repartition(batch, "key", 64, num_threads=1), repeat + 2)
    t_rep2 = best(lambda: partition.repartition(batch, "key", 64, num_threads=2), repeat + 2)
    t_kcopy = best(lambda: np.frombuffer(keys.buffers()[1], dtype=np.uint8).copy(), repeat + 2)
    gb = n * 8 / 1e9
    print(f"hash int64 keys: 1 thread {t_hash * 1e3:.1f} ms = {gb / t_hash:.2f} GB/s;"
          f" repartition into 64 on 1 / 2 native threads {t_rep1 * 1e3:.1f} / {t_rep2 * 1e3:.1f} ms"
          f" (x{t_rep1 / t_rep2:.2f});"
          f" memcpy of the keys {t_kcopy * 1e3:.1f} ms (hash/memcpy x{t_hash / t_kcopy:.2f})", flush=True)

    results = []
    for p in (8, 64, 256):
        run_case("int64-key", batch, p, repeat, results)
    del batch, keys
    sbatch = make_str_batch(n, distinct, rng)
    t_shash = best(lambda: partition.hash_columns(sbatch, "key"), repeat)
    sbytes = sbatch.column("key").nbytes / 1e9
    print(f"hash string keys: {t_shash * 1e3:.1f} ms = {sbytes / t_shash:.2f} GB/s "
          f"({n / t_shash / 1e6:.0f} M keys/s)", flush=True)
    run_case("str-key", sbatch, 64, repeat, results)

    print("\nsummary (ratios; >1 means sabot is faster, memcpy column is sabot/memcpy):")
    for r in results:
        pol = f"{r['polars'] / r['sabot']:5.2f}" if "polars" in r else "  n/a"
        print(f"  {r['case']:<10} P={r['P']:<4} vs polars {pol}  vs argsort+take "
              f"{r['argsort+take'] / r['sabot']:5.2f}  sabot/memcpy {r['sabot'] / r['memcpy']:5.2f}"
              f"  | 1 thread: vs polars {r.get('polars', float('nan')) / r['sabot1']:5.2f}"
              f"  vs argsort+take {r['argsort+take'] / r['sabot1']:5.2f}"
              f"  sabot/memcpy {r['sabot1'] / r['memcpy']:5.2f}")


if __name__ == "__main__":
    main()

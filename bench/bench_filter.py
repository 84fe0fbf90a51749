"""Benchmark: the filter kernel (sabot._core.selection) against Arrow's filter, same process.

    python bench/bench_filter.py           # 5,000,000 rows in 64k-row batches
    python bench/bench_filter.py --quick   # 500,000 rows

The rows of the keyed-count job (key int64, value float64, ts int64 = 24 bytes a row)
as the stream delivers them, 65,536-row batches, filtered by a precomputed boolean mask
(``value < selectivity``, random in the rows) at 10, 50, 90 and 99 % selectivity:

* ``arrow``   ``RecordBatch.filter(mask)`` (pyarrow's C++ filter kernel; the baseline);
* ``sabot``   ``filter_batch_by_mask(batch, mask)``, what the filter operator calls;
* ``numpy``   ``column.to_numpy()[mask]`` per column (numpy's boolean indexing), for reference.

Every result is checked against Arrow's (the same rows in the same order). Each figure
is the median of ``--repeat`` interleaved runs after a warm-up.

    python bench/bench_filter.py [--quick] [--rows N] [--repeat 7] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table  # noqa: E402

from sabot._core.selection import filter_batch_by_mask  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402

BATCH = 65536


def numpy_filter(batch, keep):
    return [np.asarray(batch.column(i))[keep] for i in range(batch.num_columns)]


def run(batches, selectivity, repeat):
    masks = [pc.less(b.column("value"), selectivity) for b in batches]
    keeps = [m.to_numpy(zero_copy_only=False) for m in masks]
    expected = [b.filter(m) for b, m in zip(batches, masks)]

    def check(name, out):
        if name == "sabot":
            assert all(o.equals(e) for o, e in zip(out, expected)), "sabot's rows differ from Arrow's"
        elif name == "numpy":
            assert sum(len(cols[0]) for cols in out) == sum(e.num_rows for e in expected)

    return measure({
        "arrow": lambda: [b.filter(m) for b, m in zip(batches, masks)],
        "sabot": lambda: [filter_batch_by_mask(b, m) for b, m in zip(batches, masks)],
        "numpy": lambda: [numpy_filter(b, k) for b, k in zip(batches, keeps)],
    }, repeat=repeat, warmup=1, check=check)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500,000 rows")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=7, help="interleaved repetitions")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    rows = args.rows or (500_000 if args.quick else 5_000_000)
    batches = [keyed_records(off, min(BATCH, rows - off), num_keys=100_000) for off in range(0, rows, BATCH)]
    print(f"{rows:,} rows (key int64, value float64, ts int64) in {len(batches)} batches of up to {BATCH:,}; "
          f"median of {args.repeat} interleaved runs", flush=True)
    report = Report("bench_filter", rows=rows, repeat=args.repeat)
    for selectivity in (0.1, 0.5, 0.9, 0.99):
        results = run(batches, selectivity, args.repeat)
        print(f"\n{selectivity:.0%} of the rows kept:")
        print(table(results, baseline="arrow", work=rows, unit="rows"))
        report.add(f"{selectivity:.0%} kept", results, baseline="arrow")
    report.headline(f"filter {rows / 1e6:g}M rows (3 x 8-byte columns, 64k-row batches), 50 % kept, "
                    "vs pyarrow RecordBatch.filter", "50% kept", "sabot")
    report.headline(f"filter {rows / 1e6:g}M rows, 10 % kept, vs pyarrow RecordBatch.filter", "10% kept", "sabot")
    if args.json:
        report.write(args.json)


if __name__ == "__main__":
    main()

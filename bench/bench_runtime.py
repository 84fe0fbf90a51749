"""The keyed-count job (issue 4) run embedded, against one vectorised pyarrow pass.

5,000,000 records (key int64 over 100,000 keys, value float64 in [0, 1), ts int64):
filter value > 0.5 -> map value2 = value * 2 -> key_by key -> running count and
sum of value2 -> collect the final per-key table. The data is generated first and
written to an Arrow IPC file, read by the job through pyarrow.dataset, so
generation is outside the timing. Baseline, same process: filter, multiply,
group_by over the in-memory table.

    python bench/bench_runtime.py [--quick] [--rows N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from sabot import Stream  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.testing import assert_tables_equal  # noqa: E402


def add_value2(batch):
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def pyarrow_pass(table):
    t = table.filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")])


def job(path, parallelism):
    return (
        Stream.from_dataset(path, format="ipc", name="source", parallelism=min(parallelism, 1))
        .filter(pc.field("value") > 0.5, name="filter")
        .map(add_value2, name="map")
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate")
        .collect(name="sink")
    )


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500,000 rows")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = 500_000 if args.quick else args.rows
    table = pa.Table.from_batches(
        [keyed_records(off, min(65536, rows - off), num_keys=100_000) for off in range(0, rows, 65536)]
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.arrow")
        feather.write_feather(table, path, compression="uncompressed", chunksize=65536)
        base_t, ref = timed(lambda: pyarrow_pass(table), args.repeats)
        print(f"rows: {rows:,}  (key int64 over 100,000 keys)")
        print(f"pyarrow single vectorised pass: {base_t * 1e3:8.1f} ms  {rows / base_t / 1e6:6.1f} M records/s")
        for parallelism in (1, 2):
            graph_job = job(path, parallelism)
            t, result = timed(lambda: graph_job.run(default_parallelism=parallelism), args.repeats)
            assert_tables_equal(result.table("sink"), ref.select(["key", "value2_count", "value2_sum"]),
                                sort_by=["key"])
            print(f"sabot embedded, parallelism {parallelism}:  {t * 1e3:8.1f} ms  {rows / t / 1e6:6.1f} M records/s"
                  f"  engine cost = {t / base_t:4.2f}x the pyarrow pass (target <= 3x at p=1)")


if __name__ == "__main__":
    main()

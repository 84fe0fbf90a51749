"""Benchmark: what the Source API costs a source's read loop, against pyarrow in the same run.

    python bench/bench_sources.py            # 4,000,000 rows
    python bench/bench_sources.py --quick    # 1,000,000 rows

One subtask reads everything (operator level, no job around it), so the figure is the
split machinery's per-unit cost (choosing the next split, positions, event-time bookkeeping)
on top of the slicing or scanning itself:

* table: ``TableSource`` (32 strided splits, units of ``--batch`` rows) against a plain loop
  of ``Table.slice`` over the same slices (``pyarrow slices``);
* files: ``DatasetSource`` over 64 Parquet files (one split each) against
  ``pyarrow.dataset``'s ``Fragment.to_batches`` over the same files in the same order;
* one CSV file, in a job (``Stream.from_dataset`` -> a map -> keyed count and sum, embedded
  at parallelism 2): the file cut into byte-range pieces (the default, 4 MiB units, see
  ``sabot/runtime/operators/csv_units.py``) against the same job reading it as one split
  (what every CSV file was before), next to pyarrow's multi-threaded ``read_csv`` and
  ``group_by`` of the same file. Results checked against pyarrow's.

Each case's rows are counted and their ``ts`` sum checked against the input's on every run.

    python bench/bench_sources.py [--quick] [--rows N] [--batch 1024] [--repeat 5] [--json out.json]
"""

import argparse
import os
import sys
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.runtime.operators import csv_units  # noqa: E402
from sabot.runtime.operators.base import TaskContext, create_operator  # noqa: E402
from sabot.runtime.tables import TableStore, new_ref  # noqa: E402


def make_source(params, store=None):
    ctx = TaskContext(job_id="bench", task_id="src-0", attempt=0,
                      operator={"name": "src", "operator_type": "source", "key_by": None, "function": None,
                                "parameters": params},
                      subtask_index=0, parallelism=1, max_parallelism=128, tables=store)
    op = create_operator(ctx)
    op.open()
    return op


def double_value(batch):
    return batch.append_column("v2", pc.multiply(batch.column("value"), 2.0))


def consume(batches):
    rows, total = 0, 0
    for b in batches:
        rows += b.num_rows
        total += pc.sum(b.column("ts")).as_py() or 0
    return rows, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = args.rows or (1_000_000 if args.quick else 4_000_000)
    data = pa.Table.from_batches([keyed_records(0, rows, num_keys=1000)])
    expected = (rows, pc.sum(data.column("ts")).as_py())
    store = TableStore()
    ref = new_ref(data)
    store.put(ref["table_id"], data)
    batch = args.batch

    def check(name, result):
        assert result == expected, (name, result, expected)

    table_cases = {
        "pyarrow slices": lambda: consume(data.slice(k, batch) for k in range(0, rows, batch)),
        "TableSource": lambda: consume(make_source({"kind": "table", "data": ref, "batch_size": batch},
                                                   store).read()),
    }
    table_results = measure(table_cases, repeat=args.repeat, check=check)
    print(f"table of {rows:,} rows, units of {batch} rows, one subtask")
    print(table(table_results, baseline="pyarrow slices", work=rows))

    with tempfile.TemporaryDirectory() as d:
        files = 64
        per = -(-rows // files)
        for j in range(files):
            pq.write_table(data.slice(j * per, per), os.path.join(d, f"part-{j:03d}.parquet"))
        paths = sorted(f.path for f in ds.dataset(d).get_fragments())

        def plain():
            dataset = ds.dataset(d)
            fragments = {f.path: f for f in dataset.get_fragments()}
            return consume(b for p in paths for b in fragments[p].to_batches(schema=dataset.schema,
                                                                           batch_size=batch * 16))

        file_cases = {
            "pyarrow fragments": plain,
            "DatasetSource": lambda: consume(make_source({"kind": "dataset", "path": d, "format": "parquet",
                                                         "batch_size": batch * 16}).read()),
        }
        file_results = measure(file_cases, repeat=args.repeat, check=check)
    print(f"\n{files} Parquet files, {rows:,} rows, batches of {batch * 16} rows, one subtask")
    print(table(file_results, baseline="pyarrow fragments", work=rows))

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "events.csv")
        pacsv.write_csv(data, path)
        megabytes = os.path.getsize(path) / 1e6

        def pyarrow_csv():
            t = pacsv.read_csv(path)
            return t.append_column("v2", pc.multiply(t.column("value"), 2.0)).group_by("key").aggregate(
                [("v2", "count"), ("v2", "sum")])

        want = pyarrow_csv().sort_by("key")
        unit_bytes = csv_units.UNIT_BYTES

        def csv_job(whole):
            csv_units.UNIT_BYTES = 1 << 62 if whole else unit_bytes  # one unit: the file is one split
            try:
                stream = (Stream.from_dataset(path, format="csv").map(double_value).key_by("key")
                          .aggregate({"v2": ["count", "sum"]}).collect(name="out"))
                return stream.run(default_parallelism=2).table("out")
            finally:
                csv_units.UNIT_BYTES = unit_bytes

        def check_csv(name, got):
            if name != "pyarrow read_csv + group_by":
                got = got.sort_by("key")
                assert got.column("key").equals(want.column("key")), name
                assert got.column("v2_count").equals(want.column("v2_count")), name
                assert pc.all(pc.less(pc.abs(pc.subtract(got.column("v2_sum"), want.column("v2_sum"))),
                                      1e-6)).as_py(), name

        csv_cases = {
            "pyarrow read_csv + group_by": pyarrow_csv,
            "job p=2, one split": lambda: csv_job(whole=True),
            "job p=2, pieces": lambda: csv_job(whole=False),
        }
        csv_results = measure(csv_cases, repeat=args.repeat, check=check_csv)
    print(f"\none CSV file of {rows:,} rows ({megabytes:.0f} MB), map + keyed count and sum, embedded p=2")
    print(table(csv_results, baseline="job p=2, one split", work=rows))
    if args.json:
        report = Report("bench_sources", rows=rows, batch=batch)
        report.add("table", table_results, baseline="pyarrow slices")
        report.add("files", file_results, baseline="pyarrow fragments")
        report.add("csv", csv_results, baseline="job p=2, one split")
        report.headline(f"table source, {rows:,} rows in units of {batch}, p = 1", "table", "TableSource")
        report.headline(f"file source, 64 Parquet files, {rows:,} rows, p = 1", "files", "DatasetSource")
        report.write(args.json)


if __name__ == "__main__":
    main()

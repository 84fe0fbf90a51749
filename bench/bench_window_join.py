"""Benchmark of the event-time window and enrichment-join operators (and the generators).

Measures, in one process, driving the operator objects directly (no tasks/channels):
  1. keyed tumbling window (size 10,000 event-time units, count + sum + max) over
     ``keyed_records`` (100,000 keys, so nearly every (key, window) is distinct: the
     worst case; ts = row number; a second run uses 1,000 keys and size 100,000), batches of 65,536 rows, a
     watermark after every batch: rows/s, and the ratio to one vectorised pyarrow
     pass over the whole input (window start = ts // size * size, then group_by);
  2. the same with a sliding window (size 10,000, slide 2,500: 4 windows per row);
  3. the enrichment join of the same stream against a 100,000-row static table
     (int64 key, 2 value columns): rows/s, and the ratio to one pyarrow
     ``Table.join`` over the whole input, and to a per-batch ``pc.index_in`` lookup
     (which rebuilds its hash set every batch);
  4. ``keyed_records`` generation rate vs ``numpy.random.default_rng`` for the same
     columns (the price of counter-based, replayable generation).

Data generation is excluded from the operator timings. Each operator and its
baselines run interleaved after a warm-up (median of ``--repeat``); every window result
is checked against pyarrow's (same (key, window) rows, counts, sums and maxima), every
join against ``Table.join``'s and the index_in lookup's.

Usage: python bench/bench_window_join.py [--quick] [--repeat N] [--json out.json]
"""

import argparse
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table as results_table  # noqa: E402

import sabot._core.partition  # noqa: E402,F401  (loads the compiled module before the operators)
from sabot.runtime import generators  # noqa: E402
from sabot.runtime.tables import TableStore, new_ref  # noqa: E402
from sabot.runtime.operators.base import TaskContext  # noqa: E402
from sabot.runtime.operators.join import LookupJoin  # noqa: E402
from sabot.runtime.operators.window import WindowOperator  # noqa: E402

BATCH = 65_536
NUM_KEYS = 100_000


def ctx(operator_type, params, key_by=None):
    return TaskContext(job_id="bench", task_id="t", attempt=0,
                       operator={"name": operator_type, "operator_type": operator_type, "key_by": key_by,
                                 "function": None, "parameters": params},
                       subtask_index=0, parallelism=1, max_parallelism=128, tables=TABLES)


TABLES = TableStore()  # the static tables the join refers to


def table_ref(table):
    ref = new_ref(table)
    TABLES.put(ref["table_id"], table)
    return ref


def bench_window(batches, table, size, slide, repeat):
    aggs = [["value", "count"], ["value", "sum"], ["value", "max"]]

    def run_operator():
        op = WindowOperator(ctx("window", {"size": size, "slide": slide, "time_column": "ts",
                                           "aggregates": aggs}, ["key"]))
        op.open()
        out = []
        for b in batches:
            out += op.process(b, 0)
            out += op.on_watermark(b.column("ts")[-1].as_py())
        out += op.finish()
        return pa.Table.from_batches(out)

    step = slide or size

    def run_pyarrow():
        ts = table["ts"].to_numpy()
        last = ts // step * step
        parts = []
        for j in range(-(-size // step)):
            start = last - j * step
            keep = ts < start + size
            parts.append(table.select(["key", "value"]).filter(pa.array(keep))
                         .append_column("window_start", pa.array(start[keep])))
        return (pa.concat_tables(parts).group_by(["key", "window_start"])
                .aggregate([("value", "count"), ("value", "sum"), ("value", "max")]))

    expected = run_pyarrow().sort_by([("key", "ascending"), ("window_start", "ascending")])

    def check(name, out):
        got = out.sort_by([("key", "ascending"), ("window_start", "ascending")])
        assert got.num_rows == expected.num_rows, (name, got.num_rows, expected.num_rows)
        for col in ("key", "window_start", "value_count", "value_max"):
            assert got[col].to_numpy().tolist() == expected[col].to_numpy().tolist(), f"{name}: {col} differs"
        assert np.allclose(got["value_sum"].to_numpy(), expected["value_sum"].to_numpy()), f"{name}: sums differ"

    results = measure({"pyarrow one pass (assign + group_by)": run_pyarrow,
                       "WindowOperator (batches + watermarks)": run_operator},
                      repeat=repeat, warmup=1, check=check)
    kind = "tumbling" if slide is None else f"sliding slide={slide}"
    print(f"window {kind} size={size}: {expected.num_rows} (key, window) results")
    print(results_table(results, baseline="pyarrow one pass (assign + group_by)", work=table.num_rows, unit="rows"))
    return results


def bench_join(batches, table, repeat):
    dim_keys = np.arange(0, 2 * NUM_KEYS, 2)  # half of the stream's keys match
    dim = pa.table({"key": dim_keys, "segment": pa.array(dim_keys % 17), "weight": dim_keys * 0.5})
    params = {"table": table_ref(dim), "on": ["key"], "right_on": None, "how": "left"}

    def run_operator():
        op = LookupJoin(ctx("join", params))
        op.open()
        out = []
        for b in batches:
            out += op.process(b, 0)
        return out

    def run_table_join():
        return table.join(dim, keys="key", join_type="left outer")

    value_set = dim["key"].combine_chunks()

    def run_index_in():
        out = []
        for b in batches:
            idx = pc.index_in(b.column("key"), value_set=value_set)
            out.append(pa.RecordBatch.from_arrays(
                list(b.columns) + [dim["segment"].take(idx).combine_chunks(), dim["weight"].take(idx).combine_chunks()],
                names=b.schema.names + ["segment", "weight"]))
        return out

    expected = run_table_join().sort_by("ts")
    via_index_in = pa.Table.from_batches(run_index_in())

    def check(name, out):
        got = out if isinstance(out, pa.Table) else pa.Table.from_batches(out)
        assert got.num_rows == table.num_rows, (name, got.num_rows)
        got = got.sort_by("ts")  # Table.join does not keep the input order
        assert got.select(["segment", "weight"]).equals(via_index_in.select(["segment", "weight"])), \
            f"{name}: differs from the index_in lookup"
        assert got.select(expected.column_names).equals(expected), f"{name}: differs from Table.join"

    results = measure({"pyarrow Table.join, whole input at once": run_table_join,
                       "LookupJoin (per batch, prebuilt lookup)": run_operator,
                       "per-batch pc.index_in (rebuilds set per batch)": run_index_in},
                      repeat=repeat, warmup=1, check=check)
    print(f"enrichment join, static table {dim.num_rows} rows (left join, ~50% match):")
    print(results_table(results, baseline="pyarrow Table.join, whole input at once", work=table.num_rows, unit="rows"))
    return results


def bench_generator(n, repeat):
    def numpy_rng():
        rng = np.random.default_rng(0)
        return pa.RecordBatch.from_arrays(
            [pa.array(rng.integers(0, NUM_KEYS, n)), pa.array(rng.random(n)), pa.array(np.arange(n))],
            names=["key", "value", "ts"])

    reference = generators.keyed_records(0, n, num_keys=NUM_KEYS)

    def check(name, out):
        assert out.num_rows == n, name
        if name.startswith("keyed_records"):
            assert out.equals(reference), "keyed_records is not deterministic"

    results = measure({"numpy default_rng (sequential)": numpy_rng,
                       "keyed_records (counter-based, replayable)":
                           lambda: generators.keyed_records(0, n, num_keys=NUM_KEYS)},
                      repeat=repeat, warmup=1, check=check)
    print("generator keyed_records:")
    print(results_table(results, baseline="numpy default_rng (sequential)", work=n, unit="rows"))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small input (about 200k rows)")
    parser.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 5, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    n = 200_000 if args.quick else 2_000_000
    repeat = args.repeat or (3 if args.quick else 5)
    table = pa.Table.from_batches([generators.keyed_records(0, n, num_keys=NUM_KEYS)])
    batches = table.to_batches(max_chunksize=BATCH)
    report = Report("bench_window_join", rows=n, keys=NUM_KEYS, batch=BATCH, repeat=repeat)
    window_base = "pyarrow one pass (assign + group_by)"
    print(f"{n:,} rows over {NUM_KEYS:,} keys, batches of {BATCH:,}, median of {repeat} interleaved runs")
    report.add("tumbling, 100,000 keys", bench_window(batches, table, 10_000, None, repeat), baseline=window_base)
    report.add("sliding, 100,000 keys", bench_window(batches, table, 10_000, 2_500, repeat), baseline=window_base)
    # fewer keys: each (key, window) aggregates many rows, the common case
    few = pa.Table.from_batches([generators.keyed_records(0, n, num_keys=1_000)])
    print("-- 1,000 keys:")
    report.add("tumbling, 1,000 keys", bench_window(few.to_batches(max_chunksize=BATCH), few, 100_000, None, repeat),
               baseline=window_base)
    report.add("join", bench_join(batches, table, repeat), baseline="pyarrow Table.join, whole input at once")
    report.add("generator", bench_generator(n, repeat), baseline="numpy default_rng (sequential)")
    report.headline(f"keyed tumbling window (count, sum, max), {n:,} rows, 1,000 keys",
                    "tumbling, 1,000 keys", "WindowOperator (batches + watermarks)")
    report.headline(f"sliding window (4 windows a row), {n:,} rows, 100,000 keys",
                    "sliding, 100,000 keys", "WindowOperator (batches + watermarks)")
    report.headline(f"enrichment join against a 100,000-row table, {n:,} rows", "join",
                    "LookupJoin (per batch, prebuilt lookup)")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

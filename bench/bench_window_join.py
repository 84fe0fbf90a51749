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

Data generation is excluded from the operator timings. Best of ``repeat`` runs.

Usage: python bench/bench_window_join.py [--quick]
"""

import argparse
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
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


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def report(label, n, t, base_label, base_t):
    print(f"  {label:<44} {t * 1e3:9.1f} ms  {n / t / 1e6:7.2f} M rows/s")
    print(f"  {base_label:<44} {base_t * 1e3:9.1f} ms  {n / base_t / 1e6:7.2f} M rows/s")
    print(f"  ratio operator / baseline: {t / base_t:.2f}x")


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

    t_op, got = best_of(run_operator, repeat)
    t_pa, expected = best_of(run_pyarrow, repeat)
    assert got.num_rows == expected.num_rows, (got.num_rows, expected.num_rows)
    assert got["value_count"].to_numpy().sum() == expected["value_count"].to_numpy().sum()
    kind = "tumbling" if slide is None else f"sliding slide={slide}"
    print(f"window {kind} size={size}: {got.num_rows} (key, window) results")
    report("WindowOperator (batches + watermarks)", table.num_rows, t_op, "pyarrow one pass (assign + group_by)", t_pa)


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

    t_op, got = best_of(run_operator, repeat)
    t_join, expected = best_of(run_table_join, repeat)
    t_in, via_index_in = best_of(run_index_in, repeat)
    got_t = pa.Table.from_batches(got)
    assert got_t.num_rows == expected.num_rows == table.num_rows
    assert got_t.select(["segment", "weight"]).equals(pa.Table.from_batches(via_index_in).select(["segment", "weight"]))
    print(f"enrichment join, static table {dim.num_rows} rows (left join, ~50% match):")
    report("LookupJoin (per batch, prebuilt lookup)", table.num_rows, t_op, "pyarrow Table.join, whole input at once", t_join)
    print(f"  per-batch pc.index_in (rebuilds set per batch) {t_in * 1e3:9.1f} ms  ratio operator / it: {t_op / t_in:.2f}x")


def bench_generator(n, repeat):
    t_gen, _ = best_of(lambda: generators.keyed_records(0, n, num_keys=NUM_KEYS), repeat)

    def numpy_rng():
        rng = np.random.default_rng(0)
        return pa.RecordBatch.from_arrays(
            [pa.array(rng.integers(0, NUM_KEYS, n)), pa.array(rng.random(n)), pa.array(np.arange(n))],
            names=["key", "value", "ts"])

    t_np, _ = best_of(numpy_rng, repeat)
    print("generator keyed_records:")
    report("keyed_records (counter-based, replayable)", n, t_gen, "numpy default_rng (sequential)", t_np)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small input (about 200k rows)")
    args = parser.parse_args()
    n = 200_000 if args.quick else 2_000_000
    repeat = 2 if args.quick else 3
    table = pa.Table.from_batches([generators.keyed_records(0, n, num_keys=NUM_KEYS)])
    batches = table.to_batches(max_chunksize=BATCH)
    print(f"{n:,} rows over {NUM_KEYS:,} keys, batches of {BATCH:,}")
    bench_window(batches, table, 10_000, None, repeat)
    bench_window(batches, table, 10_000, 2_500, repeat)
    # fewer keys: each (key, window) aggregates many rows, the common case
    few = pa.Table.from_batches([generators.keyed_records(0, n, num_keys=1_000)])
    print("-- 1,000 keys:")
    bench_window(few.to_batches(max_chunksize=BATCH), few, 100_000, None, repeat)
    bench_join(batches, table, repeat)
    bench_generator(n, repeat)


if __name__ == "__main__":
    main()

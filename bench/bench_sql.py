"""The SQL planner's cost: each Nexmark query's published SQL through ``sabot.sql`` against
the same query written with the Stream API (``sabot/nexmark/queries.py``), the baseline,
in one process, interleaved (bench/_harness.py), both at parallelism 1 over the same Arrow
IPC file of events, every result checked against DuckDB's.

The SQL timing includes planning (parsing, type checks, building the JobGraph), which is
also shown on its own. Ratios are SQL time / Stream API time (< 1.10: within the 10 %
budget); ``fastest`` compares the fastest repetitions, the least disturbed by other load.

    python bench/bench_sql.py [--events N] [--repeats R] [--queries q0,q5,...] [--json out.json]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_nexmark as nb  # noqa: E402
from _harness import measure, write_json  # noqa: E402

from sabot.nexmark import generate_tables, published_sql  # noqa: E402
from sabot.nexmark.queries import QUERIES, sequenced_events  # noqa: E402
from sabot.sql import Session  # noqa: E402


def plan_only(name, path, out_dir):
    text = nb.SQL_EVENTS_DDL + published_sql("ddl_views") + ";\n" + published_sql(name)
    variables = {"NEXMARK_TABLE": "datagen", "EVENTS": path, "FLINK_HOME": out_dir, "NEXMARK_DIR": out_dir,
                 "SUBMIT_TIME": "t"}
    if name == "q10":
        text = text.replace("'format' = 'csv'", "'format' = 'parquet'")
    job = Session(variables).execute(text)[-1]
    return job.query.collect(name=name).to_job_graph()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--queries", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    n = args.events
    names = args.queries.split(",") if args.queries else sorted(QUERIES, key=lambda q: int(q[1:]))
    tables = generate_tables(n)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.arrow")
        events = pa.Table.from_batches([sequenced_events(o, min(nb.BATCH, n - o)) for o in range(0, n, nb.BATCH)])
        feather.write_feather(events, path, compression="uncompressed", chunksize=nb.BATCH)
        del events
        os.makedirs(os.path.join(tmp, "data"), exist_ok=True)
        pacsv.write_csv(nb.reference.side_input(), os.path.join(tmp, "data", "side_input.txt"),
                        write_options=pacsv.WriteOptions(include_header=False))
        print(f"events: {n:,}; {args.repeats} interleaved repetitions after a warm-up; parallelism 1", flush=True)
        print()
        print("| query | Stream API (events/s) | SQL (events/s) | SQL / Stream API time (median) | (fastest) "
              "| planning (ms) |")
        print("|---|---:|---:|---:|---:|---:|")
        for q in names:
            expected = nb.duckdb_pass(q, tables)

            def check(case, got, q=q, expected=expected):
                nb.check(q, got, expected, tables)

            cases = {"stream_api": lambda q=q: nb.sabot_pass(q, path, 1, tmp),
                     "sql": lambda q=q: nb.sql_pass(q, path, tmp)}
            results = measure(cases, repeat=args.repeats, check=check)
            planning = []
            for _ in range(5):
                start = time.perf_counter()
                plan_only(q, path, tmp)
                planning.append(time.perf_counter() - start)
            base, sql = results["stream_api"], results["sql"]
            report[q] = results
            print(f"| {q} | {n / base.median / 1e6:.2f} M ±{base.spread_pct:.0f}% | "
                  f"{n / sql.median / 1e6:.2f} M ±{sql.spread_pct:.0f}% | {sql.median / base.median:.2f} | "
                  f"{sql.low / base.low:.2f} | {statistics.median(planning) * 1000:.0f} |", flush=True)
    if args.json:
        for q, results in report.items():
            write_json(args.json.replace(".json", f"-{q}.json"), "bench_sql", results, baseline="stream_api",
                       query=q, events=n)


if __name__ == "__main__":
    main()

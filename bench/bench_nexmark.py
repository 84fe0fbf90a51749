"""Nexmark: events/s of every query (sabot/nexmark/queries.py) at parallelism 1 and 2, next to
one vectorised batch pass of the same query over the same data with DuckDB, in one run; and
(``--sql``) the published SQL text of each query through ``sabot.sql`` at parallelism 1,
next to the Stream API version at parallelism 1 (the planner's cost).

The events (Nexmark's default configuration, 10,000 events/s of event time) are generated
once into an Arrow IPC file; each Sabot job reads it with ``Stream.from_dataset`` (the
published DDL's one event stream, watermark ``dateTime - 4 s``), splits it into the three
views and runs the query to a collect sink (q10: its partitioned Parquet sink) embedded in
this process. The baseline is the independent DuckDB SQL of ``tests/nexmark/reference.py``
over the three materialised tables (person, auction, bid already split: no event parsing),
without its final ``ORDER BY``, with DuckDB's default threads. Every Sabot result is
checked against DuckDB's first.

Each (query, engine) is run once to warm up, then ``--repeats`` times, interleaved query
by query; the table shows the median events/s, the spread (min-max) as a percentage of
the median, and the ratio Sabot / DuckDB (> 1: Sabot faster).

The SQL jobs read the same IPC file through a ``filesystem`` table (the published
``ddl_gen.sql`` with ``dateTime`` a column of the file instead of a computed column, and
``'sabot.sequence-column' = '__seq'``), then the published ``ddl_views.sql`` and ``qN.sql``;
q10 writes Parquet, q13 reads its side input from a CSV file.

    python bench/bench_nexmark.py [--quick] [--events N] [--repeats R] [--queries q0,q5,...] [--sql]
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.feather as feather

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "nexmark"))

import reference  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot.nexmark import generate_tables  # noqa: E402
from sabot.nexmark.queries import QUERIES, WATERMARK_DELAY_MS, build, sequenced_events  # noqa: E402
from sabot.testing import assert_tables_equal  # noqa: E402

BATCH = 65_536
_FINAL_ORDER_BY = re.compile(r"\s+ORDER BY[^()]*$", re.S)


def without_final_order_by(sql):
    return _FINAL_ORDER_BY.sub("", sql.rstrip())


def duckdb_pass(name, tables):
    """The reference query, minus the ORDER BY it adds for comparisons."""
    original = reference._run

    def run(query, tabs, sql, extra=None):
        return original(query, tabs, without_final_order_by(sql), extra)

    reference._run = run
    try:
        return reference.QUERIES[name](tables)
    finally:
        reference._run = original


def sabot_pass(name, path, parallelism, out_dir):
    events = Stream.from_dataset(path, format="ipc", name="events").with_watermarks("dateTime", WATERMARK_DELAY_MS)
    q10_dir = os.path.join(out_dir, f"q10-{time.perf_counter_ns()}") if name == "q10" else None
    result = build(name, events_stream=events, path=q10_dir).run(default_parallelism=parallelism)
    if name == "q10":
        part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
        return ds.dataset(q10_dir, partitioning=part).to_table().select(reference.SCHEMAS["q10"].names)
    return result.table(name)


SQL_EVENTS_DDL = """CREATE TABLE datagen (
    event_type int,
    person ROW<id BIGINT, name VARCHAR, emailAddress VARCHAR, creditCard VARCHAR, city VARCHAR, state VARCHAR,
               `dateTime` TIMESTAMP(3), extra VARCHAR>,
    auction ROW<id BIGINT, itemName VARCHAR, description VARCHAR, initialBid BIGINT, reserve BIGINT,
                `dateTime` TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra VARCHAR>,
    bid ROW<auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, `dateTime` TIMESTAMP(3),
            extra VARCHAR>,
    `dateTime` TIMESTAMP(3),
    WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND
) WITH ('connector' = 'filesystem', 'path' = '${EVENTS}', 'format' = 'ipc', 'sabot.sequence-column' = '__seq');
"""


def sql_pass(name, path, out_dir):
    from sabot.nexmark import published_sql
    from sabot.sql import Session

    text = SQL_EVENTS_DDL + published_sql("ddl_views") + ";\n" + published_sql(name)
    q10_dir = os.path.join(out_dir, f"q10-{time.perf_counter_ns()}") if name == "q10" else None
    variables = {"NEXMARK_TABLE": "datagen", "EVENTS": path, "FLINK_HOME": out_dir,
                 "NEXMARK_DIR": q10_dir or out_dir, "SUBMIT_TIME": "t"}
    if name == "q10":
        text = text.replace("'format' = 'csv'", "'format' = 'parquet'")
    # the sink table collects (as the Stream API version's collect sink) instead of discarding
    job = Session(variables).execute(text.replace("'connector' = 'blackhole'", "'connector' = 'collect'"))[-1]
    result = job.run(default_parallelism=1)
    if name == "q10":
        part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
        out = os.path.join(q10_dir, "data", "output", "t", "bid")
        return ds.dataset(out, partitioning=part).to_table().select(reference.SCHEMAS["q10"].names)
    return result.table(f"nexmark_{name}")


def check(name, got, expected, tables):
    if name == "q12":
        reference.check_q12(got, tables)
    else:
        assert_tables_equal(got, expected)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200,000 events, one repetition")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", default=None, help="comma-separated subset, e.g. q0,q5,q19")
    parser.add_argument("--sql", action="store_true", help="also run the published SQL through sabot.sql (p=1)")
    args = parser.parse_args()
    n = 200_000 if args.quick else args.events
    repeats = 1 if args.quick else args.repeats
    names = args.queries.split(",") if args.queries else sorted(QUERIES, key=lambda q: int(q[1:]))
    tables = generate_tables(n)
    engines = ("p1", "p2", "duckdb") + (("sql",) if args.sql else ())
    times = {(q, e): [] for q in names for e in engines}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.arrow")
        events = pa.Table.from_batches([sequenced_events(o, min(BATCH, n - o)) for o in range(0, n, BATCH)])
        feather.write_feather(events, path, compression="uncompressed", chunksize=BATCH)
        del events
        if args.sql:  # q13's side input as Nexmark's runner finds it
            import pyarrow.csv as pacsv

            os.makedirs(os.path.join(tmp, "data"), exist_ok=True)
            pacsv.write_csv(reference.side_input(), os.path.join(tmp, "data", "side_input.txt"),
                            write_options=pacsv.WriteOptions(include_header=False))
        print(f"events: {n:,} (persons {tables['person'].num_rows:,}, auctions {tables['auction'].num_rows:,}, "
              f"bids {tables['bid'].num_rows:,}); batches of {BATCH:,}; {repeats} repetition(s) after a warm-up",
              flush=True)
        for q in names:  # warm-up, and every result checked against DuckDB's
            expected = duckdb_pass(q, tables)
            for p in (1, 2):
                check(q, sabot_pass(q, path, p, tmp), expected, tables)
            if args.sql:
                check(q, sql_pass(q, path, tmp), expected, tables)
        for _ in range(repeats):
            for q in names:
                times[(q, "duckdb")].append(timed(lambda: duckdb_pass(q, tables))[0])
                for p in (1, 2):
                    times[(q, f"p{p}")].append(timed(lambda: sabot_pass(q, path, p, tmp))[0])
                if args.sql:
                    times[(q, "sql")].append(timed(lambda: sql_pass(q, path, tmp))[0])
    print()
    sql_head = " SQL p=1 (events/s) | SQL / Stream API p=1 |" if args.sql else ""
    print("| query | Sabot p=1 (events/s) | Sabot p=2 (events/s) | DuckDB (events/s) | p=1 / DuckDB | p=2 / DuckDB |"
          + sql_head)
    print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.sql else ""))
    for q in names:
        cells, rates = [], {}
        for e in engines:
            ts = times[(q, e)]
            med = statistics.median(ts)
            rates[e] = n / med
            spread = (max(ts) - min(ts)) / med * 100 if len(ts) > 1 else 0.0
            cells.append(f"{rates[e] / 1e6:.2f} M ±{spread:.0f}%")
        sql_cells = f" {cells[3]} | {rates['sql'] / rates['p1']:.2f} |" if args.sql else ""
        print(f"| {q} | {cells[0]} | {cells[1]} | {cells[2]} | {rates['p1'] / rates['duckdb']:.2f} | "
              f"{rates['p2'] / rates['duckdb']:.2f} |" + sql_cells)


if __name__ == "__main__":
    main()

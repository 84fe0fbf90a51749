"""What a changelog costs: a keyed running count emitting updates (an upsert stream: the
current row of each touched key, no row kinds), the baseline, against the same aggregate
followed by the changelog operator (+I/-U/+U rows, the last row per key kept as keyed
state), and Flink's nested aggregation (a GROUP BY over that changelog, retracting), all
at parallelism 1 over the same generated records, in one process, interleaved
(bench/_harness.py). Each case's materialised result is checked against DuckDB's once,
before timing.

    python bench/bench_changelog.py [--rows N] [--batch B] [--repeats R] [--json out.json]

(keyed_records' default 100,000 keys: the SQL datagen table reads the generator as it is.)
"""

import argparse
import os
import sys

import duckdb
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import measure, table, write_json  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.sql import Session  # noqa: E402
from sabot.testing import assert_tables_equal  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    params = {}

    def source():
        return Stream.from_generator(keyed_records, total_rows=args.rows, batch_size=args.batch)

    def upserts():
        return source().key_by("key").aggregate({"*": "count"}, emit="updates")

    def changelog():
        return upserts().key_by("key").changelog()

    def nested():
        ddl = (f"CREATE TABLE r (key BIGINT, `value` DOUBLE, ts BIGINT) WITH ('connector' = 'datagen', "
               f"'generator' = 'sabot.runtime.generators:keyed_records', 'number-of-rows' = '{args.rows}', "
               f"'rows-per-batch' = '{args.batch}');")
        s = Session({}, {"sabot.updating-results": "always"})
        s.execute(ddl)
        return s.execute("SELECT cnt, COUNT(*) AS freq FROM (SELECT key, COUNT(*) AS cnt FROM r GROUP BY key) "
                         "GROUP BY cnt")[0]

    data = pa.Table.from_batches([keyed_records(0, args.rows, **params)])
    con = duckdb.connect()
    con.register("r", data)
    last = con.sql("SELECT key, count(*) AS count FROM r GROUP BY key").arrow()
    last = last.read_all() if hasattr(last, "read_all") else last
    hist = con.sql("SELECT cnt, count(*) AS freq FROM (SELECT key, count(*) AS cnt FROM r GROUP BY key) "
                   "GROUP BY cnt").arrow()
    hist = hist.read_all() if hasattr(hist, "read_all") else hist
    got = changelog().collect(name="c").run().table("c")
    assert_tables_equal(got, last.cast(got.schema))
    got = nested().collect(name="c").run().table("c")
    assert_tables_equal(got, hist.cast(got.schema))

    def timed(make):
        return lambda: make().sink("sabot.sql.udfs:discard").run()

    cases = {"aggregate, upsert rows": timed(upserts), "+ changelog operator": timed(changelog),
             "nested aggregation (SQL)": timed(nested)}
    results = measure(cases, repeat=args.repeats, warmup=1)
    print(f"{args.rows:,} records, 100,000 keys, batches of {args.batch:,}, parallelism 1")
    print(table(results, baseline="aggregate, upsert rows", work=args.rows, unit="records"))
    if args.json:
        write_json(args.json, "bench_changelog", results, baseline="aggregate, upsert rows", rows=args.rows,
                   batch=args.batch)


if __name__ == "__main__":
    main()

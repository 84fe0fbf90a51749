"""Session windows against a gaps-and-islands SQL reference, merges of late-arriving bridges,
late rows, restore at another parallelism."""

import random

import duckdb
import pyarrow as pa
import pytest
from harness import feed, finish, main_rows, make_op, restore_midway, side_rows

from sabot import Stream
from sabot.execution.operator_spec import agg, normalise_aggregates
from sabot.testing import assert_tables_equal

AGGS = [agg("count", name="n"), agg("max", "s", name="max_s"), agg("sum", "v", name="sv"),
        agg("count_distinct", "s", name="ds")]


def data(n=3000, seed=1, keys=25, spread=400, shuffle=0):
    rng = random.Random(seed)
    rows = [{"k": rng.randrange(keys), "t": rng.randrange(n * spread // 100), "s": f"s{rng.randrange(7)}",
             "v": rng.randrange(100)} for _ in range(n)]
    rows.sort(key=lambda r: r["t"])
    if shuffle:  # bounded disorder: swap neighbours up to `shuffle` apart
        for i in range(0, len(rows) - shuffle, shuffle):
            chunk = rows[i:i + shuffle]
            rng.shuffle(chunk)
            rows[i:i + shuffle] = chunk
    return pa.Table.from_pylist(rows, schema=pa.schema([("k", pa.int64()), ("t", pa.int64()), ("s", pa.string()),
                                                        ("v", pa.int64())]))


def reference(table, gap):
    con = duckdb.connect()
    con.register("b", table)
    rel = con.sql(f"""
        WITH g AS (SELECT *, CASE WHEN t - lag(t) OVER (PARTITION BY k ORDER BY t) <= {gap} THEN 0 ELSE 1 END AS new
                   FROM b),
             s AS (SELECT *, sum(new) OVER (PARTITION BY k ORDER BY t ROWS UNBOUNDED PRECEDING) AS sid FROM g)
        SELECT k, min(t) AS window_start, max(t) + {gap} AS window_end, count(*) AS n, max(s) AS max_s, sum(v) AS sv,
               count(DISTINCT s) AS ds
        FROM s GROUP BY k, sid""")
    out = rel.to_arrow_table() if hasattr(type(rel), "to_arrow_table") else rel.fetch_arrow_table()
    con.close()
    return out


@pytest.mark.parametrize("parallelism", [1, 2])
@pytest.mark.parametrize("shuffle", [0, 8])
def test_sessions_match_gaps_and_islands(parallelism, shuffle):
    table = data(shuffle=shuffle)
    gap = 30
    got = (Stream.from_table(table, batch_size=97).with_watermarks("t", max_out_of_orderness=1000)
           .key_by("k").session_window(gap, AGGS).collect().run(default_parallelism=parallelism).table())
    assert_tables_equal(got, reference(table, gap).cast(got.schema))


def test_a_bridge_merges_two_open_sessions_and_late_rows_go_to_the_side_output():
    metrics = {}
    op = make_op("window", {"kind": "session", "gap": 10, "time_column": "t",
                            "aggregates": normalise_aggregates([agg("count", name="n")])},
                 key_by=["k"], metrics=metrics)
    assert op.process(pa.record_batch({"k": [1, 1], "t": [0, 18]}), 0) == []  # two sessions: [0,10), [18,28)
    assert op.on_watermark(5) == []
    assert op.process(pa.record_batch({"k": [1], "t": [9]}), 0) == []  # [9, 19) touches both: [0, 28)
    out = op.on_watermark(40)
    assert main_rows(out) == [{"k": 1, "window_start": 0, "window_end": 28, "n": 3}]
    late = op.process(pa.record_batch({"k": [1, 2], "t": [20, 45]}), 0)  # t=20 ends at 30 <= 40: late
    assert side_rows(late) == [{"k": 1, "t": 20}] and metrics["late_records_dropped"] == 1
    assert main_rows(op.finish()) == [{"k": 2, "window_start": 45, "window_end": 55, "n": 1}]


@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, old_p, new_p):
    table = data(2500, seed=8)
    gap = 25
    events = []
    for b in table.to_batches(max_chunksize=120):
        events += [(0, b), ("wm", b["t"][-1].as_py() - 50)]

    def make(i, p):
        return make_op("window", {"kind": "session", "gap": gap, "time_column": "t",
                                  "aggregates": normalise_aggregates(AGGS)}, key_by=["k"], subtask=i, parallelism=p)

    got = pa.Table.from_pylist(main_rows(restore_midway(tmp_path, make, events, {0: ["k"]}, old_p, new_p)))
    expected = reference(table, gap)
    assert_tables_equal(got, expected.cast(got.schema))
    plain_ops = [make(0, 1)]
    assert len(main_rows(feed(plain_ops, events, {0: ["k"]}) + finish(plain_ops))) == expected.num_rows

"""Live rescaling of the new keyed operators: their state moves by key group to the new
tasks while the job runs (sources never pause), and the result equals an independent
reference (or, where arrival timing decides nothing, an uninterrupted run)."""

import asyncio

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_rescaling import run_with_rescales

from sabot import Stream
from sabot.execution.operator_spec import agg
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal

TOTAL = 160_000
STEPS = [("op", 3, None), ("op", 1, None)]


def source(seed=0, keys=400, name="source"):
    return (Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=1024, name=name,
                                  parameters={"num_keys": keys, "seed": seed}, time_column="ts").parallelism(1)
            .map("jobs:slow_add_value2", name=f"{name}_map").parallelism(1))


def input_table(seed=0, keys=400):
    t = pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=keys, seed=seed)])
    return t.append_column("value2", pc.multiply(t["value"], 2.0))


def duck(sql, **tabs):
    con = duckdb.connect()
    for name, t in tabs.items():
        con.register(name, t)
    rel = con.sql(sql)
    out = rel.to_arrow_table() if hasattr(type(rel), "to_arrow_table") else rel.fetch_arrow_table()
    con.close()
    return out


def run(stream):
    job = stream.parallelism(2).collect(name="sink").parallelism(1).to_job_graph("rescale-ops", default_parallelism=1)
    _, statuses, result = asyncio.run(asyncio.wait_for(run_with_rescales(job, STEPS), 120))
    moved = sum(s["metrics"].get("state_rows_handed_off", 0) for s in statuses if s["operator_name"] == "op")
    assert moved > 0, "keyed state must have moved between tasks"
    return result.table("sink")


def test_arrow_aggregate():
    got = run(source().key_by("key").aggregate(
        [agg("count_distinct", "ts", where=pc.field("value") > 0.5, name="cd"), agg("max_by", "ts", by="value",
                                                                                  name="ts_at_max")], name="op"))
    expected = duck("SELECT key, count(DISTINCT ts) FILTER (WHERE value > 0.5) AS cd, arg_max(ts, value) AS ts_at_max "
                    "FROM t GROUP BY key", t=input_table())
    assert_tables_equal(got, expected.cast(got.schema))


def test_session_window():
    got = run(source(keys=3000).key_by("key").session_window(150, [agg("count", name="n"), agg("max", "ts", name="last")],
                                                              name="op"))
    expected = duck("""
        WITH g AS (SELECT key, ts, CASE WHEN ts - lag(ts) OVER (PARTITION BY key ORDER BY ts) <= 150 THEN 0 ELSE 1 END AS s
                   FROM t),
             h AS (SELECT key, ts, sum(s) OVER (PARTITION BY key ORDER BY ts) AS sid FROM g)
        SELECT key, min(ts) AS window_start, max(ts) + 150 AS window_end, count(*) AS n, max(ts) AS last
        FROM h GROUP BY key, sid""", t=input_table(keys=3000))
    assert_tables_equal(got, expected.cast(got.schema))


def test_top_n():
    got = run(source().key_by("key").top_n(3, [("value", "descending")], rank_column="r", name="op"))
    expected = duck("SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY key ORDER BY value DESC) AS r FROM t) "
                    "WHERE r <= 3", t=input_table())
    assert_tables_equal(got, expected.cast(got.schema))


def test_changelog():
    """The changelog's last row per key moves with its key groups: the materialised result is
    DuckDB's GROUP BY, and no retraction withdraws a row that is not there."""
    upserts = source().key_by("key").aggregate([agg("count", name="n"), agg("max", "value", name="mx")],
                                                emit="updates", name="agg").parallelism(2)
    got = run(upserts.key_by("key").changelog(name="op"))
    expected = duck("SELECT key, count(*) AS n, max(value) AS mx FROM t GROUP BY key", t=input_table())
    assert_tables_equal(got, expected.cast(got.schema))


@pytest.mark.parametrize("kind", ["regular", "interval", "window"])
def test_join(kind):
    left, right = source(seed=1, keys=30_000), source(seed=2, keys=30_000, name="right")
    if kind == "regular":
        joined = left.join(right, on="key", how="left", name="op")
        cond = ""
    elif kind == "window":
        joined = left.window_join(right, on="key", size=20_000, how="full", name="op")
        got = run(joined)
        win = "SELECT *, (ts // 20000) * 20000 AS ws FROM {}"
        expected = duck(f"""SELECT l.key, l.value, l.ts, l.value2, r.key AS key_right, r.value AS value_right,
                              r.ts AS ts_right, r.value2 AS value2_right, coalesce(l.ws, r.ws) AS window_start,
                              coalesce(l.ws, r.ws) + 20000 AS window_end
                            FROM ({win.format('l')}) l FULL JOIN ({win.format('r')}) r ON l.key = r.key AND l.ws = r.ws""",
                        l=input_table(seed=1, keys=30_000), r=input_table(seed=2, keys=30_000))
        assert_tables_equal(got, expected.cast(got.schema))
        return
    else:
        joined = left.interval_join(right, on="key", lower=-20_000, upper=5_000, how="full", name="op")
        cond = " AND l.ts BETWEEN r.ts - 20000 AND r.ts + 5000"
    got = run(joined)
    how = "LEFT" if kind == "regular" else "FULL"
    cols = "l.key, l.value, l.ts, l.value2, r.key AS key_right, r.value AS value_right, r.ts AS ts_right, " \
           "r.value2 AS value2_right"
    expected = duck(f"SELECT {cols} FROM l {how} JOIN r ON l.key = r.key{cond}",
                    l=input_table(seed=1, keys=30_000), r=input_table(seed=2, keys=30_000))
    assert got.num_rows > 10_000
    assert_tables_equal(got, expected.cast(got.schema))


def test_process_function():
    import process_fns

    stream = (Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=1024, name="source",
                                    parameters={"num_keys": 400}, time_column="ts").parallelism(1)
              .map("process_fns:as_episode_input", name="source_map").parallelism(1)
              .key_by("k").process("process_fns:WholeStream", schema=process_fns.OUT, name="op"))
    got = run(stream)
    t = pa.Table.from_batches([process_fns.as_episode_input(b) for b in
                               pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=400)]).to_batches()])
    expected = duck("SELECT k, 'episode' AS kind, min(t) AS \"first\", count(*) AS n, sum(v) AS total, "
                    "count(DISTINCT s) AS distinct_s FROM t GROUP BY k", t=t)
    assert_tables_equal(got, expected.cast(got.schema))

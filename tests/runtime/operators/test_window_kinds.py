"""Window kinds beyond tumbling/sliding: cumulative, windows given by the input (cascades),
global windows, processing time (with a manual clock, and the task waking up for a
timer without input), aggregates with where=/count_distinct; restores."""

import asyncio
import random
import sys
import os

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from harness import feed, finish, main_rows, make_op, restore_midway

from sabot import Stream
from sabot.execution.operator_spec import agg, normalise_aggregates
from sabot.runtime.timers import ManualClock
from sabot.testing import assert_tables_equal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import clocks  # noqa: E402


def data(n=2000, seed=4, keys=6):
    rng = random.Random(seed)
    t = sorted(rng.randrange(3000) for _ in range(n))
    return pa.table({"k": pa.array([rng.randrange(keys) for _ in range(n)], pa.int64()), "t": pa.array(t, pa.int64()),
                     "v": pa.array([rng.randrange(50) for _ in range(n)], pa.int64()),
                     "s": pa.array([f"s{rng.randrange(20)}" for _ in range(n)])})


def duck(sql, **tabs):
    con = duckdb.connect()
    for name, t in tabs.items():
        con.register(name, t)
    rel = con.sql(sql)
    out = rel.to_arrow_table() if hasattr(type(rel), "to_arrow_table") else rel.fetch_arrow_table()
    con.close()
    return out


AGGS = [agg("count", name="n"), agg("sum", "v", where=pc.field("v") > 25, name="big"),
        agg("count_distinct", "s", name="ds"), agg("max", "s", name="max_s")]
SQL_AGGS = "count(*) AS n, sum(v) FILTER (WHERE v > 25) AS big, count(DISTINCT s) AS ds, max(s) AS max_s"


@pytest.mark.parametrize("parallelism", [1, 2])
def test_cumulative_windows_match_sql(parallelism):
    table = data()
    got = (Stream.from_table(table, batch_size=77).with_watermarks("t").key_by("k")
           .window(400, AGGS, step=100).collect().run(default_parallelism=parallelism).table())
    expected = duck(f"""
        WITH w AS (SELECT *, (t // 400) * 400 AS window_start, e AS window_end
                   FROM t, (SELECT unnest(range(0, 3500, 100)) AS e) ends
                   WHERE e > t AND e <= (t // 400) * 400 + 400)
        SELECT k, window_start, window_end, {SQL_AGGS} FROM w GROUP BY k, window_start, window_end""", t=table)
    assert_tables_equal(got, expected.cast(got.schema))


def test_global_windows_and_a_cascade_over_given_windows():
    table = data(3000, seed=6)
    counts = (Stream.from_table(table, batch_size=100).with_watermarks("t").key_by("k")
              .window(500, [agg("count", name="n")], slide=250))
    top = counts.window(window_columns=("window_start", "window_end"), aggregates=[agg("max", "n", name="most")])
    assert top._node.parallelism == 1  # no key_by: one global window
    got = top.collect().run(default_parallelism=2).table()
    expected = duck("""
        WITH w AS (SELECT k, ws FROM t, (SELECT unnest(range(-250, 3500, 250)) AS ws) s WHERE t.t >= ws AND t.t < ws + 500),
             c AS (SELECT k, ws, count(*) AS n FROM w GROUP BY k, ws)
        SELECT ws AS window_start, ws + 500 AS window_end, max(n) AS most FROM c GROUP BY ws""", t=table)
    assert_tables_equal(got, expected.cast(got.schema))


def test_processing_time_windows_fire_on_the_clock():
    clock = ManualClock(1_000)
    op = make_op("window", {"size": 1_000, "time": "processing", "aggregates": normalise_aggregates({"*": "count"})},
                 key_by=["k"], clock=clock)
    assert op.process(pa.record_batch({"k": [1, 2, 1]}), 0) == []
    assert op.next_processing_time() == 2_000
    clock.set(1_999)
    assert op.on_processing_time(1_999) == []
    clock.set(2_500)
    op.process(pa.record_batch({"k": [1]}), 0)
    fired = main_rows(op.on_processing_time(2_500))
    assert [(r["k"], r["count"], r["window_start"].timestamp() * 1000) for r in fired] == [(1, 2, 1000.0), (2, 1, 1000.0)]
    assert op.next_processing_time() == 3_000
    assert [r["count"] for r in main_rows(op.finish())] == [1]


def test_a_processing_time_window_fires_while_no_input_arrives():
    clocks.reset(1_000)
    sink = (Stream.from_generator(clocks.gated_rows, total_rows=6, batch_size=3, name="src")
            .key_by("k").window(1_000, {"*": "count"}, time="processing", clock="clocks:clock", name="win")
            .sink(clocks.record, name="rec"))

    async def scenario():
        job = asyncio.ensure_future(sink.run_async(timeout=30))
        for _ in range(200):  # the first batch reached the window (its rows open [1000, 2000))
            await asyncio.sleep(0.01)
        assert clocks.SEEN == []
        clocks.CLOCK.set(2_000)  # no more input: only the timer can make the window fire
        for _ in range(500):
            if clocks.SEEN:
                break
            await asyncio.sleep(0.01)
        fired = sorted((r["k"], r["count"]) for r in clocks.SEEN)
        clocks.GATE.set()
        await job
        return fired

    fired = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert fired == [(0, 1), (1, 1), (2, 1)]
    assert sorted((r["k"], r["count"]) for r in clocks.SEEN[3:]) == [(0, 1), (1, 1), (2, 1)]


@pytest.mark.parametrize("params", [
    {"size": 400, "step": 100},
    {"size": 300, "slide": 100},
])
@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, params, old_p, new_p):
    table = data(2500, seed=12)
    events = []
    for b in table.to_batches(max_chunksize=90):
        events += [(0, b), ("wm", b["t"][-1].as_py())]

    def make(i, p):
        return make_op("window", {**params, "time_column": "t", "aggregates": normalise_aggregates(AGGS)},
                       key_by=["k"], subtask=i, parallelism=p)

    restored = main_rows(restore_midway(tmp_path, make, events, {0: ["k"]}, old_p, new_p))
    plain_ops = [make(0, 1)]
    plain = main_rows(feed(plain_ops, events, {0: ["k"]}) + finish(plain_ops))
    assert sorted(map(str, restored)) == sorted(map(str, plain)) and len(plain) > 50

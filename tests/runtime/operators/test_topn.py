"""Top-N per key and per window against DuckDB's ROW_NUMBER / RANK / DENSE_RANK, ties by
arrival, updates, restore at another parallelism."""

import random

import duckdb
import pyarrow as pa
import pytest
from harness import feed, finish, main_rows, make_op, restore_midway, side_rows

from sabot import Stream
from sabot.testing import assert_tables_equal

SQL_RANK = {"row_number": "row_number()", "rank": "rank()", "dense_rank": "dense_rank()"}


def data(n=3000, seed=2, keys=40):
    rng = random.Random(seed)
    return pa.table({
        "k": pa.array([rng.randrange(keys) for _ in range(n)], pa.int64()),
        "g": pa.array([rng.choice(["x", "y"]) for _ in range(n)]),
        "price": pa.array([rng.randrange(30) for _ in range(n)], pa.int64()),  # many ties
        "t": pa.array(sorted(rng.randrange(5000) for _ in range(n)), pa.int64()),
        "seq": pa.array(range(n), pa.int64()),
    })


def duck(sql, t):
    con = duckdb.connect()
    con.register("t", t)
    rel = con.sql(sql)
    out = rel.to_arrow_table() if hasattr(type(rel), "to_arrow_table") else rel.fetch_arrow_table()
    con.close()
    return out


@pytest.mark.parametrize("rank", ["row_number", "rank", "dense_rank"])
@pytest.mark.parametrize("parallelism", [1, 2])
def test_top_n_per_key_matches_sql(rank, parallelism):
    table = data()
    got = (Stream.from_table(table, batch_size=211, parallelism=1).key_by("k", "g")
           .top_n(3, [("price", "descending")], rank=rank, rank_column="r")
           .collect().run(default_parallelism=parallelism).table())
    # ties: row_number numbers equal prices by arrival (here: seq, one source subtask)
    expected = duck(f"""SELECT * FROM (SELECT *, {SQL_RANK[rank]} OVER (PARTITION BY k, g ORDER BY price DESC, seq)
                                   AS r FROM t) WHERE r <= 3""", table)
    if rank != "row_number":
        expected = duck(f"""SELECT * FROM (SELECT *, {SQL_RANK[rank]} OVER (PARTITION BY k, g ORDER BY price DESC)
                                       AS r FROM t) WHERE r <= 3""", table)
    assert_tables_equal(got, expected.cast(got.schema))


def test_ties_go_to_the_earlier_arrival_and_nulls_last():
    t = pa.table({"k": [1, 1, 1, 1], "v": [5, None, 5, 7], "i": [0, 1, 2, 3]})
    got = Stream.from_table(t, batch_size=1).key_by("k").top_n(3, "v", rank_column="r").collect().run().table()
    assert got.select(["i", "r"]).to_pylist() == [{"i": 0, "r": 1}, {"i": 2, "r": 2}, {"i": 3, "r": 3}]
    got = Stream.from_table(t, batch_size=1).key_by("k").top_n(1, [("v", "descending")]).collect().run().table()
    assert got["i"].to_pylist() == [3]


def test_global_top_n_runs_on_one_subtask():
    table = data(500)
    s = Stream.from_table(table, batch_size=50).top_n(5, [("price", "descending"), "seq"], rank_column="r")
    assert s._node.parallelism == 1
    got = s.collect().run(default_parallelism=2).table()
    expected = duck("SELECT *, row_number() OVER (ORDER BY price DESC, seq) AS r FROM t QUALIFY r <= 5", table)
    assert_tables_equal(got, expected.cast(got.schema))


def test_top_n_per_window_fires_with_the_watermark():
    table = data(2000, seed=9)
    got = (Stream.from_table(table, batch_size=100).with_watermarks("t").key_by("g")
           .top_n(2, [("price", "descending"), "seq"], size=500, rank_column="r").collect()
           .run(default_parallelism=2).table())
    expected = duck("""SELECT k, g, price, t, seq, ws AS window_start, ws + 500 AS window_end, r FROM (
                         SELECT *, (t // 500) * 500 AS ws, row_number() OVER (
                           PARTITION BY g, t // 500 ORDER BY price DESC, seq) AS r FROM t) WHERE r <= 2""", table)
    assert_tables_equal(got, expected.cast(got.schema))


def test_updates_emit_the_current_top_rows_of_touched_keys():
    t = pa.table({"k": [1, 2, 1, 1], "v": [3, 9, 5, 1]})
    out = (Stream.from_table(t, batch_size=1).key_by("k").top_n(1, [("v", "descending")], emit="updates")
           .collect().run().table())
    assert out.to_pylist() == [{"k": 1, "v": 3}, {"k": 2, "v": 9}, {"k": 1, "v": 5}, {"k": 1, "v": 5}]


def test_late_rows_of_a_window_go_to_the_side_output():
    metrics = {}
    op = make_op("top_n", {"n": 1, "order_by": [["v", "ascending"]], "size": 10, "time_column": "t"},
                 key_by=["k"], metrics=metrics)
    out = op.process(pa.record_batch({"k": [1, 1], "v": [4, 2], "t": [1, 15]}), 0) + op.on_watermark(10)
    assert main_rows(out) == [{"k": 1, "v": 4, "t": 1, "window_start": 0, "window_end": 10}]
    late = op.process(pa.record_batch({"k": [1], "v": [0], "t": [3]}), 0)
    assert side_rows(late) == [{"k": 1, "v": 0, "t": 3}] and metrics["late_records_dropped"] == 1


@pytest.mark.parametrize("windowed", [False, True])
@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, windowed, old_p, new_p):
    table = data(3000, seed=5)
    params = {"n": 2, "order_by": [["price", "descending"]], "rank": "rank", "rank_column": "r"}
    if windowed:
        params.update(size=400, slide=200, time_column="t")
    events = []
    for b in table.to_batches(max_chunksize=150):
        events += [(0, b), ("wm", b["t"][-1].as_py())]

    def make(i, p):
        return make_op("top_n", params, key_by=["k"], subtask=i, parallelism=p)

    restored = main_rows(restore_midway(tmp_path, make, events, {0: ["k"]}, old_p, new_p))
    plain_ops = [make(0, 1)]
    plain = main_rows(feed(plain_ops, events, {0: ["k"]}) + finish(plain_ops))
    assert sorted(map(str, restored)) == sorted(map(str, plain)) and len(plain) > 80

"""The keyed aggregate's Arrow engine: every function, where= filters, count_distinct, strings,
against DuckDB (and plain Python where the order of arrival decides); restore at another
parallelism; types refused when the job is built."""

import random

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from harness import feed, finish, main_rows, make_op, restore_midway

from sabot import Stream
from sabot.errors import GraphValidationError
from sabot.execution.operator_spec import agg, normalise_aggregates
from sabot.testing import assert_tables_equal

AGGS = [
    agg("count", name="n"), agg("count", "x", name="nx"), agg("sum", "p", name="sp"), agg("mean", "x", name="mx"),
    agg("min", "s", name="min_s"), agg("max", "s", name="max_s"), agg("min", "ts", name="min_ts"),
    agg("max", "ts", name="max_ts"), agg("count_distinct", "s", name="cd_s"),
    agg("count_distinct", "s", where=pc.field("p") < 50, name="cd_s_small"),
    agg("count_distinct", "p", where=pc.field("p") >= 50, name="cd_p_big"),
    agg("sum", "p", where=pc.field("p") > 90, name="sp_big"), agg("count", where=pc.field("x") > 0.5, name="n_x"),
    agg("first_value", "s", name="first_s"), agg("last_value", "s", name="last_s"),
    agg("max_by", "s", by="p", name="s_at_max_p"), agg("min_by", "x", by="p", name="x_at_min_p"),
]
DUCK = """
    SELECT k, g, count(*) AS n, count(x) AS nx, sum(p) AS sp, avg(x) AS mx, min(s) AS min_s, max(s) AS max_s,
           min(ts) AS min_ts, max(ts) AS max_ts, count(DISTINCT s) AS cd_s,
           count(DISTINCT s) FILTER (WHERE p < 50) AS cd_s_small, count(DISTINCT p) FILTER (WHERE p >= 50) AS cd_p_big,
           sum(p) FILTER (WHERE p > 90) AS sp_big, count(*) FILTER (WHERE x > 0.5) AS n_x
    FROM t GROUP BY k, g"""


def data(n=6000, seed=3):
    rng = random.Random(seed)
    return pa.table({
        "k": pa.array([rng.randrange(40) for _ in range(n)], pa.int64()),
        "g": pa.array([rng.choice(["a", "b", None]) for _ in range(n)]),
        "p": pa.array([rng.randrange(100) for _ in range(n)], pa.int64()),
        "x": pa.array([None if rng.random() < 0.1 else rng.random() for _ in range(n)], pa.float64()),
        "s": pa.array([None if rng.random() < 0.05 else f"v{rng.randrange(300):03d}" for _ in range(n)]),
        "ts": pa.array([rng.randrange(10**9) for _ in range(n)], pa.int64()).cast(pa.timestamp("ms")),
    })


def duck_table(relation):
    for name in ("to_arrow_table", "fetch_arrow_table"):
        if hasattr(type(relation), name):
            return getattr(relation, name)()
    return relation.arrow()


def python_reference(table):
    """first/last (by arrival), max_by/min_by (ties: earliest arrival) in plain Python."""
    out = {}
    for row in table.to_pylist():
        key = (row["k"], row["g"])
        r = out.setdefault(key, {"first_s": None, "last_s": None, "best": None, "worst": None})
        if row["s"] is not None:
            r["first_s"] = r["first_s"] if r["first_s"] is not None else row["s"]
            r["last_s"] = row["s"]
        if r["best"] is None or row["p"] > r["best"][0]:
            r["best"] = (row["p"], row["s"])
        if r["worst"] is None or row["p"] < r["worst"][0]:
            r["worst"] = (row["p"], row["x"])
    return {k: (v["first_s"], v["last_s"], v["best"][1], v["worst"][1]) for k, v in out.items()}


def check(got, table):
    con = duckdb.connect()
    con.register("t", table)
    expected = duck_table(con.sql(DUCK))
    con.close()
    cols = expected.column_names
    assert_tables_equal(got.select(cols), expected.cast(got.select(cols).schema), sort_by=["k", "g"])
    ref = python_reference(table)
    for row in got.to_pylist():
        assert (row["first_s"], row["last_s"], row["s_at_max_p"], row["x_at_min_p"]) == ref[(row["k"], row["g"])]


@pytest.mark.parametrize("parallelism", [1, 2])
def test_every_function_matches_duckdb_and_arrival_order(parallelism):
    table = data()
    stream = (Stream.from_table(table, batch_size=500, parallelism=1)  # one source: arrival order is input order
              .key_by("k", "g").aggregate(AGGS, name="agg"))
    assert stream._node.parameters["kind"] == "arrow"
    got = stream.collect().run(default_parallelism=parallelism).table()
    assert got.schema.field("min_s").type == pa.string() and got.schema.field("max_ts").type == pa.timestamp("ms")
    assert got.schema == stream.schema
    check(got, table)


def test_updates_end_with_the_final_values():
    table = data(2000, seed=5)
    aggs = [agg("max", "s", name="max_s"), agg("count_distinct", "p", name="cd")]
    updates = (Stream.from_table(table, batch_size=300).key_by("k").aggregate(aggs, emit="updates")
               .collect().run().table())
    final = {}
    for row in updates.to_pylist():  # the last update of each key is its final value
        final[row["k"]] = (row["max_s"], row["cd"])
    con = duckdb.connect()
    con.register("t", table)
    expected = con.sql("SELECT k, max(s), count(DISTINCT p) FROM t GROUP BY k").fetchall()
    assert final == {k: (m, c) for k, m, c in expected}
    assert updates.num_rows > len(final)  # really several updates per key


def test_plain_numeric_aggregates_stay_on_the_compiled_engine():
    s = Stream.from_table(data(10)).key_by("k").aggregate({"p": ["sum", "max"], "x": "mean"})
    assert "kind" not in s._node.parameters
    s = Stream.from_table(data(10)).key_by("k").aggregate([agg("max", "p", name="top")])  # a rename stays compiled
    assert "kind" not in s._node.parameters
    got = s.collect().run().table()
    assert got.column_names == ["k", "top"]


def test_unsupported_types_are_refused_when_the_job_is_built():
    table = data(10).append_column("l", pa.array([[1]] * 10))
    with pytest.raises(GraphValidationError, match=r"sum\(s\) needs a numeric column, 's' is string"):
        Stream.from_table(table).key_by("k").aggregate({"s": "sum"})
    with pytest.raises(GraphValidationError, match=r"max\(l\) needs an orderable column.*'l' is list"):
        Stream.from_table(table).key_by("k").aggregate({"l": "max"})
    with pytest.raises(GraphValidationError, match="where=.*not a boolean"):
        Stream.from_table(table).key_by("k").aggregate([agg("count", where=pc.field("p") + 1)])
    with pytest.raises(GraphValidationError, match="appear twice"):
        Stream.from_table(table).key_by("k").aggregate([agg("count", where=pc.field("p") > 1), agg("count")])


@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, old_p, new_p):
    table = data(4000, seed=11)
    specs = normalise_aggregates(AGGS)
    events = [(0, b) for b in table.to_batches(max_chunksize=250)]

    def make(i, p):
        return make_op("aggregate", {"kind": "arrow", "aggregates": specs}, key_by=["k", "g"], subtask=i,
                       parallelism=p)

    out = restore_midway(tmp_path, make, events, {0: ["k", "g"]}, old_p, new_p)
    check(pa.Table.from_pylist(main_rows(out)), table)
    uninterrupted = [make(i, old_p) for i in range(old_p)]
    plain = feed(uninterrupted, events, {0: ["k", "g"]}) + finish(uninterrupted)
    assert sorted(map(str, main_rows(plain))) == sorted(map(str, main_rows(out)))
    assert np.isfinite(len(out))

"""Stream-stream joins (regular, interval, window) against DuckDB, state retention against a
Python model, late rows, restore at another parallelism."""

import random

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from harness import feed, finish, main_rows, make_op, restore_midway, side_rows

from sabot import Stream
from sabot.errors import GraphValidationError
from sabot.execution.operator_spec import encode_expression, encode_schema
from sabot.testing import assert_tables_equal

LEFT = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("a", pa.string())])
RIGHT = pa.schema([("id", pa.int64()), ("t", pa.int64()), ("b", pa.float64())])


def tables(n=600, keys=30, seed=1, step=3):
    rng = random.Random(seed)
    left, right, t = [], [], 0
    for _ in range(n):
        t += rng.randint(0, step)
        if rng.random() < 0.5:
            left.append((None if rng.random() < 0.05 else rng.randrange(keys), t, f"a{rng.randrange(9)}"))
        else:
            right.append((None if rng.random() < 0.05 else rng.randrange(keys), t, rng.random()))
    lt = pa.Table.from_pylist([dict(zip(LEFT.names, r)) for r in left], schema=LEFT)
    rt = pa.Table.from_pylist([dict(zip(RIGHT.names, r)) for r in right], schema=RIGHT)
    return lt, rt


def duck(sql, **tabs):
    con = duckdb.connect()
    for name, t in tabs.items():
        con.register(name, t)
    rel = con.sql(sql)
    out = rel.to_arrow_table() if hasattr(type(rel), "to_arrow_table") else rel.fetch_arrow_table()
    con.close()
    return out


SQL_HOW = {"inner": "JOIN", "left": "LEFT JOIN", "right": "RIGHT JOIN", "full": "FULL JOIN"}


def streams(lt, rt, batch=37):
    return (Stream.from_table(lt, batch_size=batch, name="L").with_watermarks("t"),
            Stream.from_table(rt, batch_size=batch + 11, name="R").with_watermarks("t"))


@pytest.mark.parametrize("how", ["inner", "left", "right", "full"])
@pytest.mark.parametrize("parallelism", [1, 2])
def test_regular_join_equals_the_sql_join(how, parallelism):
    lt, rt = tables()
    left, right = streams(lt, rt)
    joined = left.join(right, left_on="k", right_on="id", how=how, where=pc.field("a") != "a0")
    got = joined.collect().run(default_parallelism=parallelism).table()
    expected = duck(f"SELECT l.k, l.t, l.a, r.id, r.t AS t_right, r.b FROM l {SQL_HOW[how]} r "
                    f"ON l.k = r.id AND l.a <> 'a0'", l=lt, r=rt)
    assert got.schema == joined.schema
    assert_tables_equal(got, expected.cast(got.schema))


@pytest.mark.parametrize("how", ["inner", "left", "full"])
@pytest.mark.parametrize("parallelism", [1, 2])
def test_interval_join_equals_the_sql_join_and_holds_little(how, parallelism):
    lt, rt = tables(n=1500)
    left, right = streams(lt, rt)
    got = (left.interval_join(right, left_on="k", right_on="id", lower=-5, upper=2, how=how)
           .collect().run(default_parallelism=parallelism).table())
    expected = duck(f"SELECT l.k, l.t, l.a, r.id, r.t AS t_right, r.b FROM l {SQL_HOW[how]} r "
                    "ON l.k = r.id AND l.t BETWEEN r.t - 5 AND r.t + 2", l=lt, r=rt)
    assert_tables_equal(got, expected.cast(got.schema))
    # state is bounded by the interval: drive one subtask and look at what it holds
    op = make_op("join", {"kind": "interval", "how": how, "left": "L", "right": "R", "left_on": ["k"],
                          "right_on": ["id"], "left_time": "t", "right_time": "t", "lower": -5, "upper": 2,
                          "left_schema": encode_schema(LEFT), "right_schema": encode_schema(RIGHT)},
                 inputs=("L", "R"))
    events = _events(lt, rt)
    feed([op], events, {0: ["k"], 1: ["id"]})
    assert op.left.rows.num_alive + op.right.rows.num_alive < 60  # of ~1500 rows


def _events(lt, rt, batch=40):
    """Both inputs interleaved in time order, a watermark after each batch."""
    out = []
    lb, rb = lt.to_batches(max_chunksize=batch), rt.to_batches(max_chunksize=batch)
    for i in range(max(len(lb), len(rb))):
        hi = []
        for index, bs in ((0, lb), (1, rb)):
            if i < len(bs):
                out.append((index, bs[i]))
                hi.append(pc.max(bs[i]["t"]).as_py())
        out.append(("wm", min(hi)))
    return out


@pytest.mark.parametrize("size,slide", [(20, None), (20, 5)])
@pytest.mark.parametrize("how", ["inner", "full"])
def test_window_join_equals_the_sql_join_per_window(size, slide, how):
    lt, rt = tables(n=800)
    left, right = streams(lt, rt)
    got = (left.window_join(right, left_on="k", right_on="id", size=size, slide=slide, how=how)
           .collect().run(default_parallelism=2).table())
    slide = slide or size
    win = "SELECT *, ws, ws + {size} AS we FROM {t}, (SELECT unnest(range(-100, 100000, {slide})) AS ws) w " \
          "WHERE {t}.t >= ws AND {t}.t < ws + {size}"
    expected = duck(f"""
        WITH lw AS ({win.format(size=size, slide=slide, t='l')}), rw AS ({win.format(size=size, slide=slide, t='r')})
        SELECT lw.k, lw.t, lw.a, rw.id, rw.t AS t_right, rw.b, coalesce(lw.ws, rw.ws) AS window_start,
               coalesce(lw.we, rw.we) AS window_end
        FROM lw {SQL_HOW[how]} rw ON lw.k = rw.id AND lw.ws = rw.ws""", l=lt, r=rt)
    assert_tables_equal(got, expected.cast(got.schema))


def test_window_join_sends_late_rows_to_the_side_output():
    params = {"kind": "window", "how": "inner", "left": "L", "right": "R", "left_on": ["k"], "right_on": ["id"],
              "left_time": "t", "right_time": "t", "size": 10,
              "left_schema": encode_schema(LEFT), "right_schema": encode_schema(RIGHT)}
    metrics = {}
    op = make_op("join", params, inputs=("L", "R"), metrics=metrics)
    lb = pa.record_batch({"k": [1, 1], "t": [3, 12], "a": ["x", "y"]}, schema=LEFT)
    rb = pa.record_batch({"id": [1], "t": [5], "b": [0.5]}, schema=RIGHT)
    out = op.process(lb, 0) + op.process(rb, 1) + op.on_watermark(11)
    assert [(r["t"], r["t_right"] if "t_right" in r else r.get("t")) for r in main_rows(out)] == [(3, 5)]
    late = op.process(pa.record_batch({"id": [1, 1], "t": [9, 15], "b": [1.0, 2.0]}, schema=RIGHT), 1)
    assert side_rows(late) == [{"id": 1, "t": 9, "b": 1.0}] and metrics["late_records_dropped"] == 1
    rest = main_rows(op.finish())
    assert [(r["a"], r["b"]) for r in rest] == [("y", 2.0)]


def _ttl_model(events, ttl, how):
    """Brute force of the regular join with retention: a row is held until watermark >= t + ttl;
    an arriving row matches the other side's held rows; an outer row that leaves unmatched
    (or is still held at the end) comes out padded."""
    held = {0: [], 1: []}  # [row, matched]
    out, wm = [], None
    outer = {0: how in ("left", "full"), 1: how in ("right", "full")}

    def pad(side, row):
        return (row, None) if side == 0 else (None, row)

    for ev in events:
        if ev[0] == "wm":
            wm = ev[1]
            for side in (0, 1):
                keep = []
                for row, matched in held[side]:
                    if row["t"] + ttl <= wm:
                        if outer[side] and not matched:
                            out.append(pad(side, row))
                    else:
                        keep.append([row, matched])
                held[side] = keep
            continue
        side, batch = ev
        key = "k" if side == 0 else "id"
        okey = "id" if side == 0 else "k"
        for row in batch.to_pylist():
            matched = False
            for other in held[1 - side]:
                if row[key] is not None and row[key] == other[0][okey]:
                    out.append((row, other[0]) if side == 0 else (other[0], row))
                    other[1] = matched = True
            if wm is not None and row["t"] + ttl <= wm:
                if outer[side] and not matched:
                    out.append(pad(side, row))
            elif row[key] is None:
                if outer[side]:
                    out.append(pad(side, row))
            else:
                held[side].append([row, matched])
    for side in (0, 1):
        out += [pad(side, row) for row, matched in held[side] if outer[side] and not matched]
    return sorted(str(((l or {}).get("a"), (l or {}).get("t"), (r or {}).get("b"), (r or {}).get("t")))
                  for l, r in out)


@pytest.mark.parametrize("how", ["inner", "left", "full"])
def test_regular_join_state_retention_follows_the_watermark(how):
    lt, rt = tables(n=700, keys=6, seed=4)
    events = _events(lt, rt)
    ttl = 15
    params = {"kind": "regular", "how": how, "left": "L", "right": "R", "left_on": ["k"], "right_on": ["id"],
              "left_time": "t", "right_time": "t", "ttl": ttl,
              "left_schema": encode_schema(LEFT), "right_schema": encode_schema(RIGHT)}
    op = make_op("join", params, inputs=("L", "R"))
    rows = main_rows(feed([op], events, {0: ["k"], 1: ["id"]}) + op.finish())
    got = sorted(str((r["a"], r["t"], r["b"], r["t_right"])) for r in rows)
    assert got == _ttl_model(events, ttl, how)
    everything = duck(f"SELECT count(*) FROM l {SQL_HOW[how]} r ON l.k = r.id", l=lt, r=rt).column(0)[0].as_py()
    assert len(rows) < everything  # retention really dropped pairs


def _join_params(kind, how, **extra):
    return {"kind": kind, "how": how, "left": "L", "right": "R", "left_on": ["k"], "right_on": ["id"],
            "left_time": "t", "right_time": "t", "left_schema": encode_schema(LEFT),
            "right_schema": encode_schema(RIGHT), **extra}


@pytest.mark.parametrize("kind,extra", [
    ("regular", {"where": encode_expression(pc.field("b") > 0.2)}),
    ("regular", {"ttl": 30}),
    ("interval", {"lower": -6, "upper": 3}),
    ("window", {"size": 25, "slide": 10}),
])
@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, kind, extra, old_p, new_p):
    lt, rt = tables(n=900, keys=25, seed=7)
    events = _events(lt, rt)
    keys = {0: ["k"], 1: ["id"]}

    def make(i, p):
        return make_op("join", _join_params(kind, "full", **extra), subtask=i, parallelism=p, inputs=("L", "R"))

    restored = main_rows(restore_midway(tmp_path, make, events, keys, old_p, new_p))
    plain_ops = [make(0, 1)]
    plain = main_rows(feed(plain_ops, events, keys) + finish(plain_ops))
    assert sorted(map(str, restored)) == sorted(map(str, plain))
    assert len(plain) > 100


def test_key_types_must_match_and_names_must_not_clash():
    lt, rt = tables(n=20)
    left, right = streams(lt, rt.set_column(0, "id", rt["id"].cast(pa.int32())))
    with pytest.raises(GraphValidationError, match=r"key types differ: 'k' \(int64\) vs 'id' \(int32\)"):
        left.join(right, left_on="k", right_on="id")
    left, right = streams(lt, rt.append_column("t_right", rt["t"]))
    with pytest.raises(GraphValidationError, match="would be named 't_right'"):
        left.join(right, left_on="k", right_on="id")


def test_a_self_join_reads_its_input_twice():
    lt, _ = tables(n=200)
    s = Stream.from_table(lt, batch_size=30).with_watermarks("t")
    got = s.join(s, on="k", suffix="_2").collect().run(default_parallelism=2).table()
    expected = duck("SELECT a.k, a.t, a.a, b.k AS k_2, b.t AS t_2, b.a AS a_2 FROM l a JOIN l b ON a.k = b.k", l=lt)
    assert_tables_equal(got, expected.cast(got.schema))
    assert np.all(got["k"].to_numpy() == got["k_2"].to_numpy())


def test_held_rows_survive_every_row_dying():
    from sabot.runtime.operators.keyed_rows import KeyedRows

    rows = KeyedRows({"flag": bool})
    for start in range(0, 3000, 500):  # several segments
        t = pa.table({"k": pa.array(range(start, start + 500), pa.int64())})
        rows.append(t, np.arange(start, start + 500, dtype=np.uint64))
    assert rows.take([2999, 0, 1500]).column("k").to_pylist() == [2999, 0, 1500]
    rows.kill(np.arange(3000))  # every row dead: compacts to nothing
    assert rows.num_alive == 0 and rows.take([]).num_rows == 0 and rows.alive_table() is None
    rows.append(pa.table({"k": pa.array([7], pa.int64())}), np.array([7], dtype=np.uint64))
    p, r = rows.probe(np.array([7, 8], dtype=np.uint64))
    assert p.tolist() == [0] and rows.take(r).column("k").to_pylist() == [7]


def test_keyed_rows_find_the_same_rows_as_a_dict_through_appends_kills_and_compactions():
    """Probes against a plain dict of hash -> alive row keys, with colliding hashes, after
    rows die in bulk (compacting: ids renumbered, runs filtered, not re-sorted) and more
    arrive."""
    from sabot.runtime.operators.keyed_rows import KeyedRows

    rng = np.random.default_rng(11)
    rows = KeyedRows({"flag": bool})
    ref = {}  # key value -> hash, for alive rows
    next_key = 0
    for step in range(12):
        n = int(rng.integers(200, 3000))
        keys = np.arange(next_key, next_key + n, dtype=np.int64)
        next_key += n
        hashes = (keys % 997).astype(np.uint64)  # many rows share a hash
        rows.append(pa.table({"key": keys}), hashes, flag=keys % 2 == 0)
        ref.update(zip(keys.tolist(), hashes.tolist()))
        # kill a random share of the alive rows (often more than half: a compaction)
        alive = rows.alive_rows()
        dead = alive[rng.random(len(alive)) < rng.uniform(0.2, 0.8)]
        for k in rows.take(dead).column("key").to_pylist():
            del ref[k]
        rows.kill(dead)
        probe = np.array(sorted(set(rng.integers(0, 1100, 300).tolist())), dtype=np.uint64)
        p, r = rows.probe(probe)
        got = sorted(zip(probe[p].tolist(), rows.take(r).column("key").to_pylist()))
        want = sorted((h, k) for k, h in ref.items() if h in set(probe.tolist()))
        assert got == want, f"step {step}"
        assert rows.num_alive == len(ref)
        flags = rows.alive_table(with_side=["flag"])
        assert all(f == (k % 2 == 0) for k, f in zip(flags["key"].to_pylist(), flags["flag"].to_pylist()))

"""Event-time windows against a brute-force Python reference."""

import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot.errors import OperatorError
from sabot.runtime.operators.base import SideOutput, TaskContext, create_operator
from sabot.runtime.operators.window import WindowOperator


def make_window(params, key_by=("k",), metrics=None):
    ctx = TaskContext(
        job_id="job", task_id="w-0", attempt=0,
        operator={"name": "win", "operator_type": "window", "key_by": list(key_by) if key_by else None,
                  "function": None, "parameters": params},
        subtask_index=0, parallelism=1, max_parallelism=128,
        metrics=metrics if metrics is not None else {},
    )
    op = create_operator(ctx)
    op.open()
    return op


def drive(op, events, late=None):
    """events: RecordBatch or ("wm", ts). Returns the output rows as dicts; rows sent to the
    side output "late" are appended to ``late``."""
    out = []
    for ev in events:
        if isinstance(ev, tuple):
            out += op.on_watermark(ev[1])
        else:
            out += op.process(ev, 0)
    out += op.finish()
    side = [b for b in out if isinstance(b, SideOutput)]
    assert all(s.tag == "late" for s in side)
    if late is not None:
        late += [row for s in side for row in s.batch.to_pylist()]
    return [row for b in out if not isinstance(b, SideOutput) for row in b.to_pylist()]


def reference(events, keys, time_column, size, slide, aggregates):
    """Brute force: every record goes to each window holding it that has not fired yet."""
    slide = slide or size
    windows = {}  # (key tuple, start) -> list of rows
    fired = []
    watermark = -math.inf
    late = 0

    def fire(up_to):
        for wk in [w for w in windows if w[1] + size <= up_to]:
            fired.append((wk, windows.pop(wk)))

    for ev in events:
        if isinstance(ev, tuple):
            if ev[1] > watermark:
                watermark = ev[1]
                fire(watermark)
            continue
        for row in ev.to_pylist():
            t = row[time_column]
            if t is None:
                continue
            starts = [s for s in range((t // slide - size // slide - 1) * slide, t + 1, slide)
                      if s <= t < s + size]
            if starts and all(s + size <= watermark for s in starts):
                late += 1
            for s in starts:
                if s + size > watermark:
                    windows.setdefault((tuple(row[k] for k in keys), s), []).append(row)
    fire(math.inf)
    out = []
    for (key, start), rows in fired:
        r = dict(zip(keys, key))
        r["window_start"], r["window_end"] = start, start + size
        for col, fn in aggregates:
            if col == "*":
                r["count"] = len(rows)
                continue
            vals = [x[col] for x in rows if x[col] is not None]
            if not vals:
                r[f"{col}_{fn}"] = 0 if fn == "count" else None
            elif fn == "count":
                r[f"{col}_{fn}"] = len(vals)
            elif fn == "sum":
                r[f"{col}_{fn}"] = sum(vals)
            elif fn == "mean":
                r[f"{col}_{fn}"] = sum(vals) / len(vals)
            else:
                r[f"{col}_{fn}"] = min(vals) if fn == "min" else max(vals)
        out.append(r)
    return out, late


def assert_same_rows(got, expected, keys):
    order = lambda r: (r["window_end"], tuple((v is None, v) for v in (r[k] for k in keys)))  # noqa: E731
    got, expected = sorted(got, key=order), sorted(expected, key=order)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys()
        for name in e:
            if isinstance(e[name], float):
                assert g[name] == pytest.approx(e[name], rel=1e-9, abs=1e-12), (name, g, e)
            else:
                assert g[name] == e[name], (name, g, e)


def random_events(seed, n_batches=12, batch=60, bound=0, late_share=0.0, num_keys=5, step=3):
    """Monotone time with jitter up to ``bound`` (watermark = max - bound after each batch),
    and a share of records much older than the watermark (late)."""
    rng = random.Random(seed)
    events, t, max_ts = [], 0, -math.inf
    for _ in range(n_batches):
        rows = {"k": [], "g": [], "v": [], "i": [], "ts": []}
        for _ in range(batch):
            t += rng.randint(0, step)
            ts = t - rng.randint(0, bound) if bound else t
            if late_share and rng.random() < late_share:
                ts = t - bound - rng.randint(30, 80)
            rows["k"].append(rng.randrange(num_keys))
            rows["g"].append(rng.choice(["a", "b", None]))
            rows["v"].append(None if rng.random() < 0.1 else rng.uniform(-5, 5))
            rows["i"].append(rng.randint(-100, 100))
            rows["ts"].append(ts)
        b = pa.record_batch(rows, schema=pa.schema([("k", pa.int64()), ("g", pa.string()),
                                                    ("v", pa.float64()), ("i", pa.int32()),
                                                    ("ts", pa.int64())]))
        events.append(b)
        max_ts = max(max_ts, max(rows["ts"]))
        events.append(("wm", max_ts - bound))
    return events


AGGS = [["v", "sum"], ["v", "mean"], ["v", "min"], ["v", "max"], ["v", "count"], ["*", "count"],
        ["i", "sum"], ["i", "min"], ["i", "max"], ["g", "max"]]


@pytest.mark.parametrize("size,slide", [(10, None), (25, None), (10, 5), (10, 3), (7, 7), (3, 5), (20, 1)])
def test_windows_in_order_match_reference(size, slide):
    events = random_events(seed=size * 100 + (slide or 0))
    metrics = {}
    op = make_window({"size": size, "slide": slide, "time_column": "ts", "aggregates": AGGS}, metrics=metrics)
    got = drive(op, events)
    expected, late = reference(events, ["k"], "ts", size, slide, AGGS)
    assert late == 0 and metrics["late_records_dropped"] == 0
    assert_same_rows(got, expected, ["k"])


def test_tumbling_matches_pyarrow_group_by():
    # an independent check of the whole-input result, with pyarrow doing the grouping
    events = random_events(seed=7, n_batches=20, batch=200)
    batches = [e for e in events if not isinstance(e, tuple)]
    table = pa.Table.from_batches(batches)
    start = pc.multiply(pc.floor(pc.divide(table["ts"].cast(pa.float64()), 15.0)).cast(pa.int64()), 15)
    expected = (table.append_column("window_start", start)
                .group_by(["k", "window_start"])
                .aggregate([("v", "sum"), ("v", "count"), ("i", "max")])
                .sort_by([("window_start", "ascending"), ("k", "ascending")]))
    op = make_window({"size": 15, "time_column": "ts", "aggregates": [["v", "sum"], ["v", "count"], ["i", "max"]]})
    got = pa.Table.from_batches(
        [b for ev in batches for b in op.process(ev, 0)] + op.finish()
    )
    assert got.column_names == ["k", "window_start", "window_end", "v_sum", "v_count", "i_max"]
    assert got["k"].to_pylist() == expected["k"].to_pylist()
    assert got["window_start"].to_pylist() == expected["window_start"].to_pylist()
    assert pc.all(pc.equal(pc.subtract(got["window_end"], got["window_start"]), 15)).as_py()
    np.testing.assert_allclose(got["v_sum"].to_numpy(), expected["v_sum"].to_numpy(), rtol=1e-12)
    assert got["v_count"].to_pylist() == expected["v_count"].to_pylist()
    assert got["i_max"].to_pylist() == expected["i_max"].to_pylist()
    assert got.schema.field("i_max").type == pa.int32()


@pytest.mark.parametrize("size,slide", [(10, None), (12, 4)])
def test_out_of_order_within_bound_loses_nothing(size, slide):
    events = random_events(seed=3, bound=8)
    metrics = {}
    op = make_window({"size": size, "slide": slide, "time_column": "ts", "aggregates": AGGS}, metrics=metrics)
    got = drive(op, events)
    # with nothing late, the result equals windows over the whole input at once
    everything = [e for e in events if not isinstance(e, tuple)]
    expected, late = reference(everything, ["k"], "ts", size, slide, AGGS)
    assert late == 0 and metrics["late_records_dropped"] == 0
    assert_same_rows(got, expected, ["k"])


@pytest.mark.parametrize("size,slide", [(10, None), (10, 5), (9, 4)])
def test_late_records_are_counted_and_go_to_the_side_output(size, slide):
    events = random_events(seed=11, bound=4, late_share=0.05)
    metrics = {}
    op = make_window({"size": size, "slide": slide, "time_column": "ts", "aggregates": AGGS}, metrics=metrics)
    late_rows = []
    got = drive(op, events, late_rows)
    expected, late = reference(events, ["k"], "ts", size, slide, AGGS)
    assert late > 0
    assert metrics["late_records_dropped"] == late
    assert len(late_rows) == late  # every late record on the side output, as it came
    assert_same_rows(got, expected, ["k"])


def test_multiple_keys_and_no_keys():
    events = random_events(seed=5)
    aggs = [["v", "sum"], ["*", "count"]]
    op = make_window({"size": 20, "slide": 10, "time_column": "ts", "aggregates": aggs}, key_by=["k", "g"])
    expected, _ = reference(events, ["k", "g"], "ts", 20, 10, aggs)
    assert_same_rows(drive(op, events), expected, ["k", "g"])
    op = make_window({"size": 20, "time_column": "ts", "aggregates": aggs}, key_by=None)
    got = drive(op, events)
    expected, _ = reference(events, [], "ts", 20, None, aggs)
    assert_same_rows(got, expected, [])
    assert sum(r["count"] for r in got) == sum(e.num_rows for e in events if not isinstance(e, tuple))


def test_watermark_emits_exactly_the_closed_windows():
    op = make_window({"size": 10, "time_column": "ts", "aggregates": [["*", "count"]]})
    op.process(pa.record_batch({"k": [1, 1, 2, 1], "ts": [1, 9, 12, 25]}), 0)
    assert op.on_watermark(9) == []
    first = [r for b in op.on_watermark(10) for r in b.to_pylist()]
    assert first == [{"k": 1, "window_start": 0, "window_end": 10, "count": 2}]
    assert op.on_watermark(10) == []  # not an advance
    second = [r for b in op.on_watermark(30) for r in b.to_pylist()]
    assert second == [{"k": 2, "window_start": 10, "window_end": 20, "count": 1},
                      {"k": 1, "window_start": 20, "window_end": 30, "count": 1}]
    assert op.finish() == []


def test_negative_times_null_times_and_timestamp_type():
    metrics = {}
    ts = pa.array([-15, -1, 0, None, 4], type=pa.int64()).cast(pa.timestamp("ms"))
    batch = pa.record_batch({"k": [1, 1, 1, 1, 1], "ts": ts})
    op = make_window({"size": 10, "time_column": "ts", "aggregates": [["*", "count"]]}, metrics=metrics)
    op.process(batch, 0)
    out = pa.Table.from_batches(op.finish())
    assert out.schema.field("window_start").type == pa.timestamp("ms")
    assert out["window_start"].cast(pa.int64()).to_pylist() == [-20, -10, 0]
    assert out["count"].to_pylist() == [1, 1, 2]
    assert metrics["null_time_records_dropped"] == 1


def test_state_holds_partials_not_rows():
    op = make_window({"size": 1000, "time_column": "ts", "aggregates": [["v", "sum"]]})
    n = 50_000
    op.process(pa.record_batch({"k": np.arange(n) % 3, "v": np.ones(n), "ts": np.arange(n) % 1000}), 0)
    assert op.open_windows == 3


def test_bad_parameters_and_columns():
    batch = pa.record_batch({"k": [1], "v": [1.0], "ts": [0], "s": ["x"]})
    op = make_window({"size": 10, "time_column": "time", "aggregates": [["v", "sum"], ["w", "max"]]})
    with pytest.raises(OperatorError, match=r"time_column 'time'.*aggregate 'w'.*available columns: \['k', 'v', 'ts', 's'\]"):
        op.process(batch, 0)
    op = make_window({"size": 10, "time_column": "ts", "aggregates": [["v", "sum"]]}, key_by=["key"])
    with pytest.raises(OperatorError, match="key_by 'key'"):
        op.process(batch, 0)
    with pytest.raises(OperatorError, match="unknown aggregate function 'median'.*count"):
        make_window({"size": 10, "time_column": "ts", "aggregates": [["v", "median"]]})
    with pytest.raises(OperatorError, match="'\\*' only works with 'count'"):
        make_window({"size": 10, "time_column": "ts", "aggregates": [["*", "sum"]]})
    with pytest.raises(OperatorError, match="size must be a positive integer"):
        make_window({"size": 0, "time_column": "ts", "aggregates": [["v", "sum"]]})
    with pytest.raises(OperatorError, match="slide must be a positive integer"):
        make_window({"size": 10, "slide": -1, "time_column": "ts", "aggregates": [["v", "sum"]]})
    op = make_window({"size": 10, "time_column": "ts", "aggregates": [["s", "sum"]]})
    with pytest.raises(OperatorError, match=r"sum\(s\) needs a numeric column, 's' is string"):
        op.process(batch, 0)
    op = make_window({"size": 10, "time_column": "s", "aggregates": [["v", "sum"]]})
    with pytest.raises(OperatorError, match="time column 's' has type string"):
        op.process(batch, 0)
    assert isinstance(make_window({"size": 1, "time_column": "ts", "aggregates": [["v", "sum"]]}), WindowOperator)

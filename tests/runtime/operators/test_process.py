"""Keyed process functions: value / list / map state and event-time and processing-time
timers against a row-by-row Python model; restore at another parallelism; a job."""

import os
import random
import sys

import pyarrow as pa
import pytest
from harness import feed, main_rows, make_op, restore_midway

from sabot import Stream
from sabot.execution.operator_spec import encode_schema
from sabot.runtime.timers import ManualClock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import process_fns  # noqa: E402

SCHEMA = pa.schema([("k", pa.int64()), ("t", pa.int64()), ("v", pa.int64()), ("s", pa.string())])


def events(n=3000, seed=3, keys=20, batch=60):
    rng = random.Random(seed)
    t, rows = 0, []
    for _ in range(n):
        t += rng.randint(0, 2)
        rows.append({"k": rng.randrange(keys), "t": t, "v": rng.randrange(10), "s": f"s{rng.randrange(4)}"})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    out = []
    for b in table.to_batches(max_chunksize=batch):
        out += [(0, b), ("wm", b["t"][-1].as_py() - 5)]
    return out


def model(evs):
    """Row by row: an idle key's row starts an episode; the watermark passing start + EPISODE ends it."""
    active, out = {}, []

    def end(k):
        start, vals, ss = active.pop(k)
        out.append((k, "episode", start, len(vals), sum(vals), len(ss)))

    for ev in evs:
        if ev[0] == "wm":
            for k in [k for k, a in active.items() if a[0] + process_fns.EPISODE <= ev[1]]:
                end(k)
            continue
        for r in ev[1].to_pylist():
            a = active.setdefault(r["k"], (r["t"], [], set()))
            a[1].append(r["v"])
            a[2].add(r["s"])
    for k in list(active):
        end(k)
    return sorted(out)


def make(i=0, p=1, clock=None):
    return make_op("process", {"schema": encode_schema(process_fns.OUT)}, key_by=["k"], subtask=i, parallelism=p,
                   function="process_fns:Episodes", clock=clock or ManualClock(0))


def episodes(rows):
    return sorted(tuple(r[c] for c in ("k", "kind", "first", "n", "total", "distinct_s"))
                  for r in rows if r["kind"] == "episode")


def test_state_and_event_time_timers_match_the_row_by_row_model():
    evs = events()
    op = make()
    got = episodes(main_rows(feed([op], evs, {0: ["k"]}) + op.finish()))
    expected = model(evs)
    assert got == expected and len(expected) > 100


def test_processing_time_timers_fire_on_the_clock():
    clock = ManualClock(1_000)
    op = make(clock=clock)
    op.process(pa.record_batch({"k": [1, 2, 1], "t": [0, 1, 2], "v": [1, 1, 1], "s": ["a", "a", "b"]},
                               schema=SCHEMA), 0)
    assert op.next_processing_time() == 1_000 + process_fns.PROC_DELAY
    assert op.on_processing_time(1_049) == []
    fired = main_rows(op.on_processing_time(1_050))
    assert sorted((r["k"], r["kind"]) for r in fired) == [(1, "proc"), (2, "proc")]
    assert op.next_processing_time() is None
    assert episodes(main_rows(op.finish())) == [(1, "episode", 0, 2, 2, 2), (2, "episode", 1, 1, 1, 1)]


@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_keeps_state_and_timers(tmp_path, old_p, new_p):
    evs = events(2500, seed=9)
    got = episodes(main_rows(restore_midway(tmp_path, lambda i, p: make(i, p), evs, {0: ["k"]}, old_p, new_p)))
    assert got == model(evs)


@pytest.mark.parametrize("parallelism", [1, 2])
def test_in_a_job(parallelism):
    evs = events(2000, seed=5)
    table = pa.Table.from_batches([b for e, b in evs if e != "wm"])
    out = (Stream.from_table(table, batch_size=60).with_watermarks("t", 5).key_by("k")
           .process("process_fns:Episodes", schema=process_fns.OUT).collect().run(default_parallelism=parallelism)
           .table())
    # with parallel tasks the watermark reaches the function later than in the model, so
    # episodes may be longer; the rows and their sum are what cannot change
    got = episodes(out.to_pylist())
    assert sum(r[3] for r in got) == table.num_rows and sum(r[4] for r in got) == sum(table["v"].to_pylist())
    if parallelism == 1:
        assert got == model([(0, b) if e != "wm" else (e, b) for e, b in evs])

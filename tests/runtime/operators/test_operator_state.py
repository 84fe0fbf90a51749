"""Operator state for checkpoints: window snapshots, collect sink, two-phase-commit file sink.

The window tests take a snapshot half-way, write it through the real
CheckpointStorage (Arrow IPC per key-group range plus JSON), restore it into fresh
operators, possibly at another parallelism, and finish the input there: the union
of all outputs must equal a brute-force reference and an uninterrupted run.
The file-sink tests check what a reader (pyarrow.dataset) sees at each step of the
two-phase commit against slices of the input table.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.dataset as ds
import pytest
from test_window import AGGS, assert_same_rows, random_events, reference

from sabot._core import partition
from sabot.errors import OperatorError
from sabot.runtime.checkpoint_storage import CheckpointStorage
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.base import SideOutput, TaskContext, create_operator
from sabot.runtime.operators.sinks import OUTPUT_MARKER, CollectSink, FileSink, output_lineage

MAX_PARALLELISM = 128


def make_op(operator, subtask=0, parallelism=1, metrics=None):
    ctx = TaskContext(
        job_id="job", task_id=f"{operator['name']}-{subtask}", attempt=0, operator=operator,
        subtask_index=subtask, parallelism=parallelism, max_parallelism=MAX_PARALLELISM,
        metrics=metrics if metrics is not None else {},
    )
    op = create_operator(ctx)
    op.open()
    return op


# -- windows -------------------------------------------------------------------------


def rows_of(batches):
    """The main output's rows (side outputs left out)."""
    return [r for b in batches if not isinstance(b, SideOutput) for r in b.to_pylist()]


def window_operator(params, key_by):
    return {"name": "win", "operator_id": "win-op", "operator_type": "window",
            "key_by": list(key_by) if key_by else None, "function": None, "parameters": params}


def route(batch, key_by, parallelism):
    """Split a batch by key group exactly as the hash exchange does (default ranges)."""
    if parallelism == 1:
        return [batch]
    kg = partition.key_groups(partition.hash_columns(batch, list(key_by)), MAX_PARALLELISM)
    owner = np.empty(MAX_PARALLELISM, dtype=np.int64)
    for i in range(parallelism):
        start, stop = partition.key_group_range(i, MAX_PARALLELISM, parallelism)
        owner[start:stop] = i
    dest = owner[kg]
    return [batch.filter(pa.array(dest == i)) for i in range(parallelism)]


def feed(ops, events, key_by):
    """Events to parallel subtasks: batches routed by key, watermarks to everyone."""
    out = []
    for ev in events:
        if isinstance(ev, tuple):
            for op in ops:
                out += op.on_watermark(ev[1])
        else:
            for op, part in zip(ops, route(ev, key_by, len(ops))):
                if part.num_rows:
                    out += op.process(part, 0)
    return out


def through_storage(tmp_path, operator_id, snapshots, new_parallelism, checkpoint_id=7):
    """Write per-subtask snapshots with the real storage, read back per new subtask."""
    storage = CheckpointStorage(str(tmp_path / "chk"))
    for sub, snap in enumerate(snapshots):
        if snap is None:
            continue
        if snap["keyed"] is not None and snap["keyed"].num_rows:
            storage.write_keyed_state("job", checkpoint_id, operator_id, sub, snap["keyed"], MAX_PARALLELISM)
        if snap["state"]:
            storage.write_operator_state("job", checkpoint_id, operator_id, sub, snap["state"])
    checkpoint = storage.commit("job", checkpoint_id)
    states = storage.read_operator_state(checkpoint, operator_id) if checkpoint.operator_handles(operator_id) else {}
    out = []
    for sub in range(new_parallelism):
        keyed = None
        if checkpoint.keyed_handles(operator_id):
            mine = partition.key_group_range(sub, MAX_PARALLELISM, new_parallelism)
            keyed = storage.read_keyed_state(checkpoint, operator_id, mine)
        out.append((keyed, states.get(sub)))
    return out


@pytest.mark.parametrize("old_p,new_p", [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)])
@pytest.mark.parametrize("size,slide", [(10, None), (12, 4)])
def test_window_restore_continues_exactly(tmp_path, old_p, new_p, size, slide):
    key_by = ["k", "g"]
    params = {"size": size, "slide": slide, "time_column": "ts", "aggregates": AGGS}
    events = random_events(seed=41 + size, n_batches=16, bound=5, late_share=0.05, num_keys=9)
    cut = len(events) // 2 + 1  # a batch without its watermark before the cut: state holds pending input
    assert not isinstance(events[cut - 1], tuple)
    expected, late = reference(events, key_by, "ts", size, slide, AGGS)
    assert late > 0

    # uninterrupted, at the old parallelism
    plain = [make_op(window_operator(params, key_by), i, old_p) for i in range(old_p)]
    uninterrupted = feed(plain, events, key_by) + [b for op in plain for b in op.finish()]
    assert_same_rows(rows_of(uninterrupted), expected, key_by)

    old_metrics = [{} for _ in range(old_p)]
    old = [make_op(window_operator(params, key_by), i, old_p, old_metrics[i]) for i in range(old_p)]
    out = feed(old, events[:cut], key_by)
    snaps = [op.snapshot_state(3) for op in old]
    for snap in snaps:
        keyed = snap["keyed"]
        assert keyed is not None and keyed.schema.field("_key_group").type == pa.int32()
        # the key group of every row is the one the exchange computes from the key values
        for row in range(keyed.num_rows):
            piece = keyed.slice(row, 1)
            part, _ = keyed_state.unbundle(piece)
            for table in part.values():
                kg = partition.key_groups(partition.hash_columns(table, ["__k0", "__k1"]), MAX_PARALLELISM)
                assert set(kg.tolist()) == {piece["_key_group"][0].as_py()}
    # the old operators go on (as after a checkpoint), nothing they do later may leak in
    feed(old, events[cut:cut + 2], key_by)

    new_metrics = [{} for _ in range(new_p)]
    new = [make_op(window_operator(params, key_by), i, new_p, new_metrics[i]) for i in range(new_p)]
    for op, (keyed, state) in zip(new, through_storage(tmp_path, "win-op", snaps, new_p)):
        op.restore_state(keyed, state, 3)
        # every subtask, even one without a state dict of its own, has the checkpoint's watermark
        assert op.watermark == snaps[0]["state"]["watermark"] is not None
    out += feed(new, events[cut:], key_by) + [b for op in new for b in op.finish()]
    assert_same_rows(rows_of(out), expected, key_by)
    if new_p >= old_p:  # counters live in the subtask's own state (lost for subtasks that go away)
        assert sum(m["late_records_dropped"] for m in new_metrics) == late


def test_window_restore_without_keys(tmp_path):
    params = {"size": 8, "slide": 4, "time_column": "ts", "aggregates": [["v", "sum"], ["*", "count"], ["i", "max"]]}
    events = random_events(seed=9, bound=3, late_share=0.05)
    expected, late = reference(events, [], "ts", 8, 4, params["aggregates"])
    cut = 9
    old = make_op(window_operator(params, None))
    out = feed([old], events[:cut], [])
    snap = old.snapshot_state(1)
    [(keyed, state)] = through_storage(tmp_path, "win-op", [snap], 1)
    new = make_op(window_operator(params, None))
    new.restore_state(keyed, state, 1)
    assert new.watermark == old.watermark and new.time_type == pa.int64()
    out += feed([new], events[cut:], []) + new.finish()
    assert_same_rows(rows_of(out), expected, [])


def test_window_without_keys_merges_two_subtasks_into_one(tmp_path):
    # two keyless subtasks, each with part of the rows and no watermark yet: restored
    # into one subtask, each window's partials from both must merge into one row
    params = {"size": 10, "time_column": "ts", "aggregates": [["v", "sum"], ["*", "count"], ["i", "min"]]}
    batches = [e for e in random_events(seed=13, n_batches=6) if not isinstance(e, tuple)]
    expected, _ = reference(batches, [], "ts", 10, None, params["aggregates"])
    old = [make_op(window_operator(params, None), i, 2) for i in range(2)]
    for n, b in enumerate(batches):
        assert old[n % 2].process(b, 0) == []
    snaps = [op.snapshot_state(2) for op in old]
    assert [s["keyed"]["_key_group"].unique().to_pylist() for s in snaps] == [[0], [64]]
    [(keyed, state)] = through_storage(tmp_path, "win-op", snaps, 1, checkpoint_id=2)
    new = make_op(window_operator(params, None))
    new.restore_state(keyed, state, 2)
    out = new.finish()  # no batch after the restore: the merge must happen at restore time
    assert_same_rows(rows_of(out), expected, [])


def test_window_restore_timestamp_column_without_any_new_batch(tmp_path):
    # restored windows must fire with the right types even if no batch comes after the restore
    ts = pa.array([0, 5_000, 12_000, 15_000], type=pa.int64()).cast(pa.timestamp("ms"))
    batch = pa.record_batch({"k": ["a", "b", "a", "a"], "x": pa.array([1, 2, 3, 4], pa.int16()), "ts": ts})
    params = {"size": 10_000, "time_column": "ts", "aggregates": [["x", "sum"], ["x", "min"]]}
    old = make_op(window_operator(params, ["k"]))
    old.process(batch, 0)
    [(keyed, state)] = through_storage(tmp_path, "win-op", [old.snapshot_state(1)], 1)
    new = make_op(window_operator(params, ["k"]))
    new.restore_state(keyed, state, 1)
    got = pa.Table.from_batches(new.finish())
    ref = {}
    for k, x, t in zip(*(batch.column(c).to_pylist() for c in ("k", "x", "ts"))):
        start = int(t.timestamp() * 1000) // 10_000 * 10_000
        ref.setdefault((start, k), []).append(x)
    assert got.schema.field("window_start").type == pa.timestamp("ms")
    assert got.schema.field("x_min").type == pa.int16()
    rows = [(int(r["window_start"].timestamp() * 1000), r["k"], r["x_sum"], r["x_min"]) for r in got.to_pylist()]
    assert rows == [(s, k, sum(v), min(v)) for (s, k), v in sorted(ref.items())]


def test_window_restore_rejects_state_of_another_shape():
    params = {"size": 10, "time_column": "ts", "aggregates": [["v", "sum"]]}
    old = make_op(window_operator(params, ["k"]))
    old.process(pa.record_batch({"k": [1, 2], "v": [1.0, 2.0], "ts": [1, 2]}), 0)
    snap = old.snapshot_state(1)
    other = make_op(window_operator({**params, "aggregates": [["v", "max"]]}, ["k"]))
    with pytest.raises(OperatorError, match=r"win.*checkpoint 1 holds window state of another shape"):
        other.restore_state(snap["keyed"], snap["state"], 1)


def test_window_empty_snapshot_restores_watermark():
    params = {"size": 10, "time_column": "ts", "aggregates": [["*", "count"]]}
    metrics = {}
    old = make_op(window_operator(params, ["k"]), metrics=metrics)
    old.process(pa.record_batch({"k": [1], "ts": [3]}), 0)
    assert len(old.on_watermark(20)) == 1
    old.process(pa.record_batch({"k": [1], "ts": [4]}), 0)  # late
    snap = old.snapshot_state(1)
    assert snap["keyed"] is None and snap["state"]["watermark"] == 20
    new_metrics = {}
    new = make_op(window_operator(params, ["k"]), metrics=new_metrics)
    new.restore_state(None, snap["state"], 1)
    assert new_metrics["late_records_dropped"] == 1
    [late] = new.process(pa.record_batch({"k": [1, 1], "ts": [5, 25]}), 0)  # ts=5 is late
    assert isinstance(late, SideOutput) and late.batch.to_pylist() == [{"k": 1, "ts": 5}]
    assert new_metrics["late_records_dropped"] == 2
    [out] = new.finish()
    assert out.to_pylist() == [{"k": 1, "window_start": 20, "window_end": 30, "count": 1}]


# -- collect sink --------------------------------------------------------------------


def sink_operator(params, name="out"):
    return {"name": name, "operator_id": f"{name}-op", "operator_type": "sink", "key_by": None,
            "function": None, "parameters": params}


def test_collect_sink_restore(tmp_path):
    table = pa.table({"id": np.arange(50), "s": [str(i) if i % 3 else None for i in range(50)]})
    batches = table.to_batches(max_chunksize=7)
    old = make_op(sink_operator({"kind": "collect"}))
    for b in batches[:4]:
        old.process(b, 0)
    snap = old.snapshot_state(1)
    for b in batches[4:6]:  # after the checkpoint: replayed after the restore
        old.process(b, 0)
    [(keyed, state)] = through_storage(tmp_path, "out-op", [snap], 1)
    new = make_op(sink_operator({"kind": "collect"}))
    assert isinstance(new, CollectSink)
    new.restore_state(keyed, state, 1)
    for b in batches[4:]:
        new.process(b, 0)
    assert new.result().equals(table)
    assert new.summary()["rows"] == 50 and new.summary()["batches"] == len(batches)


def test_collect_sink_snapshot_before_any_batch_is_empty():
    op = make_op(sink_operator({"kind": "collect"}))
    assert op.snapshot_state(1) is None
    op.process(pa.record_batch({"a": pa.array([], pa.int8())}), 0)
    snap = op.snapshot_state(2)
    new = make_op(sink_operator({"kind": "collect"}))
    new.restore_state(None, snap["state"], 2)
    assert new.result().num_rows == 0 and new.result().schema == pa.schema([("a", pa.int8())])
    with pytest.raises(OperatorError, match="no Arrow IPC bytes under 'ipc'"):
        make_op(sink_operator({"kind": "collect"})).restore_state(None, {"rows": 3}, 2)


# -- file sink -----------------------------------------------------------------------


def data(n=100, seed=1):
    rng = np.random.default_rng(seed)
    return pa.table({"id": np.arange(n, dtype=np.int64), "v": rng.random(n)})


def file_sink(path, subtask=0, parallelism=1, fmt="parquet", rows_per_file=6):
    op = make_op(sink_operator({"kind": "files", "path": str(path), "format": fmt,
                                "rows_per_file": rows_per_file}), subtask, parallelism)
    assert isinstance(op, FileSink)
    return op


def write(op, table, start, stop, chunk=4):
    for b in table.slice(start, stop - start).to_batches(max_chunksize=chunk):
        assert op.process(b, 0) == []


def visible(path, fmt="parquet"):
    """What a reader sees: pyarrow.dataset over the directory, sorted by id."""
    if not os.path.exists(path):
        return None
    t = ds.dataset(str(path), format="parquet" if fmt == "parquet" else "ipc").to_table()
    return None if t.num_columns == 0 else t.sort_by("id")  # no visible file: no schema either


def assert_visible(path, expected, fmt="parquet"):
    got = visible(path, fmt)
    if expected.num_rows == 0:
        assert got is None or got.num_rows == 0
        return
    assert got is not None and got.equals(expected.sort_by("id")), (got, expected)


LINEAGE = output_lineage("job")


def own_files(path, subtask):
    return sorted(n for n in os.listdir(path)
                  if n.startswith((f"part-{LINEAGE}-{subtask}-", f".part-{LINEAGE}-{subtask}-")))


def part_number(name):
    return int(name.split("-")[3].split(".")[0])


@pytest.mark.parametrize("fmt", ["parquet", "ipc"])
def test_file_sink_two_phase_commit(tmp_path, fmt):
    table = data()
    out = tmp_path / "out"
    op = file_sink(out, fmt=fmt)
    write(op, table, 0, 30)
    assert_visible(out, table.slice(0, 0), fmt)  # nothing is visible before a checkpoint completes
    state1 = op.snapshot_state(1)["state"]
    write(op, table, 30, 47)
    assert_visible(out, table.slice(0, 0), fmt)
    op.notify_checkpoint_complete(1)
    assert_visible(out, table.slice(0, 30), fmt)  # exactly the rows before snapshot 1
    assert state1["committed"] == [] and list(state1["pending"]) == ["1"]
    state2 = op.snapshot_state(2)["state"]
    write(op, table, 47, 60)
    state3 = op.snapshot_state(3)["state"]
    # the notification of 2 is lost; the one of 3 publishes both
    assert set(state3["pending"]) == {"2", "3"}
    op.notify_checkpoint_complete(3)
    assert_visible(out, table.slice(0, 60), fmt)
    write(op, table, 60, 100)
    assert_visible(out, table.slice(0, 60), fmt)
    op.finish()
    op.close()
    assert_visible(out, table, fmt)
    ext = "parquet" if fmt == "parquet" else "arrow"
    names = sorted(n for n in os.listdir(out) if n != OUTPUT_MARKER)
    assert names == [f"part-{LINEAGE}-0-{i:05d}.{ext}" for i in range(len(names))]  # nothing staged is left
    assert [os.path.basename(p) for p in op.summary()["files"]] == names
    assert state2["next_part"] < state3["next_part"]


def test_file_sink_restore_commits_pending_and_discards_the_rest(tmp_path):
    table = data()
    out = tmp_path / "out"
    op = file_sink(out)
    write(op, table, 0, 20)
    op.snapshot_state(1)
    op.notify_checkpoint_complete(1)
    write(op, table, 20, 45)
    state2 = op.snapshot_state(2)["state"]
    write(op, table, 45, 70)  # then the job dies: checkpoint 2 completed but its notification was lost
    assert any(n.endswith(".inprogress") for n in os.listdir(out))
    assert_visible(out, table.slice(0, 20))

    new = file_sink(out)
    new.restore_state(None, state2, 2)
    assert_visible(out, table.slice(0, 45))  # exactly what checkpoint 2 covers
    assert not any(n.startswith(".") for n in os.listdir(out))  # no staging file is left
    write(new, table, 45, 100)  # the sources replay from checkpoint 2's offsets
    new.finish()
    assert_visible(out, table)
    names = own_files(out, 0)
    numbers = sorted(part_number(n) for n in names)
    assert numbers == list(range(len(numbers)))  # numbering went on without gaps or reuse
    assert state2["next_part"] == len(state2["committed"]) + len(state2["pending"]["2"])


def test_file_sink_restore_of_an_older_checkpoint_removes_later_commits(tmp_path):
    table = data()
    out = tmp_path / "out"
    op = file_sink(out, rows_per_file=None)
    write(op, table, 0, 25)
    state1 = op.snapshot_state(1)["state"]
    op.notify_checkpoint_complete(1)
    write(op, table, 25, 50)
    op.snapshot_state(2)
    op.notify_checkpoint_complete(2)
    write(op, table, 50, 80)
    assert_visible(out, table.slice(0, 50))
    # restart from checkpoint 1 (say, 2's metadata turned out corrupt): 2's files must go
    new = file_sink(out, rows_per_file=None)
    new.restore_state(None, state1, 1)
    assert_visible(out, table.slice(0, 25))
    write(new, table, 25, 100)
    new.finish()
    assert_visible(out, table)
    assert own_files(out, 0) == [f"part-{LINEAGE}-0-00000.parquet", f"part-{LINEAGE}-0-00001.parquet"]


def test_file_sink_restore_when_the_pending_files_were_already_committed(tmp_path):
    table = data(40)
    out = tmp_path / "out"
    op = file_sink(out)
    write(op, table, 0, 30)
    state = op.snapshot_state(1)["state"]
    op.notify_checkpoint_complete(1)  # committed, then the job died before the next checkpoint
    write(op, table, 30, 35)
    new = file_sink(out)
    new.restore_state(None, state, 1)
    assert_visible(out, table.slice(0, 30))
    write(new, table, 30, 40)
    new.finish()
    assert_visible(out, table)


def test_file_sink_restore_twice_from_the_same_checkpoint(tmp_path):
    table = data(60)
    out = tmp_path / "out"
    op = file_sink(out)
    write(op, table, 0, 20)
    state = op.snapshot_state(1)["state"]
    write(op, table, 20, 30)
    for _ in range(2):  # the first recovery fails again before its next checkpoint
        again = file_sink(out)
        again.restore_state(None, state, 1)
        assert_visible(out, table.slice(0, 20))
        write(again, table, 20, 33)
    last = file_sink(out)
    last.restore_state(None, state, 1)
    write(last, table, 20, 60)
    last.finish()
    assert_visible(out, table)


def test_file_sinks_of_two_subtasks_share_a_directory(tmp_path):
    # subtasks 1 and 10: "part-1-" must never match "part-10-"
    table = data(120)
    left, right = table.slice(0, 60), table.slice(60, 60)
    out = tmp_path / "out"
    a, b = file_sink(out, subtask=1, parallelism=11), file_sink(out, subtask=10, parallelism=11)
    write(a, left, 0, 20)
    write(b, right, 0, 30)
    sa, sb = a.snapshot_state(1)["state"], b.snapshot_state(1)["state"]
    a.notify_checkpoint_complete(1)
    b.notify_checkpoint_complete(1)
    write(a, left, 20, 40)
    write(b, right, 30, 50)
    sb2 = b.snapshot_state(2)["state"]
    b.notify_checkpoint_complete(2)
    write(b, right, 50, 55)
    before_b = {n: os.path.getmtime(out / n) for n in own_files(out, 10)}
    # subtask 1 fails and restarts from checkpoint 1; subtask 10 is untouched by it
    a2 = file_sink(out, subtask=1, parallelism=11)
    a2.restore_state(None, sa, 1)
    assert {n: os.path.getmtime(out / n) for n in own_files(out, 10)} == before_b
    assert_visible(out, pa.concat_tables([left.slice(0, 20), right.slice(0, 50)]))
    write(a2, left, 20, 60)
    a2.finish()
    # subtask 10 restarts from its checkpoint 2 (its in-progress file goes), subtask 1's files stay
    before_a = {n: os.path.getmtime(out / n) for n in own_files(out, 1)}
    b2 = file_sink(out, subtask=10, parallelism=11)
    b2.restore_state(None, sb2, 2)
    assert {n: os.path.getmtime(out / n) for n in own_files(out, 1)} == before_a
    write(b2, right, 50, 60)
    b2.finish()
    assert_visible(out, table)
    assert sb["committed"] == [] and sa["next_part"] > 0


def test_file_sink_without_checkpoints_publishes_at_finish(tmp_path):
    table = data(50)
    out = tmp_path / "out"
    op = file_sink(out, rows_per_file=7)
    write(op, table, 0, 50)
    assert_visible(out, table.slice(0, 0))  # closed parts stay staged until the end
    op.finish()
    assert_visible(out, table)
    assert len(own_files(out, 0)) == -(-50 // 7)


def test_file_sink_restore_from_an_empty_state_discards_everything_of_the_subtask(tmp_path):
    table = data(30)
    out = tmp_path / "out"
    other = file_sink(out, subtask=1, parallelism=2)
    write(other, table, 0, 10)
    other.finish()
    op = file_sink(out, subtask=0, parallelism=2)
    write(op, table, 10, 20)  # written and committed by an attempt the checkpoint does not know
    op.finish()
    new = file_sink(out, subtask=0, parallelism=2)
    new.restore_state(None, None, 1)
    assert own_files(out, 0) == []
    assert_visible(out, table.slice(0, 10))


def test_file_sink_uri_path(tmp_path):
    table = data(30)
    uri = (tmp_path / "out").as_uri()
    op = file_sink(uri, rows_per_file=8)
    write(op, table, 0, 12)
    state = op.snapshot_state(1)["state"]
    write(op, table, 12, 20)
    new = file_sink(uri, rows_per_file=8)
    new.restore_state(None, state, 1)
    assert_visible(tmp_path / "out", table.slice(0, 12))
    write(new, table, 12, 30)
    new.finish()
    assert_visible(tmp_path / "out", table)


def test_file_sink_state_survives_json_storage(tmp_path):
    table = data(40)
    out = tmp_path / "out"
    op = file_sink(out)
    write(op, table, 0, 17)
    snap = op.snapshot_state(4)
    write(op, table, 17, 23)
    [(_, state)] = through_storage(tmp_path, "out-op", [snap], 1, checkpoint_id=4)
    assert state == snap["state"]
    new = file_sink(out)
    new.restore_state(None, state, 4)
    write(new, table, 17, 40)
    new.finish()
    assert_visible(out, table)


def test_file_sink_bad_restores(tmp_path):
    out = tmp_path / "out"
    op = file_sink(out)
    with pytest.raises(OperatorError, match=r"unknown keys \['offset'\]"):
        op.restore_state(None, {"offset": 3}, 1)
    with pytest.raises(OperatorError, match=f"not part files of lineage {LINEAGE} and subtask 0"):
        op.restore_state(None, {"committed": [f"part-{LINEAGE}-1-00000.parquet"], "pending": {}, "next_part": 1}, 1)
    table = data(10)
    write(op, table, 0, 10)
    state = op.snapshot_state(1)["state"]
    for name in own_files(out, 0):
        os.remove(out / name)  # the staged file vanished before anyone committed it
    with pytest.raises(OperatorError, match=f"cannot commit part-{LINEAGE}-0-00000.parquet of checkpoint 1"):
        file_sink(out).restore_state(None, state, 1)
    with pytest.raises(OperatorError, match="before any batch"):
        op.restore_state(None, state, 1)


# -- fencing and directory ownership ----------------------------------------------------


def sink_of(path, job="job", attempt=0, subtask=0, mode="error", rows_per_file=6):
    ctx = TaskContext(job_id=job, task_id=f"out-{subtask}", attempt=attempt,
                      operator=sink_operator({"kind": "files", "path": str(path), "format": "parquet",
                                              "rows_per_file": rows_per_file, "mode": mode}),
                      subtask_index=subtask, parallelism=1, max_parallelism=MAX_PARALLELISM, metrics={},
                      checkpointing=True)
    op = create_operator(ctx)
    op.open()
    return op


def test_a_superseded_attempt_stages_under_its_own_names_and_is_never_published(tmp_path):
    table = data(60)
    out = tmp_path / "out"
    old = sink_of(out, attempt=0)
    write(old, table, 0, 20)
    state = old.snapshot_state(1)["state"]
    # attempt 0 is superseded (its worker was declared lost) but keeps running for a moment
    new = sink_of(out, attempt=1)
    new.restore_state(None, state, 1)  # checkpoint 1 completed: its files are published
    write(old, table, 20, 40)           # the old attempt writes on ...
    write(new, table, 20, 40)           # ... beside the new one, never into the same file
    old.snapshot_state(2)
    new_state = new.snapshot_state(2)["state"]
    staged = {n for n in os.listdir(out) if n.endswith(".inprogress")}
    assert any(".a0." in n for n in staged) and any(".a1." in n for n in staged)
    new.notify_checkpoint_complete(2)  # the coordinator tells only attempt 1
    write(new, table, 40, 60)
    new.finish()
    new.notify_job_finished()
    assert_visible(out, table)  # every row once: nothing of attempt 0 after checkpoint 1 is visible
    assert not [n for n in os.listdir(out) if n.endswith(".inprogress")]  # its leftovers are removed
    assert set(new_state["pending"]["2"]) <= staged


def test_a_rerun_into_the_same_directory_is_refused_naming_the_job(tmp_path):
    table = data(20)
    out = tmp_path / "out"
    first = sink_of(out, job="first-run")
    write(first, table, 0, 20)
    first.finish()
    first.notify_job_finished()
    rerun = sink_of(out, job="second-run")
    with pytest.raises(OperatorError, match=r"holds the output of job first-run.*mode='overwrite'.*mode='append'"):
        write(rerun, table, 0, 5)
    assert_visible(out, table)  # the first run's output is untouched


def test_overwrite_replaces_and_append_adds(tmp_path):
    table = data(30)
    out = tmp_path / "out"
    first = sink_of(out, job="a")
    write(first, table, 0, 10)
    first.finish()
    first.notify_job_finished()
    appended = sink_of(out, job="b", mode="append")
    write(appended, table, 10, 20)
    appended.finish()
    appended.notify_job_finished()
    assert_visible(out, table.slice(0, 20))
    replaced = sink_of(out, job="c", mode="overwrite")
    write(replaced, table, 20, 30)
    replaced.finish()
    replaced.notify_job_finished()
    assert_visible(out, table.slice(20, 10))
    # the directory now belongs to c: a rerun of a is refused
    with pytest.raises(OperatorError, match="holds the output of job c"):
        write(sink_of(out, job="a"), table, 0, 1)


def test_output_of_an_older_sabot_counts_as_foreign(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(data(3), out / "part-0-00000.parquet")
    with pytest.raises(OperatorError, match="already holds part files of another job"):
        write(sink_of(out), data(5), 0, 5)


def test_a_restored_job_goes_on_with_the_files_of_the_job_it_was_restored_from(tmp_path):
    table = data(40)
    out = tmp_path / "out"
    first = sink_of(out, job="first")
    write(first, table, 0, 20)
    state = first.snapshot_state(1)["state"]
    first.notify_checkpoint_complete(1)
    restored = sink_of(out, job="restored-elsewhere")
    restored.restore_state(None, state, 1)
    write(restored, table, 20, 40)
    restored.finish()
    restored.notify_job_finished()
    assert_visible(out, table)
    assert {n.split("-")[1] for n in os.listdir(out) if n.startswith("part-")} == {output_lineage("first")}

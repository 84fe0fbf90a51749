"""The Source API (sabot/connectors/source.py): splits, the enumerator's assignment, discovery,
snapshots, per-split watermarks with idleness, directory monitoring of the file source."""

import itertools
import json
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sabot.connectors.source import Split, SplitEnumerator
from sabot.errors import OperatorError
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.runtime.timers import ManualClock


# -- the enumerator ----------------------------------------------------------------------------


@pytest.mark.parametrize("n,p", [(1, 1), (7, 3), (32, 4), (32, 3), (5, 8), (100, 7)])
def test_a_numbered_set_is_balanced_round_robin(n, p):
    enum = SplitEnumerator(Split(f"s{i}", ordinal=i) for i in range(n))
    assignment = enum.assignment(p)
    sizes = [len(assignment[i]) for i in range(p)]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    # each split exactly once, and subtask i holds ordinals i, i + p, ...
    for i in range(p):
        assert [s.ordinal for s in assignment[i]] == list(range(i, n, p))
        assert enum.splits_for(i, p) == assignment[i]


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_partitions_of_every_topic_are_balanced(p):
    topics = {"orders": 6, "payments": 4, "clicks": 9}
    enum = SplitEnumerator(Split(f"{t}/{k}", ordinal=k, group=t) for t, n in topics.items() for k in range(n))
    for topic, n in topics.items():
        counts = np.bincount([s.owner(p) for s in enum.splits if s.group == topic], minlength=p)
        assert counts.sum() == n and counts.max() - counts.min() <= 1, (topic, counts)
        # Flink's rule: partition k of topic t goes to (start(t) + k) % p
        start = zlib.crc32(topic.encode()) % p
        assert [s.owner(p) for s in enum.splits if s.group == topic] == [(start + k) % p for k in range(n)]


def test_discovery_adds_only_new_splits_and_never_moves_an_assigned_one():
    enum = SplitEnumerator(Split(f"t/{k}", ordinal=k, group="t") for k in range(4))
    before = {s.id: s.owner(3) for s in enum.splits}
    new = enum.discover([Split("t/2", ordinal=2, group="t"), Split("t/4", ordinal=4, group="t"),
                         Split("t/5", ordinal=5, group="t")])
    assert [s.id for s in new] == ["t/4", "t/5"]
    assert enum.discover([Split("t/4", ordinal=4, group="t")]) == []
    assert len(enum) == 6 and "t/5" in enum and "t/9" not in enum
    after = {s.id: s.owner(3) for s in enum.splits}
    assert all(after[k] == v for k, v in before.items())
    # the owner of a split does not depend on when it was seen: another copy that learnt the
    # splits in another order agrees
    other = SplitEnumerator(reversed(enum.splits))
    assert {s.id: s.owner(3) for s in other.splits} == after


def test_files_discovered_later_get_one_owner_whatever_the_listing_order():
    names = [f"/data/part-{i:04d}.parquet" for i in range(200)]
    a = SplitEnumerator(Split(n, group=n, description={"path": n}) for n in names)
    b = SplitEnumerator()
    for chunk in (names[150:], names[:50], names[50:150]):  # listed in three rounds, out of order
        b.discover(Split(n, group=n, description={"path": n}) for n in chunk)
    for p in (1, 2, 4, 7):
        owners_a = {s.id: s.owner(p) for s in a.splits}
        owners_b = {s.id: s.owner(p) for s in b.splits}
        assert owners_a == owners_b
        # a stable hash spreads many files about evenly
        counts = np.bincount(list(owners_a.values()), minlength=p)
        assert counts.min() >= 200 / p * 0.6, counts


def test_snapshot_and_restore_of_the_enumerator():
    enum = SplitEnumerator([Split("units/0", 0, None, {"k": 0, "of": 2}), Split("units/1", 1, None, {"k": 1, "of": 2})])
    enum.discover([Split("/d/x.parquet", 0, "/d/x.parquet", {"path": "/d/x.parquet"})])
    state = json.loads(json.dumps(enum.snapshot()))  # JSON-able
    again = SplitEnumerator.restore(state)
    assert again.splits == enum.splits
    assert again.assignment(2) == enum.assignment(2)
    with pytest.raises(ValueError, match="splits"):
        SplitEnumerator.restore({"split": []})
    with pytest.raises(ValueError, match="'id': non-empty str"):
        SplitEnumerator.restore({"splits": [{"id": 3}]})
    with pytest.raises(ValueError, match="parallelism"):
        Split("a").owner(0)
    with pytest.raises(TypeError, match="Split objects"):
        enum.discover(["a"])


# -- readers: files, directory monitoring, watermarks ----------------------------------------


def make_source(params, subtask=0, parallelism=1, clock=None):
    ctx = TaskContext(
        job_id="job", task_id=f"src-{subtask}", attempt=0,
        operator={"name": "src", "operator_type": "source", "key_by": None, "function": None, "parameters": params},
        subtask_index=subtask, parallelism=parallelism, max_parallelism=128, clock=clock,
    )
    op = create_operator(ctx)
    op.open()
    return op


def write(path, ids, ts=None):
    ids = np.asarray(ids, dtype=np.int64)
    table = pa.table({"id": ids, "ts": ids if ts is None else np.asarray(ts, dtype=np.int64)})
    tmp = path.parent / f".{path.name}.tmp"
    pq.write_table(table, tmp, row_group_size=10)
    tmp.rename(path)  # complete files only: names starting with "." are not listed
    return table


SCHEMA = pa.schema([("id", pa.int64()), ("ts", pa.int64())])


def _ids(batches):
    return [v for b in batches if b is not None for v in b.column("id").to_pylist()]


def test_a_monitored_directory_picks_up_new_files_exactly_once(tmp_path):
    from sabot.execution.operator_spec import encode_schema

    d = tmp_path / "in"
    d.mkdir()
    write(d / "a.parquet", range(0, 30))
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "batch_size": 10,
              "monitor_interval_s": 0.05, "schema": encode_schema(SCHEMA)}
    readers = [make_source(params, i, 2) for i in range(2)]
    iters = [op.read() for op in readers]

    def pump(rows_wanted, settle=0.2, timeout=20):
        """Read until ``rows_wanted`` rows came (or ``timeout``), then ``settle`` s more: a row
        read twice would show up."""
        got = []
        deadline = time.monotonic() + timeout
        settled = None
        while time.monotonic() < (settled or deadline):
            for it in iters:
                got += _ids([next(it)])
            if settled is None and len(got) >= rows_wanted:
                settled = time.monotonic() + settle
        return got

    got = pump(30)
    write(d / "b.parquet", range(30, 55))
    write(d / "c.parquet", range(55, 100))
    got += pump(70)
    # a checkpoint, a restore at parallelism 3, and one more file after it
    states = {i: op.snapshot_state(1)["state"] for i, op in enumerate(readers)}
    # every file is there, each of several row groups (10 rows each) cut into P = 2 pieces
    pieces = sorted((st["split"]["description"]["path"], st["split"]["description"]["k"])
                    for state in states.values() for st in state["splits"].values())
    assert pieces == [(str(d / f), k) for f in ("a.parquet", "b.parquet", "c.parquet") for k in range(2)]
    readers = [make_source(params, j, 3) for j in range(3)]
    for op in readers:
        op.restore_subtask_states(states, 1)
    iters = [op.read() for op in readers]
    write(d / "d.parquet", range(100, 120))
    got += pump(20)
    assert sorted(got) == list(range(120))
    # the source did not end: it waits for more files (without event time it is never "idle")
    assert not any(op.idle for op in readers)


def test_a_monitored_directory_may_be_empty_at_the_start(tmp_path):
    from sabot.execution.operator_spec import encode_schema

    d = tmp_path / "later"
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "monitor_interval_s": 0.02,
              "schema": encode_schema(SCHEMA)}
    op = make_source(params)
    it = op.read()
    assert next(it) is None and op.splits == []
    d.mkdir()
    write(d / "x.parquet", range(5))
    deadline, got = time.monotonic() + 5, []
    while len(got) < 5 and time.monotonic() < deadline:
        got += _ids([next(it)])
    assert got == list(range(5))
    # with event time, a subtask without a split to read is idle downstream
    (tmp_path / "none").mkdir()
    timed = make_source(dict(params, path=str(tmp_path / "none"), time_column="ts"), 1, 2)
    waiting = timed.read()
    assert next(waiting) is None and timed.splits == [] and timed.idle
    with pytest.raises(OperatorError, match="monitor_interval_s must be a positive"):
        make_source(dict(params, monitor_interval_s=0))


def test_file_watermark_is_the_min_over_splits_being_read_with_idleness(tmp_path):
    """Two subtask-local files read one after the other; then a Kafka-like pattern: the
    reader's watermark is the min over splits being read, idle ones left out."""
    from sabot.connectors.source import SplitSource

    clock = ManualClock(0)
    d = tmp_path / "w"
    d.mkdir()
    write(d / "a.parquet", range(0, 10), ts=range(100, 110))
    write(d / "b.parquet", range(10, 20), ts=range(50, 60))
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "batch_size": 5, "time_column": "ts",
              "max_out_of_orderness": 2, "idle_timeout_ms": 1000}
    op = make_source(params, clock=clock)
    assert isinstance(op, SplitSource) and op.tracks_watermarks
    it = op.read()
    next(it)  # a: ts 100..104
    assert op.current_watermark() == 104 - 2
    next(it)  # a: 105..109
    assert op.current_watermark() == 109 - 2
    next(it)  # a finished; b: 50..54 is read now, a no longer counts
    assert op.current_watermark() == 54 - 2
    clock.set(1500)  # b delivered nothing for 1.5 s: idle, left out; nothing else is read
    assert op.current_watermark() is None and op.idle
    next(it)
    assert op.current_watermark() == 59 - 2 and not op.idle
    assert list(it) == [] and op.current_watermark() is None


def test_table_and_generator_splits_keep_the_tasks_watermark():
    # strided shares of one ordered sequence: the task's watermark over the subtask's batches
    params = {"kind": "generator", "function": "sabot.runtime.generators:keyed_records", "total_rows": 100,
              "batch_size": 10, "parameters": {}, "time_column": "ts"}
    op = make_source(params)
    assert not op.tracks_watermarks and not op.idle
    assert _ids([]) == [] and len(list(itertools.islice(op.read(), 3))) == 3


def test_rescaled_file_source_reads_every_row_once_at_split_granularity(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    expected = []
    for j in range(6):
        expected += write(d / f"p{j}.parquet", range(j * 40, j * 40 + 40)).column("id").to_pylist()
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "batch_size": 10}
    old = [make_source(params, i, 4) for i in range(4)]
    its = [op.read() for op in old]
    got = []
    for it, k in zip(its, (1, 3, 0, 5)):
        got += _ids(itertools.islice(it, k))
    positions = [op.position for op in old]
    for op in old:
        op.stop_for_rescale()
    middle = [make_source(params, j, 2) for j in range(2)]
    for op in middle:
        op.take_split_positions(positions)
    its = [op.read() for op in middle]
    for it, k in zip(its, (2, 4)):
        got += _ids(itertools.islice(it, k))
    positions = [op.position for op in middle]
    for j in range(3):
        op = make_source(params, j, 3)
        op.take_split_positions(positions)
        got += _ids(op.read())
    assert sorted(got) == sorted(expected)


# -- the README's example source ------------------------------------------------------------

from sabot.connectors.source import SplitSource  # noqa: E402
from sabot.runtime.operators.base import register  # noqa: E402


@register("source", kind="test-lines")
class LinesSource(SplitSource):
    """Text files, one split per file; the position is the lines already emitted."""

    def initial_splits(self):
        paths = sorted(self.params["paths"])
        return [Split(p, ordinal=j, description={"path": p}) for j, p in enumerate(paths)]

    def read_split(self, split, position):
        lines = open(split.description["path"]).read().splitlines()
        for n in range(position, len(lines), 1000):
            chunk = lines[n:n + 1000]
            yield pa.record_batch({"line": chunk}), n + len(chunk)


def test_the_readme_example_source_restores_at_another_parallelism(tmp_path):
    paths = []
    for j in range(5):
        path = tmp_path / f"f{j}.txt"
        path.write_text("\n".join(f"{j}-{i}" for i in range(2500)))
        paths.append(str(path))
    params = {"kind": "test-lines", "paths": paths}
    got, states = [], {}
    for i in range(2):
        op = make_source(params, i, 2)
        got += [v for b in itertools.islice(op.read(), 4) for v in b.column("line").to_pylist()]
        states[i] = op.snapshot_state(1)["state"]
    for j in range(3):
        op = make_source(params, j, 3)
        op.restore_subtask_states(states, 1)
        got += [v for b in op.read() for v in b.column("line").to_pylist()]
    assert sorted(got) == sorted(f"{j}-{i}" for j in range(5) for i in range(2500))


def test_from_dataset_options_are_checked_and_a_monitored_directory_may_not_exist_yet(tmp_path):
    from sabot import Stream

    later = tmp_path / "later"
    stream = Stream.from_dataset(str(later), monitor_interval=0.5, schema=SCHEMA)
    assert stream.schema.equals(SCHEMA)
    params = stream._node.parameters
    assert params["monitor_interval_s"] == 0.5 and params["schema"]
    with pytest.raises(ValueError, match="monitor_interval must be a positive number"):
        Stream.from_dataset(str(later), monitor_interval=-1, schema=SCHEMA)
    with pytest.raises(TypeError, match="schema must be a pyarrow.Schema"):
        Stream.from_dataset(str(later), monitor_interval=1, schema={"id": "int64"})
    later.mkdir()
    with pytest.raises(ValueError, match="no files there to take the schema from; pass schema="):
        Stream.from_dataset(str(later))
    with pytest.raises(ValueError, match="idle_timeout_ms must be a positive number"):
        Stream.from_dataset(str(later), schema=SCHEMA).with_watermarks("ts", 0, idle_timeout_ms=0)


def test_a_restored_file_source_does_not_need_its_finished_files(tmp_path):
    d = tmp_path / "gone"
    d.mkdir()
    write(d / "a.parquet", range(0, 10))
    write(d / "b.parquet", range(10, 30))
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "batch_size": 10}
    op = make_source(params)
    it = op.read()
    got = _ids([next(it), next(it)])  # a.parquet read to its end, then b's first batch
    state = op.snapshot_state(1)["state"]
    assert state["splits"][str(d / "a.parquet")]["finished"]
    (d / "a.parquet").unlink()  # consumed files may be cleaned up
    again = make_source(params)
    again.restore_state(None, state, 1)
    got += _ids(again.read())
    assert sorted(got) == list(range(30)) and again.total_rows is None
    # an unfinished file of the checkpoint that is gone is an error that says so
    (d / "b.parquet").unlink()
    third = make_source(params)
    third.restore_state(None, state, 1)
    with pytest.raises(OperatorError, match="is gone"):
        list(third.read())


@register("source", kind="test-racy-lines")
class RacyLinesSource(LinesSource):
    """A rescale's positions arrive while the first listing runs (``open`` on the operator
    thread, ``source_start`` on the event loop): simulated by delivering them from inside it."""

    arriving = None

    def initial_splits(self):
        splits = super().initial_splits()
        positions, RacyLinesSource.arriving = RacyLinesSource.arriving, None
        if positions is not None:
            self.take_split_positions(positions)
        return splits


def test_positions_that_arrive_while_the_source_lists_its_splits_are_not_lost(tmp_path):
    paths = []
    for j in range(3):
        path = tmp_path / f"r{j}.txt"
        path.write_text("\n".join(f"{j}-{i}" for i in range(3000)))
        paths.append(str(path))
    old = make_source({"kind": "test-lines", "paths": paths})
    got = [v for b in itertools.islice(old.read(), 4) for v in b.column("line").to_pylist()]
    old.stop_for_rescale()
    RacyLinesSource.arriving = [old.position]
    new = make_source({"kind": "test-racy-lines", "paths": paths})  # open() lists: the positions come then
    got += [v for b in new.read() for v in b.column("line").to_pylist()]
    assert sorted(got) == sorted(f"{j}-{i}" for j in range(3) for i in range(3000))  # none read twice

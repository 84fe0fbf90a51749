"""Tests of sabot.runtime.checkpoint_storage: round trips (also across parallelism),
corrupt/partial checkpoints, retention and atomic commit, on local, file:// and
in-memory (pyarrow mock) filesystems."""

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from sabot._core.partition import hash_columns, key_group_range, key_groups
from sabot._core.state import KeyedAggregateTable
from sabot.errors import SabotError
from sabot.runtime.checkpoint_storage import (
    METADATA_FILE,
    CheckpointInputError,
    CheckpointStorage,
    CheckpointStorageError,
    CorruptCheckpoint,
    UnknownCheckpointState,
)

MAXP = 128
JOB = "job-a"
OP = "keyed-count"


# ----------------------------------------------------------------------------- helpers

def make_rows(n_rows=20_000, n_keys=3_000, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, n_keys, n_rows, dtype=np.int64)
    vals = rng.integers(-1000, 1000, n_rows, dtype=np.int64)
    return keys, vals


def reference(keys, vals):
    """{key: (count, sum)} by pure numpy."""
    uniq, inv = np.unique(keys, return_inverse=True)
    counts = np.bincount(inv)
    sums = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(sums, inv, vals)
    return {int(k): (int(c), int(s)) for k, c, s in zip(uniq, counts, sums)}


def subtask_states(keys, vals, parallelism):
    """One KeyedAggregateTable per subtask, each fed only the rows of the key groups it owns."""
    karr = pa.array(keys)
    hashes = hash_columns([karr])
    groups = key_groups(hashes, MAXP)
    tables = []
    for s in range(parallelism):
        start, stop = key_group_range(s, MAXP, parallelism)
        sel = (groups >= start) & (groups < stop)
        t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
        t.update(pa.array(keys[sel]), hashes[sel], groups[sel], {"v": pa.array(vals[sel])})
        tables.append(t)
    return tables


def as_dict(snapshot):
    """{key: (rows, sum)} of a snapshot table."""
    d = snapshot.to_pydict()
    return {k: (r, s) for k, r, s in zip(d["key"], d["_rows"], d["_sum_v"])}


@pytest.fixture(params=["path", "file-uri", "memory"])
def storage_factory(request, tmp_path):
    """Make CheckpointStorage objects on one backend (all share the same root)."""
    mock = pafs._MockFileSystem() if request.param == "memory" else None

    def make(**kwargs):
        if request.param == "path":
            return CheckpointStorage(str(tmp_path / "chk"), **kwargs)
        if request.param == "file-uri":
            return CheckpointStorage((tmp_path / "chk").as_uri(), **kwargs)
        return CheckpointStorage("chk", filesystem=mock, **kwargs)

    return make


def write_checkpoint(storage, chk, parallelism=2, seed=0, job=JOB, commit=True):
    keys, vals = make_rows(seed=seed)
    handles = []
    for s, t in enumerate(subtask_states(keys, vals, parallelism)):
        handles += storage.write_keyed_state(job, chk, OP, s, t.snapshot(), MAXP)
        handles.append(storage.write_operator_state(job, chk, "source", s, {"offset": 1000 * chk + s}))
    completed = storage.commit(job, chk, {"trigger": chk}, handles=handles) if commit else None
    return keys, vals, handles, completed


def fs_read(storage, path):
    with storage.filesystem.open_input_stream(path) as f:
        return f.readall()


def fs_write(storage, path, data):
    with storage.filesystem.open_output_stream(path) as f:
        f.write(data)


def names_in(storage, directory):
    sel = pafs.FileSelector(directory, recursive=True, allow_not_found=True)
    return sorted(i.path[len(directory) + 1:] for i in storage.filesystem.get_file_info(sel))


# ----------------------------------------------------------------------------- round trips

def test_round_trip_same_parallelism(storage_factory):
    storage = storage_factory()
    keys, vals, handles, completed = write_checkpoint(storage, 1)
    latest = storage.latest(JOB)
    assert latest is not None and latest.checkpoint_id == 1 and storage.skipped == []
    assert latest.size_bytes == sum(h["size_bytes"] for h in handles) == completed.size_bytes
    assert latest.metadata == {"trigger": 1}
    ref = reference(keys, vals)
    union = {}
    for s in range(2):
        start, stop = key_group_range(s, MAXP, 2)
        part = storage.read_keyed_state(latest, OP, (start, stop))
        kg = part.column("_key_group").to_numpy()
        assert ((kg >= start) & (kg < stop)).all()
        union.update(as_dict(part))
    assert union == ref
    assert storage.read_operator_state(latest, "source") == {0: {"offset": 1000}, 1: {"offset": 1001}}


def test_restore_at_different_parallelism_2_to_3(storage_factory):
    storage = storage_factory()
    keys, vals, _, _ = write_checkpoint(storage, 1, parallelism=2)
    latest = storage.latest(JOB)
    ref = reference(keys, vals)
    hashes = hash_columns([pa.array(np.array(sorted(ref), dtype=np.int64))])
    expected_groups = dict(zip(sorted(ref), key_groups(hashes, MAXP).tolist()))
    union = {}
    for s in range(3):
        start, stop = key_group_range(s, MAXP, 3)
        part = storage.read_keyed_state(latest, OP, (start, stop))
        got = as_dict(part)
        # exactly the keys whose key group this subtask owns now
        assert set(got) == {k for k, g in expected_groups.items() if start <= g < stop}
        assert not set(got) & set(union)
        union.update(got)
        # the part restores into a fresh table that gives the reference results
        t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
        t.restore(part)
        res = t.result().to_pydict()
        assert {k: ref[k] for k in got} == dict(zip(res["key"], zip(res["count"], res["v_sum"])))
    assert union == ref


def test_read_rebalanced_assignment_mask_and_ids(storage_factory):
    storage = storage_factory(target_file_rows=300)  # several files per subtask
    keys, vals, handles, _ = write_checkpoint(storage, 1)
    assert len([h for h in handles if h["kind"] == "keyed"]) > 4
    latest = storage.latest(JOB)
    ref = reference(keys, vals)
    full = storage.read_keyed_state(latest, OP)
    assert as_dict(full) == ref
    wanted = np.array([3, 4, 70, 100, 127])
    mask = np.zeros(MAXP, dtype=bool)
    mask[wanted] = True
    by_mask = storage.read_keyed_state(latest, OP, mask)
    by_ids = storage.read_keyed_state(latest, OP, wanted)
    kg_full = full.column("_key_group").to_numpy()
    expected = {k: v for (k, v), g in zip(as_dict(full).items(), kg_full) if g in set(wanted.tolist())}
    assert as_dict(by_mask) == expected == as_dict(by_ids)
    assert set(by_mask.column("_key_group").to_pylist()) <= set(wanted.tolist())


def test_reader_opens_only_overlapping_files(storage_factory):
    storage = storage_factory(target_file_rows=300)
    _, _, handles, _ = write_checkpoint(storage, 1)
    latest = storage.latest(JOB)
    keyed = latest.keyed_handles(OP)
    victim = keyed[-1]  # the highest key-group range
    path = f"{latest.path}/{victim['path']}"
    data = bytearray(fs_read(storage, path))
    data[len(data) // 2] ^= 0xFF
    fs_write(storage, path, bytes(data))
    # a range that does not touch the damaged file reads fine ...
    part = storage.read_keyed_state(latest, OP, (0, victim["key_group_start"]))
    assert part.num_rows == sum(h["rows"] for h in keyed if h["key_group_stop"] <= victim["key_group_start"])
    # ... one that does is refused, never half-loaded
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        storage.read_keyed_state(latest, OP, (victim["key_group_start"], MAXP))


def test_empty_state_and_empty_selection_keep_schema(storage_factory):
    storage = storage_factory()
    t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
    t.update(pa.array(np.array([5], dtype=np.int64)), hash_columns([pa.array([5])]),
             key_groups(hash_columns([pa.array([5])]), MAXP), {"v": pa.array([7])})
    empty = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
    snap = t.snapshot()
    h0 = storage.write_keyed_state(JOB, 1, OP, 0, snap, MAXP)
    h1 = storage.write_keyed_state(JOB, 1, OP, 1, empty.snapshot(), MAXP)
    assert h1[0]["rows"] == 0 and h1[0]["key_group_start"] == h1[0]["key_group_stop"]
    chk = storage.commit(JOB, 1, {}, handles=h0 + h1)
    g = snap.column("_key_group")[0].as_py()
    other = (g + 1) % MAXP
    out = storage.read_keyed_state(chk, OP, np.array([other]))
    assert out.num_rows == 0 and out.schema == snap.schema
    assert storage.read_keyed_state(chk, OP, np.array([g])).to_pydict() == snap.to_pydict()


def test_operator_state_values_round_trip(storage_factory):
    storage = storage_factory()
    state = {"offsets": {"p0": 12, "p1": 7}, "blob": b"\x00\xffraw", "ratio": 0.25,
             "n": np.int64(5), "arr": np.arange(3), "none": None, "list": [1, "a"]}
    h = storage.write_operator_state(JOB, 4, "window", 2, state)
    chk = storage.commit(JOB, 4, {}, handles=[h])
    got = storage.read_operator_state(chk, "window")
    assert got == {2: {"offsets": {"p0": 12, "p1": 7}, "blob": b"\x00\xffraw", "ratio": 0.25,
                       "n": 5, "arr": [0, 1, 2], "none": None, "list": [1, "a"]}}
    with pytest.raises(UnknownCheckpointState, match="window"):
        storage.read_keyed_state(chk, "window")
    with pytest.raises(UnknownCheckpointState, match=r"\['window'\]"):
        storage.read_operator_state(chk, "nope")


def test_commit_uses_recorded_handles_when_none_given(storage_factory):
    storage = storage_factory()
    keys, vals, handles, _ = write_checkpoint(storage, 3, commit=False)
    chk = storage.commit(JOB, 3, {"note": "auto"})
    assert sorted(h["path"] for h in chk.handles) == sorted(h["path"] for h in handles)
    assert as_dict(storage.read_keyed_state(storage.latest(JOB), OP)) == reference(keys, vals)


def test_operator_ids_with_odd_characters(storage_factory):
    storage = storage_factory()
    t = subtask_states(*make_rows(n_rows=100), 1)[0]
    h = storage.write_keyed_state("job/with slash", 1, "op:1/../x", 0, t.snapshot(), MAXP)
    chk = storage.commit("job/with slash", 1, {}, handles=h)
    assert storage.read_keyed_state(chk, "op:1/../x").num_rows == t.num_keys
    assert storage.latest("job/with slash").checkpoint_id == 1


# ----------------------------------------------------------------------------- corrupt / partial

def _first_keyed(storage, chk_dir, handles):
    h = next(h for h in handles if h["kind"] == "keyed" and h["rows"] > 10)
    return f"{chk_dir}/{h['path']}"


def corrupt_missing_metadata(storage, chk_dir, handles):
    storage.filesystem.delete_file(f"{chk_dir}/{METADATA_FILE}")
    return "no _metadata.json"


def corrupt_truncated_file(storage, chk_dir, handles):
    path = _first_keyed(storage, chk_dir, handles)
    fs_write(storage, path, fs_read(storage, path)[:-100])
    return "truncated"


def corrupt_flipped_byte(storage, chk_dir, handles):
    path = _first_keyed(storage, chk_dir, handles)
    data = bytearray(fs_read(storage, path))
    data[len(data) // 3] ^= 0x01
    fs_write(storage, path, bytes(data))
    return "checksum mismatch"


def corrupt_missing_file(storage, chk_dir, handles):
    storage.filesystem.delete_file(_first_keyed(storage, chk_dir, handles))
    return "is missing"


def corrupt_garbage_json(storage, chk_dir, handles):
    fs_write(storage, f"{chk_dir}/{METADATA_FILE}", b'{"body": {"format": "sabot-che')
    return "unparsable"


def corrupt_edited_metadata(storage, chk_dir, handles):
    env = json.loads(fs_read(storage, f"{chk_dir}/{METADATA_FILE}"))
    env["body"]["handles"][0]["rows"] += 1  # still valid JSON, no longer what was written
    fs_write(storage, f"{chk_dir}/{METADATA_FILE}", json.dumps(env).encode())
    return "_metadata.json checksum mismatch"


def corrupt_other_jobs_metadata(storage, chk_dir, handles):
    other = write_checkpoint(storage, 2, seed=5, job="job-b")[3]
    fs_write(storage, f"{chk_dir}/{METADATA_FILE}", fs_read(storage, f"{other.path}/{METADATA_FILE}"))
    return "belongs to job 'job-b'"


def corrupt_operator_state(storage, chk_dir, handles):
    h = next(h for h in handles if h["kind"] == "operator")
    path = f"{chk_dir}/{h['path']}"
    data = fs_read(storage, path)
    fs_write(storage, path, data.replace(b"2000", b"2999"))  # same size, different bytes
    return "checksum mismatch"


@pytest.mark.parametrize("corrupt", [
    corrupt_missing_metadata, corrupt_truncated_file, corrupt_flipped_byte, corrupt_missing_file,
    corrupt_garbage_json, corrupt_edited_metadata, corrupt_other_jobs_metadata, corrupt_operator_state,
])
def test_corrupt_checkpoint_is_skipped_for_previous_good_one(storage_factory, corrupt, caplog):
    storage = storage_factory()
    keys1, vals1, _, _ = write_checkpoint(storage, 1, seed=1)
    _, _, handles2, chk2 = write_checkpoint(storage, 2, seed=2)
    reason = corrupt(storage, chk2.path, handles2)
    with caplog.at_level(logging.WARNING, logger="sabot.runtime.checkpoint_storage"):
        latest = storage.latest(JOB)
    assert latest.checkpoint_id == 1
    assert [s.checkpoint_id for s in storage.skipped] == [2]
    assert reason in storage.skipped[0].reason
    assert any("checkpoint 2" in r.getMessage() and reason in r.getMessage() for r in caplog.records)
    assert as_dict(storage.read_keyed_state(latest, OP)) == reference(keys1, vals1)
    assert [c.checkpoint_id for c in storage.list_completed(JOB)] == [1]


def test_size_only_scan_then_read_refuses_damaged_file(storage_factory):
    storage = storage_factory()
    _, _, handles, chk = write_checkpoint(storage, 1)
    corrupt_flipped_byte(storage, chk.path, handles)
    latest = storage.latest(JOB, verify_checksums=False)  # sizes still match
    assert latest.checkpoint_id == 1
    with pytest.raises(CorruptCheckpoint, match="checksum mismatch"):
        storage.read_keyed_state(latest, OP)
    assert storage.latest(JOB) is None and "checksum mismatch" in storage.skipped[0].reason


def test_no_checkpoints(storage_factory):
    storage = storage_factory()
    assert storage.latest("never-ran") is None
    assert storage.list_completed("never-ran") == [] and storage.skipped == []


# ----------------------------------------------------------------------------- commit, discard, retention

def test_nothing_visible_until_commit(storage_factory):
    storage = storage_factory()
    write_checkpoint(storage, 1)
    _, _, handles, _ = write_checkpoint(storage, 2, commit=False)
    chk_dir = storage.checkpoint_path(JOB, 2)
    assert METADATA_FILE not in names_in(storage, chk_dir)
    assert storage.latest(JOB).checkpoint_id == 1
    assert "aborted or unfinished" in storage.skipped[0].reason
    storage.commit(JOB, 2, {}, handles=handles)
    listed = names_in(storage, chk_dir)
    assert METADATA_FILE in listed and not [n for n in listed if n.endswith(".tmp")]
    assert storage.latest(JOB).checkpoint_id == 2 and storage.skipped == []


def test_failed_commit_leaves_no_checkpoint(storage_factory):
    storage = storage_factory()
    _, _, handles, _ = write_checkpoint(storage, 1, commit=False)
    storage.filesystem.delete_file(_first_keyed(storage, storage.checkpoint_path(JOB, 1), handles))
    with pytest.raises(CheckpointStorageError, match="is missing") as err:
        storage.commit(JOB, 1, {}, handles=handles)
    assert isinstance(err.value, SabotError) and isinstance(err.value, OSError)
    assert METADATA_FILE not in names_in(storage, storage.checkpoint_path(JOB, 1))
    assert storage.latest(JOB) is None


def test_commit_refuses_foreign_handles_and_double_commit(storage_factory):
    storage = storage_factory()
    _, _, handles1, _ = write_checkpoint(storage, 1)
    with pytest.raises(CheckpointStorageError, match="already committed"):
        storage.commit(JOB, 1, {}, handles=handles1)
    _, _, handles2, _ = write_checkpoint(storage, 2, commit=False)
    with pytest.raises(CheckpointStorageError, match="written for job 'job-a' checkpoint 1"):
        storage.commit(JOB, 2, {}, handles=handles2 + handles1[:1])
    bad = dict(handles2[0], path="../chk-1/" + handles2[0]["path"])
    with pytest.raises(CheckpointStorageError, match="not inside the checkpoint directory"):
        storage.commit(JOB, 2, {}, handles=[bad])
    with pytest.raises(CheckpointInputError, match="JSON"):
        storage.commit(JOB, 2, {"obj": object()}, handles=handles2)


def test_discard(storage_factory):
    storage = storage_factory()
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2, commit=False)
    assert storage.discard(JOB, 2) is True
    assert storage.filesystem.get_file_info(storage.checkpoint_path(JOB, 2)).type == pafs.FileType.NotFound
    assert storage.discard(JOB, 2) is False
    with pytest.raises(CheckpointStorageError, match="is committed"):
        storage.discard(JOB, 1)
    assert storage.latest(JOB).checkpoint_id == 1
    assert storage.discard(JOB, 1, force=True) is True
    assert storage.latest(JOB) is None


def test_retention_keeps_last_n_and_drops_stale_incomplete(storage_factory):
    storage = storage_factory(retain=2)
    write_checkpoint(storage, 1)
    write_checkpoint(storage, 2)
    write_checkpoint(storage, 3, commit=False)  # aborted, never cleaned up by its owner
    write_checkpoint(storage, 4)
    write_checkpoint(storage, 6, commit=False)  # still in progress (newer than any completed)
    write_checkpoint(storage, 5)

    def dirs():
        return sorted(int(n[4:]) for n in names_in(storage, storage.job_path(JOB)) if "/" not in n)

    assert dirs() == [4, 5, 6]
    assert [c.checkpoint_id for c in storage.list_completed(JOB)] == [5, 4]
    write_checkpoint(storage, 7)
    assert dirs() == [5, 7]  # 6 was incomplete and is now older than the newest completed


def test_jobs_are_independent(storage_factory):
    storage = storage_factory(retain=1)
    write_checkpoint(storage, 1, job="a")
    write_checkpoint(storage, 1, job="b")
    write_checkpoint(storage, 2, job="a")
    assert storage.latest("a").checkpoint_id == 2
    assert storage.latest("b").checkpoint_id == 1


# ----------------------------------------------------------------------------- bad input

def test_bad_input_is_named(tmp_path):
    storage = CheckpointStorage(tmp_path)
    good = subtask_states(*make_rows(n_rows=50), 1)[0].snapshot()
    with pytest.raises(CheckpointInputError, match="_key_group"):
        storage.write_keyed_state(JOB, 1, OP, 0, good.drop_columns(["_key_group"]), MAXP)
    with pytest.raises(CheckpointInputError, match="must be int32, got int64"):
        storage.write_keyed_state(
            JOB, 1, OP, 0, good.set_column(1, "_key_group", good["_key_group"].cast(pa.int64())), MAXP)
    with pytest.raises(CheckpointInputError, match=r"\[0, 16\)"):
        storage.write_keyed_state(JOB, 1, OP, 0, good, 16)
    with pytest.raises(CheckpointInputError, match="max_parallelism"):
        storage.write_keyed_state(JOB, 1, OP, 0, good, 0)
    with pytest.raises(CheckpointInputError, match="checkpoint_id"):
        storage.write_keyed_state(JOB, -1, OP, 0, good, MAXP)
    with pytest.raises(CheckpointInputError, match="operator_id"):
        storage.write_keyed_state(JOB, 1, "", 0, good, MAXP)
    with pytest.raises(CheckpointInputError, match="pyarrow Table"):
        storage.write_keyed_state(JOB, 1, OP, 0, {"a": 1}, MAXP)
    with pytest.raises(CheckpointInputError, match="dict"):
        storage.write_operator_state(JOB, 1, OP, 0, [1, 2])
    with pytest.raises(CheckpointInputError, match="cannot store a object"):
        storage.write_operator_state(JOB, 1, OP, 0, {"x": object()})
    with pytest.raises(CheckpointInputError, match="retain"):
        CheckpointStorage(tmp_path, retain=0)
    h = storage.write_keyed_state(JOB, 1, OP, 0, good, MAXP)
    chk = storage.commit(JOB, 1, {}, handles=h)
    with pytest.raises(CheckpointInputError, match="0 <= start <= stop <= max_parallelism=128"):
        storage.read_keyed_state(chk, OP, (10, 200))
    with pytest.raises(CheckpointInputError, match="one entry per key group"):
        storage.read_keyed_state(chk, OP, np.ones(5, dtype=bool))


def test_sliced_and_chunked_input_and_handles_in_metadata(storage_factory):
    storage = storage_factory(target_file_rows=200)
    snap = subtask_states(*make_rows(n_rows=5_000, n_keys=2_000), 1)[0].snapshot()
    piece = pa.concat_tables([snap.slice(17, 400), snap.slice(900, 333)])  # offsets + 2 chunks
    assert piece.column("_key_group").num_chunks == 2
    handles = storage.write_keyed_state(JOB, 1, OP, 0, piece, MAXP)
    assert len(handles) > 1 and sum(h["rows"] for h in handles) == piece.num_rows
    chk = storage.commit(JOB, 1, {"handles": handles, "note": 1})
    assert chk.metadata == {"note": 1}
    assert as_dict(storage.read_keyed_state(storage.latest(JOB), OP)) == as_dict(piece)
    lo = sorted(piece.column("_key_group").to_pylist())[len(handles)]
    part = storage.read_keyed_state(chk, OP, (0, lo))
    d = piece.to_pydict()
    assert as_dict(part) == {k: (r, s) for k, g, r, s in zip(d["key"], d["_key_group"], d["_rows"], d["_sum_v"])
                             if g < lo}


def test_concurrent_subtask_writers_in_one_process(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    storage = CheckpointStorage(tmp_path)
    keys, vals = make_rows()
    tables = subtask_states(keys, vals, 4)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda s: storage.write_keyed_state(JOB, 1, OP, s, tables[s].snapshot(), MAXP),
                      range(4)))
    chk = storage.commit(JOB, 1, {})  # the handles every thread recorded
    assert sorted({h["subtask_index"] for h in chk.handles}) == [0, 1, 2, 3]
    assert as_dict(storage.read_keyed_state(storage.latest(JOB), OP)) == reference(keys, vals)

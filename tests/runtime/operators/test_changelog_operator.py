"""The changelog operator (upsert rows in, +I/-U/+U/-D rows out) against a plain Python model
of Flink's semantics, its invariants, and a restore at another parallelism."""

import numpy as np
import pyarrow as pa
import pytest
from harness import feed, finish, make_op, restore_midway

from sabot.errors import OperatorError
from sabot.runtime import changelog as cl

KINDS = {0: "+I", 1: "-U", 2: "+U", 3: "-D"}


def model(batches, key, count_column=None):
    """The changelog Flink's semantics give, computed row by row in Python: per batch each key's
    last row; +I for a new key, -U old / +U new for a changed row, nothing for an equal one,
    -D old when the count is 0."""
    last, out = {}, []
    for batch in batches:
        rows = batch.to_pylist()
        final = {}
        for i, r in enumerate(rows):
            final[tuple(r[k] for k in key)] = (i, r)
        for k, (_, r) in sorted(final.items(), key=lambda kv: kv[1][0]):
            gone = count_column is not None and not r[count_column]
            r = {n: v for n, v in r.items() if n != count_column}
            if k in last:
                if gone:
                    out.append(("-D", last.pop(k)))
                elif r != last[k]:
                    out += [("-U", last[k]), ("+U", r)]
                    last[k] = r
            elif not gone:
                out.append(("+I", r))
                last[k] = r
    return out


def rows_of(outputs):
    return [(KINDS[r.pop(cl.OP)], r) for b in outputs for r in b.to_pylist()]


def upserts(seed, batches=40, size=50, keys=30):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        k = rng.integers(0, keys, size)
        v = rng.integers(0, 4, size)  # few values: many rows equal their key's last one
        n = rng.integers(0, 3, size)  # 0: the key is gone
        name = pa.array([None if x == 1 else f"s{x}" for x in rng.integers(0, 3, size)])  # nulls compare equal
        out.append(pa.record_batch({"k": k, "v": v, "s": name, "n": n}))
    return out


def check_invariants(rows, key):
    """Applying the changelog in order per key: +I only for an absent key, -U/-D withdraw exactly
    the key's present row, +U right after the key's -U."""
    present, pending = {}, set()
    for kind, r in rows:
        k = tuple(r[c] for c in key)
        if kind == "+I":
            assert k not in present and k not in pending
            present[k] = r
        elif kind in ("-U", "-D"):
            assert present.get(k) == r, (kind, r, present.get(k))
            del present[k]
            if kind == "-U":
                pending.add(k)
        else:
            assert k in pending and k not in present
            pending.discard(k)
            present[k] = r
    assert not pending
    return present


def test_matches_the_python_model_with_deletes_and_unchanged_rows():
    batches = upserts(1)
    op = make_op("process", {"kind": "changelog", "key": ["k"], "count_column": "n"}, key_by=["k"])
    got = rows_of(feed([op], [(0, b) for b in batches], {0: ["k"]}) + finish([op]))
    expected = model(batches, ["k"], "n")
    assert got == expected
    kinds = {k for k, _ in got}
    assert kinds == {"+I", "-U", "+U", "-D"}
    # an unchanged row emits nothing: fewer changes than incoming rows with a live count
    assert len(got) < sum(int(np.count_nonzero(b["n"].to_numpy())) for b in batches)
    present = check_invariants(got, ["k"])
    table = pa.Table.from_pylist([dict(r, **{cl.OP: cl.KIND_NAMES.index(k)}) for k, r in got])
    assert sorted(map(str, cl.materialise(table).to_pylist())) == sorted(map(str, present.values()))


def test_a_key_of_several_columns_routed_by_a_prefix():
    batches = [b.append_column("k2", pa.array(np.asarray(b["v"]) % 2)) for b in upserts(2)]
    op = make_op("process", {"kind": "changelog", "key": ["k", "k2"]}, key_by=["k"])
    got = rows_of(feed([op], [(0, b.drop_columns(["n"])) for b in batches], {0: ["k"]}))
    assert got == model([b.drop_columns(["n"]) for b in batches], ["k", "k2"])
    check_invariants(got, ["k", "k2"])


@pytest.mark.parametrize("old_p,new_p", [(1, 2), (2, 3), (3, 1)])
def test_restore_at_another_parallelism_continues_exactly(tmp_path, old_p, new_p):
    batches = upserts(3, batches=60)
    events = [(0, b) for b in batches]

    def make(i, p):
        return make_op("process", {"kind": "changelog", "key": ["k"], "count_column": "n"}, key_by=["k"],
                       subtask=i, parallelism=p)

    restored = rows_of(restore_midway(tmp_path, make, events, {0: ["k"]}, old_p, new_p))
    expected = model(batches, ["k"], "n")
    # per key the changelog is the model's, in order (keys interleave differently across subtasks)
    by_key = {}
    for kind, r in restored:
        by_key.setdefault(r["k"], []).append((kind, r))
    want = {}
    for kind, r in expected:
        want.setdefault(r["k"], []).append((kind, r))
    assert by_key == want and len(expected) > 200


def test_bad_parameters_and_a_changelog_input_are_refused():
    with pytest.raises(OperatorError, match="needs key"):
        make_op("process", {"kind": "changelog"}, key_by=["k"])
    with pytest.raises(OperatorError, match="prefix"):
        make_op("process", {"kind": "changelog", "key": ["a", "k"]}, key_by=["k"])
    op = make_op("process", {"kind": "changelog", "key": ["k"]}, key_by=["k"])
    with pytest.raises(OperatorError, match="changelog already"):
        op.process(pa.record_batch({"k": [1], cl.OP: pa.array([0], pa.int8())}), 0)


def test_materialise_refuses_a_withdrawal_of_an_absent_row():
    t = pa.table({"k": [1, 1], cl.OP: pa.array([0, 3], pa.int8())})
    assert cl.materialise(t).num_rows == 0
    with pytest.raises(ValueError, match="never added"):
        cl.materialise(pa.table({"k": [1, 2], cl.OP: pa.array([0, 3], pa.int8())}))
    with pytest.raises(ValueError, match="kinds are"):
        cl.materialise(pa.table({"k": [1], cl.OP: pa.array([7], pa.int8())}))


def test_append_only_sinks_refuse_a_changelog_stream(tmp_path):
    from sabot import Stream
    from sabot.errors import GraphValidationError
    from sabot.runtime.embedded import run_job_graph

    t = pa.table({"k": [1, 2, 1], "v": [1, 2, 3]})
    log = Stream.from_table(t, batch_size=1).key_by("k").aggregate({"v": "sum"}, emit="updates").key_by(
        "k").changelog()
    assert log.schema.field(cl.OP).type == pa.int8()
    with pytest.raises(GraphValidationError, match="append-only"):
        log.to_parquet(str(tmp_path / "out"))
    with pytest.raises(GraphValidationError, match="append-only"):
        log.to_postgres("dbname=x", "t")
    # one update per input batch: the rows of each batch travel alone (output_coalesce_rows=0), as the
    # operator folds the updates of one key within a batch
    result = run_job_graph(log.collect(name="c").to_job_graph(output_coalesce_rows=0), timeout=60)
    raw = result.changelog("c")
    assert [(cl.KIND_NAMES[r.pop(cl.OP)], r) for r in raw.to_pylist()] == [
        ("+I", {"k": 1, "v_sum": 1}), ("+I", {"k": 2, "v_sum": 2}), ("-U", {"k": 1, "v_sum": 1}),
        ("+U", {"k": 1, "v_sum": 4})]
    assert sorted(result.table("c").to_pylist(), key=lambda r: r["k"]) == [{"k": 1, "v_sum": 4}, {"k": 2, "v_sum": 2}]


def random_changelog(rng, batches, size, keys):
    """Valid changelog batches (a withdrawal is always of a row present then, sometimes one added
    earlier in the same batch) and the multiset of rows they leave."""
    present, out = [], []
    for _ in range(batches):
        rows, ops = [], []
        for _ in range(size):
            if present and rng.random() < 0.4:
                r = present.pop(int(rng.integers(0, len(present))))
                rows.append(r)
                ops.append(int(rng.choice([cl.UPDATE_BEFORE, cl.DELETE])))
            else:
                r = {"k": int(rng.integers(0, keys)) if rng.random() > 0.02 else None, "v": int(rng.integers(0, 3))}
                present.append(r)
                rows.append(r)
                ops.append(int(rng.choice([cl.INSERT, cl.UPDATE_AFTER])))
        t = pa.Table.from_pylist(rows, schema=pa.schema([("k", pa.int64()), ("v", pa.int64())]))
        out.append(t.append_column(cl.OP, pa.array(ops, pa.int8())).to_batches()[0])
    return out, present


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_inner_join_of_changelogs_equals_the_join_of_what_they_leave(seed):
    from sabot.execution.operator_spec import encode_schema

    rng = np.random.default_rng(seed)
    left, left_rows = random_changelog(rng, 30, 20, 8)
    right, right_rows = random_changelog(rng, 30, 20, 8)
    schema = pa.schema([("k", pa.int64()), ("v", pa.int64())])
    params = {"kind": "regular", "how": "inner", "left": "L", "right": "R", "left_on": ["k"], "right_on": ["k"],
              "left_names": ["k", "v"], "right_names": ["k_right", "v_right"], "changelog": True,
              "left_schema": encode_schema(schema), "right_schema": encode_schema(schema)}
    op = make_op("join", params, key_by=["k"], inputs=("L", "R"))
    events = [e for pair in zip([(0, b) for b in left], [(1, b) for b in right]) for e in pair]
    out = feed([op], events, {0: ["k"], 1: ["k"]})
    got = cl.materialise(pa.concat_tables([pa.Table.from_batches([b]) for b in out]))  # raises on a bad withdrawal
    kinds = set(pa.concat_tables([pa.Table.from_batches([b]) for b in out]).column(cl.OP).to_pylist())
    assert kinds == {cl.INSERT, cl.DELETE}
    expected = [{"k": a["k"], "v": a["v"], "k_right": b["k"], "v_right": b["v"]}
                for a in left_rows for b in right_rows if a["k"] is not None and a["k"] == b["k"]]
    assert sorted(map(str, got.to_pylist())) == sorted(map(str, expected)) and len(expected) > 20

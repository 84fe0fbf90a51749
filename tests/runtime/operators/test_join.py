"""Enrichment join against a static table, compared with a plain-Python lookup."""

import numpy as np
import pyarrow as pa
import pytest

from sabot.errors import OperatorError
from sabot.runtime.tables import TableStore, new_ref
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.runtime.operators.join import LookupJoin



STORE = TableStore()  # the tables the operators refer to, as a worker's store holds them


def table_ref(table):
    ref = new_ref(table)
    STORE.put(ref["table_id"], table)
    return ref

def make_join(table, on, right_on=None, how="inner", suffix=None, name="enrich"):
    params = {"table": table_ref(table), "on": on, "right_on": right_on, "how": how}
    if suffix is not None:
        params["suffix"] = suffix
    ctx = TaskContext(
        job_id="job", task_id=f"{name}-0", attempt=0,
        operator={"name": name, "operator_type": "join", "key_by": None, "function": None,
                  "parameters": params},
        subtask_index=0, parallelism=1, max_parallelism=128, tables=STORE,
    )
    op = create_operator(ctx)
    op.open()
    return op


def run(op, batches):
    out = []
    for b in batches:
        out += op.process(b, 0)
    out += op.finish()
    return [row for b in out for row in b.to_pylist()]


def python_join(stream_rows, table_rows, on, right_on, how, rename):
    """Reference: a dict from key tuple to the table row (null keys never match)."""
    lookup = {}
    for r in table_rows:
        key = tuple(r[c] for c in right_on)
        if None not in key:
            lookup[key] = r
    extra = [c for c in table_rows[0] if c not in right_on] if table_rows else []
    out = []
    for s in stream_rows:
        key = tuple(s[c] for c in on)
        match = lookup.get(key) if None not in key else None
        if match is None and how == "inner":
            continue
        row = dict(s)
        for c in extra:
            row[rename.get(c, c)] = None if match is None else match[c]
        out.append(row)
    return out


def stream_batches(n=500, size=64, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 150, n)
    table = pa.table({
        "user": pa.array(keys, mask=rng.random(n) < 0.05),
        "region": pa.array(rng.choice(["eu", "us", "ap"], n)),
        "amount": rng.random(n),
    })
    return table.to_batches(max_chunksize=size)


def dim_table():
    users = np.arange(0, 200, 2)  # only even users exist
    return pa.table({
        "user": users,
        "name": [f"user{u}" for u in users],
        "score": pa.array(users * 1.5),
        "amount": users % 7,  # clashes with the stream's column
    })


@pytest.mark.parametrize("how", ["inner", "left"])
def test_single_key_join_matches_python(how):
    batches = stream_batches()
    dim = dim_table()
    op = make_join(dim, ["user"], how=how)
    assert isinstance(op, LookupJoin)
    got = run(op, batches)
    stream_rows = [r for b in batches for r in b.to_pylist()]
    expected = python_join(stream_rows, dim.to_pylist(), ["user"], ["user"], how, {"amount": "amount_right"})
    assert got == expected  # same rows, same (stream) order
    assert list(got[0]) == ["user", "region", "amount", "name", "score", "amount_right"]


@pytest.mark.parametrize("how", ["inner", "left"])
def test_multi_column_keys_with_right_on_and_type_cast(how):
    rng = np.random.default_rng(4)
    n = 300
    stream = pa.table({
        "uid": pa.array(rng.integers(0, 20, n), type=pa.int32()),
        "reg": pa.array(rng.choice(["eu", "us", None], n)),
        "x": np.arange(n),
    })
    dim = pa.table({
        "id": pa.array([u for u in range(0, 20) for _ in range(2)], type=pa.int64()),
        "region": ["eu", "us"] * 20,
        "label": [f"{u}-{r}" for u in range(20) for r in ("eu", "us")],
    }).slice(0, 30)  # users 15..19 have no rows
    op = make_join(dim, ["uid", "reg"], right_on=["id", "region"], how=how)
    got = run(op, stream.to_batches(max_chunksize=50))
    expected = python_join(stream.to_pylist(), dim.to_pylist(), ["uid", "reg"], ["id", "region"], how, {})
    assert got == expected


def test_hash_join_fallback_gives_the_same_result():
    batches = stream_batches(seed=9)
    dim = dim_table()
    fast = run(make_join(dim, ["user"], how="left"), batches)
    op = make_join(dim, ["user"], how="left")
    op.collisions = True  # the path taken when two table keys share a 64-bit hash
    assert run(op, batches) == fast


def test_dictionary_encoded_stream_key():
    dim = pa.table({"code": ["a", "b", "c"], "v": [1, 2, 3]})
    stream = pa.record_batch({"code": pa.array(["c", "x", "a", None]).dictionary_encode()})
    got = run(make_join(dim, ["code"], how="left"), [stream])
    assert [r["v"] for r in got] == [3, None, 1, None]


def test_null_table_keys_never_match_and_empty_table():
    dim = pa.table({"k": [1, None, 2], "v": ["one", "null", "two"]})
    stream = pa.record_batch({"k": [None, 2, 1, 3]})
    assert run(make_join(dim, ["k"], how="left"), [stream]) == [
        {"k": None, "v": None}, {"k": 2, "v": "two"}, {"k": 1, "v": "one"}, {"k": 3, "v": None}]
    empty = dim.slice(0, 0)
    assert run(make_join(empty, ["k"], how="inner"), [stream]) == []
    assert [r["v"] for r in run(make_join(empty, ["k"], how="left"), [stream])] == [None] * 4


def test_duplicate_table_keys_are_refused_at_open():
    dim = pa.table({"k": [1, 2, 2, 3, 3, 3], "v": list("abcdef")})
    with pytest.raises(OperatorError, match=r"2 key value\(s\) appear more than once in the static table's \['k'\].*unique keys"):
        make_join(dim, ["k"])


def test_bad_columns_and_parameters():
    dim = dim_table()
    with pytest.raises(OperatorError, match=r"right_on column\(s\) \['nope'\].*available columns: \['user', 'name'"):
        make_join(dim, ["user"], right_on=["nope"])
    op = make_join(dim, ["usr"], right_on=["user"])
    with pytest.raises(OperatorError, match=r"'on' column\(s\) \['usr'\] not in the stream; available columns: \['user'"):
        op.process(stream_batches()[0], 0)
    with pytest.raises(OperatorError, match="unknown join type how='outer'"):
        make_join(dim, ["user"], how="outer")
    with pytest.raises(OperatorError, match="pair up"):
        make_join(dim, ["user", "region"], right_on=["user"])
    op = make_join(pa.table({"user": ["a"], "v": [1]}), ["user"])
    with pytest.raises(OperatorError, match="stream key 'user' has type int64 but table key 'user' has type string"):
        op.process(stream_batches()[0], 0)
    op = make_join(dim, ["user"], suffix="_x")
    with pytest.raises(OperatorError, match="would be named 'amount_x'"):
        op.process(pa.record_batch({"user": [1], "amount": [1.0], "amount_x": [2.0]}), 0)


def test_left_join_value_columns_of_many_types():
    # nulls inside the table's values, bools, strings, lists, dictionaries: all must come
    # through the left join with the unmatched rows null
    dim = pa.table({
        "k": [1, 2, 3, 4],
        "f": pa.array([1.5, None, 3.5, 4.5]),
        "b": [True, False, None, True],
        "s": ["a", "bb", None, "dddd"],
        "l": pa.array([[1], [], None, [4, 4]]),
        "d": pa.array(["x", "y", "x", None]).dictionary_encode(),
    })
    stream = pa.record_batch({"k": [4, 9, 2, 3, 1, None, 2]})
    got = run(make_join(dim, ["k"], how="left"), [stream])
    expected = python_join(stream.to_pylist(), dim.to_pylist(), ["k"], ["k"], "left", {})
    assert got == expected

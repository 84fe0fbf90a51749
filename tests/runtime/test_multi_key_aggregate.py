"""Keyed running aggregation over several key columns (packed keys).

Every result is compared with ``pyarrow.Table.group_by([...])`` on the same rows:
end to end through the Stream API at parallelism 1, 2 and 4 (final results and
updates), at the operator level through a snapshot written with the real
CheckpointStorage and restored at another parallelism, through the rescale
hand-off path (split by key groups, shipped as IPC, merged), and live, while the
job runs, with the TaskManager driven in the coordinator's role.
"""

import asyncio

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot import Stream
from sabot._core import partition
from sabot._core.state import unpack_keys
from sabot.errors import GraphValidationError, OperatorError
from sabot.runtime.checkpoint_storage import CheckpointStorage
from sabot.runtime.operators.aggregate import KEY_SCHEMA_METADATA, PACKED_KEY
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.testing import assert_tables_equal, run_stream

MAXP = 128
AGGS = {"v": ["count", "sum", "min", "max", "mean"], "w": ["sum", "max"], "*": ["count"]}

SCHEMAS = {
    "int32+string": [("a", pa.int32()), ("b", pa.string())],
    "int64+large_string+date32": [("a", pa.int64()), ("b", pa.large_string()), ("c", pa.date32())],
}


def random_table(keys, n, seed, null_share=0.08):
    """Random rows: few distinct keys per column (so groups repeat), nulls in keys and values."""
    rng = np.random.default_rng(seed)
    cols = {}
    for name, t in keys:
        nulls = rng.random(n) < null_share
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            words = np.array(["", "x", "yy", "zzz", "longer key ✓", "a\0b"], dtype=object)
            vals = words[rng.integers(0, len(words), n)]
        elif pa.types.is_date32(t):
            vals = rng.integers(18_000, 18_006, n).astype(np.int32)
        else:
            vals = rng.integers(-3, 5, n)
        cols[name] = pa.array(vals, mask=nulls).cast(t)
    cols["v"] = pa.array(rng.random(n), mask=rng.random(n) < 0.1)
    cols["w"] = pa.array(rng.integers(-1000, 1000, n), mask=rng.random(n) < 0.1)
    return pa.table(cols)


def reference(table, keys, aggs=AGGS):
    """pyarrow group_by, with Sabot's output names and order."""
    spec, names, arrow_names = [], [], []
    for col, fns in aggs.items():
        for fn in fns:
            if col == "*":
                spec.append(([], "count_all"))
                names.append("count")
                arrow_names.append("count_all")
            else:
                spec.append((col, fn))
                names.append(f"{col}_{fn}")
                arrow_names.append(f"{col}_{fn}")
    res = table.group_by(keys, use_threads=False).aggregate(spec)
    return res.select(keys + arrow_names).rename_columns(keys + names)


# -- end to end through the Stream API --------------------------------------------------


@pytest.mark.parametrize("layout", list(SCHEMAS))
@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_final_results_equal_group_by(layout, parallelism):
    fields = SCHEMAS[layout]
    keys = [k for k, _ in fields]
    t = random_table(fields, 12_000, seed=parallelism + len(keys))
    out = run_stream(Stream.from_table(t, batch_size=1000).key_by(*keys).aggregate(AGGS),
                     default_parallelism=parallelism)
    expected = reference(t, keys)
    # key columns keep their names and types
    assert out.schema.names[: len(keys)] == keys
    assert [out.schema.field(k).type for k in keys] == [t for _, t in fields]
    assert_tables_equal(out, expected, sort_by=keys)


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_updates_end_with_the_final_values(parallelism):
    fields = SCHEMAS["int64+large_string+date32"]
    keys = [k for k, _ in fields]
    t = random_table(fields, 6000, seed=11)
    aggs = {"*": ["count"], "v": ["sum"], "w": ["min"]}
    out = run_stream(Stream.from_table(t, batch_size=500).key_by(*keys).aggregate(aggs, emit="updates"),
                     default_parallelism=parallelism)
    expected = reference(t, keys, aggs)
    # every update row is a key's state after some batch; the row count only grows,
    # so each key's largest count is its final row
    assert out.num_rows > expected.num_rows  # keys were updated more than once
    last = {}
    for row in out.to_pylist():   # (a join would not match null keys)
        k = tuple(row[c] for c in keys)
        if k not in last or row["count"] > last[k]["count"]:
            last[k] = row
    final = pa.Table.from_pylist(list(last.values()), schema=out.schema)
    assert_tables_equal(final, expected, sort_by=keys)


def test_dictionary_and_boolean_keys():
    n = 5000
    rng = np.random.default_rng(3)
    t = pa.table({
        "d": pa.array(np.array(["red", "green", "blue"])[rng.integers(0, 3, n)]).dictionary_encode(),
        "f": pa.array(rng.random(n) < 0.5, mask=rng.random(n) < 0.1),
        "v": rng.random(n),
    })
    out = run_stream(Stream.from_table(t, batch_size=700).key_by("d", "f").aggregate({"v": ["sum", "count"]}),
                     default_parallelism=2)
    assert out.schema.field("d").type == t.schema.field("d").type
    plain = t.set_column(0, "d", t["d"].cast(pa.string()))
    expected = reference(plain, ["d", "f"], {"v": ["sum", "count"]})
    got = out.set_column(0, "d", out["d"].cast(pa.string()))
    assert_tables_equal(got, expected, sort_by=["d", "f"])

    # a single dictionary key goes through packed keys as well
    out1 = run_stream(Stream.from_table(t, batch_size=700).key_by("d").aggregate({"v": "sum"}))
    exp1 = reference(plain, ["d"], {"v": ["sum"]})
    assert_tables_equal(out1.set_column(0, "d", out1["d"].cast(pa.string())), exp1, sort_by=["d"])


def test_float_key_is_refused_at_build_time():
    t = pa.table({"a": [1, 2], "x": [0.5, 1.5], "v": [1.0, 2.0]})
    with pytest.raises(GraphValidationError, match=r"'x'.*floating-point"):
        Stream.from_table(t).key_by("a", "x").aggregate({"v": "sum"})


def test_key_named_like_an_aggregate_output_is_refused():
    t = pa.table({"a": [1, 2], "count": [3, 4], "v": [1.0, 2.0]})
    with pytest.raises(GraphValidationError, match=r"'count'.*twice"):
        Stream.from_table(t).key_by("a", "count").aggregate({"*": "count"})


# -- operator level: checkpoints and rescaling -------------------------------------------


def aggregate_operator(keys, aggs=AGGS, emit="final"):
    specs = [[c, fn] for c, fns in aggs.items() for fn in fns]
    return {"name": "agg", "operator_id": "agg-op", "operator_type": "aggregate", "key_by": list(keys),
            "function": None, "parameters": {"aggregates": specs, "emit": emit}}


def make_op(operator, subtask, parallelism):
    ctx = TaskContext(job_id="job", task_id=f"agg-{subtask}", attempt=0, operator=operator,
                      subtask_index=subtask, parallelism=parallelism, max_parallelism=MAXP)
    op = create_operator(ctx)
    op.open()
    return op


def route(batch, keys, parallelism):
    """Split a batch by key group as the hash exchange does (default key-group ranges)."""
    kg = partition.key_groups(partition.hash_columns(batch, keys), MAXP)
    owner = np.empty(MAXP, dtype=np.int64)
    for i in range(parallelism):
        start, stop = partition.key_group_range(i, MAXP, parallelism)
        owner[start:stop] = i
    dest = owner[kg]
    return [batch.filter(pa.array(dest == i)) for i in range(parallelism)]


def feed(ops, batches, keys):
    for batch in batches:
        for op, part in zip(ops, route(batch, keys, len(ops))):
            if part.num_rows:
                op.process(part, 0)


def finish_all(ops):
    return pa.Table.from_batches([b for op in ops for b in op.finish()])


def ipc_round_trip(table):
    """What the network channel does to a batch: an IPC stream, schema metadata included."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


@pytest.mark.parametrize("layout", list(SCHEMAS))
@pytest.mark.parametrize("old_p,new_p", [(1, 1), (1, 3), (2, 1), (4, 2)])
def test_checkpoint_restore_at_other_parallelism_equals_uninterrupted(tmp_path, layout, old_p, new_p):
    fields = SCHEMAS[layout]
    keys = [k for k, _ in fields]
    t = random_table(fields, 8000, seed=old_p * 10 + new_p)
    batches = t.to_batches(max_chunksize=500)
    cut = len(batches) // 2
    expected = reference(t, keys)

    plain = [make_op(aggregate_operator(keys), i, old_p) for i in range(old_p)]
    feed(plain, batches, keys)
    assert_tables_equal(finish_all(plain), expected, sort_by=keys)

    old = [make_op(aggregate_operator(keys), i, old_p) for i in range(old_p)]
    feed(old, batches[:cut], keys)
    storage = CheckpointStorage(str(tmp_path / "chk"))
    for sub, op in enumerate(old):
        snap = op.snapshot_state(5)
        keyed = snap["keyed"]
        assert keyed.schema.field(PACKED_KEY).type == pa.large_binary()
        assert KEY_SCHEMA_METADATA in keyed.schema.metadata
        # each row's key group is the one the exchange computes from the key values
        cols = unpack_keys(keyed[PACKED_KEY], [ty for _, ty in fields])
        kg = partition.key_groups(partition.hash_columns(pa.table(dict(zip(keys, cols))), keys), MAXP)
        np.testing.assert_array_equal(kg, keyed["_key_group"].to_numpy())
        storage.write_keyed_state("job", 5, "agg-op", sub, keyed, MAXP)
    checkpoint = storage.commit("job", 5)

    # fresh operators at the new parallelism; some only get state, never a batch,
    # for a few key groups: they still emit their keys with the right types
    new = [make_op(aggregate_operator(keys), i, new_p) for i in range(new_p)]
    for sub, op in enumerate(new):
        mine = partition.key_group_range(sub, MAXP, new_p)
        op.restore_state(storage.read_keyed_state(checkpoint, "agg-op", mine), None, 5)
    feed(new, batches[cut:], keys)
    assert_tables_equal(finish_all(new), expected, sort_by=keys)


def test_state_only_operator_emits_typed_keys():
    """A restored subtask that never sees a batch unpacks keys from the snapshot's schema."""
    fields = SCHEMAS["int64+large_string+date32"]
    keys = [k for k, _ in fields]
    t = random_table(fields, 3000, seed=5)
    old = make_op(aggregate_operator(keys), 0, 1)
    feed([old], t.to_batches(max_chunksize=400), keys)
    snap = ipc_round_trip(old.snapshot_state(1)["keyed"])
    new = make_op(aggregate_operator(keys), 0, 1)
    new.restore_state(snap, None, 1)
    out = finish_all([new])
    assert [out.schema.field(k).type for k in keys] == [ty for _, ty in fields]
    assert_tables_equal(out, reference(t, keys), sort_by=keys)


@pytest.mark.parametrize("old_p,new_p", [(2, 3), (3, 1), (1, 4)])
def test_rescale_handoff_split_ship_merge_equals_uninterrupted(old_p, new_p):
    """The live-rescale path: split_state_table by the new assignment, IPC, restore_state."""
    fields = SCHEMAS["int32+string"]
    keys = [k for k, _ in fields]
    t = random_table(fields, 9000, seed=old_p + 7 * new_p)
    batches = t.to_batches(max_chunksize=600)
    cut = len(batches) // 3
    old = [make_op(aggregate_operator(keys), i, old_p) for i in range(old_p)]
    feed(old, batches[:cut], keys)
    received = [[] for _ in range(new_p)]
    for op in old:
        keyed = op.snapshot_state(0)["keyed"]
        for target, part in enumerate(partition.split_state_table(keyed, new_p, max_parallelism=MAXP)):
            if part.num_rows:
                received[target].extend(ipc_round_trip(part).to_batches())
    new = [make_op(aggregate_operator(keys), i, new_p) for i in range(new_p)]
    for op, parts in zip(new, received):
        if parts:
            op.restore_state(pa.Table.from_batches(parts), None, 0)
    feed(new, batches[cut:], keys)
    assert_tables_equal(finish_all(new), reference(t, keys), sort_by=keys)


def test_batch_with_a_different_key_type_is_refused():
    op = make_op(aggregate_operator(["a", "b"], {"v": ["sum"]}), 0, 1)
    op.process(pa.record_batch({"a": pa.array([1], pa.int32()), "b": ["x"], "v": [1.0]}), 0)
    # string -> large_string packs the same bytes: accepted
    op.process(pa.record_batch({"a": pa.array([1], pa.int32()), "b": pa.array(["x"], pa.large_string()),
                                "v": [2.0]}), 0)
    with pytest.raises(OperatorError, match=r"'a' has type int64 in this batch but int32"):
        op.process(pa.record_batch({"a": pa.array([1], pa.int64()), "b": ["x"], "v": [1.0]}), 0)
    out = finish_all([op])
    assert out.to_pydict() == {"a": [1], "b": ["x"], "v_sum": [3.0]}


# -- live rescale inside the runtime -------------------------------------------------------


def add_second_key(batch):
    """Module-level map (shippable by reference): value2 and a string key beside the int key."""
    import time

    time.sleep(0.002)
    key = batch.column("key")
    tag = pc.binary_join_element_wise("t", pc.cast(pc.bit_wise_and(key, 3), pa.string()), "")
    return pa.record_batch([key, tag, pc.multiply(batch.column("value"), 2.0)],
                           names=["key", "tag", "value2"])


def test_live_rescale_of_a_multi_key_aggregate_keeps_exact_result():
    from sabot.execution.deployment import build_deployment_descriptors
    from sabot.execution.rescale import build_rescale_messages
    from sabot.runtime.data_server import DataServer
    from sabot.runtime.embedded import gather_results
    from sabot.runtime.generators import keyed_records
    from sabot.runtime.tables import TableStore
    from sabot.runtime.task_manager import TaskManager

    total = 200_000
    job = (
        Stream.from_generator(keyed_records, total_rows=total, batch_size=1024,
                              parameters={"num_keys": 300}, name="source").parallelism(1)
        .map("test_multi_key_aggregate:add_second_key", name="map").parallelism(2)
        .key_by("key", "tag")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate").parallelism(2)
        .collect(name="sink").parallelism(1)
    ).to_job_graph("rescale-multi", default_parallelism=2)

    async def run():
        server = DataServer()
        failures = []
        manager = TaskManager(server, tables=TableStore(job.tables),
                              on_update=lambda s: s.state.value == "FAILED" and failures.append(s))
        exec_graph = job.to_execution_graph()
        op_id = next(op for op, node in job.operators.items() if node.name == "aggregate")
        try:
            for tdd in build_deployment_descriptors(exec_graph, job.job_id).values():
                await manager.deploy(tdd)
            for n, p in enumerate([3, 1]):
                await asyncio.sleep(0.08)
                plan = exec_graph.rescale_operator(op_id, p)
                msgs = build_rescale_messages(exec_graph, job.job_id, op_id, plan, f"r{n}")
                for tdd in msgs.deploy.values():
                    await manager.deploy(tdd)
                for step in (msgs.handoff, msgs.add_inputs, msgs.switch_output):
                    for msg in step.values():
                        manager.control(msg)
            await asyncio.wait_for(manager.wait(), 60)
            assert not failures, failures[0].error
            statuses = manager.list_tasks()
            return statuses, gather_results(job.job_id, job, manager.reports(), manager.result)
        finally:
            await manager.shutdown()
            await server.stop()

    statuses, result = asyncio.run(asyncio.wait_for(run(), 90))
    aggs = [s for s in statuses if s["operator_name"] == "aggregate"]
    assert sum(s["metrics"].get("state_rows_handed_off", 0) for s in aggs) > 0
    src = pa.Table.from_batches([keyed_records(0, total, num_keys=300)])
    ref = pa.Table.from_batches([add_second_key(b) for b in src.to_batches()])
    expected = ref.group_by(["key", "tag"], use_threads=False).aggregate(
        [("value2", "count"), ("value2", "sum")])
    assert_tables_equal(result.table("sink"), expected.select(["key", "tag", "value2_count", "value2_sum"]),
                        sort_by=["key", "tag"])

"""In-memory tables by reference (sabot.runtime.tables): a job graph holds references,
the process's TableStore holds the rows, an embedded run reads them where they are."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from sabot import Stream
from sabot.errors import OperatorError
from sabot.execution.job_graph import JobGraph
from sabot.runtime.embedded import run_job_graph
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.runtime.tables import MissingTable, TableStore, new_ref, refs_in, write_ipc


def big_table(n=200_000):
    rng = np.random.default_rng(7)
    return pa.table({"k": rng.integers(0, 50, n), "v": rng.random(n), "s": pa.array([f"s{i % 97}" for i in range(n)])})


def buffer_range(table, column):
    chunk = table.column(column).chunk(0)
    data = chunk.buffers()[1]
    return data.address, data.address + data.size


def test_the_job_graph_holds_a_reference_not_the_rows():
    table = big_table()
    job = Stream.from_table(table, batch_size=1000).collect().to_job_graph()
    text = json.dumps(job.to_dict())
    assert len(text) < 5_000 < table.nbytes  # the rows are not in it (base64 of them was ~1.4x nbytes)
    (ref,) = [r for op in job.operators.values() for r in refs_in(op.parameters)]
    assert ref["num_rows"] == table.num_rows and job.tables[ref["table_id"]] is table


def test_a_source_subtask_emits_slices_of_the_table_itself():
    table = big_table(10_000)
    store = TableStore()
    ref = new_ref(table)
    store.put(ref["table_id"], table)
    low, high = buffer_range(table, "v")
    out = []
    for subtask in range(2):
        ctx = TaskContext("job", f"src-{subtask}", 0, {"name": "src", "operator_type": "source", "parameters": {
            "kind": "table", "data": ref, "batch_size": 1000}}, subtask, 2, 128, tables=store)
        op = create_operator(ctx)
        op.open()
        batches = list(op.read())
        for b in batches:  # zero-copy: each batch's values lie inside the table's own buffer
            address = b.column(1).buffers()[1].address
            assert low <= address < high
        out.extend(batches)
    assert pa.Table.from_batches(out).sort_by("v").equals(table.sort_by("v"))


def test_from_batches_emits_the_batches_as_given():
    sizes = [3, 1000, 17, 250, 1]
    batches = [pa.record_batch({"x": np.arange(n) + i * 10_000}) for i, n in enumerate(sizes)]
    for parallelism in (1, 2):
        result = Stream.from_batches(batches, parallelism=parallelism).collect().run()
        got = result.table()
        assert sorted(got["x"].to_pylist()) == sorted(v for b in batches for v in b["x"].to_pylist())
        assert sorted(len(c) for c in got["x"].chunks if len(c)) == sorted(sizes)


def test_an_embedded_keyed_count_from_a_table_matches_pyarrow():
    table = big_table()
    expected = table.group_by("k").aggregate([("v", "sum"), ("v", "count")]).sort_by("k")
    for parallelism in (1, 2):
        got = (Stream.from_table(table, batch_size=4096, parallelism=parallelism).key_by("k")
               .aggregate({"v": ["sum", "count"]}).collect().run().table().sort_by("k"))
        assert got["k"].equals(expected["k"])
        assert got["v_count"].equals(expected["v_count"])
        assert np.allclose(got["v_sum"].to_numpy(), expected["v_sum"].to_numpy())


def test_join_table_refers_to_its_static_table():
    stream = pa.table({"k": [1, 2, 3, 4], "x": [10, 20, 30, 40]})
    dim = pa.table({"k": [2, 4, 6], "name": ["two", "four", "six"]})
    job_stream = Stream.from_table(stream).join_table(dim, on="k", how="left").collect()
    job = job_stream.to_job_graph()
    assert len(job.tables) == 2 and dim in job.tables.values()
    got = job_stream.run().table().sort_by("k")
    assert got["name"].to_pylist() == [None, "two", None, "four"]


def test_a_graph_without_its_tables_fails_saying_why():
    job = Stream.from_table(pa.table({"x": [1, 2]})).collect().to_job_graph()
    bare = JobGraph.from_dict(job.to_dict())  # what to_dict() alone carries: no tables
    with pytest.raises(OperatorError, match="is not in this process"):
        run_job_graph(bare, timeout=30)


def test_a_memory_file_is_mapped_not_read_into_the_pool(tmp_path):
    table = big_table(300_000)
    fd = os.memfd_create("test-table", os.MFD_CLOEXEC)
    with open(f"/proc/self/fd/{fd}", "wb") as out:
        write_ipc(table, pa.PythonFile(out))
    store = TableStore()
    before = pa.total_allocated_bytes()
    got = store.adopt_fd("a" * 32, fd, expect_rows=table.num_rows)
    assert pa.total_allocated_bytes() - before < table.nbytes / 100  # mapped: not allocated from the pool
    assert got.equals(table)
    with pytest.raises(ValueError, match="rows"):
        fd2 = os.memfd_create("test-table", os.MFD_CLOEXEC)
        os.write(fd2, open(f"/proc/self/fd/{fd}", "rb").read())
        store.adopt_fd("b" * 32, fd2, expect_rows=table.num_rows + 1)
    bad = os.memfd_create("garbage", os.MFD_CLOEXEC)
    os.write(bad, b"not arrow at all" * 100)
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        store.adopt_fd("c" * 32, bad)
    assert "b" * 32 not in store and "c" * 32 not in store


def test_a_store_drops_a_table_with_the_last_job_that_uses_it(tmp_path):
    store = TableStore(directory=str(tmp_path))
    t1, t2 = pa.table({"x": [1]}), pa.table({"x": [2]})
    store.add({"1" * 32: t1, "2" * 32: t2})
    assert sorted(os.listdir(tmp_path)) == ["1" * 32 + ".arrows", "2" * 32 + ".arrows"]
    store.use("job-a", ["1" * 32, "2" * 32])
    store.use("job-b", ["2" * 32])
    assert store.release_job("job-a") == ["1" * 32]
    assert "1" * 32 not in store and "2" * 32 in store
    assert os.listdir(tmp_path) == ["2" * 32 + ".arrows"]
    assert store.release_job("job-b") == ["2" * 32]
    assert os.listdir(tmp_path) == [] and len(store) == 0
    with pytest.raises(MissingTable, match="not in this process"):
        store.get("2" * 32)


def test_uploads_no_job_uses_are_bounded(tmp_path):
    store = TableStore(directory=str(tmp_path))
    ids = [f"{i:032x}" for i in range(5)]
    store.add({i: pa.table({"x": [n]}) for n, i in enumerate(ids)})
    store.use("job", [ids[0]])
    assert store.limit_unused(2) == ids[1:3]  # the oldest unused go; a used one stays
    assert [i for i in ids if i in store] == [ids[0], ids[3], ids[4]]

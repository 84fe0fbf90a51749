"""Sink operators: collect, part files, callable, print."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from sabot.errors import OperatorError
from sabot.runtime import functions
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.runtime.operators.sinks import OUTPUT_MARKER, CallableSink, CollectSink, FileSink, PrintSink, output_lineage


def make_sink(params, subtask=0, parallelism=1, name="out"):
    ctx = TaskContext(
        job_id="job", task_id=f"{name}-{subtask}", attempt=0,
        operator={"name": name, "operator_type": "sink", "key_by": None, "function": None,
                  "parameters": params},
        subtask_index=subtask, parallelism=parallelism, max_parallelism=128,
    )
    op = create_operator(ctx)
    op.open()
    return op


def batches_of(n=30, size=4):
    rng = np.random.default_rng(5)
    table = pa.table({"id": np.arange(n, dtype=np.int64), "v": rng.random(n),
                      "s": pa.array([None if i % 5 == 0 else str(i) for i in range(n)])})
    return table, table.to_batches(max_chunksize=size)


def run(op, batches):
    for b in batches:
        assert op.process(b, 0) == []
    assert op.finish() == []
    op.close()


def test_collect_sink_gathers_every_batch():
    table, batches = batches_of()
    op = make_sink({"kind": "collect"})
    assert isinstance(op, CollectSink)
    run(op, batches)
    assert op.result().equals(table)
    assert op.summary()["rows"] == table.num_rows
    assert op.summary()["bytes"] == sum(b.nbytes for b in batches)


def test_collect_sink_empty_and_never_fed():
    table, _ = batches_of()
    op = make_sink({"kind": "collect"})
    run(op, [])
    assert op.result() is None
    op = make_sink({"kind": "collect"})
    run(op, [table.to_batches()[0].slice(0, 0)])
    result = op.result()
    assert result.num_rows == 0 and result.schema.equals(table.schema)


def test_collect_sink_refuses_a_second_schema():
    op = make_sink({"kind": "collect"})
    op.process(pa.record_batch({"a": [1]}), 0)
    with pytest.raises(OperatorError, match="out.*schema"):
        op.process(pa.record_batch({"b": ["x"]}), 0)


@pytest.mark.parametrize("fmt,ext", [("parquet", "parquet"), ("ipc", "arrow")])
@pytest.mark.parametrize("rows_per_file", [None, 7, 4])
def test_file_sink_writes_readable_part_files(tmp_path, fmt, ext, rows_per_file):
    table, batches = batches_of(30, 4)
    out = tmp_path / "out"
    op = make_sink({"kind": "files", "path": str(out), "format": fmt, "rows_per_file": rows_per_file},
                   subtask=2, parallelism=3)
    assert isinstance(op, FileSink)
    assert not out.exists()  # created on the first batch
    run(op, batches)
    n_files = 1 if rows_per_file is None else -(-30 // rows_per_file)
    expected_names = [f"part-{output_lineage('job')}-2-{n:05d}.{ext}" for n in range(n_files)]
    assert sorted(os.listdir(out)) == [OUTPUT_MARKER] + expected_names
    summary = op.summary()
    assert [os.path.basename(p) for p in summary["files"]] == expected_names
    assert summary["rows"] == 30
    parts = []
    for name in expected_names:
        path = out / name
        part = pq.read_table(path) if fmt == "parquet" else feather.read_table(path)
        if rows_per_file is not None:
            assert part.num_rows <= rows_per_file
        parts.append(part)
    assert pa.concat_tables(parts).equals(table)


def test_file_sink_without_batches_writes_nothing(tmp_path):
    op = make_sink({"kind": "files", "path": str(tmp_path / "none"), "format": "parquet"})
    run(op, [])
    assert not (tmp_path / "none").exists()
    assert op.summary() == {"rows": 0, "bytes": 0, "batches": 0, "files": []}


def test_file_sink_bad_parameters(tmp_path):
    with pytest.raises(OperatorError, match="unknown format 'csv'"):
        make_sink({"kind": "files", "path": str(tmp_path), "format": "csv"})
    with pytest.raises(OperatorError, match="rows_per_file"):
        make_sink({"kind": "files", "path": str(tmp_path), "format": "ipc", "rows_per_file": 0})
    with pytest.raises(OperatorError, match="path"):
        make_sink({"kind": "files", "format": "ipc"})


def test_callable_sink_calls_per_batch():
    table, batches = batches_of()
    seen = []
    op = make_sink({"kind": "callable", "function": functions.reference_of(lambda b: seen.append(b))})
    assert isinstance(op, CallableSink)
    run(op, batches)
    assert pa.Table.from_batches(seen).equals(table)
    assert op.summary()["rows"] == 30


def _failing_sink(batch):
    raise KeyError("sink exploded")


def test_callable_sink_error_names_function_and_operator():
    op = make_sink({"kind": "callable", "function": functions.reference_of(_failing_sink)}, name="mysink")
    with pytest.raises(OperatorError, match="_failing_sink.*mysink.*KeyError") as info:
        op.process(pa.record_batch({"a": [1]}), 0)
    assert "original traceback" in str(info.value)


def test_print_sink_respects_limit(capsys):
    table, batches = batches_of(10, 3)
    op = make_sink({"kind": "print", "limit": 4}, subtask=1, name="p")
    assert isinstance(op, PrintSink)
    run(op, batches)
    lines = capsys.readouterr().out.strip().splitlines()
    expected = [f"p[1]> {row}" for row in table.slice(0, 4).to_pylist()] + ["p[1]> ... 6 more rows"]
    assert lines == expected
    assert op.summary()["rows"] == 10

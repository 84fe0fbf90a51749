"""Source operators: table, generator, dataset; split across subtasks, resumable."""

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from sabot.errors import OperatorError
from sabot.runtime import functions, generators
from sabot.runtime.tables import TableStore, new_ref
from sabot.runtime.operators import csv_units
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.runtime.operators.sources import DatasetSource, GeneratorSource, TableSource



STORE = TableStore()  # the tables the operators refer to, as a worker's store holds them


def table_ref(table):
    ref = new_ref(table)
    STORE.put(ref["table_id"], table)
    return ref

def make_source(params, subtask=0, parallelism=1, name="src"):
    ctx = TaskContext(
        job_id="job", task_id=f"{name}-{subtask}", attempt=0,
        operator={"name": name, "operator_type": "source", "key_by": None, "function": None,
                  "parameters": params},
        subtask_index=subtask, parallelism=parallelism, max_parallelism=128, tables=STORE,
    )
    op = create_operator(ctx)
    op.open()
    return op


def units(op_or_position):
    """Units (slices, batches) emitted: the sum of the split positions."""
    position = op_or_position if isinstance(op_or_position, dict) else op_or_position.position
    return sum(entry["position"] for entry in position["splits"].values())


def read_all(op):
    batches = list(op.read())
    for b in batches:
        assert isinstance(b, pa.RecordBatch)
    return batches


def as_table(batches, schema):
    return pa.Table.from_batches(batches, schema=schema)


def sample_table(n=50):
    rng = np.random.default_rng(1)
    return pa.table({
        "id": np.arange(n, dtype=np.int64),
        "x": rng.random(n),
        "s": pa.array([None if i % 7 == 0 else f"s{i}" for i in range(n)]),
    })


# -- table ------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_table_source_union_over_subtasks_is_the_input(parallelism):
    table = sample_table(50)
    params = {"kind": "table", "data": table_ref(table), "batch_size": 7}
    parts, total = [], 0
    for i in range(parallelism):
        op = make_source(params, i, parallelism)
        assert isinstance(op, TableSource)
        batches = read_all(op)
        # subtask i owns slices i, i+P, ...: the first id of each batch says which slice
        assert [b.column("id")[0].as_py() // 7 for b in batches] == list(range(i, 8, parallelism))
        assert units(op) == len(range(i, 8, parallelism))
        assert op.total_rows == sum(b.num_rows for b in batches)
        total += op.total_rows
        parts.extend(batches)
    got = as_table(parts, table.schema).sort_by("id")
    assert got.equals(table)
    assert total == table.num_rows


def test_table_source_slices_are_zero_copy():
    table = sample_table(20)
    op = make_source({"kind": "table", "data": table_ref(table), "batch_size": 8})
    base = op.table.column("x").chunk(0).buffers()[1].address
    batches = read_all(op)
    assert [b.column("x").offset for b in batches] == [0, 8, 16]
    assert all(b.column("x").buffers()[1].address == base for b in batches)


def test_table_source_over_several_chunks():
    # from_batches ships uneven batches; a slice spanning two chunks comes out as two batches
    chunks = [pa.record_batch({"id": list(range(a, b))}) for a, b in [(0, 3), (3, 8), (8, 10)]]
    table = pa.Table.from_batches(chunks)
    params = {"kind": "table", "data": table_ref(table), "batch_size": 5}
    for parallelism in (1, 2):
        rows = []
        for i in range(parallelism):
            rows += as_table(read_all(make_source(params, i, parallelism)), table.schema).column("id").to_pylist()
        assert sorted(rows) == list(range(10))


@pytest.mark.parametrize("parallelism,stop_after", [(1, 3), (2, 2), (3, 1)])
def test_table_source_resumes_from_position(parallelism, stop_after):
    table = sample_table(100)
    params = {"kind": "table", "data": table_ref(table), "batch_size": 6}
    for i in range(parallelism):
        full = read_all(make_source(params, i, parallelism))
        first = make_source(params, i, parallelism)
        head = list(itertools.islice(first.read(), stop_after))
        position = first.position
        assert units(position) == stop_after
        resumed = make_source(params, i, parallelism)
        resumed.seek(position)
        tail = read_all(resumed)
        assert as_table(head + tail, table.schema).equals(as_table(full, table.schema))
        # the same through the constructor-time parameter
        again = make_source(dict(params, start_position=position), i, parallelism)
        assert as_table(read_all(again), table.schema).equals(as_table(tail, table.schema))


def test_empty_table_source_sends_its_schema_once():
    table = sample_table(0)
    params = {"kind": "table", "data": table_ref(table), "batch_size": 4}
    first = read_all(make_source(params, 0, 2))
    assert len(first) == 1 and first[0].num_rows == 0 and first[0].schema.equals(table.schema)
    assert read_all(make_source(params, 1, 2)) == []
    done = make_source(params, 0, 2)
    read_all(done)
    assert read_all(make_source(dict(params, start_position=done.position), 0, 2)) == []


def test_table_source_bad_parameters():
    table = sample_table(5)
    with pytest.raises(OperatorError, match="batch_size"):
        make_source({"kind": "table", "data": table_ref(table), "batch_size": 0})
    with pytest.raises(OperatorError, match="data"):
        make_source({"kind": "table", "data": None})
    with pytest.raises(OperatorError, match="position"):
        make_source({"kind": "table", "data": table_ref(table)}).seek(-1)


def test_unknown_source_kind_names_the_known_ones():
    with pytest.raises(OperatorError, match="dataset.*generator.*table|known kinds"):
        make_source({"kind": "carrier-pigeon"})  # (kafka is a kind now)


# -- generator ------------------------------------------------------------------------

GEN = "sabot.runtime.generators:keyed_records"


@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_generator_source_union_equals_direct_generation(parallelism):
    params = {"kind": "generator", "function": GEN, "total_rows": 1000, "batch_size": 64,
              "parameters": {"num_keys": 50, "seed": 3}}
    parts = []
    total = 0
    for i in range(parallelism):
        op = make_source(params, i, parallelism)
        assert isinstance(op, GeneratorSource)
        batches = read_all(op)
        # batch b covers rows [64 b, 64 (b+1)): the ts column is the row number
        assert [b.column("ts")[0].as_py() for b in batches] == [64 * k for k in range(i, 16, parallelism)]
        total += op.total_rows
        parts += batches
    expected = pa.Table.from_batches([generators.keyed_records(0, 1000, num_keys=50, seed=3)])
    got = pa.Table.from_batches(parts).sort_by("ts")
    assert got.equals(expected)
    assert total == 1000


def test_generator_source_does_not_depend_on_batch_size():
    tables = []
    for batch_size in (1000, 64, 7, 333):
        params = {"kind": "generator", "function": GEN, "total_rows": 1000, "batch_size": batch_size,
                  "parameters": {"num_keys": 1000}}
        tables.append(pa.Table.from_batches(read_all(make_source(params))))
    for t in tables[1:]:
        assert t.equals(tables[0])


def test_generator_source_resumes_from_position():
    params = {"kind": "generator", "function": GEN, "total_rows": 500, "batch_size": 30, "parameters": {}}
    for parallelism in (1, 2):
        for i in range(parallelism):
            full = pa.Table.from_batches(read_all(make_source(params, i, parallelism)))
            op = make_source(params, i, parallelism)
            head = list(itertools.islice(op.read(), 3))
            resumed = make_source(params, i, parallelism)
            resumed.seek(op.position)
            got = pa.Table.from_batches(head + read_all(resumed))
            assert got.equals(full)


def test_unbounded_generator_source():
    params = {"kind": "generator", "function": GEN, "total_rows": None, "batch_size": 10, "parameters": {}}
    op = make_source(params, 1, 2)
    assert op.total_rows is None
    batches = list(itertools.islice(op.read(), 4))
    assert [b.column("ts")[0].as_py() for b in batches] == [10, 30, 50, 70]
    assert units(op) == 4


def _returns_wrong_row_count(offset, num_rows):
    return pa.record_batch({"a": list(range(num_rows + 1))})


def _raises(offset, num_rows):
    raise ZeroDivisionError("boom in generator")


def test_generator_source_bad_user_functions():
    base = {"kind": "generator", "total_rows": 10, "batch_size": 5, "parameters": {}}
    with pytest.raises(OperatorError, match="exactly num_rows"):
        read_all(make_source(dict(base, function=functions.reference_of(_returns_wrong_row_count))))
    with pytest.raises(OperatorError, match="ZeroDivisionError.*boom in generator") as info:
        read_all(make_source(dict(base, function=functions.reference_of(_raises))))
    assert "src" in str(info.value) and "_raises" in str(info.value)
    with pytest.raises(OperatorError, match="no_such_module"):
        make_source(dict(base, function="no_such_module:fn"))
    with pytest.raises(OperatorError, match="total_rows"):
        make_source(dict(base, function=GEN, total_rows=-5))


# -- built-in generators ---------------------------------------------------------------


def test_keyed_records_values_and_determinism():
    batch = generators.keyed_records(123, 20000, num_keys=37, seed=9)
    assert batch.schema.names == ["key", "value", "ts"]
    key = batch.column("key").to_numpy()
    value = batch.column("value").to_numpy()
    assert key.min() >= 0 and key.max() < 37 and len(np.unique(key)) == 37
    assert value.min() >= 0.0 and value.max() < 1.0 and abs(value.mean() - 0.5) < 0.02
    assert batch.column("ts").to_pylist() == list(range(123, 20123))
    # row r depends on (seed, r) only
    pieces = [generators.keyed_records(o, n, num_keys=37, seed=9) for o, n in [(123, 5), (128, 995), (1123, 19000)]]
    assert pa.Table.from_batches(pieces).equals(pa.Table.from_batches([batch]))
    other_seed = generators.keyed_records(123, 20000, num_keys=37, seed=10)
    assert not other_seed.column("value").equals(batch.column("value"))


def test_zipf_keyed_records_skew():
    n, num_keys, s = 200_000, 1000, 1.2
    batch = generators.zipf_keyed_records(0, n, num_keys=num_keys, s=s, seed=1)
    counts = np.bincount(batch.column("key").to_numpy(), minlength=num_keys)
    weights = np.arange(1, num_keys + 1, dtype=float) ** -s
    expected = weights / weights.sum() * n
    # the hottest keys follow the law within a few standard deviations
    for k in range(5):
        assert abs(counts[k] - expected[k]) < 5 * np.sqrt(expected[k])
    split = pa.Table.from_batches([generators.zipf_keyed_records(0, 77, num_keys, s, 1),
                                   generators.zipf_keyed_records(77, n - 77, num_keys, s, 1)])
    assert split.equals(pa.Table.from_batches([batch]))


def test_transactions_generator():
    batch = generators.transactions(10, 5000, seed=2, num_accounts=100)
    assert batch.schema == pa.schema([("account_id", pa.int64()), ("amount", pa.float64()),
                                      ("merchant", pa.string()), ("ts", pa.int64())])
    acct = batch.column("account_id").to_numpy()
    assert acct.min() >= 0 and acct.max() < 100
    assert (batch.column("amount").to_numpy() > 0).all()
    assert set(batch.column("merchant").to_pylist()) <= set(generators.MERCHANTS)
    again = pa.Table.from_batches([generators.transactions(10, 1000, seed=2, num_accounts=100),
                                   generators.transactions(1010, 4000, seed=2, num_accounts=100)])
    assert again.equals(pa.Table.from_batches([batch]))


def test_generators_reject_bad_offsets():
    with pytest.raises(ValueError, match="offset"):
        generators.keyed_records(-1, 10)
    with pytest.raises(ValueError, match="num_rows"):
        generators.keyed_records(0, -1)


# -- dataset ----------------------------------------------------------------------------


def write_files(tmp_path, fmt, num_files=5, rows=23):
    table = pa.table({"id": np.arange(num_files * rows, dtype=np.int64),
                      "g": np.arange(num_files * rows) % 4,
                      "x": np.linspace(0, 1, num_files * rows)})
    d = tmp_path / fmt
    d.mkdir()
    for j in range(num_files):
        part = table.slice(j * rows, rows)
        path = d / f"f{j:02d}.{fmt}"
        if fmt == "parquet":
            pq.write_table(part, path, row_group_size=10)
        elif fmt == "ipc":
            feather.write_feather(part, path, compression="uncompressed", chunksize=10)
        else:
            pacsv.write_csv(part, path)
    return table, d


@pytest.mark.parametrize("fmt", ["parquet", "ipc", "csv"])
@pytest.mark.parametrize("parallelism", [1, 2, 3])
def test_dataset_source_union_over_subtasks(tmp_path, fmt, parallelism):
    table, d = write_files(tmp_path, fmt)
    params = {"kind": "dataset", "path": str(d), "format": fmt, "columns": None, "batch_size": 8}
    parts = []
    for i in range(parallelism):
        op = make_source(params, i, parallelism)
        assert isinstance(op, DatasetSource)
        names = [s.id.rsplit("/", 1)[1] if fmt == "csv" else s.id.split("/")[-2] + "/" + s.id.split("/")[-1]
                 for s in op.splits]
        if fmt == "csv":  # one split per file: file j goes to subtask j % P, in sorted path order
            assert names == [f"f{j:02d}.{fmt}" for j in range(i, 5, parallelism)]
        else:  # 3 units (row groups, record batches of 10 rows) per file: 3 pieces, round robin
            pieces = [(j, k) for j in range(5) for k in range(3)]
            assert names == [f"f{j:02d}.{fmt}#{k}/3" for n, (j, k) in enumerate(pieces) if n % parallelism == i]
        batches = read_all(op)
        assert all(b.num_rows <= 8 for b in batches)
        if fmt != "csv":
            assert op.total_rows == sum(b.num_rows for b in batches)
        parts += batches
    got = pa.Table.from_batches(parts).sort_by("id")
    assert got.equals(table)


def test_dataset_source_column_projection_and_resume(tmp_path):
    table, d = write_files(tmp_path, "parquet")
    params = {"kind": "dataset", "path": str(d), "format": "parquet", "columns": ["x", "id"], "batch_size": 4}
    for i in range(2):
        full = pa.Table.from_batches(read_all(make_source(params, i, 2)))
        assert full.schema.names == ["x", "id"]
        for stop in (1, 5, 7, 9):
            op = make_source(params, i, 2)
            it = op.read()
            head = list(itertools.islice(it, stop))
            # a checkpoint or pause falls between units (a row group of 10 rows comes out as
            # batches of 4, 4, 2): the task reads on to the boundary first, as here
            while not op.at_unit_boundary:
                head.append(next(it))
            position = op.position
            resumed = make_source(dict(params, start_position=position), i, 2)
            got = pa.Table.from_batches(head + read_all(resumed), schema=full.schema)
            assert got.equals(full), (i, stop, position)


def test_dataset_source_bad_input(tmp_path):
    table, d = write_files(tmp_path, "parquet", num_files=1)
    with pytest.raises(OperatorError, match=r"\['nope'\].*available columns: \['id', 'g', 'x'\]"):
        make_source({"kind": "dataset", "path": str(d), "format": "parquet", "columns": ["id", "nope"]})
    with pytest.raises(OperatorError, match="does not exist"):
        make_source({"kind": "dataset", "path": str(tmp_path / "missing"), "format": "parquet"})
    with pytest.raises(OperatorError, match="unknown format 'orc'"):
        make_source({"kind": "dataset", "path": str(d), "format": "orc"})
    op = make_source({"kind": "dataset", "path": str(d), "format": "parquet"}, 1, 2)
    with pytest.raises(OperatorError, match="a position is"):
        op.seek([0, 0])


def write_units(table, path, fmt, rows_per_unit, monkeypatch):
    """Write ``table`` to one file of units of about ``rows_per_unit`` rows (CSV: the unit
    size in bytes is set to that many rows' worth); returns its number of units."""
    if fmt == "ipc":
        feather.write_feather(table, path, compression="lz4", chunksize=rows_per_unit)
    elif fmt == "parquet":
        pq.write_table(table, path, row_group_size=rows_per_unit)
    else:
        pacsv.write_csv(table, path)
        header = open(path, "rb").readline()
        data = path.stat().st_size - len(header)
        monkeypatch.setattr(csv_units, "UNIT_BYTES", -(-data // -(-table.num_rows // rows_per_unit)))
        return csv_units.CsvUnits.of(str(path)).num_units
    return -(-table.num_rows // rows_per_unit)


@pytest.mark.parametrize("predicate", ["x > 0.3", "id >= 2400"])  # the second empties whole units
@pytest.mark.parametrize("fmt", ["ipc", "parquet", "csv"])
def test_one_large_file_is_read_by_every_subtask(tmp_path, fmt, predicate, monkeypatch):
    """A file of many record batches (row groups) is cut into pieces: at p=2 and 3 every
    subtask reads a share, with the pushed-down filter, the projection and batch_size
    applied; p=1 emits the file in order; a restore from a position taken between units
    emits the rest exactly."""
    import pyarrow.compute as pc

    from sabot.execution.operator_spec import encode_expression

    n = 5000
    table = pa.table({"id": np.arange(n, dtype=np.int64), "x": np.random.default_rng(3).random(n),
                      "s": pa.array([f"r{i}" for i in range(n)])})
    path = tmp_path / f"big.{fmt}"
    units = write_units(table, path, fmt, 300, monkeypatch)
    assert 15 <= units <= 18
    predicate = pc.field("x") > 0.3 if predicate == "x > 0.3" else pc.field("id") >= 2400
    want = table.filter(predicate).select(["id", "s"])
    params = {"kind": "dataset", "path": str(path), "format": fmt, "columns": ["id", "s"], "batch_size": 128,
              "filter": encode_expression(predicate)}
    for parallelism in (1, 2, 3):
        parts, shares = [], []
        for i in range(parallelism):
            op = make_source(params, i, parallelism)
            assert len(op.splits) == len(range(i, units, parallelism))  # a piece per unit, round robin
            batches = read_all(op)
            assert all(0 < b.num_rows <= 128 for b in batches) and all(b.schema.names == ["id", "s"] for b in batches)
            assert op.total_rows is None  # with a filter: unknown without reading it all twice
            shares.append(sum(b.num_rows for b in batches))
            parts += batches
        got = pa.Table.from_batches(parts)
        if parallelism == 1:
            assert got.equals(want)  # in file order
        else:
            assert got.sort_by("id").equals(want)
            assert min(shares) > 0.15 * want.num_rows  # every subtask did a real share
    # positions: read, stop at a unit boundary, restore at p=2 from the two states
    states, emitted = {}, []
    for i, k in enumerate((5, 2)):
        op = make_source(params, i, 2)
        it = op.read()
        emitted += list(itertools.islice(it, k))
        while not op.at_unit_boundary:
            emitted.append(next(it))
        states[i] = op.snapshot_state(1)["state"]
    for j in range(3):
        op = make_source(params, j, 3)
        op.restore_subtask_states(states, 1)
        emitted += read_all(op)
    assert pa.Table.from_batches(emitted).sort_by("id").equals(want)


@pytest.mark.parametrize("num_files,pieces_per_file", [(1, 17), (5, 7), (16, 2), (40, 1)])
def test_a_fixed_set_of_files_is_cut_into_about_32_splits_in_all(tmp_path, num_files, pieces_per_file):
    """ceil(32 / files) pieces a file (at most its units): many files are not cut at all."""
    d = tmp_path / "d"
    d.mkdir()
    for j in range(num_files):
        feather.write_feather(pa.table({"id": np.arange(j * 170, (j + 1) * 170, dtype=np.int64)}),
                              d / f"f{j:02d}.arrow", chunksize=10)  # 17 record batches
    params = {"kind": "dataset", "path": str(d), "format": "ipc"}
    ops = [make_source(params, i, 2) for i in range(2)]
    splits = [s for op in ops for s in op.splits]
    assert len(splits) == num_files * pieces_per_file
    if pieces_per_file == 1:
        assert all(s.id == s.description["path"] for s in splits)  # whole files, as before
    ids = sorted(v for op in ops for b in read_all(op) for v in b.column("id").to_pylist())
    assert ids == list(range(num_files * 170))


@pytest.mark.parametrize("fmt", ["ipc", "parquet", "csv"])
def test_event_time_of_a_cut_file_moves_on_with_every_unit(tmp_path, fmt, monkeypatch):
    """The pieces of one file share the file's event-time clock: the watermark follows every
    unit read, as for a whole file, instead of waiting until every piece delivered once
    (with 16 units in 16 pieces that was the end of the file: no window fired before it)."""
    n = 1600
    table = pa.table({"id": np.arange(n, dtype=np.int64), "ts": np.arange(n, dtype=np.int64) * 10})
    path = tmp_path / f"t.{fmt}"
    units = write_units(table, path, fmt, 100, monkeypatch)
    params = {"kind": "dataset", "path": str(path), "format": fmt, "time_column": "ts",
              "max_out_of_orderness": 5}
    for parallelism in (1, 2):
        for i in range(parallelism):
            op = make_source(params, i, parallelism)
            assert len(op.splits) == len(range(i, units, parallelism))  # one piece per unit
            marks = []
            for batch in op.read():
                marks.append(op.current_watermark())
                assert marks[-1] == batch.column("ts")[-1].as_py() - 5  # the largest time so far
            assert len(marks) == len(op.splits) and marks == sorted(marks)


def test_ipc_files_are_mapped_only_while_their_pieces_are_read(tmp_path):
    """Listing counts a file's record batches without keeping it mapped; a subtask unmaps a
    file when its last piece of it ends (a monitored directory gets a file after another:
    none may stay open)."""
    import gc

    d = tmp_path / "m"
    d.mkdir()
    for j in range(3):
        feather.write_feather(pa.table({"id": np.arange(j * 50, (j + 1) * 50, dtype=np.int64)}),
                              d / f"f{j}.arrow", chunksize=10)

    def mapped():
        gc.collect()
        return sum(1 for line in open("/proc/self/maps") if str(d) in line)

    for params in ({"kind": "dataset", "path": str(d), "format": "ipc"},
                   {"kind": "dataset", "path": str(d), "format": "ipc", "monitor_interval_s": 0.01}):
        op = make_source(params, 0, 2)
        assert op.splits and mapped() == 0
        it = op.read()
        want = sum(op.split_rows(s) for s in op.splits)
        if params.get("monitor_interval_s"):  # never ends: read the rows, then it waits
            rows = 0
            while rows < want:
                batch = next(it)
                rows += batch.num_rows if batch is not None else 0
            del batch
            assert next(it) is None
        else:
            rows = sum(b.num_rows for b in it)
        assert rows == want > 0
        assert mapped() == 0
        op.close()


def test_a_checkpointed_whole_file_split_is_not_cut_again(tmp_path):
    """A checkpoint from before files were cut names a file by its path: restored, that file
    is read whole from its position (batches emitted), not cut into pieces beside it."""
    n = 1000
    table = pa.table({"id": np.arange(n, dtype=np.int64)})
    path = tmp_path / "f.arrow"
    feather.write_feather(table, path, compression="uncompressed", chunksize=100)
    params = {"kind": "dataset", "path": str(path), "format": "ipc", "batch_size": 100}
    state = {"splits": {str(path): {"split": {"id": str(path), "ordinal": 0, "group": None,
                                              "description": {"path": str(path)}},
                                    "position": 4, "finished": False}}}
    ids = []
    for j in range(2):
        op = make_source(params, j, 2)
        op.restore_subtask_states({0: state}, 1)
        assert [s.id for s in op.splits] == ([str(path)] if j == 0 else [])
        ids += _rows(read_all(op), "id")
    assert ids == list(range(400, n))


# -- splits: live rescaling and restores at another parallelism ---------------------------


def _rows(batches, column):
    return [v for b in batches for v in b.column(column).to_pylist()]


def _split_params(kind, n, batch_size, tmp_path=None):
    if kind == "table":
        return {"kind": "table", "data": table_ref(sample_table(n)), "batch_size": batch_size}
    if kind == "generator":
        return {"kind": "generator", "function": GEN, "total_rows": n, "batch_size": batch_size, "parameters": {}}
    d = tmp_path / "files"
    d.mkdir(exist_ok=True)
    table = sample_table(n)
    fmt = kind if kind in ("ipc", "csv") else "parquet"
    for j in range(0, n, 23):  # files of 23 rows, row groups (record batches) of batch_size
        if fmt == "csv":  # units of 1-2 rows (csv_units.UNIT_BYTES is set by the test)
            pacsv.write_csv(table.slice(j, 23), d / f"part-{j:05d}.csv")
        elif fmt == "ipc":
            feather.write_feather(table.slice(j, 23), d / f"part-{j:05d}.arrow", compression="uncompressed",
                                  chunksize=batch_size)
        else:
            pq.write_table(table.slice(j, 23), d / f"part-{j:05d}.parquet", row_group_size=batch_size)
    return {"kind": "dataset", "path": str(d), "format": fmt, "batch_size": batch_size}


COLUMN = {"table": "id", "generator": "ts", "dataset": "id", "ipc": "id", "csv": "id"}
KINDS = ["table", "generator", "dataset", "ipc", "csv"]


@pytest.fixture
def small_csv_units(monkeypatch):
    monkeypatch.setattr(csv_units, "UNIT_BYTES", 40)  # the sample rows are 20-30 bytes


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_and_restore_of_split_positions(kind, tmp_path, small_csv_units):
    params = _split_params(kind, 100, 7, tmp_path)
    full = _rows(read_all(make_source(params, 1, 3)), COLUMN[kind])
    op = make_source(params, 1, 3)
    head = list(itertools.islice(op.read(), 2))
    state = op.snapshot_state(1)["state"]
    # the state names every split of this subtask with its position, JSON-able
    import json

    assert json.loads(json.dumps(state)) == state
    assert sorted(state["splits"]) == sorted(s.id for s in op.splits)
    again = make_source(params, 1, 3)
    again.restore_state(None, state, 1)
    assert _rows(head + read_all(again), COLUMN[kind]) == full


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("old_p,new_p,reads", [(1, 3, [5]), (3, 2, [2, 0, 4]), (2, 4, [9, 1]), (4, 1, [0, 3, 3, 1])])
def test_live_rescale_moves_splits_with_their_positions(kind, old_p, new_p, reads, tmp_path, small_csv_units):
    """Old subtasks pause at different points and stop; the new ones take the positions."""
    n, batch_size = 203, 5
    params = _split_params(kind, n, batch_size, tmp_path)
    column = COLUMN[kind]
    old = [make_source(params, i, old_p) for i in range(old_p)]
    iters = [op.read() for op in old]
    emitted = []
    for it, k in zip(iters, reads):
        emitted += _rows(list(itertools.islice(it, k)), column)
    positions = [op.position for op in old]  # what each paused task answers
    for op, it in zip(old, iters):
        op.stop_for_rescale()
        assert list(it) == []  # an old task emits nothing after the pause
    for j in range(new_p):
        op = make_source(params, j, new_p)
        op.take_split_positions(positions)
        emitted += _rows(read_all(op), column)
    assert sorted(emitted) == list(range(n))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("old_p,new_p,reads", [(3, 2, [4, 0, 7]), (1, 3, [6]), (2, 5, [1, 8]), (2, 2, [3, 1])])
def test_restore_at_another_parallelism_emits_the_rest_once(kind, old_p, new_p, reads, tmp_path,
                                                           small_csv_units):
    n, batch_size = 157, 4
    params = _split_params(kind, n, batch_size, tmp_path)
    column = COLUMN[kind]
    emitted, states = [], {}
    for i, k in enumerate(reads):
        op = make_source(params, i, old_p)
        emitted += _rows(list(itertools.islice(op.read(), k)), column)
        states[i] = op.snapshot_state(1)["state"]
    rest = []
    for j in range(new_p):
        op = make_source(params, j, new_p)
        op.restore_subtask_states(states, 1)
        rest += _rows(read_all(op), column)
    assert sorted(emitted + rest) == list(range(n))
    # and once more: a checkpoint taken after the restore restores exactly at a third parallelism
    second, emitted2 = {}, list(emitted)
    for j in range(new_p):
        op = make_source(params, j, new_p)
        op.restore_subtask_states(states, 1)
        emitted2 += _rows(list(itertools.islice(op.read(), 1)), column)
        second[j] = op.snapshot_state(2)["state"]
    for j in range(3):
        op = make_source(params, j, 3)
        op.restore_subtask_states(second, 2)
        emitted2 += _rows(read_all(op), column)
    assert sorted(emitted2) == list(range(n))


def test_table_source_pauses_only_between_units():
    # a slice that spans two chunks comes out as two batches: after the first one the
    # source is inside a unit (no checkpoint, no pause), after the second at a boundary
    table = pa.concat_tables([sample_table(10).slice(0, 5), sample_table(10).slice(5, 5)])
    op = make_source({"kind": "table", "data": table_ref(table), "batch_size": 4})
    it = op.read()
    first = next(it)
    assert first.num_rows == 4 and op.at_unit_boundary and units(op) == 1
    second = next(it)  # row 4 of slice [4, 8)
    assert second.num_rows == 1 and not op.at_unit_boundary and units(op) == 1
    third = next(it)
    assert third.num_rows == 3 and op.at_unit_boundary and units(op) == 2
    op.stop_for_rescale()
    assert _rows([first, second, third] + list(it), "id") == list(range(8))


def test_bad_positions_and_states_are_refused():
    op = make_source(_split_params("generator", 10, 2), 0, 2)
    for bad in ({"start": 0, "stride": 2, "offset": 0}, "epoch", [{"offsets": {}}]):
        with pytest.raises(OperatorError, match="split positions"):
            op.take_split_positions(bad)
    with pytest.raises(OperatorError, match="not a split state"):
        op.restore_subtask_states({0: {"position": 3}}, 1)
    with pytest.raises(OperatorError, match="split 'x'.*'id': non-empty str"):
        op.restore_subtask_states({0: {"splits": {"x": {"split": {"id": ""}, "position": 0}}}}, 1)


def test_num_splits_survives_a_restore_at_a_higher_parallelism():
    params = dict(_split_params("generator", 1000, 10), num_splits=4)
    first = make_source(params, 0, 2)
    head = list(itertools.islice(first.read(), 3))
    state = first.snapshot_state(1)["state"]
    other = make_source(params, 1, 2)
    states = {0: state, 1: other.snapshot_state(1)["state"]}
    got = _rows(head, "ts")
    # at parallelism 6 the split set stays the checkpoint's 4 splits (2 subtasks read nothing)
    for j in range(6):
        op = make_source(dict(params, num_splits=None), j, 6)
        op.restore_subtask_states(states, 1)
        assert len(op.splits) == (1 if j < 4 else 0)
        got += _rows(read_all(op), "ts")
    assert len(got) == 1000 and sorted(got) == list(range(1000))


def test_csv_files_are_cut_at_newlines_and_the_odd_ones_read_whole(tmp_path, monkeypatch):
    """CRLF line ends and a last row without a newline are cut right; a compressed file or
    one whose header is not the dataset's columns is one split, read whole; a quoted value
    spanning lines (which a cut file cannot have) fails here with an error naming the file and bytes."""
    import gzip

    monkeypatch.setattr(csv_units, "UNIT_BYTES", 200)
    d = tmp_path / "d"
    d.mkdir()
    n = 600
    (d / "a.csv").write_bytes(b"id,s\r\n" + b"\r\n".join(f"{i},x{i}".encode() for i in range(n)))
    (d / "b.csv.gz").write_bytes(gzip.compress(
        b"id,s\n" + b"".join(f"{i},x{i}\n".encode() for i in range(n, 2 * n))))
    (d / "c.csv").write_bytes(b"s,id\n" + b"".join(f"x{i},{i}\n".encode() for i in range(2 * n, 3 * n)))
    want = sorted(range(3 * n))
    params = {"kind": "dataset", "path": str(d), "format": "csv", "batch_size": 50}
    got = []
    for parallelism in (1, 2):
        ids = []
        for i in range(parallelism):
            op = make_source(params, i, parallelism)
            ids += [v for b in read_all(op) for v in b.column("id").to_pylist()]
            got.append(op)
        assert sorted(ids) == want
    splits = [s.id.rsplit("/", 1)[-1] if "#" not in s.id else s.id.split("/")[-2] for s in got[0].splits]
    assert splits.count("b.csv.gz") == 1 and splits.count("c.csv") == 1  # whole files
    assert sum(1 for s in got[0].splits if "a.csv#" in s.id) > 10  # cut at newlines
    # read by pyarrow itself, the file gives the same rows (and types) as its pieces
    whole = ds.dataset(str(d / "a.csv"), format="csv").to_table()
    pieces = pa.Table.from_batches([b for b in read_all(make_source({**params, "path": str(d / "a.csv")}, 0, 1))])
    assert pieces.equals(whole)
    # a value spanning lines: pieces start inside it
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n" + "\n".join(f'{i},"line one\nline two {i}"' for i in range(200)) + "\n")
    with pytest.raises(pa.ArrowInvalid, match="quoted value spanning lines"):
        read_all(make_source({"kind": "dataset", "path": str(bad), "format": "csv"}, 0, 1))

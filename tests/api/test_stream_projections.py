"""The Stream API's projections, push-down into file sources, partitioned file sink, empty
results and join_table's suffix."""

import asyncio
import os

import aiohttp
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sabot import Stream
from sabot.errors import GraphValidationError
from sabot.runtime.operators.base import TaskContext, create_operator
from sabot.testing import assert_tables_equal, in_process_cluster, run_stream

TABLE = pa.table({"k": pa.array(np.arange(1000) % 7, pa.int64()), "p": pa.array(np.arange(1000), pa.int64()),
                  "s": pa.array([f"x{i % 13}" for i in range(1000)]), "f": pa.array(np.linspace(0, 1, 1000))})


@pytest.mark.parametrize("parallelism", [1, 2])
def test_select_computes_expressions_over_whole_batches(parallelism):
    s = Stream.from_table(TABLE, batch_size=128).select(
        "k", total=pc.field("p") * 2 + pc.field("k"), upper=pc.utf8_upper(pc.field("s")),
        big=pc.field("f") > 0.5)
    assert s.schema == pa.schema([("k", pa.int64()), ("total", pa.int64()), ("upper", pa.string()),
                                  ("big", pa.bool_())])
    got = run_stream(s, default_parallelism=parallelism)
    expected = pa.table({"k": TABLE["k"], "total": pc.add(pc.multiply(TABLE["p"], 2), TABLE["k"]),
                         "upper": pc.utf8_upper(TABLE["s"]), "big": pc.greater(TABLE["f"], 0.5)})
    assert_tables_equal(got, expected)


def test_select_with_an_expression_dict_and_build_time_errors():
    t = pa.table({"name": ["a", "b"], "v": [1, 2]})
    got = run_stream(Stream.from_table(t).select({"name": pc.utf8_upper(pc.field("name")), "w": "v"}))
    assert got.to_pydict() == {"name": ["A", "B"], "w": [1, 2]}
    with pytest.raises(GraphValidationError, match="do not evaluate over columns"):
        Stream.from_table(t).select(x=pc.field("nope") + 1)
    with pytest.raises(GraphValidationError, match="do not evaluate"):
        Stream.from_table(t).select(x=pc.field("name") + 1)
    with pytest.raises(GraphValidationError, match=r"output column\(s\) \['v'\] given twice"):
        Stream.from_table(t).select("v", v=pc.field("v"))


def _source_bytes(result):
    return sum(t["metrics"]["bytes_in"] for t in result.tasks if t["operator_name"] == "files")


def test_file_sources_read_only_the_columns_used_and_push_filters_into_the_scan(tmp_path):
    wide = TABLE.append_column("pad", pa.array(["y" * 200] * 1000))
    pq.write_table(wide, tmp_path / "a.parquet", row_group_size=100)

    def job():
        return (Stream.from_parquet(str(tmp_path), name="files").filter(pc.field("p") >= 900)
                .key_by("k").aggregate({"f": "sum"}).collect())

    graph = job().to_job_graph()
    src = next(n for n in graph.operators.values() if n.name == "files")
    assert src.parameters["columns"] == ["k", "p", "f"]
    assert src.parameters["filter"] is not None
    # the filter stays in the graph, marked: its rows come filtered from the scan
    flt = next(n for n in job().to_job_graph(chaining=False).operators.values() if n.operator_type.value == "filter")
    assert flt.parameters["evaluated_by_source"] is True
    result = job().run(default_parallelism=2)
    expected = TABLE.filter(pc.field("p") >= 900).group_by("k").aggregate([("f", "sum")]).select(["k", "f_sum"])
    assert_tables_equal(result.table(), expected)
    # the scan skipped 9 of 10 row groups and the padding column
    full = Stream.from_parquet(str(tmp_path), name="files").map(lambda b: b).collect().run()
    assert _source_bytes(result) * 20 < _source_bytes(full)
    # a consumer whose needs are unknown (a user function) reads everything
    opaque = Stream.from_parquet(str(tmp_path), name="files").map(lambda b: b).collect().to_job_graph()
    src = next(n for n in opaque.operators.values() if n.name == "files")
    assert src.parameters.get("columns") is None and src.parameters.get("filter") is None


def _selects(stream):
    """{select name: (its output names, the names it dropped)} of the job graph."""
    out = {}
    for n in stream.to_job_graph(chaining=False).operators.values():
        if n.operator_type.value == "select":
            p = n.parameters
            names = [e[0] for e in p["expressions"]] if p.get("expressions") else list(
                p["columns"].values() if isinstance(p["columns"], dict) else p["columns"])
            out[n.name] = (names, p.get("pruned_columns"))
    return out


WIDE = TABLE.append_column("pad", pa.array(["w" * 100] * 1000)).append_column("ts", pa.array(np.arange(1000) * 7))


def _view():
    return Stream.from_table(WIDE, batch_size=128, name="t").select(
        {"k": pc.field("k"), "p2": pc.field("p") * 2, "s": pc.field("s"), "pad": pc.field("pad"),
         "f": pc.field("f")}, name="view")


@pytest.mark.parametrize("parallelism", [1, 2])
def test_selects_compute_only_the_columns_read_after_them(parallelism):
    """A wide view, filtered, then narrowed: each select keeps what the operators after it
    read, the earlier one narrowed by the later one's needs; the rows are the same."""
    stream = (_view().filter(pc.field("f") > 0.25, name="f1")
              .select({"k": "key", "p2": "p2", "s": "s"}, name="renamed")
              .filter(pc.field("s") != "x3", name="f2").select("key", "p2", name="out").collect(name="sink"))
    assert _selects(stream) == {"view": (["k", "p2", "s", "f"], ["pad"]),
                                "renamed": (["key", "p2", "s"], None),
                                "out": (["key", "p2"], None)}
    want = WIDE.filter((pc.field("f") > 0.25) & (pc.field("s") != "x3"))
    want = pa.table({"key": want["k"], "p2": pc.multiply(want["p"], 2)})
    assert_tables_equal(stream.run(default_parallelism=parallelism).table(), want, sort_by=["p2"])
    # the renaming select drops the columns the last select does not read, and the view too
    narrower = (_view().filter(pc.field("f") > 0.25, name="f1")
                .select({"k": "key", "p2": "p2", "s": "s"}, name="renamed")
                .select("key", name="out").collect(name="sink"))
    assert _selects(narrower)["renamed"] == (["key"], ["p2", "s"])
    assert _selects(narrower)["view"] == (["k", "f"], ["p2", "s", "pad"])
    assert_tables_equal(narrower.run(default_parallelism=parallelism).table(),
                        pa.table({"key": WIDE.filter(pc.field("f") > 0.25)["k"]}), sort_by=["key"])


def test_a_select_before_an_aggregate_or_window_keeps_keys_values_and_time():
    view = Stream.from_table(WIDE, batch_size=100, name="t").select("k", "p", "s", "pad", "ts", name="view")
    agg = view.key_by("k").aggregate({"p": "sum"}, name="agg").collect(name="sink")
    assert _selects(agg)["view"] == (["k", "p"], ["s", "pad", "ts"])
    assert_tables_equal(agg.run(default_parallelism=2).table(),
                        WIDE.group_by("k").aggregate([("p", "sum")]).select(["k", "p_sum"]), sort_by=["k"])
    timed = (Stream.from_table(WIDE, batch_size=100, name="t").with_watermarks("ts")
             .select("k", "p", "s", "pad", "ts", name="view"))
    windowed = timed.key_by("k").window(700, {"p": "sum"}, name="win").collect(name="sink")
    assert _selects(windowed)["view"] == (["k", "p", "ts"], ["s", "pad"])
    got = windowed.run().table()
    assert got.num_rows and pc.sum(got["p_sum"]).as_py() == pc.sum(WIDE["p"]).as_py()


def test_a_select_keeps_the_key_of_a_keyed_operator_after_it():
    """The edge into a keyed filter hashes its key: the select before it keeps the key column
    although the filter's predicate and what follows do not read it."""
    stream = (Stream.from_table(WIDE, batch_size=100, name="t").select("k", "p", "s", "pad", name="view")
              .key_by("k").filter(pc.field("p") > 3, name="kf").select("p", name="out").collect(name="sink"))
    assert _selects(stream)["view"] == (["k", "p"], ["s", "pad"])
    assert_tables_equal(stream.run(default_parallelism=2).table(), WIDE.filter(pc.field("p") > 3).select(["p"]),
                        sort_by=["p"])


def test_a_file_source_keeps_the_key_of_a_keyed_operator_after_it(tmp_path):
    pq.write_table(WIDE, tmp_path / "a.parquet")
    stream = (Stream.from_parquet(str(tmp_path), name="files").key_by("k").filter(pc.field("p") > 3, name="kf")
              .select("p", name="out").collect(name="sink"))
    src = next(n for n in stream.to_job_graph().operators.values() if n.name == "files")
    assert src.parameters["columns"] == ["k", "p"]  # read "p" alone before: KeyColumnError on the keyed edge
    assert_tables_equal(stream.run(default_parallelism=2).table(), WIDE.filter(pc.field("p") > 3).select(["p"]),
                        sort_by=["p"])


def test_selects_whose_output_is_all_read_or_unknown_are_kept_whole():
    def base():
        return Stream.from_table(WIDE, batch_size=100, name="t")
    # a user function, a sink and a union read every column
    assert _selects(base().select("k", "s", name="view").map(lambda b: b).collect())["view"][1] is None
    assert _selects(base().select("k", "s", name="view").collect())["view"][1] is None
    other = Stream.from_table(WIDE.select(["k", "s"]), name="u")
    union = base().select("k", "s", name="view").union(other).select("k", name="after").collect()
    assert _selects(union)["view"][1] is None
    assert union.run().table().num_rows == 2 * WIDE.num_rows
    # a select whose every column is read: nothing to drop
    whole = base().select("k", "p", name="view").filter(pc.field("p") > 3).select("p", "k").collect()
    assert _selects(whole)["view"][1] is None


def test_a_file_source_with_watermarks_reads_its_time_column_though_nothing_after_it_does(tmp_path):
    """Projection push-down kept only the columns the operators read, dropping the source's
    own event-time column: the source then failed computing its watermarks."""
    t = pa.table({"k": np.arange(100) % 3, "v": np.arange(100) * 1.5, "ts": np.arange(100) * 10,
                  "pad": ["z" * 50] * 100})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=30)
    stream = (Stream.from_parquet(str(tmp_path), name="files").with_watermarks("ts", 5)
              .filter(pc.field("v") > 30.0).select("k", "v").collect())
    src = next(n for n in stream.to_job_graph().operators.values() if n.name == "files")
    assert src.parameters["columns"] == ["k", "v", "ts"]  # not "pad"
    got = stream.run(default_parallelism=2).table()
    assert_tables_equal(got, t.filter(pc.field("v") > 30.0).select(["k", "v"]), sort_by=["v"])


def test_only_filters_pushed_into_the_scan_skip_their_evaluation(tmp_path):
    """Two filters right behind a file source (one with nulls) go to the scan and pass rows
    through; a filter after a map, or behind a source read by two consumers, evaluates."""
    n = 2000
    t = pa.table({"k": np.arange(n) % 13, "p": pa.array([None if i % 7 == 0 else i for i in range(n)], pa.int64()),
                  "f": np.arange(n) * 0.5})
    pq.write_table(t, tmp_path / "a.parquet", row_group_size=128)

    def flags(graph):
        return {n.name: n.parameters.get("evaluated_by_source", False)
                for n in graph.operators.values() if n.operator_type.value == "filter"}

    pushed = (Stream.from_parquet(str(tmp_path), name="files").filter(pc.field("p") > 300, name="f1")
              .filter(pc.field("f") < 900.0, name="f2").map(lambda b: b, name="m")
              .filter(pc.field("k") != 3, name="f3").collect())
    assert flags(pushed.to_job_graph(chaining=False)) == {"f1": True, "f2": True, "f3": False}
    for parallelism in (1, 2):
        got = pushed.run(default_parallelism=parallelism).table()
        want = t.filter((pc.field("p") > 300) & (pc.field("f") < 900.0) & (pc.field("k") != 3))
        assert_tables_equal(got, want, sort_by=["f"])
    source = Stream.from_parquet(str(tmp_path), name="files")
    left = source.filter(pc.field("p") > 1500, name="left")
    right = source.filter(pc.field("p") < 100, name="right")
    both = left.union(right).collect()
    assert flags(both.to_job_graph(chaining=False)) == {"left": False, "right": False}
    want = t.filter((pc.field("p") > 1500) | (pc.field("p") < 100))
    assert_tables_equal(both.run(default_parallelism=2).table(), want, sort_by=["f"])


def _sink(tmp_path, subtask=0, checkpointing=True):
    op = {"name": "parts", "operator_id": "parts", "operator_type": "sink", "key_by": None, "function": None,
          "parameters": {"kind": "partitioned_files", "path": str(tmp_path / "out"), "partition_by": ["dt", "hm"]}}
    ctx = TaskContext("job", f"parts-{subtask}", 0, op, subtask, 1, 128, {}, checkpointing)
    sink = create_operator(ctx)
    sink.open()
    return sink


def _read(tmp_path):
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hm", pa.string())]), flavor="hive")
    return ds.dataset(str(tmp_path / "out"), partitioning=part).to_table()


def test_partitioned_sink_commits_each_partition_exactly_once_across_a_restore(tmp_path):
    rows = pa.table({"v": pa.array(range(12), pa.int64()), "dt": ["d1"] * 6 + ["d2"] * 6,
                     "hm": ["10:00", "10:01"] * 6})
    sink = _sink(tmp_path)
    sink.process(rows.slice(0, 4).to_batches()[0], 0)
    state = sink.snapshot_state(1)["state"]
    sink.notify_checkpoint_complete(1)
    assert sorted(_read(tmp_path)["v"].to_pylist()) == [0, 1, 2, 3]
    sink.process(rows.slice(4, 4).to_batches()[0], 0)  # after the checkpoint: lost with the failure
    sink.snapshot_state(2)  # staged for checkpoint 2, which never completes
    sink.close()
    again = _sink(tmp_path)
    again.restore_state(None, state, 1)
    assert sorted(_read(tmp_path)["v"].to_pylist()) == [0, 1, 2, 3]
    again.process(rows.slice(4, 8).to_batches()[0], 0)  # the replay after checkpoint 1
    again.finish()
    again.notify_job_finished()
    got = _read(tmp_path)
    assert_tables_equal(got.select(["v", "dt", "hm"]), rows)
    dirs = sorted(os.path.relpath(r, tmp_path / "out") for r, _, f in os.walk(tmp_path / "out") if "_SUCCESS" in f)
    assert dirs == ["dt=d1/hm=10%3A00", "dt=d1/hm=10%3A01", "dt=d2/hm=10%3A00", "dt=d2/hm=10%3A01"]


def test_partitioned_sink_in_a_job(tmp_path):
    t = TABLE.append_column("dt", pc.cast(pc.divide(TABLE["p"], 400), pa.string())).append_column(
        "hm", pc.utf8_slice_codeunits(TABLE["s"], 0, 2))
    Stream.from_table(t, batch_size=64).to_files(str(tmp_path / "out"), partition_by=["dt", "hm"]).run(
        default_parallelism=2)
    got = _read(tmp_path)
    assert_tables_equal(got.select(t.column_names), t)


EMPTY = pa.table({"k": [1, 2], "v": [1.0, 2.0]})


def test_an_empty_result_is_an_empty_table_of_the_declared_schema():
    stream = Stream.from_table(EMPTY).filter(pc.field("v") > 5).key_by("k").aggregate({"v": ["sum"]})
    got = stream.collect(name="o").run(default_parallelism=2).table("o")
    assert got.num_rows == 0 and got.schema == pa.schema([("k", pa.int64()), ("v_sum", pa.float64())])
    got = run_stream(Stream.from_table(EMPTY).filter(pc.field("v") > 5))
    assert got.num_rows == 0 and got.schema == EMPTY.schema


def test_an_empty_result_over_http():
    async def body():
        async with in_process_cluster(workers=1, slots=2) as (c, _):
            stream = Stream.from_table(EMPTY).filter(pc.field("v") > 5).key_by("k").aggregate({"v": ["sum"]})
            job_id = await c.submit_stream_job(stream.collect(name="o").to_job_graph(default_parallelism=2))
            await c.wait_for_job(job_id, 30)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{c.url}/jobs/{job_id}/result") as resp:
                    info = await resp.json()
                async with session.get(f"{c.url}/jobs/{job_id}/result/o") as resp:
                    status, data = resp.status, await resp.read()
            return info, status, data

    info, status, data = asyncio.run(asyncio.wait_for(body(), 60))
    assert info["tables"]["o"]["num_rows"] == 0
    assert status == 200
    table = pa.ipc.open_stream(data).read_all()
    assert table.num_rows == 0 and table.column_names == ["k", "v_sum"]


def test_join_table_suffixes_clashing_columns_in_the_declared_schema():
    s = (Stream.from_table(pa.table({"k": [1, 2], "x": [10, 20]}))
         .join_table(pa.table({"k": [1, 2], "x": [100, 200]}), on="k"))
    assert s.schema.names == ["k", "x", "x_right"]
    assert run_stream(s.select("k", "x", "x_right")).to_pydict() == {"k": [1, 2], "x": [10, 20], "x_right": [100, 200]}
    s = (Stream.from_table(pa.table({"k": [1, 2], "x": [10, 20]}))
         .join_table(pa.table({"k": [1, 2], "x": [100, 200]}), on="k", suffix="_t"))
    assert run_stream(s).column_names == ["k", "x", "x_t"]


def test_late_records_reach_their_own_sink_and_only_it():
    # batches of 5 rows; the 4th batch goes back in time: its rows are behind the watermark
    t = pa.table({"k": [i % 3 for i in range(20)], "t": [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24,
                                                           1, 2, 25, 3, 26]})
    windowed = (Stream.from_table(t, batch_size=5, parallelism=1).with_watermarks("t")  # one source: one clock
                .key_by("k").window(5, {"*": "count"}))
    late = windowed.late_records().collect(name="late")
    windowed.collect(name="main")
    result = late.run(default_parallelism=2)
    assert sorted(result.table("late")["t"].to_pylist()) == [1, 2, 3]
    assert result.table("late").schema == t.schema
    main = result.table("main")
    on_time = t.take([i for i in range(20) if i not in (15, 16, 18)])  # the late rows' positions
    expected = on_time.append_column("window_start", pc.multiply(pc.divide(on_time["t"], 5), 5)).group_by(
        ["k", "window_start"]).aggregate([([], "count_all")])
    assert sorted(zip(main["k"].to_pylist(), main["window_start"].to_pylist(), main["count"].to_pylist())) == sorted(
        zip(expected["k"].to_pylist(), expected["window_start"].to_pylist(), expected["count_all"].to_pylist()))


def test_a_listing_that_races_a_directory_being_created_is_tried_again(tmp_path):
    import pyarrow.fs as pafs

    from sabot.runtime.operators.sinks import list_directory

    local = pafs.LocalFileSystem()

    class Racy:
        """Fails a listing once, as pyarrow's allow_not_found does while another subtask
        creates the directory (seen: 'Cannot list directory ... No such file')."""

        failures = 0

        def get_file_info(self, what):
            if isinstance(what, pafs.FileSelector) and not self.failures:
                self.failures += 1
                raise FileNotFoundError(f"Cannot list directory '{what.base_dir}'")
            return local.get_file_info(what)

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    racy = Racy()
    assert [i.base_name for i in list_directory(racy, str(tmp_path / "x"))] == ["f"]  # listed again
    assert racy.failures == 1
    assert list_directory(Racy(), str(tmp_path / "missing")) == []

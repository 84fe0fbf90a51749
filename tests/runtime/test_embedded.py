"""Jobs run end to end in one process, compared with independent pyarrow results."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot import JobFailed, Stream
from sabot.runtime import functions
from sabot.runtime.generators import keyed_records
from sabot.testing import assert_tables_equal, run_stream

from jobs import (
    add_value2,
    always_boom,
    boom_on_third,
    drops_a_column_sometimes,
    explode_twice,
    keyed_count_stream,
    reference_keyed_count,
    returns_list,
    value_over_half,
)


@pytest.fixture(scope="module")
def data():
    return pa.Table.from_batches([keyed_records(0, 50_000, num_keys=1000, seed=7)])


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_keyed_count_job_equals_reference(parallelism):
    total = 200_000
    result = keyed_count_stream(Stream, total).run(default_parallelism=parallelism, timeout=60)
    expected = reference_keyed_count(pa.Table.from_batches([keyed_records(0, total, num_keys=1000)]))
    assert_tables_equal(result.table("sink"), expected, sort_by=["key"])


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_filter_map_select_multisets_equal(data, parallelism):
    out = run_stream(
        Stream.from_table(data, batch_size=4096)
        .filter(value_over_half)
        .map(add_value2)
        .select({"key": "k", "value2": "v2"}),
        default_parallelism=parallelism,
    )
    ref = data.filter(pc.field("value") > 0.5)
    ref = pa.table({"k": ref["key"], "v2": pc.multiply(ref["value"], 2.0)})
    assert_tables_equal(out, ref)


def test_expression_filter_and_lambda_map(data):
    out = run_stream(
        Stream.from_table(data, batch_size=5000)
        .filter(pc.field("key") < 10)
        .map(lambda b: b.append_column("one", pa.array(np.ones(b.num_rows, dtype=np.int64))))
    )
    ref = data.filter(pc.field("key") < 10)
    ref = ref.append_column("one", pa.array(np.ones(ref.num_rows, dtype=np.int64)))
    assert_tables_equal(out, ref)


def test_flat_map_and_union(data):
    small = data.slice(0, 1000)
    a = Stream.from_table(small, batch_size=100, name="a")
    b = Stream.from_table(small, batch_size=300, name="b").flat_map(explode_twice)
    out = run_stream(a.union(b), default_parallelism=2)
    assert_tables_equal(out, pa.concat_tables([small, small, small]))


@pytest.mark.parametrize("fn", ["count", "sum", "min", "max", "mean"])
def test_aggregate_each_function(data, fn):
    out = run_stream(Stream.from_table(data, batch_size=3000).key_by("key").aggregate({"value": fn}),
                     default_parallelism=3)
    ref = data.group_by("key").aggregate([("value", fn)])
    assert_tables_equal(out, ref.select(["key", f"value_{fn}"]), sort_by=["key"])


def test_aggregate_count_star_and_updates(data):
    small = data.slice(0, 2000)
    final = run_stream(Stream.from_table(small, batch_size=500).key_by("key").aggregate({"*": "count"}))
    ref = small.group_by("key").aggregate([([], "count_all")])
    ref = pa.table({"key": ref["key"], "count": ref["count_all"]})
    assert_tables_equal(final, ref, sort_by=["key"])
    updates = run_stream(
        Stream.from_table(small, batch_size=500).key_by("key").aggregate({"value": "sum"}, emit="updates")
    )
    # the last update of every key is its final value
    last = {}
    for k, v in zip(updates["key"].to_pylist(), updates["value_sum"].to_pylist()):
        last[k] = v
    expected = dict(zip(*small.group_by("key").aggregate([("value", "sum")]).select(["key", "value_sum"])
                         .to_pydict().values()))
    assert last.keys() == expected.keys()
    assert all(abs(last[k] - expected[k]) <= 1e-9 * max(1.0, abs(expected[k])) for k in expected)


def test_per_key_order_kept_through_hash_edges():
    n = 20_000
    rng = np.random.default_rng(3)
    t = pa.table({"key": rng.integers(0, 50, n), "seq": np.arange(n)})
    # one source subtask: Flink's guarantee is per-key order per upstream subtask
    out = run_stream(Stream.from_table(t, batch_size=700).parallelism(1).key_by("key").select("key", "seq"),
                     default_parallelism=4)
    assert out.num_rows == n
    keys = out["key"].to_numpy()
    seqs = out["seq"].to_numpy()
    for key in np.unique(keys):
        s = seqs[keys == key]
        assert np.all(np.diff(s) > 0), f"key {key} out of order"


def test_source_parallelism_splits_without_loss(data):
    out = run_stream(Stream.from_table(data, batch_size=1000).parallelism(3).select("key", "value"))
    assert_tables_equal(out, data.select(["key", "value"]))


def test_user_function_error_fails_job_with_names_and_traceback(data):
    stream = Stream.from_table(data, batch_size=1000).map(always_boom, name="cursed_map").collect()
    with pytest.raises(JobFailed) as info:
        stream.run(timeout=30)
    message = str(info.value)
    assert "cursed_map" in message
    assert "always_boom" in message
    assert "ZeroDivisionError" in message and "cursed batch" in message
    assert "original traceback" in message


def test_user_function_error_later_in_stream_does_not_hang(data):
    stream = Stream.from_table(data, batch_size=1000).map(boom_on_third, name="third").collect()
    with pytest.raises(JobFailed, match="third batch is cursed"):
        stream.run(default_parallelism=2, timeout=30)


def test_wrong_return_type_names_operator(data):
    with pytest.raises(JobFailed, match=r"returned list; expected a pyarrow.RecordBatch.*|'bad_map'"):
        Stream.from_table(data, batch_size=1000).map(returns_list, name="bad_map").collect().run(timeout=30)


def test_schema_change_names_operator():
    t = pa.table({"a": np.arange(10), "b": np.arange(10)})
    with pytest.raises(JobFailed, match="unstable.*schema|schema.*unstable"):
        Stream.from_table(t, batch_size=1).map(drops_a_column_sometimes, name="unstable").collect().run(timeout=30)


def test_unknown_columns_rejected_at_build_time(data):
    s = Stream.from_table(data)
    with pytest.raises(ValueError, match=r"nope.*available columns: \['key', 'value', 'ts'\]"):
        s.select("key", "nope")
    with pytest.raises(ValueError, match="missing_key"):
        s.key_by("missing_key")
    with pytest.raises(ValueError, match="missing_value"):
        s.key_by("key").aggregate({"missing_value": "sum"})


def test_lambda_is_refused_for_shipping(data):
    s = Stream.from_table(data).map(lambda b: b, name="lambda_map").collect()
    with pytest.raises(ValueError, match="lambda_map.*lambda or closure"):
        s.to_job_graph(shippable=True)
    job = keyed_count_stream(Stream, 100).to_job_graph(shippable=True)
    assert any("jobs:add_value2" in functions.references_of(op) for op in job.operators.values())


def test_job_graph_round_trips_and_runs_from_json():
    from sabot.execution import JobGraph
    from sabot.testing import run_graph

    job = keyed_count_stream(Stream, 30_000).to_job_graph("roundtrip", default_parallelism=2)
    again = JobGraph.from_json(job.to_json())
    result = run_graph(again)
    expected = reference_keyed_count(pa.Table.from_batches([keyed_records(0, 30_000, num_keys=1000)]))
    assert_tables_equal(result.table("sink"), expected, sort_by=["key"])


def test_slow_sink_backpressures_source_with_bounded_memory():
    from sabot.runtime.data_server import DataServer

    credits = DataServer().credits
    batch_rows = 10_000
    t = pa.table({"x": np.arange(batch_rows * 150, dtype=np.int64)})
    batch_bytes = t.slice(0, batch_rows).nbytes
    result = (Stream.from_table(t, batch_size=batch_rows, name="src").parallelism(1)
              .sink("jobs:slow_sink", name="slow").run(timeout=60))
    by_op = {s["operator_name"]: s for s in result.tasks}
    assert by_op["slow"]["metrics"]["rows_in"] == t.num_rows
    # the sink never holds more than its credits' worth of batches ...
    assert 0 < by_op["slow"]["metrics"]["peak_buffered_bytes"] <= credits * batch_bytes
    # ... so the source spent most of the sink's sleeping time waiting for credit
    assert by_op["src"]["metrics"]["backpressured_seconds"] > 0.3



@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_multi_column_aggregate_key_equals_group_by(data, parallelism):
    # two key columns: the int64 key and a string bucket derived from ts
    bucket = pc.cast(pc.bit_wise_and(data["ts"], 7), pa.string())
    t = data.append_column("bucket", bucket)
    out = run_stream(
        Stream.from_table(t, batch_size=4000).key_by("key", "bucket").aggregate({"value": ["count", "sum", "max"]}),
        default_parallelism=parallelism,
    )
    ref = t.group_by(["key", "bucket"], use_threads=False).aggregate(
        [("value", "count"), ("value", "sum"), ("value", "max")])
    assert_tables_equal(out, ref.select(["key", "bucket", "value_count", "value_sum", "value_max"]),
                        sort_by=["key", "bucket"])


def test_multi_column_aggregate_output_schema_is_keys_then_aggregates(data):
    stream = Stream.from_table(data).key_by("key", "ts").aggregate({"value": ["sum", "mean"], "*": "count"})
    assert stream.schema == pa.schema([data.schema.field("key"), data.schema.field("ts"),
                                       pa.field("value_sum", pa.float64()), pa.field("value_mean", pa.float64()),
                                       pa.field("count", pa.int64())])
    out = run_stream(stream, default_parallelism=2)
    assert out.schema.names == stream.schema.names
    assert out.schema.types == stream.schema.types


def test_event_time_window_on_a_timestamp_column():
    n = 6000
    rng = np.random.default_rng(5)
    ms = np.sort(rng.integers(0, 60_000, n))
    t = pa.table({"key": rng.integers(0, 5, n), "ts": pa.array(ms, pa.timestamp("ms")), "v": np.ones(n)})
    out = run_stream(
        Stream.from_table(t, batch_size=500).with_watermarks("ts", 0)
        .key_by("key").window(10_000, {"v": "sum"}, time_column="ts"),
        default_parallelism=2,
    )
    # independent reference: bucket by 10 s windows with numpy
    starts = (ms // 10_000) * 10_000
    keys = t["key"].to_numpy()
    expected = {}
    for k, s in zip(keys, starts):
        expected[(int(k), int(s))] = expected.get((int(k), int(s)), 0) + 1.0
    got = {(k, s): v for k, s, v in zip(out["key"].to_pylist(), out["window_start"].cast(pa.int64()).to_pylist(),
                                        out["v_sum"].to_pylist())}
    assert got == expected


def test_watermarks_need_a_time_typed_column():
    t = pa.table({"ts": ["a", "b"]})
    with pytest.raises(ValueError, match="expected an integer, timestamp"):
        Stream.from_table(t).with_watermarks("ts", 0)

"""Operator chaining: which operators are fused (the rules of sabot.execution.chaining), and
that a chained job gives the same result as the unchained one and as pyarrow."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot import Stream
from sabot.errors import OperatorError
from sabot.execution.chaining import chain_operators
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode
from sabot.runtime import functions
from sabot.testing import assert_tables_equal


def table(n=20_000):
    rng = np.random.default_rng(7)
    return pa.table({"key": rng.integers(0, 300, n), "value": rng.random(n), "tag": pa.array([f"t{i % 7}" for i in range(n)])})


def double(batch):
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def halves(batch):
    mid = batch.num_rows // 2
    return [batch.slice(0, mid), batch.slice(mid)]


def shape(job):
    """(name, type) of every operator and the edges by name: the graph as a reader sees it."""
    names = {op_id: op.name for op_id, op in job.operators.items()}
    return ([(op.name, op.operator_type.value) for op in job.operators.values()],
            sorted((names[u], names[d]) for u, d in job.edges))


def test_a_run_of_stateless_forward_operators_becomes_one_chain():
    t = table()
    stream = (Stream.from_table(t, name="src").filter(pc.field("value") > 0.3, name="f").map(double, name="m")
              .flat_map(halves, name="fm").select("key", "value2", name="sel")
              .key_by("key").aggregate({"value2": ["sum"]}, name="agg").collect(name="out"))
    plain = stream.to_job_graph(chaining=False)
    chained = stream.to_job_graph(chaining=True)
    assert shape(chained) == ([("src", "source"), ("f -> m -> fm -> sel", "chain"), ("agg", "aggregate"),
                               ("out", "sink")],
                              sorted([("src", "f -> m -> fm -> sel"), ("f -> m -> fm -> sel", "agg"),
                                      ("agg", "out")]))
    chain = next(op for op in chained.operators.values() if op.operator_type == OperatorType.CHAIN)
    last = next(op for op in plain.operators.values() if op.name == "sel")
    assert chain.operator_id == last.operator_id  # the chain is known by its last member's id
    assert [s["name"] for s in chain.parameters["steps"]] == ["f", "m", "fm", "sel"]
    assert len(plain.operators) == 7  # nothing changed in place, and chaining=False chains nothing


@pytest.mark.parametrize("why", ["parallelism", "keyed", "fan-out", "fan-in", "disabled", "explicit partitioning"])
def test_operators_that_must_stay_apart_are_not_chained(why):
    t = table(100)
    s = Stream.from_table(t, name="src").filter(pc.field("value") > 0.5, name="a")
    if why == "parallelism":
        s.map(double, name="b").parallelism(2).collect(name="out")
    elif why == "keyed":
        s.key_by("key").map(double, name="b").collect(name="out")
    elif why == "fan-out":
        s.map(double, name="b").collect(name="out")
        s.collect(name="out2")
    elif why == "fan-in":
        other = Stream.from_table(t, name="src2")
        s.union(other).map(double, name="b").collect(name="out")
    elif why == "disabled":
        s.disable_chaining().map(double, name="b").collect(name="out")
    if why == "explicit partitioning":
        job = JobGraph("j", 1)
        for op in (StreamOperatorNode(OperatorType.SOURCE, "src", operator_id="src", parameters={"kind": "generator"}),
                   StreamOperatorNode(OperatorType.FILTER, "a", operator_id="a"),
                   StreamOperatorNode(OperatorType.MAP, "b", operator_id="b")):
            job.add_operator(op)
        job.connect("src", "a")
        job.connect("a", "b", "rebalance")
    else:
        job = s.to_job_graph(chaining=False)
    assert not any(op.operator_type == OperatorType.CHAIN for op in chain_operators(job).operators.values())


@pytest.mark.parametrize("parallelism", [1, 2])
def test_a_chained_job_gives_what_the_unchained_one_and_pyarrow_give(parallelism):
    t = table()

    def job():
        return (Stream.from_table(t, batch_size=1000).filter(pc.field("value") > 0.3).map(double)
                .flat_map(halves).select("key", "value2").key_by("key").aggregate({"value2": ["count", "sum"]})
                .collect(name="out"))

    f = t.filter(pc.field("value") > 0.3)
    want = f.append_column("value2", pc.multiply(f.column("value"), 2.0)).group_by("key").aggregate(
        [("value2", "count"), ("value2", "sum")])
    for chaining in (False, True):
        got = job().run(default_parallelism=parallelism, chaining=chaining).table("out")
        assert_tables_equal(got, want.select(got.column_names), sort_by=["key"])


def test_a_members_failure_names_the_member():
    def boom(batch):
        raise ValueError("no good")

    stream = Stream.from_table(table(100)).filter(pc.field("value") >= 0, name="ok").map(boom, name="bad") \
        .collect(name="out")
    with pytest.raises(Exception, match="bad") as info:
        stream.run(chaining=True)
    assert "no good" in str(info.value)


def test_a_chain_whose_first_member_drops_every_row_emits_nothing():
    got = Stream.from_table(table(500)).filter(pc.field("value") > 2.0).map(double).collect(name="out") \
        .run(chaining=True)
    assert "out" not in got.tables or got.table("out").num_rows == 0


def test_functions_inside_a_chain_are_checked_like_any_operators():
    stream = Stream.from_table(table(10)).filter(pc.field("value") > 0).map(lambda b: b).collect()
    with pytest.raises(functions.FunctionReferenceError, match="lambda or closure"):
        stream.to_job_graph(shippable=True, chaining=True)
    chained = stream.to_job_graph(chaining=True)
    chain = next(op for op in chained.operators.values() if op.operator_type == OperatorType.CHAIN)
    assert [r for r in functions.references_of(chain) if r] == [chain.parameters["steps"][1]["function"]]


def test_a_chain_needs_steps():
    from sabot.runtime.operators.base import TaskContext, create_operator

    ctx = TaskContext(job_id="j", task_id="t", attempt=0, subtask_index=0, parallelism=1, max_parallelism=128,
                      operator={"operator_type": "chain", "name": "c", "parameters": {"steps": [{"x": 1}]}})
    with pytest.raises(OperatorError, match="at least two"):
        create_operator(ctx)


def test_the_coordinator_applies_its_function_policy_to_a_chains_members():
    """A hostile graph cannot hide a function inside a chain's steps."""
    from sabot.cluster.admission import check_functions
    from sabot.errors import InvalidRequest

    job = JobGraph("j", 1)
    job.add_operator(StreamOperatorNode(OperatorType.SOURCE, "src", operator_id="src", parameters={"kind": "generator"}))
    job.add_operator(StreamOperatorNode(OperatorType.CHAIN, "a -> b", operator_id="c", parameters={"steps": [
        {"operator_type": "filter", "name": "a", "operator_id": "a", "function": None,
         "parameters": {"expression": "x"}},
        {"operator_type": "map", "name": "b", "operator_id": "b", "function": "os:system", "parameters": {}}]}))
    job.connect("src", "c")
    with pytest.raises(InvalidRequest, match="os"):
        check_functions(JobGraph.from_dict(job.to_dict()), check_imports=False)


def test_inputs_and_outputs_keep_their_order_around_a_chain():
    """A join's left input stays its left input when the left side is a chain built later."""
    job = JobGraph("j", 1)
    for op in (StreamOperatorNode(OperatorType.SOURCE, "r", operator_id="r", parameters={"kind": "generator"}),
               StreamOperatorNode(OperatorType.JOIN, "join", operator_id="join"),
               StreamOperatorNode(OperatorType.SOURCE, "l", operator_id="l", parameters={"kind": "generator"}),
               StreamOperatorNode(OperatorType.FILTER, "lf", operator_id="lf"),
               StreamOperatorNode(OperatorType.MAP, "lm", operator_id="lm")):
        job.add_operator(op)
    job.connect("l", "lf")
    job.connect("lf", "lm")
    job.connect("lm", "join")  # left
    job.connect("r", "join")  # right
    chained = chain_operators(job)
    assert chained.operators["join"].upstream_ids == ["lm", "r"]
    assert chained.operators["lm"].operator_type == OperatorType.CHAIN
    assert chained.operators["lm"].downstream_ids == ["join"] and chained.operators["l"].downstream_ids == ["lm"]

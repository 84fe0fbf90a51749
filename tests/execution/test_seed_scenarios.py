"""The seed design note's scenarios 1, 2, 4 and 5, with its figures.

(Scenario 3, the slot pool, lives in tests/execution/test_slot_pool.py.)
"""

import json

import pytest

from sabot.execution.execution_graph import ExecutionGraph, Partitioning
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode

SEED_PARALLELISM = {"kafka_source": 2, "price_filter": 4, "enrichment": 4, "kafka_sink": 2}


@pytest.fixture
def seed_job():
    job = JobGraph(job_name="fraud_detection", default_parallelism=4)
    source = StreamOperatorNode(operator_type=OperatorType.SOURCE, name="kafka_source", parallelism=2)
    price_filter = StreamOperatorNode(operator_type=OperatorType.FILTER, name="price_filter", parallelism=4)
    enrichment = StreamOperatorNode(operator_type=OperatorType.MAP, name="enrichment", parallelism=4)
    sink = StreamOperatorNode(operator_type=OperatorType.SINK, name="kafka_sink", parallelism=2)
    for op in (source, price_filter, enrichment, sink):
        job.add_operator(op)
    job.connect(source.operator_id, price_filter.operator_id)
    job.connect(price_filter.operator_id, enrichment.operator_id)
    job.connect(enrichment.operator_id, sink.operator_id)
    return job


def ids_by_name(job):
    return {op.name: op_id for op_id, op in job.operators.items()}


def test_scenario_1_job_graph_creation(seed_job):
    seed_job.validate()
    assert len(seed_job.operators) == 4
    assert {op.name: op.parallelism for op in seed_job.operators.values()} == SEED_PARALLELISM
    assert [o.name for o in seed_job.get_sources()] == ["kafka_source"]
    assert [o.name for o in seed_job.get_sinks()] == ["kafka_sink"]
    assert [o.name for o in seed_job.topological_sort()] == [
        "kafka_source", "price_filter", "enrichment", "kafka_sink"]


def test_scenario_2_execution_graph_conversion(seed_job):
    eg = seed_job.to_execution_graph()
    assert isinstance(eg, ExecutionGraph)
    assert len(eg.tasks) == sum(SEED_PARALLELISM.values()) == 12
    ids = ids_by_name(seed_job)
    for name, p in SEED_PARALLELISM.items():
        assert len(eg.operator_tasks(ids[name])) == p
    parts = [(eg.operators[e.upstream_operator_id].name, e.partitioning) for e in eg.edges]
    assert parts == [("kafka_source", Partitioning.REBALANCE), ("price_filter", Partitioning.FORWARD),
                     ("enrichment", Partitioning.REBALANCE)]
    m = eg.get_metrics_summary()
    assert m["total_tasks"] == 12 and m["running_tasks"] == 0


def test_scenario_4_live_rescaling(seed_job):
    eg = seed_job.to_execution_graph()
    ids = ids_by_name(seed_job)
    old_ids = [t.task_id for t in eg.operator_tasks(ids["enrichment"])]
    plan = eg.rescale_operator(operator_id=ids["enrichment"], new_parallelism=8)
    assert plan["status"] == "rescaling"
    assert plan["old_parallelism"] == 4
    assert plan["new_parallelism"] == 8
    assert plan["old_task_ids"] == old_ids
    assert len(plan["new_task_ids"]) == 8 and len(set(plan["new_task_ids"])) == 8
    assert not set(plan["new_task_ids"]) & set(old_ids)
    assert plan["requires_state_redistribution"] is False  # a MAP without key_by holds no state
    assert len(eg.tasks) == 12 - 4 + 8
    assert [t.task_id for t in eg.operator_tasks(ids["enrichment"])] == plan["new_task_ids"]
    assert seed_job.parallelism_of(ids["enrichment"]) == 8


def test_scenario_5_serialization_keeps_every_field(seed_job):
    seed_job.checkpoint_interval_ms = 10_000
    text = seed_job.to_json()
    restored = JobGraph.from_json(text)
    assert len(restored.operators) == 4
    assert restored.to_dict() == seed_job.to_dict() == json.loads(text)
    assert (restored.job_id, restored.job_name, restored.default_parallelism, restored.checkpoint_interval_ms) == (
        seed_job.job_id, "fraud_detection", 4, 10_000)
    for op_id, op in seed_job.operators.items():
        assert restored.operators[op_id].to_dict() == op.to_dict()
    # the restored graph is as usable as the original
    assert len(restored.to_execution_graph().tasks) == 12

"""Job graphs for control-plane tests (nothing runs them: the workers are fakes)."""

from sabot.api.stream import Stream
from sabot.runtime.generators import keyed_records


def pipeline(parallelism=2, *, aggregate_group=None, name="pipeline", **config):
    """source -> key_by -> aggregate -> collect sink, every operator at ``parallelism``."""
    stream = (Stream.from_generator(keyed_records, total_rows=None, parameters={"num_keys": 100}, name="source")
              .key_by("key").aggregate({"value": ["sum"]}, name="aggregate")
              .collect(name="sink"))
    job = stream.to_job_graph(name, default_parallelism=parallelism, shippable=True, **config)
    if aggregate_group:
        op_id(job, "aggregate", graph_only=True).sharing_group = aggregate_group
    return job


def op_id(job, name, graph_only=False):
    graph = getattr(job, "job_graph", job)
    node = next(op for op in graph.operators.values() if op.name == name)
    return node if graph_only else node.operator_id


def tasks_of(job_record, name):
    return job_record.exec_graph.operator_tasks(op_id(job_record, name))

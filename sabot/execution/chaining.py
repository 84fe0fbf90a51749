"""Operator chaining: runs of stateless operators fused into one operator (Flink's chains).

Every operator of a job is a task of its own: each batch it hands on costs a trip to the
operator thread and back and a channel to the next task (``bench/bench_overhead.py``
measures it). A filter followed by a map does not need two tasks: the map can take the
filter's output where it is made. :func:`chain_operators` fuses each *run* of chainable
operators into one ``CHAIN`` operator whose subtask calls them in order, on one thread,
with no channel between them (:class:`sabot.runtime.operators.chain.Chain`).

An edge ``a -> b`` is chained when

* both are stateless per-batch operators: ``filter``, ``map``, ``flat_map``, ``select``;
* it is a FORWARD edge: ``b`` is not keyed (a keyed input is HASH-partitioned), has the
  same parallelism and max parallelism as ``a``, and the edge has no explicit
  partitioning;
* ``a`` feeds only ``b`` and ``b`` reads only ``a``; both are in the same slot sharing
  group and neither asked not to be chained (``parameters["chaining"] = False``).

The fused operator takes the last member's id (what its downstream operators know it by:
a join names its sides by their operator ids), ``"a -> b"`` as its name, and lists every member under
``parameters["steps"]`` (type, name, id, function and parameters), so errors still name
the member operator that failed. Chained operators are stateless, so checkpoints,
restores and rescales treat the chain as the one stateless operator it is.
"""

from __future__ import annotations

from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode

__all__ = ["CHAINABLE", "chain_operators"]

#: operator types a chain may hold: stateless, one batch in, batches out
CHAINABLE = frozenset({OperatorType.FILTER, OperatorType.MAP, OperatorType.FLAT_MAP, OperatorType.SELECT})


def _chainable(job: JobGraph, up: StreamOperatorNode, down: StreamOperatorNode) -> bool:
    return (up.operator_type in CHAINABLE and down.operator_type in CHAINABLE
            and not up.stateful and not down.stateful
            and up.parameters.get("chaining", True) is not False
            and down.parameters.get("chaining", True) is not False
            and up.downstream_ids == [down.operator_id] and down.upstream_ids == [up.operator_id]
            and not down.key_by and not down.input_key_by
            and job.explicit_partitioning(up.operator_id, down.operator_id) is None
            and job.parallelism_of(up.operator_id) == job.parallelism_of(down.operator_id)
            and up.max_parallelism == down.max_parallelism
            and up.sharing_group == down.sharing_group)


def _step(node: StreamOperatorNode) -> dict:
    return {"operator_type": node.operator_type.value, "name": node.name, "operator_id": node.operator_id,
            "function": node.function, "parameters": dict(node.parameters)}


def chain_operators(job: JobGraph) -> JobGraph:
    """A copy of ``job`` with every run of chainable operators fused into one CHAIN
    operator (the module's rules); ``job`` itself is not changed. A graph with nothing to
    chain comes back as an equal copy."""
    ops = job.operators
    runs = {}  # the id a run's operator takes (its last member's) -> the run's operators, in order
    member_of = {}  # operator id -> the id of its run's operator
    for op in ops.values():
        ups = op.upstream_ids
        if len(ups) == 1 and _chainable(job, ops[ups[0]], op):
            continue  # not the start of a run: its upstream's run takes it
        run = [op]
        while len(run[-1].downstream_ids) == 1 and _chainable(job, run[-1], ops[run[-1].downstream_ids[0]]):
            run.append(ops[run[-1].downstream_ids[0]])
        runs[run[-1].operator_id] = run
        for member in run:
            member_of[member.operator_id] = run[-1].operator_id

    out = JobGraph(job.job_name, job.default_parallelism, job_id=job.job_id,
                   checkpoint_interval_ms=job.checkpoint_interval_ms, config=dict(job.config))
    out.tables = dict(job.tables)
    for run_id, run in runs.items():
        head = run[0]
        if len(run) == 1:
            node = head.copy()
            node.upstream_ids, node.downstream_ids = [], []  # connected again below
            out.add_operator(node)
            continue
        out.add_operator(StreamOperatorNode(
            operator_type=OperatorType.CHAIN,
            name=" -> ".join(member.name for member in run),
            parallelism=head.parallelism,
            max_parallelism=head.max_parallelism,
            operator_id=run_id,
            key_by=list(head.key_by) if head.key_by else None,
            input_key_by=dict(head.input_key_by) if head.input_key_by else None,
            cpu_cores=max(member.cpu_cores for member in run),
            memory_mb=max(member.memory_mb for member in run),
            parameters={"steps": [_step(member) for member in run]},
            sharing_group=head.sharing_group,
        ))
    for up_id, down_id in job.edges:
        up_run, down_run = member_of[up_id], member_of[down_id]
        if up_run == down_run:
            continue  # inside a chain
        explicit = job.explicit_partitioning(up_id, down_id)
        out.connect(up_run, down_run, explicit)
    # inputs and outputs keep their order (an input's index is its place among the upstreams:
    # a join's left and right; an output edge's, among the downstreams)
    for run_id, run in runs.items():
        node = out.operators[run_id]
        node.upstream_ids = [member_of[u] for u in run[0].upstream_ids]
        node.downstream_ids = [member_of[d] for d in run[-1].downstream_ids]
    return out

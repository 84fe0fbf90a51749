"""JobGraph: building, every validate() error, ordering and lossless serialisation."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sabot.errors import CycleError, GraphValidationError
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode


def node(kind, name, **kw):
    return StreamOperatorNode(operator_type=kind, name=name, **kw)


def chain(*specs, job=None):
    job = job or JobGraph(job_name="t", default_parallelism=2)
    ops = [node(k, n, **kw) for k, n, kw in specs]
    for op in ops:
        job.add_operator(op)
    for a, b in zip(ops, ops[1:]):
        job.connect(a.operator_id, b.operator_id)
    return job, ops


S, M, F, K = OperatorType.SOURCE, OperatorType.MAP, OperatorType.FILTER, OperatorType.SINK


def test_operator_defaults_and_ids():
    a = node(M, "enrich")
    b = node(M, "enrich")
    assert a.operator_id != b.operator_id and a.operator_id.startswith("enrich_")
    assert a.parallelism is None and a.max_parallelism == 128
    assert (a.cpu_cores, a.memory_mb, a.stateful, a.key_by, a.parameters) == (0.5, 256, False, None, {})
    c = node("aggregate", "agg", key_by="user", operator_id="agg-1")
    assert c.operator_type is OperatorType.AGGREGATE and c.key_by == ["user"] and c.stateful
    assert c.operator_id == "agg-1"
    assert {t.value for t in OperatorType} >= {
        "source", "map", "filter", "select", "flat_map", "union", "key_by", "aggregate", "window", "join", "sink"}
    with pytest.raises(ValueError, match="unknown operator_type 'bogus'"):
        node("bogus", "x")
    with pytest.raises(TypeError, match="parallelism must be an int"):
        node(M, "x", parallelism="4")


def test_default_parallelism_applies_and_explicitness_survives():
    job, (s, m, k) = chain((S, "src", {"parallelism": 3}), (M, "m", {}), (K, "sink", {}))
    assert job.parallelism_of(m.operator_id) == 2
    assert job.parallelism_of(s.operator_id) == 3
    d = job.to_dict()
    assert [o["parallelism"] for o in d["operators"]] == [3, None, None]
    eg = job.to_execution_graph()
    assert len(eg.operator_tasks(m.operator_id)) == 2


def test_add_operator_copies_and_rejects_duplicate_ids():
    job = JobGraph(job_name="t")
    a = node(S, "a")
    assert job.add_operator(a) == a.operator_id
    assert job.operators[a.operator_id] is not a
    with pytest.raises(GraphValidationError, match=a.operator_id):
        job.add_operator(a)
    # the same node objects can build two graphs without sharing edges
    b = node(K, "b")
    for _ in range(2):
        j = JobGraph(job_name="t")
        j.add_operator(a)
        j.add_operator(b)
        j.connect(a.operator_id, b.operator_id)
        j.validate()


def test_connect_unknown_and_duplicate():
    job, (s, k) = chain((S, "src", {}), (K, "sink", {}))
    with pytest.raises(GraphValidationError, match="unknown downstream operator id 'nope'.*src"):
        job.connect(s.operator_id, "nope")
    with pytest.raises(GraphValidationError, match="unknown upstream operator id 'nope'"):
        job.connect("nope", k.operator_id)
    with pytest.raises(GraphValidationError, match="duplicate edge 'src' -> 'sink'"):
        job.connect(s.operator_id, k.operator_id)
    with pytest.raises(ValueError, match="unknown partitioning 'spray'"):
        job.connect(k.operator_id, s.operator_id, partitioning="spray")


def test_validate_empty():
    with pytest.raises(GraphValidationError, match="no operators"):
        JobGraph(job_name="empty").validate()


def test_validate_cycle_names_operators_in_order():
    job, (s, a, b, c, k) = chain((S, "src", {}), (M, "a", {}), (M, "b", {}), (M, "c", {}), (K, "sink", {}))
    job.connect(c.operator_id, a.operator_id)
    with pytest.raises(CycleError) as info:
        job.validate()
    assert info.value.cycle == ["a", "b", "c"]
    assert "a -> b -> c -> a" in str(info.value)
    with pytest.raises(CycleError):
        job.topological_sort()


def test_validate_duplicate_edge_from_edited_lists():
    job, (s, k) = chain((S, "src", {}), (K, "sink", {}))
    job.operators[s.operator_id].downstream_ids.append(k.operator_id)
    job.operators[k.operator_id].upstream_ids.append(s.operator_id)
    with pytest.raises(GraphValidationError, match="duplicate edge.*'src -> sink'"):
        job.validate()


def test_validate_unknown_id_in_lists():
    job, (s, k) = chain((S, "src", {}), (K, "sink", {}))
    job.operators[k.operator_id].upstream_ids.append("ghost")
    with pytest.raises(GraphValidationError, match=r"'sink' lists unknown upstream operator id\(s\) \['ghost'\]"):
        job.validate()


@pytest.mark.parametrize("kw, default, msg", [
    ({"parallelism": 0}, 2, r"'m': parallelism 0 not in \[1, max_parallelism=128\]"),
    ({"parallelism": 200}, 2, "'m': parallelism 200 not in"),
    ({"parallelism": 8, "max_parallelism": 4}, 2, "'m': parallelism 8 not in .*max_parallelism=4"),
    ({"max_parallelism": 16}, 32, "'m': parallelism 32 \\(the job's default_parallelism\\)"),
])
def test_validate_parallelism(kw, default, msg):
    job, _ = chain((S, "src", {"parallelism": 1}), (M, "m", kw), (K, "sink", {"parallelism": 1}),
                   job=JobGraph(job_name="p", default_parallelism=default))
    with pytest.raises(GraphValidationError, match=msg):
        job.validate()


def test_validate_source_with_inputs_and_sink_with_outputs():
    job, (s, m, k) = chain((S, "src", {}), (M, "m", {}), (K, "sink", {}))
    s2 = node(S, "src2")
    job.add_operator(s2)
    job.connect(m.operator_id, s2.operator_id)
    with pytest.raises(GraphValidationError, match=r"SOURCE operator\(s\) \['src2'\] have inputs"):
        job.validate()
    job, (s, m, k) = chain((S, "src", {}), (M, "m", {}), (K, "sink", {}))
    m2 = node(M, "after_sink")
    job.add_operator(m2)
    job.connect(k.operator_id, m2.operator_id)
    with pytest.raises(GraphValidationError, match=r"SINK operator\(s\) \['sink'\] have outputs"):
        job.validate()


def test_validate_unreachable():
    job, (s, m, k) = chain((S, "src", {}), (M, "m", {}), (K, "sink", {}))
    orphan, orphan_sink = node(M, "orphan"), node(K, "orphan_sink")
    job.add_operator(orphan)
    job.add_operator(orphan_sink)
    job.connect(orphan.operator_id, orphan_sink.operator_id)
    with pytest.raises(GraphValidationError, match=r"\['orphan', 'orphan_sink'\] are not reachable from any SOURCE"):
        job.validate()


def test_validate_duplicate_names():
    job, _ = chain((S, "src", {}), (M, "x", {}), (M, "x", {}), (K, "sink", {}))
    with pytest.raises(GraphValidationError, match=r"\['x'\] are used by more than one operator"):
        job.validate()


def test_validate_explicit_partitioning_rules():
    job = JobGraph(job_name="t")
    s, m = node(S, "src", parallelism=2), node(M, "m", parallelism=3)
    job.add_operator(s)
    job.add_operator(m)
    job.connect(s.operator_id, m.operator_id, partitioning="forward")
    with pytest.raises(GraphValidationError, match="'src' -> 'm' is FORWARD but parallelism differs"):
        job.validate()
    job = JobGraph(job_name="t")
    job.add_operator(s)
    job.add_operator(m)
    job.connect(s.operator_id, m.operator_id, partitioning="HASH")
    with pytest.raises(GraphValidationError, match="'m' has no key_by"):
        job.validate()


def test_sources_sinks_and_toposort_order():
    job = JobGraph(job_name="diamond")
    s1, s2 = node(S, "s1"), node(S, "s2")
    u = node(OperatorType.UNION, "u")
    m1, m2 = node(M, "m1"), node(F, "m2")
    k = node(K, "k")
    for op in (k, m2, m1, u, s2, s1):  # inserted out of order on purpose
        job.add_operator(op)
    for a, b in [(s1, u), (s2, u), (u, m1), (u, m2), (m1, k), (m2, k)]:
        job.connect(a.operator_id, b.operator_id)
    job.validate()
    assert [o.name for o in job.get_sources()] == ["s2", "s1"]
    assert [o.name for o in job.get_sinks()] == ["k"]
    order = [o.name for o in job.topological_sort()]
    pos = {n: i for i, n in enumerate(order)}
    for a, b in [("s1", "u"), ("s2", "u"), ("u", "m1"), ("u", "m2"), ("m1", "k"), ("m2", "k")]:
        assert pos[a] < pos[b]


def full_job():
    job = JobGraph(job_name="rt", default_parallelism=3, checkpoint_interval_ms=5000,
                   config={"restart_attempts": 3}, state_backend="memory")
    s = node(S, "src", parallelism=2, parameters={"kind": "table", "nested": {"a": [1, 2]}},
             cpu_cores=1.5, memory_mb=1024, sharing_group="g1")
    a = node(OperatorType.AGGREGATE, "agg", key_by=["user", "day"], max_parallelism=64,
             function="mypkg.mod:fn")
    k = node(K, "sink", parallelism=1)
    for op in (s, a, k):
        job.add_operator(op)
    job.connect(s.operator_id, a.operator_id)
    job.connect(a.operator_id, k.operator_id, partitioning="rebalance")
    return job


def test_round_trip_keeps_every_field():
    job = full_job()
    assert job.config == {"restart_attempts": 3, "state_backend": "memory"}
    back = JobGraph.from_json(job.to_json())
    assert back.to_dict() == job.to_dict()
    assert back.job_id == job.job_id and back.checkpoint_interval_ms == 5000
    for op_id, op in job.operators.items():
        other = back.operators[op_id]
        for f in ("operator_type", "name", "parallelism", "max_parallelism", "stateful", "key_by", "cpu_cores",
                  "memory_mb", "function", "parameters", "upstream_ids", "downstream_ids", "sharing_group"):
            assert getattr(other, f) == getattr(op, f), f
    edges = {(e["upstream_id"], e["downstream_id"]): e["partitioning"] for e in json.loads(job.to_json())["edges"]}
    ids = list(job.operators)
    assert edges == {(ids[0], ids[1]): None, (ids[1], ids[2]): "rebalance"}
    assert back.explicit_partitioning(ids[1], ids[2]).value == "rebalance"
    assert JobGraph.from_dict(JobGraph().to_dict()).checkpoint_interval_ms is None


def test_from_dict_rejects_unknown_or_inconsistent():
    d = full_job().to_dict()
    with pytest.raises(ValueError, match=r"unknown job field\(s\) \['extra'\]"):
        JobGraph.from_dict({**d, "extra": 1})
    bad_op = dict(d["operators"][0], colour="red")
    with pytest.raises(ValueError, match=r"unknown operator field\(s\) \['colour'\]"):
        JobGraph.from_dict({**d, "operators": [bad_op] + d["operators"][1:]})
    with pytest.raises(GraphValidationError, match="edge list does not match"):
        JobGraph.from_dict({**d, "edges": d["edges"][:1]})


# ------------------------------------------------------------------ property: topological_sort

@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30))))
def test_topological_sort_property(g):
    n, pairs = g
    job = JobGraph(job_name="prop")
    ops = [node(M, f"op{i}") for i in range(n)]
    for op in ops:
        job.add_operator(op)
    edges = sorted({(u, v) for u, v in pairs if u != v})
    for u, v in edges:
        job.connect(ops[u].operator_id, ops[v].operator_id)
    # reference cycle check: repeatedly strip nodes with no incoming edges
    remaining, rem_edges = set(range(n)), set(edges)
    while True:
        free = {v for v in remaining if not any(e[1] == v for e in rem_edges)}
        if not free:
            break
        remaining -= free
        rem_edges = {e for e in rem_edges if e[0] in remaining}
    if remaining:
        with pytest.raises(CycleError) as info:
            job.topological_sort()
        names = info.value.cycle
        idx = [int(x[2:]) for x in names]
        for i, u in enumerate(idx):
            assert (u, idx[(i + 1) % len(idx)]) in set(edges)
    else:
        pos = {o.name: i for i, o in enumerate(job.topological_sort())}
        assert len(pos) == n
        for u, v in edges:
            assert pos[f"op{u}"] < pos[f"op{v}"]

"""ExecutionGraph: task expansion, partitioning rules, state machine, rescaling, metrics, regions."""

import itertools

import pytest

from sabot.errors import IllegalStateTransition
from sabot.execution.execution_graph import (
    ALLOWED_TRANSITIONS,
    ExecutionGraph,
    Partitioning,
    TaskState,
    TaskVertex,
    choose_partitioning,
)
from sabot.execution.ids import AttemptId
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode

S, M, A, K = OperatorType.SOURCE, OperatorType.MAP, OperatorType.AGGREGATE, OperatorType.SINK


def build(specs, edges, default_parallelism=4, explicit=None):
    """specs: {name: (type, kwargs)}; edges: [(a, b)]; explicit: {(a, b): partitioning}."""
    job = JobGraph(job_name="j", default_parallelism=default_parallelism)
    ids = {}
    for name, (kind, kw) in specs.items():
        ids[name] = job.add_operator(StreamOperatorNode(operator_type=kind, name=name, **kw))
    for a, b in edges:
        job.connect(ids[a], ids[b], (explicit or {}).get((a, b)))
    return job, job.to_execution_graph(), ids


def edge(eg, ids, a, b):
    (e,) = [e for e in eg.edges if (e.upstream_operator_id, e.downstream_operator_id) == (ids[a], ids[b])]
    return e


def test_tasks_per_operator_are_ordered_and_unique():
    job, eg, ids = build({"s": (S, {"parallelism": 3}), "m": (M, {}), "k": (K, {"parallelism": 1})},
                         [("s", "m"), ("m", "k")])
    assert len(eg.tasks) == 3 + 4 + 1
    for name, p in [("s", 3), ("m", 4), ("k", 1)]:
        tasks = eg.operator_tasks(ids[name])
        assert [t.subtask_index for t in tasks] == list(range(p))
        assert all(t.parallelism == p and t.operator_name == name and t.state is TaskState.CREATED
                   and t.attempt == 0 and t.max_parallelism == 128 for t in tasks)
    assert len(set(eg.tasks)) == len(eg.tasks)
    assert eg.job_graph is job and eg.operators is job.operators
    assert [e.downstream_operator_id for e in eg.outputs_of(ids["s"])] == [ids["m"]]
    assert [e.upstream_operator_id for e in eg.inputs_of(ids["k"])] == [ids["m"]]
    assert eg.inputs_of(ids["s"]) == [] and eg.outputs_of(ids["k"]) == []
    with pytest.raises(KeyError, match="unknown operator id 'zz'"):
        eg.operator_tasks("zz")


@pytest.mark.parametrize("up_p, down_p, key_by, explicit, expected", [
    (4, 4, None, None, Partitioning.FORWARD),
    (4, 8, None, None, Partitioning.REBALANCE),
    (4, 4, ["k"], None, Partitioning.HASH),  # keyed: HASH even at equal parallelism
    (2, 8, ["k"], None, Partitioning.HASH),
    (4, 4, None, "broadcast", Partitioning.BROADCAST),
    (4, 4, ["k"], "rebalance", Partitioning.REBALANCE),  # explicit wins
])
def test_partitioning_rules(up_p, down_p, key_by, explicit, expected):
    specs = {"s": (S, {"parallelism": up_p}), "m": (M, {"parallelism": down_p, "key_by": key_by}),
             "k": (K, {"parallelism": down_p})}
    _, eg, ids = build(specs, [("s", "m"), ("m", "k")], explicit={("s", "m"): explicit})
    e = edge(eg, ids, "s", "m")
    assert e.partitioning is expected
    assert e.explicit is (explicit is not None)
    assert e.key_by == (tuple(key_by) if expected is Partitioning.HASH else None)
    assert choose_partitioning(Partitioning.parse(explicit) if explicit else None, up_p, down_p, key_by) is expected


def test_all_to_all_edges_are_one_object_per_pair():
    _, eg, ids = build({"s": (S, {"parallelism": 100}), "k": (K, {"parallelism": 300, "max_parallelism": 512})}, [("s", "k")])
    assert len(eg.edges) == 1
    assert eg.edges[0].is_all_to_all and eg.num_channels() == 100 * 300


# ------------------------------------------------------------------ state machine

def make_task():
    return TaskVertex("t0", "op", "op", S, 0, 1, 128)


def test_happy_path_and_timestamps():
    t = make_task()
    for i, s in enumerate([TaskState.SCHEDULED, TaskState.DEPLOYING, TaskState.RUNNING, TaskState.FINISHED]):
        t.transition(s, now=100.0 + i)
    assert t.state is TaskState.FINISHED and t.attempt == 0 and t.is_terminal
    assert t.timestamps == {"SCHEDULED": 100.0, "DEPLOYING": 101.0, "RUNNING": 102.0, "FINISHED": 103.0}
    assert t.to_dict()["state"] == "FINISHED"


def test_every_transition_outside_table_raises():
    for src, dst in itertools.product(TaskState, TaskState):
        t = make_task()
        t.state = src
        if dst in ALLOWED_TRANSITIONS[src]:
            t.transition(dst)
            assert t.state is dst
        else:
            with pytest.raises(IllegalStateTransition) as info:
                t.transition(dst)
            msg = str(info.value)
            assert f"t0 (attempt 0) cannot go from {src.value} to {dst.value}" in msg
            for allowed in ALLOWED_TRANSITIONS[src]:
                assert allowed.value in msg.split("allowed from")[1]
            assert t.state is src


def test_illegal_examples_and_unknown_state():
    t = make_task()
    with pytest.raises(IllegalStateTransition, match="from CREATED to RUNNING; allowed from CREATED: SCHEDULED"):
        t.transition(TaskState.RUNNING)
    t.state = TaskState.FINISHED
    with pytest.raises(IllegalStateTransition, match="from FINISHED to RUNNING; allowed from FINISHED: CREATED"):
        t.transition("running")
    t.transition("CREATED")  # a region restart runs a finished task again: a new attempt
    assert t.attempt == 1 and t.state is TaskState.CREATED
    with pytest.raises(ValueError, match="unknown task state 'zombie'"):
        t.transition("zombie")


def test_restart_increments_attempt():
    t = make_task()
    t.transition("SCHEDULED")
    t.node_id, t.slot_id = "n1", "s1"
    t.transition("DEPLOYING")
    t.transition("RUNNING")
    t.fail("boom")
    assert t.failure_cause == "boom" and t.attempt == 0
    t.transition("CREATED")
    assert t.attempt == 1 and t.node_id is None and t.slot_id is None
    t.transition("SCHEDULED")
    t.transition("CANCELING")
    t.transition("CANCELED")
    t.transition("CREATED")
    assert t.attempt == 2
    t.transition("SCHEDULED")
    t.transition("FAILED")
    t.transition("CREATED")
    assert t.attempt == 3 and t.attempt_id == AttemptId(t.task_id, 3)


def deployed_task():
    t = make_task()
    t.transition("SCHEDULED")
    t.transition("DEPLOYING")
    return t


@pytest.mark.parametrize("reports, final", [
    (["RUNNING", "RUNNING", "FINISHED"], "FINISHED"),
    (["FINISHED"], "FINISHED"),                 # a task that ended before its first report
    (["FAILED"], "FAILED"),
    (["RUNNING", "CANCELED"], "CANCELED"),      # stopped without being asked: through CANCELING
    (["RUNNING", "FINISHED", "RUNNING"], "FINISHED"),  # a late report changes nothing
])
def test_worker_reports_move_the_attempt(reports, final):
    t = deployed_task()
    for state in reports:
        t.apply_report(state)
    assert t.state.value == final and t.attempt == 0


def test_a_report_that_does_not_fit_raises():
    t = make_task()
    with pytest.raises(IllegalStateTransition, match="CREATED here; a report of RUNNING"):
        t.apply_report("RUNNING")
    t.transition("SCHEDULED")
    with pytest.raises(IllegalStateTransition):
        t.apply_report("FINISHED")


def test_a_canceling_attempt_ends_canceled_whatever_it_reports():
    for reported in ("FINISHED", "FAILED", "CANCELED"):
        t = deployed_task()
        t.transition("RUNNING")
        t.transition("CANCELING")
        assert t.apply_report(reported) == (TaskState.CANCELED,)
        assert t.state is TaskState.CANCELED


def test_cancel_from_any_live_state_and_terminal_states():
    for before in (["SCHEDULED"], ["SCHEDULED", "DEPLOYING"], ["SCHEDULED", "DEPLOYING", "RUNNING"]):
        t = make_task()
        for state in before:
            t.transition(state)
        t.cancel()
        assert t.state is TaskState.CANCELED
    t = deployed_task()
    t.apply_report("FINISHED")
    t.cancel()
    assert t.state is TaskState.FINISHED
    assert TaskState.FINISHED.is_terminal and not TaskState.CANCELING.is_terminal


# ------------------------------------------------------------------ rescaling

def pipeline():
    specs = {"src": (S, {"parallelism": 4}), "map": (M, {"parallelism": 4}),
             "agg": (A, {"parallelism": 4, "key_by": ["user"]}), "sink": (K, {"parallelism": 4})}
    return build(specs, [("src", "map"), ("map", "agg"), ("agg", "sink")])


def check_consistent(eg, job):
    """Live tasks are exactly the union of every operator's tasks, with matching parallelism,
    and every edge's partitioning follows the rule from current parallelism."""
    all_ops = [t for op_id in job.operators for t in eg.operator_tasks(op_id)]
    assert {t.task_id for t in all_ops} == set(eg.tasks)
    assert len(all_ops) == len(eg.tasks)
    for op_id, op in job.operators.items():
        tasks = eg.operator_tasks(op_id)
        assert [t.subtask_index for t in tasks] == list(range(len(tasks)))
        assert all(t.parallelism == len(tasks) for t in tasks)
        assert job.parallelism_of(op_id) == len(tasks) == eg.parallelism_of(op_id)
    for e in eg.edges:
        up, down = eg.parallelism_of(e.upstream_operator_id), eg.parallelism_of(e.downstream_operator_id)
        key_by = job.operators[e.downstream_operator_id].key_by
        assert e.partitioning is choose_partitioning(None, up, down, key_by)
    assert not set(eg.tasks) & set(eg.retired_tasks)


def test_rescale_repeated_keeps_graph_consistent():
    job, eg, ids = pipeline()
    assert edge(eg, ids, "src", "map").partitioning is Partitioning.FORWARD
    history = []
    seen_ids = set(eg.tasks)
    old = 4
    for new in (8, 2, 5):
        before = [t.task_id for t in eg.operator_tasks(ids["map"])]
        plan = eg.rescale_operator(ids["map"], new)
        assert set(plan) == {"status", "old_parallelism", "new_parallelism", "old_task_ids", "new_task_ids",
                             "requires_state_redistribution"}
        assert plan["status"] == "rescaling"
        assert (plan["old_parallelism"], plan["new_parallelism"]) == (old, new)
        assert plan["old_task_ids"] == before
        assert len(plan["new_task_ids"]) == new and not set(plan["new_task_ids"]) & seen_ids
        assert plan["requires_state_redistribution"] is False
        assert all(tid in eg.retired_tasks and tid not in eg.tasks for tid in before)
        assert [t.task_id for t in eg.operator_tasks(ids["map"])] == plan["new_task_ids"]
        seen_ids |= set(plan["new_task_ids"])
        check_consistent(eg, job)
        history.append(plan)
        old = new
    assert edge(eg, ids, "src", "map").partitioning is Partitioning.REBALANCE
    assert edge(eg, ids, "map", "agg").partitioning is Partitioning.HASH
    assert len(eg.tasks) == 4 + 5 + 4 + 4
    assert len(eg.retired_tasks) == 4 + 8 + 2
    # back to 4: FORWARD again
    eg.rescale_operator(ids["map"], 4)
    assert edge(eg, ids, "src", "map").partitioning is Partitioning.FORWARD
    check_consistent(eg, job)


def test_rescale_keyed_requires_state_redistribution():
    job, eg, ids = pipeline()
    plan = eg.rescale_operator(ids["agg"], 6)
    assert plan["requires_state_redistribution"] is True
    assert edge(eg, ids, "agg", "sink").partitioning is Partitioning.REBALANCE
    check_consistent(eg, job)


def test_rescale_bad_arguments():
    job, eg, ids = pipeline()
    with pytest.raises(KeyError, match="unknown operator id 'nope'"):
        eg.rescale_operator("nope", 2)
    for bad in (0, 129, -1):
        with pytest.raises(ValueError, match=rf"cannot rescale 'map' to {bad}: expected 1 <= parallelism"):
            eg.rescale_operator(ids["map"], bad)
    with pytest.raises(ValueError, match="must be an int"):
        eg.rescale_operator(ids["map"], 2.5)
    assert eg.parallelism_of(ids["map"]) == 4 and not eg.retired_tasks


def test_rescale_refuses_to_break_explicit_forward():
    specs = {"s": (S, {"parallelism": 2}), "m": (M, {"parallelism": 2}), "k": (K, {"parallelism": 2})}
    _, eg, ids = build(specs, [("s", "m"), ("m", "k")], explicit={("s", "m"): "forward"})
    with pytest.raises(ValueError, match="explicitly FORWARD"):
        eg.rescale_operator(ids["m"], 3)
    assert eg.parallelism_of(ids["m"]) == 2


# ------------------------------------------------------------------ metrics and regions

def test_metrics_summary():
    now = [1000.0]

    def clock():
        return now[0]

    job = JobGraph(job_name="m", default_parallelism=2)
    s = job.add_operator(StreamOperatorNode(operator_type=S, name="s"))
    k = job.add_operator(StreamOperatorNode(operator_type=K, name="k"))
    job.connect(s, k)
    job.validate()
    eg = ExecutionGraph(job, clock=clock)
    tasks = eg.operator_tasks(s) + eg.operator_tasks(k)
    for t, rows in zip(tasks, [10, 20, 30, 40]):
        for st in ("SCHEDULED", "DEPLOYING", "RUNNING"):
            t.transition(st)
        eg.update_task_metrics(t.task_id, rows_processed=rows, bytes_processed=rows * 8)
    tasks[3].fail("x")
    now[0] = 1012.5
    m = eg.get_metrics_summary()
    assert m["total_tasks"] == 4 and m["running_tasks"] == 3 and m["failed_tasks"] == 1
    assert m["total_rows_processed"] == 100 and m["total_bytes_processed"] == 800
    assert m["uptime_seconds"] == 12.5
    assert sum(m["tasks_by_state"].values()) == 4


def test_pipelined_regions_per_weakly_connected_component():
    specs = {"s1": (S, {}), "m1": (M, {}), "k1": (K, {}), "s2": (S, {}), "k2": (K, {}), "s3": (S, {}),
             "k3": (K, {})}
    _, eg, ids = build(specs, [("s1", "m1"), ("m1", "k1"), ("s2", "k2"), ("s3", "k1"), ("s3", "k3")])
    regions = [[eg.operators[i].name for i in r] for r in eg.pipelined_regions()]
    assert regions == [["s1", "m1", "k1", "s3", "k3"], ["s2", "k2"]]
    # a blocking exchange splits a region
    edge(eg, ids, "s3", "k1").pipelined = False
    regions = [[eg.operators[i].name for i in r] for r in eg.pipelined_regions()]
    assert regions == [["s1", "m1", "k1"], ["s2", "k2"], ["s3", "k3"]]


def test_state_counts_follow_every_transition_and_rescale():
    import collections
    import random

    job, eg, ids = pipeline()
    rng = random.Random(7)

    def check():
        actual = collections.Counter(t.state for t in eg.tasks.values())
        assert {s: n for s, n in eg.state_counts.items() if n} == dict(actual)

    check()
    for _ in range(400):
        task = rng.choice(list(eg.tasks.values()))
        targets = sorted(ALLOWED_TRANSITIONS[task.state], key=lambda s: s.value)
        task.transition(rng.choice(targets))
        check()
    eg.rescale_operator(ids["agg"], 2)  # 4 tasks retire, 2 new ones start CREATED
    check()
    assert eg.all_in(*TaskState)
    for task in eg.tasks.values():
        task.cancel()
    assert eg.all_in(TaskState.CANCELED, TaskState.FINISHED, TaskState.FAILED)

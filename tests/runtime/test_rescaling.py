"""Live rescaling inside the runtime: the protocol of ARCHITECTURE.md section 8.

The TaskManager is driven directly, in the coordinator's role: while the job
runs, rescale the keyed aggregation (its state moves to the new tasks by key
group) or a stateless map; the result must equal the uninterrupted reference and
the source must never restart.
"""

import asyncio

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sabot import Stream
from sabot._core import partition
from sabot.execution.deployment import CheckpointSpec, build_deployment_descriptors
from sabot.execution.ids import AttemptId
from sabot.execution.messages import TriggerCheckpoint
from sabot.execution.rescale import build_rescale_messages, build_source_resume_messages
from sabot.runtime.data_server import DataServer
from sabot.runtime.embedded import gather_results
from sabot.runtime.generators import keyed_records
from sabot.runtime.tables import TableStore
from sabot.runtime.task_manager import TaskManager
from sabot.testing import assert_tables_equal

from jobs import reference_keyed_count

TOTAL = 400_000


def job_graph(agg_parallelism):
    stream = (
        Stream.from_generator(keyed_records, total_rows=TOTAL, batch_size=1024,
                              parameters={"num_keys": 500}, name="source").parallelism(1)
        .filter(pc.field("value") > 0.5, name="filter").parallelism(2)
        .map("jobs:slow_add_value2", name="map").parallelism(2)
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate").parallelism(agg_parallelism)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph("rescale", default_parallelism=2)


async def rescale(manager, exec_graph, job, op_name, new_parallelism, n, assignment=None):
    op_id = next(op for op, node in job.operators.items() if node.name == op_name)
    plan = exec_graph.rescale_operator(op_id, new_parallelism)
    msgs = build_rescale_messages(exec_graph, job.job_id, op_id, plan, f"r{n}", assignment=assignment)
    for tdd in msgs.deploy.values():
        await manager.deploy(tdd)
    for step in (msgs.handoff, msgs.add_inputs, msgs.switch_output):
        for msg in step.values():
            manager.control(msg)
    return plan


async def run_with_rescales(job, steps, delay=0.08):
    server = DataServer()
    failures = []
    manager = TaskManager(server, tables=TableStore(job.tables),
                          on_update=lambda s: s.state.value == "FAILED" and failures.append(s))
    exec_graph = job.to_execution_graph()
    try:
        for tdd in build_deployment_descriptors(exec_graph, job.job_id).values():
            await manager.deploy(tdd)
        plans = []
        for n, (op_name, parallelism, assignment) in enumerate(steps):
            await asyncio.sleep(delay)
            source = [t for t in manager.list_tasks() if t["operator_name"] == "source"][0]
            assert source["state"] == "RUNNING", "the source ended before the rescale; slow the job down"
            rows_before = source["metrics"]["rows_in"]
            plans.append(await rescale(manager, exec_graph, job, op_name, parallelism, n, assignment))
            # the source kept producing through the rescale (never paused or restarted)
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                source = [t for t in manager.list_tasks() if t["operator_name"] == "source"][0]
                if source["metrics"]["rows_in"] > rows_before or source["state"] == "FINISHED":
                    break
                assert asyncio.get_running_loop().time() < deadline, "the source stopped during the rescale"
                await asyncio.sleep(0.005)
            assert source["attempt_id"]["attempt"] == 0
        await asyncio.wait_for(manager.wait(), 60)
        assert not failures, failures[0].error
        statuses = manager.list_tasks()
        return plans, statuses, gather_results(job.job_id, job, manager.reports(), manager.result)
    finally:
        await manager.shutdown()
        await server.stop()


def expected():
    return reference_keyed_count(pa.Table.from_batches([keyed_records(0, TOTAL, num_keys=500)]))


def test_rescale_keyed_aggregate_up_and_down_keeps_exact_result():
    job = job_graph(2)
    steps = [("aggregate", 4, None), ("aggregate", 1, None), ("aggregate", 3, None)]
    plans, statuses, result = asyncio.run(asyncio.wait_for(run_with_rescales(job, steps), 90))
    assert [(p["old_parallelism"], p["new_parallelism"]) for p in plans] == [(2, 4), (4, 1), (1, 3)]
    assert all(p["requires_state_redistribution"] for p in plans)
    assert_tables_equal(result.table("sink"), expected(), sort_by=["key"])
    aggs = [s for s in statuses if s["operator_name"] == "aggregate"]
    # 2 + 4 + 1 old tasks handed their state over; the 3 last ones produced the output
    assert sum(s["handed_off"] for s in aggs) == 7
    assert sum(1 for s in aggs if not s["handed_off"]) == 3
    moved = sum(s["metrics"].get("state_rows_handed_off", 0) for s in aggs)
    assert moved > 0, "keyed state must have moved between tasks"
    source = next(s for s in statuses if s["operator_name"] == "source")
    assert source["metrics"]["rows_in"] == TOTAL  # read once: no restart


def test_rescale_stateless_chain_keeps_exact_result():
    job = job_graph(2)  # the filter and the map run as one chained operator
    plans, statuses, result = asyncio.run(
        asyncio.wait_for(run_with_rescales(job, [("filter -> map", 3, None), ("filter -> map", 1, None)]), 90)
    )
    assert not plans[0]["requires_state_redistribution"]
    assert_tables_equal(result.table("sink"), expected(), sort_by=["key"])


def test_rebalance_with_explicit_assignment_keeps_exact_result():
    job = job_graph(2)
    max_parallelism = next(n for n in job.operators.values() if n.name == "aggregate").max_parallelism
    # an uneven table: key groups alternate between the two subtasks
    assignment = (np.arange(max_parallelism) % 2).astype(np.int32)
    plans, statuses, result = asyncio.run(
        asyncio.wait_for(run_with_rescales(job, [("aggregate", 2, assignment)]), 90)
    )
    assert_tables_equal(result.table("sink"), expected(), sort_by=["key"])
    final = [s for s in statuses if s["operator_name"] == "aggregate" and not s["handed_off"]]
    assert len(final) == 2


def test_per_key_order_holds_across_a_rescale():
    stream = (
        Stream.from_generator(keyed_records, total_rows=TOTAL // 2, batch_size=1024,
                              parameters={"num_keys": 50}, name="source").parallelism(1)
        .map("jobs:slow_add_value2", name="map").parallelism(1)
        .key_by("key")
        .select("key", "ts", name="keyed_select").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    job = stream.to_job_graph("order", default_parallelism=1)
    _, _, result = asyncio.run(asyncio.wait_for(run_with_rescales(job, [("keyed_select", 3, None)]), 90))
    out = result.table("sink")
    assert out.num_rows == TOTAL // 2
    keys, ts = out["key"].to_numpy(), out["ts"].to_numpy()
    for key in np.unique(keys):
        assert np.all(np.diff(ts[keys == key]) > 0), f"key {key} out of order across the rescale"
    assert np.array_equal(np.sort(ts), np.arange(TOTAL // 2))


# -- live rescaling of sources ---------------------------------------------------------
#
# The test plays the coordinator's part of a source rescale: deploy the new source tasks
# held, give the downstream tasks their channels, pause the old source tasks (each answers
# its split positions), then finish the old tasks and give the new ones all positions.

SOURCE_ROWS = 300_000
SOURCE_BATCH = 1024


def _source(kind, num_keys):
    if kind == "generator":
        return Stream.from_generator(keyed_records, total_rows=SOURCE_ROWS, batch_size=SOURCE_BATCH,
                                     parameters={"num_keys": num_keys}, name="source").parallelism(1)
    table = pa.Table.from_batches([keyed_records(0, SOURCE_ROWS, num_keys=num_keys)])
    return Stream.from_table(table, batch_size=SOURCE_BATCH, name="source").parallelism(1)


def source_aggregate_job(kind):
    stream = (
        _source(kind, 500)
        .filter(pc.field("value") > 0.5, name="filter").parallelism(2)
        .map("jobs:slow_add_value2", name="map").parallelism(2)
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(f"source-rescale-{kind}", default_parallelism=2)


def source_rows_job(kind):
    # the source feeds the keyed select directly (a HASH edge from the rescaled operator);
    # one slow map behind it keeps per-key order (two would interleave) and slows the source.
    # Its input is not coalesced: the keyed select's ~512-row parts would reach it 32 to a
    # call, and the source could end before the rescale the test makes.
    stream = (
        _source(kind, 50)
        .key_by("key")
        .select("key", "ts", "value", name="keyed_select").parallelism(2)
        .map("jobs:slow_add_value2", name="map").parallelism(1)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(f"source-rows-{kind}", default_parallelism=2, output_coalesce_rows=0)


async def rescale_source(manager, exec_graph, job, new_parallelism, n):
    """One source rescale; returns (plan, {split k: units of split k emitted before it, "of": S})."""
    op_id = next(op for op, node in job.operators.items() if node.name == "source")
    plan = exec_graph.rescale_operator(op_id, new_parallelism)
    msgs = build_rescale_messages(exec_graph, job.job_id, op_id, plan, f"s{n}")
    assert not msgs.handoff and not msgs.switch_output and msgs.is_source
    for tdd in msgs.deploy.values():
        assert tdd.rescale.source_hold is True
        await manager.deploy(tdd)
    for msg in msgs.add_inputs.values():
        manager.control(msg)
    replies = await asyncio.wait_for(
        asyncio.gather(*(manager.control(m) for m in msgs.source_pause.values())), 10
    )
    positions = [r["position"] for r in replies]
    resume = build_source_resume_messages(exec_graph, plan, f"s{n}", positions)
    for step in ("source_finish", "source_start"):
        for msg in resume[step].values():
            manager.control(msg)
    done = {}
    for position in positions:
        for entry in position["splits"].values():
            done[entry["split"]["description"]["k"]] = entry["position"]
            done["of"] = entry["split"]["description"]["of"]
    return plan, done


async def run_with_source_rescales(job, parallelisms, delay=0.1):
    server = DataServer()
    failures = []
    manager = TaskManager(server, tables=TableStore(job.tables),
                          on_update=lambda s: s.state.value == "FAILED" and failures.append(s))
    exec_graph = job.to_execution_graph()
    op_id = next(op for op, node in job.operators.items() if node.name == "source")
    try:
        for tdd in build_deployment_descriptors(exec_graph, job.job_id).values():
            await manager.deploy(tdd)
        phases = [(None, 1)]  # (split positions when it began, parallelism) of each phase
        plans = []
        for n, parallelism in enumerate(parallelisms):
            await asyncio.sleep(delay)
            current = [manager.tasks[t.task_id] for t in exec_graph.operator_tasks(op_id)]
            assert all(t.state.value == "RUNNING" for t in current), "the source ended before the rescale; slow it down"
            plan, done = await rescale_source(manager, exec_graph, job, parallelism, n)
            plans.append(plan)
            phases.append((done, parallelism))
        await asyncio.wait_for(manager.wait(), 60)
        assert not failures, failures[0].error
        statuses = manager.list_tasks()
        return plans, phases, statuses, gather_results(job.job_id, job, manager.reports(), manager.result)
    finally:
        await manager.shutdown()
        await server.stop()


def _source_reference():
    return reference_keyed_count(pa.Table.from_batches([keyed_records(0, SOURCE_ROWS, num_keys=500)]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["generator", "table"])
def test_rescale_source_1_3_2_keeps_exact_aggregate(kind):
    job = source_aggregate_job(kind)
    plans, phases, statuses, result = asyncio.run(
        asyncio.wait_for(run_with_source_rescales(job, [3, 2]), 90)
    )
    assert [(p["old_parallelism"], p["new_parallelism"]) for p in plans] == [(1, 3), (3, 2)]
    assert not any(p["requires_state_redistribution"] for p in plans)
    assert_tables_equal(result.table("sink"), _source_reference(), sort_by=["key"])
    sources = [s for s in statuses if s["operator_name"] == "source"]
    assert len(sources) == 1 + 3 + 2
    # the 1 + 3 old source tasks finished as handed off, the 2 last ones read to the end
    assert sum(s["handed_off"] for s in sources) == 4
    assert sum(s["metrics"]["rows_in"] for s in sources) == SOURCE_ROWS
    # every rescale moved positions past the start, and they only grow
    for (a, _), (b, _) in zip(phases[1:], phases[2:]):
        assert all(b[k] >= a[k] for k in a if k != "of")
    assert sum(v for k, v in phases[1][0].items() if k != "of") > 0


def _owner(units, phases):
    """(phase, subtask) that emits each unit: unit u is the (u // S)-th of split u % S; a phase
    emits a split's units from the position it got on; split k's owner is k % P."""
    count = phases[1][0]["of"]
    split, nth = units % count, units // count
    phase = np.zeros(len(units), dtype=np.int64)
    for done, _ in phases[1:]:
        began = np.array([done.get(k, 0) for k in range(count)])[split]
        phase += (nth >= began)
    parallelism = np.array([p for _, p in phases])[phase]
    return phase, split % parallelism


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["generator", "table"])
def test_rescale_source_emits_every_row_once_in_order(kind):
    job = source_rows_job(kind)
    _, phases, statuses, result = asyncio.run(asyncio.wait_for(run_with_source_rescales(job, [3, 2]), 90))
    out = result.table("sink")
    ts = out["ts"].to_numpy()
    keys = out["key"].to_numpy()
    # every row (ts = row number) exactly once
    assert out.num_rows == SOURCE_ROWS
    assert np.array_equal(np.sort(ts), np.arange(SOURCE_ROWS))
    phase, subtask = _owner(ts // SOURCE_BATCH, phases)
    for key in np.unique(keys):
        mine = keys == key
        # per key, everything an older source epoch emitted comes before the newer epoch's rows
        assert np.all(np.diff(phase[mine]) >= 0), f"key {key}: rows of a new source task overtook old ones"
        # per key and source subtask, rows keep the order that subtask emitted them in
        for ph, sub in set(zip(phase[mine].tolist(), subtask[mine].tolist())):
            sel = mine & (phase == ph) & (subtask == sub)
            assert np.all(np.diff(ts[sel]) > 0), f"key {key}: source subtask {sub} of epoch {ph} out of order"
    # new source tasks really took part: the last epoch's two subtasks emitted rows
    assert set(subtask[phase == len(phases) - 1].tolist()) == {0, 1}


def test_rescale_event_time_window_keeps_exact_result():
    """Window partials move by key group, and the new tasks go on from the old watermark."""
    total = TOTAL // 2
    stream = (
        Stream.from_generator(keyed_records, total_rows=total, batch_size=1024,
                              parameters={"num_keys": 40}, name="source",
                              time_column="ts", max_out_of_orderness=0).parallelism(1)
        .map("jobs:slow_add_value2", name="map").parallelism(1)
        .key_by("key")
        .window(20_000, {"value": ["count", "sum"]}, name="window").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    job = stream.to_job_graph("window-rescale", default_parallelism=1)
    _, statuses, result = asyncio.run(asyncio.wait_for(
        run_with_rescales(job, [("window", 3, None), ("window", 1, None)]), 90))
    moved = sum(s["metrics"].get("state_rows_handed_off", 0) for s in statuses if s["operator_name"] == "window")
    assert moved > 0, "the open windows' partials must have moved"
    # independent reference: numpy buckets of 20,000 event-time units per key
    data = keyed_records(0, total, num_keys=40)
    keys = data.column("key").to_numpy()
    starts = data.column("ts").to_numpy() // 20_000 * 20_000
    values = data.column("value").to_numpy()
    expected = {}
    for k, s, v in zip(keys, starts, values):
        c, t = expected.get((int(k), int(s)), (0, 0.0))
        expected[(int(k), int(s))] = (c + 1, t + v)
    out = result.table("sink")
    got = {(k, s): (c, t) for k, s, c, t in zip(out["key"].to_pylist(), out["window_start"].to_pylist(),
                                                 out["value_count"].to_pylist(), out["value_sum"].to_pylist())}
    assert out.num_rows == len(expected)  # every window fired exactly once
    assert got.keys() == expected.keys()
    for key, (c, t) in expected.items():
        assert got[key][0] == c and abs(got[key][1] - t) <= 1e-9 * max(1.0, abs(t)), key


def test_rescale_while_a_checkpoint_barrier_is_in_flight():
    """A checkpoint's barriers still travelling when a rescale starts must neither hang
    the old tasks' alignment nor the handoff; one upstream task switches late."""
    from sabot.runtime.checkpoint_storage import CheckpointStorage
    import tempfile

    job = job_graph(2)

    async def scenario(tmp):
        server = DataServer()
        failures, acks = [], []
        manager = TaskManager(server, tables=TableStore(job.tables),
                              on_update=lambda s: s.state.value == "FAILED" and failures.append(s),
                              on_checkpoint=acks.append)
        exec_graph = job.to_execution_graph()
        spec = CheckpointSpec(CheckpointStorage(tmp).uri, 3)
        try:
            for tdd in build_deployment_descriptors(exec_graph, job.job_id, checkpoint=spec).values():
                await manager.deploy(tdd)
            await asyncio.sleep(0.08)
            source = next(t for t in manager.list_tasks() if t["operator_name"] == "source")
            manager.trigger_checkpoint(TriggerCheckpoint(job.job_id, AttemptId(source["task_id"], 0), 1))
            op_id = next(op for op, node in job.operators.items() if node.name == "aggregate")
            plan = exec_graph.rescale_operator(op_id, 3)
            msgs = build_rescale_messages(exec_graph, job.job_id, op_id, plan, "r-inflight", checkpoint=spec,
                                          min_checkpoint_id=2)
            for tdd in msgs.deploy.values():
                await manager.deploy(tdd)
            for step in (msgs.handoff, msgs.add_inputs):
                for msg in step.values():
                    manager.control(msg)
            switches = [m for _, m in sorted(msgs.switch_output.items())]
            manager.control(switches[1])  # one map task switches at once ...
            await asyncio.sleep(0.3)
            manager.control(switches[0])  # ... the other one late
            await asyncio.wait_for(manager.wait(), 60)
            assert not failures, failures[0].error
            statuses = manager.list_tasks()
            return statuses, gather_results(job.job_id, job, manager.reports(), manager.result)
        finally:
            await manager.shutdown()
            await server.stop()

    with tempfile.TemporaryDirectory() as tmp:
        statuses, result = asyncio.run(asyncio.wait_for(scenario(tmp), 90))
    assert_tables_equal(result.table("sink"), expected(), sort_by=["key"])
    aggs = [s for s in statuses if s["operator_name"] == "aggregate"]
    assert sum(s["handed_off"] for s in aggs) == 2

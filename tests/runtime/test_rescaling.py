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
from sabot.execution.deployment import build_deployment_descriptors, build_rescale_messages
from sabot.runtime.channels import DataServer
from sabot.runtime.embedded import gather_results
from sabot.runtime.generators import keyed_records
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
    for tdd in msgs["deploy"].values():
        await manager.deploy(tdd)
    for task_id, msg in msgs["handoff"].items():
        manager.control(task_id, msg)
    for task_id, msg in msgs["add_inputs"].items():
        manager.control(task_id, msg)
    for task_id, msg in msgs["switch_output"].items():
        manager.control(task_id, msg)
    return plan


async def run_with_rescales(job, steps, delay=0.08):
    server = DataServer()
    failures = []
    manager = TaskManager(server, on_update=lambda s: s["state"] == "FAILED" and failures.append(s))
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
            await asyncio.sleep(0.02)
            source = [t for t in manager.list_tasks() if t["operator_name"] == "source"][0]
            # the source kept producing through the rescale (never paused or restarted)
            assert source["metrics"]["rows_in"] >= rows_before
        await asyncio.wait_for(manager.wait(), 60)
        assert not failures, failures[0]["error"]
        statuses = manager.list_tasks()
        return plans, statuses, gather_results(job.job_id, job, statuses, manager.result)
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


def test_rescale_stateless_map_keeps_exact_result():
    job = job_graph(2)
    plans, statuses, result = asyncio.run(
        asyncio.wait_for(run_with_rescales(job, [("map", 3, None), ("map", 1, None)]), 90)
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

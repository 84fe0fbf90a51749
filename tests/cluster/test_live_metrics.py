"""LiveMetrics (the dashboard's rates, shares and throughput history) and the rescale timeline."""

import numpy as np
import pyarrow as pa
import pytest

from sabot import Stream
from sabot.cluster.job import JobRecord, JobState
from sabot.cluster.live_metrics import LiveMetrics, TaskSample, rates_between
from sabot.cluster.rescaling import RescaleRecord
from sabot.execution.ids import AttemptId
from sabot.execution.messages import TaskUpdate


def sample(at, rows_in=0, rows_out=0, busy=0.0, idle=0.0, bp=0.0, counts=None):
    metrics = {"sampled_at": at, "rows_in": rows_in, "rows_out": rows_out, "busy_seconds": busy,
               "idle_seconds": idle, "backpressured_seconds": bp}
    if counts is not None:
        metrics["key_group_counts"] = counts
    return metrics


def test_rates_and_shares_between_two_reports():
    before = TaskSample(sample(100.0, rows_in=1000, rows_out=900, busy=1.0, idle=2.0, bp=0.5))
    after = TaskSample(sample(102.0, rows_in=5000, rows_out=4900, busy=2.0, idle=2.5, bp=0.9))
    r = rates_between(before, after)
    assert r["rows_in_per_second"] == 2000.0 and r["rows_out_per_second"] == 2000.0
    assert (r["busy"], r["backpressured"], r["idle"]) == (0.5, 0.2, 0.25)
    assert r["window_seconds"] == 2.0
    # a source does not wait for input: its idle share is what busy and back-pressure leave
    source = rates_between(before, after, measures_idle=False)
    assert source["idle"] == pytest.approx(0.3)
    # timers that overlap a little never give more than the whole time
    over = rates_between(before, TaskSample(sample(101.0, busy=1.8, idle=2.6, bp=0.9)))
    assert over["busy"] + over["backpressured"] + over["idle"] == pytest.approx(1.0, abs=1e-3)
    assert rates_between(after, before) is None  # no time between them


def job_record(total_rows=None):
    stream = (Stream.from_table(pa.table({"key": [1, 2], "value": [1.0, 2.0]}), name="src")
              .key_by("key").aggregate({"value": ["sum"]}, name="agg").collect(name="out"))
    graph = stream.to_job_graph("live", default_parallelism=2)
    job = JobRecord(graph.job_id, graph, graph.to_execution_graph(), 0.0, 0.0)
    for state in (JobState.WAITING_FOR_SLOTS, JobState.DEPLOYING, JobState.RUNNING):
        job.transition(state, 0.0, 0.0)
    for task in job.exec_graph.tasks.values():
        for state in ("SCHEDULED", "DEPLOYING", "RUNNING"):
            task.transition(state)
    return job


def ops(job):
    return {op.name: op_id for op_id, op in job.job_graph.operators.items()}


def report(job, task, metrics, attempt=None):
    return TaskUpdate(job_id=job.job_id, attempt_id=AttemptId(task.task_id, task.attempt if attempt is None else attempt),
                      operator_id=task.operator_id, operator_name=task.operator_name,
                      subtask_index=task.subtask_index, state=task.state, metrics=metrics)


def test_task_and_operator_rates_from_reports():
    job = job_record()
    live = LiveMetrics(rate_window_s=1.0)
    agg = job.exec_graph.operator_tasks(ops(job)["agg"])
    assert live.task_rates(job, agg[0].task_id) is None  # nothing reported yet
    for i, task in enumerate(agg):
        live.on_report(job, report(job, task, sample(10.0, rows_in=0, busy=0.0, idle=0.0)))
        live.on_report(job, report(job, task, sample(10.0, rows_in=0)))  # the same figures again: ignored
        assert live.task_rates(job, task.task_id) is None  # one report: no rate yet
        live.on_report(job, report(job, task, sample(12.0, rows_in=1000 * (i + 1), busy=0.5 * (i + 1), idle=0.5)))
    first, second = (live.task_rates(job, t.task_id) for t in agg)
    assert first["rows_in_per_second"] == 500.0 and second["rows_in_per_second"] == 1000.0
    assert (first["busy"], second["busy"]) == (0.25, 0.5)
    op = live.operator_rates(job, ops(job)["agg"])
    assert op["rows_in_per_second"] == 1500.0 and op["measured_subtasks"] == 2
    assert op["busy"] == 0.375 and op["max_busy"] == 0.5
    # a new attempt starts afresh: its first report gives no rate
    live.on_report(job, report(job, agg[0], sample(13.0, rows_in=10), attempt=agg[0].attempt + 1))
    assert live.task_rates(job, agg[0].task_id) is None


def test_key_group_load_sums_the_upstream_partitioners():
    job = job_record()
    live = LiveMetrics(rate_window_s=1.0)
    agg, src = ops(job)["agg"], ops(job)["src"]
    max_p = job.job_graph.operators[agg].max_parallelism
    for i, task in enumerate(job.exec_graph.operator_tasks(src)):
        base = np.zeros(max_p, dtype=np.int64)
        later = base.copy()
        later[3] = 100 * (i + 1)
        later[7] = 10
        live.on_report(job, report(job, task, sample(1.0, counts={agg: base.tolist()})))
        live.on_report(job, report(job, task, sample(3.0, counts={agg: later.tolist()})))
    rates, totals = live.key_group_load(job, agg)
    assert rates[3] == 150.0 and rates[7] == 10.0 and rates.sum() == 160.0  # (100 + 200) / 2 s, (10 + 10) / 2 s
    assert totals[3] == 300 and totals[7] == 20


def test_memory_stays_bounded():
    live = LiveMetrics(samples_per_task=4, capacity=10, max_jobs=3)
    jobs = [job_record() for _ in range(5)]
    task = next(iter(jobs[0].exec_graph.tasks.values()))
    for i in range(100):
        live.on_report(jobs[0], report(jobs[0], task, sample(float(i), rows_in=i)))
    assert len(live._tasks[jobs[0].job_id][task.task_id].samples) == 4
    for i in range(50):
        live.sample(jobs[:1], float(i))
    assert len(live.history(jobs[0].job_id)) == 10
    assert [s["time"] for s in live.history(jobs[0].job_id)] == [float(i) for i in range(40, 50)]
    # room for the histories of three jobs: an ended job's goes before an older running one's
    live.sample(jobs[:3], 60.0)
    jobs[1].transition(JobState.CANCELING, 0.0, 0.0)
    jobs[1].transition(JobState.CANCELED, 0.0, 0.0)
    live.sample(jobs[:4], 61.0)
    assert list(live._history) == [jobs[0].job_id, jobs[2].job_id, jobs[3].job_id]
    live.sample(jobs, 62.0)
    assert list(live._history) == [jobs[2].job_id, jobs[3].job_id, jobs[4].job_id]
    # an ended job's task samples are dropped; retired tasks too
    assert jobs[1].job_id not in live._tasks
    job = jobs[0]
    job.exec_graph.rescale_operator(ops(job)["agg"], 1)
    live.on_report(job, report(job, job.exec_graph.operator_tasks(ops(job)["agg"])[0], sample(1.0)))
    live.sample([job], 70.0)
    assert set(live._tasks[job.job_id]) <= set(job.exec_graph.tasks)


def test_rescale_timeline_in_order_with_offsets():
    plan = {"old_parallelism": 2, "new_parallelism": 3, "old_task_ids": ["a0", "a1"], "new_task_ids": ["b0", "b1", "b2"],
            "requires_state_redistribution": True}
    record = RescaleRecord("rescale-9", "job", "agg", "agg", "rescale", plan, 100.2, requested_at=100.0)
    steps = [s["step"] for s in record.timeline()]
    assert steps == ["requested", "deployed", "switched", "state_moved", "resumed", "completed"]
    assert [s["offset_ms"] for s in record.timeline()] == [0.0, None, None, None, None, None]
    record.deployed_at, record.switched_at = 100.05, 100.06
    record.handoffs_at["a0"] = 100.08
    assert record.to_dict()["timeline"][3]["at"] is None  # one of two old tasks handed over: not yet
    record.handoffs_at["a1"] = 100.1
    record.new_first_record["b0"] = 100.09
    record.completed_at = 100.1
    offsets = {s["step"]: s["offset_ms"] for s in record.to_dict()["timeline"]}
    assert offsets == pytest.approx({"requested": 0.0, "deployed": 50.0, "switched": 60.0, "state_moved": 100.0,
                                     "resumed": 90.0, "completed": 100.0})
    assert record.to_dict()["requested_at"] == 100.0

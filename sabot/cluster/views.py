"""JSON views of jobs and of the cluster, as the HTTP API (and the dashboard) show them.

Pure functions of the control plane's state; nothing here changes anything.
"""

from __future__ import annotations

import collections
from enum import Enum

from sabot.cluster.job import JobState
from sabot.execution.execution_graph import TaskState

__all__ = ["checkpoints_view", "job_details", "job_summary", "job_tasks", "jsonable", "overview"]

#: ``GET /jobs/{id}`` lists at most this many tasks; the rest page through ``GET /jobs/{id}/tasks``
MAX_TASKS_IN_DETAILS = 1000


def job_summary(job, now):
    """One line of ``GET /jobs``."""
    end = job.ended_at or now
    return {
        "job_id": job.job_id,
        "job_name": job.job_graph.job_name,
        "state": job.state.value,
        "submitted_at": job.wall_submitted_at,
        "duration_seconds": round(end - job.submitted_at, 4),
        "num_tasks": len(job.exec_graph.tasks),
        "failure": job.failure,
    }


def job_details(job, now, rescales):
    """``GET /jobs/{job_id}``: the job, its operators, tasks, checkpoints, restarts and rescales.

    Args:
        rescales: the rescaler's ``details(job)``.
    """
    info = job_summary(job, now)
    running_for = max(1e-9, (job.ended_at or now) - (job.started_at or job.submitted_at))
    # one pass over the tasks (a job may have tens of thousands), then one entry per operator
    per_op = {op_id: [0, 0, 0, 0, [], {}] for op_id in job.operator_order}
    reports = job.reports
    for task in job.exec_graph.tasks.values():
        acc = per_op[task.operator_id]
        acc[0] += 1
        report = reports.get(task.task_id)
        if report is not None:
            metrics = report.metrics
            acc[1] += metrics.get("rows_in", 0)
            acc[2] += metrics.get("rows_out", 0)
            acc[4].append(report.total_rows)
        else:
            acc[4].append(None)
        acc[3] += task.rows_processed
        states = acc[5]
        states[task.state] = states.get(task.state, 0) + 1
    operators = []
    for op_id in job.operator_order:
        op = job.job_graph.operators[op_id]
        parallelism, rows_in, rows_out, processed, totals, states = per_op[op_id]
        operators.append({
            "operator_id": op_id,
            "name": op.name,
            "operator_type": op.operator_type.value,
            "parallelism": parallelism,
            "rows_in": rows_in,
            "rows_out": rows_out,
            "rows_processed": processed,
            "rows_per_second": round(processed / running_for, 2),
            "total_rows": sum(totals) if totals and all(isinstance(t, int) for t in totals) else None,
            "task_states": {state.value: n for state, n in states.items()},
        })
    info["operators"] = operators
    page = job_tasks(job, 0, MAX_TASKS_IN_DETAILS)
    info["tasks"] = page["tasks"]
    info["tasks_total"] = page["total"]
    info["restarts"] = job.restarts
    info["restart_strategy"] = job.restart_strategy.to_dict() if job.restart_strategy else None
    info["last_failure"] = job.last_failure
    info["restart_history"] = job.restart_history[-20:]
    info["restored_from"] = job.restored_from
    info["checkpoints"] = (job.checkpointing.summary() if job.checkpointing is not None else
                           {"interval_ms": job.job_graph.checkpoint_interval_ms, "counts": None,
                            "latest_completed": None})
    info.update(jsonable(rescales))
    info["metrics"] = jsonable(job.exec_graph.get_metrics_summary())
    return info


def job_tasks(job, offset, limit):
    """``GET /jobs/{job_id}/tasks``: one page of the job's live tasks (state, worker, slot, metrics)."""
    tasks = []
    for task in list(job.exec_graph.tasks.values())[offset:offset + limit]:
        report = job.reports.get(task.task_id)
        tasks.append({
            "task_id": task.task_id,
            "operator_id": task.operator_id,
            "operator_name": task.operator_name,
            "subtask_index": task.subtask_index,
            "attempt": task.attempt,
            "state": task.state.value,
            "node_id": task.node_id,
            "slot_id": task.slot_id,
            "rows_processed": task.rows_processed,
            "bytes_processed": task.bytes_processed,
            "metrics": report.metrics if report is not None else {},
            "error": (report.error if report is not None else None) or task.failure_cause,
        })
    return {"job_id": job.job_id, "offset": offset, "limit": limit, "total": len(job.exec_graph.tasks),
            "tasks": tasks}


def checkpoints_view(job):
    """``GET /jobs/{job_id}/checkpoints``."""
    if job.checkpointing is not None:
        return jsonable(job.checkpointing.view())
    return {"job_id": job.job_id, "state": job.state.value, "storage": None,
            "interval_ms": job.job_graph.checkpoint_interval_ms, "timeout_s": None, "counts": None, "history": [],
            "latest_completed": None, "restored_from": job.restored_from, "skipped": list(job.skipped_checkpoints)}


def overview(*, url, uptime_seconds, registry, slot_pool, jobs, pending_jobs):
    """``GET /overview``."""
    states = collections.Counter(j.state.value for j in jobs)
    return {
        "url": url,
        "uptime_seconds": round(uptime_seconds, 3),
        "workers": len(registry),
        "lost_workers": sum(1 for n in registry.lost.values() if n.state == "LOST"),
        "worker_losses_total": registry.losses,
        "coordinator_stalls_total": registry.stalls,
        "total_slots": slot_pool.total_slots,
        "free_slots": slot_pool.free_slots,
        "utilization": slot_pool.utilization,
        "jobs": {s.value: states.get(s.value, 0) for s in JobState},
        "pending_jobs": pending_jobs,
        "running_tasks": sum(1 for j in jobs if not j.terminal
                             for t in j.exec_graph.tasks.values() if t.state == TaskState.RUNNING),
    }


def jsonable(value):
    """``value`` with enums as their values and anything else unknown as a string."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

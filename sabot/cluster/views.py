"""JSON views of jobs and of the cluster, as the HTTP API (and the dashboard) show them.

Pure functions of the control plane's state; nothing here changes anything.
"""

from __future__ import annotations

import collections
from enum import Enum

import numpy as np

from sabot.cluster.job import JobState
from sabot.execution.execution_graph import TaskState
from sabot.execution.rebalance import imbalance

__all__ = ["checkpoints_view", "exceptions_view", "job_details", "job_plan", "job_summary", "job_tasks", "jsonable",
           "key_groups_view", "overview", "subtasks_view", "throughput_view"]

#: ``GET /jobs/{id}`` lists at most this many tasks; the rest page through ``GET /jobs/{id}/tasks``
MAX_TASKS_IN_DETAILS = 1000
#: ``GET /jobs/{id}/subtasks`` lists at most this many subtasks of each operator (their sums cover all)
MAX_SUBTASKS_PER_OPERATOR = 1000


def job_summary(job, now, rows_per_second=None):
    """One line of ``GET /jobs``.

    Args:
        rows_per_second: what the job's sources emit now (:meth:`LiveMetrics.job_rate`).
    """
    end = job.ended_at or now
    return {
        "job_id": job.job_id,
        "job_name": job.job_graph.job_name,
        "state": job.state.value,
        "submitted_at": job.wall_submitted_at,
        "duration_seconds": round(end - job.submitted_at, 4),
        "num_tasks": len(job.exec_graph.tasks),
        "failure": job.failure,
        "rows_per_second": rows_per_second,
    }


def job_details(job, now, rescales, rows_per_second=None):
    """``GET /jobs/{job_id}``: the job, its operators, tasks, checkpoints, restarts and rescales.

    Args:
        rescales: the rescaler's ``details(job)``.
        rows_per_second: see :func:`job_summary`.
    """
    info = job_summary(job, now, rows_per_second)
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


def _is_keyed(node):
    return bool(node.key_by) and node.operator_type.value not in ("source", "sink")


def job_plan(job):
    """``GET /jobs/{job_id}/plan``: the operators (topological order) and the edges with their partitioning."""
    graph = job.exec_graph
    operators, edges = [], []
    for op in map(job.job_graph.operators.get, job.operator_order):
        operators.append({
            "operator_id": op.operator_id,
            "name": op.name,
            "operator_type": op.operator_type.value,
            "kind": (op.parameters or {}).get("kind"),
            "parallelism": graph.parallelism_of(op.operator_id),
            "max_parallelism": op.max_parallelism,
            "key_by": list(op.key_by) if op.key_by else None,
            "keyed": _is_keyed(op),
            "stateful": op.stateful,
        })
        edges.extend(e.to_dict() for e in graph.inputs_of(op.operator_id))
    return {"job_id": job.job_id, "job_name": job.job_graph.job_name, "state": job.state.value,
            "operators": operators, "edges": edges}


def subtasks_view(job, live):
    """``GET /jobs/{job_id}/subtasks``: every operator's live rates and time shares, and its subtasks.

    Args:
        live: the coordinator's :class:`~sabot.cluster.live_metrics.LiveMetrics`.
    """
    graph = job.exec_graph
    operators = []
    for op in map(job.job_graph.operators.get, job.operator_order):
        subtasks = []
        tasks = graph.operator_tasks(op.operator_id)
        for task in tasks[:MAX_SUBTASKS_PER_OPERATOR]:
            report = job.reports.get(task.task_id)
            metrics = report.metrics if report is not None else {}
            rates = live.task_rates(job, task.task_id) or {}
            subtasks.append({
                "task_id": task.task_id,
                "subtask_index": task.subtask_index,
                "attempt": task.attempt,
                "state": task.state.value,
                "node_id": task.node_id,
                "slot_id": task.slot_id,
                "rows_in": metrics.get("rows_in", 0),
                "rows_out": metrics.get("rows_out", 0),
                "rows_processed": task.rows_processed,
                "rows_in_per_second": rates.get("rows_in_per_second"),
                "rows_out_per_second": rates.get("rows_out_per_second"),
                "busy": rates.get("busy"),
                "backpressured": rates.get("backpressured"),
                "idle": rates.get("idle"),
                "watermark": metrics.get("watermark"),
            })
        operators.append({"operator_id": op.operator_id, "name": op.name, "parallelism": len(tasks),
                          **live.operator_rates(job, op.operator_id), "subtasks": subtasks})
    return {"job_id": job.job_id, "state": job.state.value, "rate_window_seconds": live.rate_window_s,
            "operators": operators}


def throughput_view(job, live, interval_seconds):
    """``GET /jobs/{job_id}/throughput``: rows per second of each operator over the last minutes."""
    return {"job_id": job.job_id, "state": job.state.value, "interval_seconds": interval_seconds,
            "capacity": live.capacity,
            "operators": {op_id: op.name for op_id, op in job.job_graph.operators.items()},
            "samples": live.history(job.job_id)}


def key_groups_view(job, live, rescaler, rebalances=5):
    """``GET /jobs/{job_id}/key-groups``: load per key group and the key-group table of each keyed operator.

    Load is rows per second per key group routed to the operator (measured by the
    upstream tasks' hash partitioners) and rows in total since they started; the
    table maps each key group to the subtask that owns it. The latest rescales of
    the operator show the table before and after.
    """
    operators = []
    for op in map(job.job_graph.operators.get, job.operator_order):
        if not _is_keyed(op):
            continue
        parallelism = job.exec_graph.parallelism_of(op.operator_id)
        assignment = rescaler.assignment_of(job, op.operator_id)
        rates, totals = live.key_group_load(job, op.operator_id)
        per_subtask = per_subtask_total = None
        if rates is not None:
            per_subtask = np.bincount(assignment, weights=rates, minlength=parallelism)
        if totals is not None:
            per_subtask_total = np.bincount(assignment, weights=totals, minlength=parallelism)
        moves = [r for r in rescaler.records.get(job.job_id, []) if r.operator_id == op.operator_id
                 and r.assignment_before is not None][-rebalances:]
        operators.append({
            "operator_id": op.operator_id,
            "name": op.name,
            "parallelism": parallelism,
            "max_parallelism": op.max_parallelism,
            "custom_assignment": op.operator_id in job.assignments,
            "assignment": assignment.tolist(),
            "rows_per_second": None if rates is None else [round(float(x), 2) for x in rates],
            "rows_total": None if totals is None else [int(x) for x in totals],
            "subtask_rows_per_second": None if per_subtask is None else [round(float(x), 2) for x in per_subtask],
            "subtask_rows_total": None if per_subtask_total is None else [int(x) for x in per_subtask_total],
            "imbalance": None if per_subtask is None or per_subtask.sum() <= 0
            else round(float(imbalance(per_subtask)), 4),
            "rescales": [{
                "rescale_id": r.rescale_id, "kind": r.kind, "state": r.state, "requested_at": r.requested_at,
                "old_parallelism": r.plan["old_parallelism"], "new_parallelism": r.plan["new_parallelism"],
                "moved_key_groups": r.moved_key_groups, "imbalance_before": r.imbalance_before,
                "imbalance_after": r.imbalance_after,
                "assignment_before": r.assignment_before, "assignment_after": r.assignment_after,
            } for r in moves],
        })
    return {"job_id": job.job_id, "state": job.state.value, "operators": operators}


def exceptions_view(job, limit=50):
    """``GET /jobs/{job_id}/exceptions``: the restart history, newest first, with each root cause
    and failing task, and the failure that ended the job (if one did)."""
    def task_info(task_id):
        if task_id is None:
            return {}
        try:
            task = job.exec_graph.get_task(task_id)
        except LookupError:
            return {"task_id": task_id}
        return {"task_id": task_id, "operator_id": task.operator_id, "operator_name": task.operator_name,
                "subtask_index": task.subtask_index}

    history = []
    for entry in reversed(job.restart_history[-limit:]):
        history.append({
            "time": entry.get("time"), "restart": entry.get("restart"), "cause": entry.get("cause"),
            "tasks_restarted": entry.get("tasks"), "checkpoint_id": entry.get("checkpoint_id"),
            "restart_seconds": entry.get("seconds"), "skipped_checkpoints": entry.get("skipped_checkpoints"),
            "task": task_info(entry.get("task_id")),
        })
    failure = dict(job.failure, task=task_info(job.failure.get("task_id"))) if job.failure else None
    last = dict(job.last_failure, task=task_info(job.last_failure.get("task_id"))) if job.last_failure else None
    return jsonable({
        "job_id": job.job_id, "state": job.state.value, "restarts": job.restarts,
        "restart_strategy": job.restart_strategy.to_dict() if job.restart_strategy else None,
        "failure": failure, "last_failure": last, "history": history,
    })


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

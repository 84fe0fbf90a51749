"""Live rates of running jobs and a bounded throughput history per job (what the dashboard draws).

Tasks report cumulative figures every ``report_interval`` (0.5 s by default): rows
in and out, ``busy_seconds``, ``idle_seconds``, ``backpressured_seconds``, their
hash partitioners' rows per key group of each keyed output, the watermark where
event time is kept, and ``sampled_at`` (the worker's wall clock). A rate is the
difference between two reports of the same attempt divided by the time between
them; the older report is the newest one at least ``rate_window_s`` before the
latest, so one report arriving late does not draw a spike.

:class:`LiveMetrics` is the one owner of these samples and of each job's
throughput history, a ring buffer the coordinator fills every
``sample_interval_s``. Memory is bounded: ``samples_per_task`` reports per live
task (tasks no longer in the plan are dropped at each sample), ``capacity``
points per job, and the histories of at most ``max_jobs`` jobs (the oldest ended
ones go first).
"""

from __future__ import annotations

import collections

import numpy as np

from sabot.execution.execution_graph import TaskState

__all__ = ["LiveMetrics", "TaskSample", "rates_between"]


class TaskSample:
    """The cumulative figures of one report of one task attempt."""

    __slots__ = ("at", "rows_in", "rows_out", "busy", "idle", "backpressured", "key_groups", "watermark")

    def __init__(self, metrics):
        self.at = float(metrics["sampled_at"])
        self.rows_in = int(metrics.get("rows_in", 0))
        self.rows_out = int(metrics.get("rows_out", 0))
        self.busy = float(metrics.get("busy_seconds", 0.0))
        self.idle = float(metrics.get("idle_seconds", 0.0))
        self.backpressured = float(metrics.get("backpressured_seconds", 0.0))
        self.key_groups = {op: np.asarray(counts, dtype=np.int64)
                           for op, counts in (metrics.get("key_group_counts") or {}).items()}
        self.watermark = metrics.get("watermark")


def _share(delta, dt):
    return min(1.0, max(0.0, delta / dt))


def rates_between(before, after, *, measures_idle=True):
    """Rates and time shares of one task between two of its samples.

    ``busy``, ``backpressured`` and ``idle`` are shares of the wall time between the
    two reports (Flink's busy / back-pressured / idle time per second). A source
    never waits for input, so its idle share is what is left (``measures_idle``
    False). Shares that add up to more than 1 (the timers overlap a little) are
    scaled down.
    """
    dt = after.at - before.at
    if dt <= 0:
        return None
    busy = _share(after.busy - before.busy, dt)
    backpressured = _share(after.backpressured - before.backpressured, dt)
    if measures_idle:
        idle = _share(after.idle - before.idle, dt)
    else:
        idle = max(0.0, 1.0 - busy - backpressured)
    total = busy + backpressured + idle
    if total > 1.0:
        busy, backpressured, idle = busy / total, backpressured / total, idle / total
    return {
        "rows_in_per_second": round(max(0, after.rows_in - before.rows_in) / dt, 2),
        "rows_out_per_second": round(max(0, after.rows_out - before.rows_out) / dt, 2),
        "busy": round(busy, 4),
        "backpressured": round(backpressured, 4),
        "idle": round(idle, 4),
        "window_seconds": round(dt, 3),
    }


class _TaskSamples:
    __slots__ = ("attempt", "samples", "source")

    def __init__(self, attempt, size, source):
        self.attempt = attempt
        self.samples = collections.deque(maxlen=size)
        self.source = source

    def pair(self, window):
        """(older, latest): the newest sample at least ``window`` seconds before the latest."""
        if len(self.samples) < 2:
            return None
        latest = self.samples[-1]
        older = self.samples[0]
        for sample in reversed(self.samples):
            if latest.at - sample.at >= window:
                older = sample
                break
        return (older, latest) if older is not latest else None


class LiveMetrics:
    """Per-task rates from the reports, and a ring buffer of throughput per job.

    Args:
        rate_window_s: rates span at least this much time when the samples allow.
        samples_per_task: reports kept per task attempt.
        capacity: throughput points kept per job.
        max_jobs: jobs whose history is kept (the oldest ended ones are dropped first).
        max_sampled_tasks: jobs with more tasks than this get no throughput history (a
            sample reads every task; the event loop must stay responsive).
    """

    def __init__(self, *, rate_window_s=2.0, samples_per_task=8, capacity=300, max_jobs=50,
                 max_sampled_tasks=5000):
        self.rate_window_s = float(rate_window_s)
        # a job with more tasks gets no throughput history: one sample must not hold the loop up
        self.max_sampled_tasks = int(max_sampled_tasks)
        self.samples_per_task = int(samples_per_task)
        self.capacity = int(capacity)
        self.max_jobs = int(max_jobs)
        self._tasks = {}  # job id -> {task id: _TaskSamples}
        self._history = collections.OrderedDict()  # job id -> deque of points, oldest job first

    # -- input ------------------------------------------------------------------------------

    def on_report(self, job, update):
        """A live task attempt reported (the coordinator dropped stale ones already)."""
        metrics = update.metrics
        if metrics.get("sampled_at") is None:
            return
        tasks = self._tasks.setdefault(job.job_id, {})
        entry = tasks.get(update.task_id)
        if entry is None or entry.attempt != update.attempt:
            source = job.job_graph.operators[update.operator_id].operator_type.value == "source"
            entry = tasks[update.task_id] = _TaskSamples(update.attempt, self.samples_per_task, source)
        sample = TaskSample(metrics)
        if entry.samples and sample.at <= entry.samples[-1].at:
            return  # the same figures again (a state change right after a periodic report)
        entry.samples.append(sample)

    def sample(self, jobs, wall_now):
        """Add one throughput point to each running job's history; forget what is gone.

        ``jobs``: every job the coordinator still holds (a job it forgot loses its samples).
        """
        known = {job.job_id for job in jobs}
        for job_id in [j for j in self._tasks if j not in known]:
            del self._tasks[job_id]
        for job in jobs:
            tasks = self._tasks.get(job.job_id)
            if tasks is not None:
                for task_id in [t for t in tasks if t not in job.exec_graph.tasks]:
                    del tasks[task_id]  # a rescale retired it, or its attempt ended
                if job.terminal:
                    del self._tasks[job.job_id]
            if job.terminal or job.state.value != "RUNNING" or len(job.exec_graph.tasks) > self.max_sampled_tasks:
                continue
            rows_in, rows_out = {}, {}
            for op_id in job.job_graph.operators:
                rates = self.operator_rates(job, op_id)
                rows_in[op_id] = rates["rows_in_per_second"]
                rows_out[op_id] = rates["rows_out_per_second"]
            history = self._history.get(job.job_id)
            if history is None:
                history = self._history[job.job_id] = collections.deque(maxlen=self.capacity)
            history.append({"time": round(wall_now, 3), "rows_in_per_second": rows_in,
                            "rows_out_per_second": rows_out})
        self._bound_jobs({job.job_id: job for job in jobs})

    def _bound_jobs(self, jobs):
        excess = len(self._history) - self.max_jobs
        if excess <= 0:
            return
        ended = [j for j in self._history if j not in jobs or jobs[j].terminal]
        for job_id in (ended + [j for j in self._history if j not in ended])[:excess]:
            del self._history[job_id]

    # -- views ------------------------------------------------------------------------------

    def task_rates(self, job, task_id):
        """Rates and shares of one task (None before two reports of its attempt arrived)."""
        entry = self._tasks.get(job.job_id, {}).get(task_id)
        task = job.exec_graph.tasks.get(task_id)
        if entry is None or task is None or entry.attempt != task.attempt:
            return None
        if task.state != TaskState.RUNNING:
            return None
        pair = entry.pair(self.rate_window_s)
        if pair is None:
            return None
        return rates_between(*pair, measures_idle=not entry.source)

    def watermark(self, job, task_id):
        entry = self._tasks.get(job.job_id, {}).get(task_id)
        return entry.samples[-1].watermark if entry is not None and entry.samples else None

    def operator_rates(self, job, op_id):
        """Sum of the subtasks' rates; mean and max of their time shares."""
        rates = [self.task_rates(job, t.task_id) for t in job.exec_graph.operator_tasks(op_id)]
        known = [r for r in rates if r is not None]
        out = {
            "rows_in_per_second": round(sum(r["rows_in_per_second"] for r in known), 2),
            "rows_out_per_second": round(sum(r["rows_out_per_second"] for r in known), 2),
            "measured_subtasks": len(known),
        }
        for share in ("busy", "backpressured", "idle"):
            values = [r[share] for r in known]
            out[share] = round(sum(values) / len(values), 4) if values else None
            out[f"max_{share}"] = max(values) if values else None
        return out

    def job_rate(self, job):
        """Rows per second the job's sources emit (None unless it runs)."""
        if job.state.value != "RUNNING":
            return None
        return round(sum(self.operator_rates(job, op)["rows_out_per_second"] for op in job.sources()), 2)

    def history(self, job_id):
        """The job's throughput points, oldest first."""
        return list(self._history.get(job_id, ()))

    def key_group_load(self, job, op_id):
        """Rows per second and rows in total per key group routed to ``op_id``.

        Summed over the upstream tasks' hash partitioners (each one's own rate between
        two of its reports, so reports that are not aligned in time still add up).
        Returns ``(rates or None, totals or None)`` as numpy arrays.
        """
        max_parallelism = job.job_graph.operators[op_id].max_parallelism
        rates = totals = None
        tasks = self._tasks.get(job.job_id, {})
        for edge in job.exec_graph.inputs_of(op_id):
            for task in job.exec_graph.operator_tasks(edge.upstream_operator_id):
                entry = tasks.get(task.task_id)
                if entry is None or not entry.samples or entry.attempt != task.attempt:
                    continue
                latest = entry.samples[-1].key_groups.get(op_id)
                if latest is None or latest.shape != (max_parallelism,):
                    continue
                totals = latest.astype(np.float64) if totals is None else totals + latest
                pair = entry.pair(self.rate_window_s)
                before = pair[0].key_groups.get(op_id) if pair is not None else None
                if before is None or before.shape != latest.shape:
                    continue
                dt = pair[1].at - pair[0].at
                rate = np.maximum(latest - before, 0) / dt
                rates = rate if rates is None else rates + rate
        return rates, totals

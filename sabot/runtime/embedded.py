"""Run a JobGraph inside this process: the same tasks and channels a worker runs.

This is what ``Stream.run()`` uses. Every task is a coroutine on one event loop;
operator code runs on a small thread pool. A failing task fails the job at once:
the other tasks are cancelled and :class:`~sabot.errors.JobFailed` carries the
task's error (naming operator and user function) and its traceback.
"""

import asyncio
import time
from dataclasses import dataclass, field

import pyarrow as pa

from sabot import _loop
from sabot.errors import JobFailed
from sabot.execution.deployment import build_deployment_descriptors
from sabot.runtime.data_server import DataServer
from sabot.runtime.tables import TableStore
from sabot.runtime.task_manager import TaskManager


@dataclass
class JobResult:
    """What a finished job produced: collected tables and sink summaries by sink name."""

    job_id: str
    tables: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)
    tasks: list = field(default_factory=list)  # the final report of every task (dicts)
    duration_seconds: float = 0.0

    def table(self, name=None) -> pa.Table:
        """The table a collect sink gathered; ``name`` may be omitted if there is one.

        A changelog (rows with the ``"$op"`` column, an updating result) is materialised:
        the rows it leaves after its retractions (:func:`sabot.runtime.changelog.materialise`);
        :meth:`changelog` gives the raw rows."""
        from sabot.runtime.changelog import is_changelog, materialise

        table = self.changelog(name)
        return materialise(table) if is_changelog(table.schema) else table

    def changelog(self, name=None) -> pa.Table:
        """The rows a collect sink gathered, as they came (with ``"$op"`` for a changelog),
        subtask after subtask."""
        if name is None:
            if len(self.tables) != 1:
                raise KeyError(
                    f"this job has {len(self.tables)} collect sinks ({sorted(self.tables)}); "
                    "name the one you want"
                )
            return next(iter(self.tables.values()))
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no collect sink named {name!r}; collect sinks: {sorted(self.tables)}") from None

    def __getitem__(self, name):
        return self.table(name)


def gather_results(job_id, job_graph, reports, fetch_table):
    """Assemble a JobResult from the final TaskUpdates; ``fetch_table(task_id)`` gets tables."""
    result = JobResult(job_id=job_id, tasks=[dict(r.to_dict(), task_id=r.task_id) for r in reports])
    by_op = {}
    for report in reports:
        by_op.setdefault(report.operator_id, []).append(report)
    for op_id, node in job_graph.operators.items():
        if node.operator_type.value != "sink":
            continue
        ordered = sorted(by_op.get(op_id, []), key=lambda r: r.subtask_index)
        result.summaries[node.name] = [r.summary for r in ordered]
        if (node.parameters or {}).get("kind", "collect") == "collect":
            parts = [t for t in (fetch_table(r.task_id) for r in ordered) if t is not None]
            if parts:
                # subtasks that saw no row give the declared schema's empty table; the schema
                # of the rows that came wins if the two differ (e.g. metadata)
                full = [t for t in parts if t.num_rows]
                result.tables[node.name] = pa.concat_tables(full) if full else parts[0]
    return result


async def run_job_graph_async(job_graph, timeout=None, threads=None):
    """Execute ``job_graph`` in this process and return its :class:`JobResult`."""
    job_graph.validate()
    exec_graph = job_graph.to_execution_graph()
    job_id = job_graph.job_id
    start = time.perf_counter()
    server = DataServer()
    failed = asyncio.Event()
    failures = []

    def on_update(report):
        if report.state.value == "FAILED":
            failures.append(report)
            failed.set()

    # the job graph's in-memory tables, by reference: the tasks read them where they are
    manager = TaskManager(server, on_update=on_update, threads=threads, tables=TableStore(job_graph.tables))
    try:
        for tdd in build_deployment_descriptors(exec_graph, job_id).values():
            await manager.deploy(tdd)
        finished = asyncio.ensure_future(manager.wait())
        failing = asyncio.ensure_future(failed.wait())
        done, _ = await asyncio.wait({finished, failing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finished.cancel()
        failing.cancel()
        if failures:
            first = failures[0]
            raise JobFailed(
                f"job {job_graph.job_name!r} failed: task {first.task_id} "
                f"({first.operator_name}): {first.error}",
                [dict(f.to_dict(), task_id=f.task_id) for f in failures],
            )
        if not done:
            raise TimeoutError(f"job {job_graph.job_name!r} did not finish within {timeout} s")
        await manager.notify_job_finished(job_id)
        result = gather_results(job_id, job_graph, manager.reports(), manager.result)
        result.duration_seconds = time.perf_counter() - start
        return result
    finally:
        await manager.shutdown()
        await server.stop()


def run_job_graph(job_graph, timeout=None, threads=None):
    """Blocking :func:`run_job_graph_async` on a fresh uvloop (or asyncio) loop."""
    return run_coroutine(run_job_graph_async(job_graph, timeout=timeout, threads=threads))


def run_coroutine(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "an event loop is already running in this thread; use 'await stream.run_async()' "
            "(or run_job_graph_async) instead of the blocking run()"
        )
    return _loop.run(coro)

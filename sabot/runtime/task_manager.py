"""TaskManager: the tasks one process hosts (a worker, or the embedded executor)."""

import asyncio
import concurrent.futures
import logging
import os

from sabot.runtime.task import TERMINAL_STATES, Task

log = logging.getLogger(__name__)


class TaskManager:
    """Deploys, runs, cancels and reports the tasks of this process.

    Args:
        data_server: the process's :class:`~sabot.runtime.data_server.DataServer`.
        on_update: called on the loop thread with a task status dict on every
            state change and every ``report_interval`` seconds while tasks run.
        on_checkpoint: called on the loop thread with a task's checkpoint
            acknowledgement or decline (``{"type": "checkpoint_ack" | "checkpoint_declined", ...}``).
        threads: size of the pool operator code runs on (default: cpu count).
    """

    def __init__(self, data_server, on_update=None, threads=None, report_interval=0.5, on_checkpoint=None):
        self.data_server = data_server
        self.on_update = on_update
        self.on_checkpoint = on_checkpoint
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 2, thread_name_prefix="sabot-op"
        )
        self.report_interval = report_interval
        self.tasks = {}
        self._reporter = None
        self._commits = set()

    async def deploy(self, tdd):
        """Create and start the task a deployment descriptor describes."""
        task_id = tdd.get("task_id")
        if not task_id:
            raise ValueError("deployment descriptor has no 'task_id'")
        old = self.tasks.get(task_id)
        attempt = tdd.get("attempt", 0)
        if old is not None and old.state not in TERMINAL_STATES:
            raise ValueError(f"task {task_id!r} is already running here (attempt {old.attempt})")
        if old is not None and attempt <= old.attempt:
            raise ValueError(
                f"task {task_id!r}: attempt {attempt} is not newer than attempt {old.attempt} that ran here; "
                "a superseded deployment is refused"
            )
        task = Task(tdd, self.data_server, self.executor, on_update=self.on_update,
                    on_checkpoint=self.on_checkpoint)
        self.tasks[task_id] = task
        task.start()
        if self.on_update is not None and self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report_loop())
        return task

    def _task(self, task_id, attempt):
        """The task, or None for a message addressed to an older attempt (dropped)."""
        task = self.tasks.get(task_id)
        if task is None:
            raise KeyError(task_id)
        if attempt is not None and attempt < task.attempt:
            log.debug("message for attempt %s of %s dropped (attempt %s runs)", attempt, task_id, task.attempt)
            return None
        return task

    async def cancel(self, task_id, attempt=None):
        task = self._task(task_id, attempt)
        if task is not None:
            await task.cancel()

    def trigger_checkpoint(self, task_id, checkpoint_id, timestamp_ms, attempt=None):
        """Start checkpoint ``checkpoint_id`` at a source task (it injects the barrier)."""
        task = self._task(task_id, attempt)
        if task is not None:
            task.trigger_checkpoint(checkpoint_id, timestamp_ms)

    def control(self, task_id, message, attempt=None):
        """Hand a control message (live rescaling) to a running task.

        Returns None, or for a ``source_pause`` an asyncio future that resolves to the
        source's reply ``{"task_id", "next_unit", "position"}`` (see :meth:`Task.control`).
        """
        task = self._task(task_id, attempt)
        if task is None:
            return None
        if task.state in TERMINAL_STATES:
            raise ValueError(f"task {task_id!r} is {task.state}; it takes no control messages")
        return task.control(message)

    def notify_checkpoint_complete(self, job_id, checkpoint_id):
        """Tell every task of ``job_id`` here that ``checkpoint_id`` completed (sinks commit).

        Returns at once; the commits run on the thread pool (see :meth:`wait_commits`).
        """
        for task in list(self.tasks.values()):
            if task.job_id == job_id and task.state not in ("FAILED", "CANCELED"):
                future = task.notify_checkpoint_complete(checkpoint_id)
                self._commits.add(future)
                future.add_done_callback(self._commit_done(task, checkpoint_id))

    def _commit_done(self, task, checkpoint_id):
        def done(future):
            self._commits.discard(future)
            if not future.cancelled() and future.exception() is not None:
                log.error("task %s failed to commit checkpoint %s: %s", task.task_id, checkpoint_id,
                          future.exception())

        return done

    async def wait_commits(self):
        """Wait for the checkpoint commits started so far."""
        if self._commits:
            await asyncio.gather(*list(self._commits), return_exceptions=True)

    async def notify_job_finished(self, job_id):
        """Every task of ``job_id`` finished: sinks publish what end of input left staged."""
        await self.wait_commits()
        for task in list(self.tasks.values()):
            if task.job_id == job_id and task.state == "FINISHED":
                await task.notify_job_finished()

    def list_tasks(self):
        pid = os.getpid()
        return [dict(task.status(), pid=pid) for task in self.tasks.values()]

    def result(self, task_id):
        task = self.tasks.get(task_id)
        if task is None:
            raise KeyError(task_id)
        return task.operator.result()

    async def wait(self, task_ids=None):
        """Wait until the given tasks (default: all) reach a terminal state."""
        tasks = [self.tasks[t] for t in task_ids] if task_ids is not None else list(self.tasks.values())
        await asyncio.gather(*(t.wait() for t in tasks), return_exceptions=True)

    async def _report_loop(self):
        while True:
            await asyncio.sleep(self.report_interval)
            for task in list(self.tasks.values()):
                if task.state == "RUNNING":
                    try:
                        self.on_update(task.status())
                    except Exception:
                        log.exception("task report failed")

    async def shutdown(self):
        for task in list(self.tasks.values()):
            await task.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None
        self.executor.shutdown(wait=False, cancel_futures=True)

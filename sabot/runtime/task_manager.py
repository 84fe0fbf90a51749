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
        data_server: the process's :class:`~sabot.runtime.channels.DataServer`.
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

    async def deploy(self, tdd):
        """Create and start the task a deployment descriptor describes."""
        task_id = tdd.get("task_id")
        if not task_id:
            raise ValueError("deployment descriptor has no 'task_id'")
        old = self.tasks.get(task_id)
        if old is not None and old.state not in TERMINAL_STATES:
            raise ValueError(f"task {task_id!r} is already running here (attempt {old.attempt})")
        task = Task(tdd, self.data_server, self.executor, on_update=self.on_update,
                    on_checkpoint=self.on_checkpoint)
        self.tasks[task_id] = task
        task.start()
        if self.on_update is not None and self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report_loop())
        return task

    async def cancel(self, task_id):
        task = self.tasks.get(task_id)
        if task is None:
            raise KeyError(task_id)
        await task.cancel()

    def trigger_checkpoint(self, task_id, checkpoint_id, timestamp_ms):
        """Start checkpoint ``checkpoint_id`` at a source task (it injects the barrier)."""
        task = self.tasks.get(task_id)
        if task is None:
            raise KeyError(task_id)
        task.trigger_checkpoint(checkpoint_id, timestamp_ms)

    def control(self, task_id, message):
        """Hand a control message (live rescaling) to a running task."""
        task = self.tasks.get(task_id)
        if task is None:
            raise KeyError(task_id)
        if task.state in TERMINAL_STATES:
            raise ValueError(f"task {task_id!r} is {task.state}; it takes no control messages")
        task.control(message)

    def notify_checkpoint_complete(self, job_id, checkpoint_id):
        """Tell every task of ``job_id`` here that ``checkpoint_id`` completed (sinks commit)."""
        for task in list(self.tasks.values()):
            if task.job_id == job_id and task.state not in ("FAILED", "CANCELED"):
                try:
                    task.notify_checkpoint_complete(checkpoint_id)
                except Exception:
                    log.exception("task %s failed to commit checkpoint %s", task.task_id, checkpoint_id)

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

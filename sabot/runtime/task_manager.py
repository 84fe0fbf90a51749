"""TaskManager: the tasks one process hosts (a worker, or the embedded executor)."""

import asyncio
import collections
import concurrent.futures
import logging
import os
import time

from sabot.execution.deployment import TaskDeploymentDescriptor
from sabot.execution.execution_graph import TaskState
from sabot.execution.ids import AttemptId
from sabot.execution.messages import CheckpointDecline
from sabot.runtime.tables import TableStore, refs_in
from sabot.runtime.task import Task

log = logging.getLogger(__name__)

#: how long a loop over many tasks may run before it lets the event loop serve others
YIELD_EVERY_S = 0.005

#: ended tasks kept (for their status and a collect sink's result) when the coordinator
#: never releases their job; beyond it the longest-ended go first
MAX_ENDED_TASKS = 10_000


class TaskManager:
    """Deploys, runs, cancels and reports the tasks of this process.

    Args:
        data_server: the process's :class:`~sabot.runtime.data_server.DataServer`.
        on_update: called on the loop thread with a task's
            :class:`~sabot.execution.messages.TaskUpdate` on every state change and
            every ``report_interval`` seconds while tasks run.
        on_checkpoint: called on the loop thread with a task's
            :class:`~sabot.execution.messages.CheckpointAck` or ``CheckpointDecline``.
        threads: size of the pool operator code runs on (default: cpu count).
        max_ended_tasks: ended tasks kept at most; the coordinator releases a job's tasks
            (:meth:`release_job`) when it forgets the job, this bounds them if it never does.
        tables: the :class:`~sabot.runtime.tables.TableStore` of this process (in-memory
            tables the tasks' operators refer to); a job's tables go with :meth:`release_job`.
    """

    def __init__(self, data_server, on_update=None, threads=None, report_interval=0.5, on_checkpoint=None,
                 max_ended_tasks=MAX_ENDED_TASKS, tables=None):
        self.data_server = data_server
        self.tables = tables if tables is not None else TableStore()
        self.on_update = on_update
        self.on_checkpoint = on_checkpoint
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 2, thread_name_prefix="sabot-op"
        )
        self.report_interval = report_interval
        self.max_ended_tasks = max_ended_tasks
        self.tasks = {}
        self._ended = collections.OrderedDict()  # task id -> its ended Task, longest-ended first
        self._reporter = None
        self._commits = set()

    async def deploy(self, tdd):
        """Create and start the task a deployment descriptor (or its dict) describes."""
        if not isinstance(tdd, TaskDeploymentDescriptor):
            tdd = TaskDeploymentDescriptor.from_dict(tdd, "task deployment descriptor")
        task_id = tdd.task_id
        old = self.tasks.get(task_id)
        if old is not None and not old.state.is_terminal:
            raise ValueError(f"task {task_id!r} is already running here (attempt {old.attempt})")
        if old is not None and not old.attempt_id.is_superseded_by(tdd.attempt_id):
            raise ValueError(
                f"task {task_id!r}: attempt {tdd.attempt} is not newer than attempt {old.attempt} that ran here; "
                "a superseded deployment is refused"
            )
        self.tables.use(tdd.job_id, [ref["table_id"] for ref in refs_in(tdd.operator.get("parameters"))])
        task = Task(tdd, self.data_server, self.executor, on_checkpoint=self.on_checkpoint, tables=self.tables,
                    on_update=lambda update, task_id=task_id: self._task_changed(task_id, update))
        self._ended.pop(task_id, None)
        self.tasks[task_id] = task
        task.start()
        if self.on_update is not None and self._reporter is None:
            self._reporter = asyncio.ensure_future(self._report_loop())
        return task

    def task_of(self, attempt_id):
        """The task running ``attempt_id``, or None if that attempt is superseded (the message
        for it is dropped).

        Raises:
            KeyError: no attempt of that task ever ran here.
        """
        if not isinstance(attempt_id, AttemptId):
            task = self.tasks.get(attempt_id)
            if task is None:
                raise KeyError(attempt_id)
            return task
        task = self.tasks.get(attempt_id.task_id)
        if task is None:
            raise KeyError(attempt_id.task_id)
        if task.attempt_id != attempt_id:
            log.debug("message for %s dropped (%s runs here)", attempt_id, task.attempt_id)
            return None
        return task

    async def cancel(self, task_id):
        """Cancel the task (its current attempt) and wait for it to stop."""
        task = self.task_of(task_id)
        if task is not None:
            await task.cancel()

    def trigger_checkpoint(self, message):
        """Start a checkpoint at a source task (a :class:`TriggerCheckpoint`); an attempt that
        is not here declines it."""
        try:
            task = self.task_of(message.attempt_id)
        except KeyError:
            task = None
        if task is None:
            current = self.tasks.get(message.attempt_id.task_id)
            have = "no such task" if current is None else f"attempt {current.attempt} runs here"
            self._decline(message, f"task {message.attempt_id} is not here ({have})")
            return
        try:
            task.trigger_checkpoint(message.checkpoint_id, message.timestamp_ms)
        except ValueError as exc:
            self._decline(message, str(exc))

    def _decline(self, message, reason):
        if self.on_checkpoint is not None:
            self.on_checkpoint(CheckpointDecline(message.job_id, message.attempt_id, message.checkpoint_id, reason))

    def control(self, message):
        """Hand a live-rescale control message to the attempt it names.

        Returns None, or for a ``SourcePause`` an asyncio future that resolves to the
        source's reply ``{"task_id", "position"}`` (its split positions).

        Raises:
            KeyError: no such task here.
            ValueError: the attempt is superseded or ended, or the task cannot apply it.
        """
        task = self.task_of(message.attempt_id)
        if task is None:
            current = self.tasks[message.attempt_id.task_id]
            raise ValueError(f"{message.TYPE} for {message.attempt_id}, but attempt {current.attempt} runs here")
        if task.state.is_terminal:
            raise ValueError(f"task {task.task_id!r} is {task.state.value}; it takes no control messages")
        return task.control(message)

    def notify_checkpoint_complete(self, job_id, checkpoint_id, attempts=None):
        """Tell the tasks of ``job_id`` here that ``checkpoint_id`` completed (sinks commit).

        ``attempts`` (``{task_id: attempt}``, from the coordinator) are the attempts the
        checkpoint covers; any other attempt is fenced off and publishes nothing. Returns
        at once; the commits run on the thread pool (see :meth:`wait_commits`).
        """
        for task in list(self.tasks.values()):
            if attempts is not None and attempts.get(task.task_id) != task.attempt:
                continue
            if task.job_id == job_id and task.state not in (TaskState.FAILED, TaskState.CANCELED):
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
            if task.job_id == job_id and task.state == TaskState.FINISHED:
                await task.notify_job_finished()

    async def release_job(self, job_id):
        """Forget the tasks of ``job_id`` (the coordinator no longer keeps the job): any still
        running are canceled first. Returns how many were released."""
        tasks = [t for t in self.tasks.values() if t.job_id == job_id]
        await asyncio.gather(*(t.cancel() for t in tasks if not t.state.is_terminal), return_exceptions=True)
        for task in tasks:
            if self.tasks.get(task.task_id) is task:
                del self.tasks[task.task_id]
                self._ended.pop(task.task_id, None)
        self.data_server.release_job(job_id)
        self.tables.release_job(job_id)
        return len(tasks)

    def _task_changed(self, task_id, update):
        if update.state.is_terminal:
            task = self.tasks.get(task_id)
            if task is not None and task.attempt_id == update.attempt_id:
                self._ended[task_id] = task
                self._ended.move_to_end(task_id)
                while len(self._ended) > self.max_ended_tasks:
                    old_id, old = self._ended.popitem(last=False)
                    if self.tasks.get(old_id) is old:
                        del self.tasks[old_id]
                        log.info("ended task %s dropped: more than %d ended tasks here and its job %s was "
                                 "never released", old_id, self.max_ended_tasks, old.job_id)
        if self.on_update is not None:
            self.on_update(update)

    def reports(self):
        """Every task's latest :class:`~sabot.execution.messages.TaskUpdate`."""
        return [task.status() for task in self.tasks.values()]

    def list_tasks(self):
        """Every task's latest report (TaskUpdate dicts, plus this process's pid)."""
        pid = os.getpid()
        return [dict(task.status().to_dict(), task_id=task.task_id, pid=pid) for task in self.tasks.values()]

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
        """Every ``report_interval``: the reports of running tasks that made progress since their
        last one (an idle task has nothing new to say), yielding the loop every few ms so that
        thousands of tasks never stall it."""
        last = {}
        while True:
            await asyncio.sleep(self.report_interval)
            started = time.perf_counter()
            for task in list(self.tasks.values()):
                if task.state != TaskState.RUNNING:
                    last.pop(task.task_id, None)
                    continue
                m = task.metrics
                progress = (task.attempt, m["rows_in"], m["rows_out"], m.get("backpressured_seconds"))
                if last.get(task.task_id) == progress:
                    continue
                last[task.task_id] = progress
                try:
                    self.on_update(task.status())
                except Exception:
                    log.exception("task report failed")
                if time.perf_counter() - started > YIELD_EVERY_S:
                    await asyncio.sleep(0)
                    started = time.perf_counter()

    async def cancel_all(self):
        """Cancel every task that still runs here (this process was dropped by its coordinator:
        their attempts are superseded)."""
        await asyncio.gather(*(t.cancel() for t in list(self.tasks.values()) if not t.state.is_terminal),
                             return_exceptions=True)

    async def shutdown(self):
        for task in list(self.tasks.values()):
            await task.cancel()
        if self._reporter is not None:
            self._reporter.cancel()
            self._reporter = None
        self.executor.shutdown(wait=False, cancel_futures=True)

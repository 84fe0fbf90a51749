"""What happens when a task fails or a worker is lost (Flink's ExecutionFailureHandler +
RestartPipelinedRegionFailoverStrategy + the restarting scheduler state).

:class:`FailureHandler` is pure decision code: given the failed tasks, the job's
restart strategy and what is already restarting, it answers *restart these pipelined
regions after this delay*, *fail the job*, or *nothing to do* (a task of a region
already being restarted). :class:`Failover` carries a restart out: cancel the
region's tasks, wait the delay, take the latest completed checkpoint, keep the
slots of tasks whose worker is alive and place the others (waiting on the slot
pool's queue for a replacement worker), redeploy every task as a new attempt.
Each new attempt gets fresh channels, so anything the old attempts still send or
report is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sabot.cluster.job import JobState
from sabot.errors import SlotsExhausted
from sabot.execution.deployment import RestoreSpec
from sabot.execution.execution_graph import TaskState

log = logging.getLogger(__name__)

__all__ = ["FailDecision", "Failover", "FailureHandler", "RestartDecision", "is_peer_failure"]

#: failures that are usually the symptom of another worker dying (its channel broke)
PEER_FAILURE_TYPES = frozenset({"ChannelClosed", "ChannelProtocolError", "ConnectionResetError",
                                "BrokenPipeError", "ConnectionRefusedError"})


def is_peer_failure(error_type) -> bool:
    """True for failures caused by a broken channel (the peer's loss is the real cause)."""
    return error_type in PEER_FAILURE_TYPES


@dataclass(frozen=True)
class RestartDecision:
    """Restart the tasks of these operators (whole pipelined regions) after ``delay_s``."""

    operator_ids: tuple
    task_ids: frozenset
    delay_s: float
    failure_number: int


@dataclass(frozen=True)
class FailDecision:
    """The restart strategy is exhausted: the job fails with ``reason``."""

    reason: str


class FailureHandler:
    """Decides what a failure means for a job (no I/O, no time)."""

    @staticmethod
    def regions_of(exec_graph, task_ids) -> list:
        """Operator ids of the pipelined regions holding ``task_ids`` (all operators if none)."""
        ops = {exec_graph.get_task(t).operator_id for t in task_ids
               if t in exec_graph.tasks or t in exec_graph.retired_tasks}
        wanted = []
        for region in exec_graph.pipelined_regions():
            if ops.intersection(region):
                wanted.extend(region)
        return wanted or list(exec_graph.job_graph.operators)

    def decide(self, job, task_ids, message, restarting=frozenset()):
        """A :class:`RestartDecision`, a :class:`FailDecision`, or None (already being restarted)."""
        task_ids = list(task_ids)
        if restarting and task_ids and not set(task_ids) - set(restarting):
            return None
        failure_number = job.failures + 1
        strategy = job.restart_strategy
        delay = strategy.next_delay(failure_number) if strategy is not None else None
        if delay is None:
            return FailDecision(f"{message} (restart strategy {strategy.to_dict() if strategy else None} exhausted "
                                f"after {job.restarts} restart(s))")
        ops = self.regions_of(job.exec_graph, task_ids)
        if restarting:  # a restart in progress is redone, covering its tasks too
            ops = list(dict.fromkeys(ops + [job.exec_graph.tasks[t].operator_id for t in restarting
                                            if t in job.exec_graph.tasks]))
        ids = frozenset(t.task_id for op in ops for t in job.exec_graph.operator_tasks(op))
        return RestartDecision(tuple(ops), ids, delay, failure_number)


class Failover:
    """Restarts the regions of failed tasks from the latest checkpoint.

    Args:
        placer, deployer: the coordinator's :class:`~sabot.cluster.placement.TaskPlacer` and
            :class:`~sabot.cluster.placement.ExecutionDeployer`.
        registry: the node registry (is a task's worker still alive?).
        clock, spawn: time and background tasks.
        slot_wait_s: how long a restart waits for slots (a replacement worker may join).
        heartbeat_timeout_s: how long a broken channel waits for its peer's loss to be named.
        fail_job: ``fn(job, message, traceback=None, task_id=None)``: the job fails.
        set_running: ``fn(job)``: the job is redeployed (it runs once every task reported running).
        abort_rescale: ``fn(job, reason)``: a live rescale in progress is given up.
    """

    def __init__(self, *, placer, deployer, registry, clock, spawn, slot_wait_s, heartbeat_timeout_s,
                 fail_job, set_running, abort_rescale):
        self.placer = placer
        self.deployer = deployer
        self.registry = registry
        self.clock = clock
        self.spawn = spawn
        self.slot_wait_s = slot_wait_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.handler = FailureHandler()
        self.fail_job = fail_job
        self.set_running = set_running
        self.abort_rescale = abort_rescale
        self._restarts = {}  # job id -> (asyncio task, task ids being restarted)

    def restarting(self, job) -> frozenset:
        entry = self._restarts.get(job.job_id)
        return entry[1] if entry is not None and not entry[0].done() else frozenset()

    # -- failures ---------------------------------------------------------------------------

    def task_failed(self, job, task, node_id, update) -> None:
        """A worker reported a task FAILED."""
        task.failure_cause = update.error
        message = (f"job {job.job_id}: task {task.task_id} ({task.operator_name}) on worker {node_id} failed: "
                   f"{update.error}")
        attempt = task.attempt

        def fail():
            if task.attempt != attempt or job.terminal or task.task_id in self.restarting(job):
                return  # already restarted (e.g. the lost worker was named as the cause)
            self.on_failure(job, message, [task.task_id], traceback=update.traceback)

        if is_peer_failure(update.error_type):
            # A broken channel is usually the symptom of a peer worker dying; give its loss
            # (connection drop or missed heartbeats) the chance to be named as the cause.
            self.clock.call_later(self.heartbeat_timeout_s + 0.1, fail)
        else:
            fail()

    def on_failure(self, job, message, task_ids=(), traceback=None) -> None:
        """A task failed or its worker was lost: restart its region, or fail the job."""
        if job.terminal or job.state.value in ("CANCELING", "WAITING_FOR_SLOTS"):
            return
        task_ids = list(task_ids)
        first = task_ids[0] if task_ids else None
        job.last_failure = {"error": message, "task_id": first, "traceback": traceback, "time": self.clock.wall()}
        self.abort_rescale(job, message)
        restarting = self.restarting(job)
        decision = self.handler.decide(job, task_ids, message, restarting)
        if decision is None:
            return  # a task of the region being restarted: expected
        if isinstance(decision, FailDecision):
            self.fail_job(job, decision.reason, traceback=traceback, task_id=first)
            return
        if restarting:
            log.warning("%s (while restarting; the restart is redone)", message)
        job.failures = decision.failure_number
        job.transition(JobState.RESTARTING, self.clock.now(), self.clock.wall())
        if job.checkpointing is not None:
            job.checkpointing.abort_all(f"task failure: {message}")
        log.warning("%s; restarting %d task(s) in %.3f s (failure %d, restart strategy %s)", message,
                    len(decision.task_ids), decision.delay_s, decision.failure_number,
                    job.restart_strategy.to_dict())
        previous = self._restarts.get(job.job_id)
        previous = previous[0] if previous is not None else None
        if previous is not None and not previous.done():
            previous.cancel()
        task = self.spawn(self._restart(job, decision, message, previous, failing_task=first))
        self._restarts[job.job_id] = (task, decision.task_ids)

    async def cancel(self, job) -> None:
        """The job ends: stop a restart in progress."""
        entry = self._restarts.pop(job.job_id, None)
        if entry is not None and not entry[0].done() and entry[0] is not asyncio.current_task():
            entry[0].cancel()
            await asyncio.gather(entry[0], return_exceptions=True)

    def forget(self, job) -> None:
        entry = self._restarts.pop(job.job_id, None)
        if entry is not None and not entry[0].done() and entry[0] is not asyncio.current_task():
            entry[0].cancel()

    # -- the restart --------------------------------------------------------------------------

    async def _restart(self, job, decision, cause, previous=None, failing_task=None):
        started = self.clock.now()
        ids = decision.task_ids
        graph = job.exec_graph
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await job.deployed.wait()  # never race the first deployment
            live = [t for t in ids if not graph.tasks[t].state.is_terminal and self.placer.node_of(t) in self.registry]
            await self.deployer.cancel(job, live)
            for task_id in ids:
                graph.tasks[task_id].cancel()  # also those whose worker is gone
            await self.clock.sleep(decision.delay_s)
            if job.checkpointing is not None:
                await job.checkpointing.wait_commits()
                checkpoint, skipped = await job.checkpointing.latest_completed()
            else:
                checkpoint, skipped = None, []
            job.skipped_checkpoints = skipped
            tasks = [graph.tasks[t] for t in sorted(ids)]
            homeless = []
            for task in tasks:
                node = self.placer.node_of(task.task_id)
                task.transition(TaskState.CREATED)  # a new attempt; a finished task of the region runs again too
                job.reports.pop(task.task_id, None)
                if node is not None and node in self.registry:
                    self.placer.keep(task)  # its worker is alive: it restarts in its slot
                else:
                    self.placer.release([task.task_id])
                    homeless.append(task)
            await self.placer.place(job, homeless, self.slot_wait_s)
            if checkpoint is not None:
                restore = RestoreSpec(job.checkpointing.storage.uri, checkpoint.to_dict())
            else:
                restore = job.initial_restore  # nothing newer than what the job was submitted from
            tdds = await self.deployer.descriptors(job, restore=restore)
            job.restarts += 1
            if checkpoint is not None:
                job.restored_from = {"job_id": job.job_id, "checkpoint_id": checkpoint.checkpoint_id,
                                     "path": checkpoint.path, "at": self.clock.wall()}
            entry = {"restart": job.restarts, "cause": cause, "task_id": failing_task, "tasks": len(ids),
                     "checkpoint_id": checkpoint.checkpoint_id if checkpoint is not None else None,
                     "skipped_checkpoints": [s["reason"] for s in skipped], "seconds": None,
                     "time": self.clock.wall()}
            job.restart_history.append(entry)
            if job.checkpointing is not None:
                job.checkpointing.tasks_changed("the job restarted")
            # from here on the new attempts run: a failure they report is a new failure
            self._restarts[job.job_id] = (asyncio.current_task(), frozenset())
            errors = await self.deployer.deploy(job, [tdds[t] for t in sorted(ids)])
            entry["seconds"] = round(self.clock.now() - started, 4)
            if errors:
                self._restarts.pop(job.job_id, None)
                self.on_failure(job, f"job {job.job_id}: redeploying after a failure failed: {errors[0]}",
                                task_ids=list(ids))
                return
            self.set_running(job)
            log.info("job %s restarted %d task(s) from %s in %.3f s (restart %d)", job.job_id, len(ids),
                     f"checkpoint {checkpoint.checkpoint_id}" if checkpoint is not None else "the beginning",
                     entry["seconds"], job.restarts)
        except asyncio.CancelledError:
            raise
        except SlotsExhausted as exc:
            if not job.terminal:
                self.fail_job(job, f"{cause}; restarting failed: {exc}")
        except Exception as exc:
            log.exception("restarting job %s failed", job.job_id)
            if not job.terminal:
                self.fail_job(job, f"{cause}; restarting failed: {type(exc).__name__}: {exc}")

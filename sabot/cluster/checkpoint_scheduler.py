"""The checkpoints of one running job: triggers, acknowledgements, commits (Flink's
CheckpointCoordinator I/O side).

:class:`JobCheckpointing` wraps the pure state machine of
:mod:`sabot.cluster.checkpoints` with what it must not do itself: the periodic
trigger (``checkpoint_interval_ms`` of the job), sending the trigger to the source
tasks and the completion to every worker of the job (through the gateway), a timer
per checkpoint for its timeout, committing a complete checkpoint to
:class:`~sabot.runtime.checkpoint_storage.CheckpointStorage` (metadata written last)
and discarding aborted ones. Storage I/O runs through ``offload`` (a thread by
default), time through the injected clock, so tests drive it by hand.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from sabot.cluster.checkpoints import CheckpointCoordinator, InvalidCheckpointAck
from sabot.errors import Conflict
from sabot.execution.deployment import CheckpointSpec
from sabot.execution.execution_graph import TaskState
from sabot.execution.messages import CheckpointAck, CheckpointComplete, TriggerCheckpoint

log = logging.getLogger(__name__)

__all__ = ["JobCheckpointing"]


class JobCheckpointing:
    """Checkpoints of one job.

    Args:
        job: the :class:`~sabot.cluster.job.JobRecord`.
        storage: its :class:`~sabot.runtime.checkpoint_storage.CheckpointStorage`.
        retain: completed checkpoints kept.
        timeout_s: a checkpoint not acknowledged by every task within this time is aborted.
        gateway, placer, clock, spawn: the coordinator's collaborators.
        blocked_by: ``fn(job) -> str | None``: why no checkpoint may start now (a rescale).
        offload: ``async fn(callable, *args)`` running storage I/O off the loop (default: a thread).
    """

    def __init__(self, job, storage, *, retain, timeout_s, gateway, placer, clock, spawn,
                 blocked_by=lambda job: None, offload=asyncio.to_thread):
        self.job = job
        self.storage = storage
        self.spec = CheckpointSpec(storage.uri, retain)
        self.timeout_s = float(timeout_s)
        self.gateway = gateway
        self.placer = placer
        self.clock = clock
        self.spawn = spawn
        self.blocked_by = blocked_by
        self.offload = offload
        self.coordinator = None  # CheckpointCoordinator, once the job runs
        self.latest = None  # summary of the latest committed checkpoint
        self.commits = set()  # commit coroutines in flight
        self.idle = asyncio.Event()  # no checkpoint in progress
        self.idle.set()
        self._loop = None
        self._timers = {}

    # -- lifecycle ------------------------------------------------------------------------

    def _task_sets(self):
        """``{task_id: attempt}`` of every live task, and of the source tasks."""
        attempts = {tid: t.attempt for tid, t in self.job.exec_graph.tasks.items()}
        return attempts, {tid: attempts[tid] for tid in self.job.source_task_ids()}

    def start(self) -> None:
        """The job runs: create the state machine (once) and start the periodic trigger."""
        if self.coordinator is None:
            attempts, sources = self._task_sets()
            if not sources:
                return
            restored = getattr(self.job, "restored_from", None)
            self.coordinator = CheckpointCoordinator(self.job.job_id, attempts, sources, timeout_s=self.timeout_s,
                                                     clock=self.clock.now,
                                                     first_id=restored["checkpoint_id"] + 1 if restored else 1)
        interval = self.job.job_graph.checkpoint_interval_ms
        if interval and self._loop is None:
            self._loop = self.spawn(self._periodic(interval / 1000.0))

    def stop(self, reason) -> None:
        """The job ended: no more triggers; checkpoints in flight are aborted."""
        if self._loop is not None:
            self._loop.cancel()
            self._loop = None
        self.abort_all(reason)

    def tasks_changed(self, reason) -> None:
        """The job's task attempts changed (restart, rescale): checkpoints in flight cannot complete."""
        if self.coordinator is not None:
            attempts, sources = self._task_sets()
            self._discard(self.coordinator.update_tasks(attempts, sources, reason=reason))

    def abort_all(self, reason) -> None:
        if self.coordinator is not None:
            self._discard(self.coordinator.abort_all(reason))

    # -- triggering -----------------------------------------------------------------------

    async def _periodic(self, interval):
        job = self.job
        while not job.terminal:
            await self.clock.sleep(interval)
            if job.state.value != "RUNNING" or self.coordinator is None:
                continue
            if not self.coordinator.can_trigger() or self._finished_sources():
                continue  # one in progress, or a bounded job's input is over: no barrier can follow
            try:
                await self.trigger()
            except Conflict as exc:
                log.debug("job %s: periodic checkpoint skipped: %s", job.job_id, exc)
            except Exception:
                log.exception("job %s: triggering a checkpoint failed", job.job_id)

    def _finished_sources(self):
        tasks = self.job.exec_graph.tasks
        return [tid for tid in self.job.source_task_ids() if tasks[tid].state == TaskState.FINISHED]

    async def trigger(self) -> int:
        """Start a checkpoint now; return its id (it completes asynchronously).

        Raises:
            Conflict: the job is not RUNNING, a rescale goes on, a source reached the end of
                its input, or a checkpoint is in progress.
        """
        job = self.job
        cc = self.coordinator
        if job.state.value != "RUNNING" or cc is None:
            raise Conflict(f"job {job.job_id} is {job.state.value}; checkpoints are taken while it is RUNNING")
        blocked = self.blocked_by(job)
        if blocked:
            raise Conflict(f"job {job.job_id}: {blocked}; the next checkpoint waits until it is done")
        done = self._finished_sources()
        if done:
            raise Conflict(f"job {job.job_id}: source task(s) {done} reached the end of their input; "
                           "a checkpoint barrier can no longer pass them")
        self.check_timeouts()
        if not cc.can_trigger():
            pending = next(iter(cc.pending.values()))
            raise Conflict(f"job {job.job_id}: checkpoint {pending.checkpoint_id} is in progress "
                           f"({len(pending.acks)}/{len(pending.expected)} acks); one checkpoint at a time")
        pending = cc.trigger(wall_time=self.clock.wall())
        cid = pending.checkpoint_id
        self.idle.clear()
        self._timers[cid] = self.clock.call_later(self.timeout_s, self.check_timeouts)
        timestamp_ms = int(self.clock.wall() * 1000)
        for task_id, attempt in pending.source_tasks.items():
            node_id = self.placer.node_of(task_id)
            try:
                await self.gateway.send(node_id, TriggerCheckpoint(job.job_id, job.exec_graph.tasks[task_id].attempt_id,
                                                                   cid, timestamp_ms))
            except ConnectionError as exc:
                if cc.abort(cid, f"cannot send the trigger to source {task_id}: {exc}"):
                    self._discard([cid])
                break
        return cid

    def check_timeouts(self) -> None:
        if self.coordinator is not None:
            self._discard(self.coordinator.check_timeouts())

    # -- answers from the tasks ------------------------------------------------------------

    def on_answer(self, answer) -> None:
        """A task's :class:`CheckpointAck` or :class:`CheckpointDecline`."""
        cc = self.coordinator
        if cc is None or self.job.terminal:
            return
        attempt = answer.attempt_id
        if isinstance(answer, CheckpointAck):
            try:
                record = cc.acknowledge(answer.checkpoint_id, attempt.task_id, attempt.attempt, answer.stats)
            except InvalidCheckpointAck as exc:
                log.error("job %s: %s", self.job.job_id, exc)
                if cc.abort(answer.checkpoint_id, str(exc)):
                    self._discard([answer.checkpoint_id])
                return
            if record is not None:
                self._cancel_timer(record.checkpoint_id)
                commit = self.spawn(self._commit(record))
                self.commits.add(commit)
                commit.add_done_callback(self._commit_done)
        elif cc.decline(answer.checkpoint_id, attempt.task_id, attempt.attempt, answer.reason):
            self._discard([answer.checkpoint_id])

    def _metadata(self):
        job = self.job
        return {
            "job_name": job.job_graph.job_name,
            "operators": {
                op_id: {"name": op.name, "operator_type": op.operator_type.value,
                        "parallelism": job.exec_graph.parallelism_of(op_id), "max_parallelism": op.max_parallelism}
                for op_id, op in job.job_graph.operators.items()
            },
        }

    async def _commit(self, record):
        job = self.job
        cid = record.checkpoint_id
        try:
            completed = await self.offload(self.storage.commit, job.job_id, cid, self._metadata(),
                                          handles=record.handles)
        except Exception as exc:
            log.error("job %s: committing checkpoint %d failed: %s", job.job_id, cid, exc)
            self.coordinator.fail_completed(cid, f"commit failed: {type(exc).__name__}: {exc}")
            await self._discard_one(cid)
            return
        self.latest = {"checkpoint_id": cid, "path": completed.path, "size_bytes": completed.size_bytes,
                       "timestamp": completed.timestamp}
        message = CheckpointComplete(job.job_id, cid, dict(record.attempts))
        for node_id in self.placer.nodes_of(job):
            if not self.gateway.is_connected(node_id):
                continue  # its tasks restart from this checkpoint, which commits their pending output
            try:
                await self.gateway.send(node_id, message)
            except ConnectionError as exc:
                log.warning("job %s: telling worker %s that checkpoint %d completed failed: %s",
                            job.job_id, node_id, cid, exc)

    def _commit_done(self, commit):
        self.commits.discard(commit)
        self._update_idle()

    async def wait_commits(self) -> None:
        if self.commits:
            await asyncio.gather(*list(self.commits), return_exceptions=True)

    async def wait_idle(self, timeout) -> bool:
        """Wait until no checkpoint is in progress; False if one still is after ``timeout``."""
        self._update_idle()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _cancel_timer(self, cid):
        timer = self._timers.pop(cid, None)
        if timer is not None:
            timer.cancel()

    def _update_idle(self):
        if self.coordinator is None or not self.coordinator.pending and not self.commits:
            self.idle.set()

    def _discard(self, checkpoint_ids) -> None:
        for cid in checkpoint_ids:
            self._cancel_timer(cid)
            self.spawn(self._discard_one(cid))
        self._update_idle()

    async def _discard_one(self, cid):
        try:
            await self.offload(self.storage.discard, self.job.job_id, cid)
        except Exception as exc:  # a late writer, or already committed: leave it
            log.debug("job %s: discarding checkpoint %s: %s", self.job.job_id, cid, exc)

    # -- restarts ---------------------------------------------------------------------------

    async def latest_completed(self):
        """The newest valid completed checkpoint (or None) and the reasons corrupt ones were skipped."""
        latest = await self.offload(self.storage.latest, self.job.job_id)
        return latest, [dataclasses.asdict(s) for s in self.storage.skipped]

    # -- views ------------------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        return self.coordinator.next_id if self.coordinator is not None else 0

    def summary(self) -> dict:
        cc = self.coordinator
        counts = None
        if cc is not None:
            counts = {k: v for k, v in cc.counts.items() if k != "dropped_by_reason"}
        return {"interval_ms": self.job.job_graph.checkpoint_interval_ms, "counts": counts,
                "latest_completed": self.latest}

    def view(self) -> dict:
        """``GET /jobs/{job_id}/checkpoints``."""
        cc = self.coordinator
        job = self.job
        return {
            "job_id": job.job_id,
            "state": job.state.value,
            "storage": self.storage.uri,
            "interval_ms": job.job_graph.checkpoint_interval_ms,
            "timeout_s": self.timeout_s,
            "counts": cc.counts if cc is not None else None,
            "history": cc.history() if cc is not None else [],
            "latest_completed": self.latest,
            "restored_from": job.restored_from,
            "skipped": list(job.skipped_checkpoints),
        }

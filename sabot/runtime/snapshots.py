"""A task's part of checkpoints (Flink's SubtaskCheckpointCoordinator): snapshot at the
barrier, write in the background, acknowledge or decline; and restore at start.

The snapshot is taken in place between two batches (the operator's state is copied
or frozen by ``snapshot_state``), the barrier is forwarded at once, and the write
to :class:`~sabot.runtime.checkpoint_storage.CheckpointStorage` runs on the thread
pool while records flow again. A failed or canceled attempt abandons its writes, so
it never acknowledges a checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from sabot._core import partition
from sabot.execution.messages import CheckpointAck, CheckpointDecline
from sabot.runtime.checkpoint_storage import CheckpointStorage, CompletedCheckpoint

log = logging.getLogger(__name__)

__all__ = ["SubtaskCheckpointer"]


class SubtaskCheckpointer:
    """Checkpoints of one task attempt.

    Args:
        tdd: the task's deployment descriptor (checkpoint and restore specs).
        executor: the thread pool snapshots are written on.
        on_checkpoint: called with a :class:`CheckpointAck` or :class:`CheckpointDecline`.
    """

    def __init__(self, tdd, executor, on_checkpoint=None):
        self.tdd = tdd
        self.executor = executor
        self.on_checkpoint = on_checkpoint
        self._storage = None
        self._writes: list[asyncio.Future] = []

    # -- taking a checkpoint ---------------------------------------------------------

    async def checkpoint(self, call, operator, barrier, alignment_ms, forward) -> None:
        """Snapshot ``operator`` (through ``call``, the task's pool runner), ``forward`` the
        barrier, write the snapshot in the background and acknowledge."""
        started = time.perf_counter()
        checkpoint_id = barrier.checkpoint_id
        try:
            snapshot = await call(operator.snapshot_state, checkpoint_id)
        except Exception as exc:
            log.exception("task %s could not snapshot checkpoint %s", self.tdd.task_id, checkpoint_id)
            self.decline(checkpoint_id, f"snapshot failed: {exc}")
            await forward(barrier)
            return
        await forward(barrier)
        write = asyncio.ensure_future(self._write_and_ack(checkpoint_id, snapshot, alignment_ms, started))
        self._writes = [w for w in self._writes if not w.done()] + [write]

    async def wait_writes(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes)

    def abandon(self) -> None:
        """A dead attempt must not acknowledge a checkpoint: cancel the writes in flight."""
        for write in self._writes:
            write.cancel()
        self._writes = []

    async def _write_and_ack(self, checkpoint_id, snapshot, alignment_ms, started):
        try:
            handles = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._write_snapshot, checkpoint_id, snapshot)
        except Exception as exc:
            log.exception("task %s could not write checkpoint %s", self.tdd.task_id, checkpoint_id)
            self.decline(checkpoint_id, f"writing state failed: {exc}")
            return
        self._report(CheckpointAck(self.tdd.job_id, self.tdd.attempt_id, checkpoint_id, {
            "handles": handles,
            "size_bytes": sum(h.get("size_bytes", 0) for h in handles),
            "alignment_ms": alignment_ms,
            "duration_ms": (time.perf_counter() - started) * 1e3,
        }))

    def decline(self, checkpoint_id, reason) -> None:
        self._report(CheckpointDecline(self.tdd.job_id, self.tdd.attempt_id, checkpoint_id, reason))

    def _report(self, message):
        if self.on_checkpoint is not None:
            self.on_checkpoint(message)

    def _storage_for(self, uri, retain=3):
        if self._storage is None or self._storage.uri != uri:
            self._storage = CheckpointStorage(uri, retain=retain)
        return self._storage

    def _write_snapshot(self, checkpoint_id, snapshot):
        spec = self.tdd.checkpoint
        if not snapshot:
            return []
        if spec is None:
            raise RuntimeError(f"task {self.tdd.task_id} got a checkpoint barrier but its job has no "
                               "checkpoint storage")
        storage = self._storage_for(spec.storage, spec.retain)
        tdd = self.tdd
        handles = []
        keyed, state = snapshot.get("keyed"), snapshot.get("state")
        if keyed is not None and keyed.num_rows:
            handles += storage.write_keyed_state(tdd.job_id, checkpoint_id, tdd.operator_id, tdd.subtask_index,
                                                 keyed, tdd.max_parallelism)
        if state:
            handles.append(storage.write_operator_state(tdd.job_id, checkpoint_id, tdd.operator_id,
                                                        tdd.subtask_index, state))
        return handles

    # -- restoring -------------------------------------------------------------------------

    def restore(self, operator) -> None:
        """Hand ``operator`` its state from the checkpoint the descriptor names (runs on the pool)."""
        tdd = self.tdd
        spec = tdd.restore
        checkpoint = CompletedCheckpoint(**spec.checkpoint)
        storage = self._storage_for(spec.storage)
        op_id = tdd.operator_id
        keyed = None
        if checkpoint.keyed_handles(op_id):
            assignment = tdd.assignment if tdd.assignment is not None else spec.assignment
            if assignment is not None:
                mine = np.asarray(assignment, dtype=np.int32) == tdd.subtask_index
            else:
                mine = partition.key_group_range(tdd.subtask_index, tdd.max_parallelism, tdd.parallelism)
            keyed = storage.read_keyed_state(checkpoint, op_id, mine)
        states = storage.read_operator_state(checkpoint, op_id) if checkpoint.operator_handles(op_id) else {}
        if operator.is_source:
            # a source may come back at another parallelism (e.g. a failure during its rescale)
            operator.restore_subtask_states(states, checkpoint.checkpoint_id)
        else:
            operator.restore_state(keyed, states.get(tdd.subtask_index), checkpoint.checkpoint_id)

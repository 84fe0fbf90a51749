"""A Task runs one subtask of one operator: inputs -> operator -> partitioned outputs.

The task is a coroutine on the process's event loop. Operator work (and the
partitioning of its output) runs on a small thread pool so that compiled kernels
and pyarrow, which release the GIL, use more than one core; the coroutine keeps
the order of everything it reads and sends. Control events travel in order with
the data: watermarks advance the event-time clock (the minimum over the live
inputs), end-of-stream on every input finishes the operator.
"""

import asyncio
import collections
import logging
import time
import traceback

import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import OperatorError
from sabot.runtime import events
from sabot._core import partition
from sabot.runtime.channels import InputGate
from sabot.runtime.checkpoint_storage import CheckpointStorage, CompletedCheckpoint
from sabot.runtime.operators import create_operator
from sabot.runtime.operators.base import TaskContext
from sabot.runtime.partitioner import make_partitioner

log = logging.getLogger(__name__)

TERMINAL_STATES = ("FINISHED", "FAILED", "CANCELED")


class _Output:
    """One output edge: a partitioner in front of one channel per target subtask."""

    def __init__(self, spec, channels):
        self.spec = spec
        self.channels = channels
        self.partitioner = make_partitioner(
            spec["partitioning"],
            len(channels),
            key_columns=spec.get("key_by"),
            max_parallelism=spec.get("max_parallelism", 128),
        )


class Task:
    """One deployed subtask. Built from a task deployment descriptor (TDD)."""

    def __init__(self, tdd, data_server, executor, on_update=None, on_checkpoint=None):
        self.tdd = tdd
        self.task_id = tdd["task_id"]
        self.job_id = tdd["job_id"]
        self.attempt = tdd.get("attempt", 0)
        self.data_server = data_server
        self.executor = executor
        self.on_update = on_update
        self.on_checkpoint = on_checkpoint
        self.state = "CREATED"
        self.error = None
        self.traceback = None
        self.metrics = {
            "rows_in": 0,
            "rows_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "busy_seconds": 0.0,
            "idle_seconds": 0.0,
            "backpressured_seconds": 0.0,
        }
        self.ctx = TaskContext(
            job_id=self.job_id,
            task_id=self.task_id,
            attempt=self.attempt,
            operator=tdd["operator"],
            subtask_index=tdd["subtask_index"],
            parallelism=tdd["parallelism"],
            max_parallelism=tdd.get("max_parallelism", 128),
            metrics=self.metrics,
        )
        # Creating the operator imports user code: a bad reference fails the deploy.
        self.operator = create_operator(self.ctx)
        # Register the receiving ends now, so upstream tasks can connect at once.
        self.inputs = []
        self.input_index = []  # logical input (upstream edge) of each channel
        self.input_ids = []
        for i, gate in enumerate(tdd.get("inputs", [])):
            for channel_id in gate["channel_ids"]:
                self.inputs.append(data_server.input_channel(channel_id))
                self.input_index.append(i)
                self.input_ids.append(channel_id)
        self.outputs = []
        self._future = None
        self._triggers = collections.deque()  # checkpoint barriers a source still has to inject
        self._source_done = False
        self._aligning = None  # (barrier, channels that delivered it, start time)
        self._storage = None
        self._writes = []  # background checkpoint writes

    @property
    def operator_name(self):
        return self.ctx.operator_name

    # -- lifecycle ---------------------------------------------------------------

    def start(self):
        self._future = asyncio.ensure_future(self._run())
        return self._future

    async def cancel(self):
        if self._future is not None and not self._future.done():
            self._future.cancel()
            try:
                await self._future
            except asyncio.CancelledError:
                pass
        if self.state not in TERMINAL_STATES:
            self._set_state("CANCELED")

    async def wait(self):
        if self._future is not None:
            await asyncio.shield(self._future)

    def _set_state(self, state):
        self.state = state
        if state in TERMINAL_STATES:
            for channel_id in self.input_ids:
                self.data_server.release(channel_id)
        if self.on_update is not None:
            try:
                self.on_update(self.status())
            except Exception:  # a reporting failure must not kill the task
                log.exception("task update callback failed for %s", self.task_id)

    def status(self):
        return {
            "task_id": self.task_id,
            "job_id": self.job_id,
            "attempt": self.attempt,
            "operator_id": self.tdd["operator"].get("operator_id"),
            "operator_name": self.operator_name,
            "subtask_index": self.ctx.subtask_index,
            "state": self.state,
            "error": self.error,
            "traceback": self.traceback,
            "metrics": self._metrics_snapshot(),
            "summary": self.operator.summary() if self.state == "FINISHED" else None,
            "total_rows": self.operator.total_rows if self.operator.is_source else None,
        }

    def _metrics_snapshot(self):
        self._collect_channel_metrics()
        return dict(self.metrics)

    async def _run(self):
        try:
            await self._open_outputs()
            self._set_state("RUNNING")
            await self._call(self.operator.open)
            if self.tdd.get("restore"):
                await self._call(self._restore)
            if self.operator.is_source:
                await self._run_source()
            else:
                await self._run_inputs()
            await self._call(self.operator.close)
            if self._writes:
                await asyncio.gather(*self._writes)
            for out in self.outputs:
                for ch in out.channels:
                    await ch.close()
            self._collect_channel_metrics()
            self._set_state("FINISHED")
        except asyncio.CancelledError:
            self._collect_channel_metrics()
            self._set_state("CANCELED")
            raise
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, OperatorError) else (
                f"operator {self.operator_name!r} failed: {type(exc).__name__}: {exc}"
            )
            self.traceback = traceback.format_exc()
            log.error("task %s failed: %s", self.task_id, self.error)
            self._set_state("FAILED")

    async def _open_outputs(self):
        for spec in self.tdd.get("outputs", []):
            channels = []
            for target in spec["targets"]:
                channels.append(
                    await self.data_server.output_channel(
                        target["channel_id"], target.get("host"), target.get("port")
                    )
                )
            self.outputs.append(_Output(spec, channels))

    def _collect_channel_metrics(self):
        self.metrics["backpressured_seconds"] = sum(
            ch.metrics.get("backpressured_seconds", 0.0) for out in self.outputs for ch in out.channels
        )
        self.metrics["peak_buffered_bytes"] = max(
            (ch.metrics.get("peak_buffered_bytes", 0) for ch in self.inputs), default=0
        )

    # -- the work ------------------------------------------------------------------

    async def _call(self, fn, *args):
        """Run operator code on the thread pool, accounting busy time."""
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.metrics["busy_seconds"] += time.perf_counter() - start

    def _route(self, batches):
        """Partition output batches for every output edge (runs on the thread pool)."""
        routed = []
        for out_index, out in enumerate(self.outputs):
            for batch in batches:
                for channel_index, part in out.partitioner.route(batch):
                    routed.append((out_index, channel_index, part))
        return routed

    def _process_and_route(self, fn, *args):
        return self._route(fn(*args))

    async def _emit_routed(self, routed):
        for out_index, channel_index, part in routed:
            self.metrics["rows_out"] += part.num_rows
            self.metrics["bytes_out"] += part.nbytes
            await self.outputs[out_index].channels[channel_index].send(part)

    async def _broadcast(self, event):
        for out in self.outputs:
            for ch in out.channels:
                await ch.send(event)

    async def _run_source(self):
        params = self.ctx.parameters
        time_column = params.get("time_column")
        out_of_orderness = int(params.get("max_out_of_orderness") or 0)
        iterator = iter(self.operator.read())
        done = object()
        max_ts = None
        watermark = None
        while True:
            while self._triggers:
                await self._checkpoint(self._triggers.popleft(), alignment_ms=0.0)
            batch = await self._call(next, iterator, done)
            if batch is done:
                break
            self.metrics["rows_in"] += batch.num_rows
            self.metrics["bytes_in"] += batch.nbytes
            await self._emit_routed(await self._call(self._route, [batch]))
            if time_column and batch.num_rows:
                batch_max = pc.max(batch.column(time_column)).as_py()
                if batch_max is not None and (max_ts is None or batch_max > max_ts):
                    max_ts = batch_max
                    if watermark is None or max_ts - out_of_orderness > watermark:
                        watermark = max_ts - out_of_orderness
                        await self._broadcast(events.Watermark(watermark))
        self._source_done = True
        while self._triggers:  # no barrier can follow the end of the data
            self._report_checkpoint("declined", self._triggers.popleft().checkpoint_id,
                                    reason=f"source {self.task_id} reached the end of its input")
        await self._finish_operator()

    async def _run_inputs(self):
        if not self.inputs:
            await self._finish_operator()
            return
        gate = InputGate(self.inputs)
        watermarks = [None] * len(self.inputs)
        finished = [False] * len(self.inputs)
        current_watermark = None
        remaining = len(self.inputs)
        while remaining:
            waited = time.perf_counter()
            channel, item = await gate.next()
            self.metrics["idle_seconds"] += time.perf_counter() - waited
            if isinstance(item, pa.RecordBatch):
                self.metrics["rows_in"] += item.num_rows
                self.metrics["bytes_in"] += item.nbytes
                routed = await self._call(
                    self._process_and_route, self.operator.process, item, self.input_index[channel]
                )
                await self._emit_routed(routed)
                continue
            if isinstance(item, events.Watermark):
                watermarks[channel] = item.timestamp
            elif isinstance(item, events.EndOfStream):
                finished[channel] = True
                remaining -= 1
                await self._maybe_aligned(gate, finished)
            elif isinstance(item, events.CheckpointBarrier):
                await self._on_barrier(gate, channel, item, finished)
                continue
            else:
                log.debug("task %s ignores event %r", self.task_id, item)
                continue
            live = [w for w, f in zip(watermarks, finished) if not f]
            if live and None not in live:
                new_watermark = min(live)
                if current_watermark is None or new_watermark > current_watermark:
                    current_watermark = new_watermark
                    routed = await self._call(
                        self._process_and_route, self.operator.on_watermark, new_watermark
                    )
                    await self._emit_routed(routed)
                    await self._broadcast(events.Watermark(new_watermark))
        await self._finish_operator()

    async def _finish_operator(self):
        await self._emit_routed(await self._call(self._process_and_route, self.operator.finish))
        await self._broadcast(events.EndOfStream())

    # -- checkpoints -----------------------------------------------------------------

    def trigger_checkpoint(self, checkpoint_id, timestamp_ms):
        """Ask a source task to inject barrier ``checkpoint_id`` before its next batch."""
        if not self.operator.is_source:
            raise ValueError(f"task {self.task_id} is not a source; only sources take checkpoint triggers")
        if self.state in TERMINAL_STATES or self._source_done:
            self._report_checkpoint("declined", checkpoint_id, reason=f"task {self.task_id} has no more input")
            return
        self._triggers.append(events.CheckpointBarrier(checkpoint_id, timestamp_ms))

    async def _on_barrier(self, gate, channel, barrier, finished):
        if self._aligning is not None:
            current = self._aligning[0].checkpoint_id
            if barrier.checkpoint_id < current:
                return  # a barrier of a checkpoint already given up: drop it
            if barrier.checkpoint_id > current:
                # a newer checkpoint overtook one that never aligned: give the old one up
                self._report_checkpoint("declined", current, reason="overtaken by a newer checkpoint barrier")
                for i in self._aligning[1]:
                    gate.unblock(i)
                self._aligning = None
        if self._aligning is None:
            self._aligning = (barrier, set(), time.perf_counter())
        self._aligning[1].add(channel)
        gate.block(channel)
        await self._maybe_aligned(gate, finished)

    async def _maybe_aligned(self, gate, finished):
        """Once every live input delivered the barrier: snapshot, forward, unblock."""
        if self._aligning is None:
            return
        barrier, arrived, started = self._aligning
        if not all(i in arrived or finished[i] for i in range(len(self.inputs))):
            return
        self._aligning = None
        await self._checkpoint(barrier, alignment_ms=(time.perf_counter() - started) * 1e3)
        for i in arrived:
            gate.unblock(i)

    async def _checkpoint(self, barrier, alignment_ms):
        """Snapshot state in place, forward the barrier, write the snapshot in the background."""
        started = time.perf_counter()
        checkpoint_id = barrier.checkpoint_id
        try:
            snapshot = await self._call(self.operator.snapshot_state, checkpoint_id)
        except Exception as exc:
            log.exception("task %s could not snapshot checkpoint %s", self.task_id, checkpoint_id)
            self._report_checkpoint("declined", checkpoint_id, reason=f"snapshot failed: {exc}")
            await self._broadcast(barrier)
            return
        await self._broadcast(barrier)
        write = asyncio.ensure_future(self._write_and_ack(checkpoint_id, snapshot, alignment_ms, started))
        self._writes = [w for w in self._writes if not w.done()] + [write]

    async def _write_and_ack(self, checkpoint_id, snapshot, alignment_ms, started):
        try:
            handles = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._write_snapshot, checkpoint_id, snapshot
            )
        except Exception as exc:
            log.exception("task %s could not write checkpoint %s", self.task_id, checkpoint_id)
            self._report_checkpoint("declined", checkpoint_id, reason=f"writing state failed: {exc}")
            return
        self._report_checkpoint(
            "ack",
            checkpoint_id,
            stats={
                "handles": handles,
                "size_bytes": sum(h.get("size_bytes", 0) for h in handles),
                "alignment_ms": alignment_ms,
                "duration_ms": (time.perf_counter() - started) * 1e3,
            },
        )

    def _storage_for(self, spec):
        if self._storage is None or self._storage.uri != spec["storage"]:
            self._storage = CheckpointStorage(spec["storage"], retain=spec.get("retain", 3))
        return self._storage

    def _write_snapshot(self, checkpoint_id, snapshot):
        spec = self.tdd.get("checkpoint")
        if not snapshot:
            return []
        if not spec:
            raise RuntimeError(f"task {self.task_id} got a checkpoint barrier but its job has no checkpoint storage")
        storage = self._storage_for(spec)
        op_id = self.tdd["operator"]["operator_id"]
        handles = []
        keyed, state = snapshot.get("keyed"), snapshot.get("state")
        if keyed is not None and keyed.num_rows:
            handles += storage.write_keyed_state(
                self.job_id, checkpoint_id, op_id, self.ctx.subtask_index, keyed, self.ctx.max_parallelism
            )
        if state:
            handles.append(
                storage.write_operator_state(self.job_id, checkpoint_id, op_id, self.ctx.subtask_index, state)
            )
        return handles

    def _report_checkpoint(self, kind, checkpoint_id, stats=None, reason=None):
        if self.on_checkpoint is None:
            return
        self.on_checkpoint(
            {
                "type": f"checkpoint_{kind}",
                "job_id": self.job_id,
                "task_id": self.task_id,
                "attempt": self.attempt,
                "checkpoint_id": checkpoint_id,
                "stats": stats or {},
                "reason": reason,
            }
        )

    def notify_checkpoint_complete(self, checkpoint_id):
        return self.operator.notify_checkpoint_complete(checkpoint_id)

    def _restore(self):
        """Hand the operator its state from the checkpoint named in the TDD."""
        spec = self.tdd["restore"]
        checkpoint = CompletedCheckpoint(**spec["checkpoint"])
        storage = self._storage_for({"storage": spec["storage"]})
        op_id = self.tdd["operator"]["operator_id"]
        keyed = None
        if checkpoint.keyed_handles(op_id):
            assignment = spec.get("assignment")
            if assignment is not None:
                import numpy as np

                mine = np.asarray(assignment, dtype=np.int32) == self.ctx.subtask_index
            else:
                mine = partition.key_group_range(
                    self.ctx.subtask_index, self.ctx.max_parallelism, self.ctx.parallelism
                )
            keyed = storage.read_keyed_state(checkpoint, op_id, mine)
        states = storage.read_operator_state(checkpoint, op_id) if checkpoint.operator_handles(op_id) else {}
        self.operator.restore_state(keyed, states.get(self.ctx.subtask_index), checkpoint.checkpoint_id)

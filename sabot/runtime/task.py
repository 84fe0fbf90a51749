"""A Task runs one attempt of one subtask of one operator: inputs -> operator -> outputs.

The task is a coroutine on the process's event loop (Flink's StreamTask). Operator
work (and the partitioning of its output) runs on a small thread pool so that
compiled kernels and pyarrow, which release the GIL, use more than one core; the
coroutine keeps the order of everything it reads and sends. Control events travel
in order with the data: watermarks advance the event-time clock (the minimum over
the live inputs that are not idle, see :class:`~sabot.runtime.events.WatermarkStatus`),
end of stream on every input finishes the operator.

The task's parts each live in their own module: :mod:`~sabot.runtime.output` (routing
and sending), :mod:`~sabot.runtime.inputs` (per-channel watermarks and ends),
:mod:`~sabot.runtime.alignment` (checkpoint barrier alignment),
:mod:`~sabot.runtime.snapshots` (snapshot, write, acknowledge, restore) and
:mod:`~sabot.runtime.rescale` (live rescaling). This module holds the lifecycle and
the two loops: the source loop and the input loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import traceback

import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import OperatorError
from sabot.execution.execution_graph import TaskState
from sabot.execution.messages import TaskUpdate
from sabot.runtime import events, timers
from sabot.runtime.alignment import BarrierAligner
from sabot.runtime.channels import InputGate
from sabot.runtime.inputs import InputState
from sabot.runtime.operators import create_operator
from sabot.runtime.operators.base import TaskContext
from sabot.runtime.output import Outputs
from sabot.runtime.rescale import RescaleParticipant
from sabot.runtime.snapshots import SubtaskCheckpointer

log = logging.getLogger(__name__)

__all__ = ["Task"]


class _Retired:
    """What status reports need of an ended operator, without its state."""

    def __init__(self, operator):
        self.is_source = operator.is_source
        self.total_rows = operator.total_rows if operator.is_source else None
        self._summary = operator.summary()

    def summary(self):
        return self._summary

    def result(self):
        return None

    def notify_checkpoint_complete(self, checkpoint_id):
        pass

    def notify_job_finished(self):
        pass


class Task:
    """One deployed task attempt, built from a
    :class:`~sabot.execution.deployment.TaskDeploymentDescriptor`.

    Args:
        tdd: the deployment descriptor.
        data_server: the process's DataServer (channels).
        executor: the thread pool operator code runs on.
        on_update: called with a :class:`~sabot.execution.messages.TaskUpdate` on every
            state change (and by the TaskManager periodically).
        on_checkpoint: called with a checkpoint acknowledgement or decline.
    """

    def __init__(self, tdd, data_server, executor, on_update=None, on_checkpoint=None, tables=None):
        self.tdd = tdd
        self.attempt_id = tdd.attempt_id
        self.task_id = tdd.task_id
        self.job_id = tdd.job_id
        self.attempt = tdd.attempt
        self.data_server = data_server
        self.executor = executor
        self.on_update = on_update
        self.state = TaskState.CREATED
        self.error = None
        self.error_type = None
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
            operator=tdd.operator,
            subtask_index=tdd.subtask_index,
            parallelism=tdd.parallelism,
            max_parallelism=tdd.max_parallelism,
            metrics=self.metrics,
            checkpointing=tdd.checkpoint is not None,
            input_operator_ids=[gate.upstream_operator_id for gate in tdd.inputs],
            clock=timers.clock_for(tdd.operator),
            tables=tables,
        )
        # Creating the operator imports user code: a bad reference fails the deploy.
        self._operator_name = self.ctx.operator_name
        self.operator = create_operator(self.ctx)
        # Register the receiving ends now, so upstream tasks can connect at once.
        self.inputs = []
        self.channel_ids = []  # every channel registered here (released when the attempt ends)
        edges = []
        for i, gate in enumerate(tdd.inputs):
            for cid in gate.channel_ids:
                self.inputs.append(data_server.input_channel(cid))
                self.channel_ids.append(cid)
                edges.append(i)
        self.input_state = InputState(edges)
        # a source's batches are the size its user asked for; other tasks coalesce small parts
        self.outputs = Outputs(data_server, self.metrics,
                               coalesce_rows=0 if self.operator.is_source else tdd.coalesce_rows, offload=self.call)
        self.gate = None
        self.aligner = BarrierAligner(tdd.min_checkpoint_id)
        self.checkpointer = SubtaskCheckpointer(tdd, executor, on_checkpoint)
        self.rescale = RescaleParticipant(self)
        self.source_done = False
        self._triggers = collections.deque()  # checkpoint barriers a source still has to inject
        self._future = None
        self._metrics_final = False  # the task ended: its channel figures are final
        self.ended_at = None  # time.monotonic() when the attempt reached a terminal state
        self._idle_since = None  # perf_counter() when the current wait for input began

    @property
    def operator_name(self):
        return self._operator_name

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
        if not self.state.is_terminal:
            self._set_state(TaskState.CANCELED)

    async def wait(self):
        if self._future is not None:
            await asyncio.shield(self._future)

    def _set_state(self, state):
        self.state = state
        if state.is_terminal:
            for channel_id in self.channel_ids:
                self.data_server.release(channel_id)
        if self.on_update is not None:
            try:
                self.on_update(self.status())
            except Exception:  # a reporting failure must not kill the task
                log.exception("task update callback failed for %s", self.task_id)
        if state.is_terminal:
            self._retire()

    def _retire(self):
        """Let go of what an ended task no longer needs (a worker keeps its status).

        Sinks stay whole: a collect sink's table is fetched later and a file sink
        still publishes when its checkpoint or the job completes.
        """
        self._collect_channel_metrics()
        self._metrics_final = True
        self.inputs, self.gate = [], None
        self.outputs.clear()
        self.rescale.state_inputs = []
        if not self.tdd.is_sink and not isinstance(self.operator, _Retired):
            self.operator = _Retired(self.operator)
            # the operator's parameters can be big (a source's in-memory table travels in them)
            self.ctx = None
            self.tdd = self.checkpointer.tdd = dataclasses.replace(
                self.tdd, operator={k: v for k, v in self.tdd.operator.items() if k != "parameters"})
        self.ended_at = time.monotonic()

    def status(self) -> TaskUpdate:
        """This attempt's report."""
        return TaskUpdate(
            job_id=self.job_id,
            attempt_id=self.attempt_id,
            operator_id=self.tdd.operator_id,
            operator_name=self.operator_name,
            subtask_index=self.tdd.subtask_index,
            state=self.state,
            error=self.error,
            error_type=self.error_type,
            traceback=self.traceback,
            metrics=self._metrics_snapshot(),
            summary=self.operator.summary() if self.state == TaskState.FINISHED else None,
            total_rows=self.operator.total_rows if self.operator.is_source else None,
            handed_off=self.rescale.handed_off and self.state == TaskState.FINISHED,
        )

    def _metrics_snapshot(self):
        if not self._metrics_final:
            self._collect_channel_metrics()
        metrics = dict(self.metrics)
        if self._idle_since is not None:  # a long wait counts as idle while it lasts, not only once it ends
            metrics["idle_seconds"] += time.perf_counter() - self._idle_since
        counts = self.outputs.key_group_counts()
        if counts:
            metrics["key_group_counts"] = counts
        metrics["sampled_at"] = time.time()  # turns cumulative counts into rates
        return metrics

    def _collect_channel_metrics(self):
        self.metrics["backpressured_seconds"] = self.outputs.backpressured_seconds
        self.metrics["peak_buffered_bytes"] = max(
            (ch.metrics.get("peak_buffered_bytes", 0) for ch in self.inputs), default=0)
        # bytes that crossed a network connection (0 for in-process channels)
        self.metrics["wire_bytes_received"] = sum(ch.metrics.get("wire_bytes_received", 0) for ch in self.inputs)
        self.metrics["wire_bytes_sent"] = self.outputs.wire_bytes_sent
        # batches (and their IPC bytes) that crossed to or from another process of this host through
        # a shared-memory ring instead of the connection
        for name in ("shm_batches_received", "shm_bytes_received"):
            self.metrics[name] = sum(ch.metrics.get(name, 0) for ch in self.inputs)
        for name in ("shm_batches_sent", "shm_bytes_sent"):
            self.metrics[name] = self.outputs.channel_total(name)

    async def _run(self):
        try:
            await self.outputs.open(self.tdd.outputs)
            self._set_state(TaskState.RUNNING)
            await self.call(self.operator.open)
            if self.tdd.restore is not None:
                await self.call(self.checkpointer.restore, self.operator)
            if self.rescale.state_inputs:
                await self.rescale.receive_state()
            if self.rescale.source_hold:
                await self.rescale.wait_source_start()
            if self.operator.is_source:
                await self._run_source()
            else:
                await self._run_inputs()
            await self.call(self.operator.close)
            await self.checkpointer.wait_writes()
            await self.outputs.close()
            self._collect_channel_metrics()
            self._set_state(TaskState.FINISHED)
        except asyncio.CancelledError:
            self._collect_channel_metrics()
            self.checkpointer.abandon()
            self._set_state(TaskState.CANCELED)
            raise
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, OperatorError) else (
                f"operator {self.operator_name!r} failed: {type(exc).__name__}: {exc}")
            cause = exc.__cause__ if isinstance(exc, OperatorError) and exc.__cause__ is not None else exc
            self.error_type = type(cause).__name__
            self.traceback = traceback.format_exc()
            log.error("task %s failed: %s", self.task_id, self.error)
            await self._clean_up_after_failure()
            self._set_state(TaskState.FAILED)

    async def _clean_up_after_failure(self):
        """Close the operator and end every output, so receivers fail fast instead of waiting."""
        self.checkpointer.abandon()
        try:
            await self.call(self.operator.close)
        except Exception:
            log.exception("task %s: closing operator %r after its failure failed", self.task_id, self.operator_name)
        await self.outputs.close(timeout=1.0)
        self._collect_channel_metrics()

    # -- the work ------------------------------------------------------------------

    async def call(self, fn, *args):
        """Run operator code on the thread pool, accounting busy time."""
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.metrics["busy_seconds"] += time.perf_counter() - start

    def _process_and_route(self, fn, *args):
        return self.outputs.route(fn(*args))

    async def _process(self, fn, *args):
        """Run ``fn`` on the pool, route its output batches there too, and send them."""
        await self.outputs.emit(await self.call(self._process_and_route, fn, *args))

    def _note_record(self):
        now = time.time()
        if "first_record_at" not in self.metrics:
            self.metrics["first_record_at"] = now
        self.metrics["last_record_at"] = now

    def _read_and_route(self, iterator, done, time_column=None):
        """A source's next batch (``done`` at the end, None when it has nothing now), its
        ``nbytes``, its routing and the largest value of its ``time_column`` (None without
        one): one trip to the operator thread per batch, and nothing left for the event loop
        that releases the GIL (see :mod:`sabot.runtime.output`)."""
        batch = next(iterator, done)
        if batch is done or batch is None:
            return batch, 0, None, None
        batch_max = None
        if time_column and batch.num_rows:
            column = batch.column(time_column)
            if not pa.types.is_integer(column.type):
                column = column.cast(pa.int64())  # timestamps, dates, durations: their stored integer
            batch_max = pc.max(column).as_py()
        return batch, batch.nbytes, self.outputs.route([batch]), batch_max

    async def _run_source(self):
        params = self.ctx.parameters
        time_column = params.get("time_column")
        out_of_orderness = int(params.get("max_out_of_orderness") or 0)
        iterator = iter(self.operator.read())
        max_of = None if self.operator.tracks_watermarks else time_column  # (a split source keeps its own)
        done = object()
        max_ts = None
        watermark = None
        while True:
            # a source whose splits are all idle says so downstream (WatermarkStatus), so the
            # operators after it leave it out of their event time
            if self.operator.idle != self.outputs.idle:
                await self.outputs.set_idle(self.operator.idle)
            # checkpoints and a rescale pause happen between two units, never inside one
            while self._triggers and self.operator.at_unit_boundary:
                await self.checkpointer.checkpoint(self.call, self.operator, self._triggers.popleft(), 0.0,
                                                   self.outputs.broadcast)
            if self.rescale.pending:
                await self.rescale.apply()
            batch, nbytes, routed, batch_max = await self.call(self._read_and_route, iterator, done, max_of)
            if batch is done:
                break
            if batch is not None:  # None: an unbounded source has nothing right now (e.g. Kafka)
                self._note_record()
                self.metrics["rows_in"] += batch.num_rows
                self.metrics["bytes_in"] += nbytes
                await self.outputs.emit(routed)
            if self.operator.tracks_watermarks:
                # per split (Kafka partition) with idleness: the source says, also between batches
                split_watermark = self.operator.current_watermark()
                if split_watermark is not None and (watermark is None or split_watermark > watermark):
                    watermark = split_watermark
                    self.metrics["watermark"] = watermark
                    await self.outputs.broadcast(events.Watermark(watermark))
                continue
            if batch is None:
                continue
            if batch_max is not None:
                if max_ts is None or batch_max > max_ts:
                    max_ts = batch_max
                    if watermark is None or max_ts - out_of_orderness > watermark:
                        watermark = max_ts - out_of_orderness
                        self.metrics["watermark"] = watermark
                        await self.outputs.broadcast(events.Watermark(watermark))
        self.source_done = True
        self.rescale.source_ended()
        while self._triggers:  # no barrier can follow the end of the data
            self.checkpointer.decline(self._triggers.popleft().checkpoint_id,
                                      f"source {self.task_id} reached the end of its input")
        await self._finish_operator()

    async def _run_inputs(self):
        if not self.inputs:
            await self._finish_operator()
            return
        gate = self.gate = InputGate(self.inputs)
        state = self.input_state
        proc_timers = timers.ProcessingTimers(self.operator, self.ctx.clock, gate.signal)
        if self.rescale.pending:
            gate.signal()
        try:
            await self._input_loop(gate, state, proc_timers)
        finally:
            proc_timers.close()

    async def _input_loop(self, gate, state, proc_timers):
        while state.remaining:
            if state.all_idle != self.outputs.idle:  # every live input idle: this task is idle downstream
                await self.outputs.set_idle(state.all_idle)
            now = proc_timers.due()
            if now is not None:
                await self._process(self.operator.on_processing_time, now)
                continue
            proc_timers.arm()
            if self.outputs.buffered and not gate.has_ready():
                await self.outputs.flush()  # the input ran dry: what waits for more rows goes now
                continue  # sending may have taken a while: look at the timers and the gate again
            waited = self._idle_since = time.perf_counter()
            try:
                channel, item = await gate.next()
            finally:
                self._idle_since = None
            self.metrics["idle_seconds"] += time.perf_counter() - waited
            if self.rescale.pending:
                await self.rescale.apply()
            if channel is None:  # a control message arrived, or a processing-time timer is due
                continue
            if isinstance(item, pa.RecordBatch):
                state.record(channel)
                self._note_record()
                self.metrics["rows_in"] += item.num_rows
                self.metrics["bytes_in"] += gate.taken_nbytes(channel)
                await self._process(self.operator.process, item, state.edges[channel])
                await self.outputs.flush_due()
                continue
            if isinstance(item, events.Watermark):
                await self._advance_event_time(state.watermark(channel, item.timestamp))
            elif isinstance(item, events.WatermarkStatus):
                await self._advance_event_time(state.set_idle(channel, item.idle))
            elif isinstance(item, events.EndOfStream):
                state.finish(channel)
                # align first: channels released now carry no barrier of a checkpoint
                # that began before they were added
                await self._maybe_aligned()
                for i in state.releasable():
                    gate.unblock(i)
                if await self.rescale.maybe_hand_off():
                    return
                await self._advance_event_time(state.advance())
            elif isinstance(item, events.CheckpointBarrier):
                received = self.aligner.receive(channel, item)
                if received.declined is not None:
                    self.checkpointer.decline(received.declined, "overtaken by a newer checkpoint barrier")
                    for i in received.unblock:
                        gate.unblock(i)
                if received.block:
                    gate.block(channel)
                    await self._maybe_aligned()
            elif isinstance(item, events.RescaleBarrier):
                self.rescale.on_barrier(channel, item)
                gate.block(channel)
                await self._maybe_aligned()  # a checkpoint in flight may now align
                if await self.rescale.maybe_hand_off():
                    return
            else:
                log.debug("task %s ignores event %r", self.task_id, item)
        await self._finish_operator()

    async def _advance_event_time(self, watermark):
        if watermark is None:
            return
        self.metrics["watermark"] = watermark  # reported, so the dashboard shows event time
        await self._process(self.operator.on_watermark, watermark)
        await self.outputs.broadcast(events.Watermark(watermark))

    async def start_event_time_at(self, watermark):
        """Event time goes on from ``watermark`` (a new task of a live rescale)."""
        self.input_state.start_at(watermark)
        await self._process(self.operator.on_watermark, watermark)

    async def _maybe_aligned(self):
        """Once every live input delivered the checkpoint barrier: snapshot, forward, unblock."""
        rescaled = self.rescale.rescaled_channels
        state = self.input_state
        # a channel that delivered a rescale barrier carries nothing more before its end:
        # it cannot deliver this checkpoint's barrier, so it does not hold the alignment up
        aligned = self.aligner.complete(len(state), lambda i: state.settled(i) or i in rescaled)
        if aligned is None:
            return
        await self.checkpointer.checkpoint(self.call, self.operator, aligned.barrier, aligned.alignment_ms,
                                           self.outputs.broadcast)
        for i in aligned.unblock:
            self.gate.unblock(i)

    async def _finish_operator(self):
        self.rescale.stop_taking_controls()
        await self._process(self.operator.finish)
        await self.outputs.broadcast(events.EndOfStream())

    # -- called by the rescale participant -----------------------------------------------------

    def signal_gate(self):
        if self.gate is not None:
            self.gate.signal()

    def add_input_channels(self, upstream_operator_id, channels):
        """Channels from the new tasks of a rescaled upstream operator, read after the old ones."""
        edge = next((i for i, g in enumerate(self.tdd.inputs) if g.upstream_operator_id == upstream_operator_id),
                    None)
        if edge is None:
            raise ValueError(f"task {self.task_id} has no input from operator {upstream_operator_id!r}")
        indices = self.gate.add_channels(channels, blocked=True)
        self.inputs += channels
        added = self.input_state.add(edge, len(channels))
        assert added == indices, (added, indices)
        for i in self.input_state.releasable():
            self.gate.unblock(i)

    # -- checkpoints and control, from the TaskManager ----------------------------------------

    def trigger_checkpoint(self, checkpoint_id, timestamp_ms):
        """Ask a source task to inject barrier ``checkpoint_id`` before its next batch."""
        if not self.operator.is_source:
            raise ValueError(f"task {self.task_id} is not a source; only sources take checkpoint triggers")
        if self.state.is_terminal or self.source_done:
            self.checkpointer.decline(checkpoint_id, f"task {self.task_id} has no more input")
            return
        self._triggers.append(events.CheckpointBarrier(checkpoint_id, timestamp_ms))

    def control(self, message):
        """Queue a live-rescale control message (see :class:`~sabot.runtime.rescale.RescaleParticipant`)."""
        return self.rescale.control(message)

    def notify_checkpoint_complete(self, checkpoint_id):
        """Publish what ``checkpoint_id`` covers; the sink's I/O runs on the thread pool."""
        return asyncio.ensure_future(self.call(self.operator.notify_checkpoint_complete, checkpoint_id))

    async def notify_job_finished(self):
        await self.call(self.operator.notify_job_finished)

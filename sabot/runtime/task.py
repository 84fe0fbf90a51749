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

import numpy as np
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
SOURCE_CONTROLS = ("source_pause", "source_finish", "source_start")


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
        if spec.get("assignment") is not None:
            self.partitioner.set_assignment(np.asarray(spec["assignment"], dtype=np.int32))
        # Unkeyed REBALANCE edges route each batch to the channel with the most credit:
        # a slow receiver grants less, so it simply gets less (Flink's round robin
        # would keep feeding it and stall everyone behind it).
        self.by_credit = spec["partitioning"] == "rebalance" and len(channels) > 1
        self._next = 0

    def pick_channel(self):
        """The channel with the most credit; round robin among equals."""
        n = len(self.channels)
        start = self._next
        best = max(range(n), key=lambda k: (self.channels[(start + k) % n].credit, -k))
        index = (start + best) % n
        self._next = (index + 1) % n
        return index


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
            checkpointing=bool(tdd.get("checkpoint")),
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
        self._retired_backpressure = 0.0  # of output channels a rescale replaced
        self._metrics_final = False  # the task ended: its channel figures are final
        self._current_watermark = None  # event time: the minimum over the live inputs
        self._handed_off = False  # this (old) task sent its state to the new owners
        self._takes_controls = True  # until its input loop ended
        # live rescaling (ARCHITECTURE.md section 8)
        self._controls = collections.deque()  # control messages applied between batches
        self._gate = None
        self._handoff = None  # where this (old) task sends its keyed state
        self._handoff_ready = asyncio.Event()
        self._rescaling = None  # (barrier, channels that delivered it)
        self._waiting_channels = []  # (upstream operator id, new channel indices) kept blocked
        rescale = tdd.get("rescale") or {}
        # a source rescale: new source tasks wait for their epoch, old ones pause and finish
        self._source_hold = bool(rescale.get("source_hold"))
        self._source_start = asyncio.Event()
        self._pause_reply = None  # future answering a source_pause (the next unit)
        self._source_frontier = None
        self._source_finish = asyncio.Event()
        self._source_handed_off = False
        self.state_inputs = [data_server.input_channel(cid) for cid in rescale.get("state_channel_ids", [])]
        self.input_ids += [cid for cid in rescale.get("state_channel_ids", [])]

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
        if state in TERMINAL_STATES:
            self._retire()

    def _retire(self):
        """Let go of what an ended task no longer needs (a worker keeps its status).

        Sinks stay whole: a collect sink's table is fetched later and a file sink
        still publishes when its checkpoint or the job completes.
        """
        self._collect_channel_metrics()
        self._metrics_final = True
        self.inputs, self.outputs, self.state_inputs, self._gate = [], [], [], None
        if self.tdd["operator"]["operator_type"] != "sink" and not isinstance(self.operator, _Retired):
            self.operator = _Retired(self.operator)

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
            "handed_off": (self._handed_off or self._source_handed_off) and self.state == "FINISHED",
        }

    def _metrics_snapshot(self):
        if not self._metrics_final:
            self._collect_channel_metrics()
        metrics = dict(self.metrics)
        # rows routed per key group on each keyed output: auto-rebalance's load statistics
        counts = {
            out.spec["downstream_operator_id"]: out.partitioner.key_group_counts.tolist()
            for out in self.outputs
            if out.spec["partitioning"] == "hash"
        }
        if counts:
            metrics["key_group_counts"] = counts
        metrics["sampled_at"] = time.time()  # turns cumulative counts into rates
        return metrics

    async def _run(self):
        try:
            await self._open_outputs()
            self._set_state("RUNNING")
            await self._call(self.operator.open)
            if self.tdd.get("restore"):
                await self._call(self._restore)
            if self.state_inputs:
                await self._receive_handoff()
            if self._source_hold:
                await self._wait_source_start()
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
            self._abandon_writes()
            self._set_state("CANCELED")
            raise
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, OperatorError) else (
                f"operator {self.operator_name!r} failed: {type(exc).__name__}: {exc}"
            )
            self.traceback = traceback.format_exc()
            log.error("task %s failed: %s", self.task_id, self.error)
            await self._clean_up_after_failure()
            self._set_state("FAILED")

    def _abandon_writes(self):
        # a dead attempt must not acknowledge a checkpoint
        for write in self._writes:
            write.cancel()
        self._writes = []

    async def _clean_up_after_failure(self):
        """Close the operator and end every output, so receivers fail fast instead of waiting."""
        self._abandon_writes()
        try:
            await self._call(self.operator.close)
        except Exception:
            log.exception("task %s: closing operator %r after its failure failed", self.task_id, self.operator_name)
        for out in self.outputs:
            for ch in out.channels:
                try:
                    await asyncio.wait_for(ch.close(), 1.0)
                except Exception:  # the peer may be gone already
                    log.debug("task %s: closing %s after failure", self.task_id, ch, exc_info=True)
        self._collect_channel_metrics()

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
        self.metrics["backpressured_seconds"] = self._retired_backpressure + sum(
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
        """Partition output batches for every output edge (runs on the thread pool).

        Credit-routed edges get channel None here; the channel is picked at send time.
        """
        routed = []
        for out_index, out in enumerate(self.outputs):
            for batch in batches:
                if out.by_credit:
                    if batch.num_rows:
                        routed.append((out_index, None, batch))
                    continue
                for channel_index, part in out.partitioner.route(batch):
                    routed.append((out_index, channel_index, part))
        return routed

    def _process_and_route(self, fn, *args):
        return self._route(fn(*args))

    async def _emit_routed(self, routed):
        for out_index, channel_index, part in routed:
            self.metrics["rows_out"] += part.num_rows
            self.metrics["bytes_out"] += part.nbytes
            out = self.outputs[out_index]
            if channel_index is None:
                channel_index = out.pick_channel()
            await out.channels[channel_index].send(part)

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
            # checkpoints and a rescale pause happen between two units, never inside one
            while self._triggers and self.operator.at_unit_boundary:
                await self._checkpoint(self._triggers.popleft(), alignment_ms=0.0)
            if self._controls:
                await self._apply_controls()
            batch = await self._call(next, iterator, done)
            if batch is done:
                break
            self._note_record()
            self.metrics["rows_in"] += batch.num_rows
            self.metrics["bytes_in"] += batch.nbytes
            await self._emit_routed(await self._call(self._route, [batch]))
            if time_column and batch.num_rows:
                column = batch.column(time_column)
                if not pa.types.is_integer(column.type):
                    column = column.cast(pa.int64())  # timestamps, dates, durations: their stored integer
                batch_max = pc.max(column).as_py()
                if batch_max is not None and (max_ts is None or batch_max > max_ts):
                    max_ts = batch_max
                    if watermark is None or max_ts - out_of_orderness > watermark:
                        watermark = max_ts - out_of_orderness
                        await self._broadcast(events.Watermark(watermark))
        self._source_done = True
        for message in self._controls:  # a pause that came too late: the input has ended
            if message["type"] == "source_pause" and not message["reply"].done():
                message["reply"].set_exception(ValueError(
                    f"source task {self.task_id} reached the end of its input; it cannot be paused"))
        while self._triggers:  # no barrier can follow the end of the data
            self._report_checkpoint("declined", self._triggers.popleft().checkpoint_id,
                                    reason=f"source {self.task_id} reached the end of its input")
        await self._finish_operator()

    async def _run_inputs(self):
        if not self.inputs:
            await self._finish_operator()
            return
        gate = self._gate = InputGate(self.inputs)
        self._watermarks = [None] * len(self.inputs)
        self._finished = [False] * len(self.inputs)
        self._remaining = len(self.inputs)
        if self._controls:
            gate.signal()
        while self._remaining:
            waited = time.perf_counter()
            channel, item = await gate.next()
            self.metrics["idle_seconds"] += time.perf_counter() - waited
            if channel is None:  # a control message arrived
                await self._apply_controls()
                continue
            if self._controls:
                await self._apply_controls()
            if isinstance(item, pa.RecordBatch):
                self._note_record()
                self.metrics["rows_in"] += item.num_rows
                self.metrics["bytes_in"] += item.nbytes
                routed = await self._call(
                    self._process_and_route, self.operator.process, item, self.input_index[channel]
                )
                await self._emit_routed(routed)
                continue
            finished = self._finished
            if isinstance(item, events.Watermark):
                self._watermarks[channel] = item.timestamp
            elif isinstance(item, events.EndOfStream):
                finished[channel] = True
                self._remaining -= 1
                # align first: channels released now carry no barrier of a checkpoint
                # that began before they were added
                await self._maybe_aligned(gate, finished)
                self._release_waiting_channels()
                if await self._maybe_handoff(gate, finished):
                    return
            elif isinstance(item, events.CheckpointBarrier):
                await self._on_barrier(gate, channel, item, finished)
                continue
            elif isinstance(item, events.RescaleBarrier):
                if await self._on_rescale_barrier(gate, channel, item, finished):
                    return
                continue
            else:
                log.debug("task %s ignores event %r", self.task_id, item)
                continue
            live = [w for w, f in zip(self._watermarks, finished) if not f]
            if live and None not in live:
                new_watermark = min(live)
                if self._current_watermark is None or new_watermark > self._current_watermark:
                    self._current_watermark = new_watermark
                    routed = await self._call(
                        self._process_and_route, self.operator.on_watermark, new_watermark
                    )
                    await self._emit_routed(routed)
                    await self._broadcast(events.Watermark(new_watermark))
        await self._finish_operator()

    def _stop_taking_controls(self):
        """The input loop ended: a control queued now would never be applied, so refuse it."""
        self._takes_controls = False
        while self._controls:
            message = self._controls.popleft()
            reply = message.get("reply")
            if reply is not None and not reply.done():
                reply.set_exception(ValueError(f"task {self.task_id} reached the end of its input"))
            log.warning("task %s ended before applying control %s", self.task_id, message.get("type"))

    async def _finish_operator(self):
        self._stop_taking_controls()
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
        if barrier.checkpoint_id < self.tdd.get("min_checkpoint_id", 0):
            # a checkpoint that began before this task existed (it joined in a live
            # rescale): that checkpoint cannot include it, so its barrier is not awaited
            return
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
        waiting = {i for _, indices in self._waiting_channels for i in indices}
        # a channel that delivered a rescale barrier carries nothing more before its end:
        # it cannot deliver this checkpoint's barrier, so it does not hold the alignment up
        rescaled = self._rescaling[1] if self._rescaling is not None else ()
        if not all(i in arrived or finished[i] or i in waiting or i in rescaled for i in range(len(self.inputs))):
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
        """Publish what ``checkpoint_id`` covers; the sink's I/O runs on the thread pool."""
        return asyncio.ensure_future(self._call(self.operator.notify_checkpoint_complete, checkpoint_id))

    async def notify_job_finished(self):
        await self._call(self.operator.notify_job_finished)

    def _restore(self):
        """Hand the operator its state from the checkpoint named in the TDD."""
        spec = self.tdd["restore"]
        checkpoint = CompletedCheckpoint(**spec["checkpoint"])
        storage = self._storage_for({"storage": spec["storage"]})
        op_id = self.tdd["operator"]["operator_id"]
        keyed = None
        if checkpoint.keyed_handles(op_id):
            assignment = self.tdd.get("assignment") or spec.get("assignment")
            if assignment is not None:
                mine = np.asarray(assignment, dtype=np.int32) == self.ctx.subtask_index
            else:
                mine = partition.key_group_range(
                    self.ctx.subtask_index, self.ctx.max_parallelism, self.ctx.parallelism
                )
            keyed = storage.read_keyed_state(checkpoint, op_id, mine)
        states = storage.read_operator_state(checkpoint, op_id) if checkpoint.operator_handles(op_id) else {}
        if self.operator.is_source:
            # a source may come back at another parallelism (e.g. a failure during its rescale)
            self.operator.restore_subtask_states(states, checkpoint.checkpoint_id)
        else:
            self.operator.restore_state(keyed, states.get(self.ctx.subtask_index), checkpoint.checkpoint_id)

    # -- live rescaling ----------------------------------------------------------------
    #
    # 1. New tasks of the rescaled operator X are deployed first; they register a
    #    state channel per old task and read those to the end before any record.
    # 2. Each old X task is told where its key groups go (``handoff``).
    # 3. Each downstream task gets the new X tasks' channels, kept blocked until
    #    every old X channel has ended, so per-key order holds.
    # 4. Each upstream task, between two batches, sends a RescaleBarrier and
    #    end-of-stream on its old X channels and routes to the new tasks from then on.
    # 5. An old X task that has the barrier on every input cuts its keyed state by
    #    the new assignment, sends each slice to its new owner, ends its outputs and
    #    finishes without emitting final results. Nothing else stops.

    def control(self, message):
        """Queue a control message; it is applied between two batches.

        Returns None, except for ``source_pause``: a future that resolves to
        ``{"task_id", "next_unit", "position"}`` once the source stopped between two units.
        """
        kind = message.get("type")
        if not self._takes_controls:
            raise ValueError(f"task {self.task_id} reached the end of its input; it takes no {kind} any more")
        if kind == "handoff":
            self._handoff = message
            self._handoff_ready.set()
            return None
        if kind in SOURCE_CONTROLS:
            return self._source_control(message)
        if kind == "add_inputs":
            # register at once so the new upstream tasks can connect right away
            message = dict(message)
            message["channels"] = [self.data_server.input_channel(cid) for cid in message["channel_ids"]]
            self.input_ids += list(message["channel_ids"])
        elif kind != "switch_output":
            raise ValueError(
                f"unknown control message type {kind!r}; expected handoff, add_inputs, switch_output, "
                f"{', '.join(SOURCE_CONTROLS)}"
            )
        self._controls.append(message)
        if self._gate is not None:
            self._gate.signal()
        return None

    async def _apply_controls(self):
        while self._controls:
            message = self._controls.popleft()
            if message["type"] == "switch_output":
                await self._switch_output(message)
            elif message["type"] == "source_pause":
                if not self.operator.at_unit_boundary:
                    self._controls.appendleft(message)  # pause after the unit being emitted
                    return
                await self._pause_source(message)
            else:
                self._add_inputs(message)

    # A source rescale (see sabot.cluster.rescaling): the new source tasks are deployed
    # held (``rescale.source_hold``): outputs open, nothing emitted. Each old source task
    # gets ``source_pause``, stops between two units and answers its next unit; the
    # coordinator takes the highest as the frontier F and sends ``source_finish {frontier:
    # F}``: the old task emits its units below F, ends its outputs and finishes as handed
    # off. ``source_start {epoch}`` lets each new task emit the units from F on.

    def _source_control(self, message):
        kind = message["type"]
        if not self.operator.is_source:
            raise ValueError(f"task {self.task_id} is not a source; {kind} is for source tasks")
        if not self.operator.rescalable:
            raise ValueError(f"task {self.task_id}: {self.operator._not_rescalable()}")
        if kind == "source_start":
            if not self._source_hold:
                raise ValueError(f"task {self.task_id} was not deployed held; source_start is for the new "
                                 "tasks of a source rescale")
            if self._source_start.is_set():
                raise ValueError(f"task {self.task_id} was already started")
            try:
                self.operator.set_epoch(message.get("epoch"))  # the task waits; nothing reads yet
            except OperatorError as exc:
                raise ValueError(str(exc)) from None
            self._source_start.set()
            return None
        if kind == "source_pause":
            if self._source_hold and not self._source_start.is_set():
                raise ValueError(f"task {self.task_id} is held (never started); it cannot be paused")
            if self._source_done:
                raise ValueError(f"source task {self.task_id} reached the end of its input; it cannot be paused")
            if self._pause_reply is not None:
                raise ValueError(f"source task {self.task_id} is already paused for a rescale")
            message = dict(message, reply=asyncio.get_running_loop().create_future())
            self._pause_reply = message["reply"]
            self._controls.append(message)
            return message["reply"]
        # source_finish
        frontier = message.get("frontier")
        if self._pause_reply is None:
            raise ValueError(f"source task {self.task_id} got source_finish without a source_pause before it")
        if self._source_finish.is_set():
            raise ValueError(f"source task {self.task_id} already got source_finish")
        if isinstance(frontier, bool) or not isinstance(frontier, int) or frontier < 0:
            raise ValueError(f"source_finish needs 'frontier', an integer >= 0; got {frontier!r}")
        self._source_frontier = frontier
        self._source_finish.set()
        return None

    async def _await_control(self, event, what):
        """Wait for the control message that sets ``event``; a clear error if it never comes."""
        timeout = float(self.tdd.get("handoff_timeout_s", 30.0))
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            raise OperatorError(f"task {self.task_id}: {what} arrived within {timeout:g} s") from None

    async def _wait_source_start(self):
        await self._await_control(
            self._source_start,
            f"was deployed held for rescale {(self.tdd.get('rescale') or {}).get('rescale_id')} but no "
            "source_start (its epoch)",
        )
        self.metrics["source_epoch"] = self.operator.epoch

    async def _pause_source(self, message):
        """Stop between two units, answer the next unit, wait for the frontier, go on below it."""
        started = time.perf_counter()
        reply = message["reply"]
        if not reply.done():
            reply.set_result({"task_id": self.task_id, "next_unit": self.operator.next_unit,
                              "position": self.operator.position})
        await self._await_control(
            self._source_finish,
            f"paused for rescale {message.get('rescale_id')} but no source_finish (the frontier)",
        )
        self.operator.set_limit(self._source_frontier)
        self._source_handed_off = True
        self.metrics["source_paused_ms"] = (time.perf_counter() - started) * 1e3
        self.metrics["source_frontier"] = self._source_frontier

    async def _switch_output(self, message):
        """Route an output edge to the new tasks of a rescaled operator."""
        target_op = message["downstream_operator_id"]
        index = next((i for i, o in enumerate(self.outputs) if o.spec["downstream_operator_id"] == target_op), None)
        if index is None:
            raise ValueError(f"task {self.task_id} has no output to operator {target_op!r}")
        old = self.outputs[index]
        barrier = events.RescaleBarrier(message["rescale_id"], target_op, {})
        self._retired_backpressure += sum(ch.metrics.get("backpressured_seconds", 0.0) for ch in old.channels)
        for ch in old.channels:
            await ch.send(barrier)
            await ch.send(events.EndOfStream())
            await ch.close()
        spec = message["output"]
        channels = [
            await self.data_server.output_channel(t["channel_id"], t.get("host"), t.get("port"))
            for t in spec["targets"]
        ]
        self.outputs[index] = _Output(spec, channels)
        self.metrics["rescales_routed"] = self.metrics.get("rescales_routed", 0) + 1

    def _add_inputs(self, message):
        upstream = message["upstream_operator_id"]
        edge = next(
            (i for i, g in enumerate(self.tdd.get("inputs", [])) if g["upstream_operator_id"] == upstream), None
        )
        if edge is None:
            raise ValueError(f"task {self.task_id} has no input from operator {upstream!r}")
        channels = message["channels"]
        indices = self._gate.add_channels(channels, blocked=True)
        self.inputs += channels
        self.input_index += [edge] * len(channels)
        self._watermarks += [None] * len(channels)
        self._finished += [False] * len(channels)
        self._remaining += len(channels)
        self._waiting_channels.append((edge, indices))
        self._release_waiting_channels()

    def _release_waiting_channels(self):
        """Unblock new channels once every older channel of the same input has ended."""
        still = []
        for edge, indices in self._waiting_channels:
            older = [i for i, e in enumerate(self.input_index) if e == edge and i < indices[0]]
            if all(self._finished[i] for i in older):
                for i in indices:
                    self._gate.unblock(i)
            else:
                still.append((edge, indices))
        self._waiting_channels = still

    async def _on_rescale_barrier(self, gate, channel, barrier, finished):
        if self._rescaling is None:
            self._rescaling = (barrier, set())
        elif barrier.rescale_id != self._rescaling[0].rescale_id:
            raise RuntimeError(
                f"task {self.task_id} got rescale barrier {barrier.rescale_id} while handing off "
                f"for {self._rescaling[0].rescale_id}"
            )
        self._rescaling[1].add(channel)
        gate.block(channel)
        await self._maybe_aligned(gate, finished)  # a checkpoint in flight may now align
        return await self._maybe_handoff(gate, finished)

    async def _maybe_handoff(self, gate, finished):
        """Once the rescale barrier came on every live input: hand the state over and stop."""
        if self._rescaling is None:
            return False
        barrier, arrived = self._rescaling
        if not all(i in arrived or finished[i] for i in range(len(self.inputs))):
            return False
        self.metrics["last_record_at"] = self.metrics.get("last_record_at") or time.time()
        await self._await_control(
            self._handoff_ready,
            f"the barrier of rescale {barrier.rescale_id} came on every input but no handoff message "
            "(where to send the state)",
        )
        self._stop_taking_controls()
        await self._send_state(self._handoff)
        self._handed_off = True
        for out in self.outputs:
            for ch in out.channels:
                await ch.send(events.EndOfStream())
        return True

    async def _send_state(self, handoff):
        """Cut keyed state by the new key-group assignment; one slice per new task."""
        targets = handoff["state_targets"]
        snapshot = await self._call(self.operator.snapshot_state, 0)
        keyed = snapshot.get("keyed") if snapshot else None
        if snapshot and snapshot.get("state"):
            log.info("task %s: per-subtask operator state is not moved by a rescale", self.task_id)
        parts = [None] * len(targets)
        if keyed is not None and keyed.num_rows:
            if handoff.get("assignment") is not None:
                parts = partition.split_state_table(
                    keyed, assignment=np.asarray(handoff["assignment"], dtype=np.int32),
                    max_parallelism=self.ctx.max_parallelism,
                )
            else:
                parts = partition.split_state_table(
                    keyed, len(targets), max_parallelism=self.ctx.max_parallelism
                )
        moved = 0
        for target, part in zip(targets, parts):
            ch = await self.data_server.output_channel(target["channel_id"], target.get("host"), target.get("port"))
            if part is not None and part.num_rows:
                for batch in part.to_batches():
                    await ch.send(batch)
                moved += part.num_rows
            if self._current_watermark is not None:
                # the new owner must not take records as on time that were late here
                await ch.send(events.Watermark(self._current_watermark))
            await ch.send(events.EndOfStream())
            await ch.close()
        self.metrics["state_rows_handed_off"] = moved

    async def _receive_handoff(self):
        """A new task of a rescaled operator: install the state of its key groups first."""
        batches, watermarks = [], []
        started = time.perf_counter()
        timeout = float(self.tdd.get("handoff_timeout_s", 30.0))
        for ch in self.state_inputs:
            while True:
                try:
                    item = await asyncio.wait_for(ch.recv(), timeout)
                except asyncio.TimeoutError:
                    raise OperatorError(
                        f"task {self.task_id}: no state from the old tasks on {ch.channel_id} within {timeout:g} s"
                    ) from None
                if isinstance(item, events.EndOfStream):
                    break
                if isinstance(item, events.Watermark):
                    watermarks.append(item.timestamp)
                elif isinstance(item, pa.RecordBatch) and item.num_rows:
                    batches.append(item)
        if batches:
            table = pa.Table.from_batches(batches)
            await self._call(self.operator.restore_state, table, None, 0)
            self.metrics["state_rows_received"] = table.num_rows
        if watermarks and len(watermarks) == len(self.state_inputs):
            # event time goes on where the old tasks were (all aligned at the barrier)
            self._current_watermark = min(watermarks)
            routed = await self._call(self._process_and_route, self.operator.on_watermark, self._current_watermark)
            await self._emit_routed(routed)
        self.metrics["state_install_ms"] = (time.perf_counter() - started) * 1e3

    def _note_record(self):
        now = time.time()
        if "first_record_at" not in self.metrics:
            self.metrics["first_record_at"] = now
        self.metrics["last_record_at"] = now

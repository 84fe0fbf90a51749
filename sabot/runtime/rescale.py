"""A task's part in a live rescale (ARCHITECTURE.md section 8).

1. New tasks of the rescaled operator X are deployed first; they register a state
   channel per old task and read those to the end before any record.
2. Each old X task is told where its key groups go (:class:`Handoff`).
3. Each downstream task gets the new X tasks' channels (:class:`AddInputs`), kept
   blocked until every old X channel has ended, so per-key order holds.
4. Each upstream task, between two batches, sends a rescale barrier and end of
   stream on its old X channels and routes to the new tasks from then on
   (:class:`SwitchOutput`).
5. An old X task that has the barrier on every input cuts its keyed state by the
   new assignment, sends each slice to its new owner, ends its outputs and finishes
   without emitting final results. Nothing else stops.

A source moves its splits instead of state: the new source tasks are deployed held
(``rescale.source_hold``), outputs open, nothing emitted. Each old source task gets
:class:`SourcePause`, stops between two units and answers its split positions; on
:class:`SourceFinish` it ends its outputs and finishes as handed off.
:class:`SourceStart` gives each new task every old task's positions; it reads the splits
it owns from there (:mod:`sabot.connectors.source`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import numpy as np
import pyarrow as pa

from sabot._core import partition
from sabot.errors import OperatorError
from sabot.execution.messages import AddInputs, Handoff, SourceFinish, SourcePause, SourceStart, SwitchOutput
from sabot.runtime import events

log = logging.getLogger(__name__)

__all__ = ["RescaleParticipant"]


class RescaleParticipant:
    """Control messages of one task and the rescale protocols they drive.

    It works on the task it belongs to: the operator, the outputs, the input gate and
    the input state. Control messages are queued and applied between two batches.
    """

    def __init__(self, task):
        self.task = task
        tdd = task.tdd
        self.timeout_s = float(tdd.handoff_timeout_s)
        spec = tdd.rescale
        self.rescale_id = spec.rescale_id if spec is not None else None
        self.controls = collections.deque()  # applied between batches
        self.takes_controls = True  # until the input loop ended
        self.handoff = None  # where this (old) task sends its keyed state
        self._handoff_ready = asyncio.Event()
        self.barrier = None  # the rescale barrier being collected
        self.rescaled_channels: set[int] = set()  # channels that delivered it
        self.handed_off = False
        # a source rescale: new source tasks wait for their split positions, old ones pause and finish
        self.source_hold = bool(spec is not None and spec.source_hold)
        self._source_start = asyncio.Event()
        self._pause_reply = None  # future answering a source_pause (the split positions)
        self._source_finish = asyncio.Event()
        ids = list(spec.state_channel_ids) if spec is not None else []
        self.state_inputs = [task.data_server.input_channel(cid) for cid in ids]
        task.channel_ids += ids

    # -- receiving control messages ------------------------------------------------------

    def control(self, message):
        """Queue a control message; it is applied between two batches.

        Returns None, except for a :class:`SourcePause`: a future that resolves to
        ``{"task_id", "position"}`` once the source stopped between two units.
        """
        task = self.task
        if not self.takes_controls:
            raise ValueError(f"task {task.task_id} reached the end of its input; it takes no "
                             f"{message.TYPE} any more")
        if isinstance(message, Handoff):
            self.handoff = message
            self._handoff_ready.set()
            return None
        if isinstance(message, (SourcePause, SourceFinish, SourceStart)):
            return self._source_control(message)
        if isinstance(message, AddInputs):
            # register at once so the new upstream tasks can connect right away
            channels = [task.data_server.input_channel(cid) for cid in message.channel_ids]
            task.channel_ids += list(message.channel_ids)
            self.controls.append((message, channels))
        elif isinstance(message, SwitchOutput):
            self.controls.append((message, None))
        else:
            raise ValueError(f"task {task.task_id}: unexpected control message {message!r}")
        task.signal_gate()
        return None

    @property
    def pending(self) -> bool:
        return bool(self.controls)

    async def apply(self):
        """Apply the queued control messages (between two batches)."""
        task = self.task
        while self.controls:
            message, extra = self.controls.popleft()
            if isinstance(message, SwitchOutput):
                try:
                    await task.outputs.switch(message.downstream_operator_id, message.output, message.rescale_id)
                except ValueError as exc:
                    raise ValueError(f"task {task.task_id}: {exc}") from None
            elif isinstance(message, SourcePause):
                if not task.operator.at_unit_boundary:
                    self.controls.appendleft((message, extra))  # pause after the unit being emitted
                    return
                await self._pause_source(message)
            else:
                task.add_input_channels(message.upstream_operator_id, extra)

    def stop_taking_controls(self):
        """The input loop ended: a control queued now would never be applied, so refuse it."""
        self.takes_controls = False
        while self.controls:
            message, _ = self.controls.popleft()
            if isinstance(message, SourcePause):
                self._fail_pause(ValueError(f"task {self.task.task_id} reached the end of its input"))
            log.warning("task %s ended before applying control %s", self.task.task_id, message.TYPE)

    def _fail_pause(self, exc):
        reply = self._pause_reply
        if reply is not None and not reply.done():
            reply.set_exception(exc)

    def source_ended(self):
        """The source's input ended: a pause asked for now cannot be answered."""
        self._fail_pause(ValueError(f"source task {self.task.task_id} reached the end of its input; it cannot "
                                    "be paused"))

    # -- sources -------------------------------------------------------------------------

    def _source_control(self, message):
        task = self.task
        operator = task.operator
        if not operator.is_source:
            raise ValueError(f"task {task.task_id} is not a source; {message.TYPE} is for source tasks")
        if not operator.rescalable:
            raise ValueError(f"task {task.task_id}: {operator.not_rescalable()}")
        if isinstance(message, SourceStart):
            if not self.source_hold:
                raise ValueError(f"task {task.task_id} was not deployed held; source_start is for the new "
                                 "tasks of a source rescale")
            if self._source_start.is_set():
                raise ValueError(f"task {task.task_id} was already started")
            try:
                operator.take_split_positions(message.positions)  # the task waits; nothing reads yet
            except OperatorError as exc:
                raise ValueError(str(exc)) from None
            self._source_start.set()
            return None
        if isinstance(message, SourcePause):
            if self.source_hold and not self._source_start.is_set():
                raise ValueError(f"task {task.task_id} is held (never started); it cannot be paused")
            if task.source_done:
                raise ValueError(f"source task {task.task_id} reached the end of its input; it cannot be paused")
            if self._pause_reply is not None:
                raise ValueError(f"source task {task.task_id} is already paused for a rescale")
            self._pause_reply = asyncio.get_running_loop().create_future()
            self.controls.append((message, None))
            return self._pause_reply
        # SourceFinish
        if self._pause_reply is None:
            raise ValueError(f"source task {task.task_id} got source_finish without a source_pause before it")
        if self._source_finish.is_set():
            raise ValueError(f"source task {task.task_id} already got source_finish")
        self._source_finish.set()
        return None

    async def _await(self, event, what):
        """Wait for the control message that sets ``event``; a clear error if it never comes."""
        try:
            await asyncio.wait_for(event.wait(), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            raise OperatorError(f"task {self.task.task_id}: {what} arrived within {self.timeout_s:g} s") from None

    async def wait_source_start(self):
        """A new source task deployed held: wait for the split positions it takes its splits from."""
        await self._await(self._source_start,
                          f"was deployed held for rescale {self.rescale_id} but no source_start (its splits)")
        self.task.metrics["source_splits"] = [s.id for s in self.task.operator.splits]

    async def _pause_source(self, message):
        """Stop between two units, answer the split positions, wait for the finish, stop."""
        task = self.task
        started = time.perf_counter()
        if not self._pause_reply.done():
            self._pause_reply.set_result({"task_id": task.task_id, "position": task.operator.position})
        await self._await(self._source_finish,
                          f"paused for rescale {message.rescale_id} but no source_finish")
        task.operator.stop_for_rescale()
        self.handed_off = True
        task.metrics["source_paused_ms"] = (time.perf_counter() - started) * 1e3

    # -- old tasks of a keyed or stateless operator ----------------------------------------

    def on_barrier(self, channel, barrier):
        """A rescale barrier arrived on ``channel``; the caller blocks the channel."""
        if self.barrier is None:
            self.barrier = barrier
        elif barrier.rescale_id != self.barrier.rescale_id:
            raise RuntimeError(f"task {self.task.task_id} got rescale barrier {barrier.rescale_id} while handing "
                               f"off for {self.barrier.rescale_id}")
        self.rescaled_channels.add(channel)

    async def maybe_hand_off(self) -> bool:
        """Once the rescale barrier came on every live input: hand the state over and stop.

        Returns True when this task handed off (its input loop ends).
        """
        if self.barrier is None:
            return False
        task = self.task
        finished = task.input_state.finished
        if not all(i in self.rescaled_channels or finished[i] for i in range(len(task.input_state))):
            return False
        task.metrics["last_record_at"] = task.metrics.get("last_record_at") or time.time()
        await self._await(self._handoff_ready,
                          f"the barrier of rescale {self.barrier.rescale_id} came on every input but no "
                          "handoff message (where to send the state)")
        self.stop_taking_controls()
        await self._send_state(self.handoff)
        self.handed_off = True
        await task.outputs.broadcast(events.EndOfStream())
        return True

    async def _send_state(self, handoff):
        """Cut keyed state by the new key-group assignment; one slice per new task."""
        task = self.task
        targets = handoff.state_targets
        snapshot = await task.call(task.operator.snapshot_state, 0)
        keyed = snapshot.get("keyed") if snapshot else None
        if snapshot and snapshot.get("state"):
            log.info("task %s: per-subtask operator state is not moved by a rescale", task.task_id)
        parts = [None] * len(targets)
        max_parallelism = task.tdd.max_parallelism
        if keyed is not None and keyed.num_rows:
            if handoff.assignment is not None:
                parts = partition.split_state_table(
                    keyed, assignment=np.asarray(handoff.assignment, dtype=np.int32), max_parallelism=max_parallelism)
            else:
                parts = partition.split_state_table(keyed, len(targets), max_parallelism=max_parallelism)
        moved = 0
        watermark = task.input_state.current
        for target, part in zip(targets, parts):
            ch = await task.data_server.output_channel(target.channel_id, target.host, target.port)
            if part is not None and part.num_rows:
                for batch in part.to_batches():
                    await ch.send(batch)
                moved += part.num_rows
            if watermark is not None:
                # the new owner must not take records as on time that were late here
                await ch.send(events.Watermark(watermark))
            await ch.send(events.EndOfStream())
            await ch.close()
        task.metrics["state_rows_handed_off"] = moved

    # -- new tasks of a keyed or stateless operator -------------------------------------------

    async def receive_state(self):
        """Install the state of this task's key groups before the first record."""
        task = self.task
        batches, watermarks = [], []
        started = time.perf_counter()
        for ch in self.state_inputs:
            while True:
                try:
                    item = await asyncio.wait_for(ch.recv(), self.timeout_s)
                except asyncio.TimeoutError:
                    raise OperatorError(f"task {task.task_id}: no state from the old tasks on {ch.channel_id} "
                                        f"within {self.timeout_s:g} s") from None
                if isinstance(item, events.EndOfStream):
                    break
                if isinstance(item, events.Watermark):
                    watermarks.append(item.timestamp)
                elif isinstance(item, pa.RecordBatch) and item.num_rows:
                    batches.append(item)
        if batches:
            table = pa.Table.from_batches(batches)
            await task.call(task.operator.restore_state, table, None, 0)
            task.metrics["state_rows_received"] = table.num_rows
        if watermarks and len(watermarks) == len(self.state_inputs):
            # event time goes on where the old tasks were (all aligned at the barrier)
            await task.start_event_time_at(min(watermarks))
        task.metrics["state_install_ms"] = (time.perf_counter() - started) * 1e3

"""A task's outputs: one :class:`OutputEdge` per downstream operator (Flink's RecordWriter
with its ChannelSelector).

Routing (partitioning a batch for every edge, and measuring each part's ``nbytes``) runs on
the task's thread pool; sending runs on the event loop and waits for credit, so a slow
receiver slows the sender. Nothing that releases the GIL runs on the event loop per batch:
a thread that gives the GIL away waits to get it back while operator threads run Python code
(``RecordBatch.nbytes`` on the loop cost each operator 40-60 us per batch that way).

:class:`Outputs` also owns the watermark status the task announced downstream
(:attr:`Outputs.idle`): :meth:`Outputs.set_idle` sends a
:class:`~sabot.runtime.events.WatermarkStatus` on every channel when it changes, and a
record or watermark sent while idle is preceded by ``active`` (the receivers count the
channel again anyway; this keeps the two sides agreeing).

Small batches are coalesced per channel (Flink's output buffers with their buffer timeout):
after a selective filter or a hash edge a task's output can be batches of a few hundred
rows, and every batch costs the receiver one operator call (tens of microseconds) whatever
its size. So a part smaller than ``coalesce_rows`` rows (and ``COALESCE_BYTES``) waits in
its channel's buffer until the buffer holds that many rows; the buffer is then sent as one
batch (the parts concatenated, in order). Nothing waits across an event: every buffer is
sent before a watermark, watermark status, checkpoint or rescale barrier, end of stream
or rescale switch goes out (the order of records and events on a channel is kept), and
the task sends its buffers whenever its input runs dry (:meth:`Outputs.flush`) and once a
buffer is older than ``COALESCE_DELAY_S`` (:meth:`Outputs.flush_due`). So a record waits
at most that delay or one operator call, whichever is longer. A job sets the row target
with ``config["output_coalesce_rows"]`` (0: every part goes at once, Flink's buffer
timeout 0). Sources do not coalesce: their batches are the size the user asked for, and a
source's next read may block. Parts are concatenated on the operator threads (``offload``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa

from sabot.execution.deployment import DEFAULT_COALESCE_ROWS
from sabot.runtime import events
from sabot.runtime.operators.base import SideOutput
from sabot.runtime.partitioner import make_partitioner

__all__ = ["OutputEdge", "Outputs", "COALESCE_ROWS", "COALESCE_BYTES", "COALESCE_DELAY_S"]

COALESCE_ROWS = DEFAULT_COALESCE_ROWS  # a part with fewer rows waits for more to the same channel ...
COALESCE_BYTES = 4 << 20  # ... unless it is this big already
COALESCE_DELAY_S = 0.010  # the longest a buffered part waits while the task keeps busy


class _Buffer:
    """The small parts waiting for one channel, in order."""

    __slots__ = ("parts", "rows", "nbytes")

    def __init__(self, part, nbytes):
        self.parts = [part]
        self.rows = part.num_rows
        self.nbytes = nbytes

    def take(self):
        parts = self.parts
        return parts[0] if len(parts) == 1 else pa.concat_batches(parts)

    def routed(self, key):
        """The buffer as one routed item (its bytes: the parts', as the concatenation holds them)."""
        return key + (self.take(), self.nbytes)


class OutputEdge:
    """One output edge: a partitioner in front of one channel per target subtask."""

    def __init__(self, spec, channels):
        self.spec = spec
        self.channels = channels
        self.partitioner = make_partitioner(
            spec.partitioning, len(channels), key_columns=spec.key_by, max_parallelism=spec.max_parallelism,
        )
        if spec.assignment is not None:
            self.partitioner.set_assignment(np.asarray(spec.assignment, dtype=np.int32))
        # Unkeyed REBALANCE edges route each batch to the channel with the most credit:
        # a slow receiver grants less, so it simply gets less (Flink's round robin
        # would keep feeding it and stall everyone behind it).
        self.by_credit = spec.partitioning == "rebalance" and len(channels) > 1
        self._next = 0

    @property
    def downstream_operator_id(self) -> str:
        return self.spec.downstream_operator_id

    def pick_channel(self) -> int:
        """The channel with the most credit; round robin among equals."""
        n = len(self.channels)
        start = self._next
        best = max(range(n), key=lambda k: (self.channels[(start + k) % n].credit, -k))
        index = (start + best) % n
        self._next = (index + 1) % n
        return index

    @property
    def backpressured_seconds(self) -> float:
        return sum(ch.metrics.get("backpressured_seconds", 0.0) for ch in self.channels)


class Outputs:
    """Every output edge of a task, with the task's out-counters.

    Args:
        data_server: opens the sending ends.
        metrics: the task's metrics dict (``rows_out`` / ``bytes_out`` are counted here).
        coalesce_rows: parts with fewer rows are buffered per channel up to this many rows
            (0: every part is sent as it is).
        offload: ``await offload(fn)`` runs ``fn`` on the operator threads (the task's
            ``call``): :meth:`flush` concatenates buffered parts there, not on the event loop.
            None: in place.
    """

    def __init__(self, data_server, metrics, coalesce_rows=0, offload=None):
        if isinstance(coalesce_rows, bool) or not isinstance(coalesce_rows, int) or coalesce_rows < 0:
            raise ValueError(f"coalesce_rows must be an int >= 0, got {coalesce_rows!r}")
        self.data_server = data_server
        self.metrics = metrics
        self.coalesce_rows = coalesce_rows
        self.offload = offload
        self._buffers: dict = {}  # (edge index, channel index or None) -> _Buffer
        self._buffered_since = 0.0  # time.monotonic() when the oldest buffered part came
        self.edges: list[OutputEdge] = []
        self._retired_backpressure = 0.0  # of edges a rescale replaced
        self.idle = False  # the watermark status announced downstream (WatermarkStatus)

    async def _open(self, spec) -> OutputEdge:
        channels = [await self.data_server.output_channel(t.channel_id, t.host, t.port) for t in spec.targets]
        return OutputEdge(spec, channels)

    async def open(self, specs) -> None:
        for spec in specs:
            self.edges.append(await self._open(spec))

    def route(self, batches) -> list:
        """Partition output batches for every edge (runs on the thread pool).

        Returns ``[(edge index, channel index, batch, its nbytes)]``; credit-routed edges get
        channel None here, the channel is picked at send time. A :class:`SideOutput` goes only to
        the edges whose spec carries its tag; those edges get nothing else. With
        ``coalesce_rows``, small parts are held back (see the module's docstring) and come
        out of a later call, or of :meth:`flush`.
        """
        routed = []
        put = (lambda item: self._coalesce(item, routed)) if self.coalesce_rows else routed.append
        for edge_index, edge in enumerate(self.edges):
            tag = edge.spec.tag
            for batch in batches:
                if isinstance(batch, SideOutput):  # only to the edges consuming that side output
                    if batch.tag != tag:
                        continue
                    batch = batch.batch
                elif tag is not None:
                    continue
                if edge.by_credit:
                    if batch.num_rows:
                        put((edge_index, None, batch, batch.nbytes))
                    continue
                for channel_index, part in edge.partitioner.route(batch):
                    put((edge_index, channel_index, part, part.nbytes))
        return routed

    def _coalesce(self, item, routed):
        """Buffer ``item``'s part if it is small; append to ``routed`` what is ready to go."""
        edge_index, channel_index, part, nbytes = item
        key = (edge_index, channel_index)
        buffer = self._buffers.get(key)
        rows = part.num_rows
        alone = rows >= self.coalesce_rows or nbytes >= COALESCE_BYTES  # big enough on its own
        if buffer is not None and (alone or not part.schema.equals(buffer.parts[0].schema)):
            routed.append(buffer.routed(key))  # what waited goes first
            del self._buffers[key]
            buffer = None
        if alone:
            routed.append(item)
        elif buffer is None:
            if not self._buffers:
                self._buffered_since = time.monotonic()
            self._buffers[key] = _Buffer(part, nbytes)
        else:
            buffer.parts.append(part)
            buffer.rows += rows
            buffer.nbytes += nbytes
            if buffer.rows >= self.coalesce_rows or buffer.nbytes >= COALESCE_BYTES:
                routed.append(buffer.routed(key))
                del self._buffers[key]

    @property
    def buffered(self) -> bool:
        """Some small parts wait in a channel's buffer."""
        return bool(self._buffers)

    async def flush(self) -> None:
        """Send every buffered part now (one batch per channel)."""
        if self._buffers:
            buffers, self._buffers = self._buffers, {}

            def routed():
                return [buffer.routed(key) for key, buffer in buffers.items()]

            joins = any(len(buffer.parts) > 1 for buffer in buffers.values())
            await self.emit(await self.offload(routed) if joins and self.offload is not None else routed())

    async def flush_due(self) -> None:
        """Send the buffers once the oldest part waited ``COALESCE_DELAY_S`` (while the task
        keeps busy: when its input runs dry it calls :meth:`flush`)."""
        if self._buffers and time.monotonic() - self._buffered_since >= COALESCE_DELAY_S:
            await self.flush()

    async def set_idle(self, idle) -> None:
        """Announce ``idle`` (or active again) downstream, if that is news."""
        if idle != self.idle:
            if idle:
                await self.flush()  # the records before it go out while still active
            self.idle = idle
            await self._broadcast(events.IDLE if idle else events.ACTIVE)

    async def emit(self, routed) -> None:
        if self.idle and routed:
            await self.set_idle(False)
        metrics = self.metrics
        for edge_index, channel_index, part, nbytes in routed:  # nbytes: the channel and receiver take it
            metrics["rows_out"] += part.num_rows
            metrics["bytes_out"] += nbytes
            edge = self.edges[edge_index]
            if channel_index is None:
                channel_index = edge.pick_channel()
            await edge.channels[channel_index].send(part, nbytes)

    async def broadcast(self, event) -> None:
        await self.flush()  # no record crosses an event
        if self.idle and isinstance(event, events.Watermark):
            await self.set_idle(False)
        await self._broadcast(event)

    async def _broadcast(self, event) -> None:
        for edge in self.edges:
            for ch in edge.channels:
                await ch.send(event)

    async def close(self, timeout=None) -> None:
        """Close every channel (end of stream was sent before). With ``timeout``, each close
        is bounded and errors are swallowed (cleanup after a failure: the peer may be gone;
        parts still buffered are dropped with the attempt)."""
        self._buffers = {}
        for edge in self.edges:
            for ch in edge.channels:
                if timeout is None:
                    await ch.close()
                    continue
                try:
                    await asyncio.wait_for(ch.close(), timeout)
                except Exception:  # noqa: BLE001 - best effort, the task already failed
                    pass

    async def switch(self, downstream_operator_id, spec, rescale_id) -> None:
        """Route the edge to ``downstream_operator_id`` to the new tasks of a live rescale:
        a rescale barrier and end of stream on every old channel, then the new channels."""
        index = next((i for i, e in enumerate(self.edges) if e.downstream_operator_id == downstream_operator_id),
                     None)
        if index is None:
            raise ValueError(f"no output to operator {downstream_operator_id!r}")
        await self.flush()  # what was produced before the switch goes to the old tasks
        old = self.edges[index]
        barrier = events.RescaleBarrier(rescale_id, downstream_operator_id, {})
        self._retired_backpressure += old.backpressured_seconds
        for ch in old.channels:
            await ch.send(barrier)
            await ch.send(events.EndOfStream())
            await ch.close()
        self.edges[index] = await self._open(spec)
        if self.idle:  # the new receivers have not heard that this task is idle
            for ch in self.edges[index].channels:
                await ch.send(events.IDLE)
        self.metrics["rescales_routed"] = self.metrics.get("rescales_routed", 0) + 1

    def key_group_counts(self) -> dict:
        """Rows routed per key group on each keyed edge (auto-rebalance's load statistics)."""
        return {e.downstream_operator_id: e.partitioner.key_group_counts.tolist()
                for e in self.edges if e.spec.partitioning == "hash"}

    @property
    def backpressured_seconds(self) -> float:
        return self._retired_backpressure + sum(e.backpressured_seconds for e in self.edges)

    @property
    def wire_bytes_sent(self) -> int:
        return self.channel_total("wire_bytes_sent")

    def channel_total(self, metric) -> int:
        """A channel metric summed over every output channel (0 where a channel lacks it)."""
        return sum(ch.metrics.get(metric, 0) for edge in self.edges for ch in edge.channels)

    def clear(self) -> None:
        self.edges = []
        self._buffers = {}

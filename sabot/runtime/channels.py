"""Channels: the data plane between tasks, with Flink's credit-based flow control.

A channel carries :class:`pyarrow.RecordBatch` objects and control events
(:mod:`sabot.runtime.events`) from one sender to one receiver, in order.

Flow control follows Flink's credit model. The receiving :class:`InputChannel`
grants its sender a fixed number of buffer credits (``DataServer(credits=N)``).
Sending a batch spends one credit; a sender without credit waits (and counts the
wait as ``backpressured_seconds``). Every batch the receiver takes out with
:meth:`InputChannel.recv` returns one credit. So at most ``credits`` batches are
ever buffered or in flight per channel, whatever the speed of the consumer: a
slow sink slows its source and memory stays bounded. Events spend no credit but
keep their place between the batches.

Everything runs on one asyncio event loop (uvloop or the default loop); nothing
here uses threads. A channel has exactly one writer coroutine and one reader
(either :meth:`InputChannel.recv` or an :class:`InputGate`, not both).

The :class:`~sabot.runtime.data_server.DataServer` of a process hands out both ends. A channel whose sender
and receiver live in the same process is an in-process queue (batches are passed
by reference, never copied); otherwise it is a TCP connection to the receiver's
DataServer carrying Arrow IPC (see :mod:`sabot.runtime.network`)::

    server = DataServer(credits=8)
    await server.start()                       # only needed for remote senders
    inbox = server.input_channel("op1-0->op2-1")
    out = await server.output_channel("op1-0->op2-1")   # in-process
    await out.send(batch)
    await out.send(events.EndOfStream())
    assert (await inbox.recv()) is batch
"""

import abc
import asyncio
import collections
import logging
import time

import pyarrow as pa

from sabot.errors import SabotError
from sabot.runtime import events

log = logging.getLogger(__name__)

__all__ = [
    "ChannelClosed",
    "ChannelProtocolError",
    "DataServer",
    "DuplicateChannel",
    "InputChannel",
    "InputGate",
    "LocalOutputChannel",
    "OutputChannel",
]


class ChannelClosed(SabotError, ConnectionError):
    """The channel is closed (by its sender, by release/stop, or because its connection dropped).

    ``channel_id`` names the channel (None for an input gate with no live channel).
    """

    def __init__(self, message, channel_id=None):
        super().__init__(message)
        self.channel_id = channel_id


class ChannelProtocolError(ChannelClosed):
    """The peer broke the wire protocol (bad frame, batch without credit, ...)."""


class DuplicateChannel(SabotError, ValueError):
    """A channel id was registered twice, or given a second sender."""


def _check_credits(credits):
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 1:
        raise ValueError(f"credits must be an int >= 1 (buffers per channel), got {credits!r}")
    return credits


# --------------------------------------------------------------------------- input side


class InputChannel:
    """The receiving end of one channel; obtained from :meth:`DataServer.input_channel`.

    Attributes:
        channel_id: the channel's id.
        credits: buffers this receiver grants its sender.
        metrics: ``batches_received``, ``bytes_received`` (``RecordBatch.nbytes`` of
            batches that arrived), ``buffered_bytes`` (bytes of batches arrived and not
            yet taken out), ``peak_buffered_bytes``. Network channels add
            ``wire_bytes_received`` (IPC payload bytes read from the socket).
    """

    def __init__(self, channel_id, credits=8):
        self.channel_id = channel_id
        self.credits = _check_credits(credits)
        self.metrics = {
            "batches_received": 0,
            "bytes_received": 0,
            "buffered_bytes": 0,
            "peak_buffered_bytes": 0,
        }
        self._buffer = collections.deque()  # (item, nbytes)
        self.taken_nbytes = -1  # RecordBatch.nbytes of the item taken last (-1: an event)
        self._registered = False
        self._sender = None  # has grant(n) and abort(exc); set by the sending side
        self._closed = False
        self._close_exc = None  # raised by recv once the buffer is drained
        self._finished = False  # EndOfStream has been taken out
        self._waiter = None
        self._listener = None  # an InputGate's wake-up callback

    def __repr__(self):
        return (
            f"InputChannel({self.channel_id!r}, buffered={len(self._buffer)}, "
            f"closed={self._closed}, finished={self._finished})"
        )

    @property
    def finished(self) -> bool:
        """True once :class:`~sabot.runtime.events.EndOfStream` has been taken out."""
        return self._finished

    @property
    def closed(self) -> bool:
        """True once the sender closed, the connection dropped, or the channel was released."""
        return self._closed

    @property
    def registered(self) -> bool:
        """True once the receiving task registered the channel (senders get credit then)."""
        return self._registered

    @property
    def buffered_batches(self) -> int:
        """Batches (not events) arrived and not yet taken out."""
        return sum(1 for _, nbytes in self._buffer if nbytes >= 0)

    async def recv(self):
        """Take out the next batch or event, waiting while there is none.

        Taking out a batch returns one credit to the sender.

        Raises:
            ChannelClosed: everything buffered has been taken out and the channel is
                closed; the message says why (sender closed, connection lost, released).
        """
        while not self._buffer:
            if self._closed:
                raise self._close_exc
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take()

    # -- used by the sending side and the gate ------------------------------------

    def _ready(self):
        return bool(self._buffer) or self._closed

    def _take(self):
        if not self._buffer:
            raise self._close_exc
        item, nbytes = self._buffer.popleft()
        self.taken_nbytes = nbytes
        if nbytes >= 0:
            metrics = self.metrics
            metrics["buffered_bytes"] -= nbytes
            if self._sender is not None and not self._closed:
                self._sender.grant(1)
        elif type(item) is events.EndOfStream:
            self._finished = True
        return item

    def deliver(self, item, nbytes=None):
        """Append a batch or an event (called by the sender side; never blocks).

        ``nbytes``: the batch's ``RecordBatch.nbytes`` when the sender has it already
        (computing it walks every buffer: ~7 us for a 3-column batch, once per hop is enough).
        """
        if self._closed:
            raise ChannelClosed(f"channel {self.channel_id!r} is closed; cannot deliver {type(item).__name__}",
                                self.channel_id)
        if isinstance(item, pa.RecordBatch):
            if nbytes is None:
                nbytes = item.nbytes
            metrics = self.metrics
            metrics["batches_received"] += 1
            metrics["bytes_received"] += nbytes
            buffered = metrics["buffered_bytes"] + nbytes
            metrics["buffered_bytes"] = buffered
            if buffered > metrics["peak_buffered_bytes"]:
                metrics["peak_buffered_bytes"] = buffered
            self._buffer.append((item, nbytes))
        else:
            self._buffer.append((item, -1))
        self._wake()

    def close_with(self, exc):
        """No more items will arrive; ``exc`` (a ChannelClosed) is raised after the drain."""
        if self._closed:
            return
        self._closed = True
        self._close_exc = exc
        self._wake()

    def _wake(self):
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._listener is not None:
            self._listener()

    def attach_sender(self, sender):
        """Connect the sending end (local channel or network protocol); it gets the credit."""
        if self._sender is not None:
            raise DuplicateChannel(
                f"channel {self.channel_id!r} already has a sender; a channel has exactly one"
            )
        if self._closed:
            raise ChannelClosed(f"channel {self.channel_id!r} is closed", self.channel_id)
        self._sender = sender
        if self._registered:
            sender.grant(self.credits)

    def register(self):
        """The receiving task registered the channel: grant the sender its credit."""
        self._registered = True
        if self._sender is not None and not self._closed:
            sender_credit = self.credits - self.buffered_batches
            if sender_credit > 0:
                self._sender.grant(sender_credit)


class InputGate:
    """Reads a task's input channels: whichever has data, round-robin among those that do.

    ``block(i)`` stops reading channel ``i`` (for checkpoint barrier alignment); its
    data stays buffered in that channel, so its sender runs out of credit and waits.
    A channel is finished once it delivered :class:`~sabot.runtime.events.EndOfStream`;
    finished channels are not read again.
    """

    def __init__(self, channels):
        channels = list(channels)
        for i, ch in enumerate(channels):
            if not isinstance(ch, InputChannel):
                raise TypeError(f"InputGate channel {i} must be an InputChannel, got {type(ch).__name__}")
            if ch._listener is not None:
                raise ValueError(f"channel {ch.channel_id!r} is already read by another InputGate")
        self._channels = channels
        self._blocked = [False] * len(channels)
        self._next = 0
        self._waiter = None
        self._signalled = False
        for ch in channels:
            ch._listener = self._wake

    def taken_nbytes(self, channel_index) -> int:
        """``RecordBatch.nbytes`` of the batch :meth:`next` returned last from that channel."""
        return self._channels[channel_index].taken_nbytes

    @property
    def num_channels(self) -> int:
        return len(self._channels)

    @property
    def channels(self) -> list:
        return list(self._channels)

    def _index(self, i):
        if not isinstance(i, int) or not 0 <= i < len(self._channels):
            raise IndexError(f"channel index {i!r} out of range: this gate has {len(self._channels)} channels")
        return i

    def block(self, i):
        """Stop returning items of channel ``i`` until :meth:`unblock`."""
        self._blocked[self._index(i)] = True

    def unblock(self, i):
        """Resume reading channel ``i``."""
        self._blocked[self._index(i)] = False
        self._wake()

    def add_channels(self, channels, blocked=False):
        """Append channels (a live rescale gives a task new upstream subtasks).

        Returns the indices of the new channels.
        """
        first = len(self._channels)
        for ch in channels:
            if not isinstance(ch, InputChannel):
                raise TypeError(f"InputGate channel must be an InputChannel, got {type(ch).__name__}")
            if ch._listener is not None:
                raise ValueError(f"channel {ch.channel_id!r} is already read by another InputGate")
            ch._listener = self._wake
            self._channels.append(ch)
            self._blocked.append(bool(blocked))
        self._wake()
        return list(range(first, len(self._channels)))

    def signal(self):
        """Make a pending (or the next) :meth:`next` return ``(None, None)`` at once.

        The task uses this to handle a control message while no data arrives.
        """
        self._signalled = True
        self._wake()

    def is_blocked(self, i) -> bool:
        return self._blocked[self._index(i)]

    def finished(self, i) -> bool:
        """True once channel ``i`` delivered EndOfStream."""
        return self._channels[self._index(i)].finished

    @property
    def all_finished(self) -> bool:
        return all(ch.finished for ch in self._channels)

    def has_ready(self) -> bool:
        """:meth:`next` would return at once (an unblocked channel has an item, or a signal)."""
        if self._signalled:
            return True
        blocked = self._blocked
        return any(not blocked[i] and not ch._finished and ch._ready() for i, ch in enumerate(self._channels))

    async def next(self):
        """Return ``(channel_index, item)`` from the next unblocked channel that has one.

        Raises:
            ChannelClosed: a channel closed before delivering EndOfStream (the error
                names it), or every channel has already finished.
        """
        channels = self._channels
        while True:
            if self._signalled:
                self._signalled = False
                return None, None
            n = len(channels)
            start = self._next % n if n else 0
            for k in range(n):
                i = (start + k) % n
                ch = channels[i]
                if self._blocked[i] or ch._finished or not ch._ready():
                    continue
                self._next = (i + 1) % n
                return i, ch._take()
            if all(ch._finished for ch in channels):
                raise ChannelClosed(
                    f"input gate: all {n} channels have delivered end of stream; nothing more to read"
                )
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self):
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self):
        """Detach from the channels (they may then be read directly or by another gate)."""
        for ch in self._channels:
            if ch._listener == self._wake:
                ch._listener = None


# --------------------------------------------------------------------------- output side


class OutputChannel(abc.ABC):
    """The sending end of one channel; obtained from :meth:`DataServer.output_channel`.

    Attributes:
        channel_id: the channel's id.
        metrics: ``batches_sent``, ``bytes_sent`` (``RecordBatch.nbytes``),
            ``backpressured_seconds`` (time spent waiting for credit). Network
            channels add ``wire_bytes_sent`` (bytes written to the socket).
    """

    def __init__(self, channel_id):
        self.channel_id = channel_id
        self.metrics = {"batches_sent": 0, "bytes_sent": 0, "backpressured_seconds": 0.0}
        self._credit = 0
        self._credit_waiter = None
        self._error = None  # set when the channel broke; raised by send
        self._closed = False
        self._lock = asyncio.Lock()  # only taken when a send has to wait: keeps order

    def __repr__(self):
        return f"{type(self).__name__}({self.channel_id!r}, credit={self._credit}, closed={self._closed})"

    @property
    def credit(self) -> int:
        """Batches that may be sent now without waiting."""
        return self._credit

    @property
    def closed(self) -> bool:
        return self._closed

    async def send(self, item, nbytes=None):
        """Send a record batch (waits for credit) or an event (needs none; order kept).
        ``nbytes``: the batch's ``RecordBatch.nbytes`` when the caller has it already.

        Raises:
            TypeError: ``item`` is neither a ``pyarrow.RecordBatch`` nor an event.
            ChannelClosed: the channel was closed or released, or its connection dropped.
        """
        is_batch = isinstance(item, pa.RecordBatch)
        if not is_batch and not events.is_event(item):
            raise TypeError(
                f"channel {self.channel_id!r} carries pyarrow.RecordBatch or a sabot.runtime.events "
                f"event, got {type(item).__name__}"
            )
        self._check_open()
        if self._lock.locked() or (is_batch and self._credit <= 0):
            # Slow path: someone is (or we are about to be) waiting for credit.
            async with self._lock:
                if is_batch and self._credit <= 0:
                    await self._wait_for_credit()
                self._check_open()
                self._send_now(item, is_batch, nbytes)
        else:
            self._send_now(item, is_batch, nbytes)

    def _send_now(self, item, is_batch, nbytes=None):
        if is_batch:
            if nbytes is None:
                nbytes = item.nbytes
            self._credit -= 1
            self._send_batch(item, nbytes)
            metrics = self.metrics
            metrics["batches_sent"] += 1
            metrics["bytes_sent"] += nbytes
        else:
            self._send_event(item)

    async def _wait_for_credit(self):
        started = time.perf_counter()
        try:
            while self._credit <= 0:
                self._check_open()
                self._credit_waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._credit_waiter
                finally:
                    self._credit_waiter = None
        finally:
            self.metrics["backpressured_seconds"] += time.perf_counter() - started

    def _check_open(self):
        if self._error is not None:
            raise self._error
        if self._closed:
            raise ChannelClosed(f"channel {self.channel_id!r} was closed by this sender", self.channel_id)

    # -- called by the receiving side -----------------------------------------------

    def grant(self, n):
        """Add ``n`` credits (the receiver took out ``n`` batches, or registered)."""
        self._credit += n
        waiter = self._credit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self, exc):
        """The channel broke: every later (and the waiting) send raises ``exc``."""
        if self._error is None:
            self._error = exc
        waiter = self._credit_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- implemented by the transports -----------------------------------------------

    @abc.abstractmethod
    def _send_batch(self, batch, nbytes):
        """Hand one batch (of ``RecordBatch.nbytes`` ``nbytes``) to the transport (a credit was taken)."""

    @abc.abstractmethod
    def _send_event(self, event):
        """Hand one control event to the transport, in order with the batches."""

    @abc.abstractmethod
    async def close(self):
        """Close the channel; the receiver gets what was sent, then ChannelClosed. Idempotent."""


class LocalOutputChannel(OutputChannel):
    """An in-process channel: batches are handed to the InputChannel by reference."""

    def __init__(self, channel_id, target):
        super().__init__(channel_id)
        self._target = target

    def _send_batch(self, batch, nbytes):
        self._target.deliver(batch, nbytes)

    def _send_event(self, event):
        self._target.deliver(event)

    async def close(self):
        if self._closed:
            return
        self._closed = True
        self._target.close_with(
            ChannelClosed(f"channel {self.channel_id!r} was closed by its sender", self.channel_id)
        )

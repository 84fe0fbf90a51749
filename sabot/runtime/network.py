"""Network channels: Arrow IPC over TCP on the event loop, with credit frames flowing back.

One TCP connection per channel. Every frame is a 9-byte header (``<BQ``: kind,
payload length) and a payload:

=========  =========  ===============================================================
kind       direction  payload
=========  =========  ===============================================================
HELLO      s -> r     channel id (UTF-8); first frame of a connection
SCHEMA     s -> r     ``Schema.serialize()``; sent before the first batch and again
                      whenever the schema changes
BATCH      s -> r     ``RecordBatch.serialize()`` (an IPC record batch message)
STREAM     s -> r     a whole IPC stream holding one batch (schemas with dictionary
                      columns, whose dictionaries a bare batch message cannot carry)
EVENT      s -> r     ``event.to_dict()`` as JSON
CLOSE      s -> r     empty; the sender is done, the receiver closes the connection
CREDIT     r -> s     uint32 little-endian: number of new credits
ERROR      r -> s     UTF-8 message; the receiver refuses or dropped the channel
=========  =========  ===============================================================

The receiver reads each payload straight into a freshly allocated (64-byte
aligned) Arrow buffer with ``recv_into`` (``asyncio.BufferedProtocol``) and builds
the batch on that buffer without copying. The sender writes the serialized IPC
buffer to the transport as a memoryview. A batch frame is only legal while the
receiver has granted credit; a sender that sends one without credit has broken
the protocol and its connection is dropped.
"""

import asyncio
import errno
import json
import logging
import struct

import pyarrow as pa

from sabot.errors import SabotError
from sabot.runtime import events
from sabot.runtime.channels import ChannelClosed, ChannelProtocolError, OutputChannel

log = logging.getLogger(__name__)

HEADER = struct.Struct("<BQ")
CREDIT_BODY = struct.Struct("<I")

HELLO = 1
SCHEMA = 2
BATCH = 3
EVENT = 4
CREDIT = 5
CLOSE = 6
STREAM = 7
ERROR = 8

KIND_NAMES = {
    HELLO: "HELLO", SCHEMA: "SCHEMA", BATCH: "BATCH", EVENT: "EVENT",
    CREDIT: "CREDIT", CLOSE: "CLOSE", STREAM: "STREAM", ERROR: "ERROR",
}

# How long a refused sender gets to read our ERROR frame and close its end.
REFUSE_LINGER_SECONDS = 2.0
# Frames above this are refused as garbage rather than allocated.
MAX_FRAME_BYTES = 1 << 34
_SMALL_FRAME_LIMIT = 1 << 16  # HELLO, EVENT, CREDIT, ERROR, CLOSE payloads

_EMPTY = pa.py_buffer(b"")


def _has_dictionary(type_):
    if pa.types.is_dictionary(type_):
        return True
    return any(_has_dictionary(type_.field(i).type) for i in range(type_.num_fields))


def _schema_has_dictionary(schema):
    return any(_has_dictionary(field.type) for field in schema)


def _as_bytes_view(buf):
    # asyncio's transports accept bytes/bytearray/memoryview; 'B' keeps bytearray.extend happy.
    return memoryview(buf).cast("B")


class _FrameProtocol(asyncio.BufferedProtocol):
    """Reads frames with ``recv_into`` directly into each frame's own buffer."""

    def __init__(self):
        self.transport = None
        self._header = bytearray(HEADER.size)
        self._header_view = memoryview(self._header)
        self._kind = 0
        self._body = None
        self._body_view = None
        self._pos = 0
        self._broken = False
        self._scratch = None
        self._eof_sent = False

    def get_buffer(self, sizehint):
        if self._broken:  # read and drop whatever else the peer sends
            if self._scratch is None:
                self._scratch = memoryview(bytearray(1 << 16))
            return self._scratch
        if self._body_view is None:
            return self._header_view[self._pos:]
        return self._body_view[self._pos:]

    def buffer_updated(self, nbytes):
        if self._broken:
            return
        self._pos += nbytes
        try:
            if self._body_view is None:
                if self._pos < HEADER.size:
                    return
                kind, length = HEADER.unpack(self._header)
                self._pos = 0
                if kind not in KIND_NAMES:
                    raise ChannelProtocolError(f"unknown frame kind {kind} (known: {sorted(KIND_NAMES)})")
                limit = MAX_FRAME_BYTES if kind in (SCHEMA, BATCH, STREAM) else _SMALL_FRAME_LIMIT
                if length > limit:
                    raise ChannelProtocolError(
                        f"{KIND_NAMES[kind]} frame of {length} bytes exceeds the limit of {limit} bytes"
                    )
                if length == 0:
                    self._frame(kind, _EMPTY)
                    return
                self._kind = kind
                self._body = pa.allocate_buffer(length)
                self._body_view = memoryview(self._body).cast("B")
            elif self._pos == len(self._body_view):
                kind, body = self._kind, self._body
                self._body = self._body_view = None
                self._pos = 0
                self._frame(kind, body)
        except Exception as exc:  # a bad frame must not escape into the event loop
            self._broken = True
            self._protocol_error(exc)

    def _write_frame(self, kind, payload=b""):
        transport = self.transport
        size = len(payload)
        if size <= 4096:
            transport.write(HEADER.pack(kind, size) + bytes(payload))
        else:
            transport.write(HEADER.pack(kind, size))
            transport.write(_as_bytes_view(payload))
        return HEADER.size + size

    def _writable(self):
        return self.transport is not None and not self.transport.is_closing() and not self._eof_sent

    def abort_connection(self):
        if self.transport is not None:
            self.transport.abort()

    def _frame(self, kind, body):  # each side's protocol handles its own frames
        raise TypeError(f"{type(self).__name__} must handle frames itself")

    def _protocol_error(self, exc):
        raise TypeError(f"{type(self).__name__} must handle protocol errors itself")


# --------------------------------------------------------------------------- receiver


class ReceiverProtocol(_FrameProtocol):
    """The DataServer's end of one incoming channel connection.

    It is the InputChannel's sender object: ``grant(n)`` sends CREDIT frames
    (announcements made in one loop iteration go out as one frame), ``abort(exc)``
    tells the sender why and drops the connection.
    """

    def __init__(self, server):
        super().__init__()
        self.server = server
        self._loop = None
        self.channel = None
        self.channel_id = None
        self.peer = None
        self.schema = None
        self.batches = 0
        self.wire_bytes = 0
        self._outstanding = 0  # credits granted and not yet used by a batch
        self._pending_credit = 0
        self._flush_scheduled = False
        self._done = False  # CLOSE received or we dropped the connection on purpose
        self._abort_timer = None

    def connection_made(self, transport):
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self.peer = transport.get_extra_info("peername")
        self.server.connections.add(self)

    def _describe(self):
        peer = f"{self.peer[0]}:{self.peer[1]}" if self.peer else "unknown peer"
        return f"channel {self.channel_id!r} (from {peer})"

    def _frame(self, kind, body):
        ch = self.channel
        if ch is None:
            if kind != HELLO:
                raise ChannelProtocolError(f"first frame must be HELLO, got {KIND_NAMES[kind]}")
            try:
                self.channel_id = body.to_pybytes().decode("utf-8")
            except UnicodeDecodeError:
                raise ChannelProtocolError("HELLO frame does not hold a UTF-8 channel id") from None
            ch = self.server.channel_for_sender(self.channel_id)
            ch.attach_sender(self)
            self.channel = ch
            return
        if kind == BATCH or kind == STREAM:
            if self._outstanding <= 0:
                raise ChannelProtocolError(f"{self._describe()}: the sender sent a batch without credit")
            if kind == BATCH:
                if self.schema is None:
                    raise ChannelProtocolError(f"{self._describe()}: BATCH before any SCHEMA frame")
                batch = pa.ipc.read_record_batch(body, self.schema)
            else:
                batch = pa.ipc.open_stream(body).read_next_batch()
            self._outstanding -= 1
            self.batches += 1
            self.wire_bytes += body.size
            ch.deliver(batch)
            ch.metrics["wire_bytes_received"] = self.wire_bytes
        elif kind == SCHEMA:
            self.schema = pa.ipc.read_schema(body)
        elif kind == EVENT:
            ch.deliver(events.from_dict(json.loads(body.to_pybytes())))
        elif kind == CLOSE:
            self._done = True
            ch.close_with(ChannelClosed(f"{self._describe()} was closed by its sender", self.channel_id))
            self.transport.close()
        else:
            raise ChannelProtocolError(f"{self._describe()}: unexpected {KIND_NAMES[kind]} frame from a sender")

    def _protocol_error(self, exc):
        if isinstance(exc, SabotError):
            err = exc
        else:
            err = ChannelProtocolError(
                f"{self._describe()}: bad data from the sender: {type(exc).__name__}: {exc}", self.channel_id
            )
        log.warning("dropping data connection: %s", err)
        if self.channel is not None and self.channel._sender is self:
            self._done = True
            self.channel.close_with(err)
        self._refuse(str(err))

    def _refuse(self, message):
        """Tell the sender why, then half-close; drop the connection if it does not close too.

        Closing outright while the sender's frames are unread would reset the
        connection, and the reset could destroy the ERROR frame before it is read.
        """
        self._broken = True
        transport = self.transport
        if not self._writable():
            return
        try:
            self._write_frame(ERROR, message.encode("utf-8")[: _SMALL_FRAME_LIMIT])
        finally:
            try:
                if transport.can_write_eof():
                    transport.write_eof()
                    self._eof_sent = True
                    self._abort_timer = self._loop.call_later(
                        REFUSE_LINGER_SECONDS, transport.abort
                    )
                else:
                    transport.close()
            except OSError:  # the peer is already gone (e.g. ENOTCONN): nothing left to tell it
                transport.abort()

    # -- InputChannel sender interface ------------------------------------------------

    def grant(self, n):
        self._outstanding += n
        self._pending_credit += n
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_credit)

    def _flush_credit(self):
        self._flush_scheduled = False
        n, self._pending_credit = self._pending_credit, 0
        if n and self._writable():
            self._write_frame(CREDIT, CREDIT_BODY.pack(n))

    def abort(self, exc):
        self._done = True
        self._refuse(str(exc))

    def connection_lost(self, exc):
        self.server.connections.discard(self)
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        ch = self.channel
        if ch is not None and not self._done:
            reason = f": {exc}" if exc else ""
            ch.close_with(
                ChannelClosed(
                    f"{self._describe()}: connection lost mid-stream after {self.batches} batches "
                    f"(no CLOSE frame){reason}",
                    self.channel_id,
                )
            )


# --------------------------------------------------------------------------- sender


class SenderProtocol(_FrameProtocol):
    """The sending side's connection: reads CREDIT (and ERROR) frames."""

    def __init__(self, channel):
        super().__init__()
        self.channel = channel
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport

    def _frame(self, kind, body):
        if kind == CREDIT:
            if body.size != CREDIT_BODY.size:
                raise ChannelProtocolError(f"CREDIT frame of {body.size} bytes, expected {CREDIT_BODY.size}")
            (n,) = CREDIT_BODY.unpack(body.to_pybytes())
            self.channel.grant(n)
        elif kind == ERROR:
            message = body.to_pybytes().decode("utf-8", "replace")
            self.channel.abort(
                ChannelClosed(f"channel {self.channel.channel_id!r}: the receiver {self.channel.peer} "
                              f"dropped the channel: {message}", self.channel.channel_id)
            )
            self.transport.close()
        else:
            raise ChannelProtocolError(f"unexpected {KIND_NAMES[kind]} frame from a receiver")

    def _protocol_error(self, exc):
        self.channel.abort(
            ChannelProtocolError(
                f"channel {self.channel.channel_id!r}: bad data from the receiver {self.channel.peer}: {exc}",
                self.channel.channel_id,
            )
        )
        self.transport.abort()

    def connection_lost(self, exc):
        self.channel._server.connections.discard(self)
        if not self.channel._closed:
            reason = f": {exc}" if exc else ""
            self.channel.abort(
                ChannelClosed(
                    f"channel {self.channel.channel_id!r}: connection to the data server at "
                    f"{self.channel.peer} lost{reason}",
                    self.channel.channel_id,
                )
            )
        if not self.closed.done():
            self.closed.set_result(None)


class NetworkOutputChannel(OutputChannel):
    """Sending end of a channel to another process's DataServer, over TCP.

    ``metrics`` adds ``wire_bytes_sent``: frame bytes written to the socket.
    """

    def __init__(self, channel_id, host, port, server, close_timeout=30.0):
        super().__init__(channel_id)
        self.host = host
        self.port = port
        self.peer = f"{host}:{port}"
        self.close_timeout = close_timeout
        self.metrics["wire_bytes_sent"] = 0
        self._server = server
        self._protocol = None
        self._schema = None
        self._dictionary = False

    def _write(self, kind, payload=b""):
        self.metrics["wire_bytes_sent"] += self._protocol._write_frame(kind, payload)

    def _send_batch(self, batch):
        schema = batch.schema
        if self._schema is None or not schema.equals(self._schema, check_metadata=True):
            self._schema = schema
            self._dictionary = _schema_has_dictionary(schema)
            if not self._dictionary:
                self._write(SCHEMA, schema.serialize())
        if self._dictionary:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as writer:
                writer.write_batch(batch)
            self._write(STREAM, sink.getvalue())
        else:
            self._write(BATCH, batch.serialize())

    def _send_event(self, event):
        self._write(EVENT, json.dumps(event.to_dict()).encode("utf-8"))

    async def close(self):
        if self._closed:
            return
        self._closed = True
        protocol = self._protocol
        transport = protocol.transport
        if not transport.is_closing():
            # Half-close and wait for the receiver to close its end after it has read
            # CLOSE. Closing outright would reset the connection if a CREDIT frame is
            # still unread on our side, and a reset discards the receiver's unread data.
            self._write(CLOSE)
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.shield(protocol.closed)
        except TimeoutError:
            log.warning("channel %r: %s did not take our last frames within %.1f s; aborting",
                        self.channel_id, self.peer, self.close_timeout)
            transport.abort()
        else:
            transport.close()


def _refused(exc):
    return isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED


async def connect(server, channel_id, host, port, timeout=10.0):
    """Open a :class:`NetworkOutputChannel` to the DataServer at ``(host, port)``.

    A refused connection is retried (with backoff) until ``timeout`` seconds have
    passed: the receiving worker may still be starting its server.
    """
    loop = asyncio.get_running_loop()
    channel = NetworkOutputChannel(channel_id, host, port, server)
    deadline = loop.time() + timeout
    delay = 0.02
    while True:
        remaining = deadline - loop.time()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel
            # that arrives as the connection completes (Task.cancel then hangs, and the
            # new connection leaks); asyncio.timeout re-raises it and only converts its
            # own expiry into TimeoutError.
            async with asyncio.timeout(max(remaining, 0.001)):
                transport, protocol = await loop.create_connection(lambda: SenderProtocol(channel), host, port)
            break
        except (OSError, TimeoutError) as exc:
            if not isinstance(exc, TimeoutError) and not _refused(exc):
                raise ChannelClosed(
                    f"channel {channel_id!r}: cannot connect to data server {host}:{port}: {exc}", channel_id
                ) from exc
            if loop.time() + delay >= deadline:
                raise ChannelClosed(
                    f"channel {channel_id!r}: no data server reachable at {host}:{port} "
                    f"within {timeout:.1f} s ({type(exc).__name__}: {exc})",
                    channel_id,
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
    channel._protocol = protocol
    server.connections.add(protocol)
    protocol._write_frame(HELLO, channel_id.encode("utf-8"))
    return channel

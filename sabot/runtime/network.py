"""Network channels: Arrow IPC over TCP on the event loop, with credit frames flowing back.

One TCP connection per channel (TLS when the DataServer has SSL contexts). Every frame
is a 9-byte header (``<BQ``: kind, payload length) and a payload:

=========  =========  ===============================================================
kind       direction  payload
=========  =========  ===============================================================
CHALLENGE  r -> s     16 random bytes; the receiver's first frame
AUTH       s -> r     16 random bytes + HMAC-SHA256(key, "sabot-data:sender" + both nonces)
AUTH_OK    r -> s     HMAC-SHA256(key, "sabot-data:receiver" + both nonces)
HELLO      s -> r     channel id (UTF-8); first frame after AUTH
SCHEMA     s -> r     ``Schema.serialize()``; sent before the first batch and again
                      whenever the schema changes
BATCH      s -> r     ``RecordBatch.serialize()`` (an IPC record batch message)
STREAM     s -> r     a whole IPC stream holding one batch (schemas with dictionary
                      columns, whose dictionaries a bare batch message cannot carry)
EVENT      s -> r     ``event.to_dict()`` as JSON
CLOSE      s -> r     empty; the sender is done, the receiver closes the connection
CREDIT     r -> s     uint32 little-endian: number of new credits
ERROR      r -> s     UTF-8 message; the receiver refuses or dropped the channel
SHM_OFFER  s -> r     pid, fd, size, nonce of a shared-memory ring (:mod:`.shm`); at
                      most one, after AUTH_OK and HELLO
SHM_ACCEPT r -> s     16 bytes the receiver wrote into the ring (the sender reads them back)
SHM_REFUSE r -> s     UTF-8 reason; the channel stays plain TCP
SHM_BATCH  s -> r     doorbell ``<QIQQ`` (seq, slot, offset, length): a record batch
                      message in the ring, read with the last SCHEMA
SHM_STREAM s -> r     doorbell: a one-batch IPC stream in the ring (dictionary columns)
=========  =========  ===============================================================

Authentication comes first (the key is derived from the cluster secret): until the
sender has proven it knows the key, the receiver accepts exactly one frame, an AUTH of
exactly 48 bytes, within :data:`HANDSHAKE_TIMEOUT_S`; anything else closes the
connection at once, so a stranger costs a 9-byte header and a 48-byte buffer, and leaves
nothing behind. The sender checks AUTH_OK before it accepts credit, so it never sends rows
to a server that does not know the key either. After the handshake a frame longer than
:data:`MAX_FRAME_BYTES`, or a batch header without credit, closes the connection before
its payload is allocated; TCP keepalive finds half-open connections.

Same host: after the handshake the sender offers a shared-memory ring; a receiver that
can open and map it (same host, namespace and user) accepts, and from then on every
batch of at least ``DataServer.shm_min_bytes`` goes through the ring, announced by a
doorbell frame that spends a credit like a BATCH frame (:mod:`sabot.runtime.shm`). A
batch the ring has no room for (the receiver keeps earlier ones) and smaller batches
go over TCP, in order with the others. A doorbell naming bytes outside the ring closes
the connection. TLS is beside the point there: the data never leaves the host.

Over TCP, the receiver reads each payload straight into a freshly allocated (64-byte
aligned) Arrow buffer with ``recv_into`` (``asyncio.BufferedProtocol``) and builds
the batch on that buffer without copying. The sender writes the serialized IPC
buffer to the transport as a memoryview. A batch frame is only legal while the
receiver has granted credit; a sender that sends one without credit has broken
the protocol and its connection is dropped.
"""

import asyncio
import errno
import hashlib
import hmac
import json
import logging
import os
import socket
import struct

import pyarrow as pa

from sabot.errors import SabotError
from sabot.runtime import events, shm
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
CHALLENGE = 9
AUTH = 10
AUTH_OK = 11
SHM_OFFER = 12
SHM_ACCEPT = 13
SHM_REFUSE = 14
SHM_BATCH = 15
SHM_STREAM = 16

KIND_NAMES = {
    HELLO: "HELLO", SCHEMA: "SCHEMA", BATCH: "BATCH", EVENT: "EVENT",
    CREDIT: "CREDIT", CLOSE: "CLOSE", STREAM: "STREAM", ERROR: "ERROR",
    CHALLENGE: "CHALLENGE", AUTH: "AUTH", AUTH_OK: "AUTH_OK",
    SHM_OFFER: "SHM_OFFER", SHM_ACCEPT: "SHM_ACCEPT", SHM_REFUSE: "SHM_REFUSE",
    SHM_BATCH: "SHM_BATCH", SHM_STREAM: "SHM_STREAM",
}
_BATCH_KINDS = (BATCH, STREAM, SHM_BATCH, SHM_STREAM)  # each spends a credit
_DOORBELL_FRAME = struct.Struct("<BQ" + shm.DOORBELL.format.lstrip("<"))

# How long a refused sender gets to read our ERROR frame and close its end.
REFUSE_LINGER_SECONDS = 2.0
#: a data frame (a serialized batch) above this closes the connection; the sender refuses
#: to send one (split the batch)
MAX_FRAME_BYTES = 1 << 30
_SMALL_FRAME_LIMIT = 1 << 16  # HELLO, EVENT, CREDIT, ERROR, CLOSE payloads
#: a peer that has not authenticated within this time is dropped
HANDSHAKE_TIMEOUT_S = 5.0
_NONCE = 16
_MAC = 32
#: the stage before authentication: one header and an AUTH frame, the largest handshake frame
_HANDSHAKE_STAGE = HEADER.size + _NONCE + _MAC
#: the stage after it (bytes a read may take in while no large payload is being read)
_STAGE_BYTES = 1 << 16
_FIXED_SIZES = {CHALLENGE: _NONCE, AUTH: _NONCE + _MAC, AUTH_OK: _MAC, SHM_OFFER: shm.OFFER.size,
                SHM_ACCEPT: 16, SHM_BATCH: shm.DOORBELL.size, SHM_STREAM: shm.DOORBELL.size}


def _mac(key, role, first, second):
    return hmac.new(key, b"sabot-data:" + role + first + second, hashlib.sha256).digest()


def _keepalive(transport):
    """Probe an idle connection after 30 s, every 5 s, 3 times: a half-open one is dropped."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # not a TCP socket (tests), or the platform refuses: keepalive is best effort
        pass

_EMPTY = pa.py_buffer(b"")
# the defaults, made once: pa.ipc.new_stream without options reads two environment
# variables and builds new options per writer (~4 us a batch); serialize() uses these too
_IPC_OPTIONS = pa.ipc.IpcWriteOptions()


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
    """Reads frames with ``recv_into``: small ones many at a time, large payloads in place.

    Bytes arrive in a staging buffer, so one read takes in every small frame waiting
    (credits, doorbells, events) instead of a read per header and per payload. A
    payload too big for the stage gets its own (64-byte aligned) Arrow buffer: what of
    it is already staged is copied there and the rest is read straight into it. Until
    the peer has authenticated, the stage holds exactly one header and the largest
    handshake frame.
    """

    def __init__(self):
        self.transport = None
        self._stage = bytearray(_HANDSHAKE_STAGE)
        self._stage_view = memoryview(self._stage)
        self._start = 0  # first byte of the stage not yet parsed
        self._end = 0  # end of the bytes read into the stage
        self._kind = 0
        self._body = None
        self._body_view = None
        self._pos = 0
        self._broken = False
        self._scratch = None
        self._eof_sent = False

    def _grow_stage(self):
        """The peer authenticated: stage many frames per read from now on."""
        if len(self._stage) < _STAGE_BYTES:
            stage = bytearray(_STAGE_BYTES)
            pending = self._end - self._start
            stage[:pending] = self._stage_view[self._start:self._end]
            self._stage, self._stage_view = stage, memoryview(stage)
            self._start, self._end = 0, pending

    def get_buffer(self, sizehint):
        if self._broken:  # read and drop whatever else the peer sends
            if self._scratch is None:
                self._scratch = memoryview(bytearray(1 << 16))
            return self._scratch
        if self._body_view is None:
            return self._stage_view[self._end:]
        return self._body_view[self._pos:]

    def buffer_updated(self, nbytes):
        if self._broken:
            return
        try:
            if self._body_view is None:
                self._end += nbytes
                self._parse_stage()
                return
            self._pos += nbytes
            if self._pos == len(self._body_view):
                kind, body = self._kind, self._body
                self._body = self._body_view = None
                self._pos = 0
                self._frame(kind, body)
        except Exception as exc:  # a bad frame must not escape into the event loop
            self._broken = True
            self._protocol_error(exc)

    def _parse_stage(self):
        while not self._broken and self._body_view is None:
            start, end = self._start, self._end
            if end - start < HEADER.size:
                break
            kind, length = HEADER.unpack_from(self._stage, start)
            self._check_frame(kind, length)  # before anything is allocated for the payload
            at = start + HEADER.size
            staged = end - at
            if length <= staged:
                self._start = at + length
                if length == 0:
                    body = _EMPTY
                else:
                    body = pa.allocate_buffer(length)
                    memoryview(body).cast("B")[:] = self._stage_view[at:at + length]
                self._frame(kind, body)
            elif HEADER.size + length > len(self._stage):  # its own buffer, read into in place
                body = pa.allocate_buffer(length)
                view = memoryview(body).cast("B")
                view[:staged] = self._stage_view[at:end]
                self._kind, self._body, self._body_view, self._pos = kind, body, view, staged
                self._start = self._end = 0
            else:
                break  # the rest of a small frame is on its way
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = 0
        elif start:  # keep the partial frame at the front: the stage always has room for it
            self._stage_view[:end - start] = self._stage_view[start:end]
            self._start, self._end = 0, end - start

    def _check_frame(self, kind, length):
        if kind not in KIND_NAMES:
            raise ChannelProtocolError(f"unknown frame kind {kind} (known: {sorted(KIND_NAMES)})")
        if kind in _FIXED_SIZES and length != _FIXED_SIZES[kind]:
            raise ChannelProtocolError(f"{KIND_NAMES[kind]} frame of {length} bytes, expected "
                                       f"{_FIXED_SIZES[kind]}")
        limit = MAX_FRAME_BYTES if kind in (SCHEMA, BATCH, STREAM) else _SMALL_FRAME_LIMIT
        if length > limit:
            raise ChannelProtocolError(
                f"{KIND_NAMES[kind]} frame of {length} bytes exceeds the limit of {limit} bytes"
            )
        self._check_header(kind, length)

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

    def _check_header(self, kind, length):
        """Refuse a frame from its header (raise ChannelProtocolError); each side adds its rules."""

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
        self.ring = None  # the sender's shared-memory ring, once we accepted it
        self._offered = False
        self._outstanding = 0  # credits granted and not yet used by a batch
        self._pending_credit = 0
        self._flush_scheduled = False
        self._done = False  # CLOSE received or we dropped the connection on purpose
        self._abort_timer = None
        self._nonce = os.urandom(_NONCE)
        self.authenticated = False
        self._handshake_timer = None

    def connection_made(self, transport):
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self.peer = transport.get_extra_info("peername")
        self.server.connections.add(self)
        _keepalive(transport)
        self._handshake_timer = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_expired)
        self._write_frame(CHALLENGE, self._nonce)

    def _handshake_expired(self):
        if not self.authenticated:
            log.warning("data connection from %s dropped: no authentication within %.0f s",
                        self._peer_text(), HANDSHAKE_TIMEOUT_S)
            self._drop()

    def _peer_text(self):
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "an unknown peer"

    def _drop(self):
        """Close at once and keep nothing: the peer never proved it belongs to the cluster."""
        self._broken = True
        self._done = True
        self.server.connections.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def _check_header(self, kind, length):
        if not self.authenticated:
            if kind != AUTH:
                raise ChannelProtocolError(f"{KIND_NAMES[kind]} frame before authentication")
        elif kind in _BATCH_KINDS and self._outstanding <= 0:
            raise ChannelProtocolError(f"{self._describe()}: the sender sent a batch without credit")

    def _describe(self):
        peer = f"{self.peer[0]}:{self.peer[1]}" if self.peer else "unknown peer"
        return f"channel {self.channel_id!r} (from {peer})"

    def _frame(self, kind, body):
        if not self.authenticated:  # _check_header let only an AUTH of the right size through
            data = body.to_pybytes()
            nonce, mac = data[:_NONCE], data[_NONCE:]
            if not hmac.compare_digest(mac, _mac(self.server.key, b"sender", self._nonce, nonce)):
                raise ChannelProtocolError("the sender does not know the cluster secret")
            self.authenticated = True
            self._handshake_timer.cancel()
            self._grow_stage()
            self._write_frame(AUTH_OK, _mac(self.server.key, b"receiver", nonce, self._nonce))
            return
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
        if kind in _BATCH_KINDS:
            if self._outstanding <= 0:
                raise ChannelProtocolError(f"{self._describe()}: the sender sent a batch without credit")
            data = body
            if kind == SHM_BATCH or kind == SHM_STREAM:
                if self.ring is None:
                    raise ChannelProtocolError(f"{self._describe()}: {KIND_NAMES[kind]} without an accepted "
                                               "shared-memory ring")
                data = pa.py_buffer(self.ring.lease(body.to_pybytes()))
            if kind == BATCH or kind == SHM_BATCH:
                if self.schema is None:
                    raise ChannelProtocolError(f"{self._describe()}: {KIND_NAMES[kind]} before any SCHEMA frame")
                batch = pa.ipc.read_record_batch(data, self.schema)
            else:
                batch = pa.ipc.open_stream(data).read_next_batch()
            self._outstanding -= 1
            self.batches += 1
            self.wire_bytes += body.size
            metrics = ch.metrics
            if data is not body:
                metrics["shm_batches_received"] = metrics.get("shm_batches_received", 0) + 1
                metrics["shm_bytes_received"] = metrics.get("shm_bytes_received", 0) + data.size
            ch.deliver(batch)
            metrics["wire_bytes_received"] = self.wire_bytes
        elif kind == SCHEMA:
            self.schema = pa.ipc.read_schema(body)
        elif kind == EVENT:
            ch.deliver(events.from_dict(json.loads(body.to_pybytes())))
        elif kind == SHM_OFFER:
            self._answer_offer(body.to_pybytes())
        elif kind == CLOSE:
            self._done = True
            ch.close_with(ChannelClosed(f"{self._describe()} was closed by its sender", self.channel_id))
            self.transport.close()
        else:
            raise ChannelProtocolError(f"{self._describe()}: unexpected {KIND_NAMES[kind]} frame from a sender")

    def _answer_offer(self, offer):
        """Map the sender's ring if we can (SHM_ACCEPT), else say why not (SHM_REFUSE)."""
        if self._offered:
            raise ChannelProtocolError(f"{self._describe()}: a second SHM_OFFER")
        self._offered = True
        if not self.server.shm:
            self._write_frame(SHM_REFUSE, b"shared memory is off on the receiving data server")
            return
        try:
            self.ring, ours = shm.ReceiverRing.open(offer)
        except shm.ShmRefused as exc:
            log.info("%s: shared memory refused, the channel stays TCP: %s", self._describe(), exc)
            self._write_frame(SHM_REFUSE, str(exc).encode("utf-8")[:_SMALL_FRAME_LIMIT])
            return
        self._write_frame(SHM_ACCEPT, ours)

    def _protocol_error(self, exc):
        if not self.authenticated:
            log.warning("data connection from %s refused: %s", self._peer_text(), exc)
            self._drop()
            return
        self.ring = None
        if isinstance(exc, SabotError):
            # kept by the channel until it is released: without the frames of the bad frame's
            # handling (they hold the ring's mapping, and the sender's bytes)
            err = exc.with_traceback(None)
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
        self.ring = None  # batches built on it keep the mapping until they are freed
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
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

    def __init__(self, channel, key):
        super().__init__()
        self.channel = channel
        self.key = key
        loop = asyncio.get_running_loop()
        self.closed = loop.create_future()
        self.authenticated = loop.create_future()  # the receiver proved it knows the key
        # connect() may have given up waiting (timeout): a late failure is not "never retrieved"
        self.authenticated.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._nonce = os.urandom(_NONCE)
        self._server_nonce = None
        self.shm_answer = None  # a future while a SHM_OFFER waits: the receiver's nonce, or None

    def connection_made(self, transport):
        self.transport = transport
        _keepalive(transport)

    def _answer_shm(self, value):
        answer = self.shm_answer
        if answer is not None and not answer.done():
            answer.set_result(value)

    def _check_header(self, kind, length):
        if self._server_nonce is None and kind != CHALLENGE:
            raise ChannelProtocolError(f"{KIND_NAMES[kind]} frame before the receiver's CHALLENGE")
        if self._server_nonce is not None and not self.authenticated.done() and kind != AUTH_OK:
            raise ChannelProtocolError(f"{KIND_NAMES[kind]} frame before the receiver's AUTH_OK")

    def _frame(self, kind, body):
        if kind == CHALLENGE and self._server_nonce is None:
            self._server_nonce = body.to_pybytes()
            self._write_frame(AUTH, self._nonce + _mac(self.key, b"sender", self._server_nonce, self._nonce))
            self._write_frame(HELLO, self.channel.channel_id.encode("utf-8"))
            return
        if kind == AUTH_OK and not self.authenticated.done():
            if not hmac.compare_digest(body.to_pybytes(),
                                       _mac(self.key, b"receiver", self._nonce, self._server_nonce)):
                raise ChannelProtocolError("the receiving data server does not know the cluster secret")
            self.authenticated.set_result(None)
            self._grow_stage()
            return
        if kind == CREDIT:
            if body.size != CREDIT_BODY.size:
                raise ChannelProtocolError(f"CREDIT frame of {body.size} bytes, expected {CREDIT_BODY.size}")
            (n,) = CREDIT_BODY.unpack(body.to_pybytes())
            self.channel.grant(n)
        elif kind == SHM_ACCEPT or kind == SHM_REFUSE:
            if self.shm_answer is None:
                raise ChannelProtocolError(f"{KIND_NAMES[kind]} frame without a SHM_OFFER")
            if kind == SHM_REFUSE:
                log.info("channel %r: %s refused shared memory: %s", self.channel.channel_id, self.channel.peer,
                         body.to_pybytes().decode("utf-8", "replace"))
            # an answer after connect() stopped waiting is dropped: the ring is gone by then
            self._answer_shm(body.to_pybytes() if kind == SHM_ACCEPT else None)
        elif kind == ERROR:
            self._answer_shm(None)
            message = body.to_pybytes().decode("utf-8", "replace")
            self.channel.abort(
                ChannelClosed(f"channel {self.channel.channel_id!r}: the receiver {self.channel.peer} "
                              f"dropped the channel: {message}", self.channel.channel_id)
            )
            self.transport.close()
        else:
            raise ChannelProtocolError(f"unexpected {KIND_NAMES[kind]} frame from a receiver")

    def _protocol_error(self, exc):
        if not self.authenticated.done():
            self.authenticated.set_exception(exc)
        self._answer_shm(None)
        self.channel.abort(
            ChannelProtocolError(
                f"channel {self.channel.channel_id!r}: bad data from the receiver {self.channel.peer}: {exc}",
                self.channel.channel_id,
            )
        )
        self.transport.abort()

    def connection_lost(self, exc):
        self.channel._server.connections.discard(self)
        self._answer_shm(None)
        self.channel._close_ring()
        if not self.authenticated.done():
            self.authenticated.set_exception(ChannelClosed(
                f"channel {self.channel.channel_id!r}: the data server at {self.channel.peer} closed the "
                "connection during the handshake (a different cluster secret?)", self.channel.channel_id))
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
    """Sending end of a channel to another process's DataServer, over TCP (and shared memory).

    ``metrics`` adds ``wire_bytes_sent`` (frame bytes written to the socket),
    ``shm_batches_sent`` and ``shm_bytes_sent`` (batches and IPC bytes that went through
    the shared-memory ring) and ``shm_fallbacks`` (batches big enough for the ring that
    went over TCP because it had no room).
    """

    def __init__(self, channel_id, host, port, server, close_timeout=30.0):
        super().__init__(channel_id)
        self.host = host
        self.port = port
        self.peer = f"{host}:{port}"
        self.close_timeout = close_timeout
        self.metrics.update(wire_bytes_sent=0, shm_batches_sent=0, shm_bytes_sent=0, shm_fallbacks=0)
        self._server = server
        self._protocol = None
        self._schema = None
        self._schema_bytes = 0  # length of the schema message that opens each IPC stream
        self._dictionary = False
        self._ring = None  # a shared-memory ring the receiver mapped
        self._doorbells = bytearray()  # doorbell frames not yet written
        self._shm_min_bytes = server.shm_min_bytes

    @property
    def shared_memory(self) -> bool:
        """True while large batches go through a shared-memory ring."""
        return self._ring is not None

    def _close_ring(self):
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()

    def _write(self, kind, payload=b""):
        if self._doorbells:
            self._flush_doorbells()
        if len(payload) > MAX_FRAME_BYTES:
            raise ChannelProtocolError(
                f"channel {self.channel_id!r}: a {KIND_NAMES[kind]} frame of {len(payload)} bytes exceeds "
                f"the data plane's limit of {MAX_FRAME_BYTES} bytes; use smaller batches", self.channel_id)
        self.metrics["wire_bytes_sent"] += self._protocol._write_frame(kind, payload)

    def _send_batch(self, batch, nbytes):
        schema = batch.schema
        if self._schema is None or not schema.equals(self._schema, check_metadata=True):
            self._schema = schema
            self._dictionary = _schema_has_dictionary(schema)
            if not self._dictionary:
                message = schema.serialize()
                self._schema_bytes = message.size
                self._write(SCHEMA, message)
        if self._ring is not None and self._send_shared(batch):
            return
        if self._dictionary:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as writer:
                writer.write_batch(batch)
            self._write(STREAM, sink.getvalue())
        else:
            self._write(BATCH, batch.serialize())

    def _send_shared(self, batch):
        """Write ``batch`` into the ring and ring the doorbell; False: send it over TCP."""
        schema = self._schema
        if self._dictionary:  # its dictionaries ride along: size the whole stream first
            mock = pa.MockOutputStream()
            with pa.ipc.RecordBatchStreamWriter(mock, schema, options=_IPC_OPTIONS) as writer:
                writer.write_batch(batch)
            size = mock.size()
            skip = 0
            kind = SHM_STREAM
        else:  # the receiver reads the batch message after the stream's schema message
            skip = self._schema_bytes
            size = skip + pa.ipc.get_record_batch_size(batch) + 8  # + end-of-stream marker
            kind = SHM_BATCH
        if size < self._shm_min_bytes:
            return False
        ring = self._ring
        reserved = ring.reserve(size)
        if reserved is None:
            self.metrics["shm_fallbacks"] += 1
            return False
        seq, slot, offset = reserved
        try:
            sink = pa.FixedSizeBufferWriter(pa.py_buffer(ring.region(offset, size)))
            with pa.ipc.RecordBatchStreamWriter(sink, schema, options=_IPC_OPTIONS) as writer:
                writer.write_batch(batch)
            written = sink.tell()
            if written != size:
                raise ValueError(f"wrote {written} bytes, expected {size}")
        except (pa.ArrowException, ValueError) as exc:  # a layout we mis-sized: TCP carries it
            ring.cancel(seq)
            log.warning("channel %r: a batch did not fit its shared-memory region (%s); sending it over TCP",
                        self.channel_id, exc)
            return False
        length = size - skip - (8 if kind == SHM_BATCH else 0)
        self._ring_doorbell(kind, seq, slot, offset + skip, length)
        metrics = self.metrics
        metrics["shm_batches_sent"] += 1
        metrics["shm_bytes_sent"] += length
        return True

    def _ring_doorbell(self, kind, seq, slot, offset, length):
        """Queue a doorbell frame; the doorbells of one loop iteration go out in one write.

        A write per doorbell wakes the receiving process per batch; a sender with credit
        sends several batches without yielding, and the receiver then handles them in one
        wake-up (measured: no slower than a write each, fewer syscalls). Any other frame
        flushes the queue first, so order is kept.
        """
        doorbells = self._doorbells
        if not doorbells:
            asyncio.get_running_loop().call_soon(self._flush_doorbells)
        doorbells += _DOORBELL_FRAME.pack(kind, shm.DOORBELL.size, seq, slot, offset, length)

    def _flush_doorbells(self):
        doorbells = self._doorbells
        if doorbells and self._protocol._writable():
            self._protocol.transport.write(bytes(doorbells))
            self.metrics["wire_bytes_sent"] += len(doorbells)
        doorbells.clear()

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
            # else (TLS has no half-close): the receiver closes the connection once it has
            # read CLOSE; closing here could reset it with the receiver's CREDIT frames unread
        try:
            async with asyncio.timeout(self.close_timeout):
                await asyncio.shield(protocol.closed)
        except TimeoutError:
            log.warning("channel %r: %s did not take our last frames within %.1f s; aborting",
                        self.channel_id, self.peer, self.close_timeout)
            transport.abort()
        else:
            transport.close()
        self._close_ring()


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
                transport, protocol = await loop.create_connection(
                    lambda: SenderProtocol(channel, server.key), host, port, ssl=server.client_ssl,
                    server_hostname=host if server.client_ssl is not None else None)
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
    try:  # AUTH and HELLO go out when the CHALLENGE arrives; the receiver must prove itself too
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            await asyncio.shield(protocol.authenticated)
    except BaseException as exc:
        transport.abort()
        server.connections.discard(protocol)
        if isinstance(exc, TimeoutError):
            raise ChannelClosed(f"channel {channel_id!r}: no handshake with the data server at {host}:{port} "
                                f"within {HANDSHAKE_TIMEOUT_S:.0f} s", channel_id) from None
        if isinstance(exc, (ChannelClosed, ChannelProtocolError)):
            raise ChannelClosed(f"channel {channel_id!r}: handshake with the data server at {host}:{port} "
                                f"failed: {exc}", channel_id) from None
        raise
    if server.shm:
        await _offer_shared_memory(server, channel, protocol)
    return channel


async def _offer_shared_memory(server, channel, protocol):
    """Offer the receiver a shared-memory ring; keep it if the receiver mapped it.

    Only now, with both ends authenticated, is the segment made. A refusal, an error or
    no answer within the handshake timeout leaves the channel on TCP.
    """
    try:
        ring = shm.SenderRing(server.shm_ring_bytes)
    except OSError as exc:
        log.info("channel %r: no shared-memory ring (%s); the channel stays TCP", channel.channel_id, exc)
        return
    protocol.shm_answer = asyncio.get_running_loop().create_future()
    answer = None
    try:
        if protocol._writable():
            protocol._write_frame(SHM_OFFER, ring.offer())
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                answer = await asyncio.shield(protocol.shm_answer)
    except TimeoutError:
        log.info("channel %r: %s did not answer our shared-memory offer within %.0f s; the channel stays TCP",
                 channel.channel_id, channel.peer, HANDSHAKE_TIMEOUT_S)
    except BaseException:  # cancelled while connecting: nothing of the channel stays
        ring.close()
        protocol.transport.abort()
        server.connections.discard(protocol)
        raise
    finally:
        ring.close_fd()  # the receiver has mapped it, or never will
    if answer is not None and not ring.confirm(answer):
        log.warning("channel %r: %s accepted our shared-memory ring but its mark is not in it; the channel "
                    "stays TCP", channel.channel_id, channel.peer)
        answer = None
    if answer is None or channel._closed or channel._error is not None:
        ring.close()
    else:
        channel._ring = ring

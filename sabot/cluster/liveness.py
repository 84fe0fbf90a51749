"""The coordinator's end of worker heartbeats: a small TCP server, one connection per worker.

Each worker sends its beats from a native thread that never takes the GIL
(:class:`sabot._core.liveness.HeartbeatThread`), so a worker whose Python is busy
(a function holding the GIL, a big deployment) keeps beating; a stopped worker
(SIGSTOP, a partition) falls silent and is declared lost after the heartbeat
timeout; a killed one closes the connection, which is reported at once.

Wire format: the server first sends a 16-byte random challenge; the worker answers with
a hello frame, a 4-byte big-endian length and a JSON object ``{"node_id": ...,
"proof": hex HMAC-SHA256(ticket, "sabot-liveness" + challenge)}`` (at most
:data:`MAX_HELLO` bytes, within :data:`HELLO_TIMEOUT_S`), where ``ticket`` is the random
secret the coordinator handed the worker in its (authenticated) registration answer; then
8-byte beats. A connection that cannot prove the ticket is dropped, so nobody else can
keep a dead worker "alive" or make a live one look lost by opening its heartbeat. The
server answers every chunk of beats with one 8-byte ack, so the worker sees a stopped or
hung coordinator too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import struct

log = logging.getLogger(__name__)

__all__ = ["LivenessServer"]

MAX_HELLO = 4096
HELLO_TIMEOUT_S = 5.0
_LENGTH = struct.Struct(">I")
_ACK = b"\x01" + b"\x00" * 7
CHALLENGE_BYTES = 16


def proof(ticket, challenge):
    """What a worker holding ``ticket`` answers to ``challenge``."""
    return hmac.new(ticket.encode("ascii"), b"sabot-liveness" + challenge, hashlib.sha256).hexdigest()


class _Connection(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.transport = None
        self.node_id = None
        self.buffer = bytearray()
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        self.challenge = os.urandom(CHALLENGE_BYTES)
        self.timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._refuse, "no hello in time")
        transport.write(self.challenge)

    def _refuse(self, why):
        log.warning("liveness connection from %s refused: %s", self.transport.get_extra_info("peername"), why)
        self.transport.abort()

    def data_received(self, data):
        if self.node_id is not None:
            self.server.beat(self, data)
            return
        self.buffer += data
        if len(self.buffer) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack_from(self.buffer)
        if length > MAX_HELLO:
            self._refuse(f"a hello of {length} bytes (at most {MAX_HELLO})")
            return
        if len(self.buffer) < _LENGTH.size + length:
            return
        hello, rest = bytes(self.buffer[_LENGTH.size:_LENGTH.size + length]), self.buffer[_LENGTH.size + length:]
        self.buffer = bytearray()
        self.timer.cancel()
        try:
            message = json.loads(hello)
            node_id, given = message["node_id"], message["proof"]
            if not isinstance(node_id, str) or not isinstance(given, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._refuse("a malformed hello")
            return
        why = self.server.accept(self, node_id, given)
        if why:
            self._refuse(why)
            return
        if rest:
            self.server.beat(self, rest)

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
        self.server.closed(self, exc)


class LivenessServer:
    """Accepts one heartbeat connection per registered worker.

    Args:
        registry: the :class:`~sabot.cluster.nodes.NodeRegistry` (``heard_from``, ``lose``).
        host: address to bind.
    """

    def __init__(self, registry, host="127.0.0.1"):
        self.registry = registry
        self.host = host
        self.port = None
        self._server = None
        self._connections = {}  # node_id -> _Connection
        self._tickets = {}  # node_id -> the secret of its current registration
        self.beats = 0

    def issue_ticket(self, node_id):
        """A new random ticket for a (re-)registered node; its heartbeat must prove it."""
        ticket = self._tickets[node_id] = secrets.token_hex(16)
        return ticket

    async def start(self, port=0):
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.transport.abort()
        self._connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def accept(self, conn, node_id, given_proof):
        """A hello: the connection is the node's heartbeat (None), or why it is refused."""
        if node_id not in self.registry:
            return f"node {node_id!r} is not registered"
        ticket = self._tickets.get(node_id)
        if ticket is None or not hmac.compare_digest(given_proof, proof(ticket, conn.challenge)):
            return f"the hello for node {node_id!r} does not prove its registration ticket"
        old = self._connections.get(node_id)
        if old is not None and old is not conn:
            old.node_id = None  # replaced (the worker rejoined): its loss means nothing now
            old.transport.abort()
        conn.node_id = node_id
        self._connections[node_id] = conn
        self.registry.heard_from(node_id)
        return None

    def beat(self, conn, data):
        self.beats += len(data) // 8 or 1
        self.registry.heard_from(conn.node_id)
        conn.transport.write(_ACK)

    def closed(self, conn, exc):
        node_id = conn.node_id
        if node_id is None or self._connections.get(node_id) is not conn:
            return
        del self._connections[node_id]
        reason = "its heartbeat connection closed" + (f" ({exc})" if exc else "")
        self.registry.lose(node_id, reason)

    def disconnect(self, node_id):
        """The node was declared lost: close its heartbeat connection (the worker notices)."""
        self._tickets.pop(node_id, None)
        conn = self._connections.pop(node_id, None)
        if conn is not None:
            conn.node_id = None
            conn.transport.close()

    def is_connected(self, node_id):
        return node_id in self._connections

"""DataServer: one per process; registers receiving ends and opens sending ends of channels.

Channels whose two ends live in this process are in-process queues
(:class:`~sabot.runtime.channels.LocalOutputChannel`); others are TCP connections to
the receiving process's DataServer (:mod:`sabot.runtime.network`), whose large batches
go through shared memory when both processes are on one host (:mod:`sabot.runtime.shm`).
"""

import asyncio
import logging
import os

from sabot.runtime import network
from sabot.runtime import shm as _shm  # the name shm is DataServer's switch
from sabot.runtime.channels import (
    ChannelClosed,
    DuplicateChannel,
    InputChannel,
    LocalOutputChannel,
    OutputChannel,
    _check_credits,
)

log = logging.getLogger(__name__)

__all__ = ["DataServer"]

#: environment switch: ``SABOT_SHM=0`` keeps every channel on TCP (both directions)
SHM_ENV = "SABOT_SHM"
#: default ring per channel: address space; only the pages batches in flight use are backed
DEFAULT_SHM_RING_BYTES = 64 << 20
#: default smallest batch (IPC bytes) sent through the ring. Measured between two processes
#: (``bench/bench_channels.py --threshold``): TCP is as fast or faster up to ~2 KiB, the ring
#: faster from ~4 KiB (1.2x at 4-16 KiB, 2x at 64 KiB, 4x at 1 MiB); 8 KiB keeps a margin.
DEFAULT_SHM_MIN_BYTES = 8 << 10


_MIN_RING = _shm.HEADER_BYTES + _shm.PAGE
_MAX_RING = _shm.MAX_RING_BYTES


def _job_of(channel_id):
    """The job a channel id belongs to (ids are ``<job_id>/...``; see sabot.execution.deployment)."""
    return channel_id.split("/", 1)[0]


class DataServer:
    """One per process: registers receiving ends and opens sending ends of channels.

    Args:
        host: interface the TCP listener binds to and the host part of :attr:`address`.
        credits: buffers each receiving channel grants its sender.
        connect_timeout: how long :meth:`output_channel` keeps retrying a refused
            TCP connection (the receiving worker may still be starting).
        key: the data plane's key (``protocol.derive_key(secret, "data")``): every TCP
            connection, in either direction, proves it knows it before anything else
            (:mod:`sabot.runtime.network`). b"": a cluster without a secret.
        server_ssl, client_ssl: ``ssl.SSLContext`` for the listener and for connections
            to other data servers (TLS); None: plain TCP.
        shm: offer (as a sender) and accept (as a receiver) shared-memory rings for
            channels between processes of one host; None: on where the platform has
            ``memfd_create`` unless ``$SABOT_SHM`` is ``0``. TLS settings do not apply to
            what goes through shared memory: it never leaves the host.
        shm_ring_bytes: size of each sending channel's ring (virtual: pages are backed
            as batches use them); it bounds what batches a receiver keeps may pin, after
            which batches go over TCP.
        shm_min_bytes: batches whose IPC form is smaller go over TCP.
    """

    def __init__(self, host="127.0.0.1", credits=8, *, connect_timeout=10.0, key=b"", server_ssl=None,
                 client_ssl=None, shm=None, shm_ring_bytes=DEFAULT_SHM_RING_BYTES,
                 shm_min_bytes=DEFAULT_SHM_MIN_BYTES):
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, got {type(key).__name__}")
        if shm is None:
            shm = os.environ.get(SHM_ENV, "1") != "0"
        self.shm = bool(shm) and _shm.AVAILABLE
        if isinstance(shm_ring_bytes, bool) or not isinstance(shm_ring_bytes, int) \
                or shm_ring_bytes % _shm.PAGE or not _MIN_RING <= shm_ring_bytes <= _MAX_RING:
            raise ValueError(f"shm_ring_bytes must be a multiple of {_shm.PAGE} between {_MIN_RING} and "
                             f"{_MAX_RING}, got {shm_ring_bytes!r}")
        if isinstance(shm_min_bytes, bool) or not isinstance(shm_min_bytes, int) or shm_min_bytes < 0:
            raise ValueError(f"shm_min_bytes must be an int >= 0, got {shm_min_bytes!r}")
        self.shm_ring_bytes = shm_ring_bytes
        self.shm_min_bytes = shm_min_bytes
        self.host = host
        self.key = key
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.credits = _check_credits(credits)
        self.connect_timeout = float(connect_timeout)
        self._channels = {}  # channel_id -> InputChannel (registered or awaiting registration)
        self._server = None
        self._address = None
        self.connections = set()  # live network protocols, both directions
        # ids released here, by job (a channel id starts with "<job_id>/"): a late sender is
        # refused, not left waiting; forgotten when the job is released (release_job)
        self._released = {}
        self._stopped = False

    @property
    def address(self):
        """``(host, port)`` the TCP listener is bound to, or None before :meth:`start`."""
        return self._address

    async def start(self, port=0):
        """Listen for TCP data connections on ``(host, port)``; port 0 picks a free one."""
        if self._server is not None:
            raise RuntimeError(f"data server already listening on {self._address}")
        self._stopped = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: network.ReceiverProtocol(self), self.host, port, ssl=self.server_ssl
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (self.host, sockname[1])
        log.info("data server listening on %s:%d", *self._address)
        return self._address

    def input_channel(self, channel_id) -> InputChannel:
        """Register the receiving end of ``channel_id`` and return it.

        A sender may already be connected (it then gets its credits now).

        Raises:
            DuplicateChannel: ``channel_id`` is already registered here.
        """
        if not isinstance(channel_id, str) or not channel_id:
            raise ValueError(f"channel_id must be a non-empty str, got {channel_id!r}")
        self._released.get(_job_of(channel_id), set()).discard(channel_id)
        ch = self._channels.get(channel_id)
        if ch is None:
            ch = self._channels[channel_id] = InputChannel(channel_id, self.credits)
        elif ch.registered:
            raise DuplicateChannel(
                f"channel {channel_id!r} is already registered on this data server; release it first"
            )
        ch.register()
        return ch

    def channel_for_sender(self, channel_id):
        """The InputChannel a sender attaches to, created (unregistered) if needed."""
        ch = self._channels.get(channel_id)
        if ch is None:
            if self._stopped:
                raise ChannelClosed(f"data server is stopped; cannot open channel {channel_id!r}", channel_id)
            if channel_id in self._released.get(_job_of(channel_id), ()):
                raise ChannelClosed(
                    f"channel {channel_id!r} was released on this data server (its reader is gone); "
                    "a sender of a superseded attempt cannot reopen it", channel_id)
            ch = self._channels[channel_id] = InputChannel(channel_id, self.credits)
        return ch

    def _is_local(self, host, port):
        if host is None:
            return True
        return self._address is not None and (host, port) == self._address

    async def output_channel(self, channel_id, host=None, port=None) -> OutputChannel:
        """Open the sending end of ``channel_id``.

        ``host`` None (or our own address) gives an in-process channel to our own
        ``input_channel(channel_id)``, which may be registered before or after;
        otherwise a TCP connection to the DataServer at ``(host, port)``.

        Raises:
            DuplicateChannel: the channel already has a sender.
            ConnectionError: the remote data server could not be reached within
                ``connect_timeout`` seconds.
        """
        if not isinstance(channel_id, str) or not channel_id:
            raise ValueError(f"channel_id must be a non-empty str, got {channel_id!r}")
        if self._is_local(host, port):
            target = self.channel_for_sender(channel_id)
            out = LocalOutputChannel(channel_id, target)
            target.attach_sender(out)
            return out
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"a remote channel needs host and a TCP port, got host={host!r} port={port!r}")
        return await network.connect(self, channel_id, host, port, timeout=self.connect_timeout)

    def release(self, channel_id):
        """Unregister ``channel_id``: its reader and its sender get ChannelClosed.

        Releasing an id that is not known is a no-op, so cleanup code may call it freely.
        """
        self._released.setdefault(_job_of(channel_id), set()).add(channel_id)
        ch = self._channels.pop(channel_id, None)
        if ch is None:
            return
        exc = ChannelClosed(f"channel {channel_id!r} was released on this data server", channel_id)
        ch.close_with(exc)
        if ch._sender is not None:
            ch._sender.abort(exc)

    def release_job(self, job_id):
        """Forget everything of ``job_id`` here: its channels are released and the record of
        their ids dropped (the job ended long ago; nothing of it will send again)."""
        prefix = f"{job_id}/"
        for channel_id in [c for c in self._channels if c.startswith(prefix)]:
            self.release(channel_id)
        self._released.pop(job_id, None)

    async def stop(self):
        """Stop listening, drop every connection and close every channel."""
        self._stopped = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        # drop connections before waiting: newer Pythons' wait_closed waits for them
        for conn in list(self.connections):
            conn.abort_connection()
        if server is not None:
            await server.wait_closed()
        for channel_id in list(self._channels):
            ch = self._channels.pop(channel_id)
            exc = ChannelClosed(f"channel {channel_id!r}: data server stopped", channel_id)
            ch.close_with(exc)
            if ch._sender is not None:
                ch._sender.abort(exc)
        for conn in list(self.connections):
            conn.abort_connection()
        self.connections.clear()
        self._address = None

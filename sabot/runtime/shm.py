"""Shared-memory rings: same-host channels whose batches cross without a socket.

A network channel (:mod:`sabot.runtime.network`) whose two ends turn out to share a host
moves large batches through a ring of shared memory instead of the TCP stream; the TCP
connection stays the control path (credits, doorbells, events, CLOSE, ERROR).

The ring
    One per channel, made by the sender after the HMAC handshake: a ``memfd`` (anonymous:
    nothing in ``/dev/shm``, gone when the last process holding it exits, ``kill -9``
    included), mode 0600, sealed against shrinking and growing so that a mapping can
    never fault past its end (SIGBUS). Layout::

        [0, 64)               preamble: magic, version, sender nonce, receiver nonce
        [64, HEADER_BYTES)    release words: one uint64 per slot
        [HEADER_BYTES, size)  data: IPC messages, each at a 64-byte aligned offset

    Pages are only backed once written, and the sender places every batch at the lowest
    free offset (first fit), so a channel touches about as much memory as it has batches
    in flight, and those pages stay warm in the cache; the capacity only bounds what
    retained batches may pin.

The offer
    The sender offers ``(pid, fd, size, nonce)`` having written the nonce into the
    preamble; the receiver opens ``/proc/<pid>/fd/<fd>``, checks that it is a sealed
    regular file of that size owned by its own user, maps it and compares the nonce, then
    writes a nonce of its own that the sender reads back. Succeeding proves one host, one
    pid and mount namespace and one user (no boot-id heuristics); anything else is a
    refusal and the channel stays plain TCP.

A batch
    The sender reserves a region, writes a one-batch IPC stream into it (one copy, as
    the TCP path's serialization makes) and rings a doorbell ``(seq, slot, offset,
    length)`` over TCP, under the same credit as a TCP batch. The receiver checks the
    doorbell (bounds, alignment, slot, sequence: anything else closes the connection),
    and builds the batch on the mapping without copying. The Arrow buffers hold a
    :class:`~sabot._core.shm.Lease`; when the last one is freed, the lease stores the
    sequence number in its slot's release word (no message), and the sender reclaims the
    region on its next reservation. A receiver that keeps batches (a window, a collect
    sink) keeps their regions; when no region is free the batch goes over TCP.
"""

import errno
import fcntl
import hmac
import logging
import mmap
import os
import secrets
import stat
import struct

from sabot._core.shm import Lease, released_slots
from sabot.runtime.channels import ChannelProtocolError

log = logging.getLogger(__name__)

__all__ = ["AVAILABLE", "ReceiverRing", "SenderRing", "ShmRefused"]

AVAILABLE = hasattr(os, "memfd_create") and hasattr(fcntl, "F_ADD_SEALS") and os.path.isdir("/proc/self/fd")

MAGIC = b"SABOTSHM"
VERSION = 1
PAGE = mmap.PAGESIZE
HEADER_BYTES = 16384
_PREAMBLE = struct.Struct("<8sI4x16s16s")  # magic, version, sender nonce, receiver nonce
_WORDS_AT = 64
#: regions live at once per ring (one release word each)
NSLOTS = (HEADER_BYTES - _WORDS_AT) // 8
#: every region starts at a multiple of this (a cache line: regions never share one)
ALIGN = 64
#: a doorbell's offset is a multiple of this: IPC messages and their buffers are 8-byte aligned
MESSAGE_ALIGN = 8
#: the largest ring a receiver maps (address space, not memory: pages are backed on use)
MAX_RING_BYTES = 1 << 32
_NONCE = 16
#: SHM_OFFER payload: pid, fd, ring size, nonce
OFFER = struct.Struct("<IIQ16s")
#: SHM_BATCH / SHM_STREAM payload: sequence number, slot, offset in the data area, length
DOORBELL = struct.Struct("<QIQQ")
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4) | getattr(fcntl, "F_SEAL_SEAL", 1)


class ShmRefused(Exception):
    """The receiver cannot use the offered segment; the message says why (the channel stays TCP)."""


def _align(n):
    return (n + ALIGN - 1) & ~(ALIGN - 1)


class SenderRing:
    """The sending end's ring: makes the segment, reserves regions, reclaims released ones.

    Args:
        size: bytes of the segment, header included (a multiple of the page size).
    """

    def __init__(self, size):
        if size % PAGE or not HEADER_BYTES + PAGE <= size <= MAX_RING_BYTES:
            raise ValueError(f"a ring must be a multiple of {PAGE} bytes between {HEADER_BYTES + PAGE} and "
                             f"{MAX_RING_BYTES}, got {size}")
        fd = os.memfd_create("sabot-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size
        self.data_size = size - HEADER_BYTES
        self.nonce = secrets.token_bytes(_NONCE)
        self._map[:_PREAMBLE.size] = _PREAMBLE.pack(MAGIC, VERSION, self.nonce, b"\0" * _NONCE)
        self._view = memoryview(self._map)
        self._data = self._view[HEADER_BYTES:]
        self._words_address = Lease.address_of(self._view) + _WORDS_AT
        self._live = []  # [start, end, seq, slot], sorted by start
        self._free_slots = list(range(NSLOTS - 1, -1, -1))
        self._seq = 0
        self.closed = False

    def offer(self):
        """The SHM_OFFER payload."""
        return OFFER.pack(os.getpid(), self.fd, self.size, self.nonce)

    def confirm(self, receiver_nonce):
        """True if the receiver's nonce (from its SHM_ACCEPT) is in our mapping: it mapped this ring."""
        _, _, _, seen = _PREAMBLE.unpack_from(self._map, 0)
        return len(receiver_nonce) == _NONCE and any(receiver_nonce) and hmac.compare_digest(seen, receiver_nonce)

    def close_fd(self):
        """The receiver has mapped the ring (or never will): the mapping is all we need."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def live_regions(self):
        """Regions reserved and not yet known to be released."""
        return len(self._live)

    def reserve(self, nbytes):
        """Reserve ``nbytes`` at the lowest free offset; ``(seq, slot, offset)`` or None (full)."""
        need = _align(nbytes)
        if self._live:
            self._reclaim()
        live = self._live
        if need > self.data_size or not self._free_slots:
            return None
        start = 0
        at = len(live)
        for i, region in enumerate(live):
            if region[0] - start >= need:
                at = i
                break
            start = region[1]
        else:
            if self.data_size - start < need:
                return None
        self._seq += 1
        slot = self._free_slots.pop()
        live.insert(at, [start, start + need, self._seq, slot])
        return self._seq, slot, start

    def cancel(self, seq):
        """Give back a region that was reserved but never announced (writing it failed)."""
        for i, region in enumerate(self._live):
            if region[2] == seq:
                del self._live[i]
                self._free_slots.append(region[3])
                return

    def _reclaim(self):
        done = released_slots(self._words_address, self._live)
        if done:
            self._live = [r for r in self._live if r[3] not in done]
            self._free_slots.extend(done)

    def region(self, offset, nbytes):
        """A writable view of ``nbytes`` at ``offset`` in the data area."""
        return self._data[offset:offset + nbytes]

    def close(self):
        """Unmap (the receiver's mapping and its batches stay valid) and close the fd."""
        if self.closed:
            return
        self.closed = True
        self.close_fd()
        self._live = []
        try:
            self._data.release()
            self._view.release()
            self._map.close()
        except BufferError:  # a region's view is still referenced: unmapped when it goes
            log.debug("shared-memory ring still referenced at close; unmapped later")


class ReceiverRing:
    """The receiving end's mapping of a sender's ring: checks doorbells, lends regions.

    Made by :meth:`open`. Batches built on it keep the mapping alive; nothing else does,
    so when the channel ends and its batches are freed the memory goes.
    """

    def __init__(self, header, data, size):
        self._header = header
        self._data = data
        self.size = size
        self.data_size = size - HEADER_BYTES
        self._words_address = Lease.address_of(header) + _WORDS_AT
        self._address = Lease.address_of(data)
        self._next_seq = 1

    @classmethod
    def open(cls, offer):
        """Map the ring named by an SHM_OFFER payload; returns ``(ring, receiver_nonce)``.

        Raises:
            ShmRefused: the segment cannot be opened, is not what was announced, or
                does not hold the sender's nonce (another host, namespace or user).
            ChannelProtocolError: the payload is malformed.
        """
        if len(offer) != OFFER.size:
            raise ChannelProtocolError(f"SHM_OFFER of {len(offer)} bytes, expected {OFFER.size}")
        pid, fd, size, nonce = OFFER.unpack(offer)
        if size % PAGE or not HEADER_BYTES + PAGE <= size <= MAX_RING_BYTES:
            raise ChannelProtocolError(f"SHM_OFFER names a ring of {size} bytes; a ring is a multiple of {PAGE} "
                                       f"bytes between {HEADER_BYTES + PAGE} and {MAX_RING_BYTES}")
        if pid == 0:
            raise ChannelProtocolError("SHM_OFFER names pid 0")
        path = f"/proc/{pid}/fd/{fd}"
        try:
            # O_NONBLOCK: whatever the path names, opening it must not wait (a FIFO would)
            handle = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise ShmRefused(f"cannot open {path}: {os.strerror(exc.errno) if exc.errno else exc}") from None
        try:
            st = os.fstat(handle)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                raise ShmRefused(f"{path} is not a {size}-byte segment")
            if st.st_uid != os.geteuid():
                raise ShmRefused(f"{path} belongs to uid {st.st_uid}, not to us ({os.geteuid()})")
            try:
                seals = fcntl.fcntl(handle, fcntl.F_GET_SEALS)
            except OSError as exc:
                raise ShmRefused(f"{path} cannot be sealed ({errno.errorcode.get(exc.errno, exc.errno)})") from None
            if seals & _SEALS != _SEALS:
                # an unsealed segment could shrink under our mapping: reading it would be a SIGBUS
                raise ShmRefused(f"{path} is not sealed against resizing")
            try:
                header = mmap.mmap(handle, HEADER_BYTES)
                data = mmap.mmap(handle, size - HEADER_BYTES, offset=HEADER_BYTES, prot=mmap.PROT_READ)
            except OSError as exc:
                raise ShmRefused(f"cannot map {path}: {exc}") from None
        finally:
            os.close(handle)
        magic, version, seen, _ = _PREAMBLE.unpack_from(header, 0)
        if magic != MAGIC or version != VERSION or not hmac.compare_digest(seen, nonce):
            header.close()
            data.close()
            raise ShmRefused(f"{path} does not hold the sender's segment (another host or namespace?)")
        ours = secrets.token_bytes(_NONCE)
        header[_PREAMBLE.size - _NONCE:_PREAMBLE.size] = ours
        return cls(header, data, size), ours

    def lease(self, doorbell):
        """The region a SHM_BATCH / SHM_STREAM payload names, as a :class:`Lease`.

        Raises:
            ChannelProtocolError: the doorbell is malformed or names memory outside the
                ring, a misaligned offset, an unknown slot or an out-of-order sequence.
        """
        if len(doorbell) != DOORBELL.size:
            raise ChannelProtocolError(f"doorbell of {len(doorbell)} bytes, expected {DOORBELL.size}")
        seq, slot, offset, length = DOORBELL.unpack(doorbell)
        if seq != self._next_seq:
            raise ChannelProtocolError(f"doorbell with sequence number {seq}, expected {self._next_seq}")
        if slot >= NSLOTS:
            raise ChannelProtocolError(f"doorbell names slot {slot}; the ring has {NSLOTS}")
        if offset % MESSAGE_ALIGN:
            raise ChannelProtocolError(f"doorbell offset {offset} is not a multiple of {MESSAGE_ALIGN}")
        if length == 0:
            raise ChannelProtocolError("doorbell names an empty region")
        if offset > self.data_size or length > self.data_size - offset:
            raise ChannelProtocolError(f"doorbell names bytes [{offset}, {offset + length}) outside the ring's "
                                       f"data area of {self.data_size} bytes")
        self._next_seq += 1
        return Lease(self, self._address + offset, length, self._words_address + 8 * slot, seq)

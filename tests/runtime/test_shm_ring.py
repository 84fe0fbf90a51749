"""sabot.runtime.shm: the ring's allocation, its segment, and the receiver's checks."""

import fcntl
import gc
import os
import stat

import pyarrow as pa
import pytest

from sabot.runtime import shm
from sabot.runtime.channels import ChannelProtocolError

pytestmark = pytest.mark.skipif(not shm.AVAILABLE, reason="needs memfd_create and /proc (Linux)")

MiB = 1 << 20


def pair(data_bytes=MiB):
    sender = shm.SenderRing(shm.HEADER_BYTES + data_bytes)
    receiver, nonce = shm.ReceiverRing.open(sender.offer())
    assert sender.confirm(nonce)
    return sender, receiver


def announce(receiver, reserved, length):
    seq, slot, offset = reserved
    return pa.py_buffer(receiver.lease(shm.DOORBELL.pack(seq, slot, offset, length)))


def test_the_segment_is_a_private_sealed_memfd_and_nothing_in_dev_shm():
    before = set(os.listdir("/dev/shm"))
    sender = shm.SenderRing(shm.HEADER_BYTES + MiB)
    st = os.fstat(sender.fd)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert "memfd:sabot-channel" in os.readlink(f"/proc/self/fd/{sender.fd}")
    seals = fcntl.fcntl(sender.fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
    with pytest.raises(OSError):
        os.ftruncate(sender.fd, MiB)  # nobody can shrink it under a mapping
    assert set(os.listdir("/dev/shm")) == before
    sender.close()
    assert sender.fd == -1


def test_regions_go_to_the_lowest_free_offset_and_come_back_when_released():
    sender, receiver = pair()
    a = sender.reserve(100)
    b = sender.reserve(1000)
    c = sender.reserve(100)
    assert [r[2] for r in (a, b, c)] == [0, 128, 1152]  # 64-byte aligned, packed
    assert [r[0] for r in (a, b, c)] == [1, 2, 3]
    first, second, third = announce(receiver, a, 100), announce(receiver, b, 1000), announce(receiver, c, 100)
    del second  # released out of order: its room is reused first
    d = sender.reserve(900)
    assert d[2] == 128 and d[1] == b[1]
    del first
    e = sender.reserve(64)
    assert e[2] == 0
    assert sender.live_regions == 3  # c, d, e
    del third
    sender.close()


def test_a_full_ring_says_so_and_recovers():
    sender, receiver = pair(MiB)
    held = [announce(receiver, sender.reserve(256 << 10), 256 << 10) for _ in range(4)]
    assert sender.reserve(64) is None
    assert sender.reserve(MiB + 1) is None  # never fits
    held.pop(2)
    r = sender.reserve(200 << 10)
    assert r is not None and r[2] == 2 * (256 << 10)
    sender.cancel(r[0])
    assert sender.reserve(256 << 10)[2] == 2 * (256 << 10)
    sender.close()


def test_slots_run_out_before_memory_does_for_tiny_regions():
    sender, receiver = pair(MiB)
    reserved = [sender.reserve(1) for _ in range(shm.NSLOTS)]
    assert all(reserved) and len({r[1] for r in reserved}) == shm.NSLOTS
    assert sender.reserve(1) is None
    sender.cancel(reserved[10][0])
    assert sender.reserve(1) is not None
    sender.close()


def ring_mappings():
    with open("/proc/self/maps") as f:
        return {line.split()[0]: line.split()[1] for line in f if "memfd:sabot-channel" in line}


def test_the_receiver_maps_data_read_only_and_batches_outlive_the_sender():
    before = ring_mappings()
    sender, receiver = pair()
    batch = pa.record_batch({"x": pa.array(range(1000), pa.int64())})
    mock = pa.MockOutputStream()
    with pa.ipc.new_stream(mock, batch.schema) as writer:
        writer.write_batch(batch)
    seq, slot, offset = sender.reserve(mock.size())
    sink = pa.FixedSizeBufferWriter(pa.py_buffer(sender.region(offset, mock.size())))
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    del sink, writer  # (a live view of the ring would keep the sender's mapping past close)
    got = pa.ipc.open_stream(announce(receiver, (seq, slot, offset), mock.size())).read_next_batch()
    sender.close()
    del receiver
    gc.collect()
    assert got.equals(batch)  # the batch keeps the mapping
    modes = [mode for where, mode in ring_mappings().items() if where not in before]
    assert sorted(modes) == ["r--s", "rw-s"]  # data read-only, release words read-write
    del got
    gc.collect()
    assert ring_mappings() == before


def test_the_receiver_checks_each_doorbell():
    sender, receiver = pair(MiB)
    with pytest.raises(ChannelProtocolError, match="sequence number 3, expected 1"):
        receiver.lease(shm.DOORBELL.pack(3, 0, 0, 8))
    with pytest.raises(ChannelProtocolError, match="outside the ring"):
        receiver.lease(shm.DOORBELL.pack(1, 0, MiB - 8, 16))
    with pytest.raises(ChannelProtocolError, match="doorbell of 5 bytes"):
        receiver.lease(b"12345")
    lease = receiver.lease(shm.DOORBELL.pack(1, 0, MiB - 8, 8))  # the last 8 bytes are fine
    assert lease.size == 8
    with pytest.raises(ChannelProtocolError, match="expected 2"):
        receiver.lease(shm.DOORBELL.pack(1, 0, 0, 8))  # a replay
    sender.close()


def test_an_offer_of_the_wrong_shape_is_a_protocol_error():
    with pytest.raises(ChannelProtocolError, match="SHM_OFFER of 3 bytes"):
        shm.ReceiverRing.open(b"abc")
    with pytest.raises(ChannelProtocolError, match="pid 0"):
        shm.ReceiverRing.open(shm.OFFER.pack(0, 3, shm.HEADER_BYTES + MiB, b"n" * 16))
    with pytest.raises(ChannelProtocolError, match="a ring is a multiple"):
        shm.ReceiverRing.open(shm.OFFER.pack(1, 3, 1 << 40, b"n" * 16))


def test_sender_ring_sizes_are_checked():
    for size in (shm.HEADER_BYTES, shm.HEADER_BYTES + 100, shm.MAX_RING_BYTES + shm.PAGE):
        with pytest.raises(ValueError, match="multiple of"):
            shm.SenderRing(size)

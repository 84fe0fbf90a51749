"""Shared-memory channels between two processes of one host, on asyncio and uvloop.

The other end runs in a child process (tests/runtime/_shm_peer.py) with its own
DataServer, so the ring really is mapped by two processes.
"""

import asyncio
import concurrent.futures.thread  # noqa: F401  (imported before a fork: a child of another user cannot import)
import gc
import json
import os
import signal
import struct
import sys

import pyarrow as pa
import pytest
import uvloop

from sabot.runtime import events, network, shm
from sabot.runtime.channels import ChannelClosed, ChannelProtocolError
from sabot.runtime.data_server import DataServer
from tests.runtime import _shm_peer
from tests.runtime._shm_peer import numbered
from tests.runtime.test_network_channel import diverse_batches, frame, raw_connect

pytestmark = [pytest.mark.timeout(90),
              pytest.mark.skipif(not shm.AVAILABLE, reason="needs memfd_create and /proc (Linux)")]

KEY = b"shm-test-key" * 3
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request):
    return request.param


def run_on(loop_kind, fn, timeout=60.0):
    factory = asyncio.new_event_loop if loop_kind == "asyncio" else uvloop.new_event_loop

    async def main():
        return await asyncio.wait_for(fn(), timeout)

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


class Child:
    """The peer process, asked over its stdin/stdout (or pipes, when forked)."""

    def __init__(self, pid, reader, write):
        self.pid = pid
        self.reader = reader
        self._write = write
        self.hello = None

    @classmethod
    async def spawn(cls, role, loop_kind, *args, env=None):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.runtime._shm_peer", role, loop_kind, *map(str, args),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            env=dict(os.environ if env is None else env, **{_shm_peer.KEY_ENV: KEY.hex()}))

        def write(data):
            proc.stdin.write(data)

        child = cls(proc.pid, proc.stdout, write)
        child.proc = proc
        child.hello = await child.reply()
        return child

    async def reply(self, timeout=30.0):
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line:
            raise EOFError(f"peer process {self.pid} ended")
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer

    async def ask(self, timeout=30.0, **cmd):
        self._write((json.dumps(cmd) + "\n").encode())
        return await self.reply(timeout)

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)

    async def wait(self):
        if hasattr(self, "proc"):
            self.proc.stdin.close()
            await asyncio.wait_for(self.proc.wait(), 30)
        else:
            os.close(self._fd)
            await asyncio.get_running_loop().run_in_executor(None, os.waitpid, self.pid, 0)


def fork_receiver_as(uid, loop_kind):
    """Fork (before any event loop or socket exists) a receiver that runs as ``uid``.

    Returns ``(pid, reply_fd, command_fd)``; the child only ever uses these two pipes.
    """
    commands_r, commands_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, serve, never return into pytest
        code = 1
        try:
            os.close(commands_w)
            os.close(replies_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.environ[_shm_peer.KEY_ENV] = KEY.hex()
            with os.fdopen(commands_r) as commands, os.fdopen(replies_w, "w") as replies:
                _shm_peer.serve("receiver", loop_kind, commands, replies)
            code = 0
        finally:
            os._exit(code)
    os.close(commands_r)
    os.close(replies_w)
    return pid, replies_r, commands_w


async def attach_forked(pid, reply_fd, command_fd):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(reply_fd, "rb"))
    child = Child(pid, reader, lambda data: os.write(command_fd, data))
    child._fd = command_fd
    child.hello = await child.reply()
    return child


def ring_mappings():
    """Mappings of channel rings in this process (memfds are named in /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "memfd:sabot-channel" in line]


def ring_fds():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "memfd:sabot-channel" in os.readlink(f"/proc/self/fd/{fd}"):
                found.append(fd)
        except OSError:
            pass
    return found


def in_ring(address):
    for line in ring_mappings():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return True
    return False


def dev_shm():
    """Our files in /dev/shm (there should never be any: rings are memfds)."""
    return {n for n in os.listdir("/dev/shm") if "sabot" in n} if os.path.isdir("/dev/shm") else set()


# --------------------------------------------------------------------------- batches


def test_batches_of_every_shape_cross_a_shared_memory_channel_between_processes(loop_kind):
    sent = diverse_batches()

    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        child = await Child.spawn("sender", loop_kind, "--min", 0)
        try:
            inp = rx.input_channel("shapes")
            answer = await child.ask(cmd="connect", host="127.0.0.1", port=rx.address[1], channel="shapes")
            assert answer["shm"] is True
            sending = asyncio.ensure_future(child.ask(cmd="send", what="diverse"))
            got = []
            for _ in sent:
                got.append(await inp.recv())
            metrics = (await sending)["metrics"]
            for want, have in zip(sent, got):
                assert have.schema.equals(want.schema, check_metadata=True)
                assert have.equals(want) and have.to_pylist() == want.to_pylist()
            # every batch came through the ring and was built on it without a copy
            assert inp.metrics["shm_batches_received"] == len(sent) == metrics["shm_batches_sent"]
            assert metrics["shm_fallbacks"] == 0
            assert inp.metrics["shm_bytes_received"] == metrics["shm_bytes_sent"]
            assert inp.metrics["wire_bytes_received"] < 4096  # schemas and doorbells only
            full = got[0]
            assert in_ring(full.column("s").buffers()[2].address)
            assert in_ring(got[7].column("d").indices.buffers()[1].address)  # a dictionary batch too
            await child.ask(cmd="close")
            assert isinstance(await asyncio.wait_for(inp.recv(), 10), events.EndOfStream)
            with pytest.raises(ChannelClosed, match="closed by its sender"):
                await asyncio.wait_for(inp.recv(), 10)
            await child.wait()
            # what arrived stays valid after the sender is gone; the mapping goes with the batches
            assert full.equals(sent[0])
            assert ring_mappings()
            del got, full, have, want
            gc.collect()
            assert not ring_mappings()
        finally:
            await rx.stop()

    run_on(loop_kind, body)


def test_small_batches_go_over_tcp(loop_kind):
    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        child = await Child.spawn("sender", loop_kind, "--min", 4096)
        try:
            inp = rx.input_channel("mixed")
            assert (await child.ask(cmd="connect", host="127.0.0.1", port=rx.address[1], channel="mixed"))["shm"]
            for start, rows in ((0, 10), (1, 4096), (2, 10)):  # 160 bytes, 64 KiB, 160 bytes
                await child.ask(cmd="send", what="numbered", start=start, count=1, rows=rows)
            got = [await inp.recv() for _ in range(3)]
            assert [b.column("i")[0].as_py() for b in got] == [0, 1, 2]
            assert inp.metrics["shm_batches_received"] == 1
            await child.ask(cmd="close")
            await child.wait()
        finally:
            await rx.stop()

    run_on(loop_kind, body)


# --------------------------------------------------------------------------- flow control


def test_a_slow_receiver_backpressures_a_shared_memory_sender(loop_kind):
    rows = 16384  # 256 KiB batches

    async def body():
        tx = DataServer(key=KEY)
        child = await Child.spawn("receiver", loop_kind, "--credits", 2)
        try:
            await child.ask(cmd="register", channel="slow")
            out = await tx.output_channel("slow", "127.0.0.1", child.hello["port"])
            assert out.shared_memory
            await out.send(numbered(0, rows))
            await out.send(numbered(1, rows))
            third = asyncio.ensure_future(out.send(numbered(2, rows)))
            await asyncio.sleep(0.3)
            assert not third.done(), "a third batch went out with two credits and nothing read"
            assert out.metrics["shm_batches_sent"] == 2
            draining = asyncio.ensure_future(child.ask(cmd="drain", channel="slow", delay=0.02))
            await asyncio.wait_for(third, 10)
            for i in range(3, 20):
                await out.send(numbered(i, rows))
            await out.send(events.EndOfStream())
            await out.close()
            result = await draining
            assert result["ids"] == list(range(20))
            assert result["metrics"]["shm_batches_received"] == 20
            # never more than the two credits' worth arrived and unread
            assert result["metrics"]["peak_buffered_bytes"] <= 2 * numbered(0, rows).nbytes
            assert out.metrics["backpressured_seconds"] > 0.2
            assert out.metrics["shm_fallbacks"] == 0
            await child.wait()
        finally:
            await tx.stop()
        assert not ring_mappings() and not ring_fds()

    run_on(loop_kind, body)


def test_a_receiver_keeping_batches_forces_tcp_and_order_holds(loop_kind):
    rows = 16384  # 256 KiB: a 2 MiB ring holds 7 of them
    ring = shm.HEADER_BYTES + (2 << 20)

    async def body():
        rx = DataServer(key=KEY, credits=4)
        await rx.start()
        child = await Child.spawn("sender", loop_kind, "--ring", ring, "--min", 0)
        try:
            inp = rx.input_channel("keep")
            assert (await child.ask(cmd="connect", host="127.0.0.1", port=rx.address[1], channel="keep"))["shm"]
            sending = asyncio.ensure_future(child.ask(cmd="send", what="numbered", start=0, count=30, rows=rows))
            kept = [await inp.recv() for _ in range(30)]  # a downstream operator holding on to them
            metrics = (await sending)["metrics"]
            assert [b.column("i")[0].as_py() for b in kept] == list(range(30))
            assert all(b.equals(numbered(i, rows)) for i, b in enumerate(kept))
            shm_received = inp.metrics["shm_batches_received"]
            assert 0 < shm_received <= 7 and metrics["shm_fallbacks"] == 30 - shm_received
            # once they are let go, the ring is used again
            del kept
            gc.collect()
            sending = asyncio.ensure_future(child.ask(cmd="send", what="numbered", start=30, count=10, rows=rows))
            later = []
            for _ in range(10):  # taken and let go at once this time
                batch = await inp.recv()
                later.append(batch.column("i")[0].as_py())
                del batch
            metrics = (await sending)["metrics"]
            assert later == list(range(30, 40))
            assert inp.metrics["shm_batches_received"] == shm_received + 10
            assert metrics["shm_fallbacks"] == 30 - shm_received
            await child.ask(cmd="close")
            await child.wait()
        finally:
            await rx.stop()

    run_on(loop_kind, body)


# --------------------------------------------------------------------------- killed peers


def test_a_killed_sender_leaves_no_segment_behind(loop_kind):
    before = dev_shm()

    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        child = await Child.spawn("sender", loop_kind)
        try:
            inp = rx.input_channel("killed")
            assert (await child.ask(cmd="connect", host="127.0.0.1", port=rx.address[1], channel="killed"))["shm"]
            await child.ask(cmd="endless", rows=16384)
            first = await inp.recv()
            assert inp.metrics["shm_batches_received"] >= 1 and in_ring(first.column("v").buffers()[1].address)
            child.kill()
            with pytest.raises(ChannelClosed, match="connection lost mid-stream"):
                while True:
                    await asyncio.wait_for(inp.recv(), 10)
            await child.proc.wait()
            assert first.equals(numbered(0, 16384))  # still mapped, still intact
            del first
            gc.collect()
            assert not ring_mappings() and not ring_fds()
        finally:
            await rx.stop()

    run_on(loop_kind, body)
    assert dev_shm() == before == set()


def test_a_killed_receiver_leaves_no_segment_behind(loop_kind):
    before = dev_shm()

    async def body():
        tx = DataServer(key=KEY)
        child = await Child.spawn("receiver", loop_kind, "--credits", 4)
        try:
            await child.ask(cmd="register", channel="gone")
            out = await tx.output_channel("gone", "127.0.0.1", child.hello["port"])
            assert out.shared_memory and ring_mappings()
            for i in range(4):
                await out.send(numbered(i, 16384))
            child.kill()
            await child.proc.wait()
            with pytest.raises(ChannelClosed, match="'gone'"):
                for i in range(4, 100):
                    await asyncio.wait_for(out.send(numbered(i, 16384)), 10)
            assert not out.shared_memory
            assert not ring_mappings() and not ring_fds()
        finally:
            await tx.stop()

    run_on(loop_kind, body)
    assert dev_shm() == before == set()


# --------------------------------------------------------------------------- refusals


def test_shared_memory_switched_off_on_either_side_keeps_tcp(loop_kind):
    async def body():
        # the receiver's process has SABOT_SHM=0: it refuses the offer
        tx = DataServer(key=KEY)
        child = await Child.spawn("receiver", loop_kind, env=dict(os.environ, SABOT_SHM="0"))
        try:
            await child.ask(cmd="register", channel="off")
            out = await tx.output_channel("off", "127.0.0.1", child.hello["port"])
            assert not out.shared_memory
            assert not ring_mappings() and not ring_fds()  # the refused ring is gone at once
            draining = asyncio.ensure_future(child.ask(cmd="drain", channel="off"))
            for i in range(5):
                await out.send(numbered(i, 16384))
            await out.send(events.EndOfStream())
            await out.close()
            result = await draining
            assert result["ids"] == list(range(5)) and result["metrics"].get("shm_batches_received", 0) == 0
            assert out.metrics["shm_batches_sent"] == 0 and out.metrics["wire_bytes_sent"] > 5 * 16384 * 16
            await child.wait()
        finally:
            await tx.stop()
        # a sender with shared memory off never offers
        rx = DataServer(key=KEY)
        await rx.start()
        quiet = DataServer(key=KEY, shm=False)
        try:
            rx.input_channel("never")
            out = await quiet.output_channel("never", *rx.address)
            assert not out.shared_memory
            await out.send(numbered(0, 16384))
            assert out.metrics["shm_batches_sent"] == 0
        finally:
            await quiet.stop()
            await rx.stop()

    run_on(loop_kind, body)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the receiver as another user")
def test_a_receiver_of_another_user_cannot_map_the_ring_and_gets_tcp(loop_kind, caplog):
    pid, reply_fd, command_fd = fork_receiver_as(65534, loop_kind)  # nobody

    async def body():
        tx = DataServer(key=KEY)
        child = await attach_forked(pid, reply_fd, command_fd)
        try:
            await child.ask(cmd="register", channel="other-user")
            with caplog.at_level("INFO", logger="sabot.runtime.network"):
                out = await tx.output_channel("other-user", "127.0.0.1", child.hello["port"])
            assert not out.shared_memory
            assert any("refused shared memory" in r.getMessage() and "cannot open /proc/" in r.getMessage()
                       for r in caplog.records), [r.getMessage() for r in caplog.records]
            draining = asyncio.ensure_future(child.ask(cmd="drain", channel="other-user"))
            for i in range(3):
                await out.send(numbered(i, 16384))
            await out.send(events.EndOfStream())
            await out.close()
            result = await draining
            assert result["ids"] == [0, 1, 2] and result["metrics"].get("shm_batches_received", 0) == 0
            await child.wait()
        finally:
            await tx.stop()

    try:
        run_on(loop_kind, body)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# --------------------------------------------------------------------------- hostile frames


async def offered_connection(rx, channel, ring):
    """An authenticated raw connection whose ring the receiver accepted."""
    reader, writer = await raw_connect(rx.address, key=KEY)
    writer.write(frame(network.HELLO, channel.encode()) + frame(network.SHM_OFFER, ring.offer()))
    while True:  # CREDIT frames may come first
        kind, length = struct.unpack("<BQ", await reader.readexactly(9))
        body = await reader.readexactly(length)
        if kind == network.SHM_ACCEPT:
            assert ring.confirm(body)
            return reader, writer
        assert kind == network.CREDIT, kind


def doorbell(seq=1, slot=0, offset=0, length=64, kind=None):
    return frame(kind or network.SHM_BATCH, shm.DOORBELL.pack(seq, slot, offset, length))


@pytest.mark.parametrize("bad, reason", [
    (doorbell(offset=(64 << 20), length=64), "outside the ring"),
    (doorbell(offset=0, length=(64 << 20) + 1), "outside the ring"),
    (doorbell(offset=(1 << 63), length=(1 << 63)), "outside the ring"),
    (doorbell(length=0), "an empty region"),
    (doorbell(offset=3), "not a multiple of 8"),
    (doorbell(slot=shm.NSLOTS), "names slot"),
    (doorbell(seq=2), "sequence number 2, expected 1"),
    (doorbell(kind=network.SHM_STREAM, seq=0), "sequence number 0, expected 1"),
    (frame(network.SHM_BATCH, b"\0" * (shm.DOORBELL.size - 1)), "SHM_BATCH frame of 27 bytes, expected 28"),
], ids=["offset-past-end", "length-past-end", "wrapping", "empty", "misaligned", "slot", "sequence-skipped",
        "sequence-zero", "short-frame"])
def test_malformed_doorbells_close_the_connection(loop_kind, bad, reason):
    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        ring = shm.SenderRing(shm.HEADER_BYTES + (64 << 20))
        try:
            inp = rx.input_channel("bell")
            reader, writer = await offered_connection(rx, "bell", ring)
            writer.write(bad)
            data = await asyncio.wait_for(reader.read(), 10)  # ERROR, then the receiver closes
            assert reason.encode() in data, data
            with pytest.raises(ChannelProtocolError, match=reason):
                await asyncio.wait_for(inp.recv(), 10)
            writer.close()
        finally:
            ring.close()
            await rx.stop()
        await asyncio.sleep(0.05)  # connection_lost runs
        gc.collect()
        assert not ring_mappings()  # the receiver let go of the hostile sender's ring

    run_on(loop_kind, body)


def test_doorbells_without_an_accepted_ring_and_repeated_offers_are_refused(loop_kind):
    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        ring = shm.SenderRing(shm.HEADER_BYTES + (1 << 20))
        try:
            inp = rx.input_channel("a")
            reader, writer = await raw_connect(rx.address, key=KEY)
            writer.write(frame(network.HELLO, b"a") + frame(network.SCHEMA, numbered(0, 1).schema.serialize())
                         + doorbell())
            data = await asyncio.wait_for(reader.read(), 10)
            assert b"SHM_BATCH without an accepted shared-memory ring" in data, data
            with pytest.raises(ChannelProtocolError):
                await asyncio.wait_for(inp.recv(), 10)
            rx.input_channel("b")
            reader, writer = await offered_connection(rx, "b", ring)
            writer.write(frame(network.SHM_OFFER, ring.offer()))
            data = await asyncio.wait_for(reader.read(), 10)
            assert b"a second SHM_OFFER" in data, data
        finally:
            ring.close()
            await rx.stop()

    run_on(loop_kind, body)


def test_offers_the_receiver_cannot_verify_are_refused_and_the_channel_stays_tcp(loop_kind, tmp_path):
    import fcntl

    async def refused(rx, channel, offer):
        reader, writer = await raw_connect(rx.address, key=KEY)
        writer.write(frame(network.HELLO, channel.encode()) + frame(network.SHM_OFFER, offer))
        while True:
            kind, length = struct.unpack("<BQ", await reader.readexactly(9))
            body = await reader.readexactly(length)
            if kind == network.SHM_REFUSE:
                return reader, writer, body.decode()
            assert kind == network.CREDIT, kind

    async def body():
        rx = DataServer(key=KEY)
        await rx.start()
        ring = shm.SenderRing(shm.HEADER_BYTES + (1 << 20))
        plain = os.memfd_create("sabot-channel")  # not sealed
        os.ftruncate(plain, ring.size)
        pipe_r, pipe_w = os.pipe()
        regular = os.open(tmp_path / "segment", os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(regular, ring.size)
        try:
            size = ring.size
            cases = [
                ("c0", shm.OFFER.pack(os.getpid(), ring.fd, size, b"x" * 16), "does not hold the sender's segment"),
                ("c1", shm.OFFER.pack(os.getpid(), 987654, size, ring.nonce), "cannot open /proc/"),
                ("c2", shm.OFFER.pack(os.getpid(), ring.fd, size + shm.PAGE, ring.nonce), "is not a"),
                ("c3", shm.OFFER.pack(os.getpid(), plain, size, ring.nonce), "not sealed"),
                ("c4", shm.OFFER.pack(os.getpid(), pipe_r, size, ring.nonce), "is not a"),
                ("c5", shm.OFFER.pack(os.getpid(), regular, size, ring.nonce), "cannot be sealed"),
            ]
            for channel, offer, reason in cases:
                inp = rx.input_channel(channel)
                reader, writer, why = await refused(rx, channel, offer)
                assert reason in why, why
                # the channel carries on over TCP
                batch = numbered(7, 100)
                writer.write(frame(network.SCHEMA, batch.schema.serialize()) + frame(network.BATCH, batch.serialize()))
                assert (await asyncio.wait_for(inp.recv(), 10)).equals(batch)
                writer.close()
            # a ring size no ring has is a protocol error
            inp = rx.input_channel("c6")
            reader, writer = await raw_connect(rx.address, key=KEY)
            writer.write(frame(network.HELLO, b"c6") + frame(network.SHM_OFFER,
                                                              shm.OFFER.pack(os.getpid(), ring.fd, 12345, ring.nonce)))
            data = await asyncio.wait_for(reader.read(), 10)
            assert b"a ring is a multiple of" in data, data
            writer.close()
        finally:
            for fd in (plain, pipe_r, pipe_w, regular):
                os.close(fd)
            ring.close()
            await rx.stop()
        await asyncio.sleep(0.05)
        gc.collect()
        assert not ring_mappings()
        assert fcntl.F_SEAL_SHRINK  # the platform knows seals (the test's premise)

    run_on(loop_kind, body)

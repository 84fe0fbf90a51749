"""Network channels: Arrow IPC over TCP loopback, on asyncio and uvloop."""

import asyncio
import socket
import struct

import numpy as np
import pyarrow as pa
import pytest
import uvloop

from sabot.runtime import events, network
from sabot.runtime.channels import ChannelClosed, ChannelProtocolError, LocalOutputChannel
from sabot.runtime.data_server import DataServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(fn, timeout=20.0):
        async def main():
            return await asyncio.wait_for(fn(), timeout)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


class Pair:
    """A receiving DataServer listening on loopback and a separate sending DataServer."""

    def __init__(self, credits=8, connect_timeout=5.0):
        self.rx = DataServer(credits=credits)
        self.tx = DataServer(connect_timeout=connect_timeout)

    async def __aenter__(self):
        await self.rx.start()
        return self

    async def __aexit__(self, *exc):
        await self.tx.stop()
        await self.rx.stop()

    async def open(self, channel_id):
        host, port = self.rx.address
        return await self.tx.output_channel(channel_id, host, port)


async def drain(inp):
    """Everything up to EndOfStream."""
    items = []
    while True:
        item = await inp.recv()
        items.append(item)
        if isinstance(item, events.EndOfStream):
            return items


def diverse_batches():
    rng = np.random.default_rng(11)
    n = 1000
    ints = pa.array(rng.integers(-1000, 1000, n), pa.int64())
    floats = pa.array(rng.random(n), mask=rng.random(n) < 0.1)
    strings = pa.array([None if i % 7 == 0 else "x" * (i % 13) + str(i) for i in range(n)])
    lists = pa.array([None if i % 11 == 0 else list(range(i % 5)) for i in range(n)], pa.list_(pa.int32()))
    full = pa.record_batch({"i": ints, "f": floats, "s": strings, "l": lists})
    structs = pa.record_batch(
        {"st": pa.array([{"a": i, "b": str(i)} for i in range(50)]), "ts": pa.array(np.arange(50), pa.timestamp("ms"))}
    )
    dictionary = pa.record_batch({"d": pa.array(["red", "green", "red", None, "blue"] * 20).dictionary_encode()})
    return [
        full,
        full.slice(0, 0),  # zero rows
        full.slice(333, 100),  # sliced: offsets into strings, lists, validity
        full.slice(999, 1),
        structs,  # schema change
        structs.slice(7, 13),
        full.slice(17, 500),  # and back
        dictionary,
        dictionary.slice(5, 30),
        pa.record_batch({"i": ints}, metadata={b"origin": b"test"}),  # metadata change only
    ]


def test_batches_of_every_shape_survive_the_wire(run):
    sent = diverse_batches()

    async def body():
        async with Pair() as p:
            inp = p.rx.input_channel("shapes")
            out = await p.open("shapes")
            assert not isinstance(out, LocalOutputChannel)

            async def produce():
                for b in sent:
                    await out.send(b)
                await out.send(events.EndOfStream())
                await out.close()

            producer = asyncio.ensure_future(produce())
            got = await drain(inp)
            await producer
            assert len(got) == len(sent) + 1
            for want, have in zip(sent, got):
                assert isinstance(have, pa.RecordBatch)
                assert have.schema.equals(want.schema, check_metadata=True)
                assert have.num_rows == want.num_rows
                assert have.to_pylist() == want.to_pylist()
                assert have.equals(want)
            assert inp.metrics["batches_received"] == len(sent)
            assert out.metrics["batches_sent"] == len(sent)
            assert out.metrics["bytes_sent"] == sum(b.nbytes for b in sent)
            with pytest.raises(ChannelClosed, match="'shapes'.*closed by its sender"):
                await inp.recv()

    run(body)


def test_large_batch_spanning_many_reads(run):
    rng = np.random.default_rng(3)
    big = pa.record_batch({"k": rng.integers(0, 1 << 40, 400_000), "v": rng.random(400_000)})

    async def body():
        async with Pair(credits=2) as p:
            inp = p.rx.input_channel("big")
            out = await p.open("big")

            async def produce():
                for _ in range(3):
                    await out.send(big)
                await out.send(events.EndOfStream())
                await out.close()

            producer = asyncio.ensure_future(produce())
            got = await drain(inp)
            await producer
            assert all(b.equals(big) for b in got[:3])
            # The batch is built on the received buffer: one allocation per column, 64-byte aligned.
            assert got[0].column("v").buffers()[1].address % 8 == 0

    run(body)


def test_events_keep_their_place_between_batches(run):
    async def body():
        async with Pair(credits=2) as p:
            inp = p.rx.input_channel("ev")
            out = await p.open("ev")
            sent = []
            for i in range(6):
                sent.append(pa.record_batch({"x": [i]}))
                if i % 2:
                    sent.append(events.Watermark(i))
                if i == 2:
                    sent.append(events.IDLE)
                if i == 4:
                    sent.append(events.ACTIVE)
                if i == 3:
                    sent.append(events.CheckpointBarrier(9, 1234))
                    sent.append(events.RescaleBarrier("r", "op", {"groups": [1, 2]}))
            sent.append(events.EndOfStream())

            async def produce():
                for item in sent:
                    await out.send(item)
                await out.close()

            producer = asyncio.ensure_future(produce())
            got = await drain(inp)
            await producer
            assert len(got) == len(sent)
            for want, have in zip(sent, got):
                if isinstance(want, pa.RecordBatch):
                    assert have.equals(want)
                else:
                    assert have == want

    run(body)


def test_sender_connects_before_receiver_registers(run):
    async def body():
        async with Pair(credits=3) as p:
            out = await p.open("late")
            await out.send(events.Watermark(1))
            pending = asyncio.ensure_future(out.send(pa.record_batch({"x": [1, 2]})))
            await asyncio.sleep(0.1)
            assert not pending.done(), "no credit may be granted before registration"
            inp = p.rx.input_channel("late")
            await asyncio.wait_for(pending, 2.0)
            assert (await inp.recv()) == events.Watermark(1)
            assert (await inp.recv()).to_pydict() == {"x": [1, 2]}

    run(body)


def test_many_channels_on_one_server(run):
    n = 16

    async def body():
        async with Pair(credits=2) as p:
            inputs = [p.rx.input_channel(f"ch{i}") for i in range(n)]
            outputs = [await p.open(f"ch{i}") for i in range(n)]

            async def produce(i, out):
                for j in range(10):
                    await out.send(pa.record_batch({"c": [i] * (j + 1), "j": [j] * (j + 1)}))
                await out.send(events.EndOfStream())
                await out.close()

            producers = [asyncio.ensure_future(produce(i, o)) for i, o in enumerate(outputs)]
            results = await asyncio.gather(*(drain(inp) for inp in inputs))
            await asyncio.gather(*producers)
            for i, items in enumerate(results):
                batches = items[:-1]
                assert [b.num_rows for b in batches] == list(range(1, 11))
                assert all(set(b.column("c").to_pylist()) == {i} for b in batches)

    run(body)


def test_connection_drop_mid_stream_raises_on_the_receiver(run):
    async def body():
        async with Pair(credits=8) as p:
            inp = p.rx.input_channel("drop")
            out = await p.open("drop")
            for i in range(3):
                await out.send(pa.record_batch({"x": [i]}))
            # Let the frames reach the receiver, then crash the sender's connection.
            while inp.metrics["batches_received"] < 3:
                await asyncio.sleep(0.01)
            out._protocol.transport.abort()
            got = [await inp.recv() for _ in range(3)]
            assert [b.column("x")[0].as_py() for b in got] == [0, 1, 2]
            with pytest.raises(ChannelClosed, match=r"channel 'drop' .*connection lost mid-stream after 3 batches"):
                await asyncio.wait_for(inp.recv(), 5.0)
            with pytest.raises(ChannelClosed, match="'drop'"):
                await out.send(pa.record_batch({"x": [9]}))

    run(body)


def test_receiver_going_away_fails_a_waiting_sender(run):
    async def body():
        p = Pair(credits=1)
        await p.rx.start()
        try:
            p.rx.input_channel("gone")
            out = await p.open("gone")
            await out.send(pa.record_batch({"x": [1]}))
            waiting = asyncio.ensure_future(out.send(pa.record_batch({"x": [2]})))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await p.rx.stop()
            with pytest.raises(ChannelClosed, match="'gone'"):
                await asyncio.wait_for(waiting, 5.0)
        finally:
            await p.tx.stop()
            await p.rx.stop()

    run(body)


def test_release_on_the_receiver_tells_the_sender(run):
    async def body():
        async with Pair(credits=1) as p:
            p.rx.input_channel("rel")
            out = await p.open("rel")
            await out.send(pa.record_batch({"x": [1]}))
            p.rx.release("rel")
            with pytest.raises(ChannelClosed, match="'rel' was released"):
                await asyncio.wait_for(out.send(pa.record_batch({"x": [2]})), 5.0)

    run(body)


def test_second_sender_for_a_channel_is_refused(run):
    async def body():
        async with Pair(credits=2) as p:
            inp = p.rx.input_channel("dup")
            first = await p.open("dup")
            second = await p.open("dup")
            with pytest.raises(ChannelClosed, match="'dup' already has a sender"):
                for _ in range(4):  # at most 2 credits could ever be granted
                    await asyncio.wait_for(second.send(pa.record_batch({"x": [0]})), 5.0)
            await first.send(pa.record_batch({"x": [1]}))
            assert (await inp.recv()).to_pydict() == {"x": [1]}

    run(body)


def test_output_channel_to_own_address_is_in_process(run):
    async def body():
        server = DataServer()
        host, port = await server.start()
        inp = server.input_channel("self")
        out = await server.output_channel("self", host, port)
        assert isinstance(out, LocalOutputChannel)
        b = pa.record_batch({"x": [1]})
        await out.send(b)
        assert (await inp.recv()) is b
        await server.stop()
        assert server.address is None

    run(body)


def test_unreachable_server_fails_after_connect_timeout(run):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    free_port = sock.getsockname()[1]
    sock.close()

    async def body():
        server = DataServer(connect_timeout=0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ConnectionError, match=f"'nowhere': no data server reachable at 127.0.0.1:{free_port}"):
            await server.output_channel("nowhere", "127.0.0.1", free_port)
        assert loop.time() - start < 3.0
        await server.stop()

    run(body)


# --------------------------------------------------------------------------- protocol violations


async def raw_connect(address, key=b"", authenticate=True):
    """A raw TCP connection to a data server; ``authenticate`` does the handshake with ``key``."""
    reader, writer = await asyncio.open_connection(*address)
    if authenticate:
        kind, length = struct.unpack("<BQ", await reader.readexactly(9))
        assert kind == network.CHALLENGE and length == 16
        challenge = await reader.readexactly(16)
        nonce = b"n" * 16
        writer.write(frame(network.AUTH, nonce + network._mac(key, b"sender", challenge, nonce)))
        kind, length = struct.unpack("<BQ", await reader.readexactly(9))
        assert kind == network.AUTH_OK, f"handshake refused (frame kind {kind})"
        assert await reader.readexactly(length) == network._mac(key, b"receiver", nonce, challenge)
    return reader, writer


def frame(kind, payload=b""):
    return struct.pack("<BQ", kind, len(payload)) + bytes(payload)


def test_batch_without_credit_breaks_the_channel(run):
    batch = pa.record_batch({"x": [1, 2, 3]})

    async def body():
        async with Pair() as p:
            _, writer = await raw_connect(p.rx.address)
            # The channel is not registered: no credit was granted, yet a batch comes.
            writer.write(frame(network.HELLO, b"rogue") + frame(network.SCHEMA, batch.schema.serialize())
                         + frame(network.BATCH, batch.serialize()))
            await writer.drain()
            await asyncio.sleep(0.1)
            inp = p.rx.input_channel("rogue")
            with pytest.raises(ChannelProtocolError, match="'rogue'.*sent a batch without credit"):
                await asyncio.wait_for(inp.recv(), 5.0)
            writer.close()

    run(body)


def test_garbage_connection_is_dropped_and_server_keeps_working(run):
    async def body():
        async with Pair() as p:
            reader, writer = await raw_connect(p.rx.address)
            writer.write(b"\xff" * 64)
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5.0)  # server answers ERROR, then closes
            assert data[:1] == bytes([network.ERROR]) and b"unknown frame kind 255" in data
            writer.close()
            reader, writer = await raw_connect(p.rx.address)
            writer.write(frame(network.SCHEMA, b"x"))  # anything but HELLO first after the handshake
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5.0)
            assert b"first frame must be HELLO, got SCHEMA" in data
            writer.close()
            inp = p.rx.input_channel("fine")
            out = await p.open("fine")
            await out.send(pa.record_batch({"x": [5]}))
            assert (await asyncio.wait_for(inp.recv(), 5.0)).to_pydict() == {"x": [5]}

    run(body)


# --------------------------------------------------------------------------- strangers


class KeyedPair(Pair):
    def __init__(self, rx_key=b"k" * 32, tx_key=b"k" * 32):
        self.rx = DataServer(key=rx_key)
        self.tx = DataServer(key=tx_key, connect_timeout=2.0)


async def closed_silently(reader, challenge_read=False):
    """Read until the server closes (or resets) the connection; True if it sent nothing but
    its CHALLENGE: a stranger gets no ERROR text and no data."""
    data = b""
    try:
        async with asyncio.timeout(5.0):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    if not challenge_read and data[:1] == bytes([network.CHALLENGE]):
        data = data[9 + 16:]
    return data == b""


def vm_rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_a_stranger_without_the_key_cannot_inject_rows(run):
    async def body():
        async with KeyedPair() as p:
            inp = p.rx.input_channel("job/a#0->b#0")
            # the real protocol with the wrong key: refused before HELLO, nothing registered
            reader, writer = await raw_connect(p.rx.address, authenticate=False)
            head = await reader.readexactly(9 + 16)
            writer.write(frame(network.AUTH, b"n" * 16 + network._mac(b"wrong", b"sender", head[9:], b"n" * 16))
                         + frame(network.HELLO, b"job/a#0->b#0"))
            await writer.drain()
            assert await closed_silently(reader, challenge_read=True)  # no ERROR text for strangers
            # skipping the handshake: HELLO + rows at once
            batch = pa.record_batch({"x": [666]})
            reader, writer = await raw_connect(p.rx.address, authenticate=False)
            writer.write(frame(network.HELLO, b"job/a#0->b#0") + frame(network.SCHEMA, batch.schema.serialize())
                         + frame(network.BATCH, batch.serialize()))
            await writer.drain()
            assert await closed_silently(reader)
            # a sender with the wrong key gets a clear error and never connects
            wrong = DataServer(key=b"x" * 32, connect_timeout=2.0)
            with pytest.raises(ChannelClosed, match="handshake"):
                await wrong.output_channel("job/a#0->b#0", *p.rx.address)
            await wrong.stop()
            # nothing of the strangers is kept, and the real sender is served
            assert set(p.rx._channels) == {"job/a#0->b#0"} and inp._sender is None
            out = await p.open("job/a#0->b#0")
            await out.send(pa.record_batch({"x": [1]}))
            assert (await asyncio.wait_for(inp.recv(), 5.0)).to_pydict() == {"x": [1]}
            await out.close()

    run(body)


def test_a_receiver_without_the_key_gets_no_rows(run):
    async def body():
        async with KeyedPair(rx_key=b"other" * 7) as p:
            p.rx.input_channel("c")
            with pytest.raises(ChannelClosed, match="handshake"):
                await p.open("c")

    run(body)


def test_huge_frame_headers_are_refused_before_any_allocation(run):
    async def body():
        async with KeyedPair() as p:
            before = vm_rss_kb()
            # unauthenticated: a 16 GiB AUTH, a 16 GiB BATCH
            for kind in (network.AUTH, network.BATCH):
                reader, writer = await raw_connect(p.rx.address, authenticate=False)
                writer.write(struct.pack("<BQ", kind, 16 << 30) + b"\0" * 65536)
                try:
                    await writer.drain()
                except ConnectionResetError:
                    pass
                assert await closed_silently(reader)
            # authenticated, but a batch frame above MAX_FRAME_BYTES
            inp = p.rx.input_channel("c")
            reader, writer = await raw_connect(p.rx.address, key=b"k" * 32)
            writer.write(frame(network.HELLO, b"c") + struct.pack("<BQ", network.BATCH, 16 << 30))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5.0)  # CREDIT frames, then ERROR
            assert b"exceeds the limit" in data, data
            with pytest.raises(ChannelProtocolError, match="exceeds the limit"):
                await asyncio.wait_for(inp.recv(), 5.0)
            # ... and a 512 MB batch to a channel nobody registered (so no credit)
            reader, writer = await raw_connect(p.rx.address, key=b"k" * 32)
            writer.write(frame(network.HELLO, b"nobody") + struct.pack("<BQ", network.BATCH, 512 << 20))
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5.0)
            assert b"without credit" in data, data
            assert vm_rss_kb() - before < 32 * 1024  # nothing near the declared sizes was allocated

    run(body)


def test_a_silent_stranger_is_dropped_after_the_handshake_timeout(run, monkeypatch):
    monkeypatch.setattr(network, "HANDSHAKE_TIMEOUT_S", 0.3)

    async def body():
        async with KeyedPair() as p:
            conns = [await raw_connect(p.rx.address, authenticate=False) for _ in range(20)]
            start = asyncio.get_running_loop().time()
            for reader, writer in conns:
                assert await closed_silently(reader)
                writer.close()
            assert asyncio.get_running_loop().time() - start < 3.0
            await asyncio.sleep(0.05)
            assert not p.rx.connections  # nothing kept for them

    run(body)


def test_tls_data_plane_carries_batches_and_refuses_plain_tcp(run, tmp_path, monkeypatch):
    import trustme

    monkeypatch.setattr(network, "HANDSHAKE_TIMEOUT_S", 1.0)

    from sabot.cluster.tls import TlsConfig

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    tls = TlsConfig(str(tmp_path / "node.pem"), str(tmp_path / "node.pem"), str(tmp_path / "ca.pem"), mutual=True)

    async def body():
        rx = DataServer(key=b"k" * 32, server_ssl=tls.server_context(), client_ssl=tls.client_context())
        tx = DataServer(key=b"k" * 32, server_ssl=tls.server_context(), client_ssl=tls.client_context())
        plain = DataServer(key=b"k" * 32, connect_timeout=1.0)
        await rx.start()
        try:
            inp = rx.input_channel("c")
            out = await tx.output_channel("c", *rx.address)
            assert not isinstance(out, LocalOutputChannel)
            batches = diverse_batches()

            async def produce():
                for b in batches:
                    await out.send(b)
                await out.send(events.EndOfStream())
                await out.close()

            producer = asyncio.ensure_future(produce())
            got = [item for item in await drain(inp) if isinstance(item, pa.RecordBatch)]
            await producer
            assert len(got) == len(batches) and all(g.equals(b) for g, b in zip(got, batches))
            rx.input_channel("d")
            with pytest.raises(ChannelClosed):  # a plain TCP sender never completes a handshake
                await plain.output_channel("d", *rx.address)
        finally:
            await plain.stop()
            await tx.stop()
            await rx.stop()

    run(body)

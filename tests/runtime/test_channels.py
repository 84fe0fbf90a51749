"""In-process channels, the input gate and the control events (on asyncio and uvloop)."""

import asyncio
import json

import numpy as np
import pyarrow as pa
import pytest
import uvloop

from sabot.errors import SabotError
from sabot.runtime import events
from sabot.runtime.data_server import DataServer
from sabot.runtime.channels import (
    ChannelClosed,
    DuplicateChannel,
    InputChannel,
    InputGate,
    LocalOutputChannel,
    OutputChannel,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """run(async_fn, timeout) runs async_fn() on a fresh loop of the parametrized kind."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(fn, timeout=10.0):
        async def main():
            return await asyncio.wait_for(fn(), timeout)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


def make_batch(start, n):
    return pa.record_batch({"k": np.arange(start, start + n, dtype=np.int64), "v": np.arange(n) * 0.5})


async def settle(rounds=20):
    """Let every ready callback and task run a few times."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- events


def test_events_roundtrip_through_json():
    all_events = [
        events.EndOfStream(),
        events.CheckpointBarrier(checkpoint_id=3, timestamp_ms=1_700_000_000_123),
        events.RescaleBarrier("r1", "op-7", {"assignment": {"0": [0, 63], "1": [64, 127]}}),
        events.Watermark(timestamp=-5),
        events.WatermarkStatus(idle=True),
        events.ACTIVE,
    ]
    for ev in all_events:
        wire = json.dumps(ev.to_dict())
        back = events.from_dict(json.loads(wire))
        assert back == ev and type(back) is type(ev)
        assert events.is_event(ev)
    assert not events.is_event(make_batch(0, 1))
    assert not events.is_event({"type": "Watermark", "timestamp": 1})
    with pytest.raises(Exception):
        events.Watermark(1).timestamp = 2  # frozen


def test_events_from_dict_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown event type 'Nope'.*Watermark"):
        events.from_dict({"type": "Nope"})
    with pytest.raises(ValueError, match="bad fields for event Watermark"):
        events.from_dict({"type": "Watermark", "ts": 1})
    with pytest.raises(ValueError, match="event dict was expected"):
        events.from_dict(["Watermark"])


# --------------------------------------------------------------------------- local channels


def test_local_channel_keeps_order_and_passes_batches_by_reference(run):
    async def body():
        server = DataServer(credits=4)
        inp = server.input_channel("a->b")
        out = await server.output_channel("a->b")
        assert isinstance(out, OutputChannel) and isinstance(out, LocalOutputChannel)
        sent = [make_batch(0, 5), events.Watermark(10), make_batch(5, 3), events.CheckpointBarrier(1, 99),
                make_batch(8, 0), events.EndOfStream()]

        async def produce():
            for item in sent:
                await out.send(item)
            await out.close()

        producer = asyncio.ensure_future(produce())
        got = [await inp.recv() for _ in sent]
        await producer
        for want, have in zip(sent, got):
            if isinstance(want, pa.RecordBatch):
                assert have is want
            else:
                assert have == want
        assert inp.finished
        with pytest.raises(ChannelClosed, match="'a->b' was closed by its sender") as info:
            await inp.recv()
        assert info.value.channel_id == "a->b"
        assert isinstance(info.value, SabotError) and isinstance(info.value, ConnectionError)
        with pytest.raises(ChannelClosed, match="closed by this sender"):
            await out.send(make_batch(0, 1))
        await out.close()  # idempotent
        await server.stop()

    run(body)


def test_sender_waits_without_credit_and_events_need_none(run):
    async def body():
        server = DataServer(credits=3)
        inp = server.input_channel("c")
        out = await server.output_channel("c")
        batches = [make_batch(i * 10, 10) for i in range(5)]
        for b in batches[:3]:
            await out.send(b)
        assert out.credit == 0
        # An event needs no credit: it goes through at once.
        await asyncio.wait_for(out.send(events.Watermark(7)), 1.0)
        blocked = asyncio.ensure_future(out.send(batches[3]))
        await settle()
        assert not blocked.done()
        assert out.metrics["batches_sent"] == 3 and inp.buffered_batches == 3
        assert (await inp.recv()) is batches[0]  # returns one credit
        await asyncio.wait_for(blocked, 1.0)
        assert out.metrics["batches_sent"] == 4
        assert out.metrics["backpressured_seconds"] > 0
        rest = [await inp.recv() for _ in range(4)]
        assert rest == [batches[1], batches[2], events.Watermark(7), batches[3]]
        await server.stop()

    run(body)


def test_sender_before_registration(run):
    async def body():
        server = DataServer(credits=2)
        out = await server.output_channel("early")
        await out.send(events.Watermark(1))  # events are held for the receiver
        pending = asyncio.ensure_future(out.send(make_batch(0, 4)))
        await settle()
        assert not pending.done(), "a batch must wait for the receiver's credit"
        inp = server.input_channel("early")
        await asyncio.wait_for(pending, 1.0)
        assert (await inp.recv()) == events.Watermark(1)
        assert (await inp.recv()).equals(make_batch(0, 4))
        await server.stop()

    run(body)


def test_release_wakes_reader_and_fails_sender(run):
    async def body():
        server = DataServer(credits=1)
        inp = server.input_channel("r")
        out = await server.output_channel("r")
        await out.send(make_batch(0, 1))
        sender_waiting = asyncio.ensure_future(out.send(make_batch(1, 1)))
        await inp.recv()
        await asyncio.wait_for(sender_waiting, 1.0)
        await inp.recv()
        reader_waiting = asyncio.ensure_future(inp.recv())
        await settle()
        server.release("r")
        with pytest.raises(ChannelClosed, match="'r' was released"):
            await asyncio.wait_for(reader_waiting, 1.0)
        with pytest.raises(ChannelClosed, match="'r' was released"):
            await out.send(make_batch(2, 1))
        server.release("r")  # unknown now: no-op
        # The id may be registered again after release.
        again = server.input_channel("r")
        assert again is not inp
        await server.stop()

    run(body)


def test_stop_fails_waiting_sender_and_reader(run):
    async def body():
        server = DataServer(credits=1)
        inp = server.input_channel("s")
        other = server.input_channel("t")
        out = await server.output_channel("s")
        await out.send(make_batch(0, 1))
        sender_waiting = asyncio.ensure_future(out.send(make_batch(1, 1)))
        reader_waiting = asyncio.ensure_future(other.recv())
        await settle()
        await server.stop()
        with pytest.raises(ChannelClosed, match="data server stopped"):
            await asyncio.wait_for(sender_waiting, 1.0)
        with pytest.raises(ChannelClosed, match="'t': data server stopped"):
            await asyncio.wait_for(reader_waiting, 1.0)
        # What arrived before the stop is still delivered, then the error.
        assert (await inp.recv()).equals(make_batch(0, 1))
        with pytest.raises(ChannelClosed):
            await inp.recv()

    run(body)


def test_metrics_count_batches_and_bytes(run):
    rng = np.random.default_rng(5)
    sizes = rng.integers(0, 5000, size=30)
    batches = [make_batch(0, int(n)) for n in sizes]
    batches += [pa.record_batch({"s": pa.array([str(i) * 3 for i in range(100)])}).slice(10, 40)]
    expected_bytes = sum(b.nbytes for b in batches)

    async def body():
        server = DataServer(credits=4)
        inp = server.input_channel("m")
        out = await server.output_channel("m")

        async def produce():
            for b in batches:
                await out.send(b)
            await out.send(events.EndOfStream())

        producer = asyncio.ensure_future(produce())
        peak = 0
        while not inp.finished:
            await inp.recv()
            peak = max(peak, inp.metrics["buffered_bytes"])
        await producer
        assert out.metrics["batches_sent"] == len(batches) == inp.metrics["batches_received"]
        assert out.metrics["bytes_sent"] == expected_bytes == inp.metrics["bytes_received"]
        assert inp.metrics["buffered_bytes"] == 0
        assert inp.metrics["peak_buffered_bytes"] >= peak
        assert inp.metrics["peak_buffered_bytes"] <= 4 * max(b.nbytes for b in batches)
        await server.stop()

    run(body)


def test_bad_input_is_refused_with_clear_errors(run):
    async def body():
        server = DataServer()
        server.input_channel("x")
        out = await server.output_channel("x")
        with pytest.raises(TypeError, match="'x' carries pyarrow.RecordBatch.*got Table"):
            await out.send(pa.table({"a": [1]}))
        with pytest.raises(TypeError, match="got dict"):
            await out.send({"type": "Watermark", "timestamp": 1})
        with pytest.raises(DuplicateChannel, match="'x' is already registered"):
            server.input_channel("x")
        with pytest.raises(DuplicateChannel, match="'x' already has a sender"):
            await server.output_channel("x")
        with pytest.raises(ValueError, match="channel_id must be a non-empty str"):
            server.input_channel("")
        with pytest.raises(ValueError, match="needs host and a TCP port"):
            await server.output_channel("y", "10.0.0.1", None)
        await server.stop()

    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="credits must be an int >= 1"):
            DataServer(credits=bad)
    run(body)


# --------------------------------------------------------------------------- input gate


async def gate_with_channels(n, credits=8):
    server = DataServer(credits=credits)
    inputs = [server.input_channel(f"in{i}") for i in range(n)]
    outputs = [await server.output_channel(f"in{i}") for i in range(n)]
    return server, inputs, outputs, InputGate(inputs)


def test_gate_reads_ready_channels_round_robin(run):
    async def body():
        server, _, outputs, gate = await gate_with_channels(3)
        assert gate.num_channels == 3
        for i, out in enumerate(outputs):
            for j in range(4):
                await out.send(make_batch(100 * i + j, 1))
        got = [await gate.next() for _ in range(12)]
        assert [i for i, _ in got] == [0, 1, 2] * 4
        for i in range(3):
            firsts = [b.column("k")[0].as_py() for c, b in got if c == i]
            assert firsts == [100 * i + j for j in range(4)]
        # Uneven readiness: only channel 2 has data -> it is served, nothing waits on others.
        await outputs[2].send(make_batch(7, 1))
        assert (await asyncio.wait_for(gate.next(), 1.0))[0] == 2
        await server.stop()

    run(body)


def test_gate_block_holds_a_channel_back_while_others_flow(run):
    async def body():
        server, inputs, outputs, gate = await gate_with_channels(2, credits=4)
        gate.block(0)
        assert gate.is_blocked(0) and not gate.is_blocked(1)
        for j in range(3):
            await outputs[0].send(make_batch(j, 1))
            await outputs[1].send(make_batch(10 + j, 1))
        await outputs[0].send(events.CheckpointBarrier(1, 0))
        got = [await gate.next() for _ in range(3)]
        assert [i for i, _ in got] == [1, 1, 1]
        assert inputs[0].buffered_batches == 3  # held in the channel, not dropped
        # Only the blocked channel has data: next() waits until unblock.
        waiting = asyncio.ensure_future(gate.next())
        await settle()
        assert not waiting.done()
        gate.unblock(0)
        first = await asyncio.wait_for(waiting, 1.0)
        rest = [await gate.next() for _ in range(3)]
        items = [first] + rest
        assert [i for i, _ in items] == [0, 0, 0, 0]
        assert [x.column("k")[0].as_py() for _, x in items[:3]] == [0, 1, 2]
        assert items[3][1] == events.CheckpointBarrier(1, 0)
        with pytest.raises(IndexError, match="out of range: this gate has 2 channels"):
            gate.block(2)
        await server.stop()

    run(body)


def test_gate_tracks_finished_channels(run):
    async def body():
        server, _, outputs, gate = await gate_with_channels(2)
        await outputs[0].send(events.EndOfStream())
        await outputs[0].close()
        assert await gate.next() == (0, events.EndOfStream())
        assert gate.finished(0) and not gate.finished(1)
        # A finished (and closed) channel is not read again: no ChannelClosed from it.
        await outputs[1].send(make_batch(0, 2))
        idx, item = await gate.next()
        assert idx == 1 and item.num_rows == 2
        await outputs[1].send(events.EndOfStream())
        assert (await gate.next()) == (1, events.EndOfStream())
        assert gate.all_finished
        with pytest.raises(ChannelClosed, match="all 2 channels have delivered end of stream"):
            await gate.next()
        await server.stop()

    run(body)


def test_gate_raises_when_a_channel_closes_without_end_of_stream(run):
    async def body():
        server, _, outputs, gate = await gate_with_channels(2)
        await outputs[1].send(make_batch(0, 1))
        await outputs[1].close()
        assert (await gate.next())[0] == 1
        with pytest.raises(ChannelClosed, match="'in1' was closed by its sender"):
            await asyncio.wait_for(gate.next(), 1.0)
        await server.stop()

    run(body)


def test_gate_with_concurrent_producers_delivers_everything_in_channel_order(run):
    n_channels, per_channel = 4, 50

    async def body():
        server, _, outputs, gate = await gate_with_channels(n_channels, credits=2)

        async def produce(i, out):
            for j in range(per_channel):
                await out.send(make_batch(i * 1000 + j, 1))
                if j % (i + 1) == 0:
                    await asyncio.sleep(0)
            await out.send(events.EndOfStream())

        producers = [asyncio.ensure_future(produce(i, o)) for i, o in enumerate(outputs)]
        seen = {i: [] for i in range(n_channels)}
        while not gate.all_finished:
            i, item = await gate.next()
            if isinstance(item, pa.RecordBatch):
                seen[i].append(item.column("k")[0].as_py())
        await asyncio.gather(*producers)
        for i in range(n_channels):
            assert seen[i] == [i * 1000 + j for j in range(per_channel)]
        await server.stop()

    run(body)


def test_gate_rejects_non_channels():
    with pytest.raises(TypeError, match="InputGate channel 0 must be an InputChannel, got str"):
        InputGate(["nope"])
    ch = InputChannel("z")
    InputGate([ch])
    with pytest.raises(ValueError, match="'z' is already read by another InputGate"):
        InputGate([ch])


def test_sender_of_a_released_channel_is_refused_not_left_waiting():
    import asyncio

    import pytest

    from sabot.runtime.channels import ChannelClosed
    from sabot.runtime.data_server import DataServer

    async def scenario():
        server = DataServer()
        server.input_channel("gone")
        server.release("gone")
        with pytest.raises(ChannelClosed, match="was released"):
            await server.output_channel("gone")
        # registering the id again (a new reader) makes it usable again
        reader = server.input_channel("gone")
        out = await server.output_channel("gone")
        await out.send(__import__("pyarrow").record_batch({"x": [1]}))
        assert (await reader.recv()).num_rows == 1
        await server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 10))

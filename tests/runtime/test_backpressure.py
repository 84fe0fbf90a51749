"""Credit-based backpressure: a slow consumer slows its producer and bounds memory.

Run for in-process and TCP loopback channels, on asyncio and uvloop.
"""

import asyncio
import time

import numpy as np
import pyarrow as pa
import pytest
import uvloop

from sabot.runtime import events
from sabot.runtime.channels import InputGate
from sabot.runtime.data_server import DataServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(fn, timeout=30.0):
        async def main():
            return await asyncio.wait_for(fn(), timeout)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(main())

    return runner


def varied_batches(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for rows in rng.integers(1_000, 20_000, size=n):
        out.append(pa.record_batch({"k": rng.integers(0, 1000, rows), "v": rng.random(rows)}))
    return out


async def open_pair(transport, credits, ids):
    """(receiving server, sending server, inputs, outputs) for channel ``ids``."""
    rx = DataServer(credits=credits)
    tx = DataServer()
    if transport == "tcp":
        await rx.start()
        host, port = rx.address
    else:
        tx, host, port = rx, None, None  # in-process: the same server holds both ends
    inputs = [rx.input_channel(i) for i in ids]
    outputs = [await tx.output_channel(i, host, port) for i in ids]
    return rx, tx, inputs, outputs


async def close_pair(rx, tx):
    if tx is not rx:
        await tx.stop()
    await rx.stop()


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_slow_consumer_bounds_buffered_bytes_and_backpressures_the_sender(run, transport):
    credits, n, pause = 4, 40, 0.01
    batches = varied_batches(n, seed=1)
    max_nbytes = max(b.nbytes for b in batches)
    bound = credits * max_nbytes

    async def body():
        rx, tx, (inp,), (out,) = await open_pair(transport, credits, ["slow"])
        producer_done = {}

        async def produce():
            start = time.perf_counter()
            for b in batches:
                await out.send(b)
            await out.send(events.EndOfStream())
            producer_done["elapsed"] = time.perf_counter() - start
            await out.close()

        producer = asyncio.ensure_future(produce())
        received, taken = [], 0
        while True:
            item = await inp.recv()
            if isinstance(item, events.EndOfStream):
                break
            received.append(item)
            taken += 1
            # Never more than `credits` batches sent and not yet taken out, whatever the transport.
            assert out.metrics["batches_sent"] - taken <= credits
            assert inp.buffered_batches <= credits
            assert inp.metrics["buffered_bytes"] <= bound
            await asyncio.sleep(pause)  # the slow sink
        await producer
        await close_pair(rx, tx)

        assert len(received) == n
        assert all(got.equals(want) for got, want in zip(received, batches))
        peak = inp.metrics["peak_buffered_bytes"]
        assert 0 < peak <= bound, (peak, bound)
        # The producer had to wait for roughly every batch past the first `credits`.
        min_wait = 0.5 * (n - credits) * pause
        assert out.metrics["backpressured_seconds"] >= min_wait, out.metrics
        assert producer_done["elapsed"] >= min_wait

    run(body)


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_fast_consumer_sees_little_backpressure_compared_to_slow_one(run, transport):
    credits = 2
    batches = varied_batches(30, seed=2)

    async def one_run(pause):
        rx, tx, (inp,), (out,) = await open_pair(transport, credits, ["c"])

        async def produce():
            for b in batches:
                await out.send(b)
            await out.send(events.EndOfStream())
            await out.close()

        producer = asyncio.ensure_future(produce())
        while not isinstance(await inp.recv(), events.EndOfStream):
            if pause:
                await asyncio.sleep(pause)
        await producer
        await close_pair(rx, tx)
        return out.metrics["backpressured_seconds"]

    async def body():
        fast = await one_run(0)
        slow = await one_run(0.01)
        assert slow > fast
        assert slow >= 0.5 * (len(batches) - credits) * 0.01

    run(body)


@pytest.mark.parametrize("transport", ["local", "tcp"])
def test_blocked_gate_channel_backpressures_only_its_sender(run, transport):
    credits, n = 3, 20
    a = varied_batches(n, seed=3)
    b = varied_batches(n, seed=4)

    async def body():
        rx, tx, inputs, (out_a, out_b) = await open_pair(transport, credits, ["a", "b"])
        gate = InputGate(inputs)
        gate.block(0)

        async def produce(out, batches):
            for x in batches:
                await out.send(x)
            await out.send(events.EndOfStream())
            await out.close()

        producers = [asyncio.ensure_future(produce(out_a, a)), asyncio.ensure_future(produce(out_b, b))]
        got_b = []
        while not gate.finished(1):
            idx, item = await gate.next()
            assert idx == 1, "a blocked channel must not be read"
            if isinstance(item, pa.RecordBatch):
                got_b.append(item)
        assert all(x.equals(y) for x, y in zip(got_b, b)) and len(got_b) == n
        # Channel b ran to the end; channel a is held at its credit, bytes bounded.
        await asyncio.sleep(0.1)
        assert out_a.metrics["batches_sent"] == credits
        assert inputs[0].buffered_batches == credits
        assert inputs[0].metrics["peak_buffered_bytes"] <= credits * max(x.nbytes for x in a)
        assert not producers[0].done()

        gate.unblock(0)
        got_a = []
        while not gate.finished(0):
            idx, item = await gate.next()
            assert idx == 0
            if isinstance(item, pa.RecordBatch):
                got_a.append(item)
        await asyncio.gather(*producers)
        assert len(got_a) == n and all(x.equals(y) for x, y in zip(got_a, a))
        assert out_a.metrics["backpressured_seconds"] >= 0.05
        await close_pair(rx, tx)

    run(body)

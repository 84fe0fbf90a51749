"""Unkeyed REBALANCE outputs route by credit: a slow receiver gets less."""

import asyncio

import numpy as np
import pyarrow as pa

from sabot.runtime import events
from sabot.runtime.data_server import DataServer
from sabot.execution.deployment import ChannelTarget, OutputEdgeSpec
from sabot.runtime.output import OutputEdge


def test_slow_receiver_gets_fewer_batches():
    async def scenario():
        server = DataServer(credits=4)
        inputs = [server.input_channel(f"c{i}") for i in range(2)]
        outputs = [await server.output_channel(f"c{i}") for i in range(2)]
        out = OutputEdge(OutputEdgeSpec("x", "rebalance", 128, [ChannelTarget("c0"), ChannelTarget("c1")]), outputs)
        received = [0, 0]

        async def consume(i, delay):
            while True:
                item = await inputs[i].recv()
                if isinstance(item, events.EndOfStream):
                    return
                received[i] += item.num_rows
                await asyncio.sleep(delay)

        consumers = [asyncio.ensure_future(consume(0, 0.01)), asyncio.ensure_future(consume(1, 0.0005))]
        batch = pa.record_batch({"x": np.arange(10)})
        for _ in range(200):
            await out.channels[out.pick_channel()].send(batch)
        for ch in out.channels:
            await ch.send(events.EndOfStream())
        await asyncio.wait_for(asyncio.gather(*consumers), 20)
        await server.stop()
        return received

    received = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert sum(received) == 2000
    # round robin would give each 1000 rows; by credit the slow one gets far less
    assert received[0] < received[1] / 3, received


def test_equal_receivers_share_evenly():
    async def scenario():
        server = DataServer(credits=4)
        inputs = [server.input_channel(f"c{i}") for i in range(3)]
        outputs = [await server.output_channel(f"c{i}") for i in range(3)]
        out = OutputEdge(OutputEdgeSpec("x", "rebalance", 128, [ChannelTarget(f"c{i}") for i in range(3)]), outputs)
        counts = [0, 0, 0]
        for _ in range(30):  # nobody consumes yet: credit is equal, so round robin
            i = out.pick_channel()
            counts[i] += 1
            if outputs[i].credit == 0:
                break
            await outputs[i].send(pa.record_batch({"x": [1]}))
        await server.stop()
        return counts

    counts = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert max(counts) - min(counts) <= 1

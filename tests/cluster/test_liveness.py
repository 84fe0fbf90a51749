"""The heartbeat listener takes only workers that prove their registration ticket."""

import asyncio
import json
import struct

import pytest

from sabot.cluster import liveness
from tests.cluster.test_coordinator import cluster

pytestmark = pytest.mark.timeout(60)


async def hello(port, node_id, proof_for=None):
    """Open a heartbeat connection and send a hello; return (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    challenge = await reader.readexactly(liveness.CHALLENGE_BYTES)
    proof = liveness.proof(proof_for, challenge) if proof_for else "00" * 32
    body = json.dumps({"node_id": node_id, "proof": proof}).encode()
    writer.write(struct.pack(">I", len(body)) + body + b"\0" * 8)
    await writer.drain()
    return reader, writer


async def closed(reader):
    try:
        return await asyncio.wait_for(reader.read(), 5.0) == b""
    except ConnectionResetError:
        return True


def test_a_stranger_cannot_take_over_or_fake_a_workers_heartbeat(arun):
    async def body():
        async with cluster(workers=1, slots=1) as (c, (worker,)):
            port = c.liveness.port
            real = c.liveness._connections[worker.node_id]
            # no proof, a proof made with a guessed ticket, a hello for an unknown node
            for node_id, ticket in [(worker.node_id, None), (worker.node_id, "guess"), ("nobody", "guess")]:
                reader, writer = await hello(port, node_id, ticket)
                assert await closed(reader)
                writer.close()
            # garbage and an oversized hello are dropped too
            for payload in (b"\xff" * 64, struct.pack(">I", 10**9)):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await reader.readexactly(liveness.CHALLENGE_BYTES)
                writer.write(payload)
                assert await closed(reader)
                writer.close()
            # the worker's own heartbeat connection was never replaced, and it is still live
            assert c.liveness._connections[worker.node_id] is real
            await asyncio.sleep(0.5)
            assert worker.node_id in c.nodes and c.registry.losses == 0
            # the ticket it registered with does open a heartbeat (it replaces the old one)
            reader, writer = await hello(port, worker.node_id, worker.liveness_ticket)
            assert await asyncio.wait_for(reader.readexactly(8), 5.0)  # an ack
            assert c.liveness._connections[worker.node_id] is not real
            writer.close()

    arun(body(), 40)

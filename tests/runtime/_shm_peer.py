"""The other process of the shared-memory channel tests: a DataServer driven by JSON lines.

``python -m tests.runtime._shm_peer ROLE LOOP [--credits N] [--ring BYTES] [--min BYTES]``
(ROLE: ``receiver`` or ``sender``; LOOP: ``asyncio`` or ``uvloop``), or :func:`serve` in a
forked child. Each command is one JSON line; each answer is one JSON line. The key comes
from ``$SABOT_TEST_DATA_KEY`` (hex).

Receiver commands: ``register`` (channel), ``drain`` (channel, delay: seconds per
batch; answers what arrived once EndOfStream is in). Sender commands: ``connect``
(host, port, channel), ``send`` (what: ``numbered`` with start, count, rows, or
``diverse``), ``endless`` (rows: numbered batches until killed), ``close``.
"""

import argparse
import asyncio
import json
import os
import sys

import numpy as np
import pyarrow as pa
import uvloop

from sabot.runtime import events
from sabot.runtime.data_server import DataServer

KEY_ENV = "SABOT_TEST_DATA_KEY"


def numbered(index, rows):
    """Batch ``index``: column ``i`` all ``index``, ``v`` a function of index and row."""
    return pa.record_batch({"i": np.full(rows, index, np.int64),
                            "v": np.arange(rows, dtype=np.float64) * 0.5 + index})


class Peer:
    def __init__(self, role, credits, ring, min_bytes, shm):
        self.role = role
        self.server = DataServer(credits=credits, key=bytes.fromhex(os.environ.get(KEY_ENV, "")),
                                 shm_ring_bytes=ring, shm_min_bytes=min_bytes, shm=shm)
        self.out = None
        self.endless = None

    async def start(self):
        if self.role == "receiver":
            host, port = await self.server.start()
            return {"port": port, "pid": os.getpid()}
        return {"pid": os.getpid()}

    async def handle(self, cmd):
        name = cmd["cmd"]
        if name == "register":
            self.server.input_channel(cmd["channel"])
            return {}
        if name == "drain":
            inp = self.server.input_channel(cmd["channel"]) if cmd.get("register") else \
                self.server._channels[cmd["channel"]]
            ids, batches = [], 0
            while True:
                item = await inp.recv()
                if isinstance(item, events.EndOfStream):
                    break
                if isinstance(item, pa.RecordBatch):
                    batches += 1
                    if item.num_rows and "i" in item.schema.names:
                        ids.append(item.column("i")[0].as_py())
                        if item != numbered(ids[-1], item.num_rows):
                            return {"error": f"batch {ids[-1]} arrived damaged"}
                    del item
                    if cmd.get("delay"):
                        await asyncio.sleep(cmd["delay"])
            return {"batches": batches, "ids": ids, "metrics": inp.metrics}
        if name == "connect":
            self.out = await self.server.output_channel(cmd["channel"], cmd["host"], cmd["port"])
            return {"shm": self.out.shared_memory}
        if name == "send":
            if cmd["what"] == "diverse":
                from tests.runtime.test_network_channel import diverse_batches

                sent = diverse_batches()
            else:
                sent = (numbered(cmd["start"] + k, cmd["rows"]) for k in range(cmd["count"]))
            for batch in sent:
                await self.out.send(batch)
            return {"metrics": self.out.metrics}
        if name == "endless":
            async def forever():
                index = 0
                while True:
                    await self.out.send(numbered(index, cmd["rows"]))
                    index += 1

            self.endless = asyncio.ensure_future(forever())
            while self.out.metrics["shm_batches_sent"] < 4:
                await asyncio.sleep(0.01)
            return {"metrics": self.out.metrics}
        if name == "close":
            await self.out.send(events.EndOfStream())
            await self.out.close()
            return {"metrics": self.out.metrics}
        return {"error": f"unknown command {name!r}"}


async def _serve(peer, commands, replies):
    loop = asyncio.get_running_loop()

    def answer(obj):
        replies.write(json.dumps(obj) + "\n")
        replies.flush()

    try:
        answer(await peer.start())
        while True:
            line = await loop.run_in_executor(None, commands.readline)
            if not line:
                return
            try:
                answer(await peer.handle(json.loads(line)))
            except Exception as exc:
                answer({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await peer.server.stop()


def serve(role, loop_kind, commands, replies, credits=8, ring=64 << 20, min_bytes=0, shm=None):
    factory = asyncio.new_event_loop if loop_kind == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(Peer(role, credits, ring, min_bytes, shm), commands, replies))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("receiver", "sender"))
    parser.add_argument("loop", choices=("asyncio", "uvloop"))
    parser.add_argument("--credits", type=int, default=8)
    parser.add_argument("--ring", type=int, default=64 << 20)
    parser.add_argument("--min", type=int, default=0)
    args = parser.parse_args()
    serve(args.role, args.loop, sys.stdin, sys.stdout, args.credits, args.ring, args.min)


if __name__ == "__main__":
    main()

"""Channel throughput: 64k-row batches (int64 + float64) through in-process and TCP channels.

Measures, in one process and one run:
  * baseline: a plain memory copy of the same bytes with numpy (np.copyto per batch) into
    one batch-sized destination, which stays in the CPU's cache;
  * a second memory copy, into consecutive batch-sized slots of a buffer as large as a
    shared-memory channel's ring (64 MiB), as the channel's sender writes each batch into
    its ring: the bytes go out to memory, as they must to reach another process;
  * (a) an in-process channel (batches are passed by reference);
  * (b) a TCP loopback channel (Arrow IPC frames, credit frames back; the connection
    authenticated with the cluster key), sender and receiver on the same event loop, so
    one core does both ends;
  * (c) the same over TLS (certificates made with trustme), interleaved with (b): the
    cost of TLS is the ratio of the two;
  * (d) between two processes of this host (a receiving DataServer in a child process):
    through shared memory (the same-host ring, doorbells over TCP), interleaved with
    (e) plain TCP between the same two processes (shared memory switched off).
(b) and (c) keep shared memory off. All run on the default asyncio loop and on uvloop.
Figures are GB/s of ``RecordBatch.nbytes`` and batches/s (median of ``--repeat`` runs,
all of one loop's cases interleaved after a small warm-up), and the ratio to the memory
copy's throughput. Every channel run checks that every row arrived (and, between
processes, that shared memory carried every batch, or none with it off).

    python bench/bench_channels.py            # ~1 GiB per measurement
    python bench/bench_channels.py --quick    # 64 MiB
    python bench/bench_channels.py --json out.json
"""

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import uvloop

# Runnable from a checkout without installing: `python bench/bench_channels.py`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, collect, summarize, table  # noqa: E402

from sabot.runtime import events  # noqa: E402
from sabot.runtime.data_server import DEFAULT_SHM_RING_BYTES, DataServer  # noqa: E402

ROWS = 64 * 1024
POOL = 16  # distinct batches cycled through, so the data set need not be held in memory


def make_batches(rows=ROWS):
    rng = np.random.default_rng(0)
    return [
        pa.record_batch({"k": rng.integers(0, 1 << 40, rows), "v": rng.random(rows)})
        for _ in range(POOL)
    ]


def bench_memcpy(batches, count):
    """Copy each batch's column bytes into a destination buffer, like a channel that copies once."""
    srcs = [(b.column(0).to_numpy(), b.column(1).to_numpy()) for b in batches]
    dst_k = np.empty(ROWS, np.int64)
    dst_v = np.empty(ROWS, np.float64)
    start = time.perf_counter()
    for i in range(count):
        k, v = srcs[i % POOL]
        np.copyto(dst_k, k)
        np.copyto(dst_v, v)
    elapsed = time.perf_counter() - start
    assert dst_k[-1] == srcs[(count - 1) % POOL][0][-1]
    return elapsed


def bench_memcpy_ring(batches, count, ring_bytes=DEFAULT_SHM_RING_BYTES):
    """Copy each batch's column bytes into the next slot of a ring-sized buffer, wrapping."""
    srcs = [(b.column(0).to_numpy(), b.column(1).to_numpy()) for b in batches]
    slots = max(1, ring_bytes // (ROWS * 16))
    dst_k = np.empty((slots, ROWS), np.int64)
    dst_v = np.empty((slots, ROWS), np.float64)
    dst_k.fill(0), dst_v.fill(0)  # touch every page before timing, as a ring in use has
    start = time.perf_counter()
    for i in range(count):
        k, v = srcs[i % POOL]
        np.copyto(dst_k[i % slots], k)
        np.copyto(dst_v[i % slots], v)
    elapsed = time.perf_counter() - start
    assert dst_k[(count - 1) % slots][-1] == srcs[(count - 1) % POOL][0][-1]
    return elapsed


def tls_contexts():
    """(server, client) SSLContexts from a throwaway CA (trustme, a test extra)."""
    import trustme

    from sabot.cluster.tls import TlsConfig

    directory = tempfile.mkdtemp(prefix="sabot-bench-tls-")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(directory, "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(os.path.join(directory, "node.pem"))
    node = os.path.join(directory, "node.pem")
    tls = TlsConfig(node, node, os.path.join(directory, "ca.pem"))
    return tls.server_context(), tls.client_context()


KEY = b"bench-key" * 4


async def pump(batches, count, tcp, credits, tls=None):
    server_ssl, client_ssl = tls or (None, None)
    key = KEY
    rx = DataServer(credits=credits, key=key, server_ssl=server_ssl, shm=False)
    tx = DataServer(key=key, client_ssl=client_ssl, shm=False)
    try:
        if tcp:
            host, port = await rx.start()
        else:
            tx, host, port = rx, None, None
        inp = rx.input_channel("bench")
        out = await tx.output_channel("bench", host, port)

        async def produce():
            for i in range(count):
                await out.send(batches[i % POOL])
            await out.send(events.EndOfStream())
            await out.close()

        start = time.perf_counter()
        producer = asyncio.ensure_future(produce())
        rows = 0
        while True:
            item = await inp.recv()
            if isinstance(item, pa.RecordBatch):
                rows += item.num_rows
            else:
                break
        await producer
        elapsed = time.perf_counter() - start
        assert rows == count * batches[0].num_rows, (rows, count)
        return elapsed, dict(out.metrics), dict(inp.metrics)
    finally:
        if tx is not rx:
            await tx.stop()
        await rx.stop()


class Peer:
    """A child process running a receiving DataServer on ``loop_kind``: the other end of (d) and (e)."""

    def __init__(self, loop_kind, credits):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--peer", loop_kind,
                                      "--credits", str(credits)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.address = ("127.0.0.1", int(self.proc.stdout.readline()))
        self.runs = 0

    def expect(self):
        """Tell the child to read the next channel; returns its id."""
        self.runs += 1
        channel_id = f"bench-{self.runs}"
        self.proc.stdin.write(channel_id + "\n")
        self.proc.stdin.flush()
        return channel_id

    def result(self):
        rows, shm_batches = map(int, self.proc.stdout.readline().split())
        return rows, shm_batches

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def pump_to_peer(batches, count, peer, use_shm, shm_min_bytes=0):
    tx = DataServer(key=KEY, shm=use_shm, shm_min_bytes=shm_min_bytes)
    try:
        channel_id = peer.expect()
        out = await tx.output_channel(channel_id, *peer.address)
        assert out.shared_memory == use_shm, "the shared-memory offer was not taken"
        start = time.perf_counter()
        for i in range(count):
            await out.send(batches[i % POOL])
        await out.send(events.EndOfStream())
        await out.close()  # returns once the receiver has read everything and closed its end
        elapsed = time.perf_counter() - start
        metrics = dict(out.metrics)
    finally:
        await tx.stop()
    rows, shm_batches = peer.result()
    assert rows == count * batches[0].num_rows, (rows, count)
    assert shm_batches == (count if use_shm else 0), shm_batches
    return elapsed, metrics, {"peak_buffered_bytes": 0}


async def serve_peer(credits):
    """The child's side: receive each channel the parent names, count rows, report."""
    rx = DataServer(credits=credits, key=KEY)
    host, port = await rx.start()
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            channel_id = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not channel_id:
                return
            inp = rx.input_channel(channel_id)
            rows = 0
            while True:
                item = await inp.recv()
                if isinstance(item, pa.RecordBatch):
                    rows += item.num_rows
                    del item  # frees the ring's region at once
                else:
                    break
            shm_batches = inp.metrics.get("shm_batches_received", 0)
            rx.release(channel_id)
            print(rows, shm_batches, flush=True)
    finally:
        await rx.stop()


def run_on(loop_kind, coro):
    factory = asyncio.new_event_loop if loop_kind == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 MiB instead of ~1 GiB per measurement")
    parser.add_argument("--credits", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of every channel (median)")
    parser.add_argument("--threshold", action="store_true",
                        help="only shared memory against TCP between two processes by batch size (uvloop): "
                             "where DataServer.shm_min_bytes should lie")
    parser.add_argument("--peer", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    if args.peer:
        run_on(args.peer, serve_peer(args.credits))
        return
    if args.threshold:
        threshold(args)
        return

    batches = make_batches()
    batch_bytes = batches[0].nbytes
    count = (64 << 20) // batch_bytes if args.quick else (1 << 30) // batch_bytes
    total = count * batch_bytes
    print(f"{count} batches of {ROWS} rows (int64 + float64), {batch_bytes / 2**20:.2f} MiB each, "
          f"{total / 2**30:.2f} GiB per measurement, credits={args.credits}, median of {args.repeat} "
          f"interleaved runs")
    tls = tls_contexts()
    report = Report("bench_channels", batches=count, rows_per_batch=ROWS, bytes=total, credits=args.credits,
                    repeat=args.repeat)
    for loop_kind in ("asyncio", "uvloop"):
        peer = Peer(loop_kind, args.credits)
        try:
            warm = min(count, 32)  # sockets, imports, the TLS path, both processes
            run_on(loop_kind, pump(batches, warm, True, args.credits))
            run_on(loop_kind, pump(batches, warm, True, args.credits, tls))
            run_on(loop_kind, pump_to_peer(batches, warm, peer, True))
            run_on(loop_kind, pump_to_peer(batches, warm, peer, False))

            def memcpy():
                return bench_memcpy(batches, count), {"backpressured_seconds": 0.0}, {"peak_buffered_bytes": 0}

            def memcpy_ring():
                return bench_memcpy_ring(batches, count), {"backpressured_seconds": 0.0}, {"peak_buffered_bytes": 0}

            cases = {
                "memcpy": memcpy,
                "memcpy into a ring-sized buffer": memcpy_ring,
                "in-process channel": lambda: run_on(loop_kind, pump(batches, count, False, args.credits)),
                "tcp loopback": lambda: run_on(loop_kind, pump(batches, count, True, args.credits)),
                "tls loopback": lambda: run_on(loop_kind, pump(batches, count, True, args.credits, tls)),
                "shared memory, 2 processes": lambda: run_on(loop_kind, pump_to_peer(batches, count, peer, True)),
                "tcp, 2 processes": lambda: run_on(loop_kind, pump_to_peer(batches, count, peer, False)),
            }
            runs = collect(cases, repeat=args.repeat, warmup=0)
        finally:
            peer.close()
        rates = summarize({name: [total / r[0] for r in rs] for name, rs in runs.items()}, unit="B/s")
        print(f"\n[{loop_kind}]")
        print(table(rates, baseline="memcpy", ratio="throughput / memcpy's"))
        base = rates["memcpy"].median
        for name, rs in runs.items():
            if name.startswith("memcpy"):
                continue
            elapsed, out_m, in_m = sorted(rs, key=lambda r: r[0])[len(rs) // 2]
            report_line(f"{name} [{loop_kind}]", total, count, total / base, elapsed, out_m, in_m,
                        rates[name].spread_pct)
        print(f"{'  TLS / TCP throughput':34s} {rates['tls loopback'].median / rates['tcp loopback'].median:7.2f}x")
        print(f"{'  shared memory / ring-sized memcpy':34s} "
              f"{rates['shared memory, 2 processes'].median / rates['memcpy into a ring-sized buffer'].median:7.2f}x")
        print(f"{'  shared memory / TCP (2 processes)':34s} "
              f"{rates['shared memory, 2 processes'].median / rates['tcp, 2 processes'].median:7.2f}x")
        report.add(loop_kind, rates, baseline="memcpy")
    report.headline("channel between 2 processes of one host, shared memory [uvloop] (target >= 0.5x memcpy; that copy stays in cache)",
                    "uvloop", "shared memory, 2 processes")
    report.headline("channel between 2 processes of one host, shared memory [uvloop] vs a memcpy into a buffer as "
                    "large as its ring (target >= 0.5x)", "uvloop", "shared memory, 2 processes",
                    baseline="memcpy into a ring-sized buffer")
    report.headline("channel between 2 processes, TCP [uvloop]", "uvloop", "tcp, 2 processes")
    report.headline("TLS loopback channel vs TCP loopback [uvloop]", "uvloop", "tls loopback", baseline="tcp loopback")
    if args.json:
        report.write(args.json)


def threshold(args):
    """Shared memory against TCP between two processes, by batch size: time per batch."""
    peer = Peer("uvloop", args.credits)
    try:
        print(f"{'batch (IPC bytes)':>18s} {'shm us/batch':>13s} {'tcp us/batch':>13s} {'tcp/shm time':>13s}")
        for rows in (16, 64, 128, 256, 512, 1024, 4096, 16384, 65536):
            batches = make_batches(rows)
            size = pa.ipc.get_record_batch_size(batches[0])
            count = max(64, min(20_000, (256 << 20) // size))
            if args.quick:
                count //= 4
            run_on("uvloop", pump_to_peer(batches, min(count, 64), peer, True))  # warm up
            runs = {"shm": [], "tcp": []}
            for _ in range(args.repeat):
                for mode in ("shm", "tcp"):
                    runs[mode].append(run_on("uvloop", pump_to_peer(batches, count, peer, mode == "shm"))[0])
            shm_t, tcp_t = (sorted(runs[m])[len(runs[m]) // 2] / count * 1e6 for m in ("shm", "tcp"))
            print(f"{size:>18,d} {shm_t:13.1f} {tcp_t:13.1f} {tcp_t / shm_t:12.2f}x")
    finally:
        peer.close()


def report_line(name, total, count, base, elapsed, out_m, in_m, spread=None):
    note = f", spread {spread:.0f} %" if spread is not None else ""
    print(
        f"{name:34s} {total / elapsed / 1e9:7.2f} GB/s {count / elapsed:10.0f} batches/s "
        f"{base / elapsed:5.2f}x memcpy   (sender backpressured {out_m['backpressured_seconds']:.2f} s,"
        f" peak buffered {in_m['peak_buffered_bytes'] / 2**20:.1f} MiB{note})"
    )


if __name__ == "__main__":
    main()

"""Slot table and SlotPool benchmark.

    python bench/bench_slots.py           # full run (about 20-40 s)
    python bench/bench_slots.py --quick   # small sizes

Measures, in one process:

1. ``SlotTable.allocate`` / ``release`` pairs on 1,000 nodes x 8 slots, half full,
   releasing a random live slot after each allocation (target >= 2 M ops/s);
   the same through the batch kernels (GIL released); exclusive and shared.
2. Baselines measured here: a seed-style pure-Python pool that scans for a free
   slot, and the simplest pure-Python free list (one deque, no placement policy).
3. ``SlotPool.request_slot`` / ``release_task`` pairs (the Python layer).
4. Pending-queue service: N queued requests served one per release, for growing
   N; the time per served request must stay flat (O(1)).
"""

import argparse
import random
import sys
import time
from collections import deque

import numpy as np

try:
    import sabot  # noqa: F401  (installed, or run from the repository root with -m)
except ImportError:  # `python bench/bench_slots.py` from a checkout
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sabot._core.slots import SlotTable
from sabot.execution.slot_pool import SlotPool, SlotRequest


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- baselines


class SeedStylePool:
    """What a straightforward Python slot pool does: scan all slots for a free one."""

    def __init__(self):
        self.slots = []  # [node, cpu, mem, free]

    def add_node(self, node, n, cpu, mem):
        for _ in range(n):
            self.slots.append([node, cpu, mem, True])

    def allocate(self, cpu, mem, preferred=-1):
        fallback = -1
        for i, s in enumerate(self.slots):
            if s[3] and cpu <= s[1] and mem <= s[2]:
                if s[0] == preferred or preferred < 0:
                    s[3] = False
                    return i
                if fallback < 0:
                    fallback = i
        if fallback >= 0:
            self.slots[fallback][3] = False
        return fallback

    def release(self, i):
        self.slots[i][3] = True


class DequeFreeList:
    """Lower bound for pure Python: one global free list, no fit check, no policy."""

    def __init__(self, total):
        self.free = deque(range(total))

    def allocate(self):
        return self.free.popleft() if self.free else -1

    def release(self, s):
        self.free.append(s)


# ----------------------------------------------------------------------------- runs


def churn(allocate, release, live, picks):
    """Allocate one slot, release a random live one; len(picks) pairs."""
    n_live = len(live)
    for i in picks:
        s = allocate()
        j = i % n_live
        old = live[j]
        live[j] = s
        release(old)


def bench_table(pairs, nodes, slots_per_node):
    rng = random.Random(1)
    picks = [rng.randrange(1 << 30) for _ in range(pairs)]
    total = nodes * slots_per_node

    t = SlotTable()
    for _ in range(nodes):
        t.add_node(slots_per_node, 1.0, 1024)
    live = [t.allocate(1.0, 1024) for _ in range(total // 2)]
    alloc, rel = t.allocate, t.release
    dt = timed(lambda: churn(lambda: alloc(1.0, 1024), rel, live, picks))
    assert t.free_slots == total - total // 2
    table_ops = 2 * pairs / dt
    print(f"SlotTable allocate+release ({nodes} nodes x {slots_per_node}, half full): "
          f"{pairs:,} pairs in {dt * 1e3:.1f} ms = {table_ops / 1e6:.2f} M ops/s "
          f"(target >= 2 M ops/s)")

    # with a preferred node on every request
    prefs = [p % nodes for p in picks]
    it = iter(prefs)
    dt_pref = timed(lambda: churn(lambda: alloc(1.0, 1024, next(it)), rel, live, picks))
    print(f"  with preferred node:                          {2 * pairs / dt_pref / 1e6:.2f} M ops/s")

    # batch kernels: allocate a chunk, release it, GIL released in both
    chunk = total // 2
    rounds = max(1, pairs // chunk)

    def batch():
        for _ in range(rounds):
            got = t.allocate_many(chunk, 1.0, 1024)
            t.release_many(got)

    dt_batch = timed(batch)
    batch_ops = 2 * rounds * chunk / dt_batch
    print(f"  batch kernels allocate_many/release_many:      {batch_ops / 1e6:.2f} M ops/s")

    # shared slots: 4 operators of one sharing group
    ts = SlotTable()
    for _ in range(nodes):
        ts.add_node(slots_per_node, 1.0, 1024)
    g = ts.add_group()
    ops = [ts.add_group_op(g) for _ in range(4)]
    held = {k: [ts.allocate_shared(k, 0.5, 256) for _ in range(total // 4)] for k in ops}
    op_picks = [(ops[p % 4], p) for p in picks]
    a_sh, r_sh = ts.allocate_shared, ts.release_shared

    def shared():
        for k, p in op_picks:
            lst = held[k]
            j = p % len(lst)
            old = lst[j]
            r_sh(old, k)
            lst[j] = a_sh(k, 0.5, 256)

    dt_sh = timed(shared)
    print(f"  shared (4 operators, one group) release+join:  {2 * pairs / dt_sh / 1e6:.2f} M ops/s")

    # baselines
    seed = SeedStylePool()
    for n in range(nodes):
        seed.add_node(n, slots_per_node, 1.0, 1024)
    seed_pairs = max(200, pairs // 500)
    live_seed = [seed.allocate(1.0, 1024) for _ in range(total // 2)]
    dt_seed = timed(lambda: churn(lambda: seed.allocate(1.0, 1024), seed.release,
                                  live_seed, picks[:seed_pairs]))
    seed_ops = 2 * seed_pairs / dt_seed
    fl = DequeFreeList(total)
    live_fl = [fl.allocate() for _ in range(total // 2)]
    dt_fl = timed(lambda: churn(fl.allocate, fl.release, live_fl, picks))
    fl_ops = 2 * pairs / dt_fl
    print(f"baseline seed-style Python scan:                 {seed_ops / 1e6:.4f} M ops/s "
          f"({seed_pairs:,} pairs)  -> SlotTable is {table_ops / seed_ops:,.0f}x faster")
    print(f"baseline Python deque free list (no policy):     {fl_ops / 1e6:.2f} M ops/s "
          f"-> SlotTable is {table_ops / fl_ops:.2f}x, batch kernels {batch_ops / fl_ops:.1f}x")
    return table_ops


def bench_pool(pairs, nodes, slots_per_node):
    pool = SlotPool()
    for n in range(nodes):
        pool.register_node(f"node-{n}", slots_per_node)
    total = nodes * slots_per_node
    live = []
    for i in range(total // 2):
        r = SlotRequest(task_id=f"pre{i}", operator_id="op")
        pool.request_slot(r)
        live.append(r.task_id)
    requests = [SlotRequest(task_id=f"t{i}", operator_id="op") for i in range(pairs)]
    rng = random.Random(2)
    picks = [rng.randrange(len(live)) for _ in range(pairs)]
    req, rel = pool.request_slot, pool.release_task

    def run():
        for r, j in zip(requests, picks):
            req(r)
            old = live[j]
            live[j] = r.task_id
            rel(old)

    dt = timed(run)
    print(f"SlotPool request_slot+release_task (Python layer): {2 * pairs / dt / 1e6:.2f} M ops/s "
          f"({pairs:,} pairs)")


def bench_queue(sizes):
    print("pending-queue service (1 slot, N queued, each release serves the next):")
    per_request = []
    for n in sizes:
        pool = SlotPool()
        pool.register_node("n", 1)
        pool.request_slot(SlotRequest(task_id="holder", operator_id="op"))
        requests = [SlotRequest(task_id=f"q{i}", operator_id="op") for i in range(n)]
        t0 = time.perf_counter()
        for r in requests:
            pool.request_slot(r)
        t_enqueue = time.perf_counter() - t0
        assert pool.pending_requests == n
        release = pool.release_task
        holders = ["holder"] + [r.task_id for r in requests[:-1]]

        def serve():
            for h in holders:
                release(h)

        dt = timed(serve)
        assert pool.pending_requests == 0 and pool.get_task_slot(requests[-1].task_id)
        per_request.append(dt / n)
        print(f"  N = {n:>9,}: enqueue {t_enqueue / n * 1e6:.2f} us/request, "
              f"serve {dt / n * 1e6:.2f} us/request")
    print(f"  per-request service time, largest N / smallest N: "
          f"{per_request[-1] / per_request[0]:.2f}x (1.0 = O(1))")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args(argv)
    if args.quick:
        pairs, queue_sizes, pool_pairs = 100_000, (1_000, 10_000, 50_000), 20_000
    else:
        pairs, queue_sizes, pool_pairs = 1_000_000, (1_000, 10_000, 100_000, 500_000), 200_000
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}")
    bench_table(pairs, nodes=1000, slots_per_node=8)
    bench_pool(pool_pairs, nodes=1000, slots_per_node=8)
    bench_queue(queue_sizes)


if __name__ == "__main__":
    main()

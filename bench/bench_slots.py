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

1-3 run interleaved (one churn of each, then the next round) after a warm-up; figures
are the median ops/s of ``--repeat`` rounds; after every churn the free-slot count is
checked. The headline ratio is SlotTable / the deque free list.

    python bench/bench_slots.py [--quick] [--repeat 5] [--json out.json]
"""

import argparse
import random
import sys
import time
from collections import deque

import numpy as np

import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, collect, summarize, table  # noqa: E402

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


def churn_cases(pairs, pool_pairs, nodes, slots_per_node):
    """{name: fn() -> ops/s}: one churn each, its state made once; every churn checked."""
    rng = random.Random(1)
    picks = [rng.randrange(1 << 30) for _ in range(pairs)]
    total = nodes * slots_per_node
    half = total - total // 2

    def rate(ops, fn):
        t = timed(fn)
        return ops / t

    t = SlotTable()
    for _ in range(nodes):
        t.add_node(slots_per_node, 1.0, 1024)
    live = [t.allocate(1.0, 1024) for _ in range(total // 2)]
    alloc, rel = t.allocate, t.release
    prefs = [p % nodes for p in picks]

    def table_churn():
        r = rate(2 * pairs, lambda: churn(lambda: alloc(1.0, 1024), rel, live, picks))
        assert t.free_slots == half and -1 not in live, "SlotTable lost or double-gave a slot"
        return r

    def table_pref():
        it = iter(prefs)
        r = rate(2 * pairs, lambda: churn(lambda: alloc(1.0, 1024, next(it)), rel, live, picks))
        assert t.free_slots == half and -1 not in live
        return r

    chunk = total // 2
    rounds = max(1, pairs // chunk)

    def batch():
        def run():
            for _ in range(rounds):
                got = t.allocate_many(chunk, 1.0, 1024)
                assert len(got) == chunk and (got >= 0).all()
                t.release_many(got)
        r = rate(2 * rounds * chunk, run)
        assert t.free_slots == half
        return r

    ts = SlotTable()
    for _ in range(nodes):
        ts.add_node(slots_per_node, 1.0, 1024)
    g = ts.add_group()
    ops = [ts.add_group_op(g) for _ in range(4)]
    held = {k: [ts.allocate_shared(k, 0.5, 256) for _ in range(total // 4)] for k in ops}
    op_picks = [(ops[p % 4], p) for p in picks]
    a_sh, r_sh = ts.allocate_shared, ts.release_shared

    def shared():
        def run():
            for k, p in op_picks:
                lst = held[k]
                j = p % len(lst)
                old = lst[j]
                r_sh(old, k)
                lst[j] = a_sh(k, 0.5, 256)
        r = rate(2 * pairs, run)
        assert all(s >= 0 for lst in held.values() for s in lst), "a shared allocation failed"
        return r

    seed = SeedStylePool()
    for n in range(nodes):
        seed.add_node(n, slots_per_node, 1.0, 1024)
    seed_pairs = max(200, pairs // 500)
    live_seed = [seed.allocate(1.0, 1024) for _ in range(total // 2)]

    def seed_churn():
        r = rate(2 * seed_pairs, lambda: churn(lambda: seed.allocate(1.0, 1024), seed.release,
                                               live_seed, picks[:seed_pairs]))
        assert sum(s[3] for s in seed.slots) == half
        return r

    fl = DequeFreeList(total)
    live_fl = [fl.allocate() for _ in range(total // 2)]

    def deque_churn():
        r = rate(2 * pairs, lambda: churn(fl.allocate, fl.release, live_fl, picks))
        assert len(fl.free) == half
        return r

    pool = SlotPool()
    for n in range(nodes):
        pool.register_node(f"node-{n}", slots_per_node)
    pool_live = []
    for i in range(total // 2):
        r = SlotRequest(task_id=f"pre{i}", operator_id="op")
        pool.request_slot(r)
        pool_live.append(r.task_id)
    prng = random.Random(2)
    pool_picks = [prng.randrange(len(pool_live)) for _ in range(pool_pairs)]
    runs = iter(range(1 << 30))

    def pool_churn():
        run_id = next(runs)
        requests = [SlotRequest(task_id=f"t{run_id}-{i}", operator_id="op") for i in range(pool_pairs)]
        req, rel_task = pool.request_slot, pool.release_task

        def run():
            for r, j in zip(requests, pool_picks):
                req(r)
                old = pool_live[j]
                pool_live[j] = r.task_id
                rel_task(old)
        rate_ = rate(2 * pool_pairs, run)
        assert all(pool.get_task_slot(task) for task in pool_live[:100]), "SlotPool lost a task's slot"
        return rate_

    return {
        "SlotTable allocate+release": table_churn,
        "  with preferred node": table_pref,
        "  batch kernels allocate_many/release_many": batch,
        "  shared (4 operators, one group)": shared,
        f"SlotPool request+release (Python layer, {pool_pairs:,} pairs)": pool_churn,
        "Python deque free list": deque_churn,
        f"seed-style Python scan ({seed_pairs:,} pairs)": seed_churn,
    }


def bench_queue(sizes, repeat):
    """Per served request, for each N: one pool with N queued requests per run (made
    outside the timed part), each release serving the next; interleaved over N."""
    def case(n):
        def run():
            pool = SlotPool()
            pool.register_node("n", 1)
            pool.request_slot(SlotRequest(task_id="holder", operator_id="op"))
            requests = [SlotRequest(task_id=f"q{i}", operator_id="op") for i in range(n)]
            for r in requests:
                pool.request_slot(r)
            assert pool.pending_requests == n
            release = pool.release_task
            holders = ["holder"] + [r.task_id for r in requests[:-1]]

            def serve():
                for h in holders:
                    release(h)

            dt = timed(serve)
            assert pool.pending_requests == 0 and pool.get_task_slot(requests[-1].task_id)
            return dt / n
        return run

    out = collect({f"N = {n:,}": case(n) for n in sizes}, repeat=repeat, warmup=0)
    results = summarize(out, unit="s")
    print("pending-queue service (1 slot, N queued, each release serves the next), time per served request:")
    print(table(results, baseline=f"N = {sizes[0]:,}", ratio="time / smallest N (1.0 = O(1))"))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 5, --quick 3)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        pairs, queue_sizes, pool_pairs = 100_000, (1_000, 10_000, 50_000), 20_000
    else:
        pairs, queue_sizes, pool_pairs = 1_000_000, (1_000, 10_000, 100_000, 500_000), 200_000
    repeat = args.repeat or (3 if args.quick else 5)
    nodes, slots_per_node = 1000, 8
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}; {nodes} nodes x {slots_per_node} slots, "
          f"half full, {pairs:,} allocate+release pairs; median of {repeat} interleaved rounds")
    rates = summarize(collect(churn_cases(pairs, pool_pairs, nodes, slots_per_node), repeat=repeat, warmup=1),
                      unit="ops/s")
    deque = "Python deque free list"
    print(table(rates, baseline=deque, ratio="ops/s / baseline (> 1: faster)"))
    print(f"  target: SlotTable >= 2 M ops/s; SlotTable is "
          f"{rates['SlotTable allocate+release'].median / next(v for k, v in rates.items() if 'seed' in k).median:,.0f}x"
          f" the seed-style scan")
    queue = bench_queue(queue_sizes, repeat)
    report = Report("bench_slots", pairs=pairs, nodes=nodes, slots_per_node=slots_per_node, repeat=repeat)
    report.add("churn", rates, baseline=deque)
    report.add("queue service", queue, baseline=f"N = {queue_sizes[0]:,}")
    report.headline(f"slot table, {pairs:,} allocate+release on {nodes:,} nodes", "churn",
                    "SlotTable allocate+release", note="target >= 2 M ops/s")
    report.headline(f"pending-queue service at N = {queue_sizes[-1]:,} vs N = {queue_sizes[0]:,} (1.0 = O(1))",
                    "queue service", f"N = {queue_sizes[-1]:,}")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

"""Benchmark: the rebalance planner (sabot.execution.rebalance) against same-run baselines.

    python bench/bench_rebalance.py           # G = 128, 4096, 32768 key groups; P = 4, 64
    python bench/bench_rebalance.py --quick   # fewer rows, fewer repeats

Workloads (per-key-group loads, i.e. what ``HashPartitioner.key_group_counts`` measures):

* zipf     int64 keys drawn from Zipf(s = 1.2), hashed into key groups by
           ``sabot._core.partition`` (the skew of issue 7's auto-rebalance test);
* lognorm  independent log-normal (sigma = 1) load per key group: broad skew with no
           single dominant group, so the lower bound is near 0 and the planner has work.

For each case, starting from the default contiguous assignment:

* default  the naive baseline: keep the contiguous range table (imbalance before);
* plan     ``plan_assignment`` (time, imbalance after, moved load fraction);
* lpt      baseline planner: LPT from scratch (heaviest key group to least-loaded task,
           a heap), timed in the same process; it ignores the current table, so it
           shows what planning without regard to movement would move.

"bound" is ``lower_bound_imbalance`` (no table does better); "floor" is the least
load any table with the plan's maximum must move (sum of each task's excess over that
maximum). Times are the median of ``--repeat`` runs, plan and LPT interleaved after a
warm-up; every plan is checked against the loads (a valid table whose task loads,
recomputed with numpy, give the imbalance it claims, no worse than before).

    python bench/bench_rebalance.py [--quick] [--repeat N] [--json out.json]
"""

import argparse
import heapq
import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure  # noqa: E402

import sabot._core.partition as partition  # noqa: E402
from sabot.execution.rebalance import imbalance, plan_assignment  # noqa: E402


def lpt(loads, parallelism):
    """Longest processing time first, from scratch: the classic 4/3-approximation."""
    heap = [(0.0, t) for t in range(parallelism)]
    out = np.zeros(len(loads), dtype=np.int32)
    for kg in np.argsort(-loads, kind="stable").tolist():
        load, t = heapq.heappop(heap)
        out[kg] = t
        heapq.heappush(heap, (load + float(loads[kg]), t))
    return out


def zipf_loads(rng, rows, g):
    keys = rng.zipf(1.2, rows).astype(np.int64)
    groups = partition.key_groups(partition.hash_columns(pa.array(keys)), g)
    return np.bincount(groups, minlength=g).astype(np.float64)


def lognorm_loads(rng, rows, g):
    w = rng.lognormal(0.0, 1.0, g)
    return np.round(w / w.sum() * rows)


def check_plan(loads, current, p):
    def check(name, out):
        table = out.assignment if name == "plan" else out
        assert len(table) == len(loads) and table.min() >= 0 and table.max() < p, f"{name}: invalid table"
        if name == "plan":
            task_loads = np.bincount(table, weights=loads, minlength=p)
            assert np.isclose(imbalance(task_loads), out.imbalance_after), "plan's imbalance is not its table's"
            assert out.imbalance_after <= out.imbalance_before + 1e-12, "plan made the balance worse"
            moved = loads[table != current].sum() / loads.sum()
            assert np.isclose(moved, out.moved_load_fraction), "plan's moved fraction is not its table's"
    return check


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 5, --quick 3)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    rows = 200_000 if args.quick else 2_000_000
    repeat = args.repeat or (3 if args.quick else 5)
    rng = np.random.default_rng(7)
    report = Report("bench_rebalance", rows=rows, repeat=repeat)

    print(f"rebalance planner, rows per workload {rows:,}, median of {repeat} interleaved runs")
    head = (f"{'workload':8} {'G':>6} {'P':>3} | {'plan ms':>8} {'lpt ms':>7} {'t ratio':>7} {'spread':>6} | "
            f"{'default':>8} {'plan':>7} {'lpt':>7} {'bound':>7} | "
            f"{'moved':>6} {'floor':>6} {'lpt mv':>6} {'moves':>6}")
    print(head)
    print("-" * len(head))
    start = time.perf_counter()
    for name, make in (("zipf", zipf_loads), ("lognorm", lognorm_loads)):
        for g in (128, 4096, 32768):
            loads = make(rng, rows, g)
            for p in (4, 64):
                current = partition.default_assignment(g, p)
                results = measure({"lpt": lambda: lpt(loads, p), "plan": lambda: plan_assignment(loads, current, p)},
                                  repeat=repeat, warmup=1, check=check_plan(loads, current, p))
                report.add(f"{name} G={g} P={p}", results, baseline="lpt")
                t_plan, t_lpt = results["plan"].median, results["lpt"].median
                plan = plan_assignment(loads, current, p)
                lpt_table = lpt(loads, p)
                lpt_loads = np.bincount(lpt_table, weights=loads, minlength=p)
                total = loads.sum()
                lpt_moved = loads[lpt_table != current].sum() / total
                floor = np.maximum(plan.task_loads_before - plan.task_loads_after.max(), 0).sum() / total
                report.figure(f"{name} G={g} P={p}", {
                    "imbalance_default": plan.imbalance_before, "imbalance_plan": plan.imbalance_after,
                    "imbalance_lpt": imbalance(lpt_loads), "lower_bound": plan.lower_bound_imbalance,
                    "moved_plan": plan.moved_load_fraction, "moved_floor": floor, "moved_lpt": lpt_moved})
                print(f"{name:8} {g:>6} {p:>3} | {t_plan * 1e3:8.2f} {t_lpt * 1e3:7.2f} "
                      f"{t_plan / t_lpt:7.2f} {results['plan'].spread_pct:5.0f}% | {plan.imbalance_before:8.4f} "
                      f"{plan.imbalance_after:7.4f} {imbalance(lpt_loads):7.4f} {plan.lower_bound_imbalance:7.4f} | "
                      f"{plan.moved_load_fraction:6.3f} {floor:6.3f} {lpt_moved:6.3f} {len(plan.moves):6d}")
    print("\ncolumns: imbalance = (max - mean) / mean of task loads; 'default' = contiguous ranges "
          "(naive baseline), 'plan' = plan_assignment, 'lpt' = LPT from scratch;\n"
          "'moved' / 'floor' / 'lpt mv' = fraction of load whose key group changes owner "
          "(plan / least possible for the plan's maximum / LPT); 't ratio' = plan time / LPT time; "
          "'spread' = plan's (max - min) / median.")
    print(f"total {time.perf_counter() - start:.1f} s")
    fig = report.figures["zipf G=32768 P=64"]
    report.headline("rebalance planning, 32,768 key groups, 64 tasks, Zipf loads, vs LPT from scratch",
                    "zipf G=32768 P=64", "plan",
                    note=f"imbalance {fig['imbalance_default']:.2f} -> {fig['imbalance_plan']:.3f} "
                         f"(LPT {fig['imbalance_lpt']:.3f}), load moved {fig['moved_plan']:.2f} (LPT {fig['moved_lpt']:.2f})")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

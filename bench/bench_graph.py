"""Topological sort + cycle check from numpy edge arrays: sabot._core.graph vs graphlib and rustworkx.

    python bench/bench_graph.py           # V = 1,000,000, E ~ 4,000,000 (target <= 150 ms)
    python bench/bench_graph.py --quick   # V = 100,000

Every contender starts from the same numpy ``src``/``dst`` arrays (conversion to its
input format is part of its time). graphlib runs on a graph 1/10 the size (it would
take ~15 s at full size) and its time is extrapolated linearly (Kahn is O(V + E));
the printout says so. Also measured: per-call overhead at V = 100, and finding a
cycle (only sabot and graphlib name the cycle's nodes).
"""

import argparse
import graphlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from sabot._core.graph import DAG  # noqa: E402

try:
    import rustworkx
except ImportError:  # optional baseline
    rustworkx = None


def layered_dag(num_nodes, num_edges, layers=100, seed=0):
    """Random layered DAG: nodes in ``layers`` layers, edges only go to a later layer;
    node ids are randomly permuted so that id order says nothing about the order."""
    rng = np.random.default_rng(seed)
    layer = np.sort(rng.integers(0, layers, num_nodes))
    perm = rng.permutation(num_nodes)
    # oversample, keep pairs in strictly increasing layers, trim to num_edges
    a = rng.integers(0, num_nodes, int(num_edges * 1.05) + 16)
    b = rng.integers(0, num_nodes, a.shape[0])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = layer[lo] < layer[hi]
    src, dst = perm[lo[keep]][:num_edges], perm[hi[keep]][:num_edges]
    return src.astype(np.int64), dst.astype(np.int64)


def best_of(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def run_sabot(src, dst, n):
    order, cycle = DAG(src, dst, n).toposort()
    return len(order), cycle


def run_rustworkx(src, dst, n):
    g = rustworkx.PyDiGraph(check_cycle=False, multigraph=True)
    g.add_nodes_from(range(n))
    g.add_edges_from_no_data(list(zip(src.tolist(), dst.tolist())))
    acyclic = rustworkx.is_directed_acyclic_graph(g)
    order = rustworkx.topological_sort(g) if acyclic else []
    return len(order), None if acyclic else "cycle (nodes not named)"


def run_graphlib(src, dst, n):
    preds = {v: [] for v in range(n)}
    for u, v in zip(src.tolist(), dst.tolist()):
        preds[v].append(u)
    try:
        order = list(graphlib.TopologicalSorter(preds).static_order())
        return len(order), None
    except graphlib.CycleError as exc:
        return 0, exc.args[1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="V = 100,000 instead of 1,000,000")
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else 1_000_000
    m = 4 * n
    repeat = 5
    src, dst = layered_dag(n, m)
    print(f"random layered DAG: V = {n:,}, E = {len(src):,} (int64 numpy arrays)")

    t_ours, (count, cycle) = best_of(lambda: run_sabot(src, dst, n), repeat)
    assert count == n and cycle is None
    print(f"  sabot._core.graph  build CSR + toposort + cycle check: {t_ours * 1e3:8.1f} ms "
          f"(best of {repeat}; target <= 150 ms at V = 1e6)")

    if rustworkx is not None:
        t_rx, (count_rx, _) = best_of(lambda: run_rustworkx(src, dst, n), 1)
        assert count_rx == n
        print(f"  rustworkx {rustworkx.__version__:<8} build + is_DAG + toposort:       {t_rx * 1e3:8.1f} ms"
              f"   -> sabot is {t_rx / t_ours:6.1f}x faster")
    else:
        t_rx = None
        print("  rustworkx not installed: skipped")

    small = n // 10
    s_src, s_dst = layered_dag(small, 4 * small, seed=1)
    t_gl_small, (count_gl, _) = best_of(lambda: run_graphlib(s_src, s_dst, small), 1)
    assert count_gl == small
    t_ours_small, _ = best_of(lambda: run_sabot(s_src, s_dst, small), repeat)
    t_gl = t_gl_small * (n + len(src)) / (small + len(s_src))
    print(f"  graphlib (stdlib) at V = {small:,}: {t_gl_small * 1e3:8.1f} ms, sabot at the same size "
          f"{t_ours_small * 1e3:.2f} ms -> {t_gl_small / t_ours_small:6.1f}x")
    print(f"  graphlib extrapolated linearly to V = {n:,}: ~{t_gl:.1f} s   -> sabot is ~{t_gl / t_ours:6.0f}x faster")

    # cycle: close one long path of the DAG into a cycle
    g = DAG(src, dst, n)
    path = [int(src[0])]
    while len(path) < 40 and len(g.successors(path[-1])):
        path.append(int(g.successors(path[-1])[0]))
    c_src, c_dst = np.append(src, path[-1]), np.append(dst, path[0])
    t_cyc, (_, cycle) = best_of(lambda: run_sabot(c_src, c_dst, n), repeat)
    assert cycle is not None
    print(f"  with one cycle added: sabot finds and returns it ({len(cycle)} nodes) in {t_cyc * 1e3:.1f} ms")
    if rustworkx is not None:
        t_rx_c, _ = best_of(lambda: run_rustworkx(c_src, c_dst, n), 1)
        print(f"  rustworkx detects it (without naming the nodes) in {t_rx_c * 1e3:.1f} ms "
              f"-> {t_rx_c / t_cyc:.1f}x")

    # per-call overhead on a tiny graph
    t_src, t_dst = layered_dag(100, 400, layers=10, seed=2)
    reps = 2000

    def per_call(fn):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    o_ours = per_call(lambda: run_sabot(t_src, t_dst, 100))
    o_gl = per_call(lambda: run_graphlib(t_src, t_dst, 100))
    line = (f"  V = 100, E = {len(t_src)}: sabot {o_ours * 1e6:.1f} us/call, graphlib {o_gl * 1e6:.1f} us/call "
            f"({o_gl / o_ours:.1f}x)")
    if rustworkx is not None:
        o_rx = per_call(lambda: run_rustworkx(t_src, t_dst, 100))
        line += f", rustworkx {o_rx * 1e6:.1f} us/call ({o_rx / o_ours:.1f}x)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

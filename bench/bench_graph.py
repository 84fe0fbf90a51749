"""Topological sort + cycle check from numpy edge arrays: sabot._core.graph vs graphlib and rustworkx.

    python bench/bench_graph.py           # V = 1,000,000, E ~ 4,000,000 (target <= 150 ms)
    python bench/bench_graph.py --quick   # V = 100,000

Every contender starts from the same numpy ``src``/``dst`` arrays (conversion to its
input format is part of its time). graphlib runs on a graph 1/10 the size (it would
take ~15 s at full size) and its time is extrapolated linearly (Kahn is O(V + E));
the printout says so. Also measured: per-call overhead at V = 100, and finding a
cycle (only sabot and graphlib name the cycle's nodes). Every group of contenders is
warmed up and run interleaved (median of --repeat); every contender's order is checked
(all V nodes, and a valid topological order for sabot), and every cycle found.

    python bench/bench_graph.py [--quick] [--repeat 5] [--json out.json]
"""

import argparse
import graphlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table  # noqa: E402
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


def check_order(src, dst, n):
    """check(name, (count, cycle)) for an acyclic graph: every node ordered, no cycle."""
    def check(name, out):
        count, cycle = out
        assert count == n and cycle is None, f"{name}: ordered {count} of {n} nodes, cycle {cycle}"
    return check


def is_topological(order, src, dst):
    pos = np.empty(len(order), dtype=np.int64)
    pos[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return bool(np.all(pos[src] < pos[dst]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="V = 100,000 instead of 1,000,000")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 5, --quick 3)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    n = 100_000 if args.quick else 1_000_000
    m = 4 * n
    repeat = args.repeat or (3 if args.quick else 5)
    src, dst = layered_dag(n, m)
    report = Report("bench_graph", nodes=n, edges=len(src), repeat=repeat)
    print(f"random layered DAG: V = {n:,}, E = {len(src):,} (int64 numpy arrays), median of {repeat} interleaved runs")
    order, _ = DAG(src, dst, n).toposort()
    assert is_topological(order, src, dst), "sabot's order is not topological"

    # full size: sabot against rustworkx (graphlib would take ~15 s a run: measured at V / 10 below)
    cases = {"sabot": lambda: run_sabot(src, dst, n)}
    if rustworkx is not None:
        cases[f"rustworkx {rustworkx.__version__}"] = lambda: run_rustworkx(src, dst, n)
    full = measure(cases, repeat=repeat, warmup=1, check=check_order(src, dst, n))
    t_ours = full["sabot"].median
    print(f"\nbuild CSR + toposort + cycle check at V = {n:,} (target <= 150 ms at V = 1e6):")
    print(table(full, baseline="sabot"))
    if rustworkx is None:
        print("  rustworkx not installed: skipped")

    small = n // 10
    s_src, s_dst = layered_dag(small, 4 * small, seed=1)
    small_res = measure({"graphlib": lambda: run_graphlib(s_src, s_dst, small),
                         "sabot": lambda: run_sabot(s_src, s_dst, small)},
                        repeat=repeat, warmup=1, check=check_order(s_src, s_dst, small))
    t_gl_small = small_res["graphlib"].median
    t_gl = t_gl_small * (n + len(src)) / (small + len(s_src))
    print(f"\nat V = {small:,} (graphlib, the stdlib, is too slow at full size):")
    print(table(small_res, baseline="graphlib"))
    print(f"  graphlib extrapolated linearly to V = {n:,}: ~{t_gl:.1f} s   -> sabot is ~{t_gl / t_ours:6.0f}x faster")
    report.add("full size", full, baseline=next((c for c in full if c.startswith("rustworkx")), "sabot"))
    report.add("V / 10", small_res, baseline="graphlib")
    report.figure("graphlib_extrapolated_s", t_gl)

    # cycle: close one long path of the DAG into a cycle
    g = DAG(src, dst, n)
    path = [int(src[0])]
    while len(path) < 40 and len(g.successors(path[-1])):
        path.append(int(g.successors(path[-1])[0]))
    c_src, c_dst = np.append(src, path[-1]), np.append(dst, path[0])

    def check_cycle(name, out):
        _, cycle = out
        assert cycle is not None, f"{name} did not find the cycle"
        if name == "sabot":
            nodes = list(cycle)
            assert set(nodes) <= set(path) and len(nodes) == len(path), f"sabot named {nodes}, not {path}"

    cases = {"sabot": lambda: run_sabot(c_src, c_dst, n)}
    if rustworkx is not None:
        cases["rustworkx"] = lambda: run_rustworkx(c_src, c_dst, n)
    cyc = measure(cases, repeat=repeat, warmup=1, check=check_cycle)
    print(f"\nwith one cycle of {len(path)} nodes added (sabot names its nodes; rustworkx only detects it):")
    print(table(cyc, baseline="sabot"))
    report.add("cycle", cyc, baseline="rustworkx" if rustworkx is not None else "sabot")

    # per-call overhead on a tiny graph
    t_src, t_dst = layered_dag(100, 400, layers=10, seed=2)
    cases = {"graphlib": lambda: run_graphlib(t_src, t_dst, 100), "sabot": lambda: run_sabot(t_src, t_dst, 100)}
    if rustworkx is not None:
        cases["rustworkx"] = lambda: run_rustworkx(t_src, t_dst, 100)
    tiny = measure(cases, repeat=repeat, warmup=1, number=200 if args.quick else 2000,
                   check=check_order(t_src, t_dst, 100))
    print(f"\nper call at V = 100, E = {len(t_src)}:")
    print(table(tiny, baseline="graphlib"))
    report.add("per call, V = 100", tiny, baseline="graphlib")

    base = "rustworkx" if rustworkx is not None else None
    if base:
        report.headline(f"topological sort + cycle check, V = {n:,}, E = {len(src):,}, vs rustworkx",
                        "full size", "sabot", note="target <= 150 ms at V = 1M")
    report.headline(f"topological sort + cycle check, V = {small:,}, vs graphlib", "V / 10", "sabot",
                    note=f"graphlib extrapolated to V = {n:,}: ~{t_gl:.1f} s; sabot at V = {n:,}: "
                         f"{t_ours * 1e3:.1f} ms (target <= 150 ms at V = 1M)")
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

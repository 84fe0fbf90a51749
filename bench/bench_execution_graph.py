"""Building the ExecutionGraph of a two-operator job, parallelism P -> P, all-to-all.

    python bench/bench_execution_graph.py           # P = 10,000 (target <= 60 ms, <= 50 MB)
    python bench/bench_execution_graph.py --quick   # P = 1,000

The edge is keyed (HASH), so every downstream task receives from every upstream
task: P * P channels, held as one ExecutionEdge. Times are the median of interleaved
runs after a warm-up; memory is the tracemalloc peak of one build. At full size the
figures are set against the targets (60 ms, 50 MB). The baseline, measured in the same
process, is the naive plan that materialises one edge object per subtask pair (as
Flink before 1.14 did); it is run at P / 10 (interleaved with sabot at P / 10) and
extrapolated by P^2 (it could not be built at full size), and the printout says so.
Every graph built is checked (2P tasks, one HASH edge of P * P channels).

    python bench/bench_execution_graph.py [--quick] [--json out.json]
"""

import argparse
import gc
import os
import sys
import tracemalloc
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, constant, measure, table  # noqa: E402
from sabot.execution.execution_graph import ExecutionGraph, Partitioning  # noqa: E402
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode  # noqa: E402


def two_operator_job(p):
    job = JobGraph(job_name="bench", default_parallelism=p)
    src = StreamOperatorNode(operator_type=OperatorType.SOURCE, name="source", parallelism=p, max_parallelism=32768)
    agg = StreamOperatorNode(operator_type=OperatorType.SINK, name="keyed_sink", parallelism=p, max_parallelism=32768,
                             key_by=["key"])
    job.add_operator(src)
    job.add_operator(agg)
    job.connect(src.operator_id, agg.operator_id)
    return job


@dataclass
class NaiveTask:
    task_id: str
    operator_id: str
    subtask_index: int
    parallelism: int
    state: str = "CREATED"


@dataclass
class NaiveEdge:
    source_task: str
    target_task: str
    partitioning: str


def naive_build(p):
    """One task object per subtask and one edge object per (upstream, downstream) pair."""
    ups = [NaiveTask(f"source_{i}", "source", i, p) for i in range(p)]
    downs = [NaiveTask(f"sink_{i}", "sink", i, p) for i in range(p)]
    edges = [NaiveEdge(u.task_id, d.task_id, "hash") for u in ups for d in downs]
    return ups, downs, edges


def peak_mb(fn):
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak / 2**20


def check_graph(p):
    def check(name, eg):
        if name.startswith("naive"):
            ups, downs, edges = eg
            assert len(ups) == len(downs) == p // 10 and len(edges) == (p // 10) ** 2, name
            return
        size = p // 10 if name.endswith("P / 10") else p
        assert len(eg.tasks) == 2 * size and len(eg.edges) == 1, (name, len(eg.tasks), len(eg.edges))
        assert eg.edges[0].partitioning is Partitioning.HASH and eg.num_channels() == size * size, name
    return check


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="P = 1,000 instead of 10,000")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)
    p = 1_000 if args.quick else 10_000
    repeat = args.repeat
    job = two_operator_job(p)
    job.validate()
    check = check_graph(p)
    report = Report("bench_execution_graph", parallelism=p, repeat=repeat)

    full = measure({"ExecutionGraph(job)": lambda: ExecutionGraph(job),
                    "job.to_execution_graph() (+validate)": lambda: job.to_execution_graph()},
                   repeat=repeat, warmup=1, check=check)
    full["target"] = constant("target", 0.060)
    mem = peak_mb(lambda: ExecutionGraph(job))
    print(f"two operators, parallelism {p:,} -> {p:,}, HASH all-to-all ({p * p:,} channels, 1 edge object), "
          f"median of {repeat}")
    print(table(full, baseline="target"))
    print(f"  tracemalloc peak of one build:      {mem:7.1f} MB                target <= 50 MB")
    report.add("full size", full, baseline="target")
    report.add("memory", {"tracemalloc peak": constant("tracemalloc peak", mem * 2**20, "B"),
                          "target": constant("target", 50 * 2**20, "B")}, baseline="target")

    small = p // 10
    small_job = two_operator_job(small)
    small_res = measure({"naive (an edge object per pair) P / 10": lambda: naive_build(small),
                         "sabot P / 10": lambda: ExecutionGraph(small_job)},
                        repeat=repeat, warmup=1, check=check)
    t_naive = small_res["naive (an edge object per pair) P / 10"].median
    mem_naive = peak_mb(lambda: naive_build(small))
    scale = (p / small) ** 2
    t_build = full["ExecutionGraph(job)"].median
    print(f"\nbaseline at P = {small:,} (one edge object per subtask pair), {mem_naive:.1f} MB:")
    print(table(small_res, baseline="naive (an edge object per pair) P / 10"))
    print(f"  baseline extrapolated by P^2 to P = {p:,}: ~{t_naive * scale:.2f} s, ~{mem_naive * scale / 1024:.2f} GB"
          f" -> sabot ~{t_naive * scale / t_build:.0f}x faster, ~{mem_naive * scale / mem:.0f}x less memory")
    report.add("P / 10", small_res, baseline="naive (an edge object per pair) P / 10")
    report.figure("naive_extrapolated_s", t_naive * scale)
    report.figure("naive_extrapolated_mb", mem_naive * scale)

    eg = job.to_execution_graph()
    op_id = next(iter(job.operators))

    def rescale():
        target = p // 2 if eg.parallelism_of(op_id) == p else p
        eg.rescale_operator(op_id, target)
        assert eg.parallelism_of(op_id) == target
    resc = measure({"rescale_operator": rescale}, repeat=4, warmup=0)
    print(f"  rescale_operator {p:,} <-> {p // 2:,}: {resc['rescale_operator'].median * 1e3:.1f} ms (median of 4)")
    report.add("rescale", resc, baseline="rescale_operator")

    report.headline(f"ExecutionGraph, {p:,} -> {p:,} all-to-all", "full size", "ExecutionGraph(job)",
                    note=f"{mem:.1f} MB (target <= 50 MB)")
    report.headline(f"ExecutionGraph at {small:,} -> {small:,} vs one edge object per pair", "P / 10", "sabot P / 10")
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

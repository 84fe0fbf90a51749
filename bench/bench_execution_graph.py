"""Building the ExecutionGraph of a two-operator job, parallelism P -> P, all-to-all.

    python bench/bench_execution_graph.py           # P = 10,000 (target <= 60 ms, <= 50 MB)
    python bench/bench_execution_graph.py --quick   # P = 1,000

The edge is keyed (HASH), so every downstream task receives from every upstream
task: P * P channels, held as one ExecutionEdge. Time is the best of several runs;
memory is the tracemalloc peak of one build. The baseline, measured in the same
process, is the naive plan that materialises one edge object per subtask pair (as
Flink before 1.14 did); it is run at P / 10 and extrapolated by P^2 (it could not
be built at full size), and the printout says so.
"""

import argparse
import gc
import os
import sys
import time
import tracemalloc
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
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


def best_time(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_mb(fn):
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return peak / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="P = 1,000 instead of 10,000")
    args = ap.parse_args(argv)
    p = 1_000 if args.quick else 10_000
    job = two_operator_job(p)
    job.validate()

    eg = job.to_execution_graph()
    assert len(eg.tasks) == 2 * p and len(eg.edges) == 1
    assert eg.edges[0].partitioning is Partitioning.HASH and eg.num_channels() == p * p

    t_build = best_time(lambda: ExecutionGraph(job), 7)
    t_total = best_time(lambda: job.to_execution_graph(), 5)
    mem = peak_mb(lambda: ExecutionGraph(job))
    print(f"two operators, parallelism {p:,} -> {p:,}, HASH all-to-all ({p * p:,} channels, 1 edge object)")
    print(f"  ExecutionGraph(job):                {t_build * 1e3:7.1f} ms (best of 7)   target <= 60 ms")
    print(f"  job.to_execution_graph() (+validate): {t_total * 1e3:5.1f} ms")
    print(f"  tracemalloc peak of one build:      {mem:7.1f} MB                target <= 50 MB")

    small = p // 10
    t_naive = best_time(lambda: naive_build(small), 1)
    mem_naive = peak_mb(lambda: naive_build(small))
    t_ours_small = best_time(lambda: ExecutionGraph(two_operator_job(small)), 5)
    scale = (p / small) ** 2
    print(f"  baseline (one edge object per subtask pair) at P = {small:,}: {t_naive * 1e3:.1f} ms, {mem_naive:.1f} MB;"
          f" sabot at the same P: {t_ours_small * 1e3:.2f} ms -> {t_naive / t_ours_small:.0f}x")
    print(f"  baseline extrapolated by P^2 to P = {p:,}: ~{t_naive * scale:.2f} s, ~{mem_naive * scale / 1024:.2f} GB"
          f" -> sabot ~{t_naive * scale / t_build:.0f}x faster, ~{mem_naive * scale / mem:.0f}x less memory")

    op_id = next(iter(job.operators))
    t_rescale = best_time(lambda: eg.rescale_operator(op_id, p // 2 if eg.parallelism_of(op_id) == p else p), 4)
    print(f"  rescale_operator {p:,} <-> {p // 2:,}: {t_rescale * 1e3:.1f} ms (best of 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory of a long-lived cluster running many short jobs (LocalCluster, real processes).

Submits N short keyed-count jobs one after another (each with a 20,000-row in-memory
table, checked against pyarrow) and prints the resident memory of the coordinator's
process and of the worker every 100 jobs. With ended-job retention (the default keeps
100 ended jobs) both level off once the first ``retain_ended_jobs`` jobs ended; with
``--retain`` set above N nothing is forgotten and the growth per job shows what
retention saves.

    python bench/bench_long_lived.py [--jobs 1000] [--retain 100] [--json out.json]

A soak run, not a timing: ``--json`` writes its figures (the RSS samples, the growth per
job from the steady point) in bench/_harness.py's report format, with a text headline.
"""

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import pyarrow as pa  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report  # noqa: E402
from sabot.api.stream import Stream  # noqa: E402
from sabot.cluster.local import LocalCluster  # noqa: E402


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--retain", type=int, default=100, help="retain_ended_jobs of the coordinator")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    doc = Report("bench_long_lived", jobs=args.jobs, retain_ended_jobs=args.retain)
    samples = []
    n = 20_000
    table = pa.table({"key": pa.array([i % 13 for i in range(n)]), "value": pa.array([float(i) for i in range(n)])})
    expected = table.group_by("key").aggregate([("value", "sum")]).sort_by("key")
    print(f"{args.jobs} jobs, retain_ended_jobs={args.retain}")
    print(f"{'jobs':>6} {'seconds':>8} {'coordinator MB':>15} {'worker MB':>10} {'jobs kept':>10}")
    with LocalCluster(workers=1, slots_per_worker=2, coordinator_config={"retain_ended_jobs": args.retain}) as cl:
        start = time.perf_counter()
        steady = None  # (jobs, rss) once the kept jobs are at their cap: growth is measured from there
        for i in range(1, args.jobs + 1):
            graph = (Stream.from_table(table, batch_size=5000).key_by("key").aggregate({"value": ["sum"]})
                     .collect(name="out").to_job_graph(f"short-{i}", default_parallelism=2, shippable=True))
            out = cl.run(graph, timeout=60).table("out").sort_by("key")
            assert out.column("value_sum").equals(expected.column("value_sum")), "wrong result"
            if i == 1 or i % 100 == 0 or i == args.jobs:
                gc.collect()
                row = (rss_mb(os.getpid()), rss_mb(cl.worker_pids[0]))
                if steady is None and i >= min(args.retain, args.jobs) + 100:
                    steady = (i, row)
                print(f"{i:>6} {time.perf_counter() - start:>8.1f} {row[0]:>15.0f} {row[1]:>10.0f} "
                      f"{len(cl.coordinator.jobs):>10}", flush=True)
                samples.append({"jobs": i, "seconds": time.perf_counter() - start, "coordinator_mb": row[0],
                                "worker_mb": row[1], "jobs_kept": len(cl.coordinator.jobs)})
        if steady is not None and args.jobs > steady[0]:
            per_job = [(b - a) * 1024 / (args.jobs - steady[0]) for a, b in zip(steady[1], row)]
            print(f"growth from job {steady[0]} to {args.jobs}: coordinator {per_job[0]:.1f} KB/job, "
                  f"worker {per_job[1]:.1f} KB/job")
            doc.figure("growth_kb_per_job", {"from_job": steady[0], "coordinator": per_job[0], "worker": per_job[1]})
    doc.figure("samples", samples)
    first, last = samples[0], samples[-1]
    text = (f"{args.jobs} jobs, each checked: coordinator RSS {first['coordinator_mb']:.0f} -> "
            f"{last['coordinator_mb']:.0f} MB, worker {first['worker_mb']:.0f} -> {last['worker_mb']:.0f} MB")
    if "growth_kb_per_job" in doc.figures:
        g = doc.figures["growth_kb_per_job"]
        text += f"; from job {g['from_job']}: {g['coordinator']:+.1f} / {g['worker']:+.1f} KB per job"
    doc.headline(f"{args.jobs:,} short jobs on one cluster (retain_ended_jobs = {args.retain})", text=text)
    if args.json:
        doc.write(args.json)


if __name__ == "__main__":
    main()

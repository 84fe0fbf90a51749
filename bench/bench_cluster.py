"""Control-plane benchmarks on a LocalCluster (2 worker processes on 127.0.0.1).

1. The keyed-count job (uniform int64 keys over 100,000 keys, running count and
   sum of a float64 column, built-in deterministic generator) on 2 workers at
   parallelism 2: records/s, and the ratio to the embedded parallelism-1 run
   (one process) and to a single vectorized pass (pyarrow group_by over the
   materialized data), all measured in this process.
2. Submission to RUNNING latency of a 4-operator job at parallelism 4 (median
   and p90 over 20 submissions; each job is canceled afterwards).
3. The coordinator under load: GET /jobs/{id} at 500 requests/s from a second
   process for 10 s while a job runs: p50 / p99 latency, errors, and the job's
   throughput with the load relative to without (windows with and without load
   alternate, ``--repeat`` of each); every request must succeed.

Each part warms up first, and the cases of [1] run interleaved (median of ``--repeat``);
the cluster's and the embedded run's per-key counts and sums are checked against pyarrow's.

Usage: python bench/bench_cluster.py [--quick] [--repeat N] [--json out.json]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Report, collect, measure, summarize, table  # noqa: E402

GEN = "sabot.runtime.generators:keyed_records"


def keyed_count_stream(total_rows, batch_size=65536, num_keys=100_000):
    from sabot.api.stream import Stream

    return (Stream.from_generator(GEN, total_rows=total_rows, batch_size=batch_size,
                                  parameters={"num_keys": num_keys})
            .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))


def bench_throughput(cluster, rows, repeat):
    import numpy as np
    import pyarrow as pa

    from sabot.runtime.embedded import run_job_graph
    from sabot.runtime.generators import keyed_records

    def on_cluster():
        job = keyed_count_stream(rows).to_job_graph("keyed-count", default_parallelism=2, shippable=True)
        return cluster.run(job, timeout=300).table("counts")

    def embedded_run():
        job = keyed_count_stream(rows).to_job_graph("keyed-count", default_parallelism=1)
        return run_job_graph(job, timeout=300).table("counts")

    table_ = pa.Table.from_batches([keyed_records(o, min(1 << 20, rows - o)) for o in range(0, rows, 1 << 20)])

    def vectorized():
        return table_.group_by("key").aggregate([("value", "count"), ("value", "sum")])

    reference = vectorized().sort_by("key")

    def check(name, counts):
        got = counts.sort_by("key")
        assert got.num_rows == reference.num_rows, (name, got.num_rows, reference.num_rows)
        assert got.column("key").equals(reference.column("key")), f"{name}: keys differ from pyarrow's"
        assert got.column("value_count").equals(reference.column("value_count")), f"{name}: counts differ"
        assert np.allclose(got.column("value_sum").to_numpy(), reference.column("value_sum").to_numpy()), \
            f"{name}: sums differ"

    results = measure({"single vectorized pass (pyarrow)": vectorized,
                       "embedded, parallelism 1 (1 process)": embedded_run,
                       "LocalCluster 2 workers, parallelism 2": on_cluster},
                      repeat=repeat, warmup=1, check=check)
    print(f"[1] keyed count, {rows:,} records, 100,000 keys (median of {repeat} interleaved; "
          f"cluster time = submit to result fetched)")
    print(table(results, baseline="embedded, parallelism 1 (1 process)", work=rows, unit="records"))
    return results


def four_operator_job(parallelism):
    from sabot.api.stream import Stream

    stream = (Stream.from_generator(GEN, total_rows=None, batch_size=10_000, parameters={"num_keys": 1000})
              .select("key", "value")
              .key_by("key").aggregate({"value": ["sum"]})
              .collect(name="sums"))
    return stream.to_job_graph("four-ops", default_parallelism=parallelism, shippable=True)


def bench_submit_latency(cluster, submissions):
    def submit():
        job = four_operator_job(4)
        start = time.perf_counter()
        job_id = cluster.submit(job)  # returns once every task is deployed
        deployed = time.perf_counter() - start
        cluster.call(cluster.coordinator.jobs[job_id].wait_running())  # every task reported running
        running = time.perf_counter() - start
        state = cluster.job(job_id)["state"]
        assert state == "RUNNING", state
        cluster.cancel(job_id)
        return {"running": running, "deployed": deployed, "operators": len(job.operators)}

    runs = collect({"submit": submit}, repeat=submissions, warmup=1)["submit"]
    operators = runs[0]["operators"]
    results = summarize({"submit -> RUNNING": [r["running"] for r in runs],
                         "submit -> deployed": [r["deployed"] for r in runs]})
    latencies = sorted(r["running"] for r in runs)
    # RUNNING = every task reported running to the coordinator
    print(f"[2] submit -> RUNNING, {operators}-operator job at parallelism 4 ({operators * 4} tasks), "
          f"{submissions} submissions after a warm-up")
    print(f"    median {statistics.median(latencies) * 1e3:7.1f} ms   p90 "
          f"{latencies[int(0.9 * (len(latencies) - 1))] * 1e3:7.1f} ms   min {latencies[0] * 1e3:7.1f} ms")
    print(f"    (submit -> deployed, every worker took its tasks: median "
          f"{results['submit -> deployed'].median * 1e3:7.1f} ms)")
    return results


def rows_over(cluster, job_id, seconds):
    def rows():
        return sum(op["rows_processed"] for op in cluster.job(job_id)["operators"] if op["operator_type"] == "source")

    before, start = rows(), time.perf_counter()
    time.sleep(seconds)
    return (rows() - before) / (time.perf_counter() - start)


def bench_under_load(cluster, seconds, rate, repeat):
    job_id = cluster.submit(keyed_count_stream(None, batch_size=16384, num_keys=100_000)
                            .to_job_graph("endless", default_parallelism=2, shippable=True))
    time.sleep(0.5)
    env = dict(os.environ, SABOT_TOKEN=cluster.token or "")

    def loaded():
        load = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--load-generator", cluster.url,
                                 f"/jobs/{job_id}", str(rate), str(seconds)], stdout=subprocess.PIPE, text=True,
                                env=env)
        try:
            time.sleep(0.3)  # let the load process start
            records = rows_over(cluster, job_id, seconds - 0.6)
            out, _ = load.communicate(timeout=seconds + 60)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        stats = json.loads(out)
        assert stats["errors"] == 0, f"{stats['errors']} of {stats['sent']} requests failed: {stats['first_error']}"
        return records, stats

    try:
        runs = collect({"without load": lambda: (rows_over(cluster, job_id, seconds - 0.6), None),
                        "with load": loaded}, repeat=repeat, warmup=0)
    finally:
        cluster.cancel(job_id)
    results = summarize({name: [r for r, _ in rs] for name, rs in runs.items()}, unit="records/s")
    stats = runs["with load"][-1][1]
    quiet, with_load = results["without load"].median, results["with load"].median
    print(f"[3] GET /jobs/{{id}} at {rate}/s from a second process for {seconds:g} s while a job runs "
          f"({repeat} windows with and without load, alternating)")
    print(f"    last window: requests {stats['sent']}  errors {stats['errors']}  achieved {stats['rate']:.0f}/s  "
          f"p50 {stats['p50_ms']:.2f} ms  p99 {stats['p99_ms']:.2f} ms  max {stats['max_ms']:.1f} ms")
    print(f"    job throughput: {quiet / 1e6:.2f} M records/s without load, {with_load / 1e6:.2f} M records/s "
          f"with load (ratio {with_load / quiet:.2f}, drop {100 * (1 - with_load / quiet):.1f}%)")
    latency = summarize({"p50": [s["p50_ms"] / 1e3 for _, s in runs["with load"]],
                         "p99": [s["p99_ms"] / 1e3 for _, s in runs["with load"]]})
    return results, latency


def load_generator(url, path, rate, seconds):
    """Runs in the second process: fire GETs on a fixed schedule, report latencies as JSON."""
    import aiohttp

    from sabot.cluster import protocol

    headers = protocol.auth_headers(os.environ.get("SABOT_TOKEN") or None)

    async def main():
        latencies, errors, first_error = [], 0, None
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one():
                nonlocal errors, first_error
                start = time.perf_counter()
                try:
                    async with session.get(url + path, headers=headers) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            errors += 1
                            first_error = first_error or f"HTTP {resp.status}: {body[:200]!r}"
                except aiohttp.ClientError as exc:
                    errors += 1
                    first_error = first_error or repr(exc)
                latencies.append(time.perf_counter() - start)

            total = int(rate * seconds)
            begin = time.perf_counter()
            pending = []
            for i in range(total):
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.ensure_future(one()))
            await asyncio.gather(*pending)
            elapsed = time.perf_counter() - begin
        latencies.sort()
        return {"sent": total, "errors": errors, "first_error": first_error, "rate": total / elapsed,
                "p50_ms": 1e3 * latencies[len(latencies) // 2],
                "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
                "max_ms": 1e3 * latencies[-1]}

    print(json.dumps(asyncio.run(main())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 3, --quick 2)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--load-generator", nargs=4, metavar=("URL", "PATH", "RATE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_generator:
        url, path, rate, seconds = args.load_generator
        load_generator(url, path, float(rate), float(seconds))
        return
    from sabot.cluster.local import LocalCluster

    rows = 500_000 if args.quick else 5_000_000
    submissions = 5 if args.quick else 20
    seconds = 2.0 if args.quick else 10.0
    repeat = args.repeat or (2 if args.quick else 3)
    report = Report("bench_cluster", rows=rows, submissions=submissions, load_seconds=seconds, repeat=repeat)
    with LocalCluster(workers=2, slots_per_worker=2) as cluster:
        print(f"LocalCluster: coordinator {cluster.url}, 2 workers x 2 slots, pids {cluster.worker_pids}, "
              f"{os.cpu_count()} cpus")
        report.add("throughput", bench_throughput(cluster, rows, repeat),
                   baseline="embedded, parallelism 1 (1 process)")
        report.add("submit", bench_submit_latency(cluster, submissions))
        load, latency = bench_under_load(cluster, seconds, 500, repeat)
        report.add("under load", load, baseline="without load")
        report.add("GET latency under load", latency)
    report.headline(f"keyed-count job, {rows:,} records, LocalCluster 2 workers p=2 vs embedded p=1", "throughput",
                    "LocalCluster 2 workers, parallelism 2")
    report.headline("submit -> RUNNING, 4-operator job at p=4", "submit", "submit -> RUNNING")
    report.headline("job throughput while GET /jobs/{id} runs at 500/s", "under load", "with load",
                    note=f"p99 of the GETs {latency['p99'].median * 1e3:.1f} ms")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

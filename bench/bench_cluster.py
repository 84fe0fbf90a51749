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
   throughput with the load relative to without.

Usage: python bench/bench_cluster.py [--quick]
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

GEN = "sabot.runtime.generators:keyed_records"


def keyed_count_stream(total_rows, batch_size=65536, num_keys=100_000):
    from sabot.api.stream import Stream

    return (Stream.from_generator(GEN, total_rows=total_rows, batch_size=batch_size,
                                  parameters={"num_keys": num_keys})
            .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))


def bench_throughput(cluster, rows):
    import pyarrow as pa

    from sabot.runtime.embedded import run_job_graph
    from sabot.runtime.generators import keyed_records

    def best(fn, repeat=3):
        times, out = [], None
        for _ in range(repeat):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        return min(times), out

    def on_cluster():
        job = keyed_count_stream(rows).to_job_graph("keyed-count", default_parallelism=2, shippable=True)
        return cluster.run(job, timeout=300).table("counts")

    def embedded_run():
        job = keyed_count_stream(rows).to_job_graph("keyed-count", default_parallelism=1)
        return run_job_graph(job, timeout=300)

    on_cluster()  # warm-up: imports and first-use costs in the workers
    cluster_s, counts = best(on_cluster)
    embedded_s, embedded = best(embedded_run)
    table = pa.Table.from_batches([keyed_records(o, min(1 << 20, rows - o)) for o in range(0, rows, 1 << 20)])
    vector_s, reference = best(lambda: table.group_by("key").aggregate([("value", "count"), ("value", "sum")]))

    assert counts.num_rows == reference.num_rows == embedded.table("counts").num_rows
    assert sum(counts.column("value_count").to_pylist()) == rows
    print(f"[1] keyed count, {rows:,} records, 100,000 keys (best of 3; cluster time = submit to result fetched)")
    print(f"    LocalCluster 2 workers, parallelism 2: {cluster_s:7.3f} s  {rows / cluster_s / 1e6:7.2f} M records/s")
    print(f"    embedded, parallelism 1 (1 process):   {embedded_s:7.3f} s  {rows / embedded_s / 1e6:7.2f} M records/s")
    print(f"    single vectorized pass (pyarrow):      {vector_s:7.3f} s  {rows / vector_s / 1e6:7.2f} M records/s")
    print(f"    ratio cluster/embedded throughput: {embedded_s / cluster_s:5.2f}x; "
          f"cluster/vectorized: {vector_s / cluster_s:5.2f}x")


def four_operator_job(parallelism):
    from sabot.api.stream import Stream

    stream = (Stream.from_generator(GEN, total_rows=None, batch_size=10_000, parameters={"num_keys": 1000})
              .select("key", "value")
              .key_by("key").aggregate({"value": ["sum"]})
              .collect(name="sums"))
    return stream.to_job_graph("four-ops", default_parallelism=parallelism, shippable=True)


def bench_submit_latency(cluster, submissions):
    latencies, deployed = [], []
    for _ in range(submissions):
        job = four_operator_job(4)
        start = time.perf_counter()
        job_id = cluster.submit(job)  # returns once every task is deployed
        deployed.append(time.perf_counter() - start)
        cluster.call(cluster.coordinator.jobs[job_id].wait_running())  # every task reported running
        latencies.append(time.perf_counter() - start)
        state = cluster.job(job_id)["state"]
        assert state == "RUNNING", state
        cluster.cancel(job_id)
    operators = len(job.operators)
    latencies.sort()
    deployed.sort()
    # RUNNING = every task reported running to the coordinator
    print(f"[2] submit -> RUNNING, {operators}-operator job at parallelism 4 ({operators * 4} tasks), "
          f"{submissions} submissions")
    print(f"    median {statistics.median(latencies) * 1e3:7.1f} ms   p90 "
          f"{latencies[int(0.9 * (len(latencies) - 1))] * 1e3:7.1f} ms   min {latencies[0] * 1e3:7.1f} ms")
    print(f"    (submit -> deployed, every worker took its tasks: median {statistics.median(deployed) * 1e3:7.1f} ms)")


def rows_over(cluster, job_id, seconds):
    def rows():
        return sum(op["rows_processed"] for op in cluster.job(job_id)["operators"] if op["operator_type"] == "source")

    before, start = rows(), time.perf_counter()
    time.sleep(seconds)
    return (rows() - before) / (time.perf_counter() - start)


def bench_under_load(cluster, seconds, rate):
    job_id = cluster.submit(keyed_count_stream(None, batch_size=16384, num_keys=100_000)
                            .to_job_graph("endless", default_parallelism=2, shippable=True))
    time.sleep(0.5)
    quiet = rows_over(cluster, job_id, seconds)
    load = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--load-generator", cluster.url,
                             f"/jobs/{job_id}", str(rate), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # let the load process start
        loaded = rows_over(cluster, job_id, seconds - 0.6)
        out, _ = load.communicate(timeout=seconds + 60)
    finally:
        if load.poll() is None:
            load.kill()
    stats = json.loads(out)
    cluster.cancel(job_id)
    print(f"[3] GET /jobs/{{id}} at {rate}/s from a second process for {seconds:g} s while a job runs")
    print(f"    requests {stats['sent']}  errors {stats['errors']}  achieved {stats['rate']:.0f}/s  "
          f"p50 {stats['p50_ms']:.2f} ms  p99 {stats['p99_ms']:.2f} ms  max {stats['max_ms']:.1f} ms")
    print(f"    job throughput: {quiet / 1e6:.2f} M records/s without load, {loaded / 1e6:.2f} M records/s "
          f"with load (ratio {loaded / quiet:.2f}, drop {100 * (1 - loaded / quiet):.1f}%)")


def load_generator(url, path, rate, seconds):
    """Runs in the second process: fire GETs on a fixed schedule, report latencies as JSON."""
    import aiohttp

    async def main():
        latencies, errors = [], 0
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def one():
                nonlocal errors
                start = time.perf_counter()
                try:
                    async with session.get(url + path) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
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
        return {"sent": total, "errors": errors, "rate": total / elapsed,
                "p50_ms": 1e3 * latencies[len(latencies) // 2],
                "p99_ms": 1e3 * latencies[int(0.99 * (len(latencies) - 1))],
                "max_ms": 1e3 * latencies[-1]}

    print(json.dumps(asyncio.run(main())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
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
    with LocalCluster(workers=2, slots_per_worker=2) as cluster:
        print(f"LocalCluster: coordinator {cluster.url}, 2 workers x 2 slots, pids {cluster.worker_pids}, "
              f"{os.cpu_count()} cpus")
        bench_throughput(cluster, rows)
        bench_submit_latency(cluster, submissions)
        bench_under_load(cluster, seconds, 500)


if __name__ == "__main__":
    main()

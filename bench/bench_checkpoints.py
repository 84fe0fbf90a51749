"""Checkpoint overhead, duration and size on a LocalCluster (real worker processes).

1. Steady-state throughput of the keyed-count job (generator source -> filter ->
   key_by -> aggregate -> collect) with a checkpoint every second vs without one,
   measured in the same process; the ratio is the overhead (target <= 10 %).
2. Duration and size of one checkpoint holding 100,000 and 1,000,000 keys of
   keyed state (triggered on demand once every key has been seen).

    python bench/bench_checkpoints.py [--quick]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import pyarrow.compute as pc

from sabot.api.stream import Stream
from sabot.cluster.local import LocalCluster
from sabot.runtime.generators import keyed_records


def keyed_count(total_rows, num_keys, interval_ms, parallelism=2, emit="final"):
    stream = (Stream.from_generator(keyed_records, total_rows=total_rows, batch_size=65536,
                                    parameters={"num_keys": num_keys}, name="source")
              .filter(pc.field("value") > 0.5, name="filter")
              .key_by("key").aggregate({"value": ["count", "sum"]}, emit=emit, name="aggregate")
              .collect(name="sink"))
    return stream.to_job_graph("keyed-count", default_parallelism=parallelism, shippable=True,
                               checkpoint_interval_ms=interval_ms)


def throughput(cluster, rows, keys, interval_ms):
    job_id = cluster.submit(keyed_count(rows, keys, interval_ms))
    start = time.perf_counter()
    state = cluster.wait(job_id, 300)
    elapsed = time.perf_counter() - start
    assert state == "FINISHED", cluster.job(job_id)["failure"]
    done = (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0)
    return rows / elapsed, done


def checkpoint_of(cluster, keys):
    job_id = cluster.submit(keyed_count(None, keys, None, emit="final"))
    deadline = time.monotonic() + 120
    while True:  # wait until (nearly) every key is in the state
        ops = {op["name"]: op for op in cluster.job(job_id)["operators"]}
        if ops["aggregate"]["rows_in"] >= 6 * keys:
            break
        assert time.monotonic() < deadline, "the job did not see enough rows"
        time.sleep(0.05)
    started = time.perf_counter()
    cid = cluster.trigger_checkpoint(job_id)
    while True:  # committed: metadata written, visible as latest_completed
        view = cluster.checkpoints(job_id)
        record = next(h for h in view["history"] if h["id"] == cid)
        if record["state"] == "FAILED" or (view["latest_completed"] or {}).get("checkpoint_id") == cid:
            break
        time.sleep(0.002)
    record["committed_ms"] = (time.perf_counter() - started) * 1e3
    assert record["state"] == "COMPLETED", record
    latest = cluster.coordinator.jobs[job_id].storage.latest(job_id)
    rows = sum(h.get("rows", 0) for h in latest.handles if h["kind"] == "keyed")
    cluster.cancel(job_id)
    return record, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--rows", type=int, default=150_000_000,
                        help="rows per throughput run (enough for several 1 s checkpoints)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = 3_000_000 if args.quick else args.rows
    repeats = 1 if args.quick else args.repeats
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=1, slots_per_worker=2, coordinator_config={"checkpoint_dir": tmp}) as cluster:
        throughput(cluster, 200_000, 1000, None)  # warm up the worker
        plain, ckpt, completed = [], [], []
        for _ in range(repeats):
            plain.append(throughput(cluster, rows, 100_000, None)[0])
            rate, done = throughput(cluster, rows, 100_000, 1000)
            ckpt.append(rate)
            completed.append(done)
        base, with_ckpt = statistics.median(plain), statistics.median(ckpt)
        print(f"keyed-count, {rows:,} rows, 100,000 keys, parallelism 2, 1 worker process")
        print(f"  no checkpoints        : {base / 1e6:8.2f} M rows/s")
        print(f"  checkpoint every 1 s  : {with_ckpt / 1e6:8.2f} M rows/s  ({max(completed)} completed per run)")
        print(f"  ratio with/without    : {with_ckpt / base:8.3f}  (overhead {100 * (1 - with_ckpt / base):.1f} %)")
        print("checkpoint of keyed state (on demand, state of every key present):")
        for keys in sizes:
            record, state_rows = checkpoint_of(cluster, keys)
            print(f"  {keys:>9,} keys: acked in {record['duration_ms']:8.1f} ms, committed after "
                  f"{record['committed_ms']:8.1f} ms, size "
                  f"{record['size_bytes'] / 1e6:7.2f} MB, alignment {record['alignment_ms']:6.1f} ms, "
                  f"keyed rows in state {state_rows:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

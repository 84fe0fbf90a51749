"""Checkpoint overhead, duration and size on a LocalCluster (real worker processes).

1. Steady-state throughput of the keyed-count job (generator source -> filter ->
   key_by -> aggregate -> collect) with a checkpoint every second vs without one,
   measured in the same process; the ratio is the overhead (target <= 10 %).
2. Duration and size of one checkpoint holding 100,000 and 1,000,000 keys of
   keyed state (triggered on demand once every key has been seen).

Runs with and without checkpoints alternate after a warm-up (median of ``--repeats``
of each); every run's per-key counts and sums are checked against pyarrow's.

    python bench/bench_checkpoints.py [--quick] [--repeats N] [--json out.json]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from _harness import Report, collect, summarize, table  # noqa: E402

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


def reference(rows, keys):
    """pyarrow's per-key count and sum of value over value > 0.5, chunk by chunk (no full table)."""
    parts = []
    for off in range(0, rows, 1 << 20):
        t = pa.Table.from_batches([keyed_records(off, min(1 << 20, rows - off), num_keys=keys)])
        t = t.filter(pc.field("value") > 0.5)
        parts.append(t.group_by("key").aggregate([("value", "count"), ("value", "sum")]))
    merged = pa.concat_tables(parts).group_by("key").aggregate([("value_count", "sum"), ("value_sum", "sum")])
    return merged.rename_columns(["key", "value_count", "value_sum"]).sort_by("key")


def throughput(cluster, rows, keys, interval_ms, expected=None):
    start = time.perf_counter()  # submit -> FINISHED (submit returns once every task is deployed)
    job_id = cluster.submit(keyed_count(rows, keys, interval_ms))
    state = cluster.wait(job_id, 300)
    elapsed = time.perf_counter() - start
    assert state == "FINISHED", cluster.job(job_id)["failure"]
    done = (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0)
    if expected is not None:
        got = cluster.result(job_id).table("sink").sort_by("key")
        assert got.column("key").equals(expected.column("key")), "keys differ from pyarrow's"
        assert got.column("value_count").cast(pa.int64()).equals(expected.column("value_count").cast(pa.int64())), \
            "counts differ from pyarrow's"
        assert np.allclose(got.column("value_sum").to_numpy(), expected.column("value_sum").to_numpy()), \
            "sums differ from pyarrow's"
    return rows / elapsed, done


def checkpoint_of(cluster, keys, repeat):
    """``repeat`` checkpoints triggered one after another on one job whose state holds
    (nearly) every key; returns their records (with committed_ms and the keyed rows held)."""
    job_id = cluster.submit(keyed_count(None, keys, None, emit="final"))
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until (nearly) every key is in the state
            ops = {op["name"]: op for op in cluster.job(job_id)["operators"]}
            if ops["aggregate"]["rows_in"] >= 6 * keys:
                break
            assert time.monotonic() < deadline, "the job did not see enough rows"
            time.sleep(0.05)

        def one():
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
            latest = cluster.coordinator.jobs[job_id].checkpointing.storage.latest(job_id)
            assert latest.checkpoint_id == cid, "the committed checkpoint is not the latest in storage"
            record["state_rows"] = sum(h.get("rows", 0) for h in latest.handles if h["kind"] == "keyed")
            assert record["state_rows"] >= 0.98 * keys, f"the checkpoint holds {record['state_rows']:,} of {keys:,} keys"
            return record

        return collect({"checkpoint": one}, repeat=repeat, warmup=0)["checkpoint"]
    finally:
        cluster.cancel(job_id)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--rows", type=int, default=150_000_000,
                        help="rows per throughput run (enough for several 1 s checkpoints)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    rows = 40_000_000 if args.quick else args.rows  # --quick: ~2 s a run, still a checkpoint or two
    repeats = 2 if args.quick else args.repeats
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    expected = reference(rows, 100_000)
    report = Report("bench_checkpoints", rows=rows, keys=100_000, repeats=repeats)
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(workers=1, slots_per_worker=2, coordinator_config={"checkpoint_dir": tmp}) as cluster:
        throughput(cluster, 200_000, 1000, None)  # warm up the worker
        runs = collect({"no checkpoints": lambda: throughput(cluster, rows, 100_000, None, expected),
                        "checkpoint every 1 s": lambda: throughput(cluster, rows, 100_000, 1000, expected)},
                       repeat=repeats)
        rates = summarize({name: [r for r, _ in rs] for name, rs in runs.items()}, unit="rows/s")
        completed = [d for _, d in runs["checkpoint every 1 s"]]
        base, with_ckpt = rates["no checkpoints"].median, rates["checkpoint every 1 s"].median
        print(f"keyed-count, {rows:,} rows, 100,000 keys, parallelism 2, 1 worker process, "
              f"median of {repeats} alternating runs")
        print(table(rates, baseline="no checkpoints", ratio="rows/s / without"))
        print(f"  checkpoints completed per run: {completed}")
        assert min(completed) >= 1, "a run with checkpoints on completed none: the comparison says nothing"
        print(f"  ratio with/without    : {with_ckpt / base:8.3f}  (overhead {100 * (1 - with_ckpt / base):.1f} %)")
        report.add("throughput", rates, baseline="no checkpoints")
        print("checkpoint of keyed state (on demand, state of every key present):")
        for keys in sizes:
            records = checkpoint_of(cluster, keys, repeats)
            figures = summarize({"acked": [r["duration_ms"] / 1e3 for r in records],
                                 "committed": [r["committed_ms"] / 1e3 for r in records],
                                 "alignment": [r["alignment_ms"] / 1e3 for r in records]})
            size = statistics.median(r["size_bytes"] for r in records)
            print(f"  {keys:>9,} keys, median of {repeats} checkpoints: acked in "
                  f"{figures['acked'].median * 1e3:8.1f} ms, committed after {figures['committed'].median * 1e3:8.1f} ms "
                  f"(spread {figures['committed'].spread_pct:.0f} %), size {size / 1e6:7.2f} MB, alignment "
                  f"{figures['alignment'].median * 1e3:6.1f} ms, keyed rows in state "
                  f"{min(r['state_rows'] for r in records):,}")
            report.add(f"checkpoint of {keys:,} keys", figures)
            report.figure(f"checkpoint_{keys}_size_bytes", size)
    report.headline(f"keyed-count job, {rows:,} rows, checkpoint every 1 s vs none (target >= 0.90x)",
                    "throughput", "checkpoint every 1 s")
    report.headline(f"checkpoint of {sizes[-1]:,} keys of state, committed", f"checkpoint of {sizes[-1]:,} keys",
                    "committed", note=f"{report.figures[f'checkpoint_{sizes[-1]}_size_bytes'] / 1e6:.1f} MB")
    if args.json:
        report.write(args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())

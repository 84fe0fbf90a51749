"""Live rescaling and auto-rebalance on real worker processes (issue 7), against a
stop-checkpoint-restore baseline measured in the same run.

    python bench/bench_rescale.py            # 10k, 100k, 1M keys; 5 live moves each way, 5 baseline
    python bench/bench_rescale.py --quick    # 10k and 100k keys, 2 of each, shorter skew phases

A LocalCluster (coordinator in this process, 2 worker processes with 4 slots each)
runs an unbounded keyed job: generator source (``keyed_records``, ``num_keys`` keys)
-> key_by -> aggregate (count + sum of ``value``) -> collect sink. Once the aggregate
has seen 4 x num_keys rows (its state then holds ~98% of the keys; the exact number
moved is printed), for each key count:

1. live: ``POST /jobs/{id}/rescale`` the aggregate 2 -> 4, then 4 -> 2, alternately on
   the same running job. From the job's rescale record: pause (last record processed
   by the old tasks -> first record processed by the new ones), total (request -> old
   tasks finished) and state rows moved; from the new tasks' metrics: state_install_ms
   (deploy -> state received and installed) and the switch time (request -> the old
   tasks' last record: new tasks deployed, routing messages, barrier).
2. baseline, the way Flink rescales: trigger a checkpoint and wait until it is
   committed, cancel the job, submit the same graph at the new parallelism with
   ``restore_from=<old job id>``. Downtime = cancel -> first record processed by the
   new job's aggregate tasks (their ``first_record_at``); total = checkpoint trigger ->
   that first record. Chained the same way: 2 -> 4, 4 -> 2, ...
3. skew: ``zipf_keyed_records`` (s = 1.2, 100,000 keys) -> key_by -> a keyed map that
   costs 20 us per row (``_rescale_udfs.per_row_cost``, parallelism 4: the bottleneck)
   -> key_by -> aggregate (parallelism 4). Source records/s over a few seconds, then
   auto-rebalance is enabled (interval 1 s, threshold 0.2) and, once the rebalances
   are done, records/s again; imbalance before / predicted / after from the records.
4. where the time of a 1M-key handoff goes, in this process (no cluster): snapshot of
   the aggregate's state table, split by key group, Arrow IPC encode + decode (what
   the data plane does), install (merge) into fresh tables.

Targets (issue 7): live pause < 100 ms with 100,000 keys and < 500 ms with 1,000,000.

Live and baseline repetitions alternate (a live job rescaled 2 -> 4 -> 2, then a baseline
job stopped and restored 2 -> 4 -> 2, then the next repetition, each on a fresh job with
its full state), so machine noise hits both alike. Every rescale must complete with the
job running and move between 1 and num_keys state rows; every restore must restart the
aggregate. ``--json out.json`` writes the figures (bench/_harness.py's Report).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _rescale_udfs, for the workers too

import pyarrow as pa  # noqa: E402

from sabot.api.stream import Stream  # noqa: E402
from sabot.cluster.local import LocalCluster  # noqa: E402
from sabot.runtime.generators import keyed_records, zipf_keyed_records  # noqa: E402

from _harness import Report, collect, constant, summarize  # noqa: E402
from _rescale_udfs import COST_PER_ROW_S  # noqa: E402

TARGETS_MS = {100_000: 100.0, 1_000_000: 500.0}
WORK_PARALLELISM = 4
CAPACITY = WORK_PARALLELISM / COST_PER_ROW_S  # records/s of the keyed map when its load is even
STATE_FACTOR = 4  # wait for this many rows per key before measuring (1 - e^-4 = 98% of keys seen)


# -- jobs -----------------------------------------------------------------------------------


def keyed_job(num_keys, agg_parallelism, name):
    stream = (Stream.from_generator(keyed_records, total_rows=None, batch_size=16384,
                                    parameters={"num_keys": num_keys}, name="source").parallelism(1)
              .key_by("key").aggregate({"value": ["count", "sum"]}, name="aggregate").parallelism(agg_parallelism)
              .collect(name="sink").parallelism(1))
    return stream.to_job_graph(name, default_parallelism=1, shippable=True)


def skewed_job(num_keys=100_000):
    stream = (Stream.from_generator(zipf_keyed_records, total_rows=None, batch_size=8192,
                                    parameters={"num_keys": num_keys, "s": 1.2}, name="source").parallelism(1)
              .key_by("key").map("_rescale_udfs:per_row_cost", name="work").parallelism(WORK_PARALLELISM)
              .key_by("key").aggregate({"value": ["count", "sum"]}, name="aggregate").parallelism(4)
              .collect(name="sink").parallelism(1))
    return stream.to_job_graph("skewed", default_parallelism=1, shippable=True)


# -- helpers --------------------------------------------------------------------------------


def wait_for(predicate, timeout, what, interval=0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def operator(detail, name):
    return next(op for op in detail["operators"] if op["name"] == name)


def check_running(detail):
    if detail["state"] not in ("RUNNING", "DEPLOYING"):
        raise RuntimeError(f"job {detail['job_id']} is {detail['state']}: {detail.get('failure') or detail.get('last_failure')}")
    return detail


def wait_full_state(cluster, job_id, num_keys, timeout=120):
    def full():
        detail = check_running(cluster.job(job_id))
        return operator(detail, "aggregate")["rows_in"] >= STATE_FACTOR * num_keys

    wait_for(full, timeout, f"the aggregate of {job_id} to see {STATE_FACTOR} x {num_keys:,} rows", 0.05)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


# -- 1. live rescale ----------------------------------------------------------------------


def live_rescale(cluster, client, job_id, agg, new_parallelism, timeout=120):
    """One live rescale of the aggregate; returns its figures."""
    plan = client.request("POST", f"/jobs/{job_id}/rescale",
                          {"operator_id": agg, "new_parallelism": new_parallelism})
    rescale_id = plan["rescale_id"]

    def record():
        detail = check_running(cluster.job(job_id))
        rec = next(r for r in detail["rescales"] if r["rescale_id"] == rescale_id)
        if rec["state"] == "FAILED":
            raise RuntimeError(f"rescale {rescale_id} failed: {rec['error']}")
        # the new tasks' first record arrives with their next report (every 0.5 s)
        return (detail, rec) if rec["state"] == "COMPLETED" and rec["pause_ms"] is not None else None

    detail, rec = wait_for(record, timeout, f"rescale {rescale_id} to complete")
    new = [t for t in detail["tasks"] if t["task_id"] in plan["new_task_ids"]]
    firsts = [t["metrics"]["first_record_at"] for t in new if t["metrics"].get("first_record_at")]
    installs = [t["metrics"].get("state_install_ms") for t in new if t["metrics"].get("state_install_ms") is not None]
    first_after_ms = (min(firsts) - rec["started_at"]) * 1e3
    return {
        "pause_ms": rec["pause_ms"],
        "total_ms": rec["total_ms"],
        "switch_ms": first_after_ms - rec["pause_ms"],
        "install_ms": max(installs) if installs else None,
        "rows_moved": rec["state_rows_moved"],
    }


# -- 2. baseline: checkpoint, cancel, restore at the new parallelism -------------------------


def stop_and_restore(cluster, job_id, num_keys, new_parallelism, name, timeout=120):
    """Flink-style rescale; returns (figures, id of the new job)."""
    t_trigger = time.time()
    cid = cluster.trigger_checkpoint(job_id)

    def committed():
        view = cluster.checkpoints(job_id)
        for entry in view["history"]:
            if entry["id"] == cid and entry["state"] == "FAILED":
                raise RuntimeError(f"checkpoint {cid} of {job_id} failed: {entry['failure_reason']}")
        latest = view["latest_completed"]
        return latest if latest and latest["checkpoint_id"] >= cid else None

    latest = wait_for(committed, timeout, f"checkpoint {cid} of {job_id} to be committed", 0.002)
    t_cancel = time.time()
    cluster.cancel(job_id)
    t_canceled = time.time()
    new_id = cluster.submit_restored(keyed_job(num_keys, new_parallelism, name), job_id)
    t_submitted = time.time()

    def first_records():
        detail = check_running(cluster.job(new_id))
        tasks = [t for t in detail["tasks"] if t["operator_name"] == "aggregate"]
        firsts = [t["metrics"].get("first_record_at") for t in tasks]
        return firsts if all(firsts) else None

    first = min(wait_for(first_records, timeout, f"the first records of restored job {new_id}"))
    return {
        "downtime_ms": (first - t_cancel) * 1e3,
        "total_ms": (first - t_trigger) * 1e3,
        "checkpoint_ms": (t_cancel - t_trigger) * 1e3,
        "cancel_ms": (t_canceled - t_cancel) * 1e3,
        "submit_ms": (t_submitted - t_canceled) * 1e3,
        "size_mb": latest["size_bytes"] / 1e6,
    }, new_id


def bench_keys(cluster, num_keys, runs):
    """``runs`` repetitions, alternating: live 2 -> 4 -> 2 on a fresh job, then stop-checkpoint-
    restore 2 -> 4 -> 2 on another. Returns (live, base): {(old, new): [figures]}."""
    client = cluster.client()
    live_count, base_count = iter(range(1 << 30)), iter(range(1 << 30))

    def live_rep():
        job_id = cluster.submit(keyed_job(num_keys, 2, f"live-{num_keys}"))
        i = next(live_count)
        out = {}
        try:
            wait_full_state(cluster, job_id, num_keys)
            agg = operator(cluster.job(job_id), "aggregate")["operator_id"]
            for old, new in ((2, 4), (4, 2)):
                r = live_rescale(cluster, client, job_id, agg, new)
                assert 0 < r["rows_moved"] <= num_keys, f"live rescale moved {r['rows_moved']:,} of {num_keys:,} rows"
                out[(old, new)] = r
                print(f"    live  {num_keys:>9,} keys {old}->{new} #{i + 1}: pause {r['pause_ms']:7.1f} ms, "
                      f"total {r['total_ms']:7.1f} ms, switch {r['switch_ms']:6.1f} ms, "
                      f"install {r['install_ms'] or 0:7.1f} ms, {r['rows_moved']:,} rows moved", flush=True)
        finally:
            cluster.cancel(job_id)
        return out

    def base_rep():
        job_id = cluster.submit(keyed_job(num_keys, 2, f"base-{num_keys}"))
        i = next(base_count)
        out = {}
        try:
            wait_full_state(cluster, job_id, num_keys)
            for old, new in ((2, 4), (4, 2)):
                r, job_id = stop_and_restore(cluster, job_id, num_keys, new, f"base-{num_keys}")
                out[(old, new)] = r
                print(f"    base  {num_keys:>9,} keys {old}->{new} #{i + 1}: downtime {r['downtime_ms']:7.1f} ms, "
                      f"total {r['total_ms']:7.1f} ms (checkpoint {r['checkpoint_ms']:.0f}, cancel "
                      f"{r['cancel_ms']:.0f}, submit+deploy {r['submit_ms']:.0f} ms; {r['size_mb']:.1f} MB)",
                      flush=True)
        finally:
            cluster.cancel(job_id)
        return out

    reps = collect({"live": live_rep, "base": base_rep}, repeat=runs)
    live = {move: [rep[move] for rep in reps["live"]] for move in ((2, 4), (4, 2))}
    base = {move: [rep[move] for rep in reps["base"]] for move in ((2, 4), (4, 2))}
    return live, base


# -- 3. skew: throughput before / after auto-rebalance ---------------------------------------


def source_rate(cluster, job_id, seconds):
    """Source records/s over ``seconds``, timed at the moments its reported count changes."""
    def count():
        return operator(check_running(cluster.job(job_id)), "source")["rows_processed"]

    def changed(previous):
        def probe():
            c = count()
            return (c, time.monotonic()) if c != previous else None
        return probe

    c0, t0 = wait_for(changed(count()), 5, "a source report")
    c1, t1 = c0, t0
    while t1 - t0 < seconds:
        c1, t1 = wait_for(changed(c1), 5, "a source report", 0.005)
    return (c1 - c0) / (t1 - t0)


def bench_skew(cluster, seconds, threshold=0.2, settle_timeout=40):
    client = cluster.client()
    job_id = cluster.submit(skewed_job())
    try:
        wait_for(lambda: operator(check_running(cluster.job(job_id)), "aggregate")["rows_in"] > 0, 60,
                 "the skewed job's first records")
        time.sleep(1.0)  # past the start-up
        before = source_rate(cluster, job_id, seconds)
        print(f"    skew: before auto-rebalance {before:,.0f} records/s", flush=True)
        client.request("POST", f"/jobs/{job_id}/auto-rebalance",
                       {"interval_seconds": 1.0, "imbalance_threshold": threshold})
        t0 = time.monotonic()

        def settled():
            # every keyed operator measured below the threshold after its last rebalance,
            # or measured below it without one
            detail = check_running(cluster.job(job_id))
            measured = detail["auto_rebalance"]["imbalance"]
            records = [r for r in detail["rescales"] if r["kind"] == "rebalance"]
            if any(r["state"] == "FAILED" for r in records):
                raise RuntimeError(f"a rebalance failed: {records}")
            if any(r["state"] == "IN_PROGRESS" or r["imbalance_after"] is None for r in records):
                return None
            if {"work", "aggregate"} <= set(measured) and all(v <= threshold for v in measured.values()):
                return detail
            return None

        try:
            detail = wait_for(settled, settle_timeout, "the auto-rebalances to settle", 0.1)
            settled_after = time.monotonic() - t0
        except TimeoutError:
            detail, settled_after = cluster.job(job_id), None
        after = source_rate(cluster, job_id, seconds)
        records = [r for r in detail["rescales"] if r["kind"] == "rebalance"]
        print(f"    skew: after auto-rebalance  {after:,.0f} records/s", flush=True)
        return before, after, records, detail["auto_rebalance"], settled_after
    finally:
        cluster.cancel(job_id)


# -- 4. where the time of a handoff goes (in this process) -----------------------------------


def handoff_breakdown(num_keys, old_parallelism, new_parallelism):
    """Snapshot / split / IPC / install of the aggregate state of ``num_keys`` keys, in ms."""
    from sabot._core import partition
    from sabot.runtime.operators.aggregate import KeyedAggregate
    from sabot.runtime.operators.base import TaskContext

    def operator_instance(i, p):
        ctx = TaskContext(job_id="bench", task_id=f"agg-{i}", attempt=0,
                          operator={"name": "aggregate", "key_by": ["key"],
                                    "parameters": {"aggregates": [["value", "count"], ["value", "sum"]]}},
                          subtask_index=i, parallelism=p, max_parallelism=128)
        op = KeyedAggregate(ctx)
        op.open()
        return op

    # the old tasks' state: each holds the key groups of its range (as the job would)
    olds = [operator_instance(i, old_parallelism) for i in range(old_parallelism)]
    batch_rows = 65536
    for off in range(0, STATE_FACTOR * num_keys, batch_rows):
        batch = keyed_records(off, min(batch_rows, STATE_FACTOR * num_keys - off), num_keys=num_keys)
        for i, part in enumerate(partition.split_state_table(_with_groups(batch), old_parallelism)):
            for rb in part.drop_columns(["_key_group"]).to_batches():
                olds[i].process(rb, 0)
    t = time.perf_counter()
    snaps = [op.snapshot_state(0)["keyed"] for op in olds]
    snapshot = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    pieces = [partition.split_state_table(s, new_parallelism, max_parallelism=128) for s in snaps]
    split = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    received = [[] for _ in range(new_parallelism)]
    for per_old in pieces:
        for j, piece in enumerate(per_old):
            for rb in piece.to_batches():
                buf = rb.serialize()
                received[j].append(pa.ipc.read_record_batch(buf, rb.schema))
    ipc = (time.perf_counter() - t) * 1e3
    news = [operator_instance(j, new_parallelism) for j in range(new_parallelism)]
    t = time.perf_counter()
    for op, batches in zip(news, received):
        if batches:
            op.restore_state(pa.Table.from_batches(batches), None, 0)
    install = (time.perf_counter() - t) * 1e3
    rows = sum(s.num_rows for s in snaps)
    # independent check: the installed tables hold every key exactly once
    got = sum(op.table.num_keys for op in news)
    if got != rows:
        raise AssertionError(f"installed {got} keys, expected the {rows} snapshotted")
    return {"rows": rows, "snapshot_ms": snapshot, "split_ms": split, "ipc_ms": ipc, "install_ms": install,
            "bytes": sum(s.nbytes for s in snaps)}


def _with_groups(batch):
    from sabot._core import partition

    groups = partition.key_groups(partition.hash_columns(batch, ["key"]), 128)
    return batch.append_column("_key_group", pa.array(groups).cast(pa.int32()))


# -- main ---------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k keys, 2 moves each way, short phases")
    parser.add_argument("--runs", type=int, help="repetitions (live and baseline, each way) (default 5, --quick 2)")
    parser.add_argument("--keys", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated key counts (default 10000,100000,1000000)")
    parser.add_argument("--skip-skew", action="store_true", help="leave out the auto-rebalance throughput part")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    keys = args.keys or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    runs = args.runs or (2 if args.quick else 5)
    seconds = 2.0 if args.quick else 4.0
    started = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory(prefix="sabot-bench-rescale-") as tmp:
        config = {"checkpoint_dir": os.path.join(tmp, "ckpt"), "slot_wait_timeout_s": 30}
        with LocalCluster(workers=2, slots_per_worker=4, worker_threads=4, coordinator_config=config) as cluster:
            for n in keys:
                print(f"  {n:,} keys:", flush=True)
                results[n] = bench_keys(cluster, n, runs)
            skew = None if args.skip_skew else bench_skew(cluster, seconds)
    runs_breakdown = [handoff_breakdown(max(keys), 2, 4) for _ in range(3)]
    breakdown = {k: med([r[k] for r in runs_breakdown]) for k in runs_breakdown[0]}

    print()
    print(f"Live rescale of a keyed aggregate vs stop + checkpoint + restore (median of {runs} alternating "
          f"repetitions per row)")
    header = (f"{'keys':>10} {'move':>5} | {'live pause':>10} {'live total':>10} {'switch':>7} {'install':>8} "
              f"{'moved':>9} | {'base down':>9} {'base total':>10} | {'down/pause':>10} {'total/total':>11}")
    print(header)
    print("-" * len(header))
    verdicts = []
    for n, (live, base) in results.items():
        for move in ((2, 4), (4, 2)):
            lv, bs = live[move], base[move]
            pause, total = med([r["pause_ms"] for r in lv]), med([r["total_ms"] for r in lv])
            down, btotal = med([r["downtime_ms"] for r in bs]), med([r["total_ms"] for r in bs])
            print(f"{n:>10,} {move[0]}->{move[1]:<2} | {pause:8.1f}ms {total:8.1f}ms {med([r['switch_ms'] for r in lv]):5.0f}ms "
                  f"{med([r['install_ms'] for r in lv]):6.0f}ms {int(med([r['rows_moved'] for r in lv])):>9,} | "
                  f"{down:7.0f}ms {btotal:8.0f}ms | {down / pause:9.1f}x {btotal / total:10.1f}x")
            if n in TARGETS_MS:
                verdicts.append((n, move, pause, TARGETS_MS[n]))
    print()
    for n, move, pause, target in verdicts:
        print(f"target: pause < {target:.0f} ms with {n:,} keys, {move[0]}->{move[1]}: median {pause:.1f} ms "
              f"-> {'MET' if pause < target else 'NOT MET'} (ratio to target {pause / target:.2f})")
    if skew is not None:
        before, after, records, auto, settled_after = skew
        print()
        print("Skewed job (zipf s=1.2, 100,000 keys, keyed map "
              f"{COST_PER_ROW_S * 1e6:g} us/row at parallelism {WORK_PARALLELISM} -> aggregate at 4):")
        print(f"  records/s before auto-rebalance : {before:12,.0f}")
        print(f"  records/s after auto-rebalance  : {after:12,.0f}   (ratio after/before {after / before:.2f}; "
              f"even load: {CAPACITY:,.0f})")
        for name, value in (("before", before), ("after", after)):
            imb = [r["imbalance_before"] for r in records if r["operator_name"] == "work"][:1] if name == "before" \
                else [auto.get("imbalance", {}).get("work")]
            if imb and imb[0] is not None:
                model = CAPACITY / (1 + imb[0])
                print(f"  model {name:<6}: {CAPACITY:,.0f} / (1 + imbalance of 'work' {imb[0]:.3f}) = {model:10,.0f} records/s "
                      f"(measured / model {value / model:.2f})")
        print("  settled after                   : "
              + (f"{settled_after:.1f} s" if settled_after is not None else "not within the timeout"))
        for r in records:
            print(f"  rebalance {r['operator_name']:<9}: imbalance before {r['imbalance_before']}, predicted "
                  f"{r['imbalance_predicted']}, after {r['imbalance_after']}; {r['moved_key_groups']} key groups "
                  f"moved, pause {r['pause_ms'] or float('nan'):.1f} ms, total {r['total_ms'] or float('nan'):.1f} ms, "
                  f"{r['state_rows_moved']:,} state rows")
        print(f"  last measured imbalance: {auto.get('imbalance')}")
    b = breakdown
    print()
    print(f"Handoff of {int(b['rows']):,} keys ({b['bytes'] / 1e6:.1f} MB), 2 -> 4, in one process, one step "
          "after another, fresh state each time (median of 3):")
    print(f"  snapshot {b['snapshot_ms']:.1f} ms, split by key group {b['split_ms']:.1f} ms, IPC encode+decode "
          f"{b['ipc_ms']:.1f} ms, install {b['install_ms']:.1f} ms "
          f"(sum {b['snapshot_ms'] + b['split_ms'] + b['ipc_ms'] + b['install_ms']:.1f} ms)")
    print(f"\ntotal bench time {time.monotonic() - started:.0f} s")
    report = Report("bench_rescale", keys=keys, runs=runs)
    for n, (live, base) in results.items():
        for move in ((2, 4), (4, 2)):
            figures = summarize({
                "live pause": [r["pause_ms"] / 1e3 for r in live[move]],
                "live total": [r["total_ms"] / 1e3 for r in live[move]],
                "stop-checkpoint-restore downtime": [r["downtime_ms"] / 1e3 for r in base[move]],
                "stop-checkpoint-restore total": [r["total_ms"] / 1e3 for r in base[move]]})
            if n in TARGETS_MS:
                figures["target pause"] = constant("target pause", TARGETS_MS[n] / 1e3)
            report.add(f"{n:,} keys {move[0]}->{move[1]}", figures, baseline="stop-checkpoint-restore downtime")
    for n in keys:
        report.headline(f"live rescale 2 -> 4, {n:,} keys of state: operator pause vs stop-checkpoint-restore's downtime",
                        f"{n:,} keys 2->4", "live pause",
                        note=f"target < {TARGETS_MS[n]:.0f} ms" if n in TARGETS_MS else "")
    if skew is not None:
        before, after = skew[0], skew[1]
        report.add("auto-rebalance", {"before": constant("before", before, "records/s"),
                                      "after": constant("after", after, "records/s")}, baseline="before")
        report.headline("auto-rebalance of a Zipf (s = 1.2) job: records/s after vs before", "auto-rebalance", "after")
    report.figure("handoff_breakdown_ms", {k: v for k, v in breakdown.items() if k.endswith("_ms")})
    if args.json:
        report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

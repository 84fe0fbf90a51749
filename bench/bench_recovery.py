"""Recovery time after kill -9 of a worker, and after it stops answering (SIGSTOP)
(LocalCluster, real processes).

An unbounded keyed job (generator -> key_by -> aggregate with ``emit="updates"``
-> a callable sink stamping the wall time of every batch it receives) runs with
a checkpoint every second and N keys of state. A worker is killed with SIGKILL;
we measure (median of the runs):

* detect: fault -> the coordinator has declared the worker lost;
* resume: fault -> the first batch a restarted sink receives (its first stamp after
  the redeploy), i.e. state restored and records flowing again.

A killed worker's connections close, so it is lost at once. A stopped one (SIGSTOP: a
frozen VM, a swapped-out process) is silent: it is lost after the heartbeat timeout
(2 s by default), then resumed with SIGCONT and it rejoins. A spare worker holds the free
slots the lost tasks move to. Targets: kill -9 detect < 1 s, resume < 2 s with
1,000,000 keys; SIGSTOP detect < timeout + 0.5 s.

The runs of the two faults alternate (kill, stop, kill, ...); figures are medians over
``--runs``, set against the targets (kill -9) and the heartbeat timeout (SIGSTOP). Every
run must restore from a checkpoint and deliver records after it.

    python bench/bench_recovery.py [--quick] [--fault kill|stop|both] [--runs N] [--json out.json]
"""

import argparse
import os
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _recovery_udfs, for the workers too

from _harness import Report, collect, constant, summarize, table  # noqa: E402
from sabot.api.stream import Stream  # noqa: E402
from sabot.cluster.config import CoordinatorConfig  # noqa: E402
from sabot.cluster.local import LocalCluster  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402


def job(num_keys):
    stream = (Stream.from_generator(keyed_records, total_rows=None, batch_size=16384,
                                    parameters={"num_keys": num_keys}, name="source")
              .key_by("key").aggregate({"value": ["count", "sum"]}, emit="updates", name="aggregate")
              .sink("_recovery_udfs:slow_stamp", name="sink"))
    return stream.to_job_graph("recovery", default_parallelism=2, shippable=True, checkpoint_interval_ms=1000,
                               restart_strategy={"type": "fixed-delay", "attempts": 10, "delay_ms": 0})


def one_run(num_keys, stamps, tmp, fault):
    open(stamps, "w").close()
    config = {"checkpoint_dir": os.path.join(tmp, "ckpt"), "restart_slot_wait_s": 20}
    with LocalCluster(workers=3, slots_per_worker=1, coordinator_config=config) as cluster:
        job_id = cluster.submit(job(num_keys))
        deadline = time.monotonic() + 120
        while True:  # a checkpoint that holds (nearly) every key
            view = cluster.checkpoints(job_id)
            latest = view["latest_completed"]
            ops = {op["name"]: op for op in cluster.job(job_id)["operators"]}
            if latest and ops["aggregate"]["rows_in"] >= 4 * num_keys and latest["timestamp"] > time.time() - 1.2:
                break
            assert time.monotonic() < deadline, "no checkpoint with the full state"
            time.sleep(0.02)
        tasks = cluster.job(job_id)["tasks"]
        busy = {t["node_id"] for t in tasks}
        victim = next(n for n in cluster.node_ids if n in busy)
        index = cluster.node_ids.index(victim)
        killed = time.time()
        t0 = time.monotonic()
        pid = cluster.worker_pids[index]
        if fault == "kill":
            cluster.kill_worker(index, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)
        try:
            while victim in cluster.coordinator.nodes:
                time.sleep(0.001)
            detect = time.monotonic() - t0
            first, info = _first_record_after_restart(cluster, job_id, stamps, t0)
        finally:
            if fault == "stop":
                os.kill(pid, signal.SIGCONT)
        restored = info["restored_from"]["checkpoint_id"] if info["restored_from"] else None
        cluster.cancel(job_id)
    return detect, first - killed, restored, latest["size_bytes"]


def _first_record_after_restart(cluster, job_id, stamps, t0):
    while True:
        info = cluster.job(job_id)
        if info["restarts"] >= 1 and info["state"] == "RUNNING":
            break
        assert time.monotonic() - t0 < 30, f"no restart: {info['state']} {info['last_failure']}"
        time.sleep(0.005)
    redeployed = info["restart_history"][-1]["time"]
    first = None
    while first is None:
        with open(stamps) as f:
            after = [float(x) for x in f.read().split() if float(x) > redeployed]
        first = min(after) if after else None
        assert time.monotonic() - t0 < 30, "no record after the restart"
        time.sleep(0.005)
    return first, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 keys, 2 runs")
    parser.add_argument("--fault", choices=["kill", "stop", "both"], default="both")
    parser.add_argument("--runs", type=int, default=None, help="runs per fault (default 5, --quick 2)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    keys = 100_000 if args.quick else 1_000_000
    runs = args.runs or (2 if args.quick else 5)
    faults = ["kill", "stop"] if args.fault == "both" else [args.fault]
    timeout = CoordinatorConfig().heartbeat_timeout_s
    report = Report("bench_recovery", keys=keys, runs=runs, heartbeat_timeout_s=timeout)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SABOT_BENCH_STAMPS"] = stamps = os.path.join(tmp, "stamps.txt")
        counter = {f: 0 for f in faults}

        def case(fault):
            def run():
                detect, resume, restored, size = one_run(keys, stamps, tmp, fault)
                counter[fault] += 1
                assert restored is not None, f"{fault} run {counter[fault]}: the job restarted without a checkpoint"
                print(f"  {fault} run {counter[fault]}: detect {detect * 1e3:7.1f} ms, resume {resume * 1e3:7.1f} ms "
                      f"(restored checkpoint {restored}, {size / 1e6:.1f} MB of state)", flush=True)
                return detect, resume, size
            return run

        out = collect({fault: case(fault) for fault in faults}, repeat=runs)
    for fault, rs in out.items():
        figures = summarize({"detect": [d for d, _, _ in rs], "resume": [r for _, r, _ in rs]})
        if fault == "kill":
            figures["target: detect < 1 s"] = constant("target: detect < 1 s", 1.0)
            figures["target: resume < 2 s"] = constant("target: resume < 2 s", 2.0)
            print(f"kill -9 recovery, {keys:,} keys of keyed state, median of {runs}:")
            print(table(figures, baseline="target: detect < 1 s", ratio="/ 1 s"))
            report.add("kill -9", figures, baseline="target: detect < 1 s")
            report.headline(f"kill -9 a worker, {keys:,} keys of state: worker declared lost", "kill -9", "detect")
            report.headline(f"kill -9 a worker, {keys:,} keys of state: first record after restore", "kill -9",
                            "resume", baseline="target: resume < 2 s")
        else:
            figures[f"heartbeat timeout {timeout:g} s"] = constant(f"heartbeat timeout {timeout:g} s", timeout)
            print(f"SIGSTOP recovery (heartbeat timeout {timeout:g} s), {keys:,} keys, median of {runs}:")
            print(table(figures, baseline=f"heartbeat timeout {timeout:g} s", ratio="/ the timeout"))
            report.add("SIGSTOP", figures, baseline=f"heartbeat timeout {timeout:g} s")
            report.headline(f"SIGSTOP a worker (silent, {keys:,} keys): worker declared lost (target: timeout + 0.5 s)",
                            "SIGSTOP", "detect")
            report.headline(f"SIGSTOP a worker (silent, {keys:,} keys): first record after restore", "SIGSTOP",
                            "resume")
    if args.json:
        report.write(args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())

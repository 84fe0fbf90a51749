"""Chaos soak: exactly-once jobs under random kill -9, SIGSTOP, live rescales and checkpoints.

Each round starts a LocalCluster (3 workers x 2 slots), submits two jobs writing Parquet
with two-phase commit (rows: source -> filter -> map -> sink; aggregate: ... -> keyed
aggregate -> sink), and lets :class:`sabot.testing.ChaosMonkey` kill (then replace),
pause (0.2-5 s: past the 2 s heartbeat timeout a worker is declared lost and rejoins),
rescale (map / aggregate to 1-3) and checkpoint at random for ``--seconds``. Then both
jobs must FINISH; the committed output is compared with pyarrow's reference: rows
missing, rows duplicated, aggregates wrong.

    python bench/bench_chaos.py [--rounds 3] [--seconds 120] [--seed 1] [--json out.json]

A soak run, not a timing: ``--json`` writes its figures (faults by kind, per job: state,
restarts, rows expected / committed / missing / duplicated / wrong) in the JSON report
format of bench/_harness.py, with a text headline for bench/run_all.py's table.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _recovery_udfs, for the workers too

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402

from _harness import Report  # noqa: E402
from sabot.api.stream import Stream  # noqa: E402
from sabot.cluster.local import LocalCluster  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.testing import ChaosMonkey  # noqa: E402

KEYS = 300
BATCH = 500
ROWS_PER_SECOND = 70_000  # what one job of parallelism 2 gets through (the map sleeps 12 ms a batch)


def chaos_job(out_dir, total, aggregate):
    stream = (Stream.from_generator(keyed_records, total_rows=total, batch_size=BATCH,
                                    parameters={"num_keys": KEYS}, name="source").parallelism(2)
              .filter(pc.field("value") > 0.5, name="filter")
              .map("_recovery_udfs:slow_double", name="map"))
    if aggregate:
        stream = stream.key_by("key").aggregate({"value2": ["count", "sum"]}, name="aggregate")
    graph = stream.to_parquet(str(out_dir), name="sink").parallelism(2).to_job_graph(
        "chaos-aggregate" if aggregate else "chaos-rows", default_parallelism=2, shippable=True,
        checkpoint_interval_ms=300, restart_strategy={"type": "fixed-delay", "attempts": 100_000, "delay_ms": 50})
    rescalable = next(o for o, op in graph.operators.items() if op.name == ("aggregate" if aggregate else "map"))
    return graph, rescalable


def verify(out_dir, total, aggregate):
    """(expected rows, committed rows, missing, duplicated, wrong aggregate rows)."""
    t = pa.Table.from_batches([keyed_records(0, total, num_keys=KEYS)]).filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    got = ds.dataset(str(out_dir), format="parquet").to_table()
    if not aggregate:
        distinct = pc.count_distinct(got.column("ts")).as_py()
        missing = t.num_rows - pc.sum(pc.is_in(t.column("ts"), value_set=got.column("ts"))).as_py()
        return t.num_rows, got.num_rows, missing, got.num_rows - distinct, 0
    expected = t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")])
    joined = expected.join(got, "key", join_type="full outer", left_suffix="_want", right_suffix="_got")
    counts_differ = pc.fill_null(pc.not_equal(joined.column("value2_count_want"), joined.column("value2_count_got")),
                                 True)
    sums_differ = pc.fill_null(pc.greater(pc.abs(pc.subtract(joined.column("value2_sum_want"),
                                                             joined.column("value2_sum_got"))), 1e-6), True)
    wrong = pc.sum(pc.or_(counts_differ, sums_differ)).as_py() or 0
    return expected.num_rows, got.num_rows, 0, got.num_rows - pc.count_distinct(got.column("key")).as_py(), wrong


def one_round(seed, seconds, quiet):
    total = int(ROWS_PER_SECOND * seconds * 1.2)
    with tempfile.TemporaryDirectory(prefix="sabot-chaos-") as tmp, \
            LocalCluster(workers=3, slots_per_worker=2,
                         coordinator_config={"checkpoint_dir": os.path.join(tmp, "checkpoints"),
                                             "restart_slot_wait_s": 60}) as cluster:
        jobs = {}
        for aggregate in (False, True):
            graph, rescalable = chaos_job(os.path.join(tmp, f"out-{aggregate}"), total, aggregate)
            jobs[cluster.submit(graph)] = (aggregate, rescalable)
        monkey = ChaosMonkey(cluster, seed=seed, interval_s=(0.3, 2.0), pause_s=(0.2, 5.0),
                             rescalable={j: op for j, (_, op) in jobs.items()},
                             log=None if quiet else (lambda line: print("   ", line, flush=True)))
        ended = lambda: all(cluster.job(j)["state"] in ("FINISHED", "FAILED", "CANCELED") for j in jobs)  # noqa: E731
        report = monkey.run(seconds, stop=ended)
        after = time.monotonic()
        rows = []
        for job_id, (aggregate, _) in jobs.items():
            state = cluster.wait(job_id, 600)
            info = cluster.job(job_id)
            figures = verify(os.path.join(tmp, f"out-{aggregate}"), total, aggregate) if state == "FINISHED" \
                else (None,) * 5
            rows.append(("aggregate" if aggregate else "rows", state, info["restarts"], *figures))
        finish_s = time.monotonic() - after
        lost = cluster.coordinator.registry.losses
    return report, rows, finish_s, lost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="do not print every fault")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()
    bad = 0
    doc = Report("bench_chaos", rounds=args.rounds, seconds=args.seconds, seed=args.seed)
    rounds = []
    faults, restarts, lost_total = {}, 0, 0
    for r in range(args.rounds):
        seed = args.seed + r
        print(f"round {r + 1}/{args.rounds} (seed {seed}, {args.seconds:g} s of chaos)", flush=True)
        report, rows, finish_s, lost = one_round(seed, args.seconds, args.quiet)
        print(f"  faults: {report.summary()}; workers declared lost: {lost}; "
              f"jobs finished {finish_s:.1f} s after the chaos stopped")
        print(f"  {'job':<10} {'state':<9} {'restarts':>8} {'expected':>9} {'committed':>9} {'missing':>8} "
              f"{'duplicated':>10} {'wrong':>6}")
        for name, state, restarts, expected, committed, missing, duplicated, wrong in rows:
            print(f"  {name:<10} {state:<9} {restarts:>8} {expected!s:>9} {committed!s:>9} {missing!s:>8} "
                  f"{duplicated!s:>10} {wrong!s:>6}")
            bad += state != "FINISHED" or bool(missing) or bool(duplicated) or bool(wrong) or expected != committed
        summary = report.summary()
        for kind, counts in summary.items():
            faults[kind] = faults.get(kind, 0) + counts["done"]
        restarts += sum(row[2] for row in rows)
        lost_total += lost
        rounds.append({"seed": seed, "faults": summary, "workers_lost": lost, "finish_s": finish_s,
                       "jobs": [dict(zip(("job", "state", "restarts", "expected", "committed", "missing",
                                          "duplicated", "wrong"), row)) for row in rows]})
    print("exact in every round" if not bad else f"{bad} job(s) NOT exact")
    doc.figure("rounds", rounds)
    doc.figure("jobs_not_exact", bad)
    jobs = [j for r in rounds for j in r["jobs"]]
    missing = sum(j["missing"] or 0 for j in jobs)
    duplicated = sum(j["duplicated"] or 0 for j in jobs)
    done = ", ".join(f"{n} {kind}s" for kind, n in sorted(faults.items()))
    doc.headline(f"chaos: kill -9, SIGSTOP, live rescales, checkpoints at random, {args.rounds} round(s) x "
                 f"{args.seconds:g} s",
                 text=(f"{done}, {restarts} restarts: " +
                       ("both exactly-once jobs exact in every round" if not bad else f"**{bad} job(s) NOT exact**") +
                       f" ({missing} rows missing, {duplicated} duplicated)"))
    if args.json:
        doc.write(args.json)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

"""The keyed-count job from every kind of input, against one vectorised pyarrow pass.

5,000,000 records (key int64 over 100,000 keys, value float64 in [0, 1), ts int64):
filter value > 0.5 -> map value2 = value * 2 -> key_by key -> running count and sum of
value2 -> collect the final per-key table. The job reads the records as a user would
feed them:

* ``table``: ``Stream.from_table`` of the in-memory table;
* ``batches``: ``Stream.from_batches`` of its record batches;
* ``ipc``: ``Stream.from_dataset`` of an Arrow IPC file holding them;
* ``generator``: ``Stream.from_generator`` of the function that makes them (generation
  is part of the job: its cost, measured alone, is printed beside).

each embedded at parallelism 1 and 2, and (``--cluster``) on a LocalCluster of 2
workers at parallelism 2. Baseline, same process, interleaved with the runs: filter,
multiply and group_by over the in-memory table with pyarrow. Every result is checked
against the baseline's. Also printed: p=2 / p=1 speed-up per input, the cores each run
kept busy, the CPU time of the from-table job at p=1 and p=2 with one operator thread (the
work each parallelism does, without contention), and peak RSS of a from-table run
relative to the table's size (``--rss``, in a child process).

    python bench/bench_runtime.py [--quick] [--rows N] [--repeat 3] [--cluster] [--json out.json]
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Report, constant, measure, table as results_table  # noqa: E402

from sabot import Stream  # noqa: E402
from sabot.runtime.embedded import run_job_graph  # noqa: E402
from sabot.runtime.generators import keyed_records  # noqa: E402
from sabot.testing import assert_tables_equal  # noqa: E402

KEYS = 100_000
BATCH = 65536


def add_value2(batch):
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def pyarrow_pass(table):
    t = table.filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")])


def source(kind, table, path, rows, parallelism):
    if kind == "table":
        return Stream.from_table(table, batch_size=BATCH, name="source", parallelism=parallelism)
    if kind == "batches":
        return Stream.from_batches(table.to_batches(max_chunksize=BATCH), name="source", parallelism=parallelism)
    if kind == "ipc":
        return Stream.from_dataset(path, format="ipc", name="source", parallelism=parallelism)
    return Stream.from_generator(keyed_records, total_rows=rows, batch_size=BATCH, parameters={"num_keys": KEYS},
                                 name="source", parallelism=parallelism)


def job(kind, table, path, rows, parallelism, shippable=False):
    stream = (source(kind, table, path, rows, parallelism)
              .filter(pc.field("value") > 0.5, name="filter")
              .map(add_value2 if not shippable else "_runtime_udfs:add_value2", name="map")
              .key_by("key")
              .aggregate({"value2": ["count", "sum"]}, name="aggregate")
              .collect(name="sink"))
    return stream


def cores_used(into, name, fn, cpu_into=None):
    """``fn``, noting into ``into[name]`` how many cores each call kept busy (this process's
    CPU time over the wall time: 1.0 is one core all the time), and into
    ``cpu_into[name]`` (if given) the CPU seconds of each call."""
    def run():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu, start = usage.ru_utime + usage.ru_stime, time.perf_counter()
        out = fn()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = usage.ru_utime + usage.ru_stime - cpu
        into.setdefault(name, []).append(spent / (time.perf_counter() - start))
        if cpu_into is not None:
            cpu_into.setdefault(name, []).append(spent)
        return out
    return run


def make_table(rows):
    return pa.Table.from_batches(
        [keyed_records(off, min(BATCH, rows - off), num_keys=KEYS) for off in range(0, rows, BATCH)])


def peak_rss_ratio(rows):
    """Peak RSS of a child that reads the table from an Arrow IPC file (written here, so
    making it leaves no peak in the child) into memory and runs the from-table job at p=2:
    the peak above the child's RSS before the table, over the table's size (the table
    itself counts: 1.0x is the floor). The peak is the child's VmHWM: its ru_maxrss would
    include the parent's RSS (the spawning parent's memory is the child's until exec), so
    the figure grew with whatever the benchmark held before."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.arrow")
        feather.write_feather(make_table(rows), path, compression="uncompressed")
        code = f"""
import sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); sys.path.insert(0, {os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")!r})
import pyarrow as pa, pyarrow.feather as feather
import bench_runtime as b
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
base = status("VmRSS")
t = feather.read_table({path!r}, memory_map=False)
b.job("table", t, None, {rows}, 2).run(default_parallelism=2)
peak = status("VmHWM")  # not ru_maxrss: it counts the parent's RSS, whose address space the child had until exec
print(t.nbytes, base, peak)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    nbytes, base, peak = map(int, out)
    return nbytes, (peak - base) / nbytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500,000 rows")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--inputs", default="table,batches,ipc,generator")
    parser.add_argument("--cluster", action="store_true", help="also a LocalCluster of 2 workers at p=2")
    parser.add_argument("--rss", action="store_true", help="peak RSS of the from-table run vs the table's size")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    rows = 500_000 if args.quick else args.rows
    kinds = args.inputs.split(",")
    table = make_table(rows)
    ref = pyarrow_pass(table).select(["key", "value2_count", "value2_sum"])

    def check(name, out):
        if name != "pyarrow":
            assert_tables_equal(out.table("sink"), ref, sort_by=["key"])

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.arrow")
        feather.write_feather(table, path, compression="uncompressed", chunksize=BATCH)
        cases = {"pyarrow": lambda: pyarrow_pass(table)}
        used = {}  # embedded case -> [cores it kept busy (process CPU time / wall time) per run]
        cpu = {}  # embedded case -> [CPU seconds per run]
        for kind in kinds:
            for p in (1, 2):
                stream = job(kind, table, path, rows, p)
                cases[f"{kind} p={p}"] = cores_used(used, f"{kind} p={p}",
                                                    lambda s=stream, p=p: s.run(default_parallelism=p), cpu)
        if "table" in kinds:
            # the work each parallelism does, without contention: one operator thread
            for p in (1, 2):
                graph = job("table", table, path, rows, p).to_job_graph(default_parallelism=p)
                cases[f"table p={p}, 1 thread"] = cores_used(
                    used, f"table p={p}, 1 thread", lambda g=graph: run_job_graph(g, threads=1), cpu)
        cluster = None
        if args.cluster:
            from sabot.cluster.local import LocalCluster

            cluster = LocalCluster(workers=2, slots_per_worker=1, python_path=[os.path.dirname(__file__)]).start()
            for kind in kinds:
                graph = job(kind, table, path, rows, 2, shippable=True).to_job_graph(
                    f"runtime-{kind}", default_parallelism=2, shippable=True)
                cases[f"{kind} cluster p=2"] = (lambda g=graph: cluster.run(g, timeout=600))
        try:
            results = measure(cases, repeat=args.repeat, warmup=1, check=check)
        finally:
            if cluster is not None:
                cluster.close()
    gen = measure({"generation alone": lambda: make_table(rows)}, repeat=args.repeat, warmup=0)
    report = Report("bench_runtime", rows=rows, keys=KEYS, batch=BATCH, repeat=args.repeat)
    print(f"{rows:,} records (key int64 over {KEYS:,} keys), median of {args.repeat} interleaved runs")
    print(results_table(results, baseline="pyarrow", work=rows))
    print(f"(generating the records alone takes {gen['generation alone'].median * 1e3:.1f} ms)")
    print("cores kept busy (process CPU time / wall time, median), and what that leaves p=2: on this "
          f"machine's {os.cpu_count()} cores p=2 can at most be p=1's time / (p=2's CPU time / cores)")
    for kind in kinds:
        c1, c2 = (statistics.median(used[f"{kind} p={p}"]) for p in (1, 2))
        p1, p2 = results[f"{kind} p=1"].median, results[f"{kind} p=2"].median
        ceiling = p1 / (p2 * c2 / os.cpu_count())
        print(f"{kind:>9}: p=1 {c1:4.2f} cores, p=2 {c2:4.2f} cores; p=2 at most {ceiling:4.2f}x p=1 here")
        report.figure(f"{kind}_cores_used_p1", c1)
        report.figure(f"{kind}_cores_used_p2", c2)
    if "table" in kinds:
        w1, w2 = (statistics.median(cpu[f"table p={p}, 1 thread"]) for p in (1, 2))
        print(f"work of the table job, one operator thread (CPU time, median): p=1 {w1 * 1e3:.0f} ms, "
              f"p=2 {w2 * 1e3:.0f} ms ({w2 / w1:.2f}x: the hash edge splits every batch, twice the tasks)")
        report.figure("table_cpu_seconds_1_thread_p1", w1)
        report.figure("table_cpu_seconds_1_thread_p2", w2)
    for kind in kinds:
        p1, p2 = results[f"{kind} p=1"].median, results[f"{kind} p=2"].median
        line = f"{kind:>9}: p=2 is {p1 / p2:4.2f}x p=1 (target >= 1.7)"
        if args.cluster:
            line += f"; cluster p=2 is {p2 / results[f'{kind} cluster p=2'].median:4.2f}x embedded p=2 (target >= 0.8)"
        print(line)
    report.add("keyed count", results, baseline="pyarrow")
    names = {"table": "an in-memory table", "batches": "record batches", "ipc": "an Arrow IPC file",
             "generator": "a generator"}
    for kind in kinds:
        report.headline(f"keyed-count job, {rows:,} records from {names[kind]}, embedded p=1",
                        "keyed count", f"{kind} p=1")
    if "table" in kinds:
        report.headline("keyed-count job from a table, p=2 vs p=1 (target: time <= 1/1.7 = 0.59x)",
                        "keyed count", "table p=2", baseline="table p=1")
        if args.cluster:
            report.headline("keyed-count job from a table, LocalCluster p=2 vs embedded p=2 (target: time <= 1.25x)",
                            "keyed count", "table cluster p=2", baseline="table p=2")
    report.figure("generation_alone_s", gen["generation alone"].median)
    if args.rss:
        nbytes, ratio = peak_rss_ratio(rows)
        print(f"from-table run at p=2: peak RSS above the interpreter is {ratio:.2f}x the table's "
              f"{nbytes / 2**20:.0f} MiB, the table included (target <= 2x)")
        report.add("rss", {"peak RSS": constant("peak RSS", ratio * nbytes, "B"),
                           "table": constant("table", nbytes, "B")}, baseline="table")
        report.headline("peak RSS of the from-table run at p=2 (target <= 2x the table)", "rss", "peak RSS")
    if args.json:
        report.write(args.json)

if __name__ == "__main__":
    main()

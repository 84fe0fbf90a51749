"""Benchmark of checkpoint storage (sabot.runtime.checkpoint_storage.CheckpointStorage).

For keyed state of 100,000 and 1,000,000 int64 keys (count + sum, built with
sabot._core.state.KeyedAggregateTable; hashes and key groups from
sabot._core.partition), split over 2 subtasks as a job at parallelism 2 would hold it:

  * write: both subtasks' ``write_keyed_state`` + ``commit`` (metadata, retention);
  * latest: ``latest()`` finding and verifying the checkpoint (CRC-32 of every file);
  * read p=2 / p=3: ``read_keyed_state`` for every subtask at parallelism 2 and 3
    (the rescale case: files are cut by key-group range and filtered).

Baseline, measured in the same process on the same tables: writing them with
``pyarrow.ipc.new_file`` to local files directly, and reading them back with
``pyarrow.ipc.open_file(...).read_all()`` -- i.e. the bare cost of the bytes.
Ratios are sabot / baseline (1.0 = no overhead). Files go to the page cache (no
fsync), on a temporary local directory. All cases run interleaved after a warm-up
(median of ``--repeat``); every read is checked (all keys, and on its first run the
same rows as the snapshots), every ``latest()`` finds the checkpoint written last.

Usage: python bench/bench_checkpoint_storage.py [--quick] [--repeat N] [--json out.json]
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import Report, measure, table  # noqa: E402
from sabot._core.partition import hash_columns, key_group_range, key_groups  # noqa: E402
from sabot._core.state import KeyedAggregateTable  # noqa: E402
from sabot.runtime.checkpoint_storage import CheckpointStorage  # noqa: E402

MAXP = 128
WRITE_PARALLELISM = 2
JOB = "bench-job"
OP = "keyed-count"


def build_state(n_keys):
    """Subtask snapshots of count + sum over n_keys int64 keys (each key seen 3 times)."""
    rng = np.random.default_rng(7)
    keys = rng.permutation(np.repeat(np.arange(n_keys, dtype=np.int64) * 7919, 3))
    vals = rng.integers(0, 1000, len(keys), dtype=np.int64)
    karr = pa.array(keys)
    hashes = hash_columns([karr])
    groups = key_groups(hashes, MAXP)
    snaps = []
    for s in range(WRITE_PARALLELISM):
        start, stop = key_group_range(s, MAXP, WRITE_PARALLELISM)
        sel = (groups >= start) & (groups < stop)
        t = KeyedAggregateTable(pa.int64(), [(None, "count"), ("v", "sum")], MAXP)
        t.update(pa.array(keys[sel]), hashes[sel], groups[sel], {"v": pa.array(vals[sel])})
        snaps.append(t.snapshot())
    return snaps


def run(n_keys, repeat, workdir):
    snaps = build_state(n_keys)
    assert sum(s.num_rows for s in snaps) == n_keys
    expected = pa.concat_tables(snaps).sort_by("key")
    root = os.path.join(workdir, f"chk-{n_keys}")
    storage = CheckpointStorage(root, retain=2)
    chk_ids = iter(range(1, 1_000_000))
    current = {}  # the checkpoint written last (retain=2 keeps it while the reads run)

    def write():
        cid = next(chk_ids)
        handles = []
        for s, snap in enumerate(snaps):
            handles += storage.write_keyed_state(JOB, cid, OP, s, snap, MAXP)
        current["completed"] = storage.commit(JOB, cid, {"bench": True}, handles=handles)
        return current["completed"]

    write()  # so that the reads have a checkpoint before the first write case runs

    def read_at(p):
        return [storage.read_keyed_state(current["completed"], OP, key_group_range(s, MAXP, p))
                for s in range(p)]

    base_dir = os.path.join(workdir, f"base-{n_keys}")
    os.makedirs(base_dir, exist_ok=True)

    def base_write():
        for s, snap in enumerate(snaps):
            with ipc.new_file(os.path.join(base_dir, f"s{s}.arrow"), snap.schema) as w:
                w.write_table(snap)

    def base_read():
        tables = []
        for s in range(len(snaps)):
            with pa.OSFile(os.path.join(base_dir, f"s{s}.arrow")) as f:
                tables.append(ipc.open_file(f).read_all())
        return tables

    checked = set()

    def check(name, out):
        if name.startswith("read") or name == "ipc read":
            assert sum(t.num_rows for t in out) == n_keys, f"{name}: {sum(t.num_rows for t in out)} rows"
            if name not in checked:
                got = pa.concat_tables(out).select(expected.column_names).sort_by("key")
                assert got.equals(expected), f"{name}: the rows read differ from the snapshots"
                checked.add(name)
        elif name == "latest()":
            assert out.checkpoint_id == current["completed"].checkpoint_id, "latest() missed the last checkpoint"

    results = measure({"ipc write": base_write, "write+commit": write,
                       "ipc read": base_read, "latest()": lambda: storage.latest(JOB),
                       "read p=2": lambda: read_at(2), "read p=3": lambda: read_at(3)},
                      repeat=repeat, warmup=1, check=check)
    completed = current["completed"]
    return results, completed.size_bytes, len(completed.handles)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (10k and 100k keys), 3 repeats")
    ap.add_argument("--repeat", type=int, default=None, help="interleaved repetitions (default 5, --quick 3)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    repeat = args.repeat or (3 if args.quick else 5)
    workdir = tempfile.mkdtemp(prefix="sabot-bench-chk-")
    report = Report("bench_checkpoint_storage", write_parallelism=WRITE_PARALLELISM, max_parallelism=MAXP,
                    repeat=repeat)
    try:
        print(f"checkpoint storage: count+sum state over int64 keys, written by {WRITE_PARALLELISM} "
              f"subtasks, max_parallelism={MAXP}, median of {repeat} interleaved runs; "
              "vs ipc = time / time of plain pyarrow.ipc on the same tables (1.0 = no overhead); "
              "latest() reads and CRC-checks every file.")
        for n in sizes:
            results, size, files = run(n, repeat, workdir)
            write = {k: results[k] for k in ("ipc write", "write+commit")}
            read = {k: results[k] for k in ("ipc read", "latest()", "read p=2", "read p=3")}
            print(f"\n{n:,} keys, {size / 1e6:.1f} MB in {files} files, write:")
            print(table(write, baseline="ipc write", work=size, unit="B"))
            print("read:")
            print(table(read, baseline="ipc read", work=size, unit="B"))
            report.add(f"write, {n:,} keys", write, baseline="ipc write")
            report.add(f"read, {n:,} keys", read, baseline="ipc read")
            report.figure(f"size_bytes_{n}", size)
        n = sizes[-1]
        report.headline(f"checkpoint write+commit of {n:,} keys of state ({size / 1e6:.1f} MB) vs plain Arrow IPC",
                        f"write, {n:,} keys", "write+commit")
        report.headline(f"checkpoint read at p=2 of {n:,} keys vs plain Arrow IPC", f"read, {n:,} keys", "read p=2")
        if args.json:
            report.write(args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()

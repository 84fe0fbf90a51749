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
fsync), on a temporary local directory. Best of N repeats.

Usage: python bench/bench_checkpoint_storage.py [--quick]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from sabot._core.partition import hash_columns, key_group_range, key_groups  # noqa: E402
from sabot._core.state import KeyedAggregateTable  # noqa: E402
from sabot.runtime.checkpoint_storage import CheckpointStorage  # noqa: E402

MAXP = 128
WRITE_PARALLELISM = 2
JOB = "bench-job"
OP = "keyed-count"


def best_of(fn, repeat):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


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
    root = os.path.join(workdir, f"chk-{n_keys}")
    storage = CheckpointStorage(root, retain=2)
    chk_ids = iter(range(1, 1_000_000))

    def write():
        cid = next(chk_ids)
        handles = []
        for s, snap in enumerate(snaps):
            handles += storage.write_keyed_state(JOB, cid, OP, s, snap, MAXP)
        return storage.commit(JOB, cid, {"bench": True}, handles=handles)

    t_write, completed = best_of(write, repeat)
    mb = completed.size_bytes / 1e6
    nfiles = len(completed.handles)

    t_latest, latest = best_of(lambda: storage.latest(JOB), repeat)
    assert latest.checkpoint_id == completed.checkpoint_id

    def read_at(p):
        rows = 0
        for s in range(p):
            rows += storage.read_keyed_state(latest, OP, key_group_range(s, MAXP, p)).num_rows
        assert rows == n_keys
        return rows

    t_read2, _ = best_of(lambda: read_at(2), repeat)
    t_read3, _ = best_of(lambda: read_at(3), repeat)

    base_dir = os.path.join(workdir, f"base-{n_keys}")
    os.makedirs(base_dir, exist_ok=True)

    def base_write():
        for s, snap in enumerate(snaps):
            with ipc.new_file(os.path.join(base_dir, f"s{s}.arrow"), snap.schema) as w:
                w.write_table(snap)

    def base_read():
        rows = 0
        for s in range(len(snaps)):
            with pa.OSFile(os.path.join(base_dir, f"s{s}.arrow")) as f:
                rows += ipc.open_file(f).read_all().num_rows
        return rows

    t_bwrite, _ = best_of(base_write, repeat)
    t_bread, rows = best_of(base_read, repeat)
    assert rows == n_keys
    return {
        "keys": n_keys, "mb": mb, "files": nfiles, "write": t_write, "latest": t_latest,
        "read2": t_read2, "read3": t_read3, "bwrite": t_bwrite, "bread": t_bread,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (10k and 100k keys), 1 repeat")
    args = ap.parse_args()
    sizes = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    repeat = 1 if args.quick else 5
    workdir = tempfile.mkdtemp(prefix="sabot-bench-chk-")
    try:
        print(f"checkpoint storage: count+sum state over int64 keys, written by {WRITE_PARALLELISM} "
              f"subtasks, max_parallelism={MAXP}, best of {repeat}")
        hdr = (f"{'keys':>10} {'MB':>7} {'files':>5} | {'write+commit s':>14} {'MB/s':>7} "
               f"{'vs ipc':>6} | {'latest() s':>10} | {'read p=2 s':>10} {'MB/s':>7} {'vs ipc':>6} "
               f"| {'read p=3 s':>10} | {'ipc write s':>11} {'ipc read s':>10}")
        print(hdr)
        print("-" * len(hdr))
        for n in sizes:
            r = run(n, repeat, workdir)
            print(f"{r['keys']:>10,} {r['mb']:>7.1f} {r['files']:>5} | {r['write']:>14.4f} "
                  f"{r['mb'] / r['write']:>7.0f} {r['write'] / r['bwrite']:>6.2f} | {r['latest']:>10.4f} | "
                  f"{r['read2']:>10.4f} {r['mb'] / r['read2']:>7.0f} {r['read2'] / r['bread']:>6.2f} | "
                  f"{r['read3']:>10.4f} | {r['bwrite']:>11.4f} {r['bread']:>10.4f}")
        print("vs ipc = time / time of plain pyarrow.ipc on the same tables (1.0 = no overhead); "
              "latest() reads and CRC-checks every file.")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

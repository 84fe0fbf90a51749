"""sabot.kernels: the public face of the partitioning kernels, checked against pyarrow/numpy."""

import doctest

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import sabot.kernels as kernels


def test_the_docstring_examples_run():
    assert doctest.testmod(kernels).failed == 0


def test_repartition_equals_a_pyarrow_filter_per_partition():
    rng = np.random.default_rng(3)
    n = 50_000
    batch = pa.record_batch({"k": pa.array(rng.integers(0, 1000, n)), "s": pa.array([f"v{i % 97}" for i in range(n)]),
                             "x": pa.array(rng.random(n))})
    parts = kernels.repartition(batch, ["k", "s"], 8)
    # the owner of each row by the documented rule, computed with numpy from the hashes
    groups = kernels.key_groups(kernels.hash_columns(batch, ["k", "s"]), kernels.DEFAULT_MAX_PARALLELISM)
    owners = groups.astype(np.int64) * 8 // kernels.DEFAULT_MAX_PARALLELISM
    for p, part in enumerate(parts):
        expected = batch.filter(pa.array(owners == p))  # pyarrow keeps input order
        assert part.equals(expected)
    assert sum(p.num_rows for p in parts) == n


def test_key_group_ranges_cover_every_group_once():
    for parallelism in (1, 3, 7, 128):
        ranges = [kernels.key_group_range(i, 128, parallelism) for i in range(parallelism)]
        covered = [g for start, end in ranges for g in range(start, end)]  # half-open ranges
        assert covered == list(range(128))
        assignment = kernels.default_assignment(128, parallelism)
        assert all(kernels.subtask_for_key_group(g, 128, parallelism) == assignment[g] for g in range(128))


def test_hash_is_stable_and_nulls_hash_to_the_constant():
    batch = pa.record_batch({"k": pa.array([5, None, 5], pa.int64())})
    h = kernels.hash_columns(batch, "k")
    assert h[0] == h[2] and h[1] == kernels.NULL_HASH
    assert pc.equal(pa.array(kernels.key_groups(h, 128)), pa.array((h % 128).astype(np.int32))).to_pylist() == \
        [True] * 3


def _longest_stall_of_this_thread_while(work):
    """Run ``work()`` on another thread while this one keeps running Python; the
    longest time this thread went without running, and how long ``work`` took."""
    import threading
    import time

    done = threading.Event()
    took = []

    def run():
        start = time.perf_counter()
        work()
        took.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=run)
    last = time.perf_counter()
    longest = 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    worker.join()
    return longest, took[0]


def test_kernels_let_other_python_threads_run_while_they_work():
    """Each kernel's loops run without the GIL: one long call on another thread leaves this
    thread running Python. A kernel holding the GIL for its whole run would stall this
    thread for about the whole call."""
    from sabot._core.state import KeyedAggregateTable

    n = 8_000_000
    rng = np.random.default_rng(5)
    keys = pa.array(rng.integers(0, 200_000, n))
    batch = pa.record_batch({"k": keys, "v": pa.array(rng.random(n))})
    hashes = kernels.hash_columns(batch, "k")
    groups = kernels.key_groups(hashes, 128)
    works = {
        "hash_columns": lambda: kernels.hash_columns(batch, "k"),
        "repartition": lambda: kernels.repartition(batch, "k", 64),
        "KeyedAggregateTable.update": lambda: KeyedAggregateTable(pa.int64(), [("v", "sum")], 128).update(
            keys, hashes, groups, {"v": batch.column("v")}),
    }
    # the probe sees a call that holds the GIL: list.sort runs in C without releasing it
    data = rng.integers(0, 1 << 40, 400_000).tolist()
    stall, took = _longest_stall_of_this_thread_while(lambda: sorted(data))
    assert stall / took > 0.5
    for name, work in works.items():
        stalls = []
        while len(stalls) < 3 and (not stalls or min(stalls) >= 0.5):  # the OS, too, may take this thread
            stall, took = _longest_stall_of_this_thread_while(work)       # off its core: up to three tries
            stalls.append(stall / took)
        assert min(stalls) < 0.5, f"{name}: this thread stalled {min(stalls):.0%} of the kernel's run"

"""Tests of sabot._core.morsel: morsel cutting and the work-stealing scheduler."""

import threading
import time

import numpy as np
import pyarrow as pa
import pytest

import sabot._core.morsel as morsel
import sabot._core.partition as partition
from sabot.errors import SabotError

pytestmark = pytest.mark.timeout(60)


def make_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return pa.record_batch({
        "k": pa.array(rng.integers(0, 1000, n), mask=rng.random(n) < 0.05),
        "s": pa.array([f"key{x}" for x in rng.integers(0, 500, n)]),
        "v": pa.array(rng.random(n)),
    })


@pytest.mark.parametrize("morsel_bytes", [1, 1000, 1 << 16, 1 << 30])
def test_cut_morsels_zero_copy_cover(morsel_bytes):
    batch = make_batch(5000).slice(13, 4000)
    ms = morsel.cut_morsels(batch, morsel_bytes)
    assert all(m.num_rows >= 1 for m in ms)
    assert pa.Table.from_batches(ms).equals(pa.Table.from_batches([batch]))
    # zero-copy: every morsel's value buffer is the batch's buffer
    base = batch.column("v").buffers()[1].address
    for m in ms:
        assert m.column("v").buffers()[1].address == base
    # sizes: every morsel but the last holds the same number of rows, near the target
    rows = [m.num_rows for m in ms]
    assert len(set(rows[:-1])) <= 1
    per_row = batch.nbytes / batch.num_rows
    if morsel_bytes >= per_row and len(ms) > 1:
        assert rows[0] == int(morsel_bytes * batch.num_rows // batch.nbytes)


def test_cut_morsels_bad_input():
    assert morsel.cut_morsels(make_batch(0), 100) == []
    with pytest.raises(ValueError, match="morsel_bytes must be >= 1, got 0"):
        morsel.cut_morsels(make_batch(3), 0)
    with pytest.raises(TypeError, match="RecordBatch"):
        morsel.cut_morsels([1, 2], 10)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_map_results_in_input_order(threads):
    batch = make_batch(20000)
    ms = morsel.cut_morsels(batch, 10_000)
    sched = morsel.MorselScheduler(threads)
    fn = lambda m: (m.num_rows, float(np.nansum(m.column("v").to_numpy())))  # noqa: E731
    assert sched.map(fn, ms) == [fn(m) for m in ms]
    assert sched.map(fn, []) == []


def test_map_runs_on_several_threads_and_steals():
    sched = morsel.MorselScheduler(2)
    seen = []
    lock = threading.Lock()

    def work(i):
        # morsels of thread 0's block are slow: thread 1 must steal some of them
        time.sleep(0.02 if i < 10 else 0.0)
        with lock:
            seen.append(threading.get_ident())
        return i * i

    assert sched.map(work, range(20)) == [i * i for i in range(20)]
    assert len(set(seen)) == 2


def test_map_error_names_morsel_and_cancels_rest():
    sched = morsel.MorselScheduler(2)
    started = []

    def work(i):
        started.append(i)
        if i == 3:
            raise KeyError("bad row")
        time.sleep(0.005)
        return i

    with pytest.raises(morsel.MorselError, match=r"morsel 3 of 200 failed in .*work: KeyError") as e:
        sched.map(work, range(200))
    assert e.value.morsel_index == 3
    assert isinstance(e.value, SabotError) and isinstance(e.value, RuntimeError)
    assert isinstance(e.value.__cause__, KeyError)
    assert len(started) < 200  # the rest was cancelled
    # the scheduler is usable again afterwards, and no worker thread is left behind
    assert sched.map(lambda i: i + 1, range(5)) == [1, 2, 3, 4, 5]
    assert not [t for t in threading.enumerate() if t.name.startswith("sabot-morsel")]


def test_map_error_serial_stops_at_first_failure():
    sched = morsel.MorselScheduler(1)
    started = []

    def work(i):
        started.append(i)
        if i == 2:
            raise ValueError("x")
        return i

    with pytest.raises(morsel.MorselError) as e:
        sched.map(work, range(10))
    assert e.value.morsel_index == 2 and started == [0, 1, 2]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("morsel_rows", [1, 777, 65536])
def test_nogil_hash_kernel_equals_serial(threads, morsel_rows):
    batch = make_batch(30_000).slice(5)
    sched = morsel.MorselScheduler(threads)
    expected = partition.hash_columns(batch, ["k", "s"])
    got = sched.hash_columns(batch, ["k", "s"], morsel_rows=morsel_rows)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_nogil_partition_ids_equal_serial(threads):
    batch = make_batch(50_000)
    sched = morsel.MorselScheduler(threads)
    pids, counts = sched.partition_ids(batch, "k", 16, morsel_rows=4096)
    exp_pids, exp_counts = partition.partition_ids(batch, "k", 16)
    np.testing.assert_array_equal(pids, exp_pids)
    np.testing.assert_array_equal(counts, exp_counts)
    # and independently of the kernel: key group counts are a histogram of hash % 128
    kg = (partition.hash_columns(batch, "k") % np.uint64(128)).astype(np.int64)
    np.testing.assert_array_equal(counts, np.bincount(kg, minlength=128))


def test_scheduler_bad_input():
    with pytest.raises(ValueError, match="num_threads must be in 1..1024, got 0"):
        morsel.MorselScheduler(0)
    with pytest.raises(TypeError, match="callable"):
        morsel.MorselScheduler(1).map(3, [1])
    with pytest.raises(ValueError, match="morsel_rows"):
        morsel.MorselScheduler(1).hash_columns(make_batch(3), "k", morsel_rows=0)

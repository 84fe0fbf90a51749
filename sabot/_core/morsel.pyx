# cython: language_level=3
"""Morsels and a work-stealing scheduler (morsel-driven parallelism, Leis et al. 2014).

``cut_morsels`` cuts a batch into zero-copy slices of about ``morsel_bytes`` bytes.
``MorselScheduler(num_threads)`` runs work over morsels on ``num_threads`` threads
(the calling thread is one of them): each thread starts on its own contiguous block
of morsels and, when that runs dry, steals from the back of another thread's block,
so a slow morsel does not hold the others up. Results come back in input order.

Two kinds of work:

* ``map(fn, morsels)`` calls a Python callable per morsel. Threads only overlap
  while ``fn`` releases the GIL (pyarrow compute, numpy, Sabot's kernels do).
* ``hash_columns`` / ``partition_ids`` run Sabot's compiled key-hash kernels over
  row ranges with the GIL released for the whole run, one morsel at a time.

If a morsel fails, no thread starts another morsel; morsels already running finish,
every thread is joined, and ``MorselError`` (naming the morsel index, chained to the
original exception) is raised.
"""

import logging
import threading

import numpy as np
import pyarrow as pa

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from sabot.errors import SabotError

from sabot._core.partition cimport HashPlan, hash_range, partition_ids_range
import sabot._core.partition as _partition

log = logging.getLogger(__name__)

DEFAULT_MORSEL_ROWS = 65536

cdef extern from *:
    """
    #include <stdint.h>
    static inline int sabot_ws_take(uint64_t* q, int steal, int64_t* out) {
        uint64_t old = __atomic_load_n(q, __ATOMIC_ACQUIRE);
        for (;;) {
            uint32_t lo = (uint32_t)(old >> 32), hi = (uint32_t)old;
            uint64_t nw;
            if (lo >= hi) return 0;
            nw = steal ? (((uint64_t)lo << 32) | (uint64_t)(hi - 1))
                       : (((uint64_t)(lo + 1) << 32) | (uint64_t)hi);
            if (__atomic_compare_exchange_n(q, &old, nw, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                *out = steal ? (int64_t)(hi - 1) : (int64_t)lo;
                return 1;
            }
        }
    }
    static inline void sabot_store_int(int* p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int sabot_load_int_atomic(int* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void sabot_store_u64(uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int sabot_ws_take(uint64_t* q, int steal, int64_t* out) noexcept nogil
    void sabot_store_int(int* p, int v) noexcept nogil
    int sabot_load_int_atomic(int* p) noexcept nogil
    void sabot_store_u64(uint64_t* p, uint64_t v) noexcept nogil


class MorselError(SabotError, RuntimeError):
    """A morsel's work failed; ``morsel_index`` names it, ``__cause__`` is the original error."""

    def __init__(self, message, morsel_index):
        super().__init__(message)
        self.morsel_index = morsel_index


def cut_morsels(batch, morsel_bytes):
    """Cut ``batch`` into zero-copy slices of about ``morsel_bytes`` bytes each.

    Every slice has at least one row; together they are the batch's rows in order.
    An empty batch gives an empty list.

    Args:
        batch: a ``pyarrow.RecordBatch`` (or ``Table``).
        morsel_bytes: target size of one morsel in bytes (>= 1).
    """
    if not isinstance(batch, (pa.RecordBatch, pa.Table)):
        raise TypeError(f"cut_morsels takes a pyarrow RecordBatch or Table, got {type(batch).__name__}")
    if isinstance(morsel_bytes, bool) or not isinstance(morsel_bytes, (int, np.integer)):
        raise TypeError(f"morsel_bytes must be an int, got {morsel_bytes!r}")
    if morsel_bytes < 1:
        raise ValueError(f"morsel_bytes must be >= 1, got {morsel_bytes}")
    n = batch.num_rows
    if n == 0:
        return []
    nbytes = batch.nbytes
    rows = n if nbytes == 0 else max(1, int(morsel_bytes) * n // nbytes)
    return [batch.slice(start, min(rows, n - start)) for start in range(0, n, rows)]


def _morsel_ranges(n, morsel_rows):
    if isinstance(morsel_rows, bool) or not isinstance(morsel_rows, (int, np.integer)) or morsel_rows < 1:
        raise ValueError(f"morsel_rows must be an int >= 1, got {morsel_rows!r}")
    return (n + morsel_rows - 1) // morsel_rows


cdef class MorselScheduler:
    """Runs work over morsels on ``num_threads`` threads with work stealing.

    Example:
        >>> sched = MorselScheduler(2)
        >>> sched.map(lambda b: b.num_rows, cut_morsels(batch, 1 << 20))  # doctest: +SKIP
    """

    def __cinit__(self, num_threads=2):
        if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
            raise TypeError(f"num_threads must be an int, got {num_threads!r}")
        if not 1 <= num_threads <= 1024:
            raise ValueError(f"num_threads must be in 1..1024, got {num_threads}")
        self.num_threads = num_threads
        self._queues = <uint64_t*>calloc(num_threads, sizeof(uint64_t))
        if self._queues == NULL:
            raise MemoryError()
        self._cancel = 0
        self._running = 0

    def __dealloc__(self):
        free(self._queues)

    def __repr__(self):
        return f"MorselScheduler(num_threads={self.num_threads})"

    cdef void _reset(self, int64_t num_morsels) noexcept:
        cdef int t
        cdef int64_t lo, hi
        for t in range(self.num_threads):
            lo = num_morsels * t // self.num_threads
            hi = num_morsels * (t + 1) // self.num_threads
            sabot_store_u64(&self._queues[t], (<uint64_t>lo << 32) | <uint64_t>hi)
        sabot_store_int(&self._cancel, 0)

    cdef bint _take(self, int tid, int64_t* morsel) noexcept nogil:
        """Next morsel for thread tid: its own block first, then steal; False when done."""
        cdef int k, victim
        if sabot_load_int_atomic(&self._cancel):
            return False
        if sabot_ws_take(&self._queues[tid], 0, morsel):
            return True
        for k in range(1, self.num_threads):
            victim = (tid + k) % self.num_threads
            if sabot_ws_take(&self._queues[victim], 1, morsel):
                return True
        return False

    def _run(self, int64_t num_morsels, worker):
        """Run worker(tid) on num_threads threads (tid 0 is the caller); join all."""
        if num_morsels >= (1 << 31):
            raise ValueError(f"too many morsels ({num_morsels}); use larger morsels")
        if self._running:
            raise RuntimeError("this MorselScheduler is already running work; "
                               "use one scheduler per concurrent caller")
        self._running = 1
        try:
            self._reset(num_morsels)
            nthreads = min(self.num_threads, max(num_morsels, 1))
            threads = [threading.Thread(target=worker, args=(t,), name=f"sabot-morsel-{t}", daemon=True)
                       for t in range(1, nthreads)]
            for th in threads:
                th.start()
            try:
                worker(0)
            finally:
                for th in threads:
                    th.join()
        finally:
            self._running = 0

    def _fail(self, failures, lock, int64_t m, exc):
        with lock:
            failures.append((m, exc))
        sabot_store_int(&self._cancel, 1)

    @staticmethod
    def _raise_first(failures, int64_t num_morsels, what):
        m, exc = min(failures, key=lambda f: f[0])
        raise MorselError(f"morsel {m} of {num_morsels} failed in {what}: "
                          f"{type(exc).__name__}: {exc}", m) from exc

    def map(self, fn, morsels):
        """``[fn(m) for m in morsels]``, computed on the scheduler's threads.

        Raises:
            MorselError: the lowest-numbered morsel that failed; the morsels not yet
                started when it failed are not run.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        morsels = list(morsels)
        cdef int64_t n = len(morsels)
        results = [None] * n
        failures = []
        lock = threading.Lock()
        name = getattr(fn, "__qualname__", repr(fn))

        def worker(int tid):
            cdef int64_t m
            while self._take(tid, &m):
                try:
                    results[m] = fn(morsels[m])
                except BaseException as exc:  # surfaced to the caller as MorselError
                    self._fail(failures, lock, m, exc)
                    return

        self._run(n, worker)
        if failures:
            self._raise_first(failures, n, name)
        return results

    def hash_columns(self, data, key_columns=None, morsel_rows=DEFAULT_MORSEL_ROWS):
        """``partition.hash_columns`` computed on the scheduler's threads, GIL released."""
        arrays, names = _partition._resolve_key_arrays(data, key_columns)
        cdef HashPlan plan = HashPlan(arrays, names)
        cdef int64_t n = plan.num_rows
        cdef int64_t rows = morsel_rows
        cdef int64_t nm = _morsel_ranges(n, morsel_rows)
        out = np.empty(n, dtype=np.uint64)
        cdef uint64_t[::1] ov = out
        cdef uint64_t* op = &ov[0] if n else NULL

        def worker(int tid):
            cdef int64_t m, a, b
            with nogil:
                while self._take(tid, &m):
                    a = m * rows
                    b = a + rows if a + rows < n else n
                    hash_range(plan.cols, plan.num_columns, a, b, op + a)

        self._run(nm, worker)
        return out

    def partition_ids(self, data, key_columns, num_partitions=None, *, assignment=None,
                      max_parallelism=_partition.DEFAULT_MAX_PARALLELISM, morsel_rows=DEFAULT_MORSEL_ROWS):
        """``partition.partition_ids`` on the scheduler's threads: (uint16 partition id
        per row, int64 rows per key group). Each thread counts into its own row of
        key-group counts, summed at the end."""
        table, P = _partition._partition_table(num_partitions, assignment, max_parallelism)
        arrays, names = _partition._resolve_key_arrays(data, key_columns)
        cdef HashPlan plan = HashPlan(arrays, names)
        cdef int64_t n = plan.num_rows
        cdef int64_t rows = morsel_rows
        cdef int64_t nm = _morsel_ranges(n, morsel_rows)
        cdef uint64_t mp = max_parallelism
        pids = np.empty(n, dtype=np.uint16)
        counts = np.zeros((self.num_threads, mp), dtype=np.int64)
        cdef uint16_t[::1] pv = pids
        cdef uint16_t* pp = &pv[0] if n else NULL
        cdef int64_t[:, ::1] cv = counts
        cdef const uint16_t[::1] tv = table

        def worker(int tid):
            cdef int64_t m, a, b, i, chunk
            cdef uint64_t scratch[2048]
            with nogil:
                while self._take(tid, &m):
                    a = m * rows
                    b = a + rows if a + rows < n else n
                    i = a
                    while i < b:
                        chunk = b - i if b - i < 2048 else 2048
                        hash_range(plan.cols, plan.num_columns, i, i + chunk, scratch)
                        partition_ids_range(scratch, chunk, mp, &tv[0], pp + i, &cv[tid, 0])
                        i += chunk

        self._run(nm, worker)
        return pids, counts.sum(axis=0)

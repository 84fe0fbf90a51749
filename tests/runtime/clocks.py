"""Module-level clock, gate and sink for the processing-time tests (referenced by import path)."""

import threading

import numpy as np
import pyarrow as pa

from sabot.runtime.timers import ManualClock

CLOCK = ManualClock(1_000)
GATE = threading.Event()
SEEN = []


def reset(start_ms=1_000):
    CLOCK._now = start_ms
    GATE.clear()
    SEEN.clear()


def gated_rows(offset, num_rows):
    """Rows ``offset ...``; every batch after the first waits for GATE (an idle source)."""
    if offset and num_rows and not GATE.wait(timeout=30):
        raise TimeoutError("the test never opened the gate")
    keys = np.arange(offset, offset + num_rows) % 3
    return pa.record_batch({"k": pa.array(keys, pa.int64()), "v": pa.array(np.ones(num_rows), pa.float64())})


def record(batch):
    SEEN.extend(batch.to_pylist())


def clock():
    """The tests' processing-time clock (operators name it as ``"clocks:clock"``)."""
    return CLOCK

"""User functions of bench_recovery.py (workers import them by reference)."""

import os
import time


def stamp(batch):
    """Sink: append the wall time of every batch it receives to $SABOT_BENCH_STAMPS."""
    with open(os.environ["SABOT_BENCH_STAMPS"], "a") as f:
        f.write(f"{time.time()}\n")


def slow_stamp(batch):
    time.sleep(0.005)
    stamp(batch)


def slow_double(batch):
    """Map of bench_chaos.py: value2 = 2 * value, slowly (so the job runs while faults happen)."""
    import pyarrow.compute as pc

    time.sleep(0.012)
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))

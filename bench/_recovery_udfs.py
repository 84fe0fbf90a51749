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

"""Module-level user functions of the recovery tests (workers import them by reference)."""

import os
import time

import pyarrow.compute as pc

#: seconds each map call sleeps, so the test job runs a few seconds
SLEEP_S = 0.012


def slow_add_value2(batch):
    time.sleep(SLEEP_S)
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def always_boom(batch):
    raise ZeroDivisionError("cursed batch")


def boom_once(batch):
    """Fails the first time any process calls it after $SABOT_TEST_MARKER was removed."""
    marker = os.environ["SABOT_TEST_MARKER"]
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return slow_add_value2(batch)
    os.close(fd)
    raise ZeroDivisionError("first call of boom_once fails on purpose")


def hold_gil_once(batch):
    """The first call in the cluster holds the GIL for $SABOT_TEST_GIL_SECONDS (one long C call,
    as a big pandas or regex call does), then works like slow_add_value2."""
    marker = os.environ.get("SABOT_TEST_GIL_MARKER")
    if marker:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            import ctypes

            # PyDLL keeps the GIL for the whole call: no other Python thread of the process runs
            ctypes.PyDLL(None).usleep(int(float(os.environ["SABOT_TEST_GIL_SECONDS"]) * 1e6))
    return slow_add_value2(batch)

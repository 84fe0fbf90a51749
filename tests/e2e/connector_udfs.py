"""Module-level user functions of the connector end-to-end tests (workers import them by reference)."""

import time


def slow_identity(batch):
    """Slows the job down so that a worker can be killed while it runs."""
    time.sleep(0.015)
    return batch


def numbers(offset, num_rows):
    import pyarrow as pa

    return pa.record_batch([pa.array(range(offset, offset + num_rows), pa.int64())], names=["n"])


def slower_identity(batch):
    """40 us per row: the job runs for seconds while its source is rescaled twice."""
    time.sleep(40e-6 * batch.num_rows)
    return batch

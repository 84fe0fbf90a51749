"""User functions of bench_rescale.py (the workers import them by reference)."""

import time

#: seconds of work per row in :func:`per_row_cost` (20 us: one task handles at most ~50,000 rows/s)
COST_PER_ROW_S = 20e-6


def per_row_cost(batch):
    """A keyed map whose cost is proportional to its rows and leaves the batch unchanged.

    It waits ``COST_PER_ROW_S`` per row (a latency-bound step, e.g. a lookup per record),
    so each task has a fixed capacity and the task that receives the hot keys of a
    skewed stream becomes the bottleneck, whatever the number of cores.
    """
    time.sleep(batch.num_rows * COST_PER_ROW_S)
    return batch

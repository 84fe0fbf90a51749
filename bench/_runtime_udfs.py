"""User functions of bench_runtime.py's cluster runs (workers import them by reference)."""

import pyarrow.compute as pc


def add_value2(batch):
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))

"""Module-level user functions for runtime tests (shippable by import reference)."""

import pyarrow as pa
import pyarrow.compute as pc


def add_value2(batch):
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def value_over_half(batch):
    return pc.greater(batch.column("value"), 0.5)


def explode_twice(batch):
    return [batch, batch]


def boom_on_third(batch, _state={"n": 0}):
    _state["n"] += 1
    if _state["n"] >= 3:
        raise ZeroDivisionError("third batch is cursed")
    return batch


def always_boom(batch):
    raise ZeroDivisionError("cursed batch")


def returns_list(batch):
    return [1, 2, 3]


def drops_a_column_sometimes(batch):
    if batch.column(0)[0].as_py() % 2:
        return batch.select([0])
    return batch


def reference_keyed_count(table):
    """The benchmark job done as one vectorised pyarrow pass (the reference)."""
    t = table.filter(pc.field("value") > 0.5)
    t = t.append_column("value2", pc.multiply(t.column("value"), 2.0))
    return t.group_by("key").aggregate([("value2", "count"), ("value2", "sum")]).select(
        ["key", "value2_count", "value2_sum"]
    )


def keyed_count_stream(stream_cls, total_rows, num_keys=1000, batch_size=8192):
    from sabot.runtime.generators import keyed_records

    return (
        stream_cls.from_generator(keyed_records, total_rows=total_rows, batch_size=batch_size,
                                  parameters={"num_keys": num_keys}, name="source")
        .filter(pc.field("value") > 0.5, name="filter")
        .map(add_value2, name="map")
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate")
        .collect(name="sink")
    )


def table_of(rows):
    return pa.table(rows)


def slow_sink(batch):
    import time

    time.sleep(0.004)


def slow_add_value2(batch):
    import time

    time.sleep(0.002)
    return add_value2(batch)


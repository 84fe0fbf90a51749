"""Jobs for the live-rescaling tests: shipped to worker processes by import reference."""

import time

import pyarrow as pa
import pyarrow.compute as pc

from sabot import Stream
from sabot.runtime.generators import keyed_records, zipf_keyed_records


def slow_add_value2(batch):
    time.sleep(0.02)
    return batch.append_column("value2", pc.multiply(batch.column("value"), 2.0))


def keyed_count_job(total_rows, num_keys, agg_parallelism, batch_size=2048, zipf=False, name="keyed-count"):
    generator = zipf_keyed_records if zipf else keyed_records
    params = {"num_keys": num_keys}
    stream = (
        Stream.from_generator(generator, total_rows=total_rows, batch_size=batch_size,
                              parameters=params, name="source").parallelism(1)
        .map(slow_add_value2, name="map").parallelism(2)
        .key_by("key")
        .aggregate({"value2": ["count", "sum"]}, name="aggregate").parallelism(agg_parallelism)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(name, default_parallelism=2, shippable=True)


def reference(total_rows, num_keys, zipf=False, batch_size=65536):
    generator = zipf_keyed_records if zipf else keyed_records
    table = pa.Table.from_batches(
        [generator(off, min(batch_size, total_rows - off), num_keys=num_keys) for off in range(0, total_rows, batch_size)]
    )
    table = table.append_column("value2", pc.multiply(table.column("value"), 2.0))
    out = table.group_by("key").aggregate([("value2", "count"), ("value2", "sum")])
    return out.select(["key", "value2_count", "value2_sum"])


def dataset_job(path, name="file-source", parallelism=1):
    """Files read through a dataset source (one split per file), slowed down by the map."""
    stream = (
        Stream.from_dataset(path, format="parquet", batch_size=1024, name="source").parallelism(parallelism)
        .map(slow_add_value2, name="map").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(name, default_parallelism=2, shippable=True)


def table_job(table, name="table-source", parallelism=4):
    """An in-memory table (one split per strided share of its slices), slowed down by the map."""
    stream = (
        Stream.from_table(table, batch_size=1024, name="source").parallelism(parallelism)
        .map(slow_add_value2, name="map").parallelism(2)
        .collect(name="sink").parallelism(1)
    )
    return stream.to_job_graph(name, default_parallelism=2, shippable=True)

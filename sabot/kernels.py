"""Sabot's kernels as public API: stable key hashing, key groups and repartitioning of
Arrow data, for users who shuffle Arrow batches themselves (the same code Sabot's keyed
edges and state use; every loop runs without the GIL over the Arrow buffers).

* :func:`hash_columns` — a stable 64-bit hash per row of one or more key columns
  (xxHash64 of each value's canonical bytes, specified in ``docs/hash.md``; the same on
  every machine and Python version, so it can place data and state durably).
* :func:`key_groups`, :func:`key_group` — ``hash % max_parallelism``, Flink's key groups.
* :func:`subtask_for_key_group`, :func:`key_group_range`, :func:`default_assignment` —
  which of ``parallelism`` subtasks owns a key group (contiguous ranges, as Flink).
* :func:`partition_ids` — each row's partition (and rows per key group).
* :func:`repartition` — one batch into ``num_partitions`` batches by key, input order
  kept within each output (1.33x the time of a memcpy of the batch for 64 partitions
  on 10M rows; see ``bench/bench_partition.py``).
* :func:`scatter` — rows into partitions by precomputed ids.
* :func:`split_state_table` — a state table (with a key-group column) cut by owner.

Example:
    >>> import pyarrow as pa
    >>> from sabot import kernels
    >>> batch = pa.record_batch({"user": [1, 2, 3, 1], "n": [10, 20, 30, 40]})
    >>> parts = kernels.repartition(batch, "user", 2)
    >>> sorted(sum((p.column("n").to_pylist() for p in parts), []))
    [10, 20, 30, 40]
    >>> [p.num_rows for p in parts] == [int((kernels.partition_ids(batch, "user", 2)[0] == i).sum()) for i in range(2)]
    True
    >>> groups = kernels.key_groups(kernels.hash_columns(batch, "user"), 128)
    >>> int(groups[0]) == int(groups[3])  # the same key, the same key group
    True
"""

from sabot._core.partition import (
    DEFAULT_MAX_PARALLELISM,
    MAX_MAX_PARALLELISM,
    MAX_PARTITIONS,
    NULL_HASH,
    KeyColumnError,
    UnsupportedKeyType,
    default_assignment,
    hash_columns,
    key_group,
    key_group_range,
    key_groups,
    partition_ids,
    repartition,
    scatter,
    split_state_table,
    subtask_for_key_group,
)

__all__ = [
    "DEFAULT_MAX_PARALLELISM",
    "MAX_MAX_PARALLELISM",
    "MAX_PARTITIONS",
    "NULL_HASH",
    "KeyColumnError",
    "UnsupportedKeyType",
    "default_assignment",
    "hash_columns",
    "key_group",
    "key_group_range",
    "key_groups",
    "partition_ids",
    "repartition",
    "scatter",
    "split_state_table",
    "subtask_for_key_group",
]

"""Partitioners: how an output edge spreads batches over its downstream channels.

One interface, ``Partitioner.route(batch) -> [(channel, batch), ...]``, with one
implementation per edge partitioning of the execution graph:

* ``ForwardPartitioner``: everything to channel 0 (the one downstream subtask).
* ``HashPartitioner``: rows by key group (``hash % max_parallelism``), key groups to
  channels by the default contiguous ranges or by an explicit assignment table; it
  also accumulates rows per key group, the load statistics auto-rebalance reads.
* ``RebalancePartitioner``: round robin, by whole batches or by rows.
* ``BroadcastPartitioner``: every batch to every channel.

Only non-empty batches are routed. The kernels are ``sabot._core.partition``.
"""

import abc
import logging
import threading

import numpy as np
import pyarrow as pa

import sabot._core.partition as _partition
from sabot.execution.operator_spec import DEFAULT_MAX_PARALLELISM

log = logging.getLogger(__name__)

__all__ = [
    "Partitioner",
    "ForwardPartitioner",
    "HashPartitioner",
    "RebalancePartitioner",
    "BroadcastPartitioner",
    "make_partitioner",
    "PARTITIONINGS",
]

PARTITIONINGS = ("forward", "hash", "rebalance", "broadcast")


def _check_num_partitions(num_partitions):
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise TypeError(f"num_partitions must be an int, got {num_partitions!r}")
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    return int(num_partitions)


def _check_batch(batch):
    if not isinstance(batch, pa.RecordBatch):
        raise TypeError(f"route() takes a pyarrow.RecordBatch, got {type(batch).__name__}")


class Partitioner(abc.ABC):
    """Routes each batch of an output edge to downstream channels.

    Attributes:
        num_partitions: number of downstream channels (0..num_partitions-1).
    """

    num_partitions: int

    @abc.abstractmethod
    def route(self, batch):
        """Split or copy ``batch`` over channels.

        Returns:
            list of ``(channel_index, pyarrow.RecordBatch)``, each batch non-empty,
            in channel order for one input batch.
        """

    def __repr__(self):
        return f"{type(self).__name__}(num_partitions={self.num_partitions})"


class ForwardPartitioner(Partitioner):
    """Sends every batch to channel 0 (a FORWARD edge has one downstream subtask)."""

    def __init__(self):
        self.num_partitions = 1

    def route(self, batch):
        _check_batch(batch)
        return [(0, batch)] if batch.num_rows else []


class BroadcastPartitioner(Partitioner):
    """Sends every batch to every channel (the same immutable batch, no copy)."""

    def __init__(self, num_partitions):
        self.num_partitions = _check_num_partitions(num_partitions)

    def route(self, batch):
        _check_batch(batch)
        if not batch.num_rows:
            return []
        return [(i, batch) for i in range(self.num_partitions)]


class RebalancePartitioner(Partitioner):
    """Round robin over channels.

    Args:
        num_partitions: number of channels.
        by: ``"batch"`` sends whole batches to the channels in turn; ``"rows"``
            deals rows out in turn (row ``r`` of the stream goes to channel
            ``r % num_partitions``), so every channel gets an even share of rows
            whatever the batch sizes.
    """

    def __init__(self, num_partitions, by="batch"):
        self.num_partitions = _check_num_partitions(num_partitions)
        if by not in ("batch", "rows"):
            raise ValueError(f"by must be 'batch' or 'rows', got {by!r}")
        self.by = by
        self._next = 0  # next channel (by batch) or the stream position of the next row (by rows)
        self._lock = threading.Lock()

    def route(self, batch):
        _check_batch(batch)
        n = batch.num_rows
        if not n:
            return []
        p = self.num_partitions
        with self._lock:
            start = self._next
            self._next = (start + (1 if self.by == "batch" else n)) % p
        if self.by == "batch":
            return [(start, batch)]
        if p == 1:
            return [(0, batch)]
        pids = ((np.arange(n, dtype=np.int64) + start) % p).astype(np.uint16)
        parts = _partition.scatter(batch, pids, p)
        return [(i, part) for i, part in enumerate(parts) if part.num_rows]

    def __repr__(self):
        return f"RebalancePartitioner(num_partitions={self.num_partitions}, by={self.by!r})"


class HashPartitioner(Partitioner):
    """Routes rows by the stable hash of their key columns.

    Row ``r`` goes to ``assignment[key_group]`` when an assignment table is set,
    otherwise to ``key_group * num_partitions // max_parallelism`` (Flink's ranges),
    where ``key_group = hash(key of r) % max_parallelism``.

    Args:
        key_columns: key column name(s) (combined in order).
        num_partitions: number of channels, 1..max_parallelism.
        max_parallelism: number of key groups.
        assignment: optional int array (length max_parallelism) key group -> channel.

    Example:
        >>> hp = HashPartitioner(["user"], 4)
        >>> for channel, part in hp.route(batch): ...  # doctest: +SKIP
    """

    def __init__(self, key_columns, num_partitions, max_parallelism=DEFAULT_MAX_PARALLELISM, assignment=None):
        if isinstance(key_columns, str):
            key_columns = [key_columns]
        if key_columns is None or not list(key_columns):
            raise ValueError("HashPartitioner needs at least one key column")
        self.key_columns = list(key_columns)
        self.max_parallelism = _partition._check_max_parallelism(max_parallelism)
        self.num_partitions = _partition._check_parallelism(
            _check_num_partitions(num_partitions), self.max_parallelism, "num_partitions")
        self._lock = threading.Lock()
        self._counts = np.zeros(self.max_parallelism, dtype=np.int64)
        self.assignment = None
        self.set_assignment(assignment)

    def set_assignment(self, assignment):
        """Use ``assignment`` (key group -> channel, length max_parallelism) from the
        next batch on; ``None`` goes back to the default contiguous ranges."""
        if assignment is not None:
            # validates length and range, naming the bad entry
            _partition._partition_table(self.num_partitions, assignment, self.max_parallelism)
            assignment = np.asarray(assignment, dtype=np.int32).copy()
            assignment.setflags(write=False)
        self.assignment = assignment

    @property
    def key_group_counts(self):
        """Rows routed per key group since construction or the last reset (int64 copy)."""
        with self._lock:
            return self._counts.copy()

    def reset_key_group_counts(self):
        """Zero the per-key-group counts and return what they were."""
        with self._lock:
            counts, self._counts = self._counts, np.zeros(self.max_parallelism, dtype=np.int64)
        return counts

    def route(self, batch):
        _check_batch(batch)
        if not batch.num_rows:
            return []
        assignment = self.assignment
        parts, counts = _partition.repartition(
            batch, self.key_columns,
            self.num_partitions, assignment=assignment,
            max_parallelism=self.max_parallelism, key_group_counts=True)
        with self._lock:
            self._counts += counts
        return [(i, part) for i, part in enumerate(parts) if part.num_rows]

    def __repr__(self):
        return (f"HashPartitioner(key_columns={self.key_columns!r}, num_partitions={self.num_partitions}, "
                f"max_parallelism={self.max_parallelism}, "
                f"assignment={'custom' if self.assignment is not None else 'ranges'})")


def make_partitioner(partitioning, num_partitions, key_columns=None, max_parallelism=DEFAULT_MAX_PARALLELISM):
    """Partitioner for an edge partitioning name.

    Args:
        partitioning: one of ``"forward"``, ``"hash"``, ``"rebalance"``, ``"broadcast"``
            (case-insensitive; an enum whose ``value`` is one of these also works).
        num_partitions: number of downstream channels.
        key_columns: key column(s); required for ``"hash"``.
        max_parallelism: number of key groups (``"hash"`` only).
    """
    name = getattr(partitioning, "value", partitioning)
    if not isinstance(name, str) or name.lower() not in PARTITIONINGS:
        raise ValueError(f"unknown partitioning {partitioning!r}; expected one of {PARTITIONINGS}")
    name = name.lower()
    if name == "forward":
        if num_partitions != 1:
            raise ValueError(f"a forward edge has exactly one channel, got num_partitions={num_partitions}")
        return ForwardPartitioner()
    if name == "hash":
        if not key_columns:
            raise ValueError("a hash partitioning needs key_columns")
        return HashPartitioner(key_columns, num_partitions, max_parallelism=max_parallelism)
    if name == "rebalance":
        return RebalancePartitioner(num_partitions)
    return BroadcastPartitioner(num_partitions)

"""The data plane: what runs inside a worker (tasks, operators, channels, partitioners)."""

from sabot.runtime.partitioner import (
    BroadcastPartitioner,
    ForwardPartitioner,
    HashPartitioner,
    Partitioner,
    RebalancePartitioner,
    make_partitioner,
)

__all__ = [
    "BroadcastPartitioner",
    "ForwardPartitioner",
    "HashPartitioner",
    "Partitioner",
    "RebalancePartitioner",
    "make_partitioner",
]

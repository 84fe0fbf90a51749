"""Checkpoint barrier alignment of one task over its input channels (Flink's
SingleCheckpointBarrierHandler, aligned mode), as pure bookkeeping.

A checkpoint's barrier arrives once on every input channel. A channel that delivered
it is blocked (its records belong to the next checkpoint) until the barrier has come
on every other live channel; then the task snapshots, forwards the barrier and
unblocks. A newer checkpoint's barrier overtaking one that never aligned gives the
older checkpoint up (declined). Channels that can deliver no barrier (ended, waiting
behind a live rescale, or past a rescale barrier) do not hold the alignment up.

The task does the I/O (blocking the gate, snapshotting, reporting); this class only
decides, so it is tested with integers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["Aligned", "BarrierAligner", "BarrierReceived"]


@dataclass
class BarrierReceived:
    """What to do with a barrier that just arrived on ``channel``.

    ``block``: block the channel (False: the barrier is stale and dropped).
    ``declined``: a checkpoint given up because this newer barrier overtook it, with the
    channels to unblock (``unblock``).
    """

    block: bool
    declined: int | None = None
    unblock: list[int] = field(default_factory=list)


@dataclass
class Aligned:
    """Every live channel delivered ``barrier``: snapshot, forward it, unblock ``unblock``."""

    barrier: object
    alignment_ms: float
    unblock: list[int]


class BarrierAligner:
    """The alignment in progress (at most one checkpoint at a time).

    Args:
        min_checkpoint_id: barriers of older checkpoints are ignored (a task that joined
            in a live rescale is not part of checkpoints that began before it existed).
        clock: ``perf_counter``-like, for the alignment time.
    """

    def __init__(self, min_checkpoint_id: int = 0, clock: Callable[[], float] = time.perf_counter):
        self.min_checkpoint_id = min_checkpoint_id
        self._clock = clock
        self.barrier = None
        self.arrived: set[int] = set()
        self._started = 0.0

    @property
    def checkpoint_id(self) -> int | None:
        return None if self.barrier is None else self.barrier.checkpoint_id

    def receive(self, channel: int, barrier) -> BarrierReceived:
        """A checkpoint barrier arrived on ``channel``."""
        checkpoint_id = barrier.checkpoint_id
        if checkpoint_id < self.min_checkpoint_id:
            return BarrierReceived(block=False)
        outcome = BarrierReceived(block=True)
        if self.barrier is not None:
            if checkpoint_id < self.barrier.checkpoint_id:
                return BarrierReceived(block=False)  # a barrier of a checkpoint already given up
            if checkpoint_id > self.barrier.checkpoint_id:
                outcome = BarrierReceived(block=True, declined=self.barrier.checkpoint_id,
                                          unblock=sorted(self.arrived))
                self.barrier = None
        if self.barrier is None:
            self.barrier, self.arrived, self._started = barrier, set(), self._clock()
        self.arrived.add(channel)
        return outcome

    def complete(self, num_channels: int, settled: Callable[[int], bool]) -> Aligned | None:
        """The alignment, if every channel delivered the barrier or is ``settled`` (can deliver
        none); the aligner is then free for the next checkpoint."""
        if self.barrier is None:
            return None
        if not all(i in self.arrived or settled(i) for i in range(num_channels)):
            return None
        done = Aligned(self.barrier, (self._clock() - self._started) * 1e3, sorted(self.arrived))
        self.barrier, self.arrived = None, set()
        return done

"""What a task knows about its input channels (pure bookkeeping, no I/O).

Each channel belongs to one logical input (the upstream operator's edge). The state
kept per channel: its latest watermark, whether it is idle (its sender announced
:class:`~sabot.runtime.events.WatermarkStatus` ``idle``; a record, a watermark or an
``active`` status ends that) and whether it ended. Idle channels are left out of the
task's minimum watermark; when every live channel is idle, event time moves to the
largest watermark among them (Flink's StatusWatermarkValve) and the task is idle itself
(:attr:`InputState.all_idle`: it announces that downstream). Idle is not ended: an idle
channel still delivers checkpoint barriers (:meth:`InputState.settled` is False). A live rescale adds
channels from the new upstream tasks; they are kept *waiting* (blocked in the
task's gate) until every older channel of the same input has ended, so per-key
order holds across the rescale.
"""

from __future__ import annotations

__all__ = ["InputState"]


class InputState:
    """Per-channel watermarks, idle and end-of-stream flags, and waiting channels.

    Args:
        edges: the logical input (upstream edge index) of each channel, in channel order.

    Example:
        >>> s = InputState([0, 0])
        >>> s.watermark(0, 10), s.watermark(1, 7)
        (None, 7)
        >>> s.finish(1); s.watermark(0, 12)
        12
        >>> s = InputState([0, 1])
        >>> s.watermark(0, 5), s.set_idle(1, True), s.all_idle
        (None, 5, False)
    """

    def __init__(self, edges):
        self.edges = list(edges)
        self.watermarks = [None] * len(self.edges)
        self.finished = [False] * len(self.edges)
        self.idle = [False] * len(self.edges)
        self._idle_count = 0  # live (not finished) idle channels
        self.remaining = len(self.edges)
        self._waiting = []  # (edge, [channel indices]) added by a rescale, oldest first
        self._combined = None

    def __len__(self):
        return len(self.edges)

    def add(self, edge, count) -> list[int]:
        """Add ``count`` channels of input ``edge``; they wait until its older channels ended.

        Returns their indices.
        """
        start = len(self.edges)
        indices = list(range(start, start + count))
        self.edges += [edge] * count
        self.watermarks += [None] * count
        self.finished += [False] * count
        self.idle += [False] * count
        self.remaining += count
        self._waiting.append((edge, indices))
        return indices

    def finish(self, channel) -> None:
        """Channel ``channel`` delivered end of stream."""
        if not self.finished[channel]:
            self._set_idle(channel, False)
            self.finished[channel] = True
            self.remaining -= 1

    def _set_idle(self, channel, idle):
        if self.idle[channel] != idle:
            self.idle[channel] = idle
            self._idle_count += 1 if idle else -1

    def set_idle(self, channel, idle) -> int | None:
        """Channel ``channel`` announced a watermark status; return the task's new event time
        if leaving an idle channel out (or every channel being idle) advanced it."""
        if not self.finished[channel]:
            self._set_idle(channel, bool(idle))
        return self.advance()

    def record(self, channel) -> None:
        """A record arrived on ``channel``: it is active again."""
        if self.idle[channel]:
            self._set_idle(channel, False)

    @property
    def all_idle(self) -> bool:
        """Every live channel is idle (and there is one): the task announces idle downstream."""
        return self.remaining > 0 and self._idle_count == self.remaining

    def is_waiting(self, channel) -> bool:
        return any(channel in indices for _, indices in self._waiting)

    def settled(self, channel) -> bool:
        """True if the channel can deliver no barrier now: it ended, or it is still waiting."""
        return self.finished[channel] or self.is_waiting(channel)

    def releasable(self) -> list[int]:
        """Waiting channels whose older channels of the same input have all ended; they stop
        waiting (the task unblocks them)."""
        released, still = [], []
        for edge, indices in self._waiting:
            older = [i for i, e in enumerate(self.edges) if e == edge and i < indices[0]]
            if all(self.finished[i] for i in older):
                released += indices
            else:
                still.append((edge, indices))
        self._waiting = still
        return released

    def watermark(self, channel, timestamp) -> int | None:
        """Record a channel's watermark (it is active again); return the task's new event time
        if it advanced."""
        self.watermarks[channel] = timestamp
        self.record(channel)
        return self.advance()

    def advance(self) -> int | None:
        """The minimum watermark over the live channels that are not idle, if every one of them
        has one; with every live channel idle, the largest watermark among them (nothing else
        will move event time on: Flink's flush). None unless it moved past the last one returned."""
        if self._idle_count:
            live = [w for w, f, i in zip(self.watermarks, self.finished, self.idle) if not f and not i]
        else:
            live = [w for w, f in zip(self.watermarks, self.finished) if not f]
        if live:
            if None in live:
                return None
            new = min(live)
        else:
            idle = [w for w, f, i in zip(self.watermarks, self.finished, self.idle) if not f and i and w is not None]
            if not idle:
                return None
            new = max(idle)
        if self._combined is not None and new <= self._combined:
            return None
        self._combined = new
        return new

    @property
    def current(self) -> int | None:
        """The task's event time: the last combined watermark (None before the first)."""
        return self._combined

    def start_at(self, timestamp) -> None:
        """Event time continues from ``timestamp`` (a new task of a live rescale)."""
        self._combined = timestamp

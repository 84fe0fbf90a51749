"""Processing time inside a task: clocks, and waking the task loop for timers.

An operator with processing-time timers (processing-time windows, process functions)
reports its earliest one through ``Operator.next_processing_time()`` (milliseconds
since the epoch, on the task's clock). The task loop asks :class:`ProcessingTimers`
before it waits for input: a due timer fires at once (``on_processing_time(now)``),
otherwise a wake-up of the input gate is armed for the timer's time, so timers fire
even when no record arrives.

Time is passed in: a task's clock is :class:`SystemClock` unless the operator names
another with the parameter ``"clock"`` (an import reference to a function returning a
clock: an object with ``now_ms()``). Tests use :class:`ManualClock`: time moves only when the
test says, and moving it wakes the tasks waiting on it.
"""

from __future__ import annotations

import asyncio
import threading
import time

from sabot.errors import OperatorError
from sabot.runtime import functions

__all__ = ["ManualClock", "ProcessingTimers", "SystemClock", "clock_for"]


class SystemClock:
    """Wall-clock milliseconds since the epoch."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def subscribe(self, wake) -> None:  # real time wakes tasks through loop timers
        pass

    def unsubscribe(self, wake) -> None:
        pass


SYSTEM_CLOCK = SystemClock()


class ManualClock:
    """A clock that moves only by :meth:`advance` / :meth:`set` (deterministic tests).

    Moving it calls every subscribed wake-up (the gates of tasks waiting on a timer),
    from whatever thread moves it; the wake-ups hop onto their own event loop.

    Example:
        >>> clock = ManualClock(1_000)
        >>> clock.advance(500); clock.now_ms()
        1500
    """

    manual = True  # the task loop relies on subscribe() wake-ups, not loop timers

    def __init__(self, start_ms: int = 0):
        self._now = int(start_ms)
        self._lock = threading.Lock()
        self._wakes = []

    def now_ms(self) -> int:
        return self._now

    def set(self, now_ms: int) -> None:
        with self._lock:
            if now_ms < self._now:
                raise ValueError(f"a clock does not go back: {now_ms} < {self._now}")
            self._now = int(now_ms)
            wakes = list(self._wakes)
        for wake in wakes:
            wake()

    def advance(self, delta_ms: int) -> None:
        self.set(self._now + int(delta_ms))

    def subscribe(self, wake) -> None:
        with self._lock:
            self._wakes.append(wake)

    def unsubscribe(self, wake) -> None:
        with self._lock:
            if wake in self._wakes:
                self._wakes.remove(wake)


def clock_for(operator: dict):
    """The clock an operator's task runs on: its ``"clock"`` parameter, else the system clock."""
    ref = (operator.get("parameters") or {}).get("clock")
    if ref is None:
        return SYSTEM_CLOCK
    try:
        clock = functions.resolve(ref)
    except functions.FunctionReferenceError as exc:
        raise OperatorError(f"operator {operator.get('name')!r}: clock {ref!r}: {exc}") from exc
    if not hasattr(clock, "now_ms") and callable(clock):
        clock = clock()
    if not hasattr(clock, "now_ms"):
        raise OperatorError(f"operator {operator.get('name')!r}: clock {ref!r} has no now_ms()")
    return clock


class ProcessingTimers:
    """The task loop's view of its operator's processing-time timers.

    Args:
        operator: the task's operator (``next_processing_time()``).
        clock: the task's clock.
        wake: wakes the task loop (the input gate's ``signal``); called on the loop.
    """

    def __init__(self, operator, clock, wake):
        self.operator = operator
        self.clock = clock
        self._wake = wake
        self._handle = None
        self._armed_for = None
        self._loop = asyncio.get_running_loop()
        self._threadsafe_wake = lambda: self._loop.call_soon_threadsafe(self._wake)
        clock.subscribe(self._threadsafe_wake)

    def due(self):
        """``now`` if the earliest timer is due, else None."""
        at = self.operator.next_processing_time()
        if at is None:
            return None
        now = self.clock.now_ms()
        return now if at <= now else None

    def arm(self) -> None:
        """Wake the loop when the earliest timer is due (replaces an earlier wake-up)."""
        at = self.operator.next_processing_time()
        if at == self._armed_for:
            return
        self.cancel()
        if at is None:
            return
        self._armed_for = at
        delay = max(0.0, (at - self.clock.now_ms()) / 1000.0)
        if not getattr(self.clock, "manual", False):
            self._handle = self._loop.call_later(delay, self._wake)
        elif delay == 0.0:
            self._handle = self._loop.call_soon(self._wake)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_for = None

    def close(self) -> None:
        self.cancel()
        self.clock.unsubscribe(self._threadsafe_wake)

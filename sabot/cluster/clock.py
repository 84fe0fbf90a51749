"""Time for the control plane: monotonic now, wall time, sleeps and timers.

Every piece of the control plane takes a :class:`Clock` instead of calling
``time``/``asyncio.sleep`` itself, so heartbeat timeouts, restart delays, periodic
checkpoints and auto-rebalance intervals can be stepped by hand in tests
(:class:`sabot.testing.ManualClock`, Flink's ManuallyTriggeredScheduledExecutor idea).
"""

import asyncio
import time

__all__ = ["Clock"]


class Clock:
    """The real clock: ``time.monotonic``, ``time.time`` and the running event loop's timers."""

    def now(self) -> float:
        """Monotonic seconds (for durations and timeouts)."""
        return time.monotonic()

    def wall(self) -> float:
        """Unix seconds (for what users read: submitted at, checkpoint trigger time)."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback, *args):
        """Call ``callback(*args)`` after ``delay`` seconds; returns a handle with ``cancel()``."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)

"""The one place that picks the event loop: uvloop where it is installed, asyncio otherwise."""

import asyncio

try:
    import uvloop
except ImportError:  # uvloop is not available on Windows
    uvloop = None

__all__ = ["LoopLag", "new_event_loop", "run"]


def new_event_loop():
    """A fresh event loop (uvloop when available), not set as the current one."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(coro):
    """Run ``coro`` to completion on a fresh loop and return its result (``asyncio.run`` semantics)."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


class LoopLag:
    """How late the running event loop gets to a timer: a callback or coroutine that blocks
    the loop (a big job expanded in one go, a long C call holding the GIL) shows up here.

    ``max_ms`` is the worst lag since :meth:`reset`; ``p99_ms`` over the last ``window``
    samples (one sample every ``interval_s``).
    """

    def __init__(self, interval_s=0.01, window=6000):
        import collections

        self.interval_s = interval_s
        self.samples = collections.deque(maxlen=window)
        self.max_ms = 0.0
        self._task = None

    def start(self):
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        return self

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self):
        import time

        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag_ms = max(0.0, (time.perf_counter() - before - self.interval_s) * 1e3)
            self.samples.append(lag_ms)
            if lag_ms > self.max_ms:
                self.max_ms = lag_ms

    def reset(self):
        self.samples.clear()
        self.max_ms = 0.0

    def snapshot(self):
        ordered = sorted(self.samples)
        p99 = ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0
        return {"max_ms": round(self.max_ms, 2), "p99_ms": round(p99, 2), "samples": len(ordered)}

"""The one place that picks the event loop: uvloop where it is installed, asyncio otherwise."""

import asyncio

try:
    import uvloop
except ImportError:  # uvloop is not available on Windows
    uvloop = None

__all__ = ["new_event_loop", "run"]


def new_event_loop():
    """A fresh event loop (uvloop when available), not set as the current one."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def run(coro):
    """Run ``coro`` to completion on a fresh loop and return its result (``asyncio.run`` semantics)."""
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)

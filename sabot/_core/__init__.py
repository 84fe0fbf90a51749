"""Sabot's compiled kernels (private).

Only ``sabot.execution``, ``sabot.runtime`` and ``sabot.cluster`` import from here.
There is no pure-Python fallback: a missing extension is an import error that says
how to build it.
"""

import importlib

COMPILED_MODULES = ("graph", "slots", "partition", "state", "liveness", "jsonscan", "shm", "selection")

_HOW_TO_BUILD = (
    "Sabot's compiled core module 'sabot._core.{name}' is not built. "
    "Install Sabot with 'pip install .' (which compiles it), or for a development "
    "checkout run './build_ext.sh' in the repository root."
)


def _load(name):
    try:
        return importlib.import_module(f"sabot._core.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"sabot._core.{name}":
            raise
        raise ImportError(_HOW_TO_BUILD.format(name=name)) from None


def __getattr__(name):
    # ``from sabot._core import graph`` asks for the attribute before importing the
    # submodule; importing it here turns a missing build into a clear ImportError.
    if name in COMPILED_MODULES:
        return _load(name)
    raise AttributeError(f"module 'sabot._core' has no attribute {name!r}")


def check():
    """Import every compiled module, raising ImportError with build instructions."""
    for name in COMPILED_MODULES:
        _load(name)

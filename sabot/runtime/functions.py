"""User functions travel as import references: ``"package.module:function"``.

A lambda or closure has no such reference. For embedded runs (everything in this
process) it is registered here under a ``__local__:<n>`` reference; a job holding
such a reference cannot be shipped to worker processes, and
:func:`check_shippable` says which operator and why.
"""

import importlib
import itertools
import threading

from sabot.errors import SabotError

LOCAL_PREFIX = "__local__:"

_local = {}
_counter = itertools.count()
_lock = threading.Lock()


class FunctionReferenceError(SabotError, ValueError):
    """A function reference that cannot be resolved or cannot be shipped."""


def reference_of(fn):
    """Return the import reference of ``fn``; register it locally if it has none.

    A module-level function (importable by module and qualified name) gets
    ``"module:qualname"``; anything else (lambda, closure, bound method, callable
    object) is registered in this process and gets a ``__local__:`` reference.
    """
    if isinstance(fn, str):
        parse_reference(fn)
        return fn
    if not callable(fn):
        raise TypeError(f"expected a callable or a 'package.module:function' string, got {type(fn).__name__}")
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if module and qualname and "<" not in qualname and module != "__main__":
        try:
            if resolve(f"{module}:{qualname}") is fn:
                return f"{module}:{qualname}"
        except FunctionReferenceError:
            pass
    with _lock:
        key = f"{LOCAL_PREFIX}{next(_counter)}"
        _local[key] = fn
    return key


def parse_reference(ref):
    """Split ``"package.module:attr.path"`` into (module, attr path); validate the form."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise FunctionReferenceError(
            f"function reference {ref!r} is not of the form 'package.module:function'"
        )
    module, attr = ref.split(":")
    if not module or not attr:
        raise FunctionReferenceError(
            f"function reference {ref!r} is not of the form 'package.module:function'"
        )
    return module, attr


def is_local(ref):
    return isinstance(ref, str) and ref.startswith(LOCAL_PREFIX)


def resolve(ref):
    """Import and return the object a reference names."""
    if is_local(ref):
        try:
            return _local[ref]
        except KeyError:
            raise FunctionReferenceError(
                f"function reference {ref!r} names a lambda or closure registered in another "
                "process; only module-level functions can be shipped to workers"
            ) from None
    module_name, attr = parse_reference(ref)
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:
        raise FunctionReferenceError(
            f"cannot import module {module_name!r} of function reference {ref!r}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FunctionReferenceError(
                f"module {module_name!r} has no attribute {attr!r} (function reference {ref!r})"
            ) from None
    if not callable(obj):
        raise FunctionReferenceError(f"function reference {ref!r} names a {type(obj).__name__}, not a callable")
    return obj


def check_shippable(job_graph):
    """Raise FunctionReferenceError if any operator uses a process-local function."""
    for op in job_graph.operators.values():
        refs = [op.function] + [v for k, v in sorted(op.parameters.items()) if k.endswith("function")]
        for ref in refs:
            if is_local(ref):
                fn = _local.get(ref)
                raise FunctionReferenceError(
                    f"operator {op.name!r} uses {fn!r}, a lambda or closure: it can run in this "
                    "process (Stream.run()) but cannot be shipped to worker processes. "
                    "Define it as a module-level function in an importable module."
                )

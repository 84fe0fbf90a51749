"""User functions travel as import references: ``"package.module:function"``.

A lambda or closure has no such reference. For embedded runs (everything in this
process) it is registered here under a ``__local__:<n>`` reference; a job holding
such a reference cannot be shipped to worker processes, and
:func:`check_shippable` says which operator and why.

Which references a cluster runs is a policy (:class:`FunctionPolicy`), checked from the
reference's text alone: the coordinator never imports user code to judge it.
"""

import importlib
import importlib.util
import itertools
import sys
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


#: modules whose callables can do anything to the machine: never a user function, under any
#: policy, in the coordinator or in a worker
ALWAYS_DENIED = frozenset({
    "builtins", "os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy", "code", "codeop",
    "pickle", "marshal", "shelve", "ctypes", "socket", "pty", "multiprocessing", "signal", "webbrowser",
    "pathlib", "tempfile", "io", "gc", "inspect", "threading", "_thread", "asyncio", "concurrent",
})
#: Sabot's own modules a job may name (generators, the Nexmark sources, test helpers, SQL's sink
#: and UDF ports)
SABOT_MODULES = ("sabot.runtime.generators", "sabot.nexmark", "sabot.testing", "sabot.sql.udfs")


def _within(module, prefixes):
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class FunctionPolicy:
    """Which function references a cluster accepts, judged from the text of the reference.

    Always refused: :data:`ALWAYS_DENIED` (``os``, ``subprocess``, ``builtins``, ...).
    Always accepted: ``pyarrow.compute`` and :data:`SABOT_MODULES`. Otherwise, with
    ``allowed`` None (the default), any module outside the standard library and outside
    pyarrow / sabot: the job's own packages; with ``allowed`` a list of module prefixes,
    only those (a standard-library module may be listed on purpose).

    Example:
        >>> FunctionPolicy().why_refused("os:system")
        "module 'os' may not provide user functions (it can run anything on the workers)"
        >>> FunctionPolicy(allowed=["myjobs"]).why_refused("otherpkg.udfs:f")
        "module 'otherpkg.udfs' is not in the allowed modules ['myjobs'] (allowed_function_modules)"
    """

    def __init__(self, allowed=None):
        if allowed is not None and (isinstance(allowed, str) or not all(isinstance(a, str) and a for a in allowed)):
            raise ValueError(f"allowed_function_modules must be a list of module names, got {allowed!r}")
        self.allowed = None if allowed is None else sorted(set(allowed))

    def why_refused(self, ref):
        """None if ``ref`` may run, else why not (a reference not of the form raises)."""
        if is_local(ref):
            return None  # judged by check_shippable
        module, _ = parse_reference(ref)
        top = module.split(".")[0]
        if top in ALWAYS_DENIED or module in ALWAYS_DENIED:
            return f"module {module!r} may not provide user functions (it can run anything on the workers)"
        if _within(module, ("pyarrow.compute",) + SABOT_MODULES):
            return None
        if self.allowed is not None:
            if _within(module, self.allowed):
                return None
            return f"module {module!r} is not in the allowed modules {self.allowed} (allowed_function_modules)"
        if top in sys.stdlib_module_names:
            return (f"module {module!r} is in Python's standard library; user functions come from the job's own "
                    "packages (or list it in allowed_function_modules)")
        if top in ("pyarrow", "sabot"):
            return (f"module {module!r} may not provide user functions (of {top}, only "
                    f"{'pyarrow.compute' if top == 'pyarrow' else ', '.join(SABOT_MODULES)})")
        return None

    def check(self, ref, where=""):
        why = self.why_refused(ref)
        if why is not None:
            raise FunctionReferenceError(f"{where}function {ref!r} refused: {why}")


def module_exists(ref):
    """Whether the top-level package of ``ref`` can be found, without importing (running) anything."""
    module, _ = parse_reference(ref)
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


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
    top = module_name.split(".")[0]
    if top in ALWAYS_DENIED or module_name in ALWAYS_DENIED:
        raise FunctionReferenceError(f"function {ref!r} refused: module {module_name!r} may not provide user "
                                     "functions (it can run anything)")
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


def references_of(op):
    """Every user-function reference an operator (a ``StreamOperatorNode``) names: its
    ``function``, parameters ending in ``function``, and those of a chain's members
    (``parameters["steps"]``, see sabot.execution.chaining); None where there is none."""
    def of(function, parameters):
        parameters = parameters if isinstance(parameters, dict) else {}
        refs = [function] + [v for k, v in sorted(parameters.items()) if k.endswith("function") and isinstance(v, str)]
        steps = parameters.get("steps")
        for step in steps if isinstance(steps, list) else []:
            if isinstance(step, dict):
                refs += of(step.get("function"), step.get("parameters"))
        return refs
    return of(op.function, op.parameters)


def check_shippable(job_graph):
    """Raise FunctionReferenceError if any operator uses a process-local function."""
    for op in job_graph.operators.values():
        for ref in references_of(op):
            if is_local(ref):
                fn = _local.get(ref)
                raise FunctionReferenceError(
                    f"operator {op.name!r} uses {fn!r}, a lambda or closure: it can run in this "
                    "process (Stream.run()) but cannot be shipped to worker processes. "
                    "Define it as a module-level function in an importable module."
                )

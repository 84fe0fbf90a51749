"""Sabot: Flink-style stream processing for Python over Apache Arrow.

Build a job with :class:`Stream` (or a :class:`~sabot.execution.JobGraph` by hand),
run it in this process with ``.run()``, or on a cluster of worker processes with
:class:`~sabot.cluster.local.LocalCluster` and the ``sabot`` command.
"""

from sabot._version import __version__
from sabot.api.stream import Stream, StreamSink
from sabot.errors import JobFailed, OperatorError, SabotError
from sabot.execution.operator_spec import agg
from sabot.runtime.operators.process import KeyedProcessFunction
from sabot.runtime.embedded import JobResult


def __getattr__(name):
    """``sabot.sql``, imported when first used (it brings in the SQL parser): call it with a
    script, ``sabot.sql("INSERT INTO ...")``, or use its members (``sabot.sql.Session``)."""
    if name == "sql":
        import importlib

        return importlib.import_module("sabot.sql")
    raise AttributeError(f"module 'sabot' has no attribute {name!r}")


__all__ = ["JobFailed", "JobResult", "KeyedProcessFunction", "OperatorError", "SabotError", "Stream", "StreamSink",
           "__version__", "agg"]

"""Streaming SQL: Flink SQL's dialect compiled to the JobGraph the Stream API builds.

    >>> import sabot
    >>> sabot.sql(script)                      # runs the script's INSERT here  # doctest: +SKIP
    >>> job = sabot.sql(script, run=False)     # a SqlJob: .explain(), .to_job_graph(), .run()  # doctest: +SKIP

Modules: ``parser`` (the Flink dialect on sqlglot), ``catalog`` (CREATE TABLE / VIEW /
FUNCTION, SET), ``connectors`` (tables' connectors and their registry), ``planner``
(parsed query -> Stream API calls), ``expressions`` (SQL -> pyarrow compute
expressions), ``functions`` (scalar functions and Python UDFs), ``session`` (statements,
jobs, EXPLAIN).
"""

import sys
import types

from sabot.sql.connectors import register_connector
from sabot.sql.errors import SqlError
from sabot.sql.functions import udf
from sabot.sql.session import Session, SqlJob, explain, sql

__all__ = ["Session", "SqlError", "SqlJob", "explain", "register_connector", "sql", "udf"]


class _CallableModule(types.ModuleType):
    """``sabot.sql`` is this package and, called, :func:`sql` (``sabot.sql(script)``)."""

    def __call__(self, script, **kwargs):
        return sql(script, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

"""Operator implementations, looked up by operator type and parameter ``kind``."""

from sabot.runtime.operators.base import (
    Operator,
    SideOutput,
    SourceOperator,
    TaskContext,
    create_operator,
    register,
    rescalable_source_kinds,
    source_class,
    source_is_rescalable,
)
from sabot.runtime.operators import transforms  # noqa: F401  (registers)
from sabot.runtime.operators import chain  # noqa: F401
from sabot.runtime.operators import aggregate  # noqa: F401
from sabot.runtime.operators import aggregate_arrow  # noqa: F401
from sabot.runtime.operators import sources  # noqa: F401
from sabot.runtime.operators import sinks  # noqa: F401
from sabot.runtime.operators import partitioned_sink  # noqa: F401
from sabot.runtime.operators import window  # noqa: F401
from sabot.runtime.operators import join  # noqa: F401
from sabot.runtime.operators import joins  # noqa: F401
from sabot.runtime.operators import topn  # noqa: F401
from sabot.runtime.operators import session  # noqa: F401
from sabot.runtime.operators import process  # noqa: F401
from sabot.runtime.operators import changelog  # noqa: F401
from sabot.connectors import postgres  # noqa: F401  (source and sink kind "postgres")
from sabot.connectors import kafka  # noqa: F401  (source and sink kind "kafka")

__all__ = ["Operator", "SideOutput", "SourceOperator", "TaskContext", "create_operator", "register", "rescalable_source_kinds",
           "source_class", "source_is_rescalable"]

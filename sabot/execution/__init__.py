"""Logical plan, physical plan and resources (the seed's API).

``JobGraph`` → ``ExecutionGraph`` (tasks, edges, rescale plans) → slots from ``SlotPool``.
"""

from sabot import _core

_core.check()  # no silent pure-Python fallback: a missing build fails here, saying how to build

from sabot.execution.execution_graph import (  # noqa: E402
    ALLOWED_TRANSITIONS,
    ExecutionEdge,
    ExecutionGraph,
    Partitioning,
    TaskState,
    TaskVertex,
)
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode  # noqa: E402
from sabot.execution.rebalance import (  # noqa: E402
    RebalancePlan,
    imbalance,
    lower_bound_imbalance,
    plan_assignment,
    task_loads,
)
from sabot.execution.slot_pool import Slot, SlotPool, SlotRequest, SlotState  # noqa: E402

__all__ = [
    "ALLOWED_TRANSITIONS",
    "ExecutionEdge",
    "ExecutionGraph",
    "JobGraph",
    "OperatorType",
    "Partitioning",
    "RebalancePlan",
    "Slot",
    "SlotPool",
    "SlotRequest",
    "SlotState",
    "StreamOperatorNode",
    "TaskState",
    "TaskVertex",
    "imbalance",
    "lower_bound_imbalance",
    "plan_assignment",
    "task_loads",
]

"""Logical plan, physical plan and resources (the seed's API).

``JobGraph`` → ``ExecutionGraph`` (tasks, edges, rescale plans) → slots from ``SlotPool``.
"""

from sabot.execution.execution_graph import (
    ALLOWED_TRANSITIONS,
    ExecutionEdge,
    ExecutionGraph,
    Partitioning,
    TaskState,
    TaskVertex,
)
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode
from sabot.execution.rebalance import RebalancePlan, imbalance, lower_bound_imbalance, plan_assignment, task_loads
from sabot.execution.slot_pool import Slot, SlotPool, SlotRequest, SlotState

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

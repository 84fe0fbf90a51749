"""Task deployment descriptors (TDDs): what a worker needs to run one task attempt.

A :class:`TaskDeploymentDescriptor` names the attempt, the operator (its JobGraph
node as a dict), the task's place among its peers, the channels it reads (one
:class:`InputGateSpec` per upstream operator) and, per output edge, the
partitioning and the data-server address of every target subtask
(:class:`OutputEdgeSpec`). Both the embedded executor and the coordinator build
them here (:func:`build_deployment_descriptors`), so a job runs the same way in one
process or across many. They are :class:`~sabot.execution.records.Record` s: a
malformed descriptor is refused by the worker at deploy time, naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sabot.execution.ids import AttemptId
from sabot.execution.records import Record

__all__ = [
    "ChannelTarget", "CheckpointSpec", "InputGateSpec", "OutputEdgeSpec", "RescaleSpec", "RestoreSpec",
    "TaskDeploymentDescriptor", "build_deployment_descriptors", "channel_id", "partitioning_name",
]

#: how long a task waits for a live-rescale step (state, handoff target, epoch) before failing
DEFAULT_HANDOFF_TIMEOUT_S = 30.0
DEFAULT_COALESCE_ROWS = 16_384  # see output_coalesce_rows


def partitioning_name(partitioning) -> str:
    name = getattr(partitioning, "value", partitioning)
    return str(name).lower()


def channel_id(job_id: str, upstream: AttemptId, downstream: AttemptId) -> str:
    """One channel per (sender attempt, receiver attempt): a restart gets fresh channels."""
    return f"{job_id}/{upstream}->{downstream}"


@dataclass(frozen=True, slots=True)
class ChannelTarget(Record):
    """The receiving end of one channel: its id and the data server holding it
    (``host`` None: this process)."""

    channel_id: str
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class InputGateSpec(Record):
    """The channels a task reads from one upstream operator, in upstream subtask order."""

    upstream_operator_id: str
    partitioning: str
    channel_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutputEdgeSpec(Record):
    """One output edge of a task: how records are spread and where each target is.

    ``assignment`` is an explicit key-group -> target table for HASH edges whose
    downstream operator was rebalanced (None: Flink's contiguous ranges).
    """

    downstream_operator_id: str
    partitioning: str
    max_parallelism: int
    targets: list[ChannelTarget] = field(default_factory=list)
    key_by: list[str] | None = None
    assignment: list[int] | None = None
    tag: str | None = None  # the side output this edge carries (None: the main output)


@dataclass(frozen=True, slots=True)
class CheckpointSpec(Record):
    """Where tasks write their snapshots when a barrier passes (a pyarrow.fs URI)."""

    storage: str
    retain: int = 3


@dataclass(frozen=True, slots=True)
class RestoreSpec(Record):
    """The checkpoint a task starts from: ``checkpoint`` is ``CompletedCheckpoint.to_dict()``;
    each task reads its own key groups and subtask state from it."""

    storage: str
    checkpoint: dict
    assignment: list[int] | None = None


@dataclass(frozen=True, slots=True)
class RescaleSpec(Record):
    """A new task of a live rescale: the state channels it reads before any record, or
    (a source) that it is deployed held until it gets its epoch."""

    rescale_id: str
    state_channel_ids: list[str] = field(default_factory=list)
    source_hold: bool = False


@dataclass(frozen=True, slots=True)
class TaskDeploymentDescriptor(Record):
    """Everything a worker needs to run one task attempt."""

    job_id: str
    attempt_id: AttemptId
    operator: dict
    subtask_index: int
    parallelism: int
    max_parallelism: int
    inputs: list[InputGateSpec] = field(default_factory=list)
    outputs: list[OutputEdgeSpec] = field(default_factory=list)
    restore: RestoreSpec | None = None
    checkpoint: CheckpointSpec | None = None
    assignment: list[int] | None = None
    rescale: RescaleSpec | None = None
    min_checkpoint_id: int = 0
    handoff_timeout_s: float = DEFAULT_HANDOFF_TIMEOUT_S
    coalesce_rows: int = DEFAULT_COALESCE_ROWS  # small output parts wait for this many rows (0: never)

    @property
    def task_id(self) -> str:
        return self.attempt_id.task_id

    @property
    def attempt(self) -> int:
        return self.attempt_id.attempt

    @property
    def operator_id(self) -> str:
        return self.operator["operator_id"]

    @property
    def operator_type(self) -> str:
        return self.operator["operator_type"]

    @property
    def is_source(self) -> bool:
        return self.operator_type == "source"

    @property
    def is_sink(self) -> bool:
        return self.operator_type == "sink"

    def with_(self, **changes) -> TaskDeploymentDescriptor:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


def _pairs(partitioning, upstream_tasks, downstream_tasks):
    """(upstream subtask, downstream subtask) pairs that a channel connects."""
    if partitioning == "forward":
        if len(upstream_tasks) != len(downstream_tasks):
            raise ValueError(
                f"a FORWARD edge needs equal parallelism, got {len(upstream_tasks)} -> "
                f"{len(downstream_tasks)}"
            )
        return [(i, i) for i in range(len(upstream_tasks))]
    return [(u, d) for u in range(len(upstream_tasks)) for d in range(len(downstream_tasks))]


def build_deployment_descriptors(exec_graph, job_id, locations=None, restore=None, checkpoint=None,
                                 assignments=None) -> dict[str, TaskDeploymentDescriptor]:
    """Return ``{task_id: TaskDeploymentDescriptor}`` for every live task of ``exec_graph``.

    Args:
        exec_graph: the job's ExecutionGraph.
        job_id: the job's id (channel ids are scoped by it).
        locations: ``{task_id: (host, port) | None}``, the data-server address of
            the worker hosting each task; None or missing means this process.
        restore: optional :class:`RestoreSpec` handed to every task.
        checkpoint: optional :class:`CheckpointSpec`: where tasks write their snapshots.
        assignments: optional ``{operator_id: key-group table}`` for keyed operators
            whose key groups were rebalanced away from the default ranges.
    """
    locations = locations or {}
    coalesce_rows = output_coalesce_rows(exec_graph.job_graph.config)
    assignments = {op: [int(x) for x in table] for op, table in (assignments or {}).items() if table is not None}
    operators = exec_graph.job_graph.operators
    inputs = {task_id: [] for task_id in exec_graph.tasks}
    outputs = {task_id: [] for task_id in exec_graph.tasks}
    for edge in exec_graph.edges:
        partitioning = partitioning_name(edge.partitioning)
        ups = exec_graph.operator_tasks(edge.upstream_operator_id)
        downs = exec_graph.operator_tasks(edge.downstream_operator_id)
        targets = {u: [] for u in range(len(ups))}
        sources = {d: [] for d in range(len(downs))}
        for u, d in _pairs(partitioning, ups, downs):
            cid = channel_id(job_id, ups[u].attempt_id, downs[d].attempt_id)
            host, port = locations.get(downs[d].task_id) or (None, None)
            targets[u].append(ChannelTarget(cid, host, port))
            sources[d].append(cid)
        key_by = list(edge.key_by) if edge.key_by else None
        max_parallelism = operators[edge.downstream_operator_id].max_parallelism
        # a downstream operator that reads a side output of its upstream says which one
        tag = (operators[edge.downstream_operator_id].parameters or {}).get("side_output")
        table = assignments.get(edge.downstream_operator_id) if partitioning == "hash" else None
        for u, task in enumerate(ups):
            outputs[task.task_id].append(OutputEdgeSpec(
                edge.downstream_operator_id, partitioning, max_parallelism, targets[u], key_by, table, tag))
        for d, task in enumerate(downs):
            inputs[task.task_id].append(InputGateSpec(edge.upstream_operator_id, partitioning, sources[d]))
    tdds = {}
    for op_id, node in operators.items():
        node_dict = node.to_dict()
        for task in exec_graph.operator_tasks(op_id):
            tdds[task.task_id] = TaskDeploymentDescriptor(
                job_id=job_id,
                attempt_id=task.attempt_id,
                operator=node_dict,
                subtask_index=task.subtask_index,
                parallelism=task.parallelism,
                max_parallelism=task.max_parallelism,
                inputs=inputs[task.task_id],
                outputs=outputs[task.task_id],
                restore=restore,
                checkpoint=checkpoint,
                assignment=assignments.get(op_id),
                coalesce_rows=coalesce_rows,
            )
    return tdds


def output_coalesce_rows(config) -> int:
    """The job's ``config["output_coalesce_rows"]``: small output parts of a task wait in
    their channel's buffer until it holds this many rows (see :mod:`sabot.runtime.output`);
    0 sends every part at once (lowest latency, more batches). Default
    :data:`DEFAULT_COALESCE_ROWS`."""
    value = (config or {}).get("output_coalesce_rows", DEFAULT_COALESCE_ROWS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"output_coalesce_rows must be an int >= 0 (rows; 0 sends every batch at once), "
                         f"got {value!r}")
    return value

"""The logical plan: a DAG of stream operators, before parallel expansion.

A :class:`JobGraph` holds :class:`StreamOperatorNode` objects keyed by operator id
and the edges between them. It is plain data: :meth:`JobGraph.to_dict` /
:meth:`JobGraph.from_dict` (and the JSON variants) round-trip every field.
Ordering and cycle detection run in the compiled kernel ``sabot._core.graph``;
this module only maps operator ids to ints and back.

Example::

    >>> from sabot.execution import JobGraph, StreamOperatorNode, OperatorType
    >>> job = JobGraph(job_name="fraud_detection", default_parallelism=4)
    >>> src = StreamOperatorNode(operator_type=OperatorType.SOURCE, name="kafka_source", parallelism=2)
    >>> flt = StreamOperatorNode(operator_type=OperatorType.FILTER, name="fraud_filter", parallelism=8)
    >>> _ = job.add_operator(src), job.add_operator(flt)
    >>> job.connect(src.operator_id, flt.operator_id)
    >>> job.validate()
    >>> len(job.to_execution_graph().tasks)
    10
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from sabot._core import graph as _graph
from sabot.errors import CycleError, GraphValidationError
from sabot.execution.execution_graph import ExecutionGraph, Partitioning
from sabot.execution.ids import ID_RULE, is_valid_id
# Flink's default and bound for max_parallelism (number of key groups): the kernels' own
from sabot.execution.operator_spec import DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM

log = logging.getLogger(__name__)



class OperatorType(str, Enum):
    """Kind of a logical operator; the value is the lowercase name used in JSON."""

    SOURCE = "source"
    MAP = "map"
    FILTER = "filter"
    SELECT = "select"
    FLAT_MAP = "flat_map"
    UNION = "union"
    KEY_BY = "key_by"
    AGGREGATE = "aggregate"
    WINDOW = "window"
    JOIN = "join"
    TOP_N = "top_n"
    PROCESS = "process"
    SINK = "sink"
    CHAIN = "chain"  # stateless operators fused into one (sabot.execution.chaining)

    def __str__(self):
        return self.value


def _coerce_operator_type(value) -> OperatorType:
    if isinstance(value, OperatorType):
        return value
    try:
        return OperatorType(str(value).lower())
    except ValueError:
        raise ValueError(
            f"unknown operator_type {value!r}; expected one of {[t.value for t in OperatorType]}"
        ) from None


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.")[:64] or "op"


def check_id(kind: str, value) -> None:
    """Raise GraphValidationError unless ``value`` is a usable job or operator id."""
    if not is_valid_id(value):
        raise GraphValidationError(f"{kind} {value!r} is not a valid id: {ID_RULE}")


@dataclass(eq=False)
class StreamOperatorNode:
    """One logical operator of a streaming job.

    Args:
        operator_type: what the operator does (:class:`OperatorType` or its value).
        name: human-readable name, unique within a job (used in error messages).
        parallelism: number of parallel tasks; None means the job's
            ``default_parallelism`` (and stays None in ``to_dict``, so the
            difference between "explicit" and "default" survives serialisation).
        max_parallelism: upper bound for rescaling; also the number of key groups.
        operator_id: unique id; generated as ``"<name>_<8 hex>"`` when not given.
        stateful: the operator keeps state (state must move on rescale).
        key_by: key columns of the operator's input (keyed input gets HASH edges);
            an AGGREGATE or WINDOW with ``key_by`` is stateful.
        input_key_by: key columns per upstream operator id, for an operator whose
            inputs are keyed by different columns (a stream-stream join: each input
            edge is HASH-partitioned by its own key columns, so equal keys meet in
            one subtask). ``key_by`` then names the first input's columns.
        cpu_cores, memory_mb: resources one task of the operator asks for.
        function: user logic as an import reference ``"package.module:function"``.
        parameters: JSON-able configuration of built-in operators.
        upstream_ids, downstream_ids: adjacent operator ids (maintained by
            :meth:`JobGraph.connect`).
        sharing_group: slot sharing group (None = the job's default group).
    """

    operator_type: OperatorType
    name: str = ""
    parallelism: int | None = None
    max_parallelism: int = DEFAULT_MAX_PARALLELISM
    operator_id: str = ""
    stateful: bool = False
    key_by: list[str] | None = None
    input_key_by: dict[str, list[str]] | None = None
    cpu_cores: float = 0.5
    memory_mb: int = 256
    function: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    upstream_ids: list[str] = field(default_factory=list)
    downstream_ids: list[str] = field(default_factory=list)
    sharing_group: str | None = None

    def __post_init__(self):
        self.operator_type = _coerce_operator_type(self.operator_type)
        if not isinstance(self.name, str):
            raise TypeError(f"operator name must be a str, got {self.name!r}")
        if not self.name:
            self.name = self.operator_type.value
        if not self.operator_id:
            self.operator_id = f"{_slug(self.name)}_{uuid.uuid4().hex[:8]}"
        elif not isinstance(self.operator_id, str):
            raise TypeError(f"operator_id must be a str, got {self.operator_id!r}")
        for attr in ("parallelism", "max_parallelism"):
            value = getattr(self, attr)
            if value is None and attr == "parallelism":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"operator {self.name!r}: {attr} must be an int, got {value!r}")
            setattr(self, attr, int(value))
        if isinstance(self.key_by, str):
            self.key_by = [self.key_by]
        elif self.key_by is not None:
            self.key_by = list(self.key_by)
            if not self.key_by:
                self.key_by = None
            elif not all(isinstance(k, str) for k in self.key_by):
                raise TypeError(f"operator {self.name!r}: key_by must be column names, got {self.key_by!r}")
        if self.input_key_by is not None:
            if not isinstance(self.input_key_by, dict) or not all(
                    isinstance(u, str) and isinstance(ks, (list, tuple)) and ks and all(isinstance(k, str) for k in ks)
                    for u, ks in self.input_key_by.items()):
                raise TypeError(f"operator {self.name!r}: input_key_by must map upstream operator ids to "
                                f"non-empty lists of column names, got {self.input_key_by!r}")
            self.input_key_by = {u: list(ks) for u, ks in self.input_key_by.items()} or None
        if self.key_by and self.operator_type in (OperatorType.AGGREGATE, OperatorType.WINDOW):
            self.stateful = True
        self.stateful = bool(self.stateful)
        if self.parameters is None:
            self.parameters = {}
        if not isinstance(self.parameters, dict):
            raise TypeError(f"operator {self.name!r}: parameters must be a dict, got {type(self.parameters).__name__}")
        if self.function is not None and not isinstance(self.function, str):
            raise TypeError(
                f"operator {self.name!r}: function must be an import reference 'package.module:function', "
                f"got {self.function!r}"
            )
        self.upstream_ids = list(self.upstream_ids)
        self.downstream_ids = list(self.downstream_ids)

    @property
    def keyed(self) -> bool:
        """True when the operator's input is partitioned by key."""
        return bool(self.key_by)

    def keys_for(self, upstream_id: str) -> list[str] | None:
        """The key columns the input from ``upstream_id`` is partitioned by (None: unkeyed)."""
        if self.input_key_by and upstream_id in self.input_key_by:
            return self.input_key_by[upstream_id]
        return self.key_by

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-able data (``operator_type`` as its string value)."""
        return {
            "operator_id": self.operator_id,
            "operator_type": self.operator_type.value,
            "name": self.name,
            "parallelism": self.parallelism,
            "max_parallelism": self.max_parallelism,
            "stateful": self.stateful,
            "key_by": list(self.key_by) if self.key_by else None,
            "input_key_by": {u: list(k) for u, k in self.input_key_by.items()} if self.input_key_by else None,
            "cpu_cores": self.cpu_cores,
            "memory_mb": self.memory_mb,
            "function": self.function,
            "parameters": copy.deepcopy(self.parameters),
            "upstream_ids": list(self.upstream_ids),
            "downstream_ids": list(self.downstream_ids),
            "sharing_group": self.sharing_group,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StreamOperatorNode":
        """Inverse of :meth:`to_dict`; unknown keys are an error (nothing is dropped silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown operator field(s) {unknown}; expected a subset of {sorted(known)}")
        if "operator_type" not in data:
            raise ValueError(f"operator dict has no 'operator_type': {sorted(data)}")
        kwargs = dict(data)
        kwargs["parameters"] = copy.deepcopy(kwargs.get("parameters") or {})
        return cls(**kwargs)

    def copy(self) -> "StreamOperatorNode":
        """A deep copy (lists and parameters are not shared)."""
        return StreamOperatorNode.from_dict(self.to_dict())


_JOB_FIELDS = ("job_id", "job_name", "default_parallelism", "checkpoint_interval_ms", "config",
               "operators", "edges")


class JobGraph:
    """A streaming job's logical DAG.

    Args:
        job_name: name of the job.
        default_parallelism: parallelism of operators that do not set one.
        job_id: id of the job (a fresh uuid4 hex string when not given).
        checkpoint_interval_ms: checkpoint interval, None = no periodic checkpoints.
        config: further job configuration (JSON-able); extra keyword arguments are
            merged into it.

    The graph owns its operators: :meth:`add_operator` stores a copy of the node,
    available as ``job.operators[operator_id]``, so one node object can be added to
    several graphs without the graphs sharing edges.
    """

    def __init__(self, job_name: str = "sabot-job", default_parallelism: int = 4, *,
                 job_id: str | None = None, checkpoint_interval_ms: int | None = None,
                 config: dict[str, Any] | None = None, **extra_config):
        if not isinstance(job_name, str) or not job_name:
            raise ValueError(f"job_name must be a non-empty str, got {job_name!r}")
        if isinstance(default_parallelism, bool) or not isinstance(default_parallelism, (int, np.integer)) \
                or default_parallelism < 1:
            raise ValueError(f"default_parallelism must be an int >= 1, got {default_parallelism!r}")
        if checkpoint_interval_ms is not None and (
                isinstance(checkpoint_interval_ms, bool) or not isinstance(checkpoint_interval_ms, (int, np.integer))
                or checkpoint_interval_ms <= 0):
            raise ValueError(f"checkpoint_interval_ms must be a positive int or None, got {checkpoint_interval_ms!r}")
        self.job_id = job_id or uuid.uuid4().hex
        #: table id -> the in-memory tables its operators refer to (sabot.runtime.tables);
        #: not part of to_dict(): they travel beside the graph, once
        self.tables = {}
        self.job_name = job_name
        self.default_parallelism = int(default_parallelism)
        self.checkpoint_interval_ms = None if checkpoint_interval_ms is None else int(checkpoint_interval_ms)
        self.config: dict[str, Any] = dict(config or {})
        self.config.update(extra_config)
        self.operators: dict[str, StreamOperatorNode] = {}
        # explicit partitioning of an edge, by (upstream_id, downstream_id)
        self._partitioning: dict[tuple[str, str], Partitioning] = {}

    # -- building ----------------------------------------------------------------

    def add_operator(self, op: StreamOperatorNode) -> str:
        """Add (a copy of) ``op``; returns its operator id.

        Raises:
            GraphValidationError: an operator with the same id is already in the graph.
        """
        if not isinstance(op, StreamOperatorNode):
            raise TypeError(f"add_operator expects a StreamOperatorNode, got {type(op).__name__}")
        if op.operator_id in self.operators:
            raise GraphValidationError(
                f"operator id {op.operator_id!r} ({op.name!r}) is already in job {self.job_name!r}"
            )
        self.operators[op.operator_id] = op.copy()
        return op.operator_id

    def _require(self, operator_id: str, role: str) -> StreamOperatorNode:
        try:
            return self.operators[operator_id]
        except (KeyError, TypeError):
            known = ", ".join(f"{i} ({o.name})" for i, o in self.operators.items()) or "none"
            raise GraphValidationError(
                f"unknown {role} operator id {operator_id!r} in job {self.job_name!r}; known operators: {known}"
            ) from None

    def connect(self, upstream_id: str, downstream_id: str, partitioning: str | Partitioning | None = None) -> None:
        """Add the edge ``upstream_id -> downstream_id``.

        Args:
            partitioning: force a partitioning ("forward", "hash", "rebalance",
                "broadcast"); None lets the execution graph choose from parallelism
                and ``key_by``.

        Raises:
            GraphValidationError: unknown operator id, or the edge already exists.
            ValueError: unknown partitioning name.
        """
        up = self._require(upstream_id, "upstream")
        down = self._require(downstream_id, "downstream")
        if downstream_id in up.downstream_ids or upstream_id in down.upstream_ids:
            raise GraphValidationError(f"duplicate edge {up.name!r} -> {down.name!r}: already connected")
        if partitioning is not None:
            self._partitioning[(upstream_id, downstream_id)] = Partitioning.parse(partitioning)
        up.downstream_ids.append(downstream_id)
        down.upstream_ids.append(upstream_id)

    def explicit_partitioning(self, upstream_id: str, downstream_id: str) -> Partitioning | None:
        """The partitioning given to ``connect`` for this edge, or None."""
        return self._partitioning.get((upstream_id, downstream_id))

    @property
    def edges(self) -> list[tuple[str, str]]:
        """All edges ``(upstream_id, downstream_id)``, grouped by upstream in operator order."""
        return [(op_id, d) for op_id, op in self.operators.items() for d in op.downstream_ids]

    def parallelism_of(self, operator_id: str) -> int:
        """Effective parallelism: the operator's own, else the job's default."""
        op = self._require(operator_id, "")
        return self.default_parallelism if op.parallelism is None else op.parallelism

    def get_sources(self) -> list[StreamOperatorNode]:
        """Operators of type SOURCE, in insertion order."""
        return [o for o in self.operators.values() if o.operator_type == OperatorType.SOURCE]

    def get_sinks(self) -> list[StreamOperatorNode]:
        """Operators of type SINK, in insertion order."""
        return [o for o in self.operators.values() if o.operator_type == OperatorType.SINK]

    # -- validation and ordering -------------------------------------------------

    def _int_edges(self):
        """(ids, src, dst): operator ids in insertion order and int edge arrays."""
        ids = list(self.operators)
        index = {op_id: i for i, op_id in enumerate(ids)}
        src, dst = [], []
        for op_id, op in self.operators.items():
            for d in op.downstream_ids:
                src.append(index[op_id])
                dst.append(index[d])
        return ids, np.array(src, dtype=np.int32), np.array(dst, dtype=np.int32)

    def _check_references(self):
        """Every adjacency list names known operators, once, and both ends agree."""
        names = {i: o.name for i, o in self.operators.items()}
        for op in self.operators.values():
            for attr in ("upstream_ids", "downstream_ids"):
                ids = getattr(op, attr)
                unknown = [i for i in ids if i not in self.operators]
                if unknown:
                    raise GraphValidationError(
                        f"operator {op.name!r} lists unknown {attr[:-4]} operator id(s) {unknown}"
                    )
                dups = sorted({names[i] for i in ids if ids.count(i) > 1})
                if dups:
                    arrow = "{} -> {}" if attr == "downstream_ids" else "{1} -> {0}"
                    pairs = ", ".join(repr(arrow.format(op.name, d)) for d in dups)
                    raise GraphValidationError(f"duplicate edge(s) {pairs}: each edge may be connected once")
            for d in op.downstream_ids:
                if op.operator_id not in self.operators[d].upstream_ids:
                    raise GraphValidationError(
                        f"edge {op.name!r} -> {names[d]!r} is listed in downstream_ids of {op.name!r} "
                        f"but not in upstream_ids of {names[d]!r}"
                    )
            for u in op.upstream_ids:
                if op.operator_id not in self.operators[u].downstream_ids:
                    raise GraphValidationError(
                        f"edge {names[u]!r} -> {op.name!r} is listed in upstream_ids of {op.name!r} "
                        f"but not in downstream_ids of {names[u]!r}"
                    )
        stale = [(u, d) for (u, d) in self._partitioning if u not in self.operators or d not in self.operators
                 or d not in self.operators[u].downstream_ids]
        if stale:
            raise GraphValidationError(f"explicit partitioning given for edge(s) that do not exist: {stale}")

    def _cycle_error(self, ids, cycle) -> CycleError:
        names = [self.operators[ids[int(i)]].name for i in cycle]
        path = " -> ".join(names + [names[0]])
        return CycleError(f"job {self.job_name!r} has a cycle: {path}", cycle=names)

    def validate(self) -> None:
        """Check that the graph is a runnable streaming DAG.

        Raises:
            CycleError: the graph has a cycle (``.cycle`` lists the names in order).
            GraphValidationError: the graph is empty; two operators share a name; an
                edge names an unknown operator or appears twice; a parallelism is < 1
                or > max_parallelism; a SOURCE has inputs; a SINK has outputs; an
                operator is not reachable from any source; an explicit FORWARD edge
                joins different parallelisms or an explicit HASH edge has no key.
                The message names the offending operators.
        """
        if not self.operators:
            raise GraphValidationError(f"job {self.job_name!r} has no operators")
        check_id("job id", self.job_id)
        for op_id in self.operators:
            check_id(f"operator id (of {self.operators[op_id].name!r})", op_id)
        seen: dict[str, str] = {}
        dup_names = sorted({o.name for o in self.operators.values() if seen.setdefault(o.name, o.operator_id)
                            != o.operator_id})
        if dup_names:
            raise GraphValidationError(
                f"job {self.job_name!r}: operator name(s) {dup_names} are used by more than one operator; "
                "names must be unique"
            )
        self._check_references()
        bad = []
        for op in self.operators.values():
            if not 1 <= op.max_parallelism <= MAX_MAX_PARALLELISM:
                bad.append(f"{op.name!r}: max_parallelism {op.max_parallelism} not in [1, {MAX_MAX_PARALLELISM}]")
                continue
            p = self.parallelism_of(op.operator_id)
            if not 1 <= p <= op.max_parallelism:
                origin = "" if op.parallelism is not None else " (the job's default_parallelism)"
                bad.append(f"{op.name!r}: parallelism {p}{origin} not in [1, max_parallelism={op.max_parallelism}]")
        if bad:
            raise GraphValidationError("invalid parallelism: " + "; ".join(bad))
        sources_with_inputs = [o.name for o in self.get_sources() if o.upstream_ids]
        if sources_with_inputs:
            raise GraphValidationError(f"SOURCE operator(s) {sources_with_inputs} have inputs; a source has none")
        sinks_with_outputs = [o.name for o in self.get_sinks() if o.downstream_ids]
        if sinks_with_outputs:
            raise GraphValidationError(f"SINK operator(s) {sinks_with_outputs} have outputs; a sink has none")
        ids, src, dst = self._int_edges()
        dag = _graph.DAG(src, dst, len(ids))
        cycle = dag.find_cycle()
        if cycle is not None:
            raise self._cycle_error(ids, cycle)
        source_idx = [i for i, op_id in enumerate(ids) if self.operators[op_id].operator_type == OperatorType.SOURCE]
        reached = dag.reachable(np.array(source_idx, dtype=np.int64))
        unreached = [self.operators[ids[i]].name for i in np.flatnonzero(~reached)]
        if unreached:
            raise GraphValidationError(
                f"operator(s) {unreached} are not reachable from any SOURCE "
                f"(sources: {[o.name for o in self.get_sources()]})"
            )
        for (u, d), part in self._partitioning.items():
            up, down = self.operators[u], self.operators[d]
            if part == Partitioning.FORWARD and self.parallelism_of(u) != self.parallelism_of(d):
                raise GraphValidationError(
                    f"edge {up.name!r} -> {down.name!r} is FORWARD but parallelism differs "
                    f"({self.parallelism_of(u)} vs {self.parallelism_of(d)}); FORWARD needs equal parallelism"
                )
            if part == Partitioning.HASH and not down.keys_for(u):
                raise GraphValidationError(
                    f"edge {up.name!r} -> {down.name!r} is HASH but {down.name!r} has no key_by"
                )

    def topological_sort(self) -> list[StreamOperatorNode]:
        """Operators in topological order (Kahn; ties in insertion order).

        Raises:
            CycleError: the graph has a cycle.
            GraphValidationError: an edge names an unknown operator.
        """
        self._check_references()
        ids, src, dst = self._int_edges()
        order, cycle = _graph.DAG(src, dst, len(ids)).toposort()
        if cycle is not None:
            raise self._cycle_error(ids, cycle)
        return [self.operators[ids[i]] for i in order.tolist()]

    def to_execution_graph(self, **kwargs) -> ExecutionGraph:
        """Validate and expand into the physical plan (see :class:`ExecutionGraph`)."""
        self.validate()
        return ExecutionGraph(self, **kwargs)

    # -- serialisation -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field of the job and its operators as JSON-able data."""
        return {
            "job_id": self.job_id,
            "job_name": self.job_name,
            "default_parallelism": self.default_parallelism,
            "checkpoint_interval_ms": self.checkpoint_interval_ms,
            "config": copy.deepcopy(self.config),
            "operators": [op.to_dict() for op in self.operators.values()],
            "edges": [
                {
                    "upstream_id": u,
                    "downstream_id": d,
                    "partitioning": p.value if (p := self._partitioning.get((u, d))) else None,
                }
                for u, d in self.edges
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobGraph":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: unknown or missing keys.
            GraphValidationError: the edge list and the operators' adjacency lists disagree.
        """
        unknown = sorted(set(data) - set(_JOB_FIELDS))
        if unknown:
            raise ValueError(f"unknown job field(s) {unknown}; expected a subset of {list(_JOB_FIELDS)}")
        for key in ("job_name", "operators"):
            if key not in data:
                raise ValueError(f"job dict has no {key!r}; it has {sorted(data)}")
        job = cls(
            job_name=data["job_name"],
            default_parallelism=data.get("default_parallelism", 4),
            job_id=data.get("job_id"),
            checkpoint_interval_ms=data.get("checkpoint_interval_ms"),
            config=copy.deepcopy(data.get("config") or {}),
        )
        for op_data in data["operators"]:
            op = StreamOperatorNode.from_dict(op_data)
            if op.operator_id in job.operators:
                raise GraphValidationError(f"operator id {op.operator_id!r} appears twice in the job dict")
            job.operators[op.operator_id] = op
        edges = data.get("edges")
        if edges is not None:
            listed = [(e["upstream_id"], e["downstream_id"]) for e in edges]
            if sorted(listed) != sorted(job.edges):
                raise GraphValidationError(
                    "the job dict's edge list does not match the operators' upstream/downstream ids: "
                    f"only in edges {sorted(set(listed) - set(job.edges))}, "
                    f"only in operators {sorted(set(job.edges) - set(listed))}"
                )
            for e in edges:
                if e.get("partitioning"):
                    job._partitioning[(e["upstream_id"], e["downstream_id"])] = Partitioning.parse(e["partitioning"])
        return job

    def to_json(self, **kwargs) -> str:
        """:meth:`to_dict` as a JSON string (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobGraph":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __repr__(self):
        return (f"<JobGraph {self.job_name!r} id={self.job_id} operators={len(self.operators)} "
                f"edges={len(self.edges)}>")

"""The operator contract: what one subtask of a JobGraph operator does with batches.

A :class:`Task` owns one operator instance and calls it from one thread at a
time: ``open`` once, then ``process`` per input batch, ``on_watermark`` when the
task's event-time clock advances, ``finish`` when every input has ended, and
``close`` last. Every method returns the batches to emit downstream (a list,
possibly empty). Sources instead yield batches from ``read``.
"""

import traceback
from dataclasses import dataclass, field

import pyarrow as pa

from sabot.errors import OperatorError
from sabot.runtime import functions

_REGISTRY = {}


@dataclass
class TaskContext:
    """Where an operator instance runs: its job, task and place among its peers."""

    job_id: str
    task_id: str
    attempt: int
    operator: dict
    subtask_index: int
    parallelism: int
    max_parallelism: int
    metrics: dict = field(default_factory=dict)
    checkpointing: bool = False  # the job takes checkpoints (sinks then commit only on completion)
    #: the upstream operator id of each input index ``process`` is called with
    input_operator_ids: list = field(default_factory=list)
    #: processing time in milliseconds since the epoch (a ``sabot.runtime.timers`` clock)
    clock: object = None
    #: the process's :class:`~sabot.runtime.tables.TableStore` (in-memory tables the job refers to)
    tables: object = None

    def table(self, ref, what):
        """The table a reference parameter names, or an OperatorError saying what is wrong."""
        from sabot.runtime.tables import MissingTable, is_ref

        if not is_ref(ref):
            raise OperatorError(f"{what} of {self.operator_name!r} must be a table reference "
                                f'{{"table_id": "<32 hex>", ...}} (sabot.runtime.tables), got {ref!r:.80}')
        if self.tables is None:
            raise OperatorError(f"{what} of {self.operator_name!r}: this process has no table store")
        try:
            return self.tables.get(ref)
        except MissingTable as exc:
            raise OperatorError(f"{what} of {self.operator_name!r}: {exc}") from None

    @property
    def operator_name(self):
        return self.operator["name"]

    @property
    def parameters(self):
        return self.operator.get("parameters") or {}


class SideOutput:
    """A batch for the side output ``tag`` (e.g. ``"late"``) instead of the main output.

    An operator returns it among its batches; only edges to operators that consume
    that side output receive it (a tag nobody consumes is dropped).
    """

    __slots__ = ("tag", "batch")

    def __init__(self, tag, batch):
        self.tag = tag
        self.batch = batch

    @property
    def num_rows(self):
        return self.batch.num_rows


class Operator:
    """Base class of every operator. Subclasses override what they need.

    Processing-time timers: an operator that has some returns the earliest one (ms
    since the epoch, by ``ctx.clock``) from ``next_processing_time``; the task calls
    ``on_processing_time(now)`` once the clock reached it, even when no input arrives.
    """

    is_source = False

    def __init__(self, ctx: TaskContext):
        self.ctx = ctx
        self.params = ctx.parameters

    def open(self):
        pass

    def process(self, batch: pa.RecordBatch, input_index: int) -> list:
        return [batch]

    def on_watermark(self, timestamp: int) -> list:
        return []

    def finish(self) -> list:
        return []

    def next_processing_time(self):
        """The earliest processing-time timer (ms), or None."""
        return None

    def on_processing_time(self, now_ms: int) -> list:
        """Fire the processing-time timers due at ``now_ms``."""
        return []

    def input_side(self, input_index):
        """The upstream operator id of input ``input_index``."""
        ids = self.ctx.input_operator_ids
        if 0 <= input_index < len(ids):
            return ids[input_index]
        raise OperatorError(f"operator {self.ctx.operator_name!r} has no input {input_index}; inputs: {ids}")

    def close(self):
        pass

    def result(self):
        """What a collecting sink gathered (a pyarrow.Table), else None."""
        return None

    # -- checkpoints -------------------------------------------------------------
    #
    # At a checkpoint barrier (between two batches) the task asks the operator for
    # its state; on restart it hands the state back after open() and before any
    # batch. Keyed state travels as a table with an int32 ``_key_group`` column, so
    # a restore at another parallelism gets exactly its key groups; everything
    # else is a small JSON-able dict per subtask.

    def snapshot_state(self, checkpoint_id):
        """``{"keyed": pa.Table | None, "state": dict | None}`` or None when stateless."""
        return None

    def restore_state(self, keyed, state, checkpoint_id):
        """Install ``keyed`` (this subtask's key groups) and ``state`` (its own dict)."""
        if keyed is not None or state:
            raise OperatorError(
                f"operator {self.ctx.operator_name!r} ({self.ctx.operator['operator_type']}) "
                "keeps no state but a checkpoint holds state for it"
            )

    def notify_checkpoint_complete(self, checkpoint_id):
        """Every task acknowledged ``checkpoint_id``: two-phase-commit sinks publish here."""

    def notify_job_finished(self):
        """Every task of the job finished: sinks publish what end of input left pending."""

    def summary(self):
        """A JSON-able summary reported with the task's final state (sinks)."""
        return None

    # -- helpers for subclasses ------------------------------------------------

    def user_function(self, key="function"):
        """Resolve the user function named by the operator (or parameter ``key``)."""
        ref = self.ctx.operator.get("function") if key == "function" else self.params.get(key)
        if ref is None:
            raise OperatorError(
                f"operator {self.ctx.operator_name!r} ({self.ctx.operator['operator_type']}) "
                f"needs a function reference in {key!r}"
            )
        try:
            return ref, functions.resolve(ref)
        except functions.FunctionReferenceError as exc:
            raise OperatorError(f"operator {self.ctx.operator_name!r}: {exc}") from exc

    def call_user(self, ref, fn, *args):
        """Call user code; on failure raise OperatorError naming operator and function."""
        try:
            return fn(*args)
        except Exception as exc:
            raise OperatorError(
                f"user function {ref!r} of operator {self.ctx.operator_name!r} raised "
                f"{type(exc).__name__}: {exc}\n--- original traceback ---\n"
                + "".join(traceback.format_exception(exc))
            ) from exc


class SourceOperator(Operator):
    """A source reads its share of the input; ``read`` yields batches.

    A source that waits for input (Kafka) yields ``None`` when it has nothing for now, so
    the task can take checkpoints and rescale meanwhile instead of blocking inside ``read``.

    ``position`` is the offset to resume from (replayable sources), and
    ``total_rows`` is this subtask's number of rows when known (progress bars).
    """

    is_source = True

    def read(self):
        raise TypeError(f"source {type(self).__name__} does not define read()")

    #: the source computes its own watermark (per split, with idleness) and the task asks
    #: ``current_watermark()`` after every batch and idle poll; otherwise the task takes the
    #: largest ``time_column`` value seen minus ``max_out_of_orderness``
    tracks_watermarks = False

    def current_watermark(self):
        """The source's watermark now (in the time column's stored unit), or None."""
        return None

    @property
    def idle(self):
        """True while every split of this subtask is idle (or it has none): the task announces
        :class:`~sabot.runtime.events.WatermarkStatus` idle downstream, so operators after it
        leave this subtask out of their event time until it delivers again. Split sources
        (:class:`sabot.connectors.source.SplitSource`) answer; others never idle."""
        return False

    @property
    def position(self):
        return None

    def seek(self, position):
        raise OperatorError(f"source {self.ctx.operator_name!r} cannot resume from an offset")

    def snapshot_state(self, checkpoint_id):
        return {"keyed": None, "state": {"position": self.position}}

    def restore_state(self, keyed, state, checkpoint_id):
        if state and state.get("position") is not None:
            self.seek(state["position"])

    def restore_subtask_states(self, states, checkpoint_id):
        """Restore from ``{subtask_index: state}`` of every subtask of a checkpoint.

        By default subtask ``i`` takes state ``i``; sources that can change their
        parallelism (table, generator) redistribute what is left instead.
        """
        if states and self.ctx.subtask_index in states:
            self.restore_state(None, states[self.ctx.subtask_index], checkpoint_id)

    @property
    def total_rows(self):
        return None

    # -- live rescaling (ARCHITECTURE.md section 8) ----------------------------------
    #
    # A rescalable source is a split source (sabot.connectors.source.SplitSource): the old
    # subtasks pause between two units and answer their ``position`` (every split with its
    # position), then stop (``stop_for_rescale``); every new subtask gets the positions of
    # all old ones (``take_split_positions``) and reads the splits it owns from there.

    #: whether this source supports a live rescale (stop_for_rescale, take_split_positions)
    rescalable = False
    #: why not, for the error a refused rescale gets
    not_rescalable_reason = "it cannot move its input between subtasks"

    def not_rescalable(self):
        return OperatorError(
            f"source {self.ctx.operator_name!r} ({type(self).__name__}) cannot be rescaled live; "
            f"rescalable source kinds: {', '.join(rescalable_source_kinds())}"
        )

    @property
    def at_unit_boundary(self):
        """True between two units (the only place a source pauses or takes a checkpoint)."""
        return True

    def stop_for_rescale(self):
        """An old subtask of a live rescale: emit nothing more (its splits moved)."""
        raise self.not_rescalable()

    def take_split_positions(self, positions):
        """A new subtask of a live rescale: the positions every old subtask paused at."""
        raise self.not_rescalable()


def register(operator_type, kind=None):
    """Class decorator: the class implementing ``operator_type`` (and parameter kind)."""

    def deco(cls):
        _REGISTRY[(operator_type, kind)] = cls
        return cls

    return deco


def source_class(kind):
    """The source class registered for parameter ``kind`` (None if there is none)."""
    return _REGISTRY.get(("source", kind))


def rescalable_source_kinds():
    """Source kinds that can move their units between subtasks in a live rescale."""
    return sorted(k for (t, k), cls in _REGISTRY.items() if t == "source" and k and cls.rescalable)


def source_is_rescalable(kind):
    """``(True, None)``, or ``(False, why)`` for a source ``kind`` that cannot be rescaled live."""
    cls = source_class(kind)
    if cls is None:
        return False, f"there is no source of kind {kind!r}"
    if not cls.rescalable:
        return False, (f"{cls.not_rescalable_reason}; rescalable source kinds: "
                       f"{', '.join(rescalable_source_kinds())}")
    return True, None


def create_operator(ctx: TaskContext) -> Operator:
    op_type = ctx.operator["operator_type"]
    kind = ctx.parameters.get("kind")
    cls = _REGISTRY.get((op_type, kind)) or _REGISTRY.get((op_type, None))
    if cls is None:
        kinds = sorted(k or "(default)" for t, k in _REGISTRY if t == op_type)
        raise OperatorError(
            f"operator {ctx.operator_name!r}: no implementation of type {op_type!r}"
            + (f" with kind {kind!r}; known kinds: {', '.join(kinds)}" if kinds else "")
        )
    return cls(ctx)

"""Source operators: an inline Arrow table, a deterministic generator, files.

Every source splits its input across the ``parallelism`` subtasks without
coordination (subtask ``i`` takes units ``i, i + P, i + 2P, …``), reports a
``position`` that says how far it got, and can be put back to a position with
``seek`` (or the ``start_position`` parameter) so that a restored job replays
exactly the rows after it. A position is JSON-able.

The table and generator sources can also be rescaled live: their units follow an
*epoch* (``{start, stride, offset}``, see :class:`_CountingSource`) that a rescale
replaces for the new subtasks, and their checkpointed state is ``{"position",
"epoch"}``, so a restore after the rescale (at any parallelism) continues exactly.

Parameter formats (``parameters["kind"]``):

* ``"table"``: ``{"data": table reference (:mod:`sabot.runtime.tables`), "batch_size":
  int | None}``; unit = one slice of ``batch_size`` rows, or with ``batch_size`` None
  one record batch of the table as it was given; position = units emitted.
* ``"generator"``: ``{"function": "module:fn", "total_rows": int | None,
  "batch_size": int, "parameters": {...}}``; unit = global batch ``b`` covering rows
  ``[b * batch_size, (b + 1) * batch_size)``; position = batches emitted.
* ``"dataset"``: ``{"path": str, "format": "parquet" | "ipc" | "csv", "columns":
  list | None, "filter": base64 expression | None, "batch_size": int | None}``; unit =
  one file (fragment, sorted by path); position = ``[fragment index, batches read from
  it]`` (batches after the filter: deterministic for one filter).
"""

import logging
import os

import pyarrow as pa
import pyarrow.dataset as ds

from sabot.errors import OperatorError
from sabot.runtime import functions
from sabot.execution.operator_spec import decode_expression
from sabot.runtime.operators.base import SourceOperator, register

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 65536
DATASET_FORMATS = ("parquet", "ipc", "csv")


def _positive_int(ctx, params, name, default):
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OperatorError(
            f"source {ctx.operator_name!r}: parameter {name!r} must be a positive integer, got {value!r}"
        )
    return value


class _CountingSource(SourceOperator):
    """A source whose position is the number of units this subtask has emitted.

    The units of a subtask follow its *epoch*: first the explicit ``pending`` units
    (left over by a restore at another parallelism), then ``start + offset + n *
    stride`` for ``n = 0, 1, …``. The default epoch ``{start: 0, stride: P, offset:
    i}`` gives subtask ``i`` units ``i, i + P, …``. A live rescale gives the new
    subtasks epochs that begin at a frontier every old subtask stops before.
    """

    rescalable = True
    #: keys of an epoch dict
    EPOCH_KEYS = ("start", "stride", "offset", "pending")

    def __init__(self, ctx):
        super().__init__(ctx)
        self._emitted = 0
        self._partial = False  # some (not all) batches of the next unit were emitted
        self._limit = None  # units >= limit belong to other subtasks (a source rescale)
        self._epoch = self.default_epoch()
        start = self.params.get("start_position")
        if isinstance(start, dict):
            self.restore_state(None, start, None)
        elif start is not None:
            self.seek(start)

    # -- epochs ------------------------------------------------------------------

    def default_epoch(self):
        return {"start": 0, "stride": self.ctx.parallelism, "offset": self.ctx.subtask_index, "pending": []}

    @property
    def epoch(self):
        """This subtask's epoch (a JSON-able dict; ``pending`` omitted when empty)."""
        epoch = {k: self._epoch[k] for k in ("start", "stride", "offset")}
        if self._epoch["pending"]:
            epoch["pending"] = list(self._epoch["pending"])
        return epoch

    def set_epoch(self, epoch):
        """Take the unit sequence ``epoch`` describes, from its beginning (position 0)."""
        name = self.ctx.operator_name
        expected = ("an epoch {'start': int >= 0, 'stride': int >= 1, 'offset': int in [0, stride), "
                    "'pending': optional increasing list of units below start}")
        if not isinstance(epoch, dict) or not {"start", "stride", "offset"} <= set(epoch) \
                or set(epoch) - set(self.EPOCH_KEYS):
            raise OperatorError(f"source {name!r}: expected {expected}, got {epoch!r}")
        values = [epoch["start"], epoch["stride"], epoch["offset"]]
        pending = epoch.get("pending") or []
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values + list(pending))
        if not ints or not isinstance(pending, (list, tuple)) or values[0] < 0 or values[1] < 1 \
                or not 0 <= values[2] < values[1]:
            raise OperatorError(f"source {name!r}: expected {expected}, got {epoch!r}")
        if any(a >= b for a, b in zip(pending, pending[1:])) or (pending and (pending[0] < 0 or pending[-1] >= values[0])):
            raise OperatorError(
                f"source {name!r}: the pending units of an epoch must increase, be >= 0 and lie below "
                f"its start {values[0]}; got {list(pending)!r}"
            )
        self._epoch = {"start": values[0], "stride": values[1], "offset": values[2], "pending": list(pending)}
        self._emitted = 0
        self._partial = False

    def _unit_at(self, n):
        """The global unit number of this subtask's ``n``-th unit."""
        pending = self._epoch["pending"]
        if n < len(pending):
            return pending[n]
        e = self._epoch
        return e["start"] + e["offset"] + (n - len(pending)) * e["stride"]

    @property
    def num_units(self):
        """Units of the whole source (all subtasks), None if unbounded."""
        raise TypeError(f"counting source {type(self).__name__} does not define num_units")

    @property
    def next_unit(self):
        """The first unit this subtask has not started emitting (global number)."""
        return self._unit_at(self._emitted + (1 if self._partial else 0))

    @property
    def at_unit_boundary(self):
        return not self._partial

    def set_limit(self, frontier):
        """Emit only units below ``frontier`` from now on (an old subtask of a source rescale)."""
        if isinstance(frontier, bool) or not isinstance(frontier, int) or frontier < 0:
            raise OperatorError(
                f"source {self.ctx.operator_name!r}: the frontier of a rescale must be an integer >= 0, "
                f"got {frontier!r}"
            )
        if self._partial and frontier <= self._unit_at(self._emitted):
            raise OperatorError(
                f"source {self.ctx.operator_name!r}: frontier {frontier} lies below unit "
                f"{self._unit_at(self._emitted)} that this subtask already started"
            )
        self._limit = frontier

    # -- positions ---------------------------------------------------------------

    @property
    def position(self):
        return self._emitted

    def seek(self, position):
        """Resume after ``position`` units of this subtask (takes effect at the next ``read``)."""
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise OperatorError(
                f"source {self.ctx.operator_name!r}: position must be an integer >= 0 "
                f"(units already emitted by this subtask), got {position!r}"
            )
        self._emitted = position
        self._partial = False

    def snapshot_state(self, checkpoint_id):
        return {"keyed": None, "state": {"position": self._emitted, "epoch": self.epoch}}

    def restore_state(self, keyed, state, checkpoint_id):
        """``state`` is ``{"position": int, "epoch": {...}}`` (or without epoch: the default one)."""
        if not state:
            return
        if state.get("epoch") is not None:
            self.set_epoch(state["epoch"])
        if state.get("position") is not None:
            self.seek(state["position"])

    def restore_subtask_states(self, states, checkpoint_id):
        """Restore from the states of every subtask of a checkpoint (``{subtask_index: state}``).

        At the parallelism the checkpoint was taken at, subtask ``i`` continues state
        ``i``. At another one the units nobody emitted yet are shared out again: the
        frontier ``F`` is the highest next unit of any old subtask; the units below it
        still due go round robin to the new subtasks as ``pending`` and the units from
        ``F`` on are split by a new stride, so every unit is emitted exactly once.
        """
        states = {int(k): v for k, v in (states or {}).items()}
        if not states:
            return
        if set(states) == set(range(self.ctx.parallelism)):
            self.restore_state(None, states[self.ctx.subtask_index], checkpoint_id)
            return
        old_parallelism = len(states)
        if set(states) != set(range(old_parallelism)):
            raise OperatorError(
                f"source {self.ctx.operator_name!r}: the checkpoint holds the state of subtasks "
                f"{sorted(states)}; expected subtasks 0..{old_parallelism - 1}"
            )
        sequences = []
        for index, state in sorted(states.items()):
            epoch = (state or {}).get("epoch") or {"start": 0, "stride": old_parallelism, "offset": index}
            position = (state or {}).get("position") or 0
            pending = list(epoch.get("pending") or [])
            done_stride = max(0, position - len(pending))
            next_stride = epoch["start"] + epoch["offset"] + done_stride * epoch["stride"]
            sequences.append((pending[position:], next_stride, epoch["stride"]))
        frontier = max(s[1] for s in sequences)
        total = self.num_units
        due = []
        for pending, next_stride, stride in sequences:
            due += pending
            due += range(next_stride, frontier, stride)
        due = sorted(u for u in due if total is None or u < total)
        p, j = self.ctx.parallelism, self.ctx.subtask_index
        self.set_epoch({"start": frontier, "stride": p, "offset": j, "pending": due[j::p]})
        log.info("source %s subtask %d of %d restored from %d subtasks: frontier %d, %d pending unit(s)",
                 self.ctx.operator_name, j, p, old_parallelism, frontier, len(due[j::p]))

    # -- reading -----------------------------------------------------------------

    def _unit_indexes(self, num_units):
        """Global unit numbers owned by this subtask, from the current position on.

        Lazy: the read loop counts each unit in ``_emitted`` as it emits it, and a
        limit set between two units (a source rescale) ends the sequence there.
        """
        while True:
            unit = self._unit_at(self._emitted)
            if (num_units is not None and unit >= num_units) or (self._limit is not None and unit >= self._limit):
                return
            yield unit

    def _all_units(self, num_units):
        """Every unit of this subtask's epoch (bounded sources), emitted or not."""
        n = 0
        while True:
            unit = self._unit_at(n)
            if unit >= num_units or (self._limit is not None and unit >= self._limit):
                return
            yield unit
            n += 1


@register("source", kind="table")
class TableSource(_CountingSource):
    """An in-memory Arrow table, by reference (the rows stay in the process's table store).

    With ``batch_size``, slice ``k`` holds rows ``[k * batch_size, (k + 1) * batch_size)``
    (one slice that spans two chunks of the table comes out as two batches); without,
    unit ``k`` is the table's ``k``-th record batch, as it was given. Subtask ``i``
    emits units ``i, i + P, …``, zero-copy.
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        self.table = ctx.table(self.params.get("data"), "parameter 'data' of source")
        if self.params.get("batch_size") is None:
            self.batch_size = None
            self.batches = [b for b in self.table.to_batches() if b.num_rows]
            self.num_slices = len(self.batches)
        else:
            self.batch_size = _positive_int(ctx, self.params, "batch_size", DEFAULT_BATCH_SIZE)
            self.num_slices = -(-self.table.num_rows // self.batch_size)

    @property
    def num_units(self):
        return self.num_slices

    def _unit_rows(self, k):
        if self.batch_size is None:
            return self.batches[k].num_rows
        return min(self.batch_size, self.table.num_rows - k * self.batch_size)

    @property
    def total_rows(self):
        return sum(self._unit_rows(k) for k in self._all_units(self.num_slices))

    def read(self):
        if self.table.num_rows == 0:
            # An empty table still has a schema: the subtask owning unit 0 sends one empty
            # batch so that a collecting sink returns an empty table rather than nothing.
            if self._unit_at(0) == 0 and self._emitted == 0:
                self._emitted = 1
                yield pa.RecordBatch.from_pylist([], schema=self.table.schema)
            return
        for k in self._unit_indexes(self.num_slices):
            if self.batch_size is None:
                batches = [self.batches[k]]
            else:
                piece = self.table.slice(k * self.batch_size, self.batch_size)
                batches = [b for b in piece.to_batches() if b.num_rows]
            # Count the unit before yielding its last batch: a position read
            # right after it was emitted must already include it.
            for j, batch in enumerate(batches):
                if j == len(batches) - 1:
                    self._emitted += 1
                    self._partial = False
                else:
                    self._partial = True
                yield batch
            if not batches:
                self._emitted += 1


@register("source", kind="generator")
class GeneratorSource(_CountingSource):
    """``fn(offset, num_rows, **parameters) -> RecordBatch``, replayable from any batch.

    Batch ``b`` covers global rows ``[b * batch_size, min((b + 1) * batch_size,
    total_rows))``; ``total_rows=None`` is unbounded.
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        self.ref = self.params.get("function") or ctx.operator.get("function")
        if self.ref is None:
            raise OperatorError(f"generator source {ctx.operator_name!r} needs parameter 'function' ('module:fn')")
        try:
            self.fn = functions.resolve(self.ref)
        except functions.FunctionReferenceError as exc:
            raise OperatorError(f"generator source {ctx.operator_name!r}: {exc}") from exc
        self.batch_size = _positive_int(ctx, self.params, "batch_size", DEFAULT_BATCH_SIZE)
        total = self.params.get("total_rows")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise OperatorError(
                f"generator source {ctx.operator_name!r}: total_rows must be an integer >= 0 "
                f"or None (unbounded), got {total!r}"
            )
        self.total = total
        self.fn_params = dict(self.params.get("parameters") or {})
        self.schema = None

    @property
    def num_batches(self):
        return None if self.total is None else -(-self.total // self.batch_size)

    @property
    def num_units(self):
        return self.num_batches

    @property
    def total_rows(self):
        if self.total is None:
            return None
        return sum(min(self.batch_size, self.total - b * self.batch_size) for b in self._all_units(self.num_batches))

    def read(self):
        for b in self._unit_indexes(self.num_batches):
            offset = b * self.batch_size
            num_rows = self.batch_size if self.total is None else min(self.batch_size, self.total - offset)
            batch = self.call_user(self.ref, self._call, offset, num_rows)
            batch = self._checked(batch, offset, num_rows)
            self._emitted += 1
            if batch.num_rows:
                yield batch

    def _call(self, offset, num_rows):
        return self.fn(offset, num_rows, **self.fn_params)

    def _checked(self, batch, offset, num_rows):
        name = self.ctx.operator_name
        if isinstance(batch, pa.Table):
            batch = pa.RecordBatch.from_arrays([c.combine_chunks() for c in batch.columns], schema=batch.schema)
        if not isinstance(batch, pa.RecordBatch):
            raise OperatorError(
                f"generator {self.ref!r} of source {name!r} returned {type(batch).__name__} for "
                f"offset={offset}, num_rows={num_rows}; expected a pyarrow.RecordBatch"
            )
        if batch.num_rows != num_rows:
            raise OperatorError(
                f"generator {self.ref!r} of source {name!r} returned {batch.num_rows} rows for "
                f"offset={offset}, num_rows={num_rows}; it must return exactly num_rows rows"
            )
        if self.schema is None:
            self.schema = batch.schema
        elif not batch.schema.equals(self.schema):
            raise OperatorError(
                f"generator {self.ref!r} of source {name!r} returned schema {batch.schema} at "
                f"offset={offset}; earlier batches had {self.schema}"
            )
        return batch


@register("source", kind="dataset")
class DatasetSource(SourceOperator):
    """Files read through ``pyarrow.dataset``; file ``j`` (sorted by path) goes to subtask ``j % P``.

    ``position`` is ``[fragment, batches]``: the global index of the file being
    read and how many of its batches were already emitted (batch boundaries are
    deterministic for a given ``batch_size``).
    """

    not_rescalable_reason = "rescaling a file source is not supported yet (files are split by subtask at start)"

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        self.path = self.params.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise OperatorError(f"dataset source {name!r} needs parameter 'path' (a file or directory)")
        self.format = self.params.get("format") or "parquet"
        if self.format not in DATASET_FORMATS:
            raise OperatorError(
                f"dataset source {name!r}: unknown format {self.format!r}; expected one of {DATASET_FORMATS}"
            )
        self.columns = self.params.get("columns") or None
        encoded = self.params.get("filter")
        self.filter = decode_expression(encoded) if encoded else None  # pushed down by the Stream API
        self.batch_size = _positive_int(ctx, self.params, "batch_size", None)
        self._fragment = ctx.subtask_index  # global index of the next fragment to read
        self._batches = 0  # batches of that fragment already emitted
        self._dataset = None
        self._fragments = None
        self._total_rows = None
        start = self.params.get("start_position")
        if start is not None:
            self.seek(start)

    def _open_dataset(self):
        if self._dataset is not None:
            return
        if not os.path.exists(self.path) and "://" not in self.path:
            raise OperatorError(f"dataset source {self.ctx.operator_name!r}: path {self.path!r} does not exist")
        try:
            self._dataset = ds.dataset(self.path, format=self.format)
        except (pa.ArrowInvalid, OSError) as exc:
            raise OperatorError(
                f"dataset source {self.ctx.operator_name!r}: cannot open {self.path!r} as "
                f"{self.format}: {exc}"
            ) from exc
        if self.columns:
            names = self._dataset.schema.names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise OperatorError(
                    f"dataset source {self.ctx.operator_name!r}: column(s) {missing} not in "
                    f"{self.path!r}; available columns: {names}"
                )
        self._fragments = sorted(self._dataset.get_fragments(), key=lambda f: f.path)

    def open(self):
        self._open_dataset()

    @property
    def position(self):
        return [self._fragment, self._batches]

    def seek(self, position):
        """Resume at ``[fragment, batches]`` (as returned by ``position``)."""
        ok = (isinstance(position, (list, tuple)) and len(position) == 2
              and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in position))
        if not ok or position[0] % self.ctx.parallelism != self.ctx.subtask_index:
            raise OperatorError(
                f"dataset source {self.ctx.operator_name!r} (subtask {self.ctx.subtask_index} of "
                f"{self.ctx.parallelism}): position must be [fragment, batches] with fragment % "
                f"{self.ctx.parallelism} == {self.ctx.subtask_index}, got {position!r}"
            )
        self._fragment, self._batches = int(position[0]), int(position[1])

    @property
    def fragment_paths(self):
        """Paths of the files this subtask reads, in order."""
        self._open_dataset()
        return [f.path for f in self._fragments[self.ctx.subtask_index::self.ctx.parallelism]]

    @property
    def total_rows(self):
        if self._total_rows is None and self.format != "csv":  # CSV would need a full read
            self._open_dataset()
            self._total_rows = sum(
                f.count_rows(filter=self.filter) for f in self._fragments[self.ctx.subtask_index::self.ctx.parallelism]
            )
        return self._total_rows

    def read(self):
        self._open_dataset()
        kwargs = {"columns": self.columns, "filter": self.filter}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        while self._fragment < len(self._fragments):
            fragment = self._fragments[self._fragment]
            skip = self._batches
            for n, batch in enumerate(fragment.to_batches(schema=self._dataset.schema, **kwargs)):
                if n < skip:  # replay: these were emitted before the restore
                    continue
                self._batches = n + 1
                if batch.num_rows:
                    yield batch
            self._fragment += self.ctx.parallelism
            self._batches = 0

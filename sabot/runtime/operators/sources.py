"""Source operators: an inline Arrow table, a deterministic generator, files.

Every source splits its input across the ``parallelism`` subtasks without
coordination (subtask ``i`` takes units ``i, i + P, i + 2P, …``), reports a
``position`` that says how far it got, and can be put back to a position with
``seek`` (or the ``start_position`` parameter) so that a restored job replays
exactly the rows after it. A position is JSON-able.

Parameter formats (``parameters["kind"]``):

* ``"table"``: ``{"data": base64 Arrow IPC, "batch_size": int | None}``; unit =
  one slice of ``batch_size`` rows; position = slices emitted.
* ``"generator"``: ``{"function": "module:fn", "total_rows": int | None,
  "batch_size": int, "parameters": {...}}``; unit = global batch ``b`` covering rows
  ``[b * batch_size, (b + 1) * batch_size)``; position = batches emitted.
* ``"dataset"``: ``{"path": str, "format": "parquet" | "ipc" | "csv", "columns":
  list | None, "batch_size": int | None}``; unit = one file (fragment, sorted by
  path); position = ``[fragment index, batches read from it]``.
"""

import logging
import os

import pyarrow as pa
import pyarrow.dataset as ds

from sabot.errors import OperatorError
from sabot.runtime import functions
from sabot.runtime.operators.base import SourceOperator, decode_table, register

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
    """A source whose position is the number of units this subtask has emitted."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._emitted = 0
        start = self.params.get("start_position")
        if start is not None:
            self.seek(start)

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

    def _unit_indexes(self, num_units):
        """Global unit numbers owned by this subtask, from the current position on."""
        start = self.ctx.subtask_index + self._emitted * self.ctx.parallelism
        if num_units is None:
            def unbounded():
                unit = start
                while True:
                    yield unit
                    unit += self.ctx.parallelism
            return unbounded()
        return range(start, num_units, self.ctx.parallelism)


@register("source", kind="table")
class TableSource(_CountingSource):
    """An in-memory Arrow table shipped inline in the JobGraph.

    Slice ``k`` holds rows ``[k * batch_size, (k + 1) * batch_size)``; subtask ``i``
    emits slices ``i, i + P, …`` as zero-copy batches (one slice that spans two
    chunks of the table comes out as two batches).
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        data = self.params.get("data")
        if not isinstance(data, str):
            raise OperatorError(
                f"source {ctx.operator_name!r}: parameter 'data' must be base64 Arrow IPC "
                f"(sabot.runtime.operators.base.encode_table), got {type(data).__name__}"
            )
        try:
            self.table = decode_table(data)
        except (pa.ArrowInvalid, ValueError) as exc:
            raise OperatorError(f"source {ctx.operator_name!r}: cannot decode the inline table: {exc}") from exc
        self.batch_size = _positive_int(ctx, self.params, "batch_size", DEFAULT_BATCH_SIZE)
        self.num_slices = -(-self.table.num_rows // self.batch_size)

    @property
    def total_rows(self):
        rows = 0
        for k in range(self.ctx.subtask_index, self.num_slices, self.ctx.parallelism):
            rows += min(self.batch_size, self.table.num_rows - k * self.batch_size)
        return rows

    def read(self):
        if self.table.num_rows == 0:
            # An empty table still has a schema: subtask 0 sends one empty batch so
            # that a collecting sink returns an empty table rather than nothing.
            if self.ctx.subtask_index == 0 and self._emitted == 0:
                self._emitted = 1
                yield pa.RecordBatch.from_pylist([], schema=self.table.schema)
            return
        for k in self._unit_indexes(self.num_slices):
            piece = self.table.slice(k * self.batch_size, self.batch_size)
            batches = [b for b in piece.to_batches() if b.num_rows]
            # Count the slice before yielding its last batch: a position read
            # right after it was emitted must already include it.
            for j, batch in enumerate(batches):
                if j == len(batches) - 1:
                    self._emitted += 1
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
    def total_rows(self):
        if self.total is None:
            return None
        rows = 0
        for b in range(self.ctx.subtask_index, self.num_batches, self.ctx.parallelism):
            rows += min(self.batch_size, self.total - b * self.batch_size)
        return rows

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
                f.count_rows() for f in self._fragments[self.ctx.subtask_index::self.ctx.parallelism]
            )
        return self._total_rows

    def read(self):
        self._open_dataset()
        kwargs = {"columns": self.columns}
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

"""Sink operators: collect in memory, part files in a directory, a callable, print.

A sink's ``process`` returns no batches. ``summary()`` (reported with the task's
final state, so JSON-able) holds at least ``{"rows": n, "bytes": n}`` (bytes =
Arrow buffer bytes received).

Parameter formats (``parameters["kind"]``):

* ``"collect"``: ``{}``; ``result()`` is the gathered ``pyarrow.Table``.
* ``"files"``: ``{"path": dir, "format": "parquet" | "ipc", "rows_per_file": int |
  None}``; writes ``part-{subtask}-{n:05d}.parquet`` / ``.arrow``.
* ``"callable"``: ``{"function": "module:fn"}``; ``fn(batch)`` per batch.
* ``"print"``: ``{"limit": int | None}``; prints up to ``limit`` rows to stdout.
"""

import logging
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sabot.errors import OperatorError
from sabot.runtime import functions
from sabot.runtime.operators.base import Operator, register

log = logging.getLogger(__name__)

FILE_FORMATS = {"parquet": "parquet", "ipc": "arrow"}


class _Sink(Operator):
    def __init__(self, ctx):
        super().__init__(ctx)
        self.rows = 0
        self.bytes = 0
        self.batches = 0

    def _count(self, batch):
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        self.batches += 1

    def summary(self):
        return {"rows": self.rows, "bytes": self.bytes, "batches": self.batches}


@register("sink", kind="collect")
class CollectSink(_Sink):
    """Keeps every batch; ``result()`` is a Table (``None`` if no batch ever came)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self._batches = []
        self.schema = None

    def process(self, batch, input_index):
        if self.schema is None:
            self.schema = batch.schema
        elif not batch.schema.equals(self.schema, check_metadata=False):
            raise OperatorError(
                f"collect sink {self.ctx.operator_name!r} received a batch with schema {batch.schema}; "
                f"earlier batches had {self.schema}"
            )
        self._count(batch)
        if batch.num_rows:
            self._batches.append(batch)
        return []

    def result(self):
        if self.schema is None:
            return None
        return pa.Table.from_batches(self._batches, schema=self.schema)


@register("sink", kind="files")
class FileSink(_Sink):
    """Part files ``part-{subtask_index}-{n:05d}.{parquet|arrow}`` in one directory.

    The directory is created on the first batch; a new part starts every
    ``rows_per_file`` rows (default: one file per subtask). Files are complete
    once the sink finishes. ``path`` may be a local directory or a URI that
    ``pyarrow.fs`` understands (``s3://…``).
    """

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        path = self.params.get("path")
        if not isinstance(path, str) or not path:
            raise OperatorError(f"file sink {name!r} needs parameter 'path' (a directory)")
        self.format = self.params.get("format") or "parquet"
        if self.format not in FILE_FORMATS:
            raise OperatorError(
                f"file sink {name!r}: unknown format {self.format!r}; expected one of {sorted(FILE_FORMATS)}"
            )
        rpf = self.params.get("rows_per_file")
        if rpf is not None and (isinstance(rpf, bool) or not isinstance(rpf, int) or rpf <= 0):
            raise OperatorError(f"file sink {name!r}: rows_per_file must be a positive integer or None, got {rpf!r}")
        self.rows_per_file = rpf
        if "://" in path:
            self.fs, self.dir = pafs.FileSystem.from_uri(path)
        else:
            self.fs, self.dir = pafs.LocalFileSystem(), os.path.abspath(path)
        self.files = []
        self._stream = None
        self._writer = None
        self._rows_in_file = 0
        self.schema = None

    def _open_file(self):
        if not self.files:
            self.fs.create_dir(self.dir, recursive=True)
        name = f"part-{self.ctx.subtask_index}-{len(self.files):05d}.{FILE_FORMATS[self.format]}"
        path = f"{self.dir.rstrip('/')}/{name}"
        self._stream = self.fs.open_output_stream(path)
        if self.format == "parquet":
            self._writer = pq.ParquetWriter(self._stream, self.schema)
        else:
            self._writer = pa.ipc.new_file(self._stream, self.schema)
        self.files.append(path)
        self._rows_in_file = 0

    def _close_file(self):
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = self._stream = None

    def process(self, batch, input_index):
        if self.schema is None:
            self.schema = batch.schema
        elif not batch.schema.equals(self.schema, check_metadata=False):
            raise OperatorError(
                f"file sink {self.ctx.operator_name!r} received a batch with schema {batch.schema}; "
                f"the files being written have {self.schema}"
            )
        self._count(batch)
        offset = 0
        while offset < batch.num_rows or (self._writer is None and not self.files):
            if self._writer is None:
                self._open_file()
            room = batch.num_rows - offset
            if self.rows_per_file is not None:
                room = min(room, self.rows_per_file - self._rows_in_file)
            if room:
                self._writer.write_batch(batch.slice(offset, room))
            offset += room
            self._rows_in_file += room
            if self.rows_per_file is not None and self._rows_in_file >= self.rows_per_file:
                self._close_file()
        return []

    def finish(self):
        self._close_file()
        return []

    def close(self):
        # After a failure the last part may be incomplete; closing still releases the handle.
        try:
            self._close_file()
        except Exception:  # the task is already failing; keep its error, not this one
            log.exception("file sink %r: closing %s failed", self.ctx.operator_name, self.files[-1:])

    def summary(self):
        out = super().summary()
        out["files"] = list(self.files)
        return out


@register("sink", kind="callable")
class CallableSink(_Sink):
    """Calls ``fn(batch)`` for every batch (its return value is ignored)."""

    def open(self):
        self.ref = self.params.get("function") or self.ctx.operator.get("function")
        if self.ref is None:
            raise OperatorError(f"callable sink {self.ctx.operator_name!r} needs parameter 'function' ('module:fn')")
        try:
            self.fn = functions.resolve(self.ref)
        except functions.FunctionReferenceError as exc:
            raise OperatorError(f"callable sink {self.ctx.operator_name!r}: {exc}") from exc

    def process(self, batch, input_index):
        self._count(batch)
        self.call_user(self.ref, self.fn, batch)
        return []


@register("sink", kind="print")
class PrintSink(_Sink):
    """Prints rows to stdout, prefixed by operator and subtask, up to ``limit`` rows in all."""

    def __init__(self, ctx):
        super().__init__(ctx)
        limit = self.params.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise OperatorError(
                f"print sink {ctx.operator_name!r}: limit must be an integer >= 0 or None, got {limit!r}"
            )
        self.limit = limit
        self.printed = 0

    def process(self, batch, input_index):
        self._count(batch)
        n = batch.num_rows if self.limit is None else min(batch.num_rows, self.limit - self.printed)
        if n > 0:
            prefix = f"{self.ctx.operator_name}[{self.ctx.subtask_index}]>"
            # Only the printed rows become Python objects.
            for row in batch.slice(0, n).to_pylist():
                print(prefix, row, flush=False)
            self.printed += n
        return []

    def finish(self):
        if self.limit is not None and self.rows > self.printed:
            print(f"{self.ctx.operator_name}[{self.ctx.subtask_index}]> ... {self.rows - self.printed} more rows")
        return []

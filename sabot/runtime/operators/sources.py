"""Source operators: an inline Arrow table, a deterministic generator, files.

All three are split sources (:mod:`sabot.connectors.source`, the Source API): the input is a
set of splits, each subtask reads the splits it owns and keeps a position per split, a
checkpoint holds those positions, a restore at any parallelism and a live rescale move the
splits with their positions. A position (and a checkpointed state) is ``{"splits": {split
id: {"split", "position", "finished"}}}``; ``seek`` (or the ``start_position`` parameter)
takes one back.

* ``"table"``: ``{"data": table reference (:mod:`sabot.runtime.tables`), "batch_size":
  int | None, "num_splits": int | None}``. A *unit* is one slice of ``batch_size`` rows (or,
  with ``batch_size`` None, one record batch of the table as it was given). Split ``k`` of
  ``S`` (``num_splits``, default ``max(DEFAULT_SPLITS, parallelism)``) holds units ``k, k +
  S, k + 2S, ...``; its position is the number of its units emitted. A subtask reads one
  unit at a time, always the lowest next unit of its splits, so one subtask emits the table
  in order, and subtask ``i`` of ``P`` emits units ``i, i + P, ...`` (for ``S`` a multiple
  of ``P``).
* ``"generator"``: ``{"function": "module:fn", "total_rows": int | None, "batch_size": int,
  "parameters": {...}, "num_splits": int | None}``; unit = global batch ``b`` covering rows
  ``[b * batch_size, (b + 1) * batch_size)``, split as the table's.
* ``"dataset"``: ``{"path": str, "format": "parquet" | "ipc" | "csv", "columns": list |
  None, "filter": base64 expression | None, "batch_size": int | None, "monitor_interval_s":
  float | None, "schema": base64 schema | None}``. Files sorted by path; a file of several
  units (IPC record batches, Parquet row groups, byte ranges of a CSV file cut at newlines:
  :mod:`~sabot.runtime.operators.csv_units`) is cut into strided pieces as a table is
  (position = units emitted), any other file is one split (position = batches read from it,
  after the filter: deterministic for one filter); round robin over subtasks.
  With ``monitor_interval_s`` the directory is listed again at that interval and new files
  become new splits (Flink's continuous file source): the source then never ends. Files
  whose name starts with ``.`` or ``_`` are not listed; write a file under such a name and
  rename it when complete.
"""

import logging
import os

import pyarrow as pa
import pyarrow.dataset as ds

from sabot.connectors.source import DEFAULT_SPLITS, Split, SplitSource
from sabot.errors import OperatorError
from sabot.execution.operator_spec import decode_expression
from sabot.runtime import functions
from sabot.runtime.operators import csv_units
from sabot.runtime.operators.base import register
from sabot.runtime.operators.expressions import filter_batch

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


class _StridedSource(SplitSource):
    """A source of numbered units (``num_units``, None if unbounded), cut into ``S`` strided
    splits: split ``k`` holds units ``k, k + S, ...``; its position is its units emitted."""

    interleave = True
    per_split_watermarks = False

    @property
    def num_units(self):
        raise TypeError(f"strided source {type(self).__name__} does not define num_units")

    def _num_splits(self):
        # the split set must be the same whenever the source comes back: a restored one keeps
        # the count it was checkpointed with
        for split in (self.enumerator.splits if self.enumerator is not None else []):
            if split.id.startswith("units/"):
                return int(split.description["of"])
        return _positive_int(self.ctx, self.params, "num_splits", max(DEFAULT_SPLITS, self.ctx.parallelism))

    def initial_splits(self):
        count = self._num_splits()
        return [Split(f"units/{k}", ordinal=k, description={"k": k, "of": count}) for k in range(count)]

    def split_order(self, split_id):
        # the lowest next unit first: one subtask emits its units in ascending order, also
        # after a rescale or restore left its splits at different positions
        st = self._splits[split_id]
        return st.split.description["k"] + st.position * st.split.description["of"]

    def units_of(self, split, start=0):
        """The global unit numbers of ``split`` from its ``start``-th on."""
        k, count, total = split.description["k"], split.description["of"], self.num_units
        n = start
        while True:
            unit = k + n * count
            if total is not None and unit >= total:
                return
            yield n, unit
            n += 1

    def read_split(self, split, position):
        for n, unit in self.units_of(split, position):
            batches = self.read_unit(unit)
            for j, batch in enumerate(batches):
                # the position counts the unit with its last batch: a position read right
                # after the batch was emitted must already include it
                yield batch, (n + 1 if j == len(batches) - 1 else None)
            if not batches:
                yield None, n + 1

    def read_unit(self, unit):
        raise TypeError(f"strided source {type(self).__name__} does not define read_unit()")


@register("source", kind="table")
class TableSource(_StridedSource):
    """An in-memory Arrow table, by reference (the rows stay in the process's table store).

    With ``batch_size``, unit ``u`` holds rows ``[u * batch_size, (u + 1) * batch_size)``
    (one slice that spans two chunks of the table comes out as two batches); without, unit
    ``u`` is the table's ``u``-th record batch, as it was given. Zero-copy.
    """

    def __init__(self, ctx):
        self.table = ctx.table(ctx.parameters.get("data"), "parameter 'data' of source")
        if ctx.parameters.get("batch_size") is None:
            self.batch_size = None
            self.batches = [b for b in self.table.to_batches() if b.num_rows]
            self.num_slices = len(self.batches)
        else:
            self.batch_size = _positive_int(ctx, ctx.parameters, "batch_size", DEFAULT_BATCH_SIZE)
            self.num_slices = -(-self.table.num_rows // self.batch_size)
        super().__init__(ctx)

    @property
    def num_units(self):
        return self.num_slices

    def _unit_rows(self, k):
        if self.batch_size is None:
            return self.batches[k].num_rows
        return min(self.batch_size, self.table.num_rows - k * self.batch_size)

    def split_rows(self, split):
        return sum(self._unit_rows(u) for _, u in self.units_of(split))

    def read_unit(self, unit):
        if self.batch_size is None:
            return [self.batches[unit]]
        piece = self.table.slice(unit * self.batch_size, self.batch_size)
        return [b for b in piece.to_batches() if b.num_rows]

    def read(self):
        if self.table.num_rows == 0:
            # An empty table still has a schema: the owner of split 0 sends one empty batch
            # (once) so that a collecting sink returns an empty table rather than nothing.
            for split in self.active_splits:
                if split.description["k"] == 0:
                    self.finish_split(split.id)
                    yield pa.RecordBatch.from_pylist([], schema=self.table.schema)
        yield from super().read()


@register("source", kind="generator")
class GeneratorSource(_StridedSource):
    """``fn(offset, num_rows, **parameters) -> RecordBatch``, replayable from any batch.

    Unit ``b`` covers global rows ``[b * batch_size, min((b + 1) * batch_size,
    total_rows))``; ``total_rows=None`` is unbounded.
    """

    def __init__(self, ctx):
        params = ctx.parameters
        self.ref = params.get("function") or ctx.operator.get("function")
        if self.ref is None:
            raise OperatorError(f"generator source {ctx.operator_name!r} needs parameter 'function' ('module:fn')")
        try:
            self.fn = functions.resolve(self.ref)
        except functions.FunctionReferenceError as exc:
            raise OperatorError(f"generator source {ctx.operator_name!r}: {exc}") from exc
        self.batch_size = _positive_int(ctx, params, "batch_size", DEFAULT_BATCH_SIZE)
        total = params.get("total_rows")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise OperatorError(
                f"generator source {ctx.operator_name!r}: total_rows must be an integer >= 0 "
                f"or None (unbounded), got {total!r}"
            )
        self.total = total
        self.fn_params = dict(params.get("parameters") or {})
        self.schema = None
        super().__init__(ctx)

    @property
    def num_batches(self):
        return None if self.total is None else -(-self.total // self.batch_size)

    @property
    def num_units(self):
        return self.num_batches

    def split_rows(self, split):
        if self.total is None:
            return None
        return sum(min(self.batch_size, self.total - u * self.batch_size) for _, u in self.units_of(split))

    def read_unit(self, unit):
        offset = unit * self.batch_size
        num_rows = self.batch_size if self.total is None else min(self.batch_size, self.total - offset)
        batch = self.call_user(self.ref, self._call, offset, num_rows)
        batch = self._checked(batch, offset, num_rows)
        return [batch] if batch.num_rows else []

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
class DatasetSource(SplitSource):
    """Files read through ``pyarrow.dataset``, sorted by path.

    A file of several *units* (an Arrow IPC file's record batches, a Parquet file's row
    groups, a CSV file's byte ranges of :data:`~sabot.runtime.operators.csv_units.UNIT_BYTES`
    cut at newlines) is cut into ``S`` strided pieces, as a table is: piece ``k`` holds units
    ``k, k + S, ...`` and its position is its units emitted. So one large file keeps every
    subtask busy, and a live rescale or restore moves the pieces with their positions. ``S``
    is at most its units and ``ceil(max(DEFAULT_SPLITS, parallelism) / files)`` (a fixed set
    of files: about that many splits in all, no file cut once there are enough files), or the
    parallelism for a file found by monitoring. Any other file (one unit, a remote path, a
    compressed CSV file or one whose header is not the dataset's columns, an IPC file whose
    schema differs from the dataset's) is one split whose position is the batches emitted
    from it. A subtask reads its files one after the other, in listing order, and a file's
    pieces lowest next unit first: with every piece of a file (p=1) it emits the file in
    order; pieces of one file advance in event time together.

    With ``monitor_interval_s`` new files are discovered as they appear; a file's pieces
    then depend only on the file and the parallelism (not on when it was listed).
    """

    interleave = True

    def __init__(self, ctx):
        name = ctx.operator_name
        params = ctx.parameters
        self.path = params.get("path")
        if not isinstance(self.path, str) or not self.path:
            raise OperatorError(f"dataset source {name!r} needs parameter 'path' (a file or directory)")
        self.format = params.get("format") or "parquet"
        if self.format not in DATASET_FORMATS:
            raise OperatorError(
                f"dataset source {name!r}: unknown format {self.format!r}; expected one of {DATASET_FORMATS}"
            )
        self.columns = params.get("columns") or None
        encoded = params.get("filter")
        self.filter = decode_expression(encoded) if encoded else None  # pushed down by the Stream API
        self.batch_size = _positive_int(ctx, params, "batch_size", None)
        interval = params.get("monitor_interval_s")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, (int, float))
                                     or interval <= 0):
            raise OperatorError(f"dataset source {name!r}: monitor_interval_s must be a positive number of "
                                f"seconds or None (read the files there at the start only), got {interval!r}")
        self.discovery_interval_s = interval
        schema = params.get("schema")
        if schema:
            from sabot.execution.operator_spec import decode_schema

            schema = decode_schema(schema)
        self.schema = schema or None
        self._fragments = {}  # path -> fragment of the latest listing
        self._ipc = {}  # path -> memory-mapped IPC file reader, while this subtask reads pieces of it
        self._csv = {}  # (path, unit bytes) -> its CsvUnits (None: read whole)
        self._rank = {}  # path -> its place in this subtask's reading order
        self._piece_rows = {}  # split id -> its rows (progress)
        super().__init__(ctx)

    def _list(self):
        """The files there now, sorted by path (a clear error if the path is missing)."""
        if not os.path.exists(self.path) and "://" not in self.path:
            if self.discovery_interval_s is not None:
                return []  # a monitored directory may appear later
            raise OperatorError(f"dataset source {self.ctx.operator_name!r}: path {self.path!r} does not exist")
        try:
            dataset = ds.dataset(self.path, format=self.format, schema=self.schema)
        except (pa.ArrowInvalid, OSError) as exc:
            raise OperatorError(
                f"dataset source {self.ctx.operator_name!r}: cannot open {self.path!r} as "
                f"{self.format}: {exc}"
            ) from exc
        if self.schema is None and dataset.files:
            self.schema = dataset.schema
        if self.columns and self.schema is not None:
            names = self.schema.names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise OperatorError(
                    f"dataset source {self.ctx.operator_name!r}: column(s) {missing} not in "
                    f"{self.path!r}; available columns: {names}"
                )
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
        self._fragments.update((f.path, f) for f in fragments)
        return [f.path for f in fragments]

    # -- pieces of a file ----------------------------------------------------------------

    def _open_ipc(self, path):
        try:
            return pa.ipc.open_file(pa.memory_map(path))
        except (pa.ArrowInvalid, OSError) as exc:
            raise OperatorError(f"dataset source {self.ctx.operator_name!r}: cannot open {path!r} as an "
                                f"Arrow IPC file: {exc}") from exc

    def _ipc_reader(self, path):
        """The mapped file of pieces being read (kept until the subtask's last piece of it ends)."""
        reader = self._ipc.get(path)
        if reader is None:
            reader = self._ipc[path] = self._open_ipc(path)
        return reader

    def _release(self, path, split_id):
        """Split ``split_id`` of ``path`` ended: unmap the file if no other piece of it is left."""
        if not any(st.split.description.get("path") == path and not st.finished and sid != split_id
                   for sid, st in list(self._splits.items())):
            self._ipc.pop(path, None)

    def _csv_units(self, path, unit_bytes=None):
        """The byte-range units of a CSV file, or None: read it whole (compressed, no header
        line, a header other than the dataset's columns)."""
        key = (path, unit_bytes or csv_units.UNIT_BYTES)
        if key not in self._csv:
            if self.schema is None:  # a restored piece: the dataset's schema first (every unit parses to it)
                self._list()
            units = csv_units.CsvUnits.of(path, key[1])
            if units is not None and (self.schema is None or units.names != self.schema.names):
                units = None
            self._csv[key] = units
        return self._csv[key]

    def _num_units(self, path, reader=None, unit_bytes=None):
        """How many independently readable units the file has, or None: read it whole."""
        if "://" in path or "://" in self.path:
            return None
        if self.format == "csv":
            units = self._csv_units(path, unit_bytes)
            return units.num_units if units is not None else None
        if self.format == "ipc":
            reader = reader or self._ipc.get(path) or self._open_ipc(path)  # listing: not kept mapped
            if self.schema is not None and not reader.schema.equals(self.schema):
                return None  # the dataset scanner casts to the dataset's schema: let it
            return reader.num_record_batches
        if self.format == "parquet":
            return self._fragment(path).num_row_groups
        return None

    def _file_splits(self, path, ordinal, target):
        """The splits of one file, at most ``target`` pieces; static ones numbered from
        ``ordinal`` (round robin)."""
        count = min(self._num_units(path) or 0, target) if target > 1 else 1  # (units: a file's metadata)
        monitored = self.discovery_interval_s is not None
        if count < 2:
            # a growing directory: a file's owner must not depend on when it was listed
            return [Split(path, ordinal=0 if monitored else ordinal, group=path if monitored else None,
                          description={"path": path})]
        extra = {"unit_bytes": csv_units.UNIT_BYTES} if self.format == "csv" else {}  # a restore reads the same units
        return [Split(f"{path}#{k}/{count}", ordinal=k if monitored else ordinal + k,
                      group=path if monitored else None, description={"path": path, "k": k, "of": count, **extra})
                for k in range(count)]

    def _splits_of(self, paths):
        """Splits of the files not known yet. A fixed set of files is cut into about
        max(DEFAULT_SPLITS, P) splits in all (files enough: none is cut); a file found by
        monitoring into at most P pieces (its shape must not depend on the other files, and
        every finished piece stays in the checkpoints of a source that never ends)."""
        p = self.ctx.parallelism
        if self.discovery_interval_s is not None:
            target = p
        else:
            target = -(-max(DEFAULT_SPLITS, p) // max(len(paths), 1))
        known = {s.description.get("path", s.id) for s in self.enumerator.splits} if self.enumerator else set()
        out = []
        for path in paths:
            if path not in known:  # a restored file keeps the pieces it was checkpointed with
                out += self._file_splits(path, len(out), target)
        return out

    def initial_splits(self):
        return self._splits_of(self._list())

    def discover_splits(self):
        return self._splits_of(self._list())

    def open(self):
        self._prepare()

    def close(self):
        self._ipc.clear()  # unmaps the files (the batches emitted hold their own references)
        super().close()

    @property
    def fragment_paths(self):
        """Paths of the files this subtask reads (a piece or all of each), in order."""
        return list(dict.fromkeys(s.description.get("path", s.id) for s in self.splits))

    def watermark_key(self, split_id):
        st = self._splits.get(split_id)
        return st.split.description.get("path", split_id) if st is not None else split_id

    def split_order(self, split_id):
        # files in this subtask's order; within a file the lowest next unit first
        st = self._splits[split_id]
        d = st.split.description
        path = d.get("path", split_id)
        if path not in self._rank:
            for st2 in list(self._splits.values()):
                self._rank.setdefault(st2.split.description.get("path", st2.split.id), len(self._rank))
        unit = d["k"] + st.position * d["of"] if "of" in d else st.position
        return self._rank[path], unit

    def _fragment(self, path):
        fragment = self._fragments.get(path)
        if fragment is None:  # a restored split: the file as it is now
            self._list()
            fragment = self._fragments.get(path)
        if fragment is None:
            raise OperatorError(f"dataset source {self.ctx.operator_name!r}: file {path!r} of the checkpoint "
                                "is gone; a restored file source needs its files")
        return fragment

    def _units_of(self, split, start=0, reading=False, reader=None):
        """The units of a piece from its ``start``-th on (``reading``: keep its IPC file
        mapped; ``reader``: an IPC reader of the file already open)."""
        d = split.description
        k, count = d["k"], d["of"]
        if reading and self.format == "ipc":
            reader = self._ipc_reader(d["path"])
        total = self._num_units(d["path"], reader, d.get("unit_bytes"))
        if total is None:
            raise OperatorError(f"dataset source {self.ctx.operator_name!r}: file {d['path']!r} of the "
                                "checkpoint can no longer be read in pieces (its schema changed?)")
        return range(k + start * count, total, count)

    def _read_unit(self, path, unit, unit_bytes=None):
        """The batches of one unit of a file (after the filter, the projection, batch_size)."""
        if self.format in ("ipc", "csv"):
            if self.format == "ipc":  # zero-copy from the mapped file
                read = [self._ipc_reader(path).get_batch(unit)]
            else:  # the unit's bytes, parsed to the dataset's types
                table = self._csv_units(path, unit_bytes).read(unit, self.schema)
                read = table.to_batches() if table is not None else []
            out = []
            for batch in read:  # filtered on this thread
                if self.filter is not None:
                    batch = filter_batch(batch, self.filter)
                if self.columns:
                    batch = batch.select(self.columns)
                size = self.batch_size or max(batch.num_rows, 1)
                out += [batch.slice(i, size) for i in range(0, batch.num_rows, size)]
            return out
        piece = self._fragment(path).subset(row_group_ids=[unit])
        kwargs = {"columns": self.columns, "filter": self.filter}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        return [b for b in piece.to_batches(schema=self.schema, **kwargs) if b.num_rows]

    def split_rows(self, split):
        """Rows of a split from the files' metadata; None with a filter (the rows that pass
        are known only by reading everything, and status reports ask from the event loop)
        and for CSV."""
        if self.filter is not None or self.format == "csv":
            return None
        rows = self._piece_rows.get(split.id)
        if rows is not None:
            return rows
        path = split.description.get("path", split.id)
        if "of" in split.description:
            if self.format == "ipc":  # one open of the file (not kept mapped)
                reader = self._ipc.get(path) or self._open_ipc(path)
                rows = sum(reader.get_batch(u).num_rows for u in self._units_of(split, reader=reader))
            else:  # (a subset's count_rows() without a filter answers the whole file's rows)
                units = list(self._units_of(split))
                rows = sum(rg.num_rows for rg in self._fragment(path).subset(row_group_ids=units).row_groups)
        else:
            fragment = self._fragments.get(path)
            if fragment is None and not self._splits[split.id].finished:
                self._list()
                fragment = self._fragments.get(path)
            if fragment is None:  # a finished file may be gone (progress only: not an error)
                return None
            rows = fragment.count_rows()
        self._piece_rows[split.id] = rows
        return rows

    def read_split(self, split, position):
        d = split.description
        if "of" in d:  # a piece: position = its units emitted
            for n, unit in enumerate(self._units_of(split, position, reading=True), start=position):
                batches = self._read_unit(d["path"], unit, d.get("unit_bytes"))
                for j, batch in enumerate(batches):
                    yield batch, (n + 1 if j == len(batches) - 1 else None)
                if not batches:
                    yield None, n + 1
            self._release(d["path"], split.id)
            return
        fragment = self._fragment(split.id)
        kwargs = {"columns": self.columns, "filter": self.filter}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        for n, batch in enumerate(fragment.to_batches(schema=self.schema, **kwargs)):
            if n < position:  # replay: these were emitted before the restore
                continue
            yield batch, n + 1

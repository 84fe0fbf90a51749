"""Keyed event-time windows: tumbling and sliding, with watermarks and late data.

Parameters: ``{"size": int, "slide": int | None, "time_column": str, "aggregates":
[[column, fn], ...], "emit_late": false}``, keys from the node's ``key_by`` (none:
one global window per interval). Window ``w`` covers ``[start, start + size)``
with ``start`` a multiple of ``slide`` (``size`` when tumbling).

How it works, and why: the operator keeps no raw rows, only partial aggregates
(count, sum, min, max per aggregated column) per ``(keys…, window_start)``. A
batch is first reduced per *pane* (the gcd of size and slide: every pane lies
wholly inside or outside every window), so a sliding window multiplies the
small per-pane partials, not the rows. Partials from many batches are merged with
one more ``group_by`` when they pile up and when a watermark arrives; windows whose
end is ``<= watermark`` are emitted and dropped from the state.

A record is late when every window it belongs to has already fired (its last
window's end ``<= watermark`` on arrival): it is dropped and counted in
``ctx.metrics["late_records_dropped"]``. With sliding windows a record can be late
for some of its windows only; it still counts in those that have not fired.
Rows with a null event time are dropped and counted in
``ctx.metrics["null_time_records_dropped"]``.

Output per fired window: the key columns, ``window_start``, ``window_end`` (the
time column's type), then one column per aggregate, ``f"{column}_{fn}"``
(``"count"`` for ``["*", "count"]``), ordered by window end then keys. Types:
count int64, mean float64, sum float64 for floating columns else int64, min/max
the column's type.
"""

import base64
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot._core import partition
from sabot.errors import OperatorError
from sabot.execution.operator_spec import aggregate_output_name
from sabot.runtime.operators.base import Operator, register

log = logging.getLogger(__name__)

WINDOW_FUNCTIONS = ("count", "sum", "min", "max", "mean")
# Partials each function needs, and how partials of one kind merge.
_NEEDS = {"count": ("count",), "sum": ("sum",), "min": ("min",), "max": ("max",), "mean": ("sum", "count")}
_MERGE = {"count": "sum", "sum": "sum", "min": "min", "max": "max", "rows": "sum"}
_WS = "__window_start"
# Compact the pending partials once they hold this many rows more than the state.
_COMPACT_ROWS = 1 << 18
# The keyed snapshot: key-group column, and schema metadata carrying the rest.
_KEY_GROUP = "_key_group"
_META_WATERMARK = b"sabot.window.watermark"
_META_SCHEMA = b"sabot.window.input_schema"
_COUNTERS = ("late_records_dropped", "null_time_records_dropped")


def _is_numeric(t):
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


@register("window")
class WindowOperator(Operator):
    """Keyed event-time tumbling / sliding window aggregation (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        p = self.params
        self.size = self._int_param("size", p.get("size"))
        slide = p.get("slide")
        self.slide = self.size if slide is None else self._int_param("slide", slide)
        self.pane = math.gcd(self.size, self.slide)
        self.windows_per_pane = -(-self.size // self.slide)
        self.time_column = p.get("time_column")
        if not isinstance(self.time_column, str) or not self.time_column:
            raise OperatorError(f"window {name!r} needs parameter 'time_column' (the event-time column)")
        if p.get("emit_late"):
            raise OperatorError(
                f"window {name!r}: emit_late=true (late records to a side output) is not supported; "
                "late records are counted in metrics['late_records_dropped'] and dropped"
            )
        self.keys = list(ctx.operator.get("key_by") or [])
        aggregates = p.get("aggregates")
        if not aggregates:
            raise OperatorError(f"window {name!r} needs 'aggregates': [[column, fn], ...] with fn in {WINDOW_FUNCTIONS}")
        self.aggregates = []
        for spec in aggregates:
            if not isinstance(spec, (list, tuple)) or len(spec) != 2:
                raise OperatorError(f"window {name!r}: aggregate {spec!r} is not a [column, fn] pair")
            column, fn = spec
            if fn not in WINDOW_FUNCTIONS:
                raise OperatorError(
                    f"window {name!r}: unknown aggregate function {fn!r} for column {column!r}; "
                    f"expected one of {WINDOW_FUNCTIONS}"
                )
            if column == "*" and fn != "count":
                raise OperatorError(f"window {name!r}: column '*' only works with 'count', not {fn!r}")
            self.aggregates.append((column, fn))
        # Distinct value columns and the partials kept for each: ("rows",) for "*".
        self.value_columns = []
        self.partials = []  # (internal name, value column index or None, kind)
        for column, fn in self.aggregates:
            kinds = ("rows",) if column == "*" else _NEEDS[fn]
            if column != "*" and column not in self.value_columns:
                self.value_columns.append(column)
            vi = None if column == "*" else self.value_columns.index(column)
            for kind in kinds:
                pname = f"__p_{'all' if vi is None else vi}_{kind}"
                if all(pname != q[0] for q in self.partials):
                    self.partials.append((pname, vi, kind))
        self.key_names = [f"__k{i}" for i in range(len(self.keys))]
        self.schema = None
        self.time_type = None
        self.watermark = None  # int event time; None = no watermark yet (-inf)
        self.state = None  # Table of merged partials: keys, _WS, partials
        self.pending = []
        self.pending_rows = 0
        for metric in ("late_records_dropped", "null_time_records_dropped"):
            ctx.metrics.setdefault(metric, 0)

    def _int_param(self, what, value):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise OperatorError(
                f"window {self.ctx.operator_name!r}: {what} must be a positive integer "
                f"(in units of the time column), got {value!r}"
            )
        return value

    # -- schema ------------------------------------------------------------------------

    def _bind(self, schema):
        """Check the first batch's schema against the parameters (names the missing columns)."""
        name = self.ctx.operator_name
        wanted = [("time_column", self.time_column)] + [("key_by", k) for k in self.keys]
        wanted += [("aggregate", c) for c in self.value_columns]
        missing = [f"{what} {col!r}" for what, col in wanted if schema.get_field_index(col) < 0]
        if missing:
            raise OperatorError(
                f"window {name!r}: {', '.join(missing)} not in the input; available columns: {schema.names}"
            )
        t = schema.field(self.time_column).type
        if not (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
            raise OperatorError(
                f"window {name!r}: time column {self.time_column!r} has type {t}; expected an integer "
                "or timestamp column"
            )
        for column, fn in self.aggregates:
            if column == "*":
                continue
            ct = schema.field(column).type
            if fn in ("sum", "mean") and not _is_numeric(ct):
                raise OperatorError(f"window {name!r}: cannot take {fn} of column {column!r} of type {ct}")
        self.schema = schema
        self.time_type = t

    # -- input -------------------------------------------------------------------------

    def _event_times(self, batch):
        col = batch.column(self.time_column)
        if not pa.types.is_int64(col.type):
            col = col.cast(pa.int64())
        return col

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        ts_arr = self._event_times(batch)
        if ts_arr.null_count:
            valid = ts_arr.is_valid()
            self.ctx.metrics["null_time_records_dropped"] += ts_arr.null_count
            batch = batch.filter(valid)
            ts_arr = ts_arr.filter(valid)
            if batch.num_rows == 0:
                return []
        ts = ts_arr.to_numpy()
        last_start = np.floor_divide(ts, self.slide) * self.slide
        if self.watermark is not None:
            # Late: the last (latest-ending) window holding the record has fired.
            late = (last_start + self.size <= self.watermark) & (ts < last_start + self.size)
            n_late = int(np.count_nonzero(late))
            if n_late:
                self.ctx.metrics["late_records_dropped"] += n_late
                keep = pa.array(~late)
                batch = batch.filter(keep)
                ts = ts[~late]
                if batch.num_rows == 0:
                    return []
        pane = np.floor_divide(ts, self.pane) * self.pane
        columns = [batch.column(k) for k in self.keys] + [batch.column(c) for c in self.value_columns]
        names = self.key_names + [f"__v{i}" for i in range(len(self.value_columns))]
        table = pa.Table.from_arrays(columns + [pa.array(pane)], names=names + ["__pane"])
        aggs = []
        for pname, vi, kind in self.partials:
            if kind == "rows":
                aggs.append(([], "count_all"))
            else:
                aggs.append((f"__v{vi}", kind))
        grouped = table.group_by(self.key_names + ["__pane"], use_threads=False).aggregate(aggs)
        out_names = ["count_all" if kind == "rows" else f"__v{vi}_{kind}" for _, vi, kind in self.partials]
        partial = grouped.select(self.key_names + ["__pane"] + out_names).rename_columns(
            self.key_names + ["__pane"] + [p[0] for p in self.partials]
        )
        self._add_pending(self._panes_to_windows(partial))
        return []

    def _panes_to_windows(self, partial):
        """Copy each pane's partials to every window that contains the pane."""
        pane = partial.column("__pane").to_numpy()
        body = partial.drop_columns(["__pane"])
        if self.pane == self.size == self.slide:  # tumbling: the pane is the window
            return body.append_column(_WS, pa.array(pane))
        first = np.floor_divide(pane, self.slide) * self.slide
        pieces = []
        for j in range(self.windows_per_pane):
            start = first - j * self.slide
            ok = pane < start + self.size
            if self.watermark is not None:
                ok &= start + self.size > self.watermark  # that window fired already
            if not ok.any():
                continue
            if ok.all():
                pieces.append(body.append_column(_WS, pa.array(start)))
            else:
                pieces.append(body.filter(pa.array(ok)).append_column(_WS, pa.array(start[ok])))
        if not pieces:
            return None
        return pa.concat_tables(pieces)

    def _add_pending(self, table):
        if table is None or table.num_rows == 0:
            return
        self.pending.append(table.select(self.key_names + [_WS] + [p[0] for p in self.partials]))
        self.pending_rows += table.num_rows
        state_rows = 0 if self.state is None else self.state.num_rows
        if self.pending_rows > max(_COMPACT_ROWS, state_rows):
            self._compact()

    def _compact(self, force=False):
        """Merge the pending partials into the state (one group_by over all of them).

        ``force``: group even a single table (restored state may hold one window's
        partials from several old subtasks).
        """
        if not self.pending:
            return
        tables = ([self.state] if self.state is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        merged = pa.concat_tables(tables)
        # One tumbling-window table is already one row per (keys, window); sliding
        # windows get several panes' rows per window even from a single batch.
        if force or len(tables) > 1 or self.pane != self.size:
            aggs = [(pname, _MERGE[kind]) for pname, _, kind in self.partials]
            grouped = merged.group_by(self.key_names + [_WS], use_threads=False).aggregate(aggs)
            merged = grouped.select(
                self.key_names + [_WS] + [f"{pname}_{_MERGE[kind]}" for pname, _, kind in self.partials]
            ).rename_columns(self.key_names + [_WS] + [p[0] for p in self.partials])
        self.state = merged

    # -- output ------------------------------------------------------------------------

    def _to_int(self, timestamp):
        if isinstance(timestamp, (int, np.integer)) and not isinstance(timestamp, bool):
            return int(timestamp)
        if self.time_type is not None and pa.types.is_timestamp(self.time_type):
            return pa.scalar(timestamp, type=self.time_type).cast(pa.int64()).as_py()
        raise OperatorError(
            f"window {self.ctx.operator_name!r}: watermark {timestamp!r} is not an integer event time"
        )

    def on_watermark(self, timestamp):
        timestamp = self._to_int(timestamp)
        if self.watermark is not None and timestamp <= self.watermark:
            return []
        self.watermark = timestamp
        self._compact()
        if self.state is None or self.state.num_rows == 0:
            return []
        ready = pc.less_equal(pc.add(self.state.column(_WS), self.size), timestamp)
        fired = self.state.filter(ready)
        if fired.num_rows == 0:
            return []
        self.state = self.state.filter(pc.invert(ready))
        return self._emit(fired)

    def finish(self):
        """End of input: every remaining window fires (watermark +inf)."""
        self._compact()
        fired, self.state = self.state, None
        if fired is None or fired.num_rows == 0:
            return []
        return self._emit(fired)

    def _emit(self, fired):
        fired = fired.sort_by([(_WS, "ascending")] + [(k, "ascending") for k in self.key_names])
        start = fired.column(_WS)
        end = pc.add(start, self.size)
        arrays, names = [], []
        for k, key in zip(self.key_names, self.keys):
            arrays.append(fired.column(k))
            names.append(key)
        if pa.types.is_timestamp(self.time_type):
            start, end = start.cast(self.time_type), end.cast(self.time_type)
        elif self.time_type != pa.int64():
            start, end = start.cast(self.time_type), end.cast(self.time_type)
        arrays += [start, end]
        names += ["window_start", "window_end"]
        for column, fn in self.aggregates:
            names.append(aggregate_output_name(column, fn))
            arrays.append(self._final(fired, column, fn))
        table = pa.Table.from_arrays(arrays, names=names).combine_chunks()
        return [b for b in table.to_batches() if b.num_rows]

    def _final(self, fired, column, fn):
        if column == "*":
            return fired.column("__p_all_rows").cast(pa.int64())
        vi = self.value_columns.index(column)
        ctype = self.schema.field(column).type
        if fn == "count":
            return fired.column(f"__p_{vi}_count").cast(pa.int64())
        if fn in ("min", "max"):
            return fired.column(f"__p_{vi}_{fn}").cast(ctype)
        total = fired.column(f"__p_{vi}_sum")
        if fn == "sum":
            target = pa.float64() if pa.types.is_floating(ctype) else (
                ctype if pa.types.is_decimal(ctype) else pa.int64())
            return total.cast(target)
        count = fired.column(f"__p_{vi}_count")
        # mean over the non-null values; a window with none of them gives null.
        return pc.divide(total.cast(pa.float64()), pc.if_else(pc.equal(count, 0), None, count).cast(pa.float64()))

    # -- checkpoints -------------------------------------------------------------------

    def _state_columns(self):
        return self.key_names + [_WS] + [p[0] for p in self.partials]

    def snapshot_state(self, checkpoint_id):
        """Open windows' partials as keyed state, watermark and counters as state.

        The returned table is not touched afterwards (the operator replaces its state
        table, it never mutates it), so it may be written while processing goes on.
        """
        self._compact()
        schema_bytes = None if self.schema is None else self.schema.serialize().to_pybytes()
        state = {
            "watermark": self.watermark,
            "input_schema": schema_bytes,
            **{name: int(self.ctx.metrics.get(name, 0)) for name in _COUNTERS},
        }
        keyed = None
        if self.state is not None and self.state.num_rows:
            table = self.state.select(self._state_columns())
            if self.key_names:
                hashes = partition.hash_columns(table, self.key_names)
                kg = pa.array(partition.key_groups(hashes, self.ctx.max_parallelism), type=pa.int32())
            else:
                first, _ = partition.key_group_range(
                    self.ctx.subtask_index, self.ctx.max_parallelism, self.ctx.parallelism)
                kg = pa.array(np.full(table.num_rows, first, dtype=np.int32))
            keyed = table.append_column(pa.field(_KEY_GROUP, pa.int32(), nullable=False), kg)
            meta = {_META_WATERMARK: b"" if self.watermark is None else str(self.watermark).encode()}
            if schema_bytes is not None:
                meta[_META_SCHEMA] = base64.b64encode(schema_bytes)
            keyed = keyed.replace_schema_metadata(meta)
        return {"keyed": keyed, "state": state}

    def restore_state(self, keyed, state, checkpoint_id):
        """Merge restored partials into this (fresh) operator; take watermark and counters.

        ``keyed`` may hold the key groups of several old subtasks; ``state`` is this
        subtask's own dict or None (a new subtask after a rescale): then the watermark
        and input schema come from the keyed table's metadata.
        """
        name = self.ctx.operator_name
        state = state or {}
        meta = (keyed.schema.metadata or {}) if keyed is not None else {}
        schema_bytes = state.get("input_schema")
        if schema_bytes is None and _META_SCHEMA in meta:
            schema_bytes = base64.b64decode(meta[_META_SCHEMA])
        if schema_bytes is not None and self.schema is None:
            self._bind(pa.ipc.read_schema(pa.py_buffer(schema_bytes)))
        watermark = state.get("watermark")
        if watermark is None and meta.get(_META_WATERMARK):
            watermark = int(meta[_META_WATERMARK])
        if watermark is not None and (self.watermark is None or int(watermark) > self.watermark):
            self.watermark = int(watermark)
        for counter in _COUNTERS:
            self.ctx.metrics[counter] = self.ctx.metrics.get(counter, 0) + int(state.get(counter) or 0)
        if keyed is None or keyed.num_rows == 0:
            return
        wanted = self._state_columns()
        missing = [c for c in wanted if c not in keyed.column_names]
        if missing:
            raise OperatorError(
                f"window {name!r}: checkpoint {checkpoint_id} holds window state without columns {missing}; "
                f"expected {wanted + [_KEY_GROUP]} (was the window's key_by or aggregates changed?), "
                f"available: {keyed.column_names}"
            )
        if self.schema is None:
            raise OperatorError(
                f"window {name!r}: checkpoint {checkpoint_id} holds window state but neither its state "
                "dict nor the keyed table's metadata names the input schema"
            )
        restored = keyed.select(wanted).replace_schema_metadata(None)
        if self.state is not None:
            restored = restored.cast(self.state.schema)
        self.pending.append(restored)
        self.pending_rows += restored.num_rows
        self._compact(force=True)
        log.debug("window %r restored %d open (key, window) partials from checkpoint %s, watermark %s",
                  name, self.state.num_rows, checkpoint_id, self.watermark)

    # -- introspection ---------------------------------------------------------------

    @property
    def open_windows(self):
        """Number of (key, window) partial rows held (after merging pending input)."""
        self._compact()
        return 0 if self.state is None else self.state.num_rows

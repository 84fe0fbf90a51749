"""Keyed (or global) windows: tumbling, sliding, cumulative, given by the input; on event
time or processing time.

Parameters::

    {"size": int, "slide": int | None, "step": int | None, "time_column": str,
     "window_columns": [start, end] | None, "time": "event" | "processing",
     "aggregates": [[column, fn(, options)], ...]}

keys from the node's ``key_by`` (none: one global window per interval; the Stream API
runs such a window at parallelism 1). Windows, in units of the time column:

* tumbling (``size``): ``[k * size, (k + 1) * size)``;
* sliding (``size``, ``slide``): starts at multiples of ``slide``, each ``size`` long;
* cumulative (``step``, ``size``): Flink's CUMULATE: every ``step`` a window
  ``[k * size, k * size + j * step)`` ends, growing until ``size``;
* given (``window_columns``): each row names its window (``[start, end)``), e.g. the
  output of another window: a second aggregation per window (cascading windows);
* ``time="processing"``: a row's time is the task's clock when it arrives (ms);
  windows fire when the clock passes their end (a timer wakes the task without input).

State: partial aggregates (:mod:`~sabot.runtime.operators.partials`) per (keys, window),
never rows. A batch is first reduced per *pane* (the gcd of size and slide, or the
step), so a sliding window multiplies the small per-pane partials, not the rows.
Windows whose end is ``<= watermark`` (or ``<=`` the clock) are emitted and dropped;
the end of the input fires every window.

Late data: a record whose every window has fired already (its last window ends at or
before the watermark) is late: it goes to the side output ``"late"`` (the Stream API's
``late_records()``) and is counted in ``metrics["late_records_dropped"]``. A sliding
window's record can be late for some windows only; it still counts in the open ones.
Rows with a null event time are counted in ``metrics["null_time_records_dropped"]``.

Output per fired window: the key columns, ``window_start``, ``window_end`` (the time
column's type; timestamp[ms] on processing time), then one column per aggregate,
ordered by window end, window start, then keys.
"""

from __future__ import annotations

import base64
import json
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import OperatorError, UnsupportedStateType
from sabot.execution.operator_spec import check_aggregate_types, parse_aggregates
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.aggregate_arrow import PartialState, decode_key_column
from sabot.runtime.operators.base import Operator, SideOutput, register
from sabot.runtime.operators.partials import Partials

log = logging.getLogger(__name__)

WINDOW_FUNCTIONS = ("count", "sum", "min", "max", "mean", "count_distinct", "first_value", "last_value",
                    "max_by", "min_by")
_WS, _WE, _PANE = "__ws", "__we", "__pane"
_COUNTERS = ("late_records_dropped", "null_time_records_dropped")
_PROC_TYPE = pa.timestamp("ms")


def int_param(name, what, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise OperatorError(f"window {name!r}: {what} must be a positive integer "
                            f"(in units of the time column), got {value!r}")
    return value


def event_times(column):
    """A time column as int64 (timestamps and dates: their stored integer)."""
    if not pa.types.is_int64(column.type):
        column = column.cast(pa.int64())
    return column


class WindowAssigner:
    """Which windows a time belongs to: tumbling, sliding or cumulative (vectorised)."""

    def __init__(self, name, size, slide, step):
        self.size = int_param(name, "size", size)
        self.step = int_param(name, "step", step, allow_none=True)
        if self.step is not None:
            if slide is not None:
                raise OperatorError(f"window {name!r}: give either slide (sliding) or step (cumulative), not both")
            if self.size % self.step:
                raise OperatorError(f"window {name!r}: a cumulative window's size ({self.size}) must be a "
                                    f"multiple of its step ({self.step})")
            self.slide, self.pane = self.size, self.step
        else:
            self.slide = self.size if slide is None else int_param(name, "slide", slide)
            self.pane = math.gcd(self.size, self.slide)

    def last_end(self, ts):
        """The end of the last window holding each time (late if <= the watermark)."""
        return np.floor_divide(ts, self.slide) * self.slide + self.size

    def windows(self, pane, watermark):
        """``[(rows, start, end), ...]``: the windows of each pane start, skipping fired ones."""
        out = []
        if self.step is not None:
            base = np.floor_divide(pane, self.size) * self.size
            for j in range(1, self.size // self.step + 1):
                end = base + j * self.step
                ok = pane < end
                if watermark is not None:
                    ok &= end > watermark
                out.append((ok, base, end))
            return out
        first = np.floor_divide(pane, self.slide) * self.slide
        for j in range(-(-self.size // self.slide)):
            start = first - j * self.slide
            ok = pane < start + self.size
            if watermark is not None:
                ok &= start + self.size > watermark
            out.append((ok, start, start + self.size))
        return out


@register("window")
class WindowOperator(Operator):
    """Windowed aggregation (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        p = self.params
        self.processing_time = p.get("time", "event") == "processing"
        if p.get("time", "event") not in ("event", "processing"):
            raise OperatorError(f"window {name!r}: time must be 'event' or 'processing', got {p.get('time')!r}")
        self.window_columns = list(p["window_columns"]) if p.get("window_columns") else None
        self.assigner = None if self.window_columns else WindowAssigner(name, p.get("size"), p.get("slide"),
                                                                          p.get("step"))
        self.time_column = p.get("time_column")
        if not self.processing_time and not self.window_columns and (
                not isinstance(self.time_column, str) or not self.time_column):
            raise OperatorError(f"window {name!r} needs parameter 'time_column' (the event-time column)")
        self.keys = list(ctx.operator.get("key_by") or [])
        aggregates = p.get("aggregates")
        if not aggregates:
            raise OperatorError(f"window {name!r} needs 'aggregates': [[column, fn], ...] with fn in {WINDOW_FUNCTIONS}")
        for spec in aggregates:
            if not isinstance(spec, (list, tuple)) or len(spec) not in (2, 3):
                raise OperatorError(f"window {name!r}: aggregate {spec!r} is not a [column, fn] pair")
            if spec[1] not in WINDOW_FUNCTIONS:
                raise OperatorError(f"window {name!r}: unknown aggregate function {spec[1]!r} for column "
                                    f"{spec[0]!r}; expected one of {WINDOW_FUNCTIONS}")
            if spec[0] == "*" and spec[1] != "count":
                raise OperatorError(f"window {name!r}: column '*' only works with 'count', not {spec[1]!r}")
        try:
            self.items = parse_aggregates(aggregates)
        except ValueError as exc:
            raise OperatorError(f"window {name!r}: {exc}") from exc
        self.key_names = [f"__k{i}" for i in range(len(self.keys))]
        self.schema = None
        self.time_type = None
        self.watermark = None  # int event time; None = no watermark yet (-inf)
        self.store = None
        self.seq = 0
        self._next_end = None  # the earliest open window end (processing-time timer)
        for metric in _COUNTERS:
            ctx.metrics.setdefault(metric, 0)

    # -- schema ------------------------------------------------------------------------

    def _bind(self, schema):
        """Check the first batch's schema against the parameters (names the missing columns)."""
        name = self.ctx.operator_name
        wanted = [("key_by", k) for k in self.keys]
        if self.window_columns:
            wanted = [("window_columns", c) for c in self.window_columns] + wanted
        elif not self.processing_time:
            wanted = [("time_column", self.time_column)] + wanted
        wanted += [("aggregate", c) for it in self.items for c in it.input_columns()]
        missing = [f"{what} {col!r}" for what, col in wanted if schema.get_field_index(col) < 0]
        if missing:
            raise OperatorError(
                f"window {name!r}: {', '.join(dict.fromkeys(missing))} not in the input; "
                f"available columns: {schema.names}")
        if self.processing_time:
            self.time_type = _PROC_TYPE
        else:
            col = self.window_columns[0] if self.window_columns else self.time_column
            t = schema.field(col).type
            if not (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
                raise OperatorError(f"window {name!r}: time column {col!r} has type {t}; expected an integer "
                                    "or timestamp column")
            self.time_type = t
        try:
            check_aggregate_types(schema, self.params["aggregates"], f"window {name!r}")
        except UnsupportedStateType as exc:
            raise OperatorError(str(exc)) from exc
        self.schema = schema
        self.pane_partials = Partials(self.items, schema, self.key_names + [_PANE])
        self.store = PartialState(Partials(self.items, schema, self.key_names + [_WS, _WE]))

    # -- input -------------------------------------------------------------------------

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        out = []
        if self.window_columns:
            ws = event_times(batch.column(self.window_columns[0]))
            we = event_times(batch.column(self.window_columns[1]))
            batch, ts, late_rows = self._drop_late(batch, ws, we.to_numpy(zero_copy_only=False))
            if late_rows is not None:
                out.append(late_rows)
            if batch.num_rows == 0:
                return out
            keys = self._key_arrays(batch)
            partial, distinct = self.store.partials.unit(
                batch, keys + [ts, event_times(batch.column(self.window_columns[1]))], self._seq(batch))
            self._add(partial, distinct)
            return out
        if self.processing_time:
            ts = pa.array(np.full(batch.num_rows, self.ctx.clock.now_ms(), dtype=np.int64))
        else:
            ts = event_times(batch.column(self.time_column))
        batch, ts, late_rows = self._drop_late(batch, ts, None)
        if late_rows is not None:
            out.append(late_rows)
        if batch.num_rows == 0:
            return out
        pane = np.floor_divide(ts.to_numpy(zero_copy_only=False), self.assigner.pane) * self.assigner.pane
        partial, distinct = self.pane_partials.unit(batch, self._key_arrays(batch) + [pa.array(pane)],
                                                    self._seq(batch))
        self._add(*self._panes_to_windows(partial, distinct))
        return out

    def _seq(self, batch):
        seq = np.arange(self.seq, self.seq + batch.num_rows, dtype=np.int64)
        self.seq += batch.num_rows
        return seq

    def _key_arrays(self, batch):
        return [decode_key_column(batch.column(k)) for k in self.keys]

    def _drop_late(self, batch, ts, last_end):
        """Drop null times (counted) and late rows (to the side output); (batch, ts, SideOutput)."""
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        if ts.null_count:
            valid = ts.is_valid()
            self.ctx.metrics["null_time_records_dropped"] += ts.null_count
            batch, ts = batch.filter(valid), ts.filter(valid)
            if last_end is not None:
                last_end = last_end[valid.to_numpy(zero_copy_only=False)]
        if self.watermark is None or self.processing_time or batch.num_rows == 0:
            return batch, ts, None
        t = ts.to_numpy(zero_copy_only=False)
        if last_end is None:
            last_end = self.assigner.last_end(t)
        late = last_end <= self.watermark
        if self.assigner is not None and self.assigner.size < self.assigner.slide:
            late &= t < last_end  # a time between two windows belongs to none: dropped, not late
        n_late = int(np.count_nonzero(late))
        if not n_late:
            return batch, ts, None
        self.ctx.metrics["late_records_dropped"] += n_late
        keep = pa.array(~late)
        return batch.filter(keep), ts.filter(keep), SideOutput("late", batch.filter(pa.array(late)))

    def _panes_to_windows(self, partial, distinct):
        """Copy each pane's partials (and distinct rows) to every window that contains the pane."""
        def expand(table):
            pane = table.column(_PANE).to_numpy()
            body = table.drop_columns([_PANE])
            pieces = []
            for ok, start, end in self.assigner.windows(pane, None if self.processing_time else self.watermark):
                if not ok.any():
                    continue
                start = np.broadcast_to(start, pane.shape)
                end = np.broadcast_to(end, pane.shape)
                sel = body if ok.all() else body.filter(pa.array(ok))
                pieces.append(sel.append_column(_WS, pa.array(start[ok])).append_column(_WE, pa.array(end[ok])))
            if not pieces:
                return None
            return pa.concat_tables(pieces)

        windows = expand(partial)
        if windows is None:
            return windows, {}
        names = self.store.partials.keys + self.store.partials.partial_names
        return windows.select(names), {c: expand(t) for c, t in distinct.items() if t is not None and t.num_rows}

    def _add(self, partial, distinct):
        if partial is None or partial.num_rows == 0:
            return
        if self.store.partials.distinct:
            for c, t in distinct.items():
                if t is not None:
                    distinct[c] = t.select(self.store.partials.keys + ["__v"] + [
                        f"__f{i}" for i in self.store.partials.distinct[c]])
        self.store.add(partial, distinct)
        first = pc.min(partial.column(_WE)).as_py()
        if self._next_end is None or first < self._next_end:
            self._next_end = first

    # -- output ------------------------------------------------------------------------

    def _to_int(self, timestamp):
        if isinstance(timestamp, (int, np.integer)) and not isinstance(timestamp, bool):
            return int(timestamp)
        if self.time_type is not None and pa.types.is_timestamp(self.time_type):
            return pa.scalar(timestamp, type=self.time_type).cast(pa.int64()).as_py()
        raise OperatorError(f"window {self.ctx.operator_name!r}: watermark {timestamp!r} is not an integer event time")

    def on_watermark(self, timestamp):
        if self.processing_time:
            return []
        timestamp = self._to_int(timestamp)
        if self.watermark is not None and timestamp <= self.watermark:
            return []
        self.watermark = timestamp
        return self._fire(timestamp)

    def next_processing_time(self):
        return self._next_end if self.processing_time else None

    def on_processing_time(self, now_ms):
        return self._fire(now_ms)

    def finish(self):
        """End of input: every remaining window fires."""
        return self._fire(None)

    def _fire(self, up_to):
        if self.store is None:
            return []
        self.store.compact()
        state = self.store.state
        if state is None or state.num_rows == 0:
            self._next_end = None
            return []
        if up_to is None:
            ready = np.ones(state.num_rows, dtype=bool)
        else:
            ready = state.column(_WE).to_numpy() <= up_to
            if not ready.any():
                self._next_end = int(state.column(_WE).to_numpy().min())
                return []
        fired = state.filter(pa.array(ready)) if not ready.all() else state
        rest = state.filter(pa.array(~ready)) if not ready.all() else None
        distinct_fired, distinct_rest = {}, {}
        for c, table in self.store.distinct.items():
            if table is None or table.num_rows == 0:
                distinct_fired[c] = distinct_rest[c] = table
                continue
            r = table.column(_WE).to_numpy() <= up_to if up_to is not None else np.ones(table.num_rows, bool)
            distinct_fired[c] = table.filter(pa.array(r))
            distinct_rest[c] = table.filter(pa.array(~r))
        self.store.replace(rest, distinct_rest)
        self._next_end = None if rest is None or rest.num_rows == 0 else int(rest.column(_WE).to_numpy().min())
        return self._emit(self.store.partials.finalize(fired, distinct_fired))

    def _emit(self, result):
        result = result.sort_by([(_WE, "ascending"), (_WS, "ascending")] + [(k, "ascending") for k in self.key_names])
        cols, names = [], []
        for k, key in zip(self.key_names, self.keys):
            cols.append(result.column(k))
            names.append(key)
        for internal, public in ((_WS, "window_start"), (_WE, "window_end")):
            col = result.column(internal)
            cols.append(col.cast(self.time_type) if col.type != self.time_type else col)
            names.append(public)
        for it in self.items:
            cols.append(result.column(it.name))
            names.append(it.name)
        table = pa.Table.from_arrays(cols, names=names).combine_chunks()
        return [b for b in table.to_batches() if b.num_rows]

    # -- checkpoints -------------------------------------------------------------------

    def _key_groups(self, table):
        if self.key_names:
            return pa.array(keyed_state.key_groups(keyed_state.key_hashes(table, self.key_names),
                                                   self.ctx.max_parallelism))
        return pa.array(np.full(table.num_rows, keyed_state.subtask_key_group(self.ctx), dtype=np.int32))

    def snapshot_state(self, checkpoint_id):
        """Open windows' partials as keyed state (a bundle); watermark, schema and the arrival
        counter in its meta; the counters in the subtask's state."""
        state = {name: int(self.ctx.metrics.get(name, 0)) for name in _COUNTERS}
        state["watermark"] = self.watermark
        if self.store is None or self.store.rows == 0:
            return {"keyed": None, "state": state}
        parts = {"windows": self.store.state.append_column(keyed_state.KEY_GROUP,
                                                           self._key_groups(self.store.state))}
        for c, table in self.store.distinct.items():
            if table is not None and table.num_rows:
                parts[f"distinct:{c}"] = table.append_column(keyed_state.KEY_GROUP, self._key_groups(table))
        meta = {"watermark": self.watermark, "seq": self.seq, "shape": self._shape(),
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode()}
        return {"keyed": keyed_state.bundle(parts, meta), "state": state}

    def restore_state(self, keyed, state, checkpoint_id):
        """Merge restored partials (maybe of several old subtasks) into this operator.

        The watermark is the smallest of the restored ones (``state`` is this subtask's
        own dict, or None for a new subtask of a rescale).
        """
        state = state or {}
        for counter in _COUNTERS:
            self.ctx.metrics[counter] = self.ctx.metrics.get(counter, 0) + int(state.get(counter) or 0)
        parts, metas = keyed_state.unbundle(keyed, f"window {self.ctx.operator_name!r}")
        watermark = keyed_state.min_meta(metas, "watermark")
        if watermark is None:
            watermark = state.get("watermark")
        if watermark is not None and (self.watermark is None or int(watermark) > self.watermark):
            self.watermark = int(watermark)
        if not parts:
            return
        shapes = {json.dumps(m.get("shape"), sort_keys=True) for m in metas}
        if shapes != {json.dumps(self._shape(), sort_keys=True)}:
            raise OperatorError(
                f"window {self.ctx.operator_name!r}: checkpoint {checkpoint_id} holds window state of another "
                f"shape ({sorted(shapes)}; this operator: {self._shape()}): was its key_by or were its "
                "aggregates changed?")
        if self.schema is None:
            schema_b64 = next((m["schema"] for m in metas if m.get("schema")), None)
            if schema_b64 is None:
                raise OperatorError(f"window {self.ctx.operator_name!r}: checkpoint {checkpoint_id} holds window "
                                    "state without its input schema")
            self._bind(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_b64))))
        self.seq = max(self.seq, keyed_state.max_meta(metas, "seq") or 0)
        distinct = {c: parts.get(f"distinct:{c}") for c in self.store.partials.distinct}
        if "windows" in parts:
            self._add(parts["windows"], {c: t for c, t in distinct.items() if t is not None})
        self.store.compact(force=True)

    def _shape(self):
        """What restored state must match: keys and aggregates (the partial columns follow)."""
        return {"keys": self.keys, "aggregates": [list(a) for a in self.params["aggregates"]]}

    # -- introspection ---------------------------------------------------------------

    @property
    def open_windows(self):
        """Number of (key, window) partial rows held (after merging pending input)."""
        return 0 if self.store is None else self.store.rows

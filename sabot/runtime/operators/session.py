"""Keyed event-time session windows: a key's records closer than ``gap`` form one session.

Parameters: ``{"kind": "session", "gap": int, "time_column": str, "aggregates": [...]}``;
keys from the node's ``key_by`` (none: sessions over everything, at parallelism 1).

A record at time t opens the window ``[t, t + gap)``; windows of one key that overlap or
touch merge (Flink's rule: a gap of exactly ``gap`` continues the session), so a
session is ``[first record, last record + gap)``. A session fires when the watermark
reaches its end, and at the end of the input.

Merging, late data: each batch's windows are merged with the key's open sessions and
with each other (one sort by key and start, a running maximum of the ends), so a record
that bridges two open sessions merges them (a late merge). A record whose merged session
would end at or before the watermark (it touches no open session and its own window
has passed) is late: side output ``"late"``, counted in
``metrics["late_records_dropped"]``. Order within a batch does not matter.

State: per open session its partial aggregates (:mod:`~sabot.runtime.operators.partials`),
never rows; keyed by key group in a bundle like the other windows.

Output per fired session: the keys, ``window_start``, ``window_end`` (the time column's
type), then the aggregates, ordered by end, start, keys.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow as pa

from sabot.errors import OperatorError, UnsupportedStateType
from sabot.execution.operator_spec import check_aggregate_types, parse_aggregates
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.aggregate_arrow import decode_key_column
from sabot.runtime.operators.base import Operator, SideOutput, register
from sabot.runtime.operators.keyed_state import group_ids
from sabot.runtime.operators.partials import Partials
from sabot.runtime.operators.window import event_times, int_param

_SS, _SE = "__ws", "__we"


def sessionize(key_columns, starts, ends):
    """Merge intervals ``[start, end]`` of equal keys that overlap or touch.

    Returns the merged ``(start, end)`` of every input interval.
    """
    n = len(starts)
    if n == 0:
        return starts, ends
    gid = group_ids(key_columns)[0] if key_columns else np.zeros(n, dtype=np.int64)
    order = np.lexsort((starts, gid))
    g, s, e = gid[order], starts[order], ends[order]
    new_group = np.concatenate(([True], g[1:] != g[:-1]))
    # the running maximum of the ends within each key: offset every key into its own band
    base = s.min()
    span = int(e.max()) - int(base) + 1
    rank = np.cumsum(new_group) - 1
    if span * (int(rank[-1]) + 1) < (1 << 62):
        run = np.maximum.accumulate(rank * span + (e - base)) - rank * span + base
    else:  # bands would overflow int64: one key at a time
        run = e.copy()
        bounds = np.flatnonzero(np.concatenate((new_group, [True])))
        for a, b in zip(bounds[:-1], bounds[1:]):
            run[a:b] = np.maximum.accumulate(e[a:b])
    new_session = new_group.copy()
    new_session[1:] |= s[1:] > run[:-1]
    sid = np.cumsum(new_session) - 1
    firsts = np.flatnonzero(new_session)
    merged_start = s[firsts][sid]
    merged_end = np.maximum.reduceat(e, firsts)[sid]
    out_s, out_e = np.empty_like(starts), np.empty_like(ends)
    out_s[order], out_e[order] = merged_start, merged_end
    return out_s, out_e


@register("window", kind="session")
class SessionWindow(Operator):
    """Session windows with partial aggregates (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        p = self.params
        name = ctx.operator_name
        self.gap = int_param(name, "gap", p.get("gap"))
        self.time_column = p.get("time_column")
        if not isinstance(self.time_column, str) or not self.time_column:
            raise OperatorError(f"session window {name!r} needs parameter 'time_column'")
        self.keys = list(ctx.operator.get("key_by") or [])
        try:
            self.items = parse_aggregates(p.get("aggregates") or [])
        except ValueError as exc:
            raise OperatorError(f"session window {name!r}: {exc}") from exc
        if not self.items:
            raise OperatorError(f"session window {name!r} needs 'aggregates'")
        self.key_names = [f"__k{i}" for i in range(len(self.keys))]
        self.schema = self.time_type = None
        self.partials = None
        self.state = None
        self.distinct = {}
        self.watermark = None
        self.seq = 0
        for metric in ("late_records_dropped", "null_time_records_dropped"):
            ctx.metrics.setdefault(metric, 0)

    def _bind(self, schema):
        name = self.ctx.operator_name
        wanted = [self.time_column] + self.keys + [c for it in self.items for c in it.input_columns()]
        missing = [c for c in dict.fromkeys(wanted) if schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(f"session window {name!r}: column(s) {missing} not in the input; "
                                f"available columns: {schema.names}")
        t = schema.field(self.time_column).type
        if not (pa.types.is_integer(t) or pa.types.is_timestamp(t)):
            raise OperatorError(f"session window {name!r}: time column {self.time_column!r} has type {t}")
        try:
            check_aggregate_types(schema, self.params["aggregates"], f"session window {name!r}")
        except UnsupportedStateType as exc:
            raise OperatorError(str(exc)) from exc
        self.schema, self.time_type = schema, t
        self.partials = Partials(self.items, schema, self.key_names + [_SS, _SE])
        self.distinct = {c: None for c in self.partials.distinct}

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        ts = event_times(batch.column(self.time_column))
        if ts.null_count:
            self.ctx.metrics["null_time_records_dropped"] += ts.null_count
            batch, ts = batch.filter(ts.is_valid()), ts.filter(ts.is_valid())
        if batch.num_rows == 0:
            return []
        t = ts.to_numpy(zero_copy_only=False)
        keys = [decode_key_column(batch.column(k)) for k in self.keys]
        held = 0 if self.state is None else self.state.num_rows
        key_cols = [pa.chunked_array(([] if self.state is None else self.state.column(kn).chunks) + [k],
                                     type=k.type) for kn, k in zip(self.key_names, keys)]
        starts = np.concatenate(([] if self.state is None else [self.state.column(_SS).to_numpy()]) + [t])
        ends = np.concatenate(([] if self.state is None else [self.state.column(_SE).to_numpy()]) + [t + self.gap])
        new_s, new_e = sessionize(key_cols, starts.astype(np.int64), ends.astype(np.int64))
        out = []
        row_end = new_e[held:]
        if self.watermark is not None:
            late = row_end <= self.watermark
            if late.any():
                self.ctx.metrics["late_records_dropped"] += int(np.count_nonzero(late))
                out.append(SideOutput("late", batch.filter(pa.array(late))))
                keep = pa.array(~late)
                batch, t, keys = batch.filter(keep), t[~late], [k.filter(keep) for k in keys]
                new_s = np.concatenate((new_s[:held], new_s[held:][~late]))
                new_e = np.concatenate((new_e[:held], row_end[~late]))
        seq = np.arange(self.seq, self.seq + batch.num_rows, dtype=np.int64)
        self.seq += batch.num_rows
        unit, distinct = self.partials.unit(batch, keys + [pa.array(new_s[held:]), pa.array(new_e[held:])], seq)
        tables = [unit]
        if self.state is not None:
            old = self.state
            remapped = old.set_column(old.schema.get_field_index(_SS), _SS, pa.array(new_s[:held])).set_column(
                old.schema.get_field_index(_SE), _SE, pa.array(new_e[:held]))
            tables.insert(0, remapped)
            for c, table in self.distinct.items():
                if table is not None and table.num_rows:
                    at = self.partials.align(old, table.select(self.partials.keys))
                    table = table.set_column(table.schema.get_field_index(_SS), _SS, pa.array(new_s[:held][at]))
                    table = table.set_column(table.schema.get_field_index(_SE), _SE, pa.array(new_e[:held][at]))
                    self.distinct[c] = table
        self.state = self.partials.merge(pa.concat_tables(tables))
        for c in self.distinct:
            parts = [x for x in (self.distinct[c], distinct.get(c)) if x is not None and x.num_rows]
            self.distinct[c] = self.partials.merge_distinct(c, pa.concat_tables(parts)) if parts else None
        return out

    def on_watermark(self, timestamp):
        if not isinstance(timestamp, (int, np.integer)):
            timestamp = pa.scalar(timestamp, type=self.time_type).cast(pa.int64()).as_py()
        if self.watermark is not None and timestamp <= self.watermark:
            return []
        self.watermark = int(timestamp)
        return self._fire(self.watermark)

    def finish(self):
        return self._fire(None)

    def _fire(self, up_to):
        if self.state is None or self.state.num_rows == 0:
            return []
        ready = self.state.column(_SE).to_numpy() <= up_to if up_to is not None else \
            np.ones(self.state.num_rows, dtype=bool)
        if not ready.any():
            return []
        fired, self.state = self.state.filter(pa.array(ready)), self.state.filter(pa.array(~ready))
        fired_distinct = {}
        for c, table in self.distinct.items():
            if table is None:
                fired_distinct[c] = None
                continue
            r = table.column(_SE).to_numpy() <= up_to if up_to is not None else np.ones(table.num_rows, bool)
            fired_distinct[c], self.distinct[c] = table.filter(pa.array(r)), table.filter(pa.array(~r))
        result = self.partials.finalize(fired, fired_distinct).sort_by(
            [(_SE, "ascending"), (_SS, "ascending")] + [(k, "ascending") for k in self.key_names])
        cols = [result.column(k) for k in self.key_names]
        cols += [result.column(_SS).cast(self.time_type), result.column(_SE).cast(self.time_type)]
        cols += [result.column(it.name) for it in self.items]
        names = self.keys + ["window_start", "window_end"] + [it.name for it in self.items]
        table = pa.Table.from_arrays(cols, names=names).combine_chunks()
        return [b for b in table.to_batches() if b.num_rows]

    # -- checkpoints -------------------------------------------------------------------

    def _kg(self, table):
        if self.key_names:
            return pa.array(keyed_state.key_groups(keyed_state.key_hashes(table, self.key_names),
                                                   self.ctx.max_parallelism))
        return pa.array(np.full(table.num_rows, keyed_state.subtask_key_group(self.ctx), dtype=np.int32))

    def _shape(self):
        return {"keys": self.keys, "gap": self.gap, "aggregates": [list(a) for a in self.params["aggregates"]]}

    def snapshot_state(self, checkpoint_id):
        if self.state is None or self.state.num_rows == 0:
            return None if self.watermark is None else {"keyed": None, "state": {"watermark": self.watermark}}
        parts = {"sessions": self.state.append_column(keyed_state.KEY_GROUP, self._kg(self.state))}
        for c, table in self.distinct.items():
            if table is not None and table.num_rows:
                parts[f"distinct:{c}"] = table.append_column(keyed_state.KEY_GROUP, self._kg(table))
        meta = {"watermark": self.watermark, "seq": self.seq, "shape": self._shape(),
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode()}
        return {"keyed": keyed_state.bundle(parts, meta), "state": {"watermark": self.watermark}}

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"session window {self.ctx.operator_name!r}")
        watermark = keyed_state.min_meta(metas, "watermark")
        if watermark is None and state:
            watermark = state.get("watermark")
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = int(watermark)
        if not parts:
            return
        if any(json.dumps(m.get("shape"), sort_keys=True) != json.dumps(self._shape(), sort_keys=True)
               for m in metas):
            raise OperatorError(f"session window {self.ctx.operator_name!r}: checkpoint {checkpoint_id} holds "
                                "state of another shape (key_by, gap or aggregates changed)")
        if self.schema is None:
            encoded = next(m["schema"] for m in metas if m.get("schema"))
            self._bind(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded))))
        self.seq = max(self.seq, keyed_state.max_meta(metas, "seq") or 0)
        sessions = parts.get("sessions")
        if sessions is not None:
            tables = [self.state, sessions] if self.state is not None else [sessions]
            self.state = self.partials.merge(pa.concat_tables(tables))
        for c in self.distinct:
            restored = parts.get(f"distinct:{c}")
            if restored is not None:
                have = [x for x in (self.distinct[c], restored) if x is not None]
                self.distinct[c] = self.partials.merge_distinct(c, pa.concat_tables(have))

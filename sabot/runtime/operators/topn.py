"""Top-N per key, or per key and window (SQL's ``ROW_NUMBER() / RANK() / DENSE_RANK()
OVER (PARTITION BY keys ORDER BY ...) <= N``).

Parameters::

    {"order_by": [[column, "ascending" | "descending"], ...], "n": int,
     "rank": "row_number" | "rank" | "dense_rank", "rank_column": str | None,
     "emit": "final" | "updates",
     # per window: "size", "slide" | None, "time_column"  or  "window_columns": [start, end]}

keys from the node's ``key_by`` (none: one ranking over everything; the Stream API runs
it at parallelism 1).

Order and ties: rows are ranked by ``order_by`` (nulls last, in either direction), then
by arrival at this operator, earlier first: with ``row_number`` equal values get
consecutive numbers in arrival order; ``rank`` gives them one rank and skips the next
ones (1, 1, 3); ``dense_rank`` gives them one rank and does not skip (1, 1, 2). Arrival
order survives checkpoints and rescales (every held row keeps its sequence number). To
make ties deterministic when rows come from several upstream subtasks, add a column to
``order_by`` that breaks them (e.g. an event id).

Emission: ``emit="final"`` (the default) emits each key's top-N rows when the input ends;
``"updates"`` emits, after each batch, the current top-N rows of the keys it touched (an
upsert stream by key and rank; cost linear in the held rows per batch). Per window, a
window's top-N rows are emitted when the watermark reaches its end; late rows go to the
side output ``"late"``.

State: only candidate rows, at most the top N per key (more with ``rank`` ties): a row
that is not in its key's top N can never get back in. Each batch is reduced to its own
top N per key first; reduced batches are merged into the state when they outnumber it.
Held rows are keyed state by key group (a bundle), so the operator checkpoints,
restores at another parallelism and rescales live.

Output: the input columns, then ``window_start``, ``window_end`` (per window by
``size``), then the rank column if ``rank_column`` is given.
"""

from __future__ import annotations

import base64

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import OperatorError
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.aggregate_arrow import decode_key_column
from sabot.runtime.operators.base import Operator, SideOutput, register
from sabot.runtime.operators.keyed_state import group_ids
from sabot.runtime.operators.window import WindowAssigner, event_times

RANKS = ("row_number", "rank", "dense_rank")
_SEQ, _WS, _WE = "__sabot_seq", "__sabot_ws", "__sabot_we"  # internal columns next to the user's
_COMPACT_ROWS = 1 << 16


def _sorted_differs(column, idx):
    """For the rows in sort order ``idx``: True where the value differs from the previous row's."""
    v = column.take(pa.array(idx))
    if isinstance(v, pa.ChunkedArray):
        v = v.combine_chunks()
    if len(v) < 2:
        return np.zeros(max(len(v) - 1, 0), dtype=bool)
    a, b = v.slice(1), v.slice(0, len(v) - 1)
    ne = pc.not_equal(a, b)
    both_null = pc.and_(a.is_null(), b.is_null())
    one_null = pc.xor(a.is_null(), b.is_null())
    differs = pc.if_else(both_null, False, pc.if_else(one_null, True, ne))
    return differs.to_numpy(zero_copy_only=False).astype(bool)


def rank_rows(table, group_columns, order_by, method, n):
    """Rows of ``table`` (with a ``__seq`` column) within the top ``n`` of their group.

    Returns ``(row indices, ranks)`` in order of group, then rank.
    """
    rows = table.num_rows
    if rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    gid, _ = group_ids(group_columns) if group_columns else (np.zeros(rows, dtype=np.int64), None)
    cols = {"__g": pa.array(gid)}
    keys = [("__g", "ascending")]
    for i, (col, direction) in enumerate(order_by):
        cols[f"__o{i}"] = table.column(col)
        keys.append((f"__o{i}", direction))
    cols[_SEQ] = table.column(_SEQ)
    keys.append((_SEQ, "ascending"))
    idx = pc.sort_indices(pa.table(cols), sort_keys=keys).to_numpy()
    g = gid[idx]
    pos = np.arange(rows, dtype=np.int64)
    new_group = np.concatenate(([True], g[1:] != g[:-1]))
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    if method == "row_number":
        rank = pos - group_start + 1
    else:
        new_value = new_group.copy()
        for col, _ in order_by:
            new_value[1:] |= _sorted_differs(table.column(col), idx)
        if method == "rank":
            rank = np.maximum.accumulate(np.where(new_value, pos, 0)) - group_start + 1
        else:
            c = np.cumsum(new_value)
            rank = c - c[group_start] + 1
    keep = rank <= n
    return idx[keep], rank[keep]


@register("top_n")
class TopN(Operator):
    """Top-N rows per key (or key and window); see the module docs."""

    def __init__(self, ctx):
        super().__init__(ctx)
        p = self.params
        name = ctx.operator_name
        self.order_by = [list(x) for x in p.get("order_by") or []]
        if not self.order_by:
            raise OperatorError(f"top_n {name!r} needs order_by: [[column, 'ascending' | 'descending'], ...]")
        for col, direction in self.order_by:
            if direction not in ("ascending", "descending"):
                raise OperatorError(f"top_n {name!r}: order of {col!r} must be 'ascending' or 'descending'")
        self.n = p.get("n")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise OperatorError(f"top_n {name!r}: n must be a positive integer, got {self.n!r}")
        self.method = p.get("rank", "row_number")
        if self.method not in RANKS:
            raise OperatorError(f"top_n {name!r}: rank must be one of {RANKS}, got {self.method!r}")
        self.rank_column = p.get("rank_column")
        self.emit = p.get("emit", "final")
        self.keys = list(ctx.operator.get("key_by") or [])
        self.window_columns = p.get("window_columns")
        self.windowed = bool(self.window_columns) or p.get("size") is not None
        self.assigner = WindowAssigner(name, p["size"], p.get("slide"), None) if p.get("size") is not None else None
        self.time_column = p.get("time_column")
        self.schema = None
        self.state = None
        self.pending, self.pending_rows = [], 0
        self.seq = 0
        self.watermark = None
        ctx.metrics.setdefault("late_records_dropped", 0)

    def _group_columns(self, table):
        cols = [table.column(k) for k in self.keys]
        if self.windowed:
            cols += [table.column(_WS), table.column(_WE)]
        return cols

    def _bind(self, schema):
        wanted = self.keys + [c for c, _ in self.order_by] + (list(self.window_columns or [])) + (
            [self.time_column] if self.assigner else [])
        missing = [c for c in wanted if schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(f"top_n {self.ctx.operator_name!r}: column(s) {missing} not in the input; "
                                f"available columns: {schema.names}")
        self.schema = schema

    # -- input -------------------------------------------------------------------------

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        table = pa.Table.from_batches([batch])
        for k in self.keys:
            col = table.column(k)
            if pa.types.is_dictionary(col.type):
                table = table.set_column(table.schema.get_field_index(k), k, decode_key_column(col))
        table = table.append_column(_SEQ, pa.array(np.arange(self.seq, self.seq + table.num_rows, dtype=np.int64)))
        self.seq += table.num_rows
        out = []
        if self.windowed:
            table, late = self._assign_windows(table)
            if late is not None:
                out.append(late)
            if table is None or table.num_rows == 0:
                return out
        idx, _ = rank_rows(table, self._group_columns(table), self.order_by, self.method, self.n)
        reduced = table.take(pa.array(idx)) if len(idx) != table.num_rows else table
        self.pending.append(reduced)
        self.pending_rows += reduced.num_rows
        if self.emit == "updates" and not self.windowed:
            self._compact()
            return out + self._emit(self.state, touched=reduced)
        if self.pending_rows > max(_COMPACT_ROWS, 0 if self.state is None else self.state.num_rows):
            self._compact()
        return out

    def _assign_windows(self, table):
        w = self.watermark
        if self.window_columns:
            ws = event_times(table.column(self.window_columns[0])).to_numpy(zero_copy_only=False)
            we = event_times(table.column(self.window_columns[1])).to_numpy(zero_copy_only=False)
            late = we <= w if w is not None else np.zeros(len(we), dtype=bool)
            pieces = [(~late, ws, we)]
        else:
            t = event_times(table.column(self.time_column)).to_numpy(zero_copy_only=False)
            late = self.assigner.last_end(t) <= w if w is not None else np.zeros(len(t), dtype=bool)
            pieces = [(ok & ~late, np.broadcast_to(s, t.shape), np.broadcast_to(e, t.shape))
                      for ok, s, e in self.assigner.windows(t, w)]
        side = None
        if late.any():
            self.ctx.metrics["late_records_dropped"] += int(np.count_nonzero(late))
            rows = table.filter(pa.array(late)).drop_columns([_SEQ]).combine_chunks()
            side = SideOutput("late", rows.to_batches()[0])
        parts = [table.filter(pa.array(ok)).append_column(_WS, pa.array(s[ok])).append_column(_WE, pa.array(e[ok]))
                 for ok, s, e in pieces if ok.any()]
        return (pa.concat_tables(parts) if parts else None), side

    def _compact(self):
        if not self.pending:
            return
        tables = ([self.state] if self.state is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        merged = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        idx, _ = rank_rows(merged, self._group_columns(merged), self.order_by, self.method, self.n)
        self.state = merged.take(pa.array(idx))

    # -- output ------------------------------------------------------------------------

    def _emit(self, table, touched=None):
        if table is None or table.num_rows == 0:
            return []
        if touched is not None:
            groups = [pa.chunked_array(a.chunks + b.chunks, type=a.type)
                      for a, b in zip(self._group_columns(table), self._group_columns(touched))]
            gid, _ = group_ids(groups) if groups else (np.zeros(table.num_rows + touched.num_rows, np.int64), None)
            hit = np.isin(gid[:table.num_rows], gid[table.num_rows:])
            table = table.filter(pa.array(hit))
        idx, rank = rank_rows(table, self._group_columns(table), self.order_by, self.method, self.n)
        table = table.take(pa.array(idx))
        names = [c for c in self.schema.names]
        cols = [table.column(c) for c in names]
        if self.assigner is not None:
            t = self.schema.field(self.time_column).type
            cols += [table.column(_WS).cast(t), table.column(_WE).cast(t)]
            names += ["window_start", "window_end"]
        if self.rank_column:
            cols.append(pa.array(rank, pa.int64()))
            names.append(self.rank_column)
        out = pa.Table.from_arrays(cols, names=names)
        return [b for b in out.combine_chunks().to_batches() if b.num_rows]

    def on_watermark(self, timestamp):
        if not isinstance(timestamp, (int, np.integer)):
            timestamp = pa.scalar(timestamp).cast(pa.int64()).as_py()
        if self.watermark is not None and timestamp <= self.watermark:
            return []
        self.watermark = int(timestamp)
        if not self.windowed:
            return []
        return self._fire(self.watermark)

    def _fire(self, up_to):
        self._compact()
        if self.state is None or self.state.num_rows == 0:
            return []
        ready = self.state.column(_WE).to_numpy() <= up_to if up_to is not None else \
            np.ones(self.state.num_rows, dtype=bool)
        if not ready.any():
            return []
        fired = self.state.filter(pa.array(ready))
        self.state = self.state.filter(pa.array(~ready))
        out = self._emit(fired)
        return out

    def finish(self):
        if self.windowed:
            return self._fire(None)
        if self.emit == "updates":
            return []
        self._compact()
        return self._emit(self.state)

    # -- checkpoints -------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id):
        self._compact()
        meta = {"watermark": self.watermark, "seq": self.seq}
        if self.state is None or self.state.num_rows == 0:
            return {"keyed": None, "state": None} if self.watermark is None else {
                "keyed": None, "state": {"watermark": self.watermark}}
        if self.keys:
            kg = keyed_state.key_groups(keyed_state.key_hashes(self.state, self.keys), self.ctx.max_parallelism)
        else:
            kg = np.full(self.state.num_rows, keyed_state.subtask_key_group(self.ctx), dtype=np.int32)
        meta["schema"] = base64.b64encode(self.schema.serialize().to_pybytes()).decode()
        keyed = keyed_state.bundle({"rows": self.state.append_column(keyed_state.KEY_GROUP, pa.array(kg))}, meta)
        return {"keyed": keyed, "state": {"watermark": self.watermark}}

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"top_n {self.ctx.operator_name!r}")
        watermark = keyed_state.min_meta(metas, "watermark")
        if watermark is None and state:
            watermark = state.get("watermark")
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = int(watermark)
        self.seq = max(self.seq, keyed_state.max_meta(metas, "seq") or 0)
        rows = parts.get("rows")
        if rows is None or rows.num_rows == 0:
            return
        if self.schema is None:
            encoded = next(m["schema"] for m in metas if m.get("schema"))
            self._bind(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded))))
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        self._compact()

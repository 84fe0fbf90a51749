"""Stream-stream joins: regular (with state retention), interval and window joins.

Parameters (``kind`` selects the join)::

    {"kind": "regular" | "interval" | "window", "how": "inner" | "left" | "right" | "full",
     "left": upstream operator id, "right": upstream operator id,
     "left_on": [...], "right_on": [...], "left_names": [...], "right_names": [...],
     "left_schema": b64, "right_schema": b64, "where": b64 expression | None,
     # regular:  "ttl": int | None, "left_time": col, "right_time": col
     # interval: "left_time", "right_time", "lower": int, "upper": int
     # window:   "size", "slide" | None, "left_time", "right_time"
     #           or "left_window": [start, end], "right_window": [start, end]}

Each input edge is HASH-partitioned by its own key columns (``input_key_by``), so
equal keys of both sides meet in one subtask. Keys with a null never match (SQL).
Output rows: the left input's columns (``left_names``), then the right's
(``right_names``; the Stream API suffixes clashing names), then for a window join by
``size`` ``window_start`` and ``window_end``. ``where`` is a residual condition over
the output columns (SQL's non-equi ``ON`` part): a pair that fails it is no match.

* **Regular join.** Every row probes the other side's rows held for its key (a
  vectorised hash probe, :class:`~sabot.runtime.operators.keyed_rows.KeyedRows`), the
  matches are emitted at once, then the row is held. Retention: with ``ttl`` a row is
  dropped once the watermark reaches its time + ttl (event time, deterministic); without
  it rows are held for ever. Outer joins emit a row's null-padded form when it leaves the
  state unmatched: when it expires, or at the end of the input (so on a bounded input the
  result is the SQL join's).
* **Interval join**: ``left.time BETWEEN right.time + lower AND right.time + upper``
  (both inclusive), with equal keys. A row is held while a future row of the other side
  (one not behind the watermark) could still match it: a left row until the watermark
  passes ``time - lower``, a right row until it passes ``time + upper``. A row that
  arrives behind that point still matches what is held, and is not held itself.
* **Window join**: rows of both sides in the same window (tumbling / sliding by
  ``size``, or the window named by the ``*_window`` columns, e.g. two window
  aggregates' outputs) with equal keys; a window's pairs (and, for outer joins, its
  unmatched rows) are emitted when the watermark reaches its end. A row whose every
  window has fired is late: side output ``"late"``, ``metrics["late_records_dropped"]``.

* **Over changelogs** (``"changelog": True``, set by the Stream API when an input has the
  ``$op`` column; regular inner joins only): each input row adds (``+I``/``+U``) or withdraws
  (``-U``/``-D``) a held row; a withdrawn row leaves the state (one held copy equal in every
  column) and its current matches are emitted as ``-D`` rows, an added row's matches as
  ``+I`` rows (Flink's inner join does the same), in the output's ``$op`` column. A
  withdrawal of a row that is not held (never held, or dropped by the ttl) emits nothing.

Keyed state: each side's held rows as a table with a ``_key_group`` column (the key
groups of their join keys), bundled (:func:`keyed_state.bundle`) with the watermark in
the meta, so joins checkpoint, restore at another parallelism and rescale live.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sabot.errors import OperatorError
from sabot.execution.operator_spec import decode_expression, decode_schema, expression_columns, join_output_names
from sabot.runtime import changelog as cl
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.base import Operator, SideOutput, register
from sabot.runtime.operators.expressions import mask as where_mask
from sabot.runtime.operators.keyed_rows import KeyedRows, keys_equal, pairs_of
from sabot.runtime.operators.window import WindowAssigner, event_times

JOIN_KINDS = ("regular", "interval", "window")
HOW = ("inner", "left", "right", "full")
_NEVER = np.iinfo(np.int64).max
_WS, _WE = "__sabot_ws", "__sabot_we"  # a held row's window, next to the user's columns


class _Side:
    """One input of a join: its keys, output names, time column and held rows."""

    def __init__(self, name, params, outer):
        self.name = name
        self.on = list(params[f"{name}_on"])
        self.names = list(params[f"{name}_names"]) if params.get(f"{name}_names") else None
        self.time = params.get(f"{name}_time")
        self.window = params.get(f"{name}_window")
        self.outer = outer
        encoded = params.get(f"{name}_schema")
        self.schema = decode_schema(encoded) if encoded else None
        self.rows = KeyedRows({"matched": bool, "expire": np.int64})
        self.pending = []  # window joins: held rows (with __ws / __we) not yet fired
        self.checked = None

    def bind(self, schema, op_name):
        if self.checked is schema:
            return
        wanted = self.on + ([self.time] if self.time else []) + (list(self.window) if self.window else [])
        missing = [c for c in wanted if schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(f"join {op_name!r}: {self.name} input has no column(s) {missing}; "
                                f"available columns: {schema.names}")
        if self.schema is None:
            self.schema = schema
        self.checked = schema

    def times(self, table):
        return event_times(table.column(self.time)).to_numpy(zero_copy_only=False)

    def nulls(self, n):
        """n rows of nulls in this side's columns (the padding of the other side's unmatched rows)."""
        if self.schema is None:
            raise OperatorError(f"the {self.name} input's schema is unknown (no row came and the plan declared "
                                "none), so unmatched rows of the other side cannot be padded")
        return [pa.nulls(n, f.type) for f in self.schema]


def _key_arrays(table, cols):
    return [table.column(c) for c in cols]


@register("join", kind="regular")
@register("join", kind="interval")
@register("join", kind="window")
class StreamJoin(Operator):
    """A two-input join of streams (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        p = self.params
        name = ctx.operator_name
        self.kind = p.get("kind")
        self.how = p.get("how", "inner")
        if self.how not in HOW:
            raise OperatorError(f"join {name!r}: how={self.how!r}; expected one of {HOW}")
        for side in ("left", "right"):
            if not p.get(side) or not p.get(f"{side}_on"):
                raise OperatorError(f"join {name!r} needs {side!r} (the upstream operator id) and {side}_on")
        if len(p["left_on"]) != len(p["right_on"]):
            raise OperatorError(f"join {name!r}: left_on {p['left_on']} and right_on {p['right_on']} differ in length")
        self.left = _Side("left", p, self.how in ("left", "full"))
        self.right = _Side("right", p, self.how in ("right", "full"))
        self.changelog = bool(p.get("changelog"))
        if self.changelog and (self.kind != "regular" or self.how != "inner"):
            raise OperatorError(f"join {name!r}: a join over a changelog is a regular inner join; got a {self.kind} "
                                f"{self.how} join")
        self.where = decode_expression(p["where"]) if p.get("where") else None
        self._where_reads = None  # the output columns `where` reads (found on first use)
        self.ttl = p.get("ttl")
        self.lower, self.upper = p.get("lower"), p.get("upper")
        if self.kind == "interval":
            if self.lower is None or self.upper is None or self.lower > self.upper:
                raise OperatorError(f"join {name!r}: an interval join needs lower <= upper, got "
                                    f"{self.lower!r}, {self.upper!r}")
        if self.kind in ("interval",) or (self.kind == "regular" and self.ttl is not None):
            if not self.left.time or not self.right.time:
                raise OperatorError(f"join {name!r}: {self.kind} join needs left_time and right_time")
        self.assigner = None
        if self.kind == "window" and not self.left.window:
            self.assigner = WindowAssigner(name, p.get("size"), p.get("slide"), None)
        self.watermark = None
        ctx.metrics.setdefault("late_records_dropped", 0)

    # -- input -----------------------------------------------------------------------------

    def _sides(self, input_index):
        upstream = self.input_side(input_index)
        if upstream == self.params["left"]:
            return self.left, self.right
        if upstream == self.params["right"]:
            return self.right, self.left
        raise OperatorError(f"join {self.ctx.operator_name!r}: input from {upstream!r} is neither side "
                            f"({self.params['left']!r}, {self.params['right']!r})")

    def process(self, batch, input_index):
        side, other = self._sides(input_index)
        if self.changelog:
            return self._process_changelog(side, other, batch)
        side.bind(batch.schema, self.ctx.operator_name)
        if batch.num_rows == 0:
            return []
        table = pa.Table.from_batches([batch])
        if self.kind == "window":
            return self._hold_for_window(side, table)
        return self._probe_and_hold(side, other, table)

    def _names(self):
        """Output names: as the plan gave them, else the inputs' with the right ones suffixed."""
        if self.left.names is None and self.left.schema is not None:
            self.left.names = list(self.left.schema.names)
        if self.right.names is None and self.right.schema is not None and self.left.names is not None:
            self.right.names = join_output_names(self.left.names, self.right.schema.names,
                                                 self.params.get("suffix", "_right"))

    def _assemble(self, left, right):
        """Output rows from aligned left and right column lists."""
        if self.left.names is None or self.right.names is None:
            self._names()
        return pa.Table.from_arrays(list(left) + list(right), names=self.left.names + self.right.names)

    def _pad(self, side, table):
        """Unmatched rows of ``side`` with nulls for the other side's columns."""
        other = self.right if side is self.left else self.left
        cols = [table.column(c) for c in side.schema.names]
        nulls = other.nulls(table.num_rows)
        return self._assemble(cols, nulls) if side is self.left else self._assemble(nulls, cols)

    def _matches(self, side, other, table, probe_hashes, candidates_of):
        """Pairs (row of ``table``, row id of ``other``) that satisfy the whole condition, and
        the joined rows."""
        i, j = candidates_of(probe_hashes)
        if len(i) == 0:
            return i, j, None
        ok = keys_equal([c.take(pa.array(i)) for c in _key_arrays(table, side.on)],
                        [c for c in _key_arrays(other.rows.take(j, other.on), other.on)])
        if self.kind == "interval" and ok.any():
            t_side = side.times(table)[i]
            t_other = other.times(other.rows.take(j, [other.time]))
            lt, rt = (t_side, t_other) if side is self.left else (t_other, t_side)
            ok &= (lt >= rt + self.lower) & (lt <= rt + self.upper)
        i, j = i[ok], j[ok]
        if len(i) == 0:
            return i, j, None
        if self.where is not None:  # on the columns it reads, before gathering whole rows
            keep = where_mask(self._where_columns(side, other, table, i, j), self.where)
            i, j = i[keep], j[keep]
            if len(i) == 0:
                return i, j, None
        mine = table.take(pa.array(i))
        theirs = other.rows.take(j)
        joined = self._assemble(mine.columns, theirs.columns) if side is self.left else \
            self._assemble(theirs.columns, mine.columns)
        return i, j, joined

    def _where_columns(self, side, other, table, i, j):
        """The pairs' values of the output columns ``where`` reads, as a table."""
        if self._where_reads is None:
            self._names()
            schema = pa.schema([f.with_name(n) for f, n in zip(self.left.schema, self.left.names)]
                               + [f.with_name(n) for f, n in zip(self.right.schema, self.right.names)])
            self._where_reads = expression_columns(schema, self.where)
        cols = {}
        for s, rows, source in ((side, i, table), (other, j, None)):
            for name, out in zip(s.schema.names, s.names):
                if out in self._where_reads:
                    cols[out] = (source.column(name).take(pa.array(rows)) if source is not None
                                 else s.rows.take(rows, [name]).column(0))
        return pa.table(cols)

    def _expiry(self, side, table):
        if self.kind == "interval":
            t = side.times(table)
            return t - self.lower + 1 if side is self.left else t + self.upper + 1
        if self.ttl is not None:
            return side.times(table) + int(self.ttl)
        return np.full(table.num_rows, _NEVER, dtype=np.int64)

    def _probe_and_hold(self, side, other, table):
        out = []
        null_key = None
        for c in side.on:
            col = table.column(c)
            if col.null_count:
                v = col.is_null().to_numpy(zero_copy_only=False)
                null_key = v if null_key is None else null_key | v
        if null_key is not None and null_key.any():  # never matches: padded now or dropped
            if side.outer:
                out.append(self._pad(side, table.filter(pa.array(null_key))))
            table = table.filter(pa.array(~null_key))
            if table.num_rows == 0:
                return _batches(out)
        hashes = keyed_state.key_hashes(table, side.on)
        i, j, joined = self._matches(side, other, table, hashes, other.rows.probe)
        matched = np.zeros(table.num_rows, dtype=bool)
        if joined is not None:
            out.append(joined)
            matched[i] = True
            if other.outer:
                other.rows.side["matched"][j] = True
        expire = self._expiry(side, table)
        hold = expire > self.watermark if self.watermark is not None else np.ones(table.num_rows, dtype=bool)
        if side.outer and not hold.all():
            gone = ~hold & ~matched
            if gone.any():
                out.append(self._pad(side, table.filter(pa.array(gone))))
        if hold.any():
            keep = pa.array(hold) if not hold.all() else None
            held = table if keep is None else table.filter(keep)
            side.rows.append(held, hashes[hold], matched=matched[hold], expire=expire[hold])
        return _batches(out)

    # -- over changelogs ---------------------------------------------------------------------

    def _process_changelog(self, side, other, batch):
        table = pa.Table.from_batches([batch])
        if cl.is_changelog(table.schema):
            sign = cl.signs(table)
            table = table.drop_columns([cl.OP])
        else:
            sign = np.ones(table.num_rows, dtype=np.int64)
        side.bind(table.schema, self.ctx.operator_name)
        if table.num_rows == 0:
            return []
        if side.schema is not None and not table.schema.equals(side.schema):
            table = table.cast(side.schema)
        table = table.combine_chunks()
        if self._withdraws_own_adds(table, sign):  # in order, run by run of one sign
            change = np.flatnonzero(np.diff(np.sign(sign))) + 1
            bounds = [0, *change.tolist(), table.num_rows]
            out = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                out += self._apply(side, other, table.slice(a, b - a), sign[a] < 0)
            return out
        out = []
        if (sign < 0).any():
            out += self._apply(side, other, table.filter(pa.array(sign < 0)), True)
        if (sign > 0).any():
            out += self._apply(side, other, table.filter(pa.array(sign > 0)) if (sign < 0).any() else table, False)
        return out

    @staticmethod
    def _withdraws_own_adds(table, sign):
        """True when a withdrawal in the batch is of a row added earlier in the same batch (then
        withdrawals cannot all go first)."""
        ret, add = np.flatnonzero(sign < 0), np.flatnonzero(sign > 0)
        if not len(ret) or not len(add):
            return False
        h = keyed_state.key_hashes(table, table.column_names)
        order = np.argsort(h[add], kind="stable")
        sorted_h, sorted_pos = h[add][order], add[order]
        k = np.searchsorted(sorted_h, h[ret])
        first = np.minimum(k, len(sorted_h) - 1)  # the earliest add of that row (stable sort)
        return bool(((k < len(sorted_h)) & (sorted_h[first] == h[ret]) & (sorted_pos[first] < ret)).any())

    def _apply(self, side, other, table, withdraw):
        """Rows that all add or all withdraw: their matches as +I / -D rows; the state updated."""
        valid = None
        for c in side.on:
            col = table.column(c)
            if col.null_count:
                v = col.is_valid().to_numpy(zero_copy_only=False)
                valid = v if valid is None else valid & v
        if valid is not None:  # a null key never matches and is never held (inner join)
            table = table.filter(pa.array(valid))
        if table.num_rows == 0:
            return []
        hashes = keyed_state.key_hashes(table, side.on)
        if withdraw:
            held = self._held_copies(side, table, hashes)
            found = held >= 0
            if not found.any():
                return []
            side.rows.kill(held[found])
            table, hashes = table.filter(pa.array(found)), hashes[found]
        _, _, joined = self._matches(side, other, table, hashes, other.rows.probe)
        if not withdraw:
            side.rows.append(table, hashes, expire=self._expiry(side, table))
        if joined is None:
            return []
        kind = cl.DELETE if withdraw else cl.INSERT
        joined = joined.append_column(pa.field(cl.OP, cl.OP_TYPE), pa.array(np.full(joined.num_rows, kind, np.int8)))
        return _batches([joined])

    @staticmethod
    def _held_copies(side, table, hashes):
        """For each row, a distinct held row of ``side`` equal to it in every column (-1: none)."""
        from sabot.runtime.operators.changelog import rows_equal

        out = np.full(table.num_rows, -1, dtype=np.int64)
        i, j = side.rows.probe(hashes)
        if not len(i):
            return out
        same = rows_equal(table.take(pa.array(i)), side.rows.take(j, table.column_names))
        i, j = i[same], j[same]
        used = set()
        for a, b in zip(i.tolist(), j.tolist()):  # equal rows withdrawn twice take two held copies
            if out[a] < 0 and b not in used:
                out[a] = b
                used.add(b)
        return out

    # -- window joins ------------------------------------------------------------------------

    def _hold_for_window(self, side, table):
        out = []
        w = self.watermark
        if side.window:
            ws = event_times(table.column(side.window[0])).to_numpy(zero_copy_only=False)
            we = event_times(table.column(side.window[1])).to_numpy(zero_copy_only=False)
            late = we <= w if w is not None else None
        else:
            t = side.times(table)
            late = self.assigner.last_end(t) <= w if w is not None else None
        if late is not None and late.any():  # every window of these rows fired already
            self.ctx.metrics["late_records_dropped"] += int(np.count_nonzero(late))
            out.append(SideOutput("late", table.filter(pa.array(late)).combine_chunks().to_batches()[0]))
            table = table.filter(pa.array(~late))
            if side.window:
                ws, we = ws[~late], we[~late]
            else:
                t = t[~late]
        if side.window:
            pieces = [(table, ws, we)]
        else:
            pieces = [(table.filter(pa.array(ok)) if not ok.all() else table,
                       np.broadcast_to(start, t.shape)[ok], np.broadcast_to(end, t.shape)[ok])
                      for ok, start, end in self.assigner.windows(t, w) if ok.any()]
        for rows, ws, we in pieces:
            if rows.num_rows:
                side.pending.append(rows.append_column(_WS, pa.array(ws, pa.int64())).append_column(
                    _WE, pa.array(we, pa.int64())))
        return out

    def _fire_windows(self, up_to):
        fired = {}
        for side in (self.left, self.right):
            if not side.pending:
                fired[side.name] = None
                continue
            held = pa.concat_tables(side.pending) if len(side.pending) > 1 else side.pending[0]
            ready = held.column(_WE).to_numpy() <= up_to if up_to is not None else np.ones(held.num_rows, bool)
            fired[side.name] = held.filter(pa.array(ready)) if ready.any() else None
            rest = held.filter(pa.array(~ready)) if not ready.all() else None
            side.pending = [rest] if rest is not None and rest.num_rows else []
        left, right = fired["left"], fired["right"]
        out = []
        lm = np.zeros(0 if left is None else left.num_rows, dtype=bool)
        rm = np.zeros(0 if right is None else right.num_rows, dtype=bool)
        if left is not None and right is not None:
            lh = keyed_state.key_hashes(left, self.left.on + [_WS])
            rh = keyed_state.key_hashes(right, self.right.on + [_WS])
            order = np.argsort(rh, kind="stable")
            i, j = pairs_of(rh[order], order.astype(np.int64), lh)
            if len(i):
                ok = keys_equal([c.take(pa.array(i)) for c in _key_arrays(left, self.left.on + [_WS])],
                                [c.take(pa.array(j)) for c in _key_arrays(right, self.right.on + [_WS])])
                i, j = i[ok], j[ok]
            if len(i):
                lt, rt = left.take(pa.array(i)), right.take(pa.array(j))
                joined = self._assemble([lt.column(c) for c in self.left.schema.names],
                                        [rt.column(c) for c in self.right.schema.names])
                joined = self._with_window(joined, lt)
                if self.where is not None:
                    keep = where_mask(joined, self.where)
                    i, j, joined = i[keep], j[keep], joined.filter(pa.array(keep))
                out.append(joined)
                lm[i] = True
                rm[j] = True
        for side, table, matched in ((self.left, left, lm), (self.right, right, rm)):
            if side.outer and table is not None and not matched.all():
                rows = table.filter(pa.array(~matched))
                out.append(self._with_window(self._pad(side, rows), rows))
        if not out:
            return []
        result = pa.concat_tables(out)
        return _batches([result.sort_by("window_end") if self.assigner else result])

    def _with_window(self, joined, source):
        if self.assigner is None:
            return joined
        t = self.left.schema.field(self.left.time).type
        ws, we = source.column(_WS), source.column(_WE)
        return joined.append_column("window_start", ws.cast(t)).append_column("window_end", we.cast(t))

    # -- time --------------------------------------------------------------------------------

    def on_watermark(self, timestamp):
        if not isinstance(timestamp, (int, np.integer)):
            timestamp = pa.scalar(timestamp).cast(pa.int64()).as_py()
        if self.watermark is not None and timestamp <= self.watermark:
            return []
        self.watermark = int(timestamp)
        if self.kind == "window":
            return self._fire_windows(self.watermark)
        out = []
        for side in (self.left, self.right):
            rows = side.rows
            if rows.num_alive == 0:
                continue
            expired = rows.alive & (rows.side["expire"] <= self.watermark)
            if not expired.any():
                continue
            ids = np.flatnonzero(expired)
            if side.outer:
                unmatched = ids[~rows.side["matched"][ids]]
                if len(unmatched):
                    out.append(self._pad(side, rows.take(unmatched)))
            rows.kill(ids)
        return _batches(out)

    def finish(self):
        if self.kind == "window":
            return self._fire_windows(None)
        out = []
        for side in (self.left, self.right):
            if side.outer and side.rows.num_alive:
                ids = side.rows.alive_rows()
                unmatched = ids[~side.rows.side["matched"][ids]]
                if len(unmatched):
                    out.append(self._pad(side, side.rows.take(unmatched)))
        return _batches(out)

    # -- checkpoints -------------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id):
        mp = self.ctx.max_parallelism
        parts = {}
        for side in (self.left, self.right):
            if self.kind == "window":
                if side.pending:
                    held = pa.concat_tables(side.pending)
                    parts[side.name] = held.append_column(keyed_state.KEY_GROUP, pa.array(
                        keyed_state.key_groups(keyed_state.key_hashes(held, side.on), mp)))
                continue
            if side.rows.num_alive:
                rows = side.rows.alive_rows()
                held = side.rows.alive_table(with_side=("matched", "expire")).rename_columns(
                    list(side.rows.schema.names) + ["__matched", "__expire"])
                parts[side.name] = held.append_column(keyed_state.KEY_GROUP, pa.array(
                    keyed_state.key_groups(side.rows.hashes[rows], mp)))
        keyed = keyed_state.bundle(parts, {"watermark": self.watermark})
        return {"keyed": keyed, "state": None} if keyed is not None or self.watermark is not None else None

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"join {self.ctx.operator_name!r}")
        watermark = keyed_state.min_meta(metas, "watermark")
        if watermark is not None and (self.watermark is None or watermark > self.watermark):
            self.watermark = int(watermark)
        for side in (self.left, self.right):
            table = parts.get(side.name)
            if table is None or table.num_rows == 0:
                continue
            if self.kind == "window":
                side.pending.append(table)
                if side.schema is None:
                    side.schema = table.drop_columns([_WS, _WE]).schema
                continue
            body = table.drop_columns(["__matched", "__expire"])
            if side.schema is None:
                side.schema = body.schema
            side.rows.append(body, keyed_state.key_hashes(body, side.on),
                             matched=table.column("__matched").to_numpy(zero_copy_only=False),
                             expire=table.column("__expire").to_numpy())


def _batches(tables):
    return [b for t in tables for b in t.combine_chunks().to_batches() if b.num_rows]

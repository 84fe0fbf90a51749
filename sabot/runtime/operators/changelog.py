"""From an upsert stream (the current row of each touched key) to a changelog (see
:mod:`sabot.runtime.changelog`): the operator after a non-windowed aggregate or Top-N
that emits ``emit="updates"``.

Parameters: ``{"kind": "changelog", "key": [columns], "count_column": str | None}``;
the node's ``key_by`` (a prefix of ``key``, or none) routes rows, so every row of a key
comes here in order. ``key`` identifies a row (an aggregate's group key; a Top-N's
partition key and rank). With ``count_column``, a row whose count is 0 deletes its key
(an aggregate over a changelog whose last input row for the key was withdrawn); that
column is not part of the output.

Per key the operator keeps the row it emitted last, and for each incoming row emits

* ``+I`` new when the key has no row yet (nothing when the count is 0);
* ``-U`` old then ``+U`` new when the row differs from the last one; nothing when it is
  equal in every column (null equals null);
* ``-D`` old when the count is 0.

Within a batch only each key's last row counts. State: the last rows, keyed state by key
group (a :func:`~sabot.runtime.operators.keyed_state.bundle`), so it is checkpointed,
restored at another parallelism and moved by a live rescale as every keyed table is.
"""

from __future__ import annotations

import base64

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot._core import partition
from sabot.errors import OperatorError
from sabot.runtime import changelog as cl
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.keyed_rows import KeyedRows, keys_equal


def _array(col):
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def rows_equal(a, b):
    """Row-wise: True where tables ``a`` and ``b`` (same columns, aligned) are equal in every
    column, null equal to null."""
    same = np.ones(a.num_rows, dtype=bool)
    for name in a.column_names:
        x, y = _array(a.column(name)), _array(b.column(name))
        if x.type != y.type:
            y = y.cast(x.type)
        try:
            eq = pc.equal(x, y)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # a type without equality: compare values
            same &= np.array([u == v for u, v in zip(x.to_pylist(), y.to_pylist())], dtype=bool)
            continue
        both_null = pc.and_(x.is_null(), y.is_null())
        same &= pc.or_(eq.fill_null(False), both_null).to_numpy(zero_copy_only=False).astype(bool)
    return same


@register("process", kind="changelog")
class Changelog(Operator):
    """Upsert rows in, changelog rows out (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        self.key = list(self.params.get("key") or [])
        if not self.key:
            raise OperatorError(f"changelog {name!r} needs key: the columns that identify a row")
        self.route = list(ctx.operator.get("key_by") or [])
        if self.route != self.key[:len(self.route)]:
            raise OperatorError(f"changelog {name!r}: key_by {self.route} must be a prefix of key {self.key}")
        self.count_column = self.params.get("count_column")
        self.rows = KeyedRows()
        self.schema = None  # the output's value columns (input without count_column)

    def _bind(self, schema):
        missing = [c for c in self.key + ([self.count_column] if self.count_column else [])
                   if schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(f"changelog {self.ctx.operator_name!r}: column(s) {missing} not in the input; "
                                f"available columns: {schema.names}")
        if schema.get_field_index(cl.OP) >= 0:
            raise OperatorError(f"changelog {self.ctx.operator_name!r}: the input is a changelog already "
                                f"(it has the {cl.OP!r} column)")
        fields = [f for f in schema if f.name != self.count_column]
        self.schema = pa.schema(fields)

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        table = pa.Table.from_batches([batch])
        gone = None
        if self.count_column:
            gone = pc.equal(table.column(self.count_column), 0).fill_null(True)
            table = table.drop_columns([self.count_column])
        if not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        table = table.combine_chunks()
        hashes = partition.hash_columns(table, self.key)
        by_hash = np.argsort(hashes)
        sorted_hashes = hashes[by_hash]
        if len(sorted_hashes) > 1 and (sorted_hashes[1:] == sorted_hashes[:-1]).any():
            # a key twice in the batch (an aggregate's updates never have that): its last row counts
            gid, _ = keyed_state.group_ids([table.column(k) for k in self.key])
            last = np.full(gid.max() + 1, -1, dtype=np.int64)
            np.maximum.at(last, gid, np.arange(len(gid), dtype=np.int64))
            last.sort()
            if len(last) != table.num_rows:
                table = table.take(pa.array(last))
                if gone is not None:
                    gone = _array(gone).take(pa.array(last))
                hashes = hashes[last]
                by_hash = np.argsort(hashes)
                sorted_hashes = hashes[by_hash]
        gone = np.zeros(table.num_rows, dtype=bool) if gone is None else \
            _array(gone).to_numpy(zero_copy_only=False).astype(bool)
        # the key's last emitted row, if any
        old = np.full(table.num_rows, -1, dtype=np.int64)
        probe, stored = self.rows.probe(sorted_hashes)  # sorted probes: the binary searches walk in order
        probe = by_hash[probe]
        if len(probe):
            ok = keys_equal([_array(table.column(k)).take(pa.array(probe)) for k in self.key],
                            [_array(c) for c in self.rows.take(stored, self.key).columns])
            old[probe[ok]] = stored[ok]
        exists = old >= 0
        changed = np.zeros(table.num_rows, dtype=bool)
        idx = np.flatnonzero(exists & ~gone)
        if len(idx):
            changed[idx] = ~rows_equal(table.take(pa.array(idx)), self.rows.take(old[idx]))
        withdraw = exists & (changed | gone)  # -U (changed) or -D (gone): the old row
        add = ~gone & (~exists | changed)     # +I (new key) or +U (changed): the new row
        out_pos, out_kind, parts = [], [], []
        w = np.flatnonzero(withdraw)
        if len(w):
            parts.append(self.rows.take(old[w]))
            out_pos.append(w * 2)
            out_kind.append(np.where(gone[w], cl.DELETE, cl.UPDATE_BEFORE))
        a = np.flatnonzero(add)
        if len(a):
            parts.append(table.take(pa.array(a)))
            out_pos.append(a * 2 + 1)
            out_kind.append(np.where(exists[a], cl.UPDATE_AFTER, cl.INSERT))
        if len(w):
            self.rows.kill(old[w])
        if len(a):
            self.rows.append(parts[-1], hashes[a])
        if not parts:
            return []
        out = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        pos, kind = np.concatenate(out_pos), np.concatenate(out_kind).astype(np.int8)
        order = np.argsort(pos, kind="stable")  # per key: the withdrawal, then the new row
        out = out.append_column(pa.field(cl.OP, cl.OP_TYPE), pa.array(kind, cl.OP_TYPE))
        if not np.all(order[1:] > order[:-1]):
            out = out.take(pa.array(order))
        return [b for b in out.combine_chunks().to_batches() if b.num_rows]

    # -- checkpoints: the last emitted rows, keyed by key group ------------------------------

    def snapshot_state(self, checkpoint_id):
        table = self.rows.alive_table() if self.rows.num_alive else None
        if table is None or table.num_rows == 0:
            return None
        if self.route:
            kg = keyed_state.key_groups(keyed_state.key_hashes(table, self.route), self.ctx.max_parallelism)
        else:
            kg = np.full(table.num_rows, keyed_state.subtask_key_group(self.ctx), dtype=np.int32)
        meta = {"schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode()}
        rows = table.append_column(keyed_state.KEY_GROUP, pa.array(kg, pa.int32()))
        return {"keyed": keyed_state.bundle({"rows": rows}, meta), "state": None}

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"changelog {self.ctx.operator_name!r}")
        rows = parts.get("rows")
        if rows is None or rows.num_rows == 0:
            return
        if self.schema is None:
            encoded = next((m["schema"] for m in metas if m.get("schema")), None)
            if encoded is None:
                raise OperatorError(f"changelog {self.ctx.operator_name!r}: restored state has no schema")
            self.schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(encoded)))
        rows = rows.cast(self.schema).combine_chunks()  # the bundle keeps key groups apart from the rows
        self.rows.append(rows, partition.hash_columns(rows, self.key))

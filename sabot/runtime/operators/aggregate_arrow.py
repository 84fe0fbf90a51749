"""Keyed running aggregation over Arrow partials (the engine for what the compiled
state table does not run: strings, temporal and decimal columns, ``where=`` filters,
``count_distinct``, ``first_value`` / ``last_value``, ``max_by`` / ``min_by``).

Parameters: ``{"kind": "arrow", "aggregates": [[column, fn(, options)], ...], "emit":
"final" | "updates"}``; keys from the node's ``key_by``.

State: one partial row per key (:mod:`~sabot.runtime.operators.partials`) and, per
``count_distinct`` column, the distinct (key, value) rows. Each batch is reduced to
partials and kept pending; pending partials are merged into the state when they
outnumber it (so every row is merged O(1) times on average) and before results.
``emit="updates"`` merges after every batch and emits the keys the batch touched (a
cost linear in the state per batch). ``first_value`` / ``last_value`` follow arrival
order at this operator; ``max_by`` / ``min_by`` break ties by earliest arrival.

Snapshots bundle the partials by key group (:func:`keyed_state.bundle`), with the
input schema and the arrival counter in every row's meta, so a restore at another
parallelism or a live rescale gets exactly its keys.
"""

from __future__ import annotations

import base64

import numpy as np
import pyarrow as pa

from sabot.errors import OperatorError, UnsupportedStateType
from sabot.execution.operator_spec import check_aggregate_types, parse_aggregates
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.partials import Partials
from sabot.runtime.operators.transforms import check_columns

_COMPACT_ROWS = 1 << 16


def decode_key_column(col):
    """Dictionary keys group by their values (batches may alternate encodings)."""
    if pa.types.is_dictionary(col.type):
        return col.dictionary_decode() if isinstance(col, pa.Array) else col.cast(col.type.value_type)
    return col


class PartialState:
    """Merged partials plus pending ones, compacted geometrically (shared with windows)."""

    def __init__(self, partials):
        self.partials = partials
        self.state = None
        self.distinct = {c: None for c in partials.distinct}
        self.pending, self.pending_distinct = [], {c: [] for c in partials.distinct}
        self.pending_rows = 0

    def add(self, partial, distinct):
        if partial.num_rows == 0:
            return
        self.pending.append(partial)
        for c, t in distinct.items():
            self.pending_distinct[c].append(t)
        self.pending_rows += partial.num_rows
        if self.pending_rows > max(_COMPACT_ROWS, 0 if self.state is None else self.state.num_rows):
            self.compact()

    def compact(self, force=False):
        if not self.pending and not force:
            return
        tables = ([self.state] if self.state is not None else []) + self.pending
        if tables:
            self.state = self.partials.merge(_concat(tables))
        for c, pend in self.pending_distinct.items():
            parts = ([self.distinct[c]] if self.distinct[c] is not None else []) + pend
            if parts:
                self.distinct[c] = self.partials.merge_distinct(c, _concat(parts))
            self.pending_distinct[c] = []
        self.pending, self.pending_rows = [], 0

    @property
    def rows(self):
        self.compact()
        return 0 if self.state is None else self.state.num_rows

    def replace(self, state, distinct):
        self.state = state
        self.distinct = distinct


def _concat(tables):
    tables = [t for t in tables if t is not None]
    if len(tables) == 1:
        return tables[0]
    schema = tables[0].schema
    return pa.concat_tables([t if t.schema.equals(schema) else t.cast(schema) for t in tables])


@register("aggregate", kind="arrow")
class ArrowKeyedAggregate(Operator):
    """Keyed running aggregation over Arrow partials (see the module docs)."""

    def open(self):
        keys = self.ctx.operator.get("key_by") or []
        if not keys:
            raise OperatorError(f"aggregate {self.ctx.operator_name!r} has no key_by columns")
        self.keys = list(keys)
        try:
            self.items = parse_aggregates(self.params["aggregates"])
        except (KeyError, ValueError) as exc:
            raise OperatorError(f"aggregate {self.ctx.operator_name!r}: {exc}") from exc
        self.emit = self.params.get("emit", "final")
        self.schema = None
        self.store = None
        self.seq = 0

    def _bind(self, schema):
        name = self.ctx.operator_name
        columns = self.keys + [c for it in self.items for c in it.input_columns()]
        check_columns(self.ctx, schema, columns, "aggregate")
        try:
            check_aggregate_types(schema, self.params["aggregates"], f"aggregate {name!r}")
        except UnsupportedStateType as exc:
            raise OperatorError(str(exc)) from exc
        self.schema = schema
        self.store = PartialState(Partials(self.items, schema, self.keys))

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        seq = np.arange(self.seq, self.seq + batch.num_rows, dtype=np.int64)
        self.seq += batch.num_rows
        keys = [decode_key_column(batch.column(k)) for k in self.keys]
        partial, distinct = self.store.partials.unit(batch, keys, seq)
        self.store.add(partial, distinct)
        if self.emit != "updates":
            return []
        self.store.compact()
        where = self.store.partials.align(self.store.state, partial.select(self.keys))
        touched = self.store.state.take(pa.array(where[where >= 0]))
        distinct_touched = {c: t for c, t in self.store.distinct.items()}
        return self.store.partials.finalize(touched, distinct_touched).to_batches()

    def finish(self):
        if self.store is None or self.emit == "updates":
            return []
        self.store.compact()
        if self.store.state is None or self.store.state.num_rows == 0:
            return []
        return [b for b in self.store.partials.finalize(self.store.state, self.store.distinct).to_batches()
                if b.num_rows]

    # -- checkpoints ---------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id):
        if self.store is None or self.store.rows == 0:
            return None
        mp = self.ctx.max_parallelism
        parts = {}
        state = self.store.state
        parts["partial"] = state.append_column(keyed_state.KEY_GROUP, pa.array(
            keyed_state.key_groups(keyed_state.key_hashes(state, self.keys), mp)))
        for c, table in self.store.distinct.items():
            if table is not None and table.num_rows:
                parts[f"distinct:{c}"] = table.append_column(keyed_state.KEY_GROUP, pa.array(
                    keyed_state.key_groups(keyed_state.key_hashes(table, self.keys), mp)))
        meta = {"seq": self.seq, "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode()}
        return {"keyed": keyed_state.bundle(parts, meta), "state": None}

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"aggregate {self.ctx.operator_name!r}")
        if not parts:
            return
        if self.schema is None:
            schema_b64 = next((m["schema"] for m in metas if m.get("schema")), None)
            if schema_b64 is None:
                raise OperatorError(f"aggregate {self.ctx.operator_name!r}: restored state has no input schema")
            self._bind(pa.ipc.read_schema(pa.py_buffer(base64.b64decode(schema_b64))))
        self.seq = max(self.seq, keyed_state.max_meta(metas, "seq") or 0)
        store = self.store
        if "partial" in parts:
            store.pending.append(parts["partial"])
            store.pending_rows += parts["partial"].num_rows
        for c in store.distinct:
            if f"distinct:{c}" in parts:
                store.pending_distinct[c].append(parts[f"distinct:{c}"])
        store.compact(force=True)

"""Enrichment join of a stream against a static Arrow table.

Parameters: ``{"table": table reference (:mod:`sabot.runtime.tables`), "on": [stream key columns], "right_on":
[table key columns] | None (= on), "how": "inner" | "left", "suffix": "_right"}``.

The static table is a lookup table, so its keys must be unique: duplicate keys
are refused at ``open()`` with an error listing some of them (an enrichment that
silently multiplied stream rows would be a surprise). Keys with a null in any
column never match (SQL semantics), on either side.

How: ``open()`` hashes the table's key columns once with the stable key hash of
``sabot._core.partition`` and sorts the hashes. Each batch hashes its keys, finds
candidates with one ``numpy.searchsorted``, confirms them by comparing the actual
key values (so a hash collision can never produce a wrong match), and gathers the
table's columns with ``take``. No per-row Python, no per-batch rebuild of the
lookup. Output rows keep the stream's order.

Output: every stream column, then every table column except its key columns;
a table column whose name is already a stream column gets ``suffix``. With
``how="left"`` unmatched rows get nulls there; with ``"inner"`` they are dropped.
"""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import sabot._core.partition as _partition
from sabot.errors import OperatorError
from sabot.runtime.operators.base import Operator, register

log = logging.getLogger(__name__)

JOIN_TYPES = ("inner", "left")


def _as_list(value):
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _take(values, indices, valid):
    """``values.take(indices)``, null where ``valid`` is False (None: all valid).

    A take with null indices is several times slower in Arrow than a plain one, so
    take plainly and put the validity bitmap on afterwards when the layout allows.
    """
    if valid is None:
        return values.take(indices)
    if len(values) == 0:
        return pa.nulls(len(indices), type=values.type)
    taken = values.take(indices)
    t = taken.type
    plain_layout = not (t.num_fields or pa.types.is_dictionary(t) or pa.types.is_null(t)
                        or isinstance(t, pa.ExtensionType) or "view" in str(t))
    if taken.null_count or taken.offset or not plain_layout:
        return values.take(pa.array(indices.to_numpy(), mask=~valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(t, len(taken), [bitmap] + taken.buffers()[1:],
                                 null_count=len(valid) - int(np.count_nonzero(valid)))


def _plain_numeric(array):
    t = array.type
    return (pa.types.is_integer(t) or pa.types.is_floating(t)) and array.null_count == 0


class _HashIndex:
    """Open-addressing (linear probing) table from 64-bit hash to row, in numpy arrays.

    Built once; ``find`` probes all rows of a batch at once, one vectorised
    gather per probe step (the table is at most half full, so few steps).
    Assumes distinct hashes (the join checks that first).
    """

    def __init__(self, hashes):
        capacity = 8
        while capacity < 2 * len(hashes):
            capacity *= 2
        self.mask = np.uint64(capacity - 1)
        self.slot_hash = np.zeros(capacity, dtype=np.uint64)
        self.slot_row = np.full(capacity, -1, dtype=np.int64)
        pending = np.arange(len(hashes), dtype=np.int64)
        pos = (hashes & self.mask).astype(np.int64)
        while pending.size:
            at = pos[pending]
            free = self.slot_row[at] < 0
            # Of the rows wanting one free slot this round, the first takes it.
            slots, first = np.unique(at[free], return_index=True)
            winners = pending[free][first]
            self.slot_row[slots] = winners
            self.slot_hash[slots] = hashes[winners]
            placed = np.zeros(len(hashes), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + 1) & (capacity - 1)

    def find(self, hashes):
        """Row of each hash, or -1."""
        wrap = len(self.slot_row) - 1
        pos = (hashes & self.mask).astype(np.int64)
        row = self.slot_row[pos]
        found = self.slot_hash[pos] == hashes
        found &= row >= 0
        out = np.where(found, row, -1)
        # Only rows that met another key's slot probe further (few: load <= 1/2).
        active = np.flatnonzero(~found & (row >= 0))
        while active.size:
            at = (pos[active] + 1) & wrap
            pos[active] = at
            row = self.slot_row[at]
            found = (self.slot_hash[at] == hashes[active]) & (row >= 0)
            out[active[found]] = row[found]
            active = active[~found & (row >= 0)]
        return out


@register("join")
class LookupJoin(Operator):
    """Stream ⋈ static table on unique table keys (see the module docs)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        name = ctx.operator_name
        p = self.params
        self.on = _as_list(p.get("on"))
        if not self.on:
            raise OperatorError(f"join {name!r} needs 'on': the stream's key column(s)")
        self.right_on = _as_list(p.get("right_on")) or list(self.on)
        if len(self.right_on) != len(self.on):
            raise OperatorError(
                f"join {name!r}: 'on' has {len(self.on)} column(s) {self.on} but 'right_on' has "
                f"{len(self.right_on)} {self.right_on}; they pair up one to one"
            )
        self.how = p.get("how") or "inner"
        if self.how not in JOIN_TYPES:
            raise OperatorError(f"join {name!r}: unknown join type how={self.how!r}; expected one of {JOIN_TYPES}")
        self.suffix = p.get("suffix") or "_right"
        self.table = None
        self.schema = None  # the stream's schema, bound on the first batch

    # -- build ---------------------------------------------------------------------

    def open(self):
        name = self.ctx.operator_name
        table = self.ctx.table(self.params.get("table"), "parameter 'table' (the static table) of join")
        missing = [c for c in self.right_on if table.schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(
                f"join {name!r}: right_on column(s) {missing} not in the static table; "
                f"available columns: {table.schema.names}"
            )
        # Rows with a null key can never match: leave them out of the lookup.
        valid = None
        for c in self.right_on:
            v = table.column(c).is_valid()
            valid = v if valid is None else pc.and_(valid, v)
        if valid is not None and table.num_rows and not pc.all(valid).as_py():
            table = table.filter(valid)
        self.table = table.combine_chunks()
        self.value_columns = [c for c in self.table.schema.names if c not in self.right_on]
        self.value_arrays = {
            c: self.table.column(c).combine_chunks() if self.table.num_rows
            else pa.array([], type=self.table.schema.field(c).type)
            for c in self.value_columns
        }
        self._build()

    def _build(self):
        """Hash and sort the table's keys; refuse duplicate keys."""
        keys = self.table.select(self.right_on)
        hashes = _partition.hash_columns(keys) if keys.num_rows else np.empty(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[order]
        self.order = order
        self.lookup = _HashIndex(hashes)
        self.right_keys = [self.table.column(c).combine_chunks() if self.table.num_rows
                           else pa.array([], type=self.table.schema.field(c).type) for c in self.right_on]
        same = np.flatnonzero(self.sorted_hashes[1:] == self.sorted_hashes[:-1])
        self.collisions = False
        if len(same):
            a, b = pa.array(order[same]), pa.array(order[same + 1])
            equal = None
            for col in self.right_keys:
                e = pc.equal(col.take(a), col.take(b))
                equal = e if equal is None else pc.and_(equal, e)
            dup = np.asarray(equal.to_numpy(zero_copy_only=False), dtype=bool)
            if dup.any():
                distinct = keys.take(pa.array(order[same[dup]])).group_by(self.right_on).aggregate([])
                examples = distinct.slice(0, 5).to_pylist()
                raise OperatorError(
                    f"join {self.ctx.operator_name!r}: {distinct.num_rows} key value(s) appear more than "
                    f"once in the static table's {self.right_on}, e.g. {examples}; an enrichment join "
                    "needs unique keys (deduplicate the table, or aggregate it per key first)"
                )
            # Distinct keys with equal 64-bit hashes: the sorted lookup cannot
            # tell them apart, so this table is joined with pyarrow's hash join.
            self.collisions = True
            log.warning("join %r: 64-bit key hash collision in the static table; using Table.join",
                        self.ctx.operator_name)

    def _bind(self, schema):
        name = self.ctx.operator_name
        missing = [c for c in self.on if schema.get_field_index(c) < 0]
        if missing:
            raise OperatorError(
                f"join {name!r}: 'on' column(s) {missing} not in the stream; available columns: {schema.names}"
            )
        rebuild = False
        for i, (lc, rc) in enumerate(zip(self.on, self.right_on)):
            lt = schema.field(lc).type
            if pa.types.is_dictionary(lt):
                lt = lt.value_type
            rt = self.table.schema.field(rc).type
            if lt != rt:
                try:
                    casted = self.table.column(rc).cast(lt)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise OperatorError(
                        f"join {name!r}: stream key {lc!r} has type {lt} but table key {rc!r} has type "
                        f"{rt}, and the table's keys cannot be converted: {exc}"
                    ) from exc
                self.table = self.table.set_column(self.table.schema.get_field_index(rc), rc, casted)
                rebuild = True
        if rebuild:
            self._build()
        self.out_names = []
        for c in self.value_columns:
            out = c + self.suffix if schema.get_field_index(c) >= 0 else c
            if schema.get_field_index(out) >= 0 or out in self.out_names:
                raise OperatorError(
                    f"join {name!r}: table column {c!r} would be named {out!r}, which the stream "
                    f"already has; pick another suffix (stream columns: {schema.names})"
                )
            self.out_names.append(out)
        self.schema = schema

    # -- per batch -----------------------------------------------------------------

    def _left_keys(self, batch):
        cols = []
        for c in self.on:
            col = batch.column(c)
            if pa.types.is_dictionary(col.type):
                col = col.dictionary_decode()
            cols.append(col)
        return cols

    def _lookup(self, batch):
        """Row index into the table for each stream row, or -1."""
        left = self._left_keys(batch)
        candidate = self.lookup.find(_partition.hash_columns(left))
        hit = candidate >= 0
        if not hit.any():
            return candidate
        # Equal hashes are candidates only: confirm with the key values themselves.
        cand = None
        for lcol, rcol in zip(left, self.right_keys):
            if _plain_numeric(lcol) and _plain_numeric(rcol):
                # numeric, no nulls: compare in numpy (no gather through Arrow)
                hit &= rcol.to_numpy()[np.maximum(candidate, 0)] == lcol.to_numpy()
                continue
            if cand is None:
                cand = pa.array(np.maximum(candidate, 0))  # misses are masked out by `hit`
            eq = pc.equal(lcol, rcol.take(cand)).fill_null(False)
            hit &= eq.to_numpy(zero_copy_only=False)
        return np.where(hit, candidate, -1)

    def process(self, batch, input_index):
        if self.schema is None:
            self._bind(batch.schema)
        if batch.num_rows == 0:
            return []
        if self.collisions:
            return self._process_with_hash_join(batch)
        idx = self._lookup(batch)
        matched = idx >= 0
        all_matched = bool(matched.all())
        if self.how == "inner" and not all_matched:
            batch = batch.filter(pa.array(matched))
            idx = idx[matched]
            all_matched = True
        if batch.num_rows == 0:
            return []
        take = pa.array(np.maximum(idx, 0))
        arrays = list(batch.columns)
        for c in self.value_columns:
            arrays.append(_take(self.value_arrays[c], take, None if all_matched else matched))
        names = list(batch.schema.names) + self.out_names
        return [pa.RecordBatch.from_arrays(arrays, names=names)]

    def _process_with_hash_join(self, batch):
        row = "__sabot_row"
        left = pa.Table.from_batches([batch]).append_column(row, pa.array(np.arange(batch.num_rows)))
        right = self.table.select(self.right_on + self.value_columns).rename_columns(
            [f"__sabot_key{i}" for i in range(len(self.right_on))] + self.out_names)
        joined = left.join(right, keys=self.on, right_keys=[f"__sabot_key{i}" for i in range(len(self.on))],
                           join_type="inner" if self.how == "inner" else "left outer", use_threads=False)
        joined = joined.sort_by(row).select(list(batch.schema.names) + self.out_names).combine_chunks()
        return [b for b in joined.to_batches() if b.num_rows]

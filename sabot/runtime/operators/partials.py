"""Aggregates as Arrow partials: what the keyed aggregate (Arrow engine), the windows and
the session windows keep per key instead of rows.

A *partial* table has one row per key: the key columns, then for each aggregate the
columns it needs, all of which merge associatively:

=====================  ==========================================  ==============================
function               partial columns                             merge
=====================  ==========================================  ==============================
count(*), count(c)     rows (that pass ``where``, with c valid)    sum
sum(c)                 sum of the valid values                     sum (null when none)
mean(c)                sum, count                                  sum, sum
min(c), max(c)         min / max (any orderable type)              min / max
first_value(c)         value, arrival seq (null if no valid row)   smallest seq wins
last_value(c)          value, arrival seq                          largest seq wins
max_by(c, by=b)        value, b, arrival seq                       largest b wins, then earliest
min_by(c, by=b)        value, b, arrival seq                       smallest b wins, then earliest
count_distinct(c)      a separate table of distinct (key, c) with  dedupe (flags or-ed)
                       one flag per ``where``
=====================  ==========================================  ==============================

Raw rows become unit partials (one row each), so reducing a batch and merging partials
are the same operation: group by key (dense group ids, :func:`keyed_state.group_ids`),
one Arrow ``group_by`` for the summable columns, and one sort for each selection
aggregate. No per-row Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.execution.operator_spec import aggregate_output_type
from sabot.runtime.operators.expressions import mask as where_mask
from sabot.runtime.operators.keyed_state import group_ids

__all__ = ["Partials"]

_SELECT = ("first_value", "last_value", "max_by", "min_by")


def _combine(col):
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _sum_type(t):
    if pa.types.is_floating(t):
        return pa.float64()
    if pa.types.is_decimal(t):
        return t
    return pa.int64()


def _null_where(values, keep):
    """``values`` with nulls where ``keep`` (numpy bool) is False."""
    if keep is None or keep.all():
        return values
    return pc.if_else(pa.array(keep), values, pa.nulls(len(values), values.type))


class Partials:
    """The partial aggregates of ``items`` (``operator_spec.AggregateItem``) over ``schema``.

    Args:
        items: the aggregates.
        schema: the input schema (value column types).
        keys: the key column names used in partial tables (the caller's own names).
    """

    def __init__(self, items, schema, keys):
        self.items = list(items)
        self.schema = schema
        self.keys = list(keys)
        self.summable = [("__rows", "sum")]  # every key has a row count: keys exist even without other partials
        self.selections = []  # (item index, fn)
        self.distinct = {}  # value column -> [item index, ...]
        for i, it in enumerate(self.items):
            if it.fn in ("count", "sum"):
                self.summable.append((f"__p{i}", "sum"))
            elif it.fn == "mean":
                self.summable += [(f"__p{i}_s", "sum"), (f"__p{i}_n", "sum")]
            elif it.fn in ("min", "max"):
                self.summable.append((f"__p{i}", it.fn))
            elif it.fn in _SELECT:
                self.selections.append((i, it.fn))
            elif it.fn == "count_distinct":
                self.distinct.setdefault(it.column, []).append(i)
        self.needs_seq = bool(self.selections)

    @property
    def partial_names(self):
        names = [n for n, _ in self.summable]
        for i, fn in self.selections:
            names += [f"__p{i}_v", f"__p{i}_o"] + ([f"__p{i}_q"] if fn in ("max_by", "min_by") else [])
        return names

    def value_columns(self):
        """The input columns the aggregates read (values, ``by`` columns)."""
        cols = []
        for it in self.items:
            for c in it.input_columns():
                if c not in cols:
                    cols.append(c)
        return cols

    # -- raw rows -> unit partials -------------------------------------------------------

    def unit(self, batch, key_arrays, seq=None):
        """Unit partials of ``batch`` (one row per input row) and its distinct rows.

        Args:
            batch: the input rows (where= expressions and value columns are read from it).
            key_arrays: the key arrays (one per key name), aligned with ``batch``.
            seq: arrival sequence numbers (int64 numpy), needed by first/last/max_by/min_by.
        """
        n = batch.num_rows
        masks = {}

        def mask_of(i):
            it = self.items[i]
            if it.where is None:
                return None
            if i not in masks:
                masks[i] = where_mask(batch, it.where)
            return masks[i]

        cols = {name: _combine(a) for name, a in zip(self.keys, key_arrays)}
        cols["__rows"] = pa.array(np.ones(n, dtype=np.int64))
        for i, it in enumerate(self.items):
            m = mask_of(i)
            col = None if it.column is None else _combine(batch.column(it.column))
            if it.fn == "count":
                keep = np.ones(n, dtype=bool) if m is None else m.copy()
                if col is not None and col.null_count:
                    keep &= col.is_valid().to_numpy(zero_copy_only=False)
                cols[f"__p{i}"] = pa.array(keep.astype(np.int64))
            elif it.fn == "sum":
                cols[f"__p{i}"] = _null_where(col.cast(_sum_type(col.type)), m)
            elif it.fn == "mean":
                cols[f"__p{i}_s"] = _null_where(col.cast(_sum_type(col.type)), m)
                valid = col.is_valid().to_numpy(zero_copy_only=False)
                cols[f"__p{i}_n"] = pa.array((valid if m is None else valid & m).astype(np.int64))
            elif it.fn in ("min", "max"):
                cols[f"__p{i}"] = _null_where(col, m)
        for i, fn in self.selections:
            it = self.items[i]
            col = _combine(batch.column(it.column))
            m = mask_of(i)
            seq_arr = pa.array(np.asarray(seq, dtype=np.int64))
            cols[f"__p{i}_v"] = col
            if fn in ("first_value", "last_value"):
                keep = col.is_valid().to_numpy(zero_copy_only=False)
                cols[f"__p{i}_o"] = _null_where(seq_arr, keep if m is None else keep & m)
            else:
                by = _combine(batch.column(it.by))
                keep = by.is_valid().to_numpy(zero_copy_only=False)
                cols[f"__p{i}_o"] = _null_where(by, keep if m is None else keep & m)
                cols[f"__p{i}_q"] = seq_arr
        unit = pa.table({name: cols[name] for name in self.keys + self.partial_names})
        distinct = {}
        for column, indices in self.distinct.items():
            values = _combine(batch.column(column))
            flags = {}
            any_flag = np.zeros(n, dtype=bool)
            for i in indices:
                m = mask_of(i)
                f = np.ones(n, dtype=bool) if m is None else m
                flags[f"__f{i}"] = pa.array(f)
                any_flag |= f
            if values.null_count:
                any_flag &= values.is_valid().to_numpy(zero_copy_only=False)
            table = pa.table({**{name: cols[name] for name in self.keys}, "__v": values, **flags})
            if not any_flag.all():
                table = table.filter(pa.array(any_flag))
            distinct[column] = self.merge_distinct(column, table)
        return self.merge(unit), distinct

    # -- merging -------------------------------------------------------------------------

    def merge(self, table):
        """One row per key of a table of partials (from several batches or subtasks)."""
        n = table.num_rows
        if n == 0:
            return table
        gid, first = group_ids([table.column(k) for k in self.keys])
        if len(first) == n:
            return table.combine_chunks()
        g = pa.array(gid)
        grouped = pa.table({"__g": g, **{name: table.column(name) for name, _ in self.summable}}).group_by(
            "__g", use_threads=False).aggregate([(name, kind) for name, kind in self.summable])
        order = grouped.column("__g").to_numpy()
        if not np.array_equal(order, np.arange(len(first))):
            grouped = grouped.take(pa.array(np.argsort(order)))
        out = {k: table.column(k).take(pa.array(first)) for k in self.keys}
        for name, kind in self.summable:
            out[name] = grouped.column(f"{name}_{kind}")
        for i, fn in self.selections:
            o = table.column(f"__p{i}_o")
            sort = [("g", "ascending"), ("o", "descending" if fn in ("last_value", "max_by") else "ascending")]
            cols = {"g": g, "o": o}
            if fn in ("max_by", "min_by"):
                cols["q"] = table.column(f"__p{i}_q")
                sort.append(("q", "ascending"))
            idx = pc.sort_indices(pa.table(cols), sort_keys=sort).to_numpy()  # nulls last (the default)
            sg = gid[idx]
            winners = pa.array(idx[np.concatenate(([True], sg[1:] != sg[:-1]))])
            out[f"__p{i}_v"] = table.column(f"__p{i}_v").take(winners)
            out[f"__p{i}_o"] = o.take(winners)
            if fn in ("max_by", "min_by"):
                out[f"__p{i}_q"] = table.column(f"__p{i}_q").take(winners)
        return pa.table({name: out[name] for name in self.keys + self.partial_names})

    def merge_distinct(self, column, table):
        """Distinct (key, value) rows, each flag true if any merged row had it."""
        flags = [f"__f{i}" for i in self.distinct[column]]
        if table.num_rows == 0:
            return table
        grouped = table.group_by(self.keys + ["__v"], use_threads=False).aggregate([(f, "any") for f in flags])
        return grouped.select(self.keys + ["__v"] + [f"{f}_any" for f in flags]).rename_columns(
            self.keys + ["__v"] + flags)

    # -- results -------------------------------------------------------------------------

    def align(self, partial, other_keys):
        """For each row of ``other_keys`` (a table of key columns), its row in ``partial``
        (whose keys are unique), or -1."""
        m = partial.num_rows
        if other_keys.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        both = [pa.chunked_array(partial.column(k).chunks + other_keys.column(k).chunks,
                                 type=partial.schema.field(k).type) for k in self.keys]
        gid, _ = group_ids(both)
        idx = gid[m:]
        return np.where(idx < m, idx, -1)

    def finalize(self, partial, distinct=None):
        """The result table: the key columns, then each aggregate's output column."""
        out = {k: partial.column(k) for k in self.keys}
        m = partial.num_rows
        counts = {}
        for column, table in (distinct or {}).items():
            if table is None or table.num_rows == 0:
                continue
            flags = [f"__f{i}" for i in self.distinct[column]]
            ints = table.select(self.keys).append_column("__one", pa.array(np.ones(table.num_rows, np.int64)))
            for f in flags:
                ints = ints.append_column(f + "n", table.column(f).cast(pa.int64()))
            per_key = ints.group_by(self.keys, use_threads=False).aggregate([(f + "n", "sum") for f in flags])
            where = self.align(partial, per_key.select(self.keys))
            for i, f in zip(self.distinct[column], flags):
                c = np.zeros(m, dtype=np.int64)
                ok = where >= 0
                c[where[ok]] = per_key.column(f + "n_sum").to_numpy()[ok]
                counts[i] = c
        for i, it in enumerate(self.items):
            in_type = None if it.column is None else self.schema.field(it.column).type
            out_type = aggregate_output_type(in_type, it.fn)
            if it.fn == "count":
                col = partial.column(f"__p{i}").fill_null(0)
            elif it.fn == "count_distinct":
                col = pa.array(counts.get(i, np.zeros(m, dtype=np.int64)))
            elif it.fn == "mean":
                n = partial.column(f"__p{i}_n").fill_null(0)
                total = partial.column(f"__p{i}_s").cast(pa.float64())
                col = pc.divide(total, pc.if_else(pc.equal(n, 0), None, n).cast(pa.float64()))
            elif it.fn in _SELECT:
                chosen = partial.column(f"__p{i}_o").is_valid()
                v = partial.column(f"__p{i}_v")
                col = pc.if_else(chosen, v, pa.nulls(m, v.type)) if m else v
            else:
                col = partial.column(f"__p{i}")
            out[it.name] = col.cast(out_type) if col.type != out_type else col
        return pa.table(out)

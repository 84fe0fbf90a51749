"""Rows held per key, found by key hash in bulk: the state of joins and process functions.

:class:`KeyedRows` keeps rows (any Arrow columns) with their 64-bit key hash, an alive
flag and per-row numpy side arrays (e.g. a join's "matched" flag and expiry time).
Lookups are vectorised: :meth:`KeyedRows.probe` takes the hashes of a whole batch and
returns every (probe row, stored row) pair with equal hashes, from a set of sorted runs
of ``(hash, row)`` (an LSM: new rows form a run, runs of similar size merge, so an
insert costs O(log n) amortised and a probe one binary search per run). The caller
confirms pairs by comparing the key values (:func:`keys_equal`), so a hash collision
never produces a wrong match. Dead rows are dropped by a compaction once they are
half of the rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["KeyedRows", "SortedRuns", "keys_equal", "pairs_of"]

def pairs_of(sorted_hashes, sorted_rows, hashes):
    """``(probe_index, row)`` for every probe hash equal to a stored hash (sorted input)."""
    left = np.searchsorted(sorted_hashes, hashes, side="left")
    right = np.searchsorted(sorted_hashes, hashes, side="right")
    counts = right - left
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    probe = np.repeat(np.arange(len(hashes), dtype=np.int64), counts)
    starts = np.repeat(left - (np.cumsum(counts) - counts), counts)
    return probe, sorted_rows[np.arange(total, dtype=np.int64) + starts]


class SortedRuns:
    """A multimap from 64-bit hash to row ids, as sorted runs merged geometrically."""

    def __init__(self):
        self.runs = []  # (sorted hashes, row ids)

    def add(self, hashes, rows):
        if len(hashes) == 0:
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], rows[order]))
        while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            (h2, r2), (h1, r1) = self.runs.pop(), self.runs.pop()
            h, r = np.concatenate((h1, h2)), np.concatenate((r1, r2))
            order = np.argsort(h, kind="stable")
            self.runs.append((h[order], r[order]))

    def keep(self, alive, new_ids):
        """Drop the rows where ``alive[row]`` is false and renumber the rest by ``new_ids``
        (increasing in the old ids). A run filtered stays sorted, so nothing is sorted again."""
        runs = []
        for sh, sr in self.runs:
            mask = alive[sr]
            if mask.any():
                runs.append((sh[mask], new_ids[sr[mask]]))
        self.runs = runs

    def probe(self, hashes):
        probes, rows = [], []
        for sh, sr in self.runs:
            p, r = pairs_of(sh, sr, hashes)
            if len(p):
                probes.append(p)
                rows.append(r)
        if not probes:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(probes), np.concatenate(rows)


def keys_equal(left_cols, right_cols):
    """Row-wise equality of two lists of aligned key arrays (null never equals anything)."""
    ok = None
    for a, b in zip(left_cols, right_cols):
        if pa.types.is_dictionary(a.type):
            a = a.cast(a.type.value_type)
        if pa.types.is_dictionary(b.type):
            b = b.cast(b.type.value_type)
        if a.type != b.type:
            b = b.cast(a.type)
        eq = pc.equal(a, b).fill_null(False)
        eq = eq.to_numpy(zero_copy_only=False) if isinstance(eq, pa.Array) else np.asarray(
            eq.combine_chunks().to_numpy(zero_copy_only=False))
        ok = eq if ok is None else ok & eq
    return ok


class KeyedRows:
    """Rows of one schema with their key hashes; probe in bulk, kill, compact.

    Rows are kept in segments whose sizes grow geometrically (a new batch is a segment;
    neighbours of similar size are concatenated), so each row is copied O(log n) times
    and a gather touches O(log n) contiguous segments (Arrow gathers from a many-chunked
    column by concatenating it first).

    Args:
        side_arrays: names of per-row numpy arrays kept alongside (``{name: dtype}``).
    """

    def __init__(self, side_arrays=None):
        self.side_dtypes = dict(side_arrays or {})
        self.segments = []  # [first row id, table], in row order
        self.schema = None
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.alive = np.zeros(0, dtype=bool)
        self.side = {n: np.zeros(0, dtype=d) for n, d in self.side_dtypes.items()}
        self.index = SortedRuns()
        self.num_alive = 0

    def __len__(self):
        return len(self.hashes)

    @property
    def table(self):
        """Every row (dead ones too) as one table; row ids index it (None when empty)."""
        if not self.segments:
            return None
        if len(self.segments) > 1:
            merged = pa.concat_tables([t for _, t in self.segments]).combine_chunks()
            self.segments = [[0, merged]]
        return self.segments[0][1]

    def append(self, table, hashes, **side):
        """Add rows; returns their row ids."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        n = table.num_rows
        start = len(self.hashes)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema):
            table = table.cast(self.schema)
        self.segments.append([start, table])
        while len(self.segments) > 1 and 2 * self.segments[-1][1].num_rows >= self.segments[-2][1].num_rows:
            (_, t2), (s1, t1) = self.segments.pop(), self.segments.pop()
            self.segments.append([s1, pa.concat_tables([t1, t2]).combine_chunks()])
        self.hashes = np.concatenate((self.hashes, hashes))
        self.alive = np.concatenate((self.alive, np.ones(n, dtype=bool)))
        for name, dtype in self.side_dtypes.items():
            values = side.get(name)
            values = np.zeros(n, dtype=dtype) if values is None else np.asarray(values, dtype=dtype)
            self.side[name] = np.concatenate((self.side[name], values))
        rows = np.arange(start, start + n, dtype=np.int64)
        self.index.add(np.asarray(hashes, dtype=np.uint64), rows)
        self.num_alive += n
        return rows

    def probe(self, hashes):
        """``(probe_index, row)`` pairs of alive rows whose hash equals a probe hash."""
        if self.num_alive == 0 or len(hashes) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        p, r = self.index.probe(np.asarray(hashes, dtype=np.uint64))
        keep = self.alive[r]
        return p[keep], r[keep]

    def take(self, rows, columns=None):
        """The rows ``rows`` (row ids, any order) of ``columns`` (all by default), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or not self.segments:
            schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
            return schema.empty_table()
        if len(self.segments) == 1:
            t = self.segments[0][1]
            return (t if columns is None else t.select(columns)).take(pa.array(rows))
        starts = np.array([s for s, _ in self.segments], dtype=np.int64)
        seg = np.searchsorted(starts, rows, side="right") - 1
        order = np.argsort(seg, kind="stable")
        sorted_seg = seg[order]
        bounds = np.flatnonzero(np.concatenate(([True], sorted_seg[1:] != sorted_seg[:-1], [True])))
        parts = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = sorted_seg[a]
            t = self.segments[k][1]
            t = t if columns is None else t.select(columns)
            parts.append(t.take(pa.array(rows[order[a:b]] - starts[k])))
        gathered = pa.concat_tables(parts).combine_chunks() if len(parts) > 1 else parts[0]
        if len(parts) == 1 or np.all(order[1:] > order[:-1]):
            return gathered
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return gathered.take(pa.array(inverse))

    def kill(self, rows):
        if len(rows) == 0:
            return
        was = self.alive[rows]
        self.alive[rows] = False
        self.num_alive -= int(np.count_nonzero(was))
        if len(self.hashes) > 1024 and self.num_alive * 2 < len(self.hashes):
            self.compact()

    def alive_rows(self):
        return np.flatnonzero(self.alive)

    def compact(self):
        """Drop dead rows; row ids change (callers must not hold them across this). The
        index keeps its sorted runs, filtered and renumbered (no sort)."""
        keep = self.alive_rows()
        table = self.take(keep) if self.segments else None
        new_ids = np.zeros(len(self.hashes), dtype=np.int64)
        new_ids[keep] = np.arange(len(keep), dtype=np.int64)
        self.index.keep(self.alive, new_ids)
        self.hashes = self.hashes[keep]
        self.side = {n: a[keep] for n, a in self.side.items()}
        self.segments = [[0, table.combine_chunks()]] if table is not None and table.num_rows else []
        self.alive = np.ones(len(keep), dtype=bool)
        self.num_alive = len(keep)

    def alive_table(self, with_side=()):
        """The alive rows, with the named side arrays appended as columns."""
        if not self.segments:
            return None
        rows = self.alive_rows()
        table = self.take(rows)
        for name in with_side:
            table = table.append_column(name, pa.array(self.side[name][rows]))
        return table

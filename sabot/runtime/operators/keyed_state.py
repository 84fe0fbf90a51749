"""Keyed state of the operators that keep Arrow tables: key groups, group ids, bundles.

Every keyed operator snapshots one table with an int32 ``_key_group`` column, so the
checkpoint storage, a restore at another parallelism and the live-rescale handoff
(``partition.split_state_table``) move its state by key group unchanged. An operator
with several pieces of state of different schemas (a join's two sides, a process
function's value, list and map states and its timers, an aggregate's partials and its
distinct sets) snapshots them as one *bundle*: a table

    ``_key_group`` int32 | ``_part`` string | ``_data`` large_binary (Arrow IPC) | ``_meta`` string (JSON)

with one row per (piece, key group) holding that piece's rows of that key group. The
``_meta`` of every row carries the operator's scalars (its watermark, a sequence
counter...), so whichever subset of rows a subtask receives, it has them; the operator
decides how to combine the values of several old subtasks (e.g. the minimum watermark).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot._core import partition
from sabot.errors import OperatorError

KEY_GROUP = "_key_group"
_BUNDLE_SCHEMA = pa.schema([
    pa.field(KEY_GROUP, pa.int32(), nullable=False), pa.field("_part", pa.string()),
    pa.field("_data", pa.large_binary()), pa.field("_meta", pa.string()),
])

__all__ = ["KEY_GROUP", "bundle", "group_ids", "key_groups", "key_hashes", "subtask_key_group", "unbundle"]


def key_hashes(data, keys):
    """The stable key hash of each row (the one the HASH exchange routed it by)."""
    if data.num_rows == 0:
        return np.empty(0, dtype=np.uint64)
    return partition.hash_columns(data, list(keys))


def key_groups(hashes, max_parallelism):
    return partition.key_groups(hashes, max_parallelism).astype(np.int32, copy=False)


def subtask_key_group(ctx):
    """The key group that holds an unkeyed operator's state: the first of the subtask's range
    (so a restore at the same parallelism gives it back to the same subtask)."""
    first, _ = partition.key_group_range(ctx.subtask_index, ctx.max_parallelism, ctx.parallelism)
    return first


def _as_array(col):
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def group_ids(columns):
    """Dense group ids of the rows over key ``columns`` (nulls are one value).

    Returns ``(gid, first)``: ``gid[i]`` is row i's group (int64, numbered in order of
    first appearance) and ``first[g]`` the first row of group g. No columns: one group.
    """
    columns = [_as_array(c) for c in columns]
    n = len(columns[0]) if columns else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not columns:
        return np.zeros(n, dtype=np.int64), np.zeros(1, dtype=np.int64)
    single = len(columns) == 1 and not pa.types.is_floating(columns[0].type) \
        and not pa.types.is_dictionary(columns[0].type)
    if single:
        gid = pc.dictionary_encode(columns[0], null_encoding="encode").indices
    else:
        # group by the 64-bit key hash, then check every row's key equals its group's
        # first row (a hash collision between distinct keys would merge two groups)
        gid = pc.dictionary_encode(pa.array(partition.hash_columns(columns))).indices
    gid = gid.to_numpy().astype(np.int64, copy=False)
    running = np.maximum.accumulate(gid)
    first = np.flatnonzero(np.concatenate(([True], gid[1:] > running[:-1])))
    if not single:
        take = pa.array(first[gid])
        for col in columns:
            same = pc.equal(col, col.take(take))
            both_null = pc.and_(col.is_null(), col.take(take).is_null())
            if not pc.all(pc.or_kleene(same, both_null).fill_null(False)).as_py():
                return _group_ids_exact(columns)
    return gid, first


def _group_ids_exact(columns):
    """Group ids by the packed key bytes (the slow path after a hash collision)."""
    from sabot._core.state import pack_keys

    gid = pc.dictionary_encode(pack_keys(columns), null_encoding="encode").indices.to_numpy().astype(np.int64)
    running = np.maximum.accumulate(gid)
    first = np.flatnonzero(np.concatenate(([True], gid[1:] > running[:-1])))
    return gid, first


# -- bundles ------------------------------------------------------------------------------


def _ipc(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def bundle(parts, meta=None):
    """One keyed snapshot table from pieces ``{name: table with an int32 _key_group column}``.

    Returns None when every piece is empty.
    """
    meta_json = json.dumps(meta or {}, sort_keys=True)
    kgs, names, datas = [], [], []
    for name, table in parts.items():
        if table is None or table.num_rows == 0:
            continue
        kg = table.column(KEY_GROUP).to_numpy()
        body = table.drop_columns([KEY_GROUP])
        order = np.argsort(kg, kind="stable")
        sorted_kg = kg[order]
        if not np.all(order[1:] > order[:-1]):
            body = body.take(pa.array(order))
        bounds = np.flatnonzero(np.concatenate(([True], sorted_kg[1:] != sorted_kg[:-1], [True])))
        for start, stop in zip(bounds[:-1], bounds[1:]):
            kgs.append(int(sorted_kg[start]))
            names.append(name)
            datas.append(_ipc(body.slice(int(start), int(stop - start))).to_pybytes())
    if not kgs:
        return None
    return pa.Table.from_arrays([pa.array(kgs, pa.int32()), pa.array(names, pa.string()),
                                 pa.array(datas, pa.large_binary()), pa.array([meta_json] * len(kgs))],
                                schema=_BUNDLE_SCHEMA)


def unbundle(table, operator_name="operator"):
    """``({name: table}, [meta dict, ...])`` from a bundle (rows of any old subtasks)."""
    if table is None or table.num_rows == 0:
        return {}, []
    if "_part" not in table.column_names or "_data" not in table.column_names:
        raise OperatorError(f"{operator_name}: the restored keyed state is not a state bundle "
                            f"(columns {table.column_names}); was the operator changed?")
    pieces = {}
    for name, data in zip(table.column("_part").to_pylist(), table.column("_data").to_pylist()):
        pieces.setdefault(name, []).append(pa.ipc.open_stream(pa.py_buffer(data)).read_all())
    parts = {}
    for name, tables in pieces.items():
        schema = tables[0].schema
        parts[name] = pa.concat_tables([t if t.schema.equals(schema) else t.cast(schema) for t in tables])
    metas = [json.loads(m) for m in set(table.column("_meta").to_pylist()) if m]
    return parts, metas


def min_meta(metas, name):
    """The smallest non-None value of ``name`` among restored metas (None if none has it)."""
    values = [m.get(name) for m in metas if m.get(name) is not None]
    return min(values) if values else None


def max_meta(metas, name):
    values = [m.get(name) for m in metas if m.get(name) is not None]
    return max(values) if values else None

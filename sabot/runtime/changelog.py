"""Changelog streams (Flink's retract streams): rows that carry their kind in a column.

An *updating* result (a non-windowed ``GROUP BY`` or Top-N over an unbounded input) is a
changelog: every row has, in the int8 column :data:`OP` (``"$op"``; the ``$`` keeps it
apart from user columns, SQL refuses a table column of that name), one of Flink's
``RowKind`` values (the same byte values as Flink's ``RowKind.toByteValue``):

====  ======  =====================================================================
 op   Flink   meaning
====  ======  =====================================================================
 0    ``+I``  insert: a new row
 1    ``-U``  update-before: withdraws a row emitted earlier (an update follows)
 2    ``+U``  update-after: the new version of the row withdrawn just before
 3    ``-D``  delete: withdraws a row emitted earlier (no new version)
====  ======  =====================================================================

Retractions (``-U``, ``-D``) always carry the whole row they withdraw, so a consumer
never needs a key to apply them: :func:`materialise` keeps a multiset of rows (``+I`` /
``+U`` add one copy, ``-U`` / ``-D`` remove one), which is what a filter or projection of
a changelog needs (Flink applies a filter to ``-U`` and ``+U`` alike, so an update may
arrive as a lone ``-U`` or a lone ``+U``). The result is independent of the order in
which subtasks' pieces are concatenated.

The operator that turns an upsert stream (the current row of each touched key) into a
changelog is :class:`sabot.runtime.operators.changelog.Changelog`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: the column of a changelog row's kind (int8)
OP = "$op"
OP_TYPE = pa.int8()
INSERT, UPDATE_BEFORE, UPDATE_AFTER, DELETE = 0, 1, 2, 3
KIND_NAMES = ("+I", "-U", "+U", "-D")

__all__ = ["OP", "OP_TYPE", "INSERT", "UPDATE_BEFORE", "UPDATE_AFTER", "DELETE", "KIND_NAMES",
           "is_changelog", "materialise", "signs", "format_row"]


def is_changelog(schema):
    return schema is not None and schema.get_field_index(OP) >= 0


def signs(table):
    """+1 for the rows that add (``+I``, ``+U``), -1 for those that withdraw (``-U``, ``-D``)."""
    op = table.column(OP).to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0, np.int8)
    bad = (op < 0) | (op > 3)
    if bad.any():
        raise ValueError(f"changelog column {OP!r} holds {sorted(set(op[bad].tolist()))}; the kinds are "
                         "0 (+I), 1 (-U), 2 (+U), 3 (-D)")
    return np.where(op & 1, -1, 1).astype(np.int64)


def materialise(table):
    """The table a changelog leaves: each row as many times as it was added minus withdrawn
    (rows equal in every column are one row of the multiset), without the :data:`OP` column.

    Raises ValueError when a row is withdrawn more often than it was added (a broken changelog).
    """
    values = table.drop_columns([OP])
    if table.num_rows == 0:
        return values
    names = values.column_names
    counted = values.append_column("$sign", pa.array(signs(table)))
    # group by every column (nulls group together); a row's count is its adds minus withdrawals
    grouped = counted.group_by(names, use_threads=False).aggregate([("$sign", "sum")])
    counts = grouped.column("$sign_sum").to_numpy()
    if (counts < 0).any():
        bad = grouped.filter(pa.array(counts < 0)).slice(0, 3).drop_columns(["$sign_sum"]).to_pylist()
        raise ValueError(f"the changelog withdraws rows it never added (e.g. {bad})")
    kept = grouped.drop_columns(["$sign_sum"])
    out = kept.take(pa.array(np.repeat(np.arange(len(counts)), counts)))
    return out.select(names).cast(values.schema)


def format_row(kind, values):
    """Flink's print format: ``+I[a, b]``."""
    return f"{KIND_NAMES[kind]}[{', '.join('NULL' if v is None else str(v) for v in values)}]"

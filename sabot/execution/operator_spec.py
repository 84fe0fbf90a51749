"""The vocabulary of built-in operators, in one place: what the Stream API writes into a
JobGraph and what the runtime operators read back.

- Aggregates: the functions, the one output-naming rule (``"<column>_<fn>"``, ``count``
  for count(*), kept by the compiled state table itself), the output schema, and which
  key columns can key them.
- ``max_parallelism``: the default and the bound (the key-group kernels' own constants).
- Inline data in JSON parameters: tables and schemas as base64 Arrow IPC, pyarrow
  compute expressions pickled (expressions are data, not code: they cannot run anything
  when unpickled beyond building the expression).

The Stream API imports only this module to build plans; the runtime operators import it
to read them, so the two cannot disagree.
"""

from __future__ import annotations

import base64
import pickle

import pyarrow as pa
import pyarrow.compute as pc

from sabot._core.partition import DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM
from sabot._core.state import AGGREGATE_FUNCTIONS, aggregate_output_name, check_key_types
from sabot.errors import UnsupportedStateType

__all__ = [
    "AGGREGATE_FUNCTIONS", "DEFAULT_MAX_PARALLELISM", "MAX_MAX_PARALLELISM", "aggregate_output_name",
    "aggregate_output_schema", "check_key_fields", "decode_expression", "decode_schema", "decode_table",
    "encode_expression", "encode_schema", "encode_table", "normalise_aggregates",
]


# -- aggregates --------------------------------------------------------------------------


def normalise_aggregates(aggregates):
    """``{"col": "fn" | ["fn", ...]}`` or ``[("col", "fn"), ...]`` as ``[[col, fn], ...]``.

    Raises:
        ValueError: no aggregate, or an unknown function.
    """
    if isinstance(aggregates, dict):
        items = []
        for col, fns in aggregates.items():
            for fn in [fns] if isinstance(fns, str) else fns:
                items.append([col, fn])
    else:
        items = [list(x) for x in aggregates]
    if not items:
        raise ValueError("aggregate needs at least one (column, function) pair")
    for col, fn in items:
        if fn not in AGGREGATE_FUNCTIONS:
            raise ValueError(f"unknown aggregate function {fn!r} for column {col!r}; expected one of "
                             f"{AGGREGATE_FUNCTIONS}")
    return items


def aggregate_output_type(input_type, fn):
    """The Arrow type of aggregate ``fn`` over a column of ``input_type`` (None: count(*))."""
    if fn == "count":
        return pa.int64()
    if fn == "mean":
        return pa.float64()
    if fn == "sum":
        return pa.float64() if pa.types.is_floating(input_type) else pa.int64()
    return pa.float64() if pa.types.is_floating(input_type) else input_type


def aggregate_output_schema(schema, keys, specs):
    """The key columns (as in the input) then one column per aggregate; None without a schema."""
    if schema is None:
        return None
    fields = [schema.field(k) for k in keys]
    for col, fn in specs:
        input_type = None if col == "*" else schema.field(col).type
        fields.append(pa.field(aggregate_output_name(col, fn), aggregate_output_type(input_type, fn)))
    return pa.schema(fields)


def check_key_fields(fields, what="aggregate"):
    """Raise UnsupportedStateType unless the fields can key a keyed aggregate (in key order)."""
    fields = list(fields)
    try:
        check_key_types([f.type for f in fields], [f.name for f in fields])
    except UnsupportedStateType as exc:
        raise UnsupportedStateType(f"{what}: {exc}") from None


# -- inline data in JSON parameters --------------------------------------------------------


def encode_table(table) -> str:
    """Arrow IPC stream, base64: how small in-memory tables travel inside a JobGraph."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def decode_table(data: str) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(data))).read_all()


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(data: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data)))


def encode_expression(expr: pc.Expression) -> str:
    return base64.b64encode(pickle.dumps(expr)).decode("ascii")


def decode_expression(data: str) -> pc.Expression:
    return pickle.loads(base64.b64decode(data))

"""The vocabulary of built-in operators, in one place: what the Stream API writes into a
JobGraph and what the runtime operators read back.

- Aggregates: the functions, the one output-naming rule (``"<column>_<fn>"``, ``count``
  for count(*), kept by the compiled state table itself), the output schema, and which
  key columns can key them.
- ``max_parallelism``: the default and the bound (the key-group kernels' own constants).
- Inline data in JSON parameters: schemas as base64 Arrow IPC (tables travel by
  reference, see :mod:`sabot.runtime.tables`), pyarrow
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
    "AGGREGATE_FUNCTIONS", "ALL_AGGREGATE_FUNCTIONS", "Agg", "AggregateItem", "agg", "aggregate_names",
    "check_aggregate_types", "compiled_engine_supports", "parse_aggregates", "JOIN_TYPES", "RANK_FUNCTIONS",
    "check_join_keys", "expression_columns", "expression_types", "join_output_names", "join_output_schema",
    "normalise_order_by", "top_n_output_schema", "window_output_schema", "DEFAULT_MAX_PARALLELISM", "MAX_MAX_PARALLELISM", "aggregate_output_name",
    "aggregate_output_schema", "check_key_fields", "decode_expression", "decode_schema",
    "encode_expression", "encode_schema", "normalise_aggregates",
]


# -- aggregates --------------------------------------------------------------------------

#: every aggregate function. The compiled keyed state table runs ``count``, ``sum``,
#: ``min``, ``max`` and ``mean`` over integer, boolean and floating-point columns; the
#: Arrow partials engine runs everything else (strings, temporal and decimal columns,
#: ``where`` filters, ``count_distinct``, ``first_value`` / ``last_value`` (by arrival),
#: ``max_by`` / ``min_by`` (the value of the row with the largest / smallest ``by``)).
ALL_AGGREGATE_FUNCTIONS = AGGREGATE_FUNCTIONS + ("count_distinct", "first_value", "last_value", "max_by", "min_by")
_NUMERIC_ONLY = ("sum", "mean")
_ORDERED = ("min", "max")


class Agg:
    """One aggregate with options (see :func:`agg`)."""

    __slots__ = ("fn", "column", "where", "by", "name")

    def __init__(self, fn, column="*", *, where=None, by=None, name=None):
        if fn not in ALL_AGGREGATE_FUNCTIONS:
            raise ValueError(f"unknown aggregate function {fn!r} for column {column!r}; expected one of "
                             f"{ALL_AGGREGATE_FUNCTIONS}")
        if where is not None and not isinstance(where, pc.Expression):
            raise TypeError(f"where= takes a pyarrow compute expression, got {type(where).__name__}")
        if fn in ("max_by", "min_by") and not by:
            raise ValueError(f"{fn} needs by= (the column whose largest / smallest value picks the row)")
        if by is not None and fn not in ("max_by", "min_by"):
            raise ValueError(f"by= only applies to max_by / min_by, not {fn!r}")
        if column == "*" and fn != "count":
            raise ValueError(f"column '*' only works with 'count', not {fn!r}")
        self.fn, self.column, self.where, self.by, self.name = fn, column, where, by, name

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)!r}" for k in ("where", "by", "name") if getattr(self, k) is not None)
        return f"agg({self.fn!r}, {self.column!r}{extra})"


def agg(fn, column="*", *, where=None, by=None, name=None):
    """An aggregate with options, for ``aggregate`` and ``window``.

    Args:
        fn: one of :data:`ALL_AGGREGATE_FUNCTIONS`.
        column: the input column (``"*"`` for ``count`` of rows).
        where: a boolean pyarrow expression: only rows where it is true count (SQL's
            ``FILTER (WHERE ...)``).
        by: for ``max_by`` / ``min_by``: the ordering column.
        name: the output column (default ``"<column>_<fn>"``, ``"count"`` for ``count(*)``).

    Example:
        >>> agg("count_distinct", "bidder", where=pc.field("price") < 10_000, name="rank1_bidders")
        agg('count_distinct', 'bidder', where=<pyarrow.compute.Expression (price < 10000)>, name='rank1_bidders')
    """
    return Agg(fn, column, where=where, by=by, name=name)


def normalise_aggregates(aggregates):
    """Aggregates in their JSON form: ``[[col, fn], ...]``, with a third element
    ``{"where": encoded expression, "by": col, "name": out}`` when an :class:`Agg` has options.

    Accepts ``{"col": "fn" | ["fn", ...]}``, ``[("col", "fn"), Agg, ...]`` or
    ``{"out_name": Agg | ("col", "fn")}``.

    Raises:
        ValueError: no aggregate, or an unknown function.
    """
    items = []
    if isinstance(aggregates, dict):
        for key, value in aggregates.items():
            if isinstance(value, Agg):
                items.append(value if value.name else Agg(value.fn, value.column, where=value.where,
                                                          by=value.by, name=key))
            elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value) \
                    and value[1] in ALL_AGGREGATE_FUNCTIONS and value[0] not in ALL_AGGREGATE_FUNCTIONS:
                items.append(Agg(value[1], value[0], name=key))
            else:
                for fn in [value] if isinstance(value, str) else value:
                    items.append([key, fn])
    else:
        items = [x if isinstance(x, Agg) else list(x) for x in aggregates]
    if not items:
        raise ValueError("aggregate needs at least one (column, function) pair")
    out = []
    for item in items:
        if isinstance(item, Agg):
            options = {}
            if item.where is not None:
                options["where"] = encode_expression(item.where)
            if item.by is not None:
                options["by"] = item.by
            if item.name is not None:
                options["name"] = item.name
            out.append([item.column, item.fn, options] if options else [item.column, item.fn])
            continue
        col, fn = item[0], item[1]
        if fn not in ALL_AGGREGATE_FUNCTIONS:
            raise ValueError(f"unknown aggregate function {fn!r} for column {col!r}; expected one of "
                             f"{ALL_AGGREGATE_FUNCTIONS}")
        if fn in ("max_by", "min_by"):
            raise ValueError(f"{fn} needs by=: use agg({fn!r}, {col!r}, by=...)")
        if col == "*" and fn != "count":
            raise ValueError(f"column '*' only works with 'count', not {fn!r}")
        out.append([col, fn] + (list(item[2:3]) if len(item) > 2 and item[2] else []))
    return out


class AggregateItem:
    """One normalised aggregate, decoded (what the runtime operators work with)."""

    __slots__ = ("column", "fn", "where", "by", "name")

    def __init__(self, column, fn, where, by, name):
        self.column, self.fn, self.where, self.by, self.name = column, fn, where, by, name

    @property
    def plain(self):
        """True when the compiled state table can run it (no options, a compiled function)."""
        return self.fn in AGGREGATE_FUNCTIONS and self.where is None and self.by is None

    def input_columns(self):
        cols = [] if self.column is None else [self.column]
        return cols + ([self.by] if self.by else [])


def parse_aggregates(specs):
    """``[AggregateItem, ...]`` from the JSON form; output names checked unique."""
    items = []
    for spec in specs:
        col, fn = spec[0], spec[1]
        options = spec[2] if len(spec) > 2 and spec[2] else {}
        where = decode_expression(options["where"]) if options.get("where") else None
        column = None if col == "*" else col
        name = options.get("name") or aggregate_output_name(column, fn)
        items.append(AggregateItem(column, fn, where, options.get("by"), name))
    names = [i.name for i in items]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"aggregate output column(s) {clash} appear twice; give name= to tell them apart")
    return items


def aggregate_names(specs):
    return [i.name for i in parse_aggregates(specs)]


def aggregate_output_type(input_type, fn):
    """The Arrow type of aggregate ``fn`` over a column of ``input_type`` (None: count(*))."""
    if fn in ("count", "count_distinct"):
        return pa.int64()
    if fn == "mean":
        return pa.float64()
    if fn == "sum":
        if pa.types.is_floating(input_type):
            return pa.float64()
        if pa.types.is_decimal(input_type):
            return pa.decimal128(38, input_type.scale)
        return pa.int64()
    if fn in ("min", "max") and pa.types.is_boolean(input_type):
        return pa.bool_()
    if fn in ("min", "max") and (pa.types.is_integer(input_type) or pa.types.is_floating(input_type)):
        return pa.float64() if pa.types.is_floating(input_type) else input_type
    return input_type


def _orderable(t):
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t)
            or pa.types.is_temporal(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t))


def _numeric(t):
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def check_aggregate_types(schema, specs, what="aggregate"):
    """Refuse (UnsupportedStateType) aggregates the column types cannot take, naming them.

    sum/mean need numbers; min/max/max_by/min_by's ``by`` need an orderable type
    (numbers, booleans, temporal, strings, binary); count_distinct a hashable scalar
    type; where= a boolean expression over the input's columns.
    """
    if schema is None:
        return
    problems = []
    for item in parse_aggregates(specs):
        t = None if item.column is None else schema.field(item.column).type
        if item.fn in _NUMERIC_ONLY and not _numeric(t):
            problems.append(f"{item.fn}({item.column}) needs a numeric column, {item.column!r} is {t}")
        elif item.fn in _ORDERED and not _orderable(t):
            problems.append(f"{item.fn}({item.column}) needs an orderable column (numbers, booleans, "
                            f"temporal, strings, binary), {item.column!r} is {t}")
        elif item.fn == "count_distinct" and (pa.types.is_nested(t) or pa.types.is_dictionary(t)):
            problems.append(f"count_distinct({item.column}) needs a scalar column, {item.column!r} is {t}")
        if item.by is not None:
            bt = schema.field(item.by).type
            if not _orderable(bt):
                problems.append(f"{item.fn}(..., by={item.by!r}): {item.by!r} is {bt}, not orderable")
        if item.where is not None:
            try:
                wt = expression_types(schema, [item.where])[0]
            except ValueError as exc:
                problems.append(f"{item.name}: {exc}")
            else:
                if wt != pa.bool_():
                    problems.append(f"{item.name}: where={item.where} is {wt}, not a boolean condition")
    if problems:
        raise UnsupportedStateType(f"{what}: " + "; ".join(problems))


def compiled_engine_supports(schema, specs):
    """True when the compiled keyed state table can run ``specs`` over ``schema``."""
    items = parse_aggregates(specs)
    if not all(i.plain for i in items):
        return False
    if len({(i.column, i.fn) for i in items}) != len(items):  # the compiled table takes each pair once
        return False
    if schema is None:
        return not any(i.fn in ("min", "max") for i in items)
    for item in items:
        if item.column is None:
            continue
        t = schema.field(item.column).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            return False
    return True


def aggregate_output_schema(schema, keys, specs):
    """The key columns (as in the input) then one column per aggregate; None without a schema."""
    if schema is None:
        return None
    fields = [schema.field(k) for k in keys]
    for item in parse_aggregates(specs):
        input_type = None if item.column is None else schema.field(item.column).type
        fields.append(pa.field(item.name, aggregate_output_type(input_type, item.fn)))
    return pa.schema(fields)


def check_key_fields(fields, what="aggregate"):
    """Raise UnsupportedStateType unless the fields can key a keyed aggregate (in key order)."""
    fields = list(fields)
    try:
        check_key_types([f.type for f in fields], [f.name for f in fields])
    except UnsupportedStateType as exc:
        raise UnsupportedStateType(f"{what}: {exc}") from None


# -- windows, joins, top-N: output schemas ------------------------------------------------

JOIN_TYPES = ("inner", "left", "right", "full")
RANK_FUNCTIONS = ("row_number", "rank", "dense_rank")


def window_output_schema(schema, keys, specs, time_type):
    """Keys, ``window_start``, ``window_end`` (``time_type``), then the aggregates."""
    base = aggregate_output_schema(schema, keys, specs)
    if base is None:
        return None
    fields = list(base)
    return pa.schema(fields[:len(keys)] + [pa.field("window_start", time_type), pa.field("window_end", time_type)]
                     + fields[len(keys):])


def join_output_names(left_names, right_names, suffix="_right"):
    """Output names of a join's right columns: a name the left side has gets ``suffix``.

    Raises:
        ValueError: a suffixed name still clashes.
    """
    left = list(left_names)
    out = []
    for name in right_names:
        new = name + suffix if name in left else name
        if new in left or new in out:
            raise ValueError(f"join: right column {name!r} would be named {new!r}, which the output already "
                             f"has; pick another suffix (left columns: {left})")
        out.append(new)
    return out


def join_output_schema(left, right, right_names, how, time_type=None):
    """Left fields, then right fields renamed (nullable where an outer join pads), then the
    window columns of a window join by size (``time_type``)."""
    if left is None or right is None:
        return None
    fields = [f.with_nullable(True) if how in ("right", "full") else f for f in left]
    fields += [f.with_name(n).with_nullable(True) if how in ("left", "full") else f.with_name(n)
               for f, n in zip(right, right_names)]
    if time_type is not None:
        fields += [pa.field("window_start", time_type), pa.field("window_end", time_type)]
    return pa.schema(fields)


def check_join_keys(left, right, left_on, right_on, what="join"):
    """Join keys must have the same types on both sides (equal values hash alike only then)."""
    if left is None or right is None:
        return
    bad = []
    for lc, rc in zip(left_on, right_on):
        lt, rt = left.field(lc).type, right.field(rc).type
        lt = lt.value_type if pa.types.is_dictionary(lt) else lt
        rt = rt.value_type if pa.types.is_dictionary(rt) else rt
        if lt != rt:
            bad.append(f"{lc!r} ({lt}) vs {rc!r} ({rt})")
    if bad:
        raise ValueError(f"{what}: key types differ: {', '.join(bad)}; cast one side first (equal keys of "
                         "different types hash to different subtasks)")


def top_n_output_schema(schema, rank_column=None, time_type=None):
    """The input columns, then ``window_start``/``window_end`` (``time_type``), then the rank."""
    if schema is None:
        return None
    fields = list(schema)
    if time_type is not None:
        fields += [pa.field("window_start", time_type), pa.field("window_end", time_type)]
    if rank_column:
        fields.append(pa.field(rank_column, pa.int64()))
    return pa.schema(fields)


def normalise_order_by(order_by):
    """``["a", ("b", "descending")]`` as ``[["a", "ascending"], ["b", "descending"]]``."""
    if isinstance(order_by, str) or (isinstance(order_by, tuple) and len(order_by) == 2
                                     and order_by[1] in ("ascending", "descending")):
        order_by = [order_by]
    out = []
    for item in order_by:
        col, direction = (item, "ascending") if isinstance(item, str) else tuple(item)
        if direction not in ("ascending", "descending"):
            raise ValueError(f"order_by: direction of {col!r} must be 'ascending' or 'descending', got {direction!r}")
        out.append([col, direction])
    if not out:
        raise ValueError("order_by needs at least one column")
    return out


# -- expressions ---------------------------------------------------------------------------


def expression_types(schema, expressions):
    """The Arrow type of each pyarrow expression over ``schema`` (evaluated on no rows).

    Raises:
        ValueError: an expression names a missing column or does not type-check.
    """
    from pyarrow import acero

    names = [f"_{i}" for i in range(len(expressions))]
    decl = acero.Declaration.from_sequence([
        acero.Declaration("table_source", acero.TableSourceNodeOptions(schema.empty_table())),
        acero.Declaration("project", acero.ProjectNodeOptions(list(expressions), names)),
    ])
    try:
        return decl.to_table(use_threads=False).schema.types
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, KeyError) as exc:
        raise ValueError(f"expression(s) {[str(e) for e in expressions]} do not evaluate over columns "
                         f"{schema.names}: {exc}") from None


def expression_columns(schema, expression):
    """The top-level columns of ``schema`` that ``expression`` reads (each is tried without)."""
    used = []
    for name in schema.names:
        rest = pa.schema([f for f in schema if f.name != name])
        try:
            expression_types(rest, [expression])
        except ValueError:
            used.append(name)
    return used


# -- inline data in JSON parameters --------------------------------------------------------


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(data: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data)))


def encode_expression(expr: pc.Expression) -> str:
    return base64.b64encode(pickle.dumps(expr)).decode("ascii")


def decode_expression(data: str) -> pc.Expression:
    return pickle.loads(base64.b64decode(data))

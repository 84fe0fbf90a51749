"""SQL expressions (sqlglot trees) compiled to pyarrow compute expressions.

The result is evaluated over whole batches by the Stream API's ``select`` / ``filter`` /
join ``where`` (Acero's project node); nothing runs per row in Python. Types follow
Flink where the Nexmark queries depend on them: a decimal literal is ``DECIMAL(p, s)``
(``0.908`` is ``DECIMAL(3, 3)``), and a BIGINT meeting a DECIMAL becomes ``DECIMAL(19, 0)``,
so ``0.908 * price`` is ``DECIMAL(23, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from sabot.execution.operator_spec import expression_types
from sabot.sql.errors import SqlError
from sabot.sql.functions import BUILTINS, FunctionError

_TYPES = {}  # (schema, expression text) -> Arrow type


@dataclass
class Col:
    """A column visible in a scope: its SQL ``name``, the table alias it belongs to and its
    name in the Arrow batches (``phys``)."""

    name: str
    qualifier: str | None
    phys: str


class Scope:
    """The columns a clause can name, and their Arrow types."""

    def __init__(self, cols, schema, text=None, session=None):
        self.cols = list(cols)
        self.schema = schema
        self.text = text
        self.session = session

    def error(self, message, node, hint=None):
        return SqlError(message, text=self.text, node=node, hint=hint)

    def qualifiers(self):
        return {c.qualifier for c in self.cols if c.qualifier}

    def find(self, name, qualifier=None):
        """Columns matching ``qualifier.name`` (exact case first, then any case)."""
        for exact in (True, False):
            eq = (lambda a, b: a == b) if exact else (lambda a, b: a is not None and b is not None
                                                      and a.lower() == b.lower())
            found = [c for c in self.cols if eq(c.name, name) and (qualifier is None or eq(c.qualifier, qualifier))]
            if found:
                return found
        return []

    def available(self):
        return ", ".join(f"{c.qualifier}.{c.name}" if c.qualifier else c.name for c in self.cols)

    def resolve(self, node):
        """The pyarrow expression of a column reference (a column, or a struct's field)."""
        name = node.name
        parts = [p.name for p in node.parts]  # [catalog, db, table, column] as written
        if len(parts) == 1:
            found = self.find(name)
            if len(found) > 1:
                raise self.error(f"column {name!r} is ambiguous: it is in {sorted({c.qualifier for c in found})}",
                                 node, hint=f"qualify it, e.g. {found[0].qualifier}.{name}")
            if found:
                return pc.field(found[0].phys)
        else:
            qualifier = parts[-2]
            found = self.find(name, qualifier) if any(
                q.lower() == qualifier.lower() for q in self.qualifiers()) else []
            if found:
                return pc.field(found[0].phys)
            # struct fields: struct_col.field (optionally alias.struct_col.field)
            head = parts[:-1]
            for start in range(len(head)):
                q = head[start - 1] if start > 0 else None
                base = self.find(head[start], q)
                if len(base) == 1:
                    path = [base[0].phys] + head[start + 1:] + [name]
                    t = self.schema.field(base[0].phys).type
                    ok = True
                    for p in path[1:]:
                        if not pa.types.is_struct(t) or t.get_field_index(p) < 0:
                            ok = False
                            break
                        t = t.field(p).type
                    if ok:
                        return pc.field(*path)
        raise self.error(f"unknown column {'.'.join(parts)!r}", node,
                         hint=f"available columns: {self.available()}")

    def type_of(self, expr, node):
        key = (self.schema, str(expr))  # a planner asks for the same sub-expressions' types again and again
        if key in _TYPES:
            return _TYPES[key]
        try:
            [t] = expression_types(self.schema, [expr])
            if len(_TYPES) > 10_000:
                _TYPES.clear()
            _TYPES[key] = t
            return t
        except ValueError as exc:
            msg = str(exc).split(": ", 1)[-1]
            raise self.error(f"type mismatch in {node.sql(dialect='spark')!r}: {msg}", node,
                             hint="cast one side with CAST(x AS type)") from None


# -- types ----------------------------------------------------------------------------------

_SIMPLE_TYPES = {
    "BIGINT": pa.int64(), "INT": pa.int32(), "INTEGER": pa.int32(), "SMALLINT": pa.int16(), "TINYINT": pa.int8(),
    "BOOLEAN": pa.bool_(), "DOUBLE": pa.float64(), "FLOAT": pa.float32(), "VARCHAR": pa.string(),
    "TEXT": pa.string(), "CHAR": pa.string(), "NVARCHAR": pa.string(), "DATE": pa.date32(),
    "VARBINARY": pa.binary(), "BINARY": pa.binary(),
}


def arrow_type(dtype, text=None):
    """The Arrow type of a SQL type (sqlglot DataType); TIMESTAMP(p) is milliseconds unless p says otherwise."""
    name = dtype.this.name if hasattr(dtype.this, "name") else str(dtype.this)
    params = [p.this for p in dtype.expressions if isinstance(p, exp.DataTypeParam)]
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    if name in ("TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMPLTZ", "DATETIME"):
        precision = int(params[0].name) if params else 3
        return pa.timestamp({0: "s", 3: "ms", 6: "us", 9: "ns"}.get(precision, "ms"))
    if name == "DECIMAL":
        p = int(params[0].name) if params else 10
        s = int(params[1].name) if len(params) > 1 else 0
        return pa.decimal128(p, s)
    if name == "STRUCT":
        return pa.struct([pa.field(f.name, arrow_type(f.args["kind"], text)) for f in dtype.expressions])
    if name == "ARRAY" and dtype.expressions:
        return pa.list_(arrow_type(dtype.expressions[0], text))
    raise SqlError(f"unsupported type {dtype.sql(dialect='spark')}", text=text, node=dtype,
                   hint="supported: BIGINT, INT, SMALLINT, TINYINT, BOOLEAN, DOUBLE, FLOAT, VARCHAR/STRING, "
                        "DECIMAL(p, s), DATE, TIMESTAMP(p), BYTES, ROW<...>, ARRAY<...>")


# -- compiling ---------------------------------------------------------------------------------

_INTERVAL_MS = {"SECOND": 1_000, "MINUTE": 60_000, "HOUR": 3_600_000, "DAY": 86_400_000, "MILLISECOND": 1}


def interval_ms(node, scope_text=None):
    """Milliseconds of ``INTERVAL 'n' UNIT``."""
    if not isinstance(node, exp.Interval):
        raise SqlError("expected an interval such as INTERVAL '10' SECOND", text=scope_text, node=node)
    unit = (node.args.get("unit").name if node.args.get("unit") else "SECOND").upper().rstrip("S") or "SECOND"
    if unit == "MILLISECOND" or unit == "MS":
        unit = "MILLISECOND"
    if unit not in _INTERVAL_MS:
        raise SqlError(f"unsupported interval unit {unit}", text=scope_text, node=node,
                       hint="use MILLISECOND, SECOND, MINUTE, HOUR or DAY")
    try:
        value = float(node.this.name)
    except ValueError:
        raise SqlError(f"interval value {node.this.name!r} is not a number", text=scope_text, node=node) from None
    return int(value * _INTERVAL_MS[unit])


def _decimal_literal(text):
    d = Decimal(text)
    sign, digits, exponent = d.as_tuple()
    scale = max(-exponent, 0)
    precision = max(len(digits), scale, 1)
    return pa.scalar(d, pa.decimal128(precision, scale))


class Compiler:
    """Compiles expressions of one scope; ``subst`` maps an expression's SQL text to a column
    (group keys and aggregate results after an aggregation)."""

    def __init__(self, scope, subst=None):
        self.scope = scope
        self.subst = subst or {}

    def error(self, message, node, hint=None):
        return self.scope.error(message, node, hint)

    def compile(self, node):
        key = node.sql(dialect="spark")
        if key in self.subst:
            return pc.field(self.subst[key])
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.error(f"unsupported expression {key!r}", node,
                             hint="supported: columns, literals, arithmetic, comparisons, AND/OR/NOT, IN, "
                                  "BETWEEN, IS [NOT] NULL, LIKE, CASE, CAST and the functions in sabot.sql's README")
        return method(node)

    def typed(self, node):
        e = self.compile(node)
        return e, self.scope.type_of(e, node)

    # leaves
    def _Column(self, node):
        return self.scope.resolve(node)

    def _Dot(self, node):
        return self.scope.resolve(exp.column(node.name, *[p.name for p in node.this.parts][::-1][:1]))

    def _Literal(self, node):
        if node.is_string:
            return pc.scalar(node.this)
        text = node.this
        if any(c in text for c in ".eE"):
            if "e" in text.lower():
                return pc.scalar(float(text))
            return pc.scalar(_decimal_literal(text))
        return pc.scalar(int(text))

    def _Boolean(self, node):
        return pc.scalar(bool(node.this))

    def _Null(self, node):
        return pc.scalar(None)

    def _Paren(self, node):
        return self.compile(node.this)

    # arithmetic and comparison, with Flink's decimal coercion
    def _coerce(self, node):
        left, lt = self.typed(node.this)
        right, rt = self.typed(node.expression)
        ldec, rdec = pa.types.is_decimal(lt), pa.types.is_decimal(rt)
        if ldec and pa.types.is_integer(rt):
            right = self._to_decimal(node.expression, right, rt)
        elif rdec and pa.types.is_integer(lt):
            left = self._to_decimal(node.this, left, lt)
        return left, right

    def _to_decimal(self, node, e, t):
        if isinstance(node, exp.Literal) and not node.is_string:
            return pc.scalar(_decimal_literal(node.this))
        return e.cast(pa.decimal128(19 if t.bit_width == 64 else 10, 0))

    def _binary(self, node, fn):
        left, right = self._coerce(node)
        out = fn(left, right)
        self.scope.type_of(out, node)
        return out

    def _Add(self, node):
        return self._binary(node, pc.add)

    def _Sub(self, node):
        return self._binary(node, pc.subtract)

    def _Mul(self, node):
        return self._binary(node, pc.multiply)

    def _Div(self, node):
        return self._binary(node, pc.divide)

    def _Mod(self, node):
        return self._binary(node, lambda a, b: pc.subtract(a, pc.multiply(pc.divide(a, b), b)))

    def _EQ(self, node):
        return self._binary(node, pc.equal)

    def _NEQ(self, node):
        return self._binary(node, pc.not_equal)

    def _GT(self, node):
        return self._binary(node, pc.greater)

    def _GTE(self, node):
        return self._binary(node, pc.greater_equal)

    def _LT(self, node):
        return self._binary(node, pc.less)

    def _LTE(self, node):
        return self._binary(node, pc.less_equal)

    def _Neg(self, node):
        return pc.negate(self.compile(node.this))

    def _And(self, node):
        return self._binary(node, pc.and_kleene)

    def _Or(self, node):
        return self._binary(node, pc.or_kleene)

    def _Not(self, node):
        return pc.invert(self.compile(node.this))

    def _Is(self, node):
        if isinstance(node.expression, exp.Null):
            return pc.is_null(self.compile(node.this))
        raise self.error("IS supports only IS [NOT] NULL", node)

    def _In(self, node):
        values = node.expressions
        if node.args.get("query") or not values or not all(isinstance(v, exp.Literal) for v in values):
            raise self.error("IN takes a list of literals here", node, hint="subqueries in IN are not supported")
        target, t = self.typed(node.this)
        literals = [v.this if v.is_string else (Decimal(v.this) if "." in v.this else int(v.this)) for v in values]
        try:
            value_set = pa.array(literals).cast(t)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise self.error(f"type mismatch: IN list {literals} does not match {t}", node) from None
        return pc.is_in(target, value_set=value_set)

    def _Between(self, node):
        low = exp.GTE(this=node.this, expression=node.args["low"])
        high = exp.LTE(this=node.this, expression=node.args["high"])
        return pc.and_kleene(self.compile(low), self.compile(high))

    def _Like(self, node):
        pattern = node.expression
        if not isinstance(pattern, exp.Literal) or not pattern.is_string:
            raise self.error("LIKE takes a string literal pattern", node)
        return pc.match_like(self.compile(node.this), pattern=pattern.this)

    def _Case(self, node):
        default = node.args.get("default")
        out = self.compile(default) if default is not None else pc.scalar(None)
        for branch in reversed(node.args["ifs"]):
            cond = self.compile(branch.this)
            if node.this is not None:  # CASE x WHEN v THEN ...
                cond = self.compile(exp.EQ(this=node.this, expression=branch.this))
            out = pc.if_else(pc.coalesce(cond, pc.scalar(False)), self.compile(branch.args["true"]), out)
        self.scope.type_of(out, node)
        return out

    def _If(self, node):
        return pc.if_else(pc.coalesce(self.compile(node.this), pc.scalar(False)), self.compile(node.args["true"]),
                          self.compile(node.args["false"]) if node.args.get("false") else pc.scalar(None))

    def _Cast(self, node):
        target = arrow_type(node.args["to"], self.scope.text)
        e = self.compile(node.this)
        out = e.cast(target)
        self.scope.type_of(out, node)
        return out

    _TryCast = _Cast

    def _Interval(self, node):
        return pc.scalar(pa.scalar(interval_ms(node, self.scope.text), pa.duration("ms")))

    # functions
    def _function(self, name, args, node):
        name = name.upper()
        session = self.scope.session
        compiled = [self._arg(a) for a in args]
        if session is not None and name.lower() in session.functions:
            compiled = [c if isinstance(c, pc.Expression) else pc.scalar(c) for c in compiled]
            types = [self.scope.type_of(c, a) for c, a in zip(compiled, args)]
            registered = session.udf_name(name.lower(), types, node)
            out = pc.Expression._call(registered, compiled)
            self.scope.type_of(out, node)
            return out
        builder = BUILTINS.get(name)
        if builder is None:
            known = sorted(BUILTINS) + sorted(n.upper() for n in (session.functions if session else {}))
            raise self.error(f"unknown function {name}", node,
                             hint=f"known functions: {', '.join(known)}; register a Python one with "
                                  "CREATE FUNCTION name AS 'module:function'")
        try:
            out = builder(compiled, None)
        except FunctionError as exc:
            raise self.error(f"{name}: {exc}", node) from None
        self.scope.type_of(out, node)
        return out

    def _arg(self, a):
        if isinstance(a, exp.Literal):
            if a.is_string:
                return pa.scalar(a.this)
            return pa.scalar(int(a.this)) if a.this.lstrip("-").isdigit() else pa.scalar(float(a.this))
        return self.compile(a)

    def _Anonymous(self, node):
        return self._function(node.name, node.expressions, node)

    def _Func(self, node):
        args = [v for k, v in node.args.items() if v is not None and isinstance(v, exp.Expression)]
        return self._function(node.sql_name(), args, node)

    def _args_in_order(self, node, keys):
        return [node.args[k] for k in keys if node.args.get(k) is not None]

    def _Lower(self, node):
        return self._function("LOWER", [node.this], node)

    def _Upper(self, node):
        return self._function("UPPER", [node.this], node)

    def _Length(self, node):
        return self._function("CHAR_LENGTH", [node.this], node)

    def _RegexpExtract(self, node):
        return self._function("REGEXP_EXTRACT", self._args_in_order(node, ("this", "expression", "group")), node)

    def _Hour(self, node):
        return self._function("HOUR", [node.this], node)

    def _Minute(self, node):
        return self._function("MINUTE", [node.this], node)

    def _Second(self, node):
        return self._function("SECOND", [node.this], node)

    def _Year(self, node):
        return self._function("YEAR", [node.this], node)

    def _Month(self, node):
        return self._function("MONTH", [node.this], node)

    def _DateFormat(self, node):
        return self._function("DATE_FORMAT", [node.this, node.args["format"]], node)

    def _TimeToStr(self, node):
        return self._function("DATE_FORMAT", [node.this, node.args["format"]], node)

    def _Concat(self, node):
        return self._function("CONCAT", node.expressions, node)

    def _Substring(self, node):
        return self._function("SUBSTRING", self._args_in_order(node, ("this", "start", "length")), node)

    def _Coalesce(self, node):
        return self._function("COALESCE", [node.this, *node.expressions], node)

    def _Abs(self, node):
        return self._function("ABS", [node.this], node)

    def _Trim(self, node):
        return self._function("TRIM", [node.this], node)


def compile_expression(node, scope, subst=None):
    """``node`` as a pyarrow expression over ``scope``'s columns."""
    return Compiler(scope, subst).compile(node)

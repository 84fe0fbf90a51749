"""Scalar functions of Sabot's SQL, each a builder of pyarrow compute expressions.

A builder takes the compiled argument expressions (and their Arrow types) and returns one
expression, evaluated later over whole batches by Arrow's kernels; nothing here runs per
row in Python. User-defined functions are Python functions over Arrow arrays, registered
with pyarrow (``pc.register_scalar_function``) so they are calls inside the same
expressions:

    >>> import pyarrow.compute as pc
    >>> def count_char(text, char):             # arrays in, an array out  # doctest: +SKIP
    ...     return pc.count_substring(text, char[0].as_py())
    >>> session.create_function("count_char", count_char, return_type=pa.int64())  # doctest: +SKIP

or ``CREATE FUNCTION count_char AS 'my_module:count_char'`` (the function's
``return_type`` attribute, or :func:`udf`, gives its result type).
"""

from __future__ import annotations

import copyreg
import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

from sabot.runtime import functions as refs

__all__ = ["BUILTINS", "udf", "register_udf", "JAVA_CLASS_ALIASES"]


class FunctionError(ValueError):
    """Wrong arguments for a function (the planner adds the position)."""


def _literal(arg, what):
    if not isinstance(arg, pa.Scalar):
        raise FunctionError(f"{what} must be a literal")
    return arg.as_py()


def _expr(arg):
    return arg if isinstance(arg, pc.Expression) else pc.scalar(arg)


# -- time ---------------------------------------------------------------------------------------

_JAVA_TO_STRFTIME = [("yyyy", "%Y"), ("MM", "%m"), ("dd", "%d"), ("HH", "%H"), ("mm", "%M"), ("ss", "%S")]


def date_format(args, types):
    """DATE_FORMAT(ts, 'pattern'): Java's SimpleDateFormat letters yyyy MM dd HH mm ss.

    The two patterns Nexmark uses are casts (about 20 times faster than strftime)."""
    if len(args) != 2:
        raise FunctionError("DATE_FORMAT takes (timestamp, 'pattern')")
    ts, pattern = _expr(args[0]), _literal(args[1], "DATE_FORMAT's pattern")
    if pattern == "yyyy-MM-dd":
        return ts.cast(pa.date32()).cast(pa.string())
    if pattern == "HH:mm":
        return pc.utf8_slice_codeunits(ts.cast(pa.time32("ms")).cast(pa.string()), 0, 5)
    fmt = pattern
    for java, c in _JAVA_TO_STRFTIME:
        fmt = fmt.replace(java, c)
    if re.search(r"[A-Za-z]", re.sub(r"%[A-Za-z]", "", fmt)):
        raise FunctionError(f"DATE_FORMAT pattern {pattern!r}: supported letters are yyyy MM dd HH mm ss")
    return pc.strftime(ts.cast(pa.timestamp("s"), safe=False), format=fmt)  # whole seconds, as Java's ss


def _part(fn):
    def build(args, types):
        if len(args) != 1:
            raise FunctionError("takes one timestamp argument")
        return getattr(pc, fn)(_expr(args[0]))
    return build


# -- strings ------------------------------------------------------------------------------------

def _named_groups(pattern):
    """Java/RE2 pattern with its unnamed capturing groups named g1, g2, ... (extract_regex needs names)."""
    out, i, n = [], 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "(" and not pattern.startswith("(?", i):
            n += 1
            out.append(f"(?P<g{n}>")
        else:
            out.append(c)
        i += 1
    return "(?P<g0>" + "".join(out) + ")"


def regexp_extract(args, types):
    """REGEXP_EXTRACT(s, 'pattern'[, group]): the group's text of the first match, NULL when none."""
    if len(args) not in (2, 3):
        raise FunctionError("REGEXP_EXTRACT takes (string, 'pattern'[, group])")
    pattern = _literal(args[1], "REGEXP_EXTRACT's pattern")
    group = _literal(args[2], "REGEXP_EXTRACT's group") if len(args) == 3 else 0
    return pc.struct_field(pc.extract_regex(_expr(args[0]), pattern=_named_groups(pattern)), f"g{group}")


def split_index(args, types):
    """SPLIT_INDEX(s, 'sep', i): the i-th (0-based) field of s split on sep, NULL past the last."""
    if len(args) != 3:
        raise FunctionError("SPLIT_INDEX takes (string, 'separator', index)")
    sep, index = _literal(args[1], "SPLIT_INDEX's separator"), _literal(args[2], "SPLIT_INDEX's index")
    s = _expr(args[0])
    if len(sep) == 1:  # one regex match: the field after `index` separators, NULL when there are fewer
        c = re.escape(sep)
        return pc.struct_field(pc.extract_regex(s, pattern=f"^(?:[^{c}]*{c}){{{index}}}(?P<g>[^{c}]*)"), "g")
    # one split of s padded with index + 1 separators, so the element exists in every row: s had
    # more than index fields exactly when the padded list has more than 2 * index + 1
    padded = pc.split_pattern(pc.binary_join_element_wise(s, pc.scalar(sep * (index + 1)), ""), pattern=sep)
    return pc.if_else(pc.list_value_length(padded) > 2 * index + 1, pc.list_element(padded, index),
                      pc.scalar(pa.scalar(None, pa.string())))


def _unary(fn, n=1):
    def build(args, types):
        if len(args) != n:
            raise FunctionError(f"takes {n} argument(s)")
        return getattr(pc, fn)(*[_expr(a) for a in args])
    return build


def concat(args, types):
    return pc.binary_join_element_wise(*[_expr(a) for a in args], pc.scalar(""))


def substring(args, types):
    """SUBSTRING(s, start[, length]) with 1-based start."""
    start = _literal(args[1], "SUBSTRING's start") - 1
    stop = None if len(args) < 3 else start + _literal(args[2], "SUBSTRING's length")
    return pc.utf8_slice_codeunits(_expr(args[0]), start, stop) if stop is not None else \
        pc.utf8_slice_codeunits(_expr(args[0]), start)


def mod(args, types):
    """MOD(a, b) of integers (pyarrow has no modulo kernel): a - (a / b) * b, truncated division."""
    if len(args) != 2:
        raise FunctionError("MOD takes (a, b)")
    a, b = _expr(args[0]), _expr(args[1])
    return pc.subtract(a, pc.multiply(pc.divide(a, b), b))


def coalesce(args, types):
    return pc.coalesce(*[_expr(a) for a in args])


BUILTINS = {
    "DATE_FORMAT": date_format,
    "HOUR": _part("hour"), "MINUTE": _part("minute"), "SECOND": _part("second"),
    "YEAR": _part("year"), "MONTH": _part("month"), "DAYOFMONTH": _part("day"),
    "REGEXP_EXTRACT": regexp_extract,
    "SPLIT_INDEX": split_index,
    "LOWER": _unary("utf8_lower"), "UPPER": _unary("utf8_upper"),
    "CHAR_LENGTH": _unary("utf8_length"), "CHARACTER_LENGTH": _unary("utf8_length"),
    "TRIM": _unary("utf8_trim_whitespace"),
    "CONCAT": concat, "SUBSTRING": substring, "SUBSTR": substring,
    "MOD": mod, "ABS": _unary("abs"), "COALESCE": coalesce,
}


# -- user-defined functions ---------------------------------------------------------------------

def udf(return_type):
    """Decorator: mark a vectorised Python function (Arrow arrays in, an array out) with its SQL result type."""
    def mark(fn):
        fn.return_type = return_type
        return fn
    return mark


#: Java UDF classes of published queries and the Sabot ports that stand for them
JAVA_CLASS_ALIASES = {"com.github.nexmark.flink.udf.CountChar": "sabot.sql.udfs:count_char"}


#: registered name -> (reference, argument types, return type): what a worker needs to register it again
_REGISTERED = {}


def _rebuild(udfs, data):
    """Unpickle an expression that calls UDFs: register them in this process first (a worker)."""
    for reference, in_types, return_type in udfs:
        register_udf(reference, in_types, return_type)
    return pc.Expression._deserialize(pa.py_buffer(data))


def _reduce_expression(expr):
    """Pickle pyarrow expressions so the UDFs they call travel with them (to worker processes)."""
    fn, args = expr.__reduce__()
    text = str(expr)
    udfs = [spec for name, spec in _REGISTERED.items() if name in text]
    if not udfs:
        return fn, args
    return _rebuild, (udfs, args[0].to_pybytes())


copyreg.pickle(pc.Expression, _reduce_expression)


def register_udf(reference, in_types, return_type=None):
    """Register ``reference`` (``"module:function"``) with pyarrow for these argument types;
    returns the registered name (the same reference and types give the same name in every process)."""
    fn = refs.resolve(reference)
    return_type = return_type or getattr(fn, "return_type", None)
    if return_type is None:
        raise FunctionError(f"function {reference!r} has no return type: decorate it with "
                            "@sabot.sql.functions.udf(pa.int64()) or give return_type=")
    key = reference + "|" + ",".join(str(t) for t in in_types) + "|" + str(return_type)
    name = "sabot_udf_" + hashlib.sha1(key.encode()).hexdigest()[:16]
    try:
        pc.get_function(name)
        _REGISTERED.setdefault(name, (reference, list(in_types), return_type))
        return name
    except (pa.ArrowKeyError, KeyError, pa.ArrowInvalid):
        pass

    def call(ctx, *arrays):
        out = fn(*arrays)
        if not isinstance(out, (pa.Array, pa.ChunkedArray)):
            out = pa.array(out, return_type)
        return out.cast(return_type) if out.type != return_type else out

    pc.register_scalar_function(call, name, {"summary": reference, "description": reference},
                                {f"a{i}": t for i, t in enumerate(in_types)}, return_type)
    _REGISTERED[name] = (reference, list(in_types), return_type)
    return name

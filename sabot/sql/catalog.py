"""What ``CREATE TABLE`` / ``CREATE VIEW`` / ``CREATE FUNCTION`` / ``SET`` define, per session."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from sabot.sql.errors import SqlError
from sabot.sql.expressions import arrow_type, interval_ms
from sabot.sql.parser import Watermark

# the legacy option names some published DDL uses (Nexmark's q13), and their current names
LEGACY_OPTIONS = {"connector.type": "connector", "connector.path": "path", "format.type": "format"}


@dataclass
class TableDef:
    """A table of ``CREATE TABLE``: physical columns, computed columns, watermark and connector options."""

    name: str
    columns: list  # [(name, arrow type)]
    computed: list = field(default_factory=list)  # [(name, sqlglot expression)]
    watermark: tuple | None = None  # (column, delay in ms)
    options: dict = field(default_factory=dict)
    partitioned_by: list = field(default_factory=list)
    node: object = None
    primary_key: list = field(default_factory=list)  # PRIMARY KEY (...) NOT ENFORCED: an upsert sink's key

    @property
    def schema(self):
        return pa.schema([pa.field(n, t) for n, t in self.columns])

    @property
    def connector(self):
        return self.options.get("connector")


@dataclass
class ViewDef:
    name: str
    query: object  # sqlglot Select
    node: object = None


class Catalog:
    """Tables, views, functions and settings of a session (names are case-insensitive)."""

    def __init__(self):
        self.tables = {}
        self.views = {}
        self.functions = {}  # lower name -> (reference, return type or None)
        self.settings = {}

    def copy(self):
        out = Catalog()
        out.tables = dict(self.tables)
        out.views = dict(self.views)
        out.functions = dict(self.functions)
        out.settings = copy.deepcopy(self.settings)
        return out

    def lookup(self, name):
        key = name.lower()
        if key in self.views:
            return self.views[key]
        return self.tables.get(key)

    # -- DDL ---------------------------------------------------------------------------------

    def create_table(self, node, text):
        schema = node.this
        if not isinstance(schema, exp.Schema):
            raise SqlError("CREATE TABLE needs a column list", text=text, node=node,
                           hint="CREATE TABLE t (a BIGINT, ...) WITH ('connector' = '...')")
        name = schema.this.name
        columns, computed, watermark, primary_key = [], [], None, []
        for item in schema.expressions:
            if isinstance(item, Watermark):
                watermark = self._watermark(item, text)
                continue
            if isinstance(item, exp.PrimaryKey):
                primary_key = [e.name for e in item.expressions]
                continue
            if not isinstance(item, exp.ColumnDef):
                raise SqlError(f"unsupported table element {item.sql(dialect='spark')!r}", text=text, node=item,
                               hint="columns 'name TYPE', computed columns 'name AS expr' and "
                                    "'WATERMARK FOR col AS col - INTERVAL ...' are supported")
            constraints = item.args.get("constraints") or []
            computed_kind = next((c.args["kind"] for c in constraints
                                  if isinstance(c.args.get("kind"), exp.ComputedColumnConstraint)), None)
            if item.name == "$op":  # sabot.runtime.changelog.OP: the row kinds of updating results
                raise SqlError("column name '$op' is reserved for the row kinds of updating results", text=text,
                               node=item, hint="rename the column")
            if computed_kind is not None:
                computed.append((item.name, computed_kind.this))
            else:
                if item.args.get("kind") is None:
                    raise SqlError(f"column {item.name!r} has no type", text=text, node=item)
                columns.append((item.name, arrow_type(item.args["kind"], text)))
        options, partitioned = {}, []
        for prop in (node.args.get("properties").expressions if node.args.get("properties") else []):
            if isinstance(prop, exp.PartitionedByProperty):
                partitioned = [e.name for e in prop.this.expressions]
            elif isinstance(prop, exp.Property):
                key = prop.this.name if isinstance(prop.this, exp.Literal) else prop.name
                value = prop.args["value"]
                options[LEGACY_OPTIONS.get(key, key)] = value.name if isinstance(value, exp.Literal) else value.sql()
            else:
                raise SqlError(f"unsupported table property {prop.sql(dialect='spark')!r}", text=text, node=prop,
                               hint="use WITH ('key' = 'value', ...) and PARTITIONED BY (col, ...)")
        if "connector" not in options:
            raise SqlError(f"table {name!r} has no 'connector' option", text=text, node=node,
                           hint="add WITH ('connector' = 'datagen' | 'nexmark' | 'filesystem' | 'print' | "
                                "'blackhole' | 'collect')")
        names = [c for c, _ in columns] + [c for c, _ in computed]
        if watermark and watermark[0] not in names:
            raise SqlError(f"WATERMARK FOR {watermark[0]!r}: no such column in table {name!r}", text=text,
                           node=node, hint=f"columns: {names}")
        missing = [p for p in partitioned if p not in names]
        if missing:
            raise SqlError(f"PARTITIONED BY {missing}: no such column(s) in table {name!r}", text=text, node=node)
        missing = [k for k in primary_key if k not in names]
        if missing:
            raise SqlError(f"PRIMARY KEY {missing}: no such column(s) in table {name!r}", text=text, node=node,
                           hint=f"columns: {names}")
        if name.lower() in self.tables or name.lower() in self.views:
            if not node.args.get("exists"):
                raise SqlError(f"table or view {name!r} already exists", text=text, node=schema.this,
                               hint="use CREATE TABLE IF NOT EXISTS, or another name")
            return
        self.tables[name.lower()] = TableDef(name, columns, computed, watermark, options, partitioned, node,
                                             primary_key)

    def _watermark(self, item, text):
        column = item.this.name
        expr = item.args["expression"]
        if isinstance(expr, exp.Column) and expr.name == column:
            return column, 0
        if (isinstance(expr, exp.Sub) and isinstance(expr.this, exp.Column) and expr.this.name == column
                and isinstance(expr.expression, exp.Interval)):
            return column, interval_ms(expr.expression, text)
        raise SqlError("unsupported watermark expression", text=text, node=item,
                       hint=f"write WATERMARK FOR {column} AS {column} - INTERVAL 'n' SECOND (bounded "
                            "out-of-orderness), or AS {column}")

    def create_view(self, node, text):
        name = node.this.name
        query = node.expression
        if not isinstance(query, (exp.Select, exp.Union, exp.Subquery)):
            raise SqlError("CREATE VIEW needs AS SELECT ...", text=text, node=node)
        if name.lower() in self.tables or name.lower() in self.views:
            raise SqlError(f"table or view {name!r} already exists", text=text, node=node.this)
        self.views[name.lower()] = ViewDef(name, query, node)

    def create_function(self, node, text):
        from sabot.sql.functions import JAVA_CLASS_ALIASES

        name = node.this.name
        target = node.expression
        if not isinstance(target, exp.Literal) or not target.is_string:
            raise SqlError("CREATE FUNCTION needs AS 'module:function'", text=text, node=node)
        reference = JAVA_CLASS_ALIASES.get(target.this, target.this)
        if ":" not in reference:
            raise SqlError(f"function {name!r}: {target.this!r} is not a Python function reference", text=text,
                           node=target, hint="write CREATE FUNCTION name AS 'package.module:function' (a Python "
                                             "function over Arrow arrays); Java classes are not supported")
        from sabot.runtime import functions as refs

        try:
            refs.resolve(reference)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see
            raise SqlError(f"function {name!r}: cannot import {reference!r}: {exc}", text=text, node=target) from None
        self.functions[name.lower()] = (reference, None)

    def set(self, key, value):
        self.settings[key] = value

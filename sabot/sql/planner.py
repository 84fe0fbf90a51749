"""From a parsed query to Stream API calls: the JobGraph a SQL job runs is the one the
Stream API builds, so key groups, checkpoints, recovery and rescaling are the same.

A query is planned bottom-up into a :class:`Rel`: a Stream plus what SQL knows about its
columns (names and table aliases, event-time attributes, window columns, the hidden
arrival-order columns). Each clause maps to Stream API calls:

=============================================  =============================================
SQL                                            Stream API
=============================================  =============================================
``WHERE``, ``SELECT`` expressions              ``filter`` / ``select`` (pyarrow expressions)
``GROUP BY`` (no window)                       ``key_by(...).aggregate(...)``
``TABLE(TUMBLE/HOP/CUMULATE(...))`` + GROUP BY ``key_by(...).window(size, slide=/step=)``
``GROUP BY SESSION(ts, gap)``                  ``key_by(...).session_window(gap)``
``GROUP BY window_start, window_end`` of a     ``window(window_columns=...)``
windowed input
``JOIN ... ON`` equalities                     ``join`` (regular), ``interval_join`` (a time
                                               bound between both sides' time attributes),
                                               ``window_join`` (both sides windowed, equal
                                               windows)
``JOIN t FOR SYSTEM_TIME AS OF p``             ``join_table`` (a bounded table)
``ROW_NUMBER() OVER (...)`` + ``WHERE rn<=N``  ``key_by(...).top_n(N, ...)``
=============================================  =============================================

Updating results: a non-windowed GROUP BY or Top-N over an unbounded input (or any, with
SET 'sabot.updating-results' = 'always') emits ``emit="updates"`` followed by
``changelog(...)``: its stream carries the row kinds in the column ``$op``
(:mod:`sabot.runtime.changelog`). Projections and filters pass ``$op`` through (applied to
each row, ``-U`` and ``+U`` alike, as Flink does); a non-windowed GROUP BY over a changelog
retracts: COUNT, SUM and AVG add the rows' values with the sign of their kind (+1 for
``+I``/``+U``, -1 for ``-U``/``-D``), and a key whose row count drops to 0 is deleted (``-D``);
a regular inner join over changelogs withdraws a withdrawn row's matches (``-D``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from sabot.execution.operator_spec import agg
from sabot.runtime.changelog import OP, OP_TYPE
from sabot.sql.connectors import Context, connector_of
from sabot.sql.errors import SqlError
from sabot.sql.expressions import Col, Compiler, Scope, interval_ms
from sabot.sql.parser import TableArgument

PROCTIME = "$proctime"
_TVF_HINT = ("window table functions: TUMBLE(TABLE t, DESCRIPTOR(ts), size), HOP(TABLE t, DESCRIPTOR(ts), slide, "
             "size), CUMULATE(TABLE t, DESCRIPTOR(ts), step, size), SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), "
             "gap), followed by GROUP BY window_start, window_end")
_AGG_HINT = "aggregates: COUNT(*), COUNT(x), COUNT(DISTINCT x), SUM, MIN, MAX, AVG, each with FILTER (WHERE ...)"


@dataclass
class Rel:
    """A planned relation."""

    stream: object
    cols: list
    hidden: list = field(default_factory=list)  # arrival-order columns (phys), oldest source first
    times: set = field(default_factory=set)  # phys names of event-time attributes
    window: tuple | None = None  # (start, end) phys of window columns
    tvf: dict | None = None  # a window TVF waiting for its GROUP BY
    topn: dict | None = None  # a ROW_NUMBER waiting for WHERE rn <= N
    bounded: bool = True
    updating: bool = False  # a changelog: the stream has the row-kind column OP ($op)
    upsert_keys: tuple | None = None  # the columns identifying an updating result's rows (phys)

    def with_qualifier(self, q):
        return replace(self, cols=[Col(c.name, q, c.phys) for c in self.cols])


def conjuncts(node):
    if node is None:
        return []
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return conjuncts(node.this)
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    return [node]


def _and(parts):
    out = None
    for p in parts:
        out = p if out is None else exp.And(this=out, expression=p)
    return out


class Planner:
    """Plans the statements of one job (its views are planned once and shared)."""

    def __init__(self, session, text):
        self.session = session
        self.catalog = session
        self.text = text
        self.ctx = Context(text, session.settings)
        self.sources = {}  # table name -> Rel (one source per table per job)
        self.views = {}  # view name -> Rel
        self.ops = {}  # shared aggregates: (input node, spec) -> Stream
        self._ids = itertools.count()

    # -- helpers -----------------------------------------------------------------------------

    def error(self, message, node, hint=None):
        return SqlError(message, text=self.text, node=node, hint=hint)

    def fresh(self, base, taken):
        name = base
        while name in taken:
            name = f"{base}${next(self._ids)}"
        return name

    def scope(self, rel):
        schema = rel.stream.schema
        return Scope(rel.cols, schema, self.text, self.session)

    def compile(self, node, rel, subst=None):
        self._check_proctime(node, rel)
        return Compiler(self.scope(rel), subst).compile(node)

    def _check_proctime(self, node, rel):
        scope = self.scope(rel)
        for col in node.find_all(exp.Column):
            found = scope.find(col.name, col.table or None)
            if len(found) == 1 and found[0].phys.startswith(PROCTIME):
                raise self.error(f"{col.sql(dialect='spark')} is a processing-time attribute (PROCTIME()); it "
                                 "has no value to compute with", col,
                                 hint="use it in DESCRIPTOR() of a window table function or in FOR SYSTEM_TIME AS OF")

    def settings_ms(self, key):
        value = self.session.settings.get(key)
        if value is None:
            return None
        text = str(value).strip().lower()
        units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
        for unit in sorted(units, key=len, reverse=True):
            if text.endswith(unit) and text[:-len(unit)].strip().replace(".", "", 1).isdigit():
                return int(float(text[:-len(unit)]) * units[unit])
        if text.isdigit():
            return int(text)
        raise SqlError(f"setting {key!r} = {value!r} is not a duration", hint="write e.g. '1 h', '10 min', '30 s'")

    # -- queries ---------------------------------------------------------------------------------

    def plan_query(self, node):
        if isinstance(node, exp.Subquery):
            return self.plan_query(node.this)
        if isinstance(node, exp.Select):
            return self.plan_select(node)
        if isinstance(node, exp.Union):
            if node.args.get("distinct"):
                raise self.error("UNION (distinct) is not supported", node, hint="use UNION ALL")
            left, right = self.plan_query(node.this), self.plan_query(node.expression)
            if len(left.cols) != len(right.cols):
                raise self.error("UNION ALL of queries with different numbers of columns", node)
            for lc, rc in zip(left.cols, right.cols):
                lt, rt = left.stream.schema.field(lc.phys).type, right.stream.schema.field(rc.phys).type
                if lt != rt:
                    raise self.error(f"type mismatch in UNION ALL: column {lc.name!r} is {lt} on the left and {rt} "
                                     "on the right", node, hint="CAST one side to the other's type")
            names = [c.phys for c in left.cols]
            updating = left.updating or right.updating
            if updating:  # an insert-only side's rows are +I rows of the changelog
                insert = pc.scalar(pa.scalar(0, OP_TYPE))
                left_stream = left.stream.select({**{n: pc.field(n) for n in names},
                                                  OP: pc.field(OP) if left.updating else insert})
                right_stream = right.stream.select({**{l.phys: pc.field(r.phys) for l, r in zip(left.cols, right.cols)},
                                                    OP: pc.field(OP) if right.updating else insert})
                return Rel(left_stream.union(right_stream), [Col(c.name, None, c.phys) for c in left.cols],
                           bounded=left.bounded and right.bounded, updating=True)
            left_stream = left.stream if left.stream.schema.names == names else left.stream.select(names)
            right_stream = right.stream.select({r.phys: l.phys for l, r in zip(left.cols, right.cols)})
            return Rel(left_stream.union(right_stream), [Col(c.name, None, c.phys) for c in left.cols],
                       bounded=left.bounded and right.bounded, updating=left.updating or right.updating)
        raise self.error(f"unsupported query {node.sql(dialect='spark')[:60]!r}", node,
                         hint="SELECT ... FROM ... [WHERE] [GROUP BY] [HAVING], or UNION ALL")

    def plan_select(self, sel):
        for key, what in (("order", "ORDER BY"), ("limit", "LIMIT"), ("distinct", "SELECT DISTINCT")):
            if sel.args.get(key):
                raise self.error(f"{what} is not supported on a stream", sel.args[key] if key != "distinct"
                                 else sel, hint="use ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) with "
                                                "WHERE rn <= N (Top-N), or GROUP BY")
        if not sel.args.get("from_"):
            raise self.error("SELECT without FROM is not supported", sel, hint="select from a table or view")
        rel, rest = self.plan_from(sel)
        if rel.topn is not None:
            rel, rest = self.apply_topn(rel, rest, sel)
        aggregates = [a for e in sel.expressions for a in e.find_all(exp.AggFunc)
                      if not a.find_ancestor(exp.Window)]
        plain = not (sel.args.get("group") or aggregates or sel.args.get("having") or rel.tvf is not None
                     or any(e.find(exp.Window) for e in sel.expressions))
        if rest and plain:
            early = self._filter_late(rel, sel.expressions, rest)
            if early is not None:
                return early
        if rest:
            rel = self.filter(rel, _and(rest))
        if sel.args.get("group") or aggregates:
            return self.plan_aggregate(rel, sel)
        if sel.args.get("having"):
            raise self.error("HAVING needs GROUP BY", sel.args["having"])
        windows = [e for e in sel.expressions if e.find(exp.Window)]
        if windows:
            return self.plan_row_number(rel, sel, windows)
        if rel.tvf is not None:
            rel = self.materialise_tvf(rel)
        return self.project(rel, sel.expressions)

    def _filter_late(self, rel, items, rest):
        """SELECT items that are column picks (``a``, ``s.field``) or that the WHERE computes too
        (``0.908 * price`` in both) are projected before the filter: the filter then copies only
        the columns the query keeps and reads the shared values, and the other items are computed
        after it, on the rows it keeps. None when nothing is gained (or a name does not resolve:
        the ordinary path reports it)."""
        scope = self.scope(rel)
        where_sqls = {n.sql(dialect="spark") for r in rest for n in r.walk()}
        early, late = [], []
        for item in items:
            node = item.this if isinstance(item, exp.Alias) else item
            if isinstance(node, exp.Star) or (isinstance(node, exp.Column) and isinstance(node.this, exp.Star)):
                return None
            if isinstance(node, exp.Column) or node.sql(dialect="spark") in where_sqls:
                early.append(node)
            else:
                late.append(node)
        if not early:
            return None
        needed = {}
        for node in list(rest) + late:
            for col in node.find_all(exp.Column):
                found = scope.find(col.name, col.table or None)
                if len(found) != 1 or found[0].phys.startswith(PROCTIME):
                    return None
                needed[found[0].phys] = found[0]
        exprs, subst, taken = {}, {}, set(rel.stream.schema.names)
        for c in needed.values():
            exprs[c.phys] = pc.field(c.phys)
        times = {p_ for p_ in needed if p_ in rel.times}
        for node in early:
            key = node.sql(dialect="spark")
            if key in subst:
                continue
            for col in node.find_all(exp.Column):
                found = scope.find(col.name, col.table or None)
                if len(found) == 1 and found[0].phys.startswith(PROCTIME):
                    return None
            e = Compiler(scope).compile(node)
            if _field_name(e) in needed:  # already a column of the projection
                subst[key] = _field_name(e)
                continue
            phys = self.fresh("$e", taken)
            taken.add(phys)
            exprs[phys] = e
            subst[key] = phys
            if _field_name(e) in rel.times:
                times.add(phys)
        for h in rel.hidden:
            exprs[h] = pc.field(h)
        if rel.updating:
            exprs[OP] = pc.field(OP)
        narrowed = Rel(_select(rel.stream, exprs), list(needed.values()), hidden=list(rel.hidden), times=times,
                       bounded=rel.bounded, updating=rel.updating)
        scope2 = self.scope(narrowed)
        cond = _SubstCompiler(scope2, subst).compile(_and(rest))
        t = scope2.type_of(cond, rest[0])
        if t != pa.bool_():
            raise self.error(f"WHERE condition is {t}, not BOOLEAN", rest[0], hint="compare it, e.g. x > 0")
        filtered = replace(narrowed, stream=narrowed.stream.filter(cond))
        out = self.project(filtered, items, subst=subst, compiler=_SubstCompiler)
        # the early values are columns of `filtered`: make the projection see them as the inputs' times
        return out

    def filter(self, rel, condition):
        if condition is None:
            return rel
        expr = self.compile(condition, rel)
        t = self.scope(rel).type_of(expr, condition)
        if t != pa.bool_():
            raise self.error(f"WHERE condition is {t}, not BOOLEAN", condition, hint="compare it, e.g. x > 0")
        return replace(rel, stream=rel.stream.filter(expr))

    # -- FROM -----------------------------------------------------------------------------------

    def plan_from(self, sel):
        rel = self.plan_table_ref(sel.args["from_"].this)
        where = sel.args.get("where")
        rest = conjuncts(where.this if where is not None else None)
        for join in sel.args.get("joins") or []:
            rel, rest = self.plan_join(rel, join, rest, sel)
        return rel, rest

    def plan_table_ref(self, node):
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Anonymous) and node.this.name.upper() == "TABLE":
            inner = node.this.expressions[0] if node.this.expressions else None
            if not isinstance(inner, exp.Anonymous):
                raise self.error("TABLE(...) takes a window table function", node, hint=_TVF_HINT)
            rel = self.plan_tvf(inner)
            return rel.with_qualifier(node.alias or None)
        if isinstance(node, exp.Table):
            if node.args.get("version") is not None:
                raise self.error("FOR SYSTEM_TIME AS OF is a lookup join: write it as JOIN t FOR SYSTEM_TIME "
                                 "AS OF x.proc_time ON ...", node)
            return self.plan_named(node).with_qualifier(node.alias or node.name)
        if isinstance(node, exp.Subquery):
            rel = self.plan_query(node.this)
            return rel.with_qualifier(node.alias or None)
        raise self.error(f"unsupported FROM item {node.sql(dialect='spark')[:60]!r}", node,
                         hint="a table, a view, a subquery or TABLE(TUMBLE/HOP/CUMULATE(...))")

    def plan_named(self, node):
        name = node.name
        obj = self.catalog.lookup(name)
        if obj is None:
            known = sorted([t.name for t in self.catalog.tables.values()] + [v.name for v in self.catalog.views.values()])
            raise self.error(f"unknown table {name!r}", node, hint=f"known tables and views: {known}; "
                                                                  "define it with CREATE TABLE or CREATE VIEW")
        key = name.lower()
        if key in self.catalog.views:
            if key not in self.views:
                self.views[key] = self.plan_query(obj.query)
            return self.views[key]
        if key not in self.sources:
            self.sources[key] = self.plan_source(obj)
        return self.sources[key]

    def plan_source(self, table):
        connector = connector_of(table, self.ctx, "source")
        src = connector.source(table, self.ctx)
        stream = src.stream
        names = [n for n, _ in table.columns]
        cols = [Col(n, None, n) for n in names]
        computed = [(n, e) for n, e in table.computed if n not in src.provided]
        cols += [Col(n, None, n) for n, _ in table.computed if n in src.provided]
        rel = Rel(stream, cols, hidden=list(src.hidden), bounded=src.bounded)
        if table.watermark:
            rel.times.add(table.watermark[0])
        if computed:
            rel = self.project(rel, None, computed_columns=computed)
        return rel

    # -- window table functions ------------------------------------------------------------------

    def plan_tvf(self, fn):
        name = fn.name.upper()
        if name not in ("TUMBLE", "HOP", "CUMULATE", "SESSION"):
            raise self.error(f"unsupported table function {name}", fn, hint=_TVF_HINT)
        args = fn.expressions
        if len(args) < 3 or not isinstance(args[0], TableArgument):
            raise self.error(f"{name} needs (TABLE t, DESCRIPTOR(ts), interval...)", fn, hint=_TVF_HINT)
        rel = self.plan_table_ref(args[0].this)
        desc = args[1]
        if not (isinstance(desc, exp.Anonymous) and desc.name.upper() == "DESCRIPTOR" and desc.expressions):
            raise self.error(f"{name}'s second argument must be DESCRIPTOR(time_column)", desc, hint=_TVF_HINT)
        col = desc.expressions[0]
        found = self.scope(rel).find(col.name, col.table or None)
        if len(found) != 1:
            raise self.error(f"unknown column {col.name!r} in DESCRIPTOR", col,
                             hint=f"available columns: {self.scope(rel).available()}")
        phys = found[0].phys
        if phys.startswith(PROCTIME):
            time = "processing"
        elif phys in rel.times:
            time = "event"
        else:
            raise self.error(f"{col.name!r} is not a time attribute", col,
                             hint="declare WATERMARK FOR it in CREATE TABLE, or use a PROCTIME() column")
        intervals = [interval_ms(a, self.text) for a in args[2:]]
        want = {"TUMBLE": 1, "HOP": 2, "CUMULATE": 2, "SESSION": 1}[name]
        if len(intervals) != want:
            raise self.error(f"{name} takes {want} interval(s), got {len(intervals)}", fn, hint=_TVF_HINT)
        spec = {"kind": name, "time": time, "time_column": None if time == "processing" else phys, "node": fn}
        partition = args[0].args.get("partition") or []
        if name == "SESSION":
            if time != "event":
                raise self.error("SESSION windows need an event-time column", col, hint="declare WATERMARK FOR it")
            if not partition:
                raise self.error("SESSION needs TABLE t PARTITION BY key", args[0],
                                 hint="SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), INTERVAL 'n' SECOND)")
            scope = self.scope(rel)
            for p_ in partition:
                if len(scope.find(p_.name, p_.table or None)) != 1:
                    raise self.error(f"unknown column {p_.name!r} in PARTITION BY", p_,
                                     hint=f"available columns: {scope.available()}")
            spec["gap"] = intervals[0]
            spec["partition"] = partition
        elif partition:
            raise self.error(f"{name} takes no PARTITION BY", args[0], hint=_TVF_HINT)
        if name == "TUMBLE":
            spec["size"] = intervals[0]
        elif name == "HOP":
            spec["slide"], spec["size"] = intervals
        elif name == "CUMULATE":
            spec["step"], spec["size"] = intervals
        cols = [c for c in rel.cols] + [Col("window_start", None, "$window_start"),
                                        Col("window_end", None, "$window_end"), Col("window_time", None, "$window_time")]
        return replace(rel, cols=cols, tvf=spec)

    def materialise_tvf(self, rel):
        spec = rel.tvf
        if spec["kind"] != "TUMBLE" or spec["time"] != "event":
            raise self.error(f"{spec['kind']} without GROUP BY window_start, window_end is not supported", spec["node"],
                             hint="aggregate per window (GROUP BY window_start, window_end, ...), or use TUMBLE "
                                  "on an event-time column to only label rows")
        ts = pc.field(spec["time_column"])
        t = rel.stream.schema.field(spec["time_column"]).type
        size = spec["size"]
        as_int = ts.cast(pa.int64())
        start = pc.subtract(as_int, pc.subtract(as_int, pc.multiply(pc.divide(as_int, size), size))).cast(t)
        end = pc.add(start.cast(pa.int64()), size).cast(t)
        base = [c for c in rel.cols if not c.phys.startswith("$window")]
        exprs = {c.phys: pc.field(c.phys) for c in base if not c.phys.startswith(PROCTIME)}
        exprs.update({h: pc.field(h) for h in rel.hidden})
        ws, we = self.fresh("window_start", exprs), None
        exprs[ws] = start
        we = self.fresh("window_end", exprs)
        exprs[we] = end
        cols = base + [Col("window_start", None, ws), Col("window_end", None, we), Col("window_time", None, we)]
        return replace(rel, stream=_select(rel.stream, exprs), cols=cols, tvf=None, window=(ws, we),
                       times=rel.times | {ws, we})

    # -- projection -------------------------------------------------------------------------------

    def expand(self, rel, items):
        """``*`` and ``t.*`` expanded to columns; returns [(sql node, output name)]."""
        out = []
        for i, item in enumerate(items):
            if isinstance(item, exp.Star):
                out += [(exp.column(c.name, c.qualifier), c.name) for c in rel.cols
                        if not c.phys.startswith("$window")]
                continue
            if isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                q = item.table
                picked = [c for c in rel.cols if c.qualifier and c.qualifier.lower() == q.lower()]
                if not picked:
                    raise self.error(f"unknown table {q!r} in {q}.*", item,
                                     hint=f"tables here: {sorted({c.qualifier for c in rel.cols if c.qualifier})}")
                out += [(exp.column(c.name, c.qualifier), c.name) for c in picked]
                continue
            if isinstance(item, exp.Alias):
                out.append((item.this, item.alias))
            elif isinstance(item, exp.Column):
                out.append((item, item.name))
            else:
                out.append((item, f"EXPR${i}"))
        return out

    def project(self, rel, items, subst=None, computed_columns=None, keep_hidden=True, compiler=None):
        """SELECT items over ``rel`` (``computed_columns``: a table's computed columns, added to its columns)."""
        if computed_columns is not None:
            pairs = [(exp.column(c.name), c.name) for c in rel.cols] + [(e, n) for n, e in computed_columns]
        else:
            pairs = self.expand(rel, items)
        scope = self.scope(rel)
        exprs, cols, times, taken = {}, [], set(), set()
        window = [None, None]
        for node, name in pairs:
            if isinstance(node, exp.Anonymous) and node.name.upper() == "PROCTIME" and not node.expressions:
                cols.append(Col(name, None, f"{PROCTIME}{next(self._ids)}"))
                continue
            if isinstance(node, exp.Column) and not (subst and node.sql(dialect="spark") in subst):
                found = scope.find(node.name, node.table or None)
                if len(found) == 1 and found[0].phys.startswith(PROCTIME):
                    cols.append(Col(name, None, found[0].phys))
                    continue
            if not (subst and node.sql(dialect="spark") in subst):
                self._check_proctime(node, rel)
            expr = (compiler or Compiler)(scope, subst).compile(node)
            phys = self.fresh(name, taken)
            taken.add(phys)
            exprs[phys] = expr
            cols.append(Col(name, None, phys))
            src = _field_name(expr)
            if src is not None:
                if src in rel.times:
                    times.add(phys)
                if rel.window and src == rel.window[0]:
                    window[0] = phys
                if rel.window and src == rel.window[1]:
                    window[1] = phys
        hidden = []
        if keep_hidden:
            for h in rel.hidden:
                if h in rel.stream.schema.names:
                    phys = self.fresh(h, taken)
                    taken.add(phys)
                    exprs[phys] = pc.field(h)
                    hidden.append(phys)
        if not exprs:
            raise self.error("the query selects no computable column", items[0] if items else None)
        if rel.updating:  # the row kinds travel with the rows
            exprs[OP] = pc.field(OP)
        names = rel.stream.schema.names
        identity = list(exprs) == names and all(_field_name(e) == n for n, e in exprs.items())
        stream = rel.stream if identity else _select(rel.stream, exprs)
        return Rel(stream, cols, hidden=hidden, times=times, window=tuple(window) if all(window) else None,
                   bounded=rel.bounded, updating=rel.updating, upsert_keys=_keys_through(rel.upsert_keys, exprs))

    # -- joins -------------------------------------------------------------------------------------

    def plan_join(self, left, join, rest, sel):
        right_node = join.this
        side = (join.side or "").upper()
        how = {"": "inner", "LEFT": "left", "RIGHT": "right", "FULL": "full"}[side]
        if isinstance(right_node, exp.Table) and right_node.args.get("version") is not None:
            return self.lookup_join(left, join, how, rest)
        right = self.plan_table_ref(right_node)
        on = conjuncts(join.args.get("on"))
        if join.args.get("using"):
            raise self.error("JOIN ... USING is not supported", join, hint="write ON a.k = b.k")
        lscope, rscope = self.scope(left), self.scope(right)
        conds, keep = list(on), []
        for c in rest:  # WHERE conjuncts over the two sides: join conditions or pushed into a side
            sides = self._sides(c, lscope, rscope)
            if sides is None or how != "inner":
                keep.append(c)
            else:
                conds.append(c)
        left_only, right_only, both = [], [], []
        for c in conds:
            sides = self._sides(c, lscope, rscope)
            if sides == {"l"} and how in ("inner", "right"):
                left_only.append(c)
            elif sides == {"r"} and how in ("inner", "left"):
                right_only.append(c)
            elif sides is None:
                raise self.error(f"join condition {c.sql(dialect='spark')!r} names a column of neither side", c)
            else:
                both.append(c)
        left = self.filter(left, _and(left_only))
        right = self.filter(right, _and(right_only))
        left, right = self.prune(left, sel), self.prune(right, sel)
        lscope, rscope = self.scope(left), self.scope(right)
        equi, residual, bound = [], [], None
        for c in both:
            pair = self._equi(c, lscope, rscope)
            if pair is not None:
                equi.append(pair)
                continue
            b = self._time_bound(c, left, right, lscope, rscope)
            if b is not None and bound is None:
                bound = b
                continue
            residual.append(c)
        node_for_errors = join.args.get("on") or join
        if not equi:
            raise self.error("a stream join needs at least one equality between the two sides", node_for_errors,
                             hint="join ON a.key = b.key (add window_start/window_end equalities for a window join)")
        return self._join(left, right, equi, residual, bound, how, node_for_errors), keep

    def _sides(self, cond, lscope, rscope):
        sides = set()
        for col in cond.find_all(exp.Column):
            q = col.table or None
            lf = lscope.find(col.name, q) if (q is None or q.lower() in {x.lower() for x in lscope.qualifiers()}) else []
            rf = rscope.find(col.name, q) if (q is None or q.lower() in {x.lower() for x in rscope.qualifiers()}) else []
            if lf and rf:
                raise SqlError(f"column {col.sql(dialect='spark')!r} is ambiguous: both sides of the join have it",
                               text=self.text, node=col, hint="qualify it with the table's alias")
            if lf:
                sides.add("l")
            elif rf:
                sides.add("r")
            else:
                return None
        return sides or None

    def _equi(self, c, lscope, rscope):
        if not isinstance(c, exp.EQ):
            return None
        a, b = c.this, c.expression
        sa, sb = self._sides(a, lscope, rscope), self._sides(b, lscope, rscope)
        if sa == {"l"} and sb == {"r"}:
            return a, b, c
        if sa == {"r"} and sb == {"l"}:
            return b, a, c
        return None

    def _time_bound(self, c, left, right, lscope, rscope):
        """``l.t BETWEEN r.t + a AND r.t + b`` (or the mirror) over two time attributes: (lower, upper, lt, rt)."""
        if not isinstance(c, exp.Between):
            return None

        def time_col(node, scope, rel):
            if isinstance(node, exp.Column):
                f = scope.find(node.name, node.table or None)
                if len(f) == 1 and f[0].phys in rel.times:
                    return f[0].phys
            return None

        def offset(node, scope, rel):
            if isinstance(node, (exp.Add, exp.Sub)) and isinstance(node.expression, exp.Interval):
                t = time_col(node.this, scope, rel)
                ms = interval_ms(node.expression, self.text)
                return (t, ms if isinstance(node, exp.Add) else -ms) if t else None
            t = time_col(node, scope, rel)
            return (t, 0) if t else None

        lt = time_col(c.this, lscope, left)
        if lt:
            lo, hi = offset(c.args["low"], rscope, right), offset(c.args["high"], rscope, right)
            if lo and hi and lo[0] == hi[0]:
                return lo[1], hi[1], lt, lo[0]
        rt = time_col(c.this, rscope, right)
        if rt:
            lo, hi = offset(c.args["low"], lscope, left), offset(c.args["high"], lscope, left)
            if lo and hi and lo[0] == hi[0]:  # r.t in [l.t + a, l.t + b]  <=>  l.t in [r.t - b, r.t - a]
                return -hi[1], -lo[1], lo[0], rt
        return None

    def prune(self, rel, sel):
        """Only the columns the query names go into a join (a join copies every column it holds)."""
        if any(isinstance(e, exp.Star) for e in sel.expressions):
            return rel
        used, star_of = set(), set()
        for col in sel.find_all(exp.Column):
            if isinstance(col.this, exp.Star):
                star_of.add((col.table or "").lower())
                continue
            used.add(((col.table or "").lower(), col.name.lower()))
        keep = []
        for c in rel.cols:
            q = (c.qualifier or "").lower()
            if c.phys.startswith(("$window", PROCTIME)) or q in star_of or (q, c.name.lower()) in used \
                    or ("", c.name.lower()) in used or c.phys in rel.times or (rel.window and c.phys in rel.window):
                keep.append(c)
        if len(keep) == len(rel.cols) or rel.tvf is not None:
            return rel
        names = [c.phys for c in keep if not c.phys.startswith(PROCTIME)] + list(rel.hidden)
        if rel.updating:
            names.append(OP)
        return replace(rel, stream=rel.stream.select(names), cols=keep)

    def _key_columns(self, rel, exprs, prefix):
        """Each join key as a column: plain columns as they are, expressions computed first."""
        scope = self.scope(rel)
        phys, computed = [], {}
        for e in exprs:
            if isinstance(e, exp.Column):
                self._check_proctime(e, rel)
                phys.append(_field_name(scope.resolve(e)))
            else:
                name = self.fresh(f"${prefix}{len(phys)}", set(rel.stream.schema.names))
                computed[name] = self.compile(e, rel)
                phys.append(name)
        if computed:
            exprs_all = {n: pc.field(n) for n in rel.stream.schema.names}
            exprs_all.update(computed)
            rel = replace(rel, stream=_select(rel.stream, exprs_all))
        return rel, phys

    def _join(self, left, right, equi, residual, bound, how, node):
        if left.updating or right.updating:  # a regular inner join applies retractions; others refuse
            windowed = left.window and right.window
            if bound is not None or windowed or how != "inner":
                what = "an outer join" if how != "inner" else "an interval join" if bound is not None \
                    else "a window join"
                self._refuse_updating(left if left.updating else right, what, node)
        left, lkeys = self._key_columns(left, [a for a, _, _ in equi], "lk")
        right, rkeys = self._key_columns(right, [b for _, b, _ in equi], "rk")
        lt, rt = left.stream.schema, right.stream.schema
        for (a, b, c), lk, rk in zip(equi, lkeys, rkeys):
            ta, tb = lt.field(lk).type, rt.field(rk).type
            if ta != tb:
                raise self.error(f"type mismatch in join condition {c.sql(dialect='spark')!r}: {ta} vs {tb}", c,
                                 hint="CAST one side to the other's type")
        suffix = f"$r{next(self._ids)}"
        from sabot.execution.operator_spec import join_output_names

        lnames, rnames = [n for n in lt.names if n != OP], [n for n in rt.names if n != OP]
        rename = dict(zip(rnames, join_output_names(lnames, rnames, suffix)))
        cols = left.cols + [Col(c.name, c.qualifier, rename.get(c.phys, c.phys)) for c in right.cols]
        hidden = list(left.hidden) + [rename[h] for h in right.hidden if h in rename]
        times = set(left.times) | {rename[t] for t in right.times if t in rename}
        out = Rel(None, cols, hidden=hidden, bounded=left.bounded and right.bounded,
                  updating=left.updating or right.updating)
        # the residual condition is evaluated over the join's output columns
        out_schema = pa.schema([f for f in lt if f.name != OP]
                               + [f.with_name(rename[f.name]) for f in rt if f.name != OP])
        where = None
        if residual:
            where_scope = Scope(cols, out_schema, self.text, self.session)
            where = Compiler(where_scope).compile(_and(residual))
        window_pairs = None
        if left.window and right.window:
            pairs = {(lk, rk) for lk, rk in zip(lkeys, rkeys)}
            if (left.window[0], right.window[0]) in pairs and (left.window[1], right.window[1]) in pairs:
                window_pairs = True
        if window_pairs:
            keys = [(lk, rk) for lk, rk in zip(lkeys, rkeys)
                    if (lk, rk) not in ((left.window[0], right.window[0]), (left.window[1], right.window[1]))]
            if not keys:
                keys = [(left.window[0], right.window[0])]
            stream = left.stream.window_join(
                right.stream, left_on=[k for k, _ in keys], right_on=[k for _, k in keys], how=how, where=where,
                window_columns=(tuple(left.window), tuple(right.window)), suffix=suffix)
            out.window = left.window
            out.times = {left.window[0], left.window[1]}
        elif bound is not None:
            lower, upper, ltime, rtime = bound
            stream = left.stream.interval_join(right.stream, left_on=lkeys, right_on=rkeys, lower=lower, upper=upper,
                                               time_column=(ltime, rtime), how=how, where=where, suffix=suffix)
            out.times = times
        else:
            ttl = self.settings_ms("table.exec.state.ttl")
            if ttl is None and not (left.bounded and right.bounded):
                raise self.error("a regular join of unbounded streams keeps every row for ever", node,
                                 hint="set a retention with SET 'table.exec.state.ttl' = '1 h', or bound the join "
                                      "in time: an interval join (a.ts BETWEEN b.ts - INTERVAL ... AND b.ts) or a "
                                      "window join (equal window_start and window_end)")
            kwargs = {}
            if ttl is not None:
                lts, rts = sorted(left.times), sorted(right.times)
                if not lts or not rts:
                    raise self.error("a join with 'table.exec.state.ttl' needs a time attribute on both sides", node,
                                     hint="select each side's watermarked column into the join")
                kwargs = {"ttl": ttl, "time_column": (lts[0], rts[0])}
            stream = left.stream.join(right.stream, left_on=lkeys, right_on=rkeys, how=how, where=where,
                                      suffix=suffix, **kwargs)
            out.times = times
        out.stream = stream
        return out

    def lookup_join(self, left, join, how, rest):
        node = join.this
        self._refuse_updating(left, "a lookup join", join)
        version = node.args["version"]
        table = self.catalog.lookup(node.name)
        if table is None or not hasattr(table, "columns"):
            raise self.error(f"unknown table {node.name!r}", node, hint="a lookup join reads a CREATE TABLE table")
        col = version.expression
        found = self.scope(left).find(col.name, col.table or None) if isinstance(col, exp.Column) else []
        if len(found) != 1 or not found[0].phys.startswith(PROCTIME):
            raise self.error("FOR SYSTEM_TIME AS OF needs a processing-time attribute (PROCTIME())", version,
                             hint="event-time temporal joins are not supported; add PROCTIME() AS p_time to the "
                                  "probe side")
        if how not in ("inner", "left"):
            raise self.error("a lookup join is INNER or LEFT", join)
        connector = connector_of(table, self.ctx, "read_table")
        data = connector.read_table(table, self.ctx)
        alias = node.alias or node.name
        right_cols = [Col(n, alias, n) for n in data.schema.names]
        rscope = Scope(right_cols, data.schema, self.text, self.session)
        lscope = self.scope(left)
        left_exprs, right_keys = [], []
        for c in conjuncts(join.args.get("on")):
            pair = self._equi(c, lscope, rscope)
            if pair is None or not isinstance(pair[1], exp.Column):
                raise self.error(f"unsupported lookup join condition {c.sql(dialect='spark')!r}", c,
                                 hint="a lookup join takes ON <expression of the stream> = <column of the table> "
                                      "conditions joined by AND")
            left_exprs.append(pair[0])
            right_keys.append(rscope.find(pair[1].name)[0].phys)
        left, lkeys = self._key_columns(left, left_exprs, "lk")
        for lk, rk in zip(lkeys, right_keys):
            lt, rt = left.stream.schema.field(lk).type, data.schema.field(rk).type
            if lt != rt:
                try:
                    data = data.set_column(data.schema.get_field_index(rk), rk, data.column(rk).cast(lt))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise self.error(f"type mismatch in lookup join: {lt} vs {rt}", join) from None
        suffix = f"$r{next(self._ids)}"
        stream = left.stream.join_table(data, on=lkeys, right_on=right_keys, how=how, suffix=suffix)
        extra = [n for n in data.schema.names if n not in right_keys]
        from sabot.execution.operator_spec import join_output_names

        names = join_output_names(left.stream.schema.names, extra, suffix)
        cols = left.cols + [Col(n, alias, p) for n, p in zip(extra, names)]
        cols += [Col(rk, alias, lk) for lk, rk in zip(lkeys, right_keys)]  # equal to the probe's key
        return replace(left, stream=stream, cols=cols), rest

    # -- aggregation ----------------------------------------------------------------------------------

    def _refuse_updating(self, rel, what, node):
        """Operators that do not consume a changelog (outer, interval and window joins, lookup
        joins, windows, ROW_NUMBER) refuse an updating input, rather than treat its every update
        as a new row."""
        if rel.updating:
            raise self.error(f"{what} over an updating result (a GROUP BY or Top-N without a window over an "
                             "unbounded input) is not supported: it does not apply retractions", node,
                             hint="a GROUP BY without a window, a regular INNER JOIN, WHERE and SELECT expressions "
                                  "consume updating results; or aggregate the inner query per window (TUMBLE/HOP/"
                                  "CUMULATE/SESSION), or bound its input (e.g. 'events.num' / 'number-of-rows')")

    def plan_aggregate(self, rel, sel):
        group = list(sel.args["group"].expressions) if sel.args.get("group") else []
        items = sel.expressions
        having = sel.args.get("having")
        scope = self.scope(rel)
        window = None  # dict describing the window
        keys_nodes = []
        for g in group:
            if isinstance(g, exp.Anonymous) and g.name.upper() in ("SESSION", "TUMBLE", "HOP"):
                window = self._group_window(g, rel)
                continue
            keys_nodes.append(g)
        if rel.tvf is not None:
            spec = rel.tvf
            names = {}
            for g in list(keys_nodes):
                if isinstance(g, exp.Column):
                    f = scope.find(g.name, g.table or None)
                    if len(f) == 1 and f[0].phys in ("$window_start", "$window_end", "$window_time"):
                        names[f[0].phys] = g
                        keys_nodes.remove(g)
            if "$window_start" not in names or "$window_end" not in names:
                raise self.error(f"{spec['kind']} needs GROUP BY window_start, window_end", sel.args.get("group")
                                 or spec["node"], hint=_TVF_HINT)
            window = dict(spec)
            if spec["kind"] == "SESSION":  # sessions are per partition key: those must be grouped on
                grouped = {g.sql(dialect="spark").lower() for g in keys_nodes} | {
                    g.name.lower() for g in keys_nodes if isinstance(g, exp.Column)}
                missing = [p_.sql(dialect="spark") for p_ in spec["partition"]
                           if p_.sql(dialect="spark").lower() not in grouped and p_.name.lower() not in grouped]
                if missing:
                    raise self.error(f"SESSION's PARTITION BY {missing} must be in GROUP BY", sel.args["group"],
                                     hint="GROUP BY the partition keys, window_start, window_end")
        elif rel.window is not None and window is None:
            found = {}
            for g in list(keys_nodes):
                if isinstance(g, exp.Column):
                    f = scope.find(g.name, g.table or None)
                    if len(f) == 1 and f[0].phys in rel.window:
                        found[f[0].phys] = g
            if len(found) == 2:
                for g in found.values():
                    keys_nodes.remove(g)
                window = {"kind": "COLUMNS", "columns": list(rel.window), "nodes": found}
        if window is not None:
            self._refuse_updating(rel, "a window aggregation", sel.args.get("group") or sel)
        retract = rel.updating  # a GROUP BY over a changelog: values count with their row kind's sign
        # pre-projection: computed keys and aggregate arguments become columns
        pre = {n: pc.field(n) for n in rel.stream.schema.names}
        taken = set(pre)
        key_phys, subst = [], {}
        for g in keys_nodes:
            self._check_proctime(g, rel)
            if isinstance(g, exp.Column):
                phys = _field_name(scope.resolve(g))
            else:
                phys = self.fresh(f"$k{len(key_phys)}", taken)
                taken.add(phys)
                pre[phys] = self.compile(g, rel)
            key_phys.append(phys)
            subst[g.sql(dialect="spark")] = phys
        aggs, post_exprs, seen_aggs = [], {}, {}
        sign = rows_col = None
        if retract:
            sign = self.fresh("$sign", taken)
            taken.add(sign)
            one = pc.scalar(pa.scalar(1, OP_TYPE))
            pre[sign] = pc.if_else(pc.equal(pc.bit_wise_and(pc.field(OP), one), one), pc.scalar(-1), pc.scalar(1))
            rows_col = self.fresh("$rows", taken)  # the key's number of rows: 0 deletes it
            taken.add(rows_col)
            aggs.append(agg("sum", sign, name=rows_col))
            memo = {}
        calls = []
        for node in list(items) + ([having] if having is not None else []):
            for a in node.find_all(exp.AggFunc):
                if a.find_ancestor(exp.Window):
                    continue
                parent = a.parent
                call = parent if isinstance(parent, exp.Filter) else a
                if call.sql(dialect="spark") not in [c.sql(dialect="spark") for c in calls]:
                    calls.append(call)
        for call in calls:
            a = call.this if isinstance(call, exp.Filter) else call
            where = None
            if isinstance(call, exp.Filter):
                cond = call.expression.this if isinstance(call.expression, exp.Where) else call.expression
                where = self.compile(cond, rel)
            fn = type(a).__name__.upper()
            arg = a.this
            distinct = isinstance(arg, exp.Distinct)
            if distinct:
                if len(arg.expressions) != 1:
                    raise self.error("COUNT(DISTINCT ...) takes one column", a)
                arg = arg.expressions[0]
            column = "*"
            if not isinstance(arg, exp.Star) and arg is not None:
                if isinstance(arg, exp.Column):
                    self._check_proctime(arg, rel)
                    column = _field_name(scope.resolve(arg))
                else:
                    column = self.fresh(f"$a{len(aggs)}", taken)
                    taken.add(column)
                    pre[column] = self.compile(arg, rel)
            if retract:
                post_exprs[call.sql(dialect="spark")] = self._retracting(fn, a, distinct, column, where, sign, pre,
                                                                         aggs, taken, rel, memo)
                continue
            same = (fn, column, distinct, str(where))
            if same in seen_aggs:  # the same aggregate twice (SUM(price) and AVG(price)'s sum): computed once
                subst[call.sql(dialect="spark")] = seen_aggs[same]
                continue
            out = self.fresh(f"$agg{len(aggs)}", taken)
            taken.add(out)
            if fn != "AVG":
                seen_aggs[same] = out
            if fn == "COUNT":
                aggs.append(agg("count_distinct" if distinct else "count", column, where=where, name=out))
            elif distinct:
                raise self.error(f"{fn}(DISTINCT ...) is not supported", a, hint="COUNT(DISTINCT x) is")
            elif fn in ("SUM", "MIN", "MAX"):
                aggs.append(agg(fn.lower(), column, where=where, name=out))
            elif fn == "AVG":
                t = pre[column] if column in pre and column not in rel.stream.schema.names else None
                ctype = self.scope(rel).type_of(t, arg) if t is not None else rel.stream.schema.field(column).type
                if pa.types.is_integer(ctype):  # Flink: AVG of an integer is an integer (truncated)
                    s = seen_aggs.get(("SUM", column, False, str(where)))
                    n = seen_aggs.get(("COUNT", column, False, str(where)))
                    if s is None:
                        s = seen_aggs[("SUM", column, False, str(where))] = out + "$sum"
                        aggs.append(agg("sum", column, where=where, name=s))
                    if n is None:
                        n = seen_aggs[("COUNT", column, False, str(where))] = out + "$n"
                        aggs.append(agg("count", column, where=where, name=n))
                    post_exprs[call.sql(dialect="spark")] = pc.divide(pc.field(s), pc.field(n))
                    continue
                aggs.append(agg("mean", column, where=where, name=out))
            else:
                raise self.error(f"unsupported aggregate {fn}", a, hint=_AGG_HINT)
            subst[call.sql(dialect="spark")] = out
        if not aggs and window is None:
            aggs.append(agg("count", name=self.fresh("$count", taken)))
        if not aggs:
            aggs.append(agg("count", name=self.fresh("$count", taken)))
        used = set(key_phys) | {c for a in aggs for c in ([a.column] if a.column != "*" else []) + ([a.by] if a.by else [])}
        for a in aggs:
            if a.where is not None:
                used |= {c for c in rel.stream.schema.names if c in str(a.where)}
        if window is not None and window.get("time_column"):
            used.add(window["time_column"])
        if window is not None and window.get("columns"):
            used |= set(window["columns"])
        pre = {k: v for k, v in pre.items() if k in used}
        if len(pre) != len(rel.stream.schema.names) or list(pre) != rel.stream.schema.names:
            stream = self._shared(("pre", id(rel.stream._node), json.dumps(sorted((k, str(v)) for k, v in pre.items()))),
                                  lambda: _select(rel.stream, pre))
        else:
            stream = rel.stream
        updates = self._updates(rel) or retract
        emit = "updates" if updates else "final"
        keyed = stream.key_by(*key_phys) if key_phys else stream
        upsert_keys = None
        spec_key = json.dumps([key_phys, [repr(a) for a in aggs],
                               {k: v for k, v in (window or {}).items() if k not in ("node", "nodes")}], default=str)
        out_cols, times, win = [Col(c.name, c.qualifier, c.phys) for c in rel.cols if c.phys in key_phys], set(), None
        if window is None:
            route = list(key_phys)
            if not key_phys:
                const = self.fresh("$all", taken)
                stream2 = stream.select({**{n: pc.field(n) for n in stream.schema.names}, const: pc.scalar(0)})
                keyed = stream2.key_by(const)
                route = [const]
            result = self._shared(("agg", id(stream._node), spec_key),
                                  lambda: keyed.aggregate(aggs, emit=emit))
            updating = updates
            if updating:  # each key's new row as +I, or -U (the row emitted before) and +U; -D at count 0
                upserts = result
                result = self._shared(("changelog", id(upserts._node)),
                                      lambda: upserts.key_by(*route).changelog(count_column=rows_col))
            upsert_keys = tuple(key_phys) if updating else None  # a global aggregate: one row, no key
        else:
            updating = rel.updating
            if window["kind"] == "COLUMNS":
                result = self._shared(("win", id(stream._node), spec_key),
                                      lambda: keyed.window(window_columns=window["columns"], aggregates=aggs))
                for phys, g in window["nodes"].items():
                    subst[g.sql(dialect="spark")] = "window_start" if phys == window["columns"][0] else "window_end"
            elif window["kind"] == "SESSION":
                result = self._shared(("win", id(stream._node), spec_key),
                                      lambda: keyed.session_window(window["gap"], aggs, time_column=window["time_column"]))
            else:
                kwargs = {"slide": window.get("slide"), "step": window.get("step"), "time": window["time"]}
                if window["time"] == "event":
                    kwargs["time_column"] = window["time_column"]
                clock = self.session.settings.get("sabot.processing-time.clock")
                if clock and window["time"] == "processing":
                    kwargs["clock"] = clock
                result = self._shared(("win", id(stream._node), spec_key),
                                      lambda: keyed.window(window["size"], aggs, **kwargs))
            for name, call in window.get("calls", {}).items():
                subst[call] = name
            q = None
            out_cols += [Col("window_start", q, "window_start"), Col("window_end", q, "window_end"),
                         Col("window_time", q, "window_end")]
            times = {"window_start", "window_end"}
            win = ("window_start", "window_end")
        # aggregate outputs are columns of the result; the post-projection computes the SELECT list
        out_cols += [Col(a.name, None, a.name) for a in aggs]
        agg_rel = Rel(result, out_cols, times=times, window=win, bounded=rel.bounded, updating=updating,
                      upsert_keys=upsert_keys)
        full_subst = dict(subst)
        post_scope = self.scope(agg_rel)
        for key, e in post_exprs.items():
            full_subst[key] = e
        compiler = _SubstCompiler(post_scope, full_subst)
        if having is not None:
            cond = compiler.compile(having.this)
            agg_rel = replace(agg_rel, stream=agg_rel.stream.filter(cond))
        return self._post_project(agg_rel, items, compiler)

    def _retracting(self, fn, a, distinct, column, where, sign, pre, aggs, taken, rel, memo):
        """An aggregate over a changelog, as running sums of signed values; returns the
        expression of its value over the aggregate's output."""
        from sabot.execution.operator_spec import aggregate_output_type, expression_types

        if distinct or fn not in ("COUNT", "SUM", "AVG"):
            what = f"{fn}(DISTINCT ...)" if distinct else f"{fn}(...)"
            raise self.error(f"{what} over an updating result (a GROUP BY or Top-N without a window) is not "
                             "supported: retracting it would need every key's multiset of values", a,
                             hint="COUNT(*), COUNT(x), SUM(x) and AVG(x) retract; or aggregate the inner query per "
                                  "window (TUMBLE/HOP/CUMULATE/SESSION)")

        def column_of(expr, base):
            if (base, column) not in memo:
                name = memo[(base, column)] = self.fresh(base, taken)
                taken.add(name)
                pre[name] = expr
            return memo[(base, column)]

        def summed(col):
            if (col, str(where)) not in memo:
                out = memo[(col, str(where))] = self.fresh(f"$agg{len(aggs)}", taken)
                taken.add(out)
                aggs.append(agg("sum", col, where=where, name=out))
            return pc.coalesce(pc.field(memo[(col, str(where))]), pc.scalar(0))

        if column == "*":  # the changelog drops the row count ($rows): COUNT(*) sums a copy of the signs
            return summed(column_of(pre[sign], "$one"))
        src = pre[column]
        n = summed(column_of(pc.if_else(pc.is_valid(src), pre[sign], pc.scalar(0)), "$nn"))
        if fn == "COUNT":
            return n
        schema = rel.stream.schema
        ctype = expression_types(schema, [src])[0]
        # the value, negated for a withdrawn row (keeps its type: integers, floats, decimals)
        signed = column_of(pc.if_else(pc.less(pre[sign], pc.scalar(0)), pc.negate(src), src), "$sv")
        sum_type = aggregate_output_type(expression_types(schema, [pre[signed]])[0], "sum")
        summed(signed)
        total, none = pc.field(memo[(signed, str(where))]), pc.equal(n, pc.scalar(0))
        if fn == "SUM":
            return pc.if_else(none, pc.scalar(pa.scalar(None, sum_type)), total)
        safe_n = pc.if_else(none, pc.scalar(1), n)
        if pa.types.is_integer(ctype):  # Flink: AVG of an integer is an integer (truncated)
            return pc.if_else(none, pc.scalar(pa.scalar(None, sum_type)), pc.divide(total, safe_n))
        return pc.if_else(none, pc.scalar(pa.scalar(None, pa.float64())),
                          pc.divide(total.cast(pa.float64()), safe_n.cast(pa.float64())))

    def _post_project(self, rel, items, compiler):
        pairs = self.expand(rel, items)
        exprs, cols, times, taken, window = {}, [], set(), set(), [None, None]
        for node, name in pairs:
            try:
                expr = compiler.compile(node)
            except SqlError as exc:
                if "unknown column" in exc.message:
                    raise self.error(f"{node.sql(dialect='spark')!r} is neither grouped nor aggregated", node,
                                     hint="add it to GROUP BY, or aggregate it (MAX(x), ...)") from None
                raise
            phys = self.fresh(name, taken)
            taken.add(phys)
            exprs[phys] = expr
            cols.append(Col(name, None, phys))
            src = _field_name(expr)
            if src in rel.times:
                times.add(phys)
            if rel.window and src == rel.window[0]:
                window[0] = phys
            if rel.window and src == rel.window[1]:
                window[1] = phys
        if rel.updating:
            exprs[OP] = pc.field(OP)
        return Rel(_select(rel.stream, exprs), cols, times=times, window=tuple(window) if all(window) else None,
                   bounded=rel.bounded, updating=rel.updating, upsert_keys=_keys_through(rel.upsert_keys, exprs))

    def _updates(self, rel):
        """Whether a non-windowed aggregate / Top-N emits updates (unbounded input, or SET
        'sabot.updating-results' = 'always') rather than its final rows at the end of the input."""
        return not rel.bounded or str(self.session.settings.get("sabot.updating-results", "")).lower() == "always"

    def _shared(self, key, make):
        if key not in self.ops:
            self.ops[key] = make()
        return self.ops[key]

    def _group_window(self, g, rel):
        """GROUP BY SESSION(ts, gap) / TUMBLE(ts, size) / HOP(ts, slide, size) (Flink's group windows)."""
        name = g.name.upper()
        args = g.expressions
        if not args or not isinstance(args[0], exp.Column):
            raise self.error(f"{name}(time_column, interval...) expected", g)
        f = self.scope(rel).find(args[0].name, args[0].table or None)
        if len(f) != 1 or (f[0].phys not in rel.times and not f[0].phys.startswith(PROCTIME)):
            raise self.error(f"{args[0].sql(dialect='spark')} is not a time attribute", args[0],
                             hint="declare WATERMARK FOR it in CREATE TABLE")
        intervals = [interval_ms(a, self.text) for a in args[1:]]
        prefix = name
        call_args = ", ".join(a.sql(dialect="spark") for a in args)
        calls = {"window_start": f"{prefix}_START({call_args})", "window_end": f"{prefix}_END({call_args})"}
        time = "processing" if f[0].phys.startswith(PROCTIME) else "event"
        if name == "SESSION":
            if len(intervals) != 1 or time != "event":
                raise self.error("SESSION(ts, gap) takes an event-time column and one interval", g)
            return {"kind": "SESSION", "gap": intervals[0], "time_column": f[0].phys, "calls": calls}
        spec = {"kind": name, "time": time, "time_column": f[0].phys, "calls": calls}
        if name == "TUMBLE" and len(intervals) == 1:
            spec["size"] = intervals[0]
        elif name == "HOP" and len(intervals) == 2:
            spec["slide"], spec["size"] = intervals
        else:
            raise self.error(f"{name} group window: wrong number of intervals", g)
        return spec

    # -- ROW_NUMBER (Top-N and deduplication) ------------------------------------------------------

    def plan_row_number(self, rel, sel, windows):
        self._refuse_updating(rel, "ROW_NUMBER()", windows[0])
        if len(windows) != 1:
            raise self.error("one ROW_NUMBER() per query is supported", windows[1])
        item = windows[0]
        win = item.find(exp.Window)
        if not isinstance(win.this, exp.RowNumber) or not isinstance(item, exp.Alias) or item.this is not win:
            raise self.error("OVER windows other than ROW_NUMBER() ... AS rn are not supported", win,
                             hint="write ROW_NUMBER() OVER (PARTITION BY ... ORDER BY ...) AS rn in a subquery and "
                                  "filter WHERE rn <= N outside it (Top-N)")
        if win.args.get("spec") is not None:
            raise self.error("window frames (ROWS/RANGE BETWEEN) are not supported", win.args["spec"])
        if rel.tvf is not None:
            rel = self.materialise_tvf(rel)
        others = [e for e in sel.expressions if e is not item]
        partition = win.args.get("partition_by") or []
        order = win.args.get("order").expressions if win.args.get("order") else []
        if not order:
            raise self.error("ROW_NUMBER() needs ORDER BY", win)
        scope = self.scope(rel)
        pairs = self.expand(rel, others)
        sel_exprs, cols, taken = {}, [], set()
        for node, name in pairs:
            self._check_proctime(node, rel)
            phys = self.fresh(name, taken)
            taken.add(phys)
            sel_exprs[phys] = Compiler(scope).compile(node)
            cols.append(Col(name, None, phys))
        hidden = []
        for h in rel.hidden:
            phys = self.fresh(h, taken)
            taken.add(phys)
            sel_exprs[phys] = pc.field(h)
            hidden.append(phys)
        by_source = {}
        for phys, e in sel_exprs.items():
            src = _field_name(e)
            if src is not None:
                by_source.setdefault(src, phys)

        def column_of(node):  # partition / order columns travel as (extra) columns of the projection
            e = self.compile(node, rel)
            src = _field_name(e)
            if src is not None and src in by_source:
                return by_source[src], src
            name = self.fresh(f"$o{len(taken)}", taken)
            taken.add(name)
            sel_exprs[name] = e
            return name, src

        part = [column_of(p_) for p_ in partition]
        orders = [(column_of(o.this), "descending" if o.args.get("desc") else "ascending") for o in order]
        identity = list(sel_exprs) == rel.stream.schema.names and all(
            _field_name(e) == n for n, e in sel_exprs.items())
        stream = rel.stream if identity else _select(rel.stream, sel_exprs)
        base = Rel(None, cols, hidden=hidden, times={p for p, e in sel_exprs.items() if _field_name(e) in rel.times})
        rn = self.fresh(item.alias, taken)
        cols = base.cols + [Col(item.alias, None, rn)]
        times = set(base.times)
        dedup_time = len(orders) == 1 and orders[0][0][1] in rel.times
        spec = {"rn": rn, "partition": [n for n, _ in part], "order": [(n, d) for (n, _), d in orders],
                "node": win, "dedup_time": dedup_time,
                "window": None}
        if rel.window:
            srcs = {src: n for n, src in part}
            if rel.window[0] in srcs and rel.window[1] in srcs:
                spec["window"] = (srcs[rel.window[0]], srcs[rel.window[1]])
                spec["partition"] = [n for n, src in part if src not in rel.window]
        return Rel(stream, cols, hidden=list(base.hidden), times=times, topn=spec, bounded=rel.bounded,
                   updating=rel.updating)

    def apply_topn(self, rel, rest, sel):
        spec = rel.topn
        rn_col = next(c for c in rel.cols if c.phys == spec["rn"])
        n, keep = None, []
        for c in rest:
            bound = self._rn_bound(c, rn_col)
            if bound is not None and n is None:
                n = bound
            else:
                keep.append(c)
        if n is None:
            raise self.error(f"ROW_NUMBER() needs a filter WHERE {rn_col.name} <= N in the enclosing query",
                             spec["node"], hint="Top-N: SELECT * FROM (SELECT ..., ROW_NUMBER() OVER (...) AS rn "
                                                "FROM t) WHERE rn <= 10; an unfiltered ROW_NUMBER is not supported")
        order = list(spec["order"])
        direction = "ascending"
        if n == 1 and spec["dedup_time"]:
            direction = order[0][1]  # deduplication on time: ASC keeps the first row, DESC the last
        order += [(h, direction) for h in rel.hidden]
        stream = rel.stream
        keyed = stream.key_by(*spec["partition"]) if spec["partition"] else stream
        kwargs = {}
        if spec["window"]:
            kwargs["window_columns"] = spec["window"]
            emit = "final"
        else:
            emit = "updates" if self._updates(rel) else "final"
        out = keyed.top_n(n, order, rank_column=spec["rn"], emit=emit, **kwargs)
        updating = rel.updating or emit == "updates"
        keys = tuple(spec["partition"]) + (spec["rn"],) if updating else None
        if updating:  # rank positions whose row changed: -U (the row before) then +U
            key = list(spec["partition"]) + [spec["rn"]]
            # routed by the partition keys (one ranking: by the rank), so every operator after it
            # gets each position's rows from one subtask, in order
            out = out.key_by(*(spec["partition"] or [spec["rn"]])).changelog(key)
        return replace(rel, stream=out, topn=None, updating=updating, upsert_keys=keys), keep

    def _rn_bound(self, c, rn_col):
        def is_rn(node):
            return isinstance(node, exp.Column) and node.name.lower() == rn_col.name.lower()

        def lit(node):
            return int(node.this) if isinstance(node, exp.Literal) and not node.is_string else None

        if isinstance(c, (exp.LTE, exp.LT, exp.EQ)) and is_rn(c.this) and lit(c.expression) is not None:
            v = lit(c.expression)
            return v - 1 if isinstance(c, exp.LT) else v if not isinstance(c, exp.EQ) or v == 1 else None
        if isinstance(c, (exp.GTE, exp.GT)) and is_rn(c.expression) and lit(c.this) is not None:
            v = lit(c.this)
            return v - 1 if isinstance(c, exp.GT) else v
        return None


class _SubstCompiler(Compiler):
    """A compiler whose substitutions can be expressions (AVG's sum / count)."""

    def compile(self, node):
        key = node.sql(dialect="spark")
        if key in self.subst:
            v = self.subst[key]
            return v if isinstance(v, pc.Expression) else pc.field(v)
        return super().compile(node)


def _select(stream, exprs):
    """``stream.select`` of ``{output: expression}``; when every output is a column picked (and
    perhaps renamed) the select only picks columns, without evaluating expressions."""
    sources = [_field_name(e) for e in exprs.values()]
    if all(s is not None for s in sources) and len(set(sources)) == len(sources):
        if sources == list(exprs):
            return stream.select(list(exprs))
        return stream.select(dict(zip(sources, exprs)))
    return stream.select(exprs)


def _keys_through(keys, exprs):
    """An updating result's keys after a projection (None when one is projected away)."""
    if not keys:
        return None
    out = {}
    for phys, e in exprs.items():
        src = _field_name(e)
        if src in keys and src not in out:
            out[src] = phys
    return tuple(out[k] for k in keys) if all(k in out for k in keys) else None


def _field_name(expr):
    """The column a bare field reference reads, else None."""
    if not isinstance(expr, pc.Expression):
        return None
    text = str(expr)
    try:
        return text if pc.field(text).equals(expr) else None
    except Exception:  # noqa: BLE001
        return None

"""A SQL session: a catalog, statements executed against it, jobs planned from INSERTs."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from sabot.execution.execution_graph import choose_partitioning
from sabot.execution.operator_spec import expression_types
from sabot.sql.catalog import Catalog, TableDef
from sabot.sql.connectors import Context, connector_of
from sabot.sql.errors import SqlError
from sabot.sql.functions import FunctionError, register_udf
from sabot.sql.parser import SUPPORTED_STATEMENTS, parse
from sabot.runtime.changelog import OP
from sabot.sql.planner import PROCTIME, Planner


class SqlJob:
    """An ``INSERT INTO``: ``query`` is the Stream of the rows the sink receives (the sink
    table's columns), ``sink`` the Stream ending in the table's connector."""

    def __init__(self, name, query, sink, table, updating, parallelism=1):
        self.parallelism = parallelism  # SET 'parallelism.default'
        self.name = name
        self.query = query
        self.sink = sink
        self.table = table
        self.updating = updating

    def to_job_graph(self, job_name=None, **kwargs):
        return self.sink.to_job_graph(job_name or self.name, **kwargs)

    def run(self, *, default_parallelism=None, timeout=None):
        return self.sink.run(default_parallelism=default_parallelism or self.parallelism, timeout=timeout,
                             job_name=self.name)

    def explain(self, default_parallelism=None):
        return explain(self.to_job_graph(default_parallelism=default_parallelism or self.parallelism))

    def __repr__(self):
        return f"<SqlJob {self.name!r} -> {self.table.name!r} ({self.table.connector})>"


def explain(job):
    """The job graph as text: operators in order with parallelism, keys and state, then the edges
    with their partitioning."""
    lines = [f"== job {job.job_name!r} (default parallelism {job.default_parallelism}) ==", "operators:"]
    order = job.topological_sort()
    for node in order:
        p = job.parallelism_of(node.operator_id)
        params = node.parameters
        detail = []
        kind = params.get("kind")
        if kind:
            detail.append(f"kind={kind}")
        if node.key_by:
            detail.append(f"key_by={node.key_by}")
        for k in ("size", "slide", "step", "gap", "n", "ttl", "lower", "upper", "how", "time", "emit",
                  "time_column", "window_columns", "path", "partition_by"):
            if params.get(k) is not None:
                detail.append(f"{k}={params[k]}")
        if params.get("aggregates"):
            detail.append("aggregates=" + ", ".join(f"{a[1]}({a[0]})" for a in params["aggregates"]))
        if node.stateful:
            detail.append("state=keyed" if node.key_by else "state=operator")
        lines.append(f"  {node.name:<28} {node.operator_type.value:<10} parallelism={p:<3} {' '.join(detail)}")
    lines.append("edges:")
    for up, down in job.edges:
        u, d = job.operators[up], job.operators[down]
        part = choose_partitioning(job.explicit_partitioning(up, down), job.parallelism_of(up),
                                   job.parallelism_of(down), d.keys_for(up))
        keys = d.keys_for(up)
        by = f" by {keys}" if part.value == "hash" and keys else ""
        lines.append(f"  {u.name} -> {d.name}: {part.value}{by}")
    return "\n".join(lines)


class Session:
    """Tables, views, functions and settings that statements build up.

    ``variables`` replace ``${NAME}`` in scripts (as Nexmark's runner does); ``settings``
    are those of ``SET 'key' = 'value'`` (``table.exec.state.ttl``, ``sabot.batch-size``,
    ``sabot.processing-time.clock``).

    Example:
        >>> s = Session()                                                          # doctest: +SKIP
        >>> s.execute("CREATE TABLE t (...) WITH ('connector' = 'datagen', ...)")  # doctest: +SKIP
        >>> [job] = s.execute("INSERT INTO out SELECT a, b * 2 FROM t")           # doctest: +SKIP
        >>> job.run()                                                            # doctest: +SKIP
    """

    def __init__(self, variables=None, settings=None):
        self.catalog = Catalog()
        self.catalog.settings.update(settings or {})
        self.variables = dict(variables or {})

    def create_function(self, name, function, return_type=None):
        """Register a Python scalar function (Arrow arrays in, an array out) for SQL as ``name``."""
        from sabot.runtime import functions as refs

        ref = refs.reference_of(function)
        self.catalog.functions[name.lower()] = (ref, return_type)

    def execute(self, script):
        """Run the script's statements; returns what each gives (None for DDL and SET, a
        :class:`SqlJob` for INSERT, a Stream for SELECT, text for EXPLAIN).

        Every statement is checked and planned before any takes effect: on an error the
        session is as it was and nothing has run."""
        text, statements = parse(script, self.variables)
        work = self.catalog.copy()
        results = []
        for statement in statements:
            results.append(self._statement(statement, work, text))
        self.catalog = work
        return results

    def _statement(self, node, catalog, text):
        if isinstance(node, exp.Create):
            kind = (node.args.get("kind") or "").upper()
            if kind == "TABLE":
                return catalog.create_table(node, text)
            if kind == "VIEW":
                return catalog.create_view(node, text)
            if kind in ("FUNCTION", "TEMPORARY FUNCTION"):
                return catalog.create_function(node, text)
            raise SqlError(f"CREATE {kind} is not supported", text=text, node=node, hint=SUPPORTED_STATEMENTS)
        if isinstance(node, exp.Set):
            for item in node.expressions:
                eq = item.this
                if not isinstance(eq, exp.EQ):
                    raise SqlError("SET takes 'key' = 'value'", text=text, node=item)
                catalog.set(eq.this.name, eq.expression.name)
            return None
        if isinstance(node, exp.Insert):
            return self._insert(node, catalog, text)
        if isinstance(node, (exp.Select, exp.Union, exp.Subquery)):
            planner = _planner(catalog, text)
            rel = planner.plan_query(node)
            cols = [c for c in rel.cols if not c.phys.startswith(PROCTIME)]
            exprs = {c.name: pc.field(c.phys) for c in cols}
            if rel.updating:  # a changelog: the row kinds in column $op (sabot.runtime.changelog)
                exprs[OP] = pc.field(OP)
            stream = rel.stream.select(exprs)
            stream.updating = rel.updating
            names = {c.phys: c.name for c in cols}
            stream.upsert_keys = [names[k] for k in rel.upsert_keys] if rel.upsert_keys and all(
                k in names for k in rel.upsert_keys) else None
            return stream
        if isinstance(node, exp.Command) and node.name.upper() == "EXPLAIN":
            inner = node.expression.name if isinstance(node.expression, exp.Literal) else str(node.expression)
            try:
                return self._explain(inner, catalog)
            except SqlError as exc:  # positions in the script, not in the explained statement
                start = text.find(inner)
                if start < 0 or exc.line is None:
                    raise
                line = text.count("\n", 0, start) + exc.line
                col = exc.col
                if exc.line == 1 and col is not None:
                    col += start - (text.rfind("\n", 0, start) + 1)
                raise SqlError(exc.message, text=text, line=line, col=col, hint=exc.hint) from None
        if isinstance(node, exp.Describe):
            raise SqlError("DESCRIBE is not supported", text=text, node=node, hint=SUPPORTED_STATEMENTS)
        raise SqlError(f"unsupported statement {type(node).__name__.upper()}", text=text, node=node,
                       hint=SUPPORTED_STATEMENTS)

    def _explain(self, inner, catalog):
        _, statements = parse(inner, None)
        out = []
        for s in statements:
            r = self._statement(s, catalog, inner)
            p = int(catalog.settings.get("parallelism.default", 1))
            out.append(r.explain() if isinstance(r, SqlJob) else explain(
                r.collect(name="result").to_job_graph(default_parallelism=p)) if r is not None else "")
        return "\n".join(out)

    def _insert(self, node, catalog, text):
        target = node.this
        columns = None
        if isinstance(target, exp.Schema):
            columns = [c.name for c in target.expressions]
            target = target.this
        table = catalog.lookup(target.name)
        if not isinstance(table, TableDef):
            known = sorted(t.name for t in catalog.tables.values())
            raise SqlError(f"unknown table {target.name!r}", text=text, node=target,
                           hint=f"INSERT INTO a CREATE TABLE table; known tables: {known}")
        planner = _planner(catalog, text)
        ctx = Context(text, catalog.settings)
        connector = connector_of(table, ctx, "sink")
        query = node.expression
        rel = planner.plan_query(query)
        cols = [c for c in rel.cols if not c.phys.startswith(PROCTIME)]
        sink_cols = list(table.columns)
        if columns is not None:
            by_name = dict(sink_cols)
            missing = [c for c in columns if c not in by_name]
            if missing:
                raise SqlError(f"INSERT INTO {table.name}: no column(s) {missing}", text=text, node=node.this,
                               hint=f"columns: {list(by_name)}")
            sink_cols = [(c, by_name[c]) for c in columns]
        items = query.expressions if isinstance(query, exp.Select) else [query] * len(cols)
        if len(cols) != len(sink_cols):
            raise SqlError(f"INSERT INTO {table.name}: the query gives {len(cols)} column(s), the table has "
                           f"{len(sink_cols)} ({', '.join(n for n, _ in sink_cols)})", text=text, node=query,
                           hint="select one expression per table column, in the table's order")
        exprs = {}
        schema = rel.stream.schema
        for i, (c, (name, t)) in enumerate(zip(cols, sink_cols)):
            e = pc.field(c.phys)
            have = schema.field(c.phys).type
            if have != t:
                e = e.cast(t)
                try:
                    if _family(have) != _family(t):
                        raise ValueError("no implicit cast")
                    expression_types(schema, [e])
                except ValueError:
                    raise SqlError(f"type mismatch: INSERT INTO {table.name} column {name!r} is {t}, the query "
                                   f"gives {have}", text=text, node=items[min(i, len(items) - 1)],
                                   hint="CAST the expression AS the column's type") from None
            exprs[name] = e
        casts = [(c.phys, name, None if schema.field(c.phys).type == t else t) for c, (name, t) in zip(cols, sink_cols)]
        if rel.updating:  # a changelog: the row kinds travel to the sink in column $op
            exprs[OP] = pc.field(OP)
            casts.append((OP, OP, None))
        stream = _fused_select(rel.stream, casts) \
            or rel.stream.select(exprs, name=f"{table.name}_columns")
        updating = rel.updating
        accepts = connector.accepts_updates
        if updating and not (accepts(table) if callable(accepts) else accepts):
            raise SqlError(f"INSERT INTO {table.name}: the query's result is updating (a GROUP BY or Top-N without "
                           f"a window over an unbounded input), and connector {table.connector!r} is append-only",
                           text=text, node=query,
                           hint="aggregate per window (TUMBLE/HOP/CUMULATE/SESSION), bound the input, or write "
                                "to a sink that takes a changelog ('collect', 'print', 'blackhole', or 'jdbc' with "
                                "a PRIMARY KEY)")
        sink = connector.sink(stream, table, ctx)
        parallelism = int(catalog.settings.get("parallelism.default", 1))
        return SqlJob(f"insert-into-{table.name}", stream, sink, table, updating, parallelism)


def _fused_select(stream, casts):
    """The sink's columns computed by the query's last projection itself (one operator, not two),
    when that projection is the stream's end and feeds nothing else; else None."""
    from sabot.api.stream import Stream
    from sabot.execution.job_graph import OperatorType
    from sabot.execution.operator_spec import decode_expression, encode_expression

    node = stream._node
    if node.operator_type != OperatorType.SELECT or stream._key_by:
        return None
    if any(up == node.operator_id for up, _ in stream._plan.edges):
        return None
    params = node.parameters
    if "expressions" in params:
        old = {n: decode_expression(e) for n, e in params["expressions"]}
    elif isinstance(params.get("columns"), dict):
        old = {new_name: pc.field(src) for src, new_name in params["columns"].items()}
    elif isinstance(params.get("columns"), list):
        old = {c: pc.field(c) for c in params["columns"]}
    else:
        return None
    if all(t is None for _, _, t in casts) and all(phys in old for phys, _, _ in casts):
        # a pick stays a pick: the sink's names on the picked columns
        picked = {}
        for phys, name, _ in casts:
            src = str(old[phys]) if pc.field(str(old[phys])).equals(old[phys]) else None
            if src is None or src in picked:
                break
            picked[src] = name
        else:
            input_schema = stream._input_schema
            if input_schema is None:
                return None
            params.pop("expressions", None)
            params["columns"] = picked if list(picked) != list(picked.values()) else list(picked)
            schema = pa.schema([input_schema.field(src).with_name(name) for src, name in picked.items()])
            return Stream(stream._plan, node, schema, input_schema=input_schema)
    if any(phys not in old for phys, _, _ in casts):
        return None
    new = {name: old[phys] if t is None else old[phys].cast(t) for phys, name, t in casts}
    input_schema = stream._input_schema
    if input_schema is None:
        return None
    try:
        types = expression_types(input_schema, list(new.values()))
    except ValueError:
        return None
    params.pop("columns", None)
    params["expressions"] = [[n, encode_expression(e)] for n, e in new.items()]
    schema = pa.schema([pa.field(n, t) for n, t in zip(new, types)])
    return Stream(stream._plan, node, schema, input_schema=input_schema)


def _family(t):
    """Types that INSERT converts implicitly into each other (as Flink's implicit casts)."""
    for name, test in (("number", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)),
                       ("time", pa.types.is_timestamp), ("text", lambda t: pa.types.is_string(t) or
                                                          pa.types.is_large_string(t))):
        if test(t):
            return name
    return str(t)


class _CatalogView:
    """What the planner and expression compiler read from a catalog (and UDF registration)."""

    def __init__(self, catalog):
        self._c = catalog

    def __getattr__(self, name):
        return getattr(self._c, name)

    def udf_name(self, name, types, node):
        ref, return_type = self._c.functions[name]
        try:
            return register_udf(ref, types, return_type)
        except FunctionError as exc:
            raise SqlError(str(exc), node=node) from None


def _planner(catalog, text):
    return Planner(_CatalogView(catalog), text)


def sql(script, *, variables=None, settings=None, session=None, run=True, parallelism=None, timeout=None):
    """Run Flink SQL: DDL defines tables in ``session`` (a fresh one by default); the last
    statement decides what comes back:

    * ``INSERT INTO``: the job runs in this process and its JobResult is returned
      (``run=False``: the :class:`SqlJob`, to run, explain or submit);
    * ``SELECT``: the Stream of its rows (add ``.collect().run()`` or another sink);
    * ``EXPLAIN ...``: the job graph as text.

    Example:
        >>> import sabot
        >>> sabot.sql('''
        ...     CREATE TABLE bids WITH ('connector' = 'nexmark', 'events.num' = '1000') ...;
        ...     INSERT INTO out SELECT auction, price FROM bid WHERE price > 100''')  # doctest: +SKIP
    """
    session = session or Session(variables, settings)
    if variables:
        session.variables.update(variables)
    results = session.execute(script)
    results = [r for r in results if r is not None]
    if not results:
        return None
    last = results[-1]
    if isinstance(last, SqlJob) and run:
        return last.run(default_parallelism=parallelism, timeout=timeout)
    return last

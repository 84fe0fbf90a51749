"""Projection push-down through selects, and projection and predicate push-down into file
sources, decided when a job graph is built.

A select keeps only the output columns that the operators after it read
(:func:`narrow_selects`): a view that extracts every field of a record and is then
filtered and narrowed to two columns computes and filters just those two (a wide row of
strings is not copied by the filter only to be dropped by the next select).

A file source (``from_dataset`` / ``from_parquet``) reads only the columns its consumers
use and hands the expression filters that directly follow it to the scan
(``pyarrow.dataset`` then skips row groups by their statistics and filters rows while
decoding). The filter operators stay in the plan, so the graph looks as written, marked
``evaluated_by_source``: the scan's filter is exact, so they pass the source's rows on
without evaluating the predicate again.

Column needs are known for expression filters, selects, key_by, union, aggregates and
windows; anything else (user functions, sinks, joins...) needs every column. A source with
watermarks (``with_watermarks``) always reads its time column, whether or not the
operators after it do.
"""

from __future__ import annotations

import functools

import pyarrow.compute as pc

from sabot.execution.job_graph import OperatorType
from sabot.execution.operator_spec import decode_expression, expression_columns, parse_aggregates

__all__ = ["PlanView", "narrow_selects", "pushdown"]

_ALL = None  # "every column"


@functools.lru_cache(maxsize=4096)
def _reads(schema, encoded):
    """The columns of ``schema`` that the encoded expression reads (``expression_columns``
    types the expression once per column: the push-downs ask again for the same pairs)."""
    return frozenset(expression_columns(schema, decode_expression(encoded)))


def _union(a, b):
    if a is _ALL or b is _ALL:
        return _ALL
    return a | b


def _needs(plan, op_id, schema, downstream, through_unions=True):
    """Columns of ``schema`` that operator ``op_id`` and what follows it read (None: all).

    ``through_unions=False``: a union needs every column (its other inputs keep theirs)."""
    node = plan.nodes[op_id]
    t = node.operator_type
    p = node.parameters or {}
    names = set(schema.names)
    keys = set(node.key_by or []) & names  # a keyed operator's input edge hashes these
    if t == OperatorType.FILTER and p.get("expression"):
        own = set(_reads(schema, p["expression"]))
        return _union(own | keys, _after(plan, op_id, schema, downstream, through_unions))
    if t == OperatorType.UNION and not through_unions:
        return _ALL
    if t in (OperatorType.KEY_BY, OperatorType.UNION) and not p.get("side_output"):
        return _union(keys, _after(plan, op_id, schema, downstream, through_unions))
    if t == OperatorType.SELECT:
        if p.get("expressions"):
            cols = set(keys)
            for _, e in p["expressions"]:
                cols |= _reads(schema, e)
            return cols
        return set(p["columns"]) | keys
    if t == OperatorType.AGGREGATE or (t == OperatorType.WINDOW and p.get("time") != "processing"
                                       and "late" not in {plan.nodes[d].parameters.get("side_output")
                                                          for d in downstream.get(op_id, [])}):
        cols = set(node.key_by or [])
        for item in parse_aggregates(p.get("aggregates") or []):
            cols |= set(item.input_columns())
            if item.where is not None:
                cols |= set(expression_columns(schema, item.where))
        for key in ("time_column",):
            if p.get(key):
                cols.add(p[key])
        cols |= set(p.get("window_columns") or [])
        return cols & names
    return _ALL


def _after(plan, op_id, schema, downstream, through_unions=True):
    needs = set()
    for d in downstream.get(op_id, []):
        needs = _union(needs, _needs(plan, d, schema, downstream, through_unions))
        if needs is _ALL:
            return _ALL
    return needs


def _downstream(edges):
    downstream = {}
    for up, down in edges:
        downstream.setdefault(up, []).append(down)
    return downstream


def _last_first(nodes, edges):
    """Operator ids, each after every operator downstream of it."""
    downstream, upstream = _downstream(edges), {}
    for up, down in edges:
        upstream.setdefault(down, []).append(up)
    waiting = {op: len(downstream.get(op, [])) for op in nodes}
    ready = [op for op, n in waiting.items() if n == 0]
    order = []
    while ready:
        op = ready.pop()
        order.append(op)
        for up in upstream.get(op, []):
            waiting[up] -= 1
            if waiting[up] == 0:
                ready.append(up)
    return order


def _narrowed(node, keep):
    new = node.copy()
    p = new.parameters
    if p.get("expressions"):
        p["expressions"] = [[name, e] for name, e in p["expressions"] if name in keep]
    elif isinstance(p.get("columns"), dict):
        p["columns"] = {old: name for old, name in p["columns"].items() if name in keep}
    else:
        p["columns"] = [c for c in p["columns"] if c in keep]
    return new


def narrow_selects(plan, schemas):
    """``{select id: a copy of the node computing only the columns read after it}``.

    ``schemas``: each operator's output schema (by id) where known. A select is narrowed
    when everything after it has known column needs (expression filters, selects, key_by,
    aggregates, windows; not through a union, whose other inputs keep their columns) and
    reads fewer columns than it makes; the copy lists the dropped ones under
    ``parameters["pruned_columns"]``. Selects are visited downstream first, so a narrowed
    select narrows the ones before it in turn. Keeps at least one column (rows still count).
    """
    downstream = _downstream(plan.edges)
    view = PlanView(dict(plan.nodes), plan.edges)
    out = {}
    for op_id in _last_first(plan.nodes, plan.edges):
        node = view.nodes[op_id]
        schema = schemas.get(op_id)
        if node.operator_type != OperatorType.SELECT or schema is None or not downstream.get(op_id):
            continue
        try:
            needs = _after(view, op_id, schema, downstream, through_unions=False)
        except (KeyError, ValueError):  # a column the schema lacks: leave it to the run to report
            continue
        if needs is _ALL:
            continue
        keep = [n for n in schema.names if n in needs] or schema.names[:1]
        if len(keep) == len(schema.names):
            continue
        narrowed = _narrowed(node, set(keep))
        narrowed.parameters["pruned_columns"] = [n for n in schema.names if n not in keep]
        view.nodes[op_id] = out[op_id] = narrowed
    return out


class PlanView:
    """A plan's nodes (some replaced by narrowed copies) and edges."""

    def __init__(self, nodes, edges):
        self.nodes = nodes
        self.edges = edges


def pushdown(plan, schemas):
    """``{source id: {"filter": expression | None, "columns": [names] | None, "filters": [the
    filter operator ids whose predicates make up "filter"]}}`` for file sources.

    ``schemas``: each operator's output schema (by id) where known (a file source's: its
    files' columns)."""
    downstream = _downstream(plan.edges)
    out = {}
    for op_id, node in plan.nodes.items():
        schema = schemas.get(op_id)
        is_file_source = node.operator_type == OperatorType.SOURCE and (node.parameters or {}).get("kind") == "dataset"
        if schema is None or not is_file_source:
            continue
        # the filters right behind the source, one after the other, go to the scan
        predicate, current, filters = None, op_id, []
        while len(downstream.get(current, [])) == 1:
            nxt = plan.nodes[downstream[current][0]]
            expr = (nxt.parameters or {}).get("expression")
            if nxt.operator_type != OperatorType.FILTER or not expr:
                break
            e = decode_expression(expr)
            predicate = e if predicate is None else pc.and_kleene(predicate, e)
            current = nxt.operator_id
            filters.append(current)
        try:
            needs = _after(plan, op_id, schema, downstream)
        except (KeyError, ValueError):  # a column the schema lacks: leave it to the run to report
            needs = _ALL
        time_column = (node.parameters or {}).get("time_column")
        if needs is not _ALL and time_column:  # the source's own watermarks read it
            needs = needs | {time_column}
        columns = None
        if needs is not _ALL and needs != set(schema.names):
            columns = [n for n in schema.names if n in needs] or schema.names[:1]
        out[op_id] = {"filter": predicate, "columns": columns, "filters": filters}
    return out

"""Projection and predicate push-down into file sources, decided when a job graph is built.

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

import pyarrow.compute as pc

from sabot.execution.job_graph import OperatorType
from sabot.execution.operator_spec import decode_expression, expression_columns, parse_aggregates

__all__ = ["pushdown"]

_ALL = None  # "every column"


def _union(a, b):
    if a is _ALL or b is _ALL:
        return _ALL
    return a | b


def _needs(plan, op_id, schema, downstream):
    """Columns of ``schema`` that operator ``op_id`` and what follows it read (None: all)."""
    node = plan.nodes[op_id]
    t = node.operator_type
    p = node.parameters or {}
    names = set(schema.names)
    if t == OperatorType.FILTER and p.get("expression"):
        own = set(expression_columns(schema, decode_expression(p["expression"])))
        return _union(own, _after(plan, op_id, schema, downstream))
    if t in (OperatorType.KEY_BY, OperatorType.UNION) and not p.get("side_output"):
        return _union(set(node.key_by or []) & names, _after(plan, op_id, schema, downstream))
    if t == OperatorType.SELECT:
        if p.get("expressions"):
            cols = set()
            for _, e in p["expressions"]:
                cols |= set(expression_columns(schema, decode_expression(e)))
            return cols
        return set(p["columns"])
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


def _after(plan, op_id, schema, downstream):
    needs = set()
    for d in downstream.get(op_id, []):
        needs = _union(needs, _needs(plan, d, schema, downstream))
        if needs is _ALL:
            return _ALL
    return needs


def pushdown(plan, source_schemas):
    """``{source id: {"filter": expression | None, "columns": [names] | None, "filters": [the
    filter operator ids whose predicates make up "filter"]}}`` for file sources."""
    downstream = {}
    for up, down in plan.edges:
        downstream.setdefault(up, []).append(down)
    out = {}
    for op_id, schema in source_schemas.items():
        node = plan.nodes.get(op_id)
        if node is None or (node.parameters or {}).get("kind") != "dataset":
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

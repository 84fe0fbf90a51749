"""Stateless per-batch operators: filter, map, select, flat_map, union, key_by."""

import pyarrow as pa

from sabot._core import selection
from sabot.errors import OperatorError
from sabot.execution.operator_spec import decode_expression, decode_schema
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.expressions import filter_batch, project


def check_columns(ctx, schema, names, what):
    missing = [n for n in names if schema.get_field_index(n) < 0]
    if missing:
        raise OperatorError(
            f"operator {ctx.operator_name!r}: {what} column(s) {missing} not in the input; "
            f"available columns: {schema.names}"
        )


class _SchemaChecked(Operator):
    """Checks each output batch of user code: a RecordBatch, always of one schema."""

    def open(self):
        declared = self.params.get("schema")
        self.schema = decode_schema(declared) if declared else None

    def checked(self, out, ref):
        if isinstance(out, pa.Table):
            out = pa.RecordBatch.from_arrays([c.combine_chunks() for c in out.columns], schema=out.schema)
        if not isinstance(out, pa.RecordBatch):
            raise OperatorError(
                f"user function {ref!r} of operator {self.ctx.operator_name!r} returned "
                f"{type(out).__name__}; expected a pyarrow.RecordBatch"
            )
        if self.schema is None:
            self.schema = out.schema
        elif not out.schema.equals(self.schema):
            raise OperatorError(
                f"user function {ref!r} of operator {self.ctx.operator_name!r} returned a batch "
                f"with schema {out.schema} but the operator's schema is {self.schema}"
            )
        return out


@register("filter")
class Filter(Operator):
    """Keep rows where a pyarrow expression, or a user function's boolean mask, is true.

    ``evaluated_by_source``: the expression was pushed into the file source's scan right
    before this operator (:mod:`sabot.api.pushdown`), which keeps exactly the rows where it
    is true: the batches pass unchanged."""

    def open(self):
        expr = self.params.get("expression")
        self.expression = decode_expression(expr) if expr else None
        self.evaluated_by_source = bool(self.params.get("evaluated_by_source")) and self.expression is not None
        if self.expression is None:
            self.ref, self.fn = self.user_function()

    def process(self, batch, input_index):
        if self.evaluated_by_source:
            return [batch] if batch.num_rows else []
        if self.expression is not None:
            try:
                out = filter_batch(batch, self.expression)
            except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError) as exc:
                raise OperatorError(
                    f"filter {self.ctx.operator_name!r}: expression {self.expression} failed on "
                    f"columns {batch.schema.names}: {exc}"
                ) from exc
            return [out] if out.num_rows else []
        mask = self.call_user(self.ref, self.fn, batch)
        if isinstance(mask, (pa.ChunkedArray,)):
            mask = mask.combine_chunks()
        if not isinstance(mask, pa.Array):
            try:
                mask = pa.array(mask, type=pa.bool_())
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                raise OperatorError(
                    f"user function {self.ref!r} of filter {self.ctx.operator_name!r} returned "
                    f"{type(mask).__name__}; expected a boolean mask"
                ) from exc
        if mask.type != pa.bool_() or len(mask) != batch.num_rows:
            raise OperatorError(
                f"user function {self.ref!r} of filter {self.ctx.operator_name!r} returned "
                f"{mask.type} of length {len(mask)}; expected bool of length {batch.num_rows}"
            )
        out = selection.filter_batch_by_mask(batch, mask)
        return [out] if out.num_rows else []


@register("map")
class Map(_SchemaChecked):
    """batch -> batch through a user function."""

    def open(self):
        super().open()
        self.ref, self.fn = self.user_function()

    def process(self, batch, input_index):
        out = self.checked(self.call_user(self.ref, self.fn, batch), self.ref)
        return [out] if out.num_rows else []


@register("flat_map")
class FlatMap(_SchemaChecked):
    """batch -> any number of batches (an iterable, or None for nothing)."""

    def open(self):
        super().open()
        self.ref, self.fn = self.user_function()

    def process(self, batch, input_index):
        outs = self.call_user(self.ref, self.fn, batch)
        if outs is None:
            return []
        if isinstance(outs, (pa.RecordBatch, pa.Table)):
            outs = [outs]
        result = []
        try:
            iterator = iter(outs)
        except TypeError:
            raise OperatorError(
                f"user function {self.ref!r} of flat_map {self.ctx.operator_name!r} returned "
                f"{type(outs).__name__}; expected an iterable of pyarrow.RecordBatch"
            ) from None
        for out in iterator:
            out = self.checked(out, self.ref)
            if out.num_rows:
                result.append(out)
        return result


@register("select")
class Select(Operator):
    """Project columns, optionally renaming: {"columns": [names]} or {"columns": {old: new}};
    or compute them: {"expressions": [[name, base64 pyarrow expression], ...]}, evaluated over
    the whole batch at once (Acero's project node)."""

    def open(self):
        exprs = self.params.get("expressions")
        self.expressions = None
        if exprs:
            self.names = [name for name, _ in exprs]
            self.expressions = [decode_expression(e) for _, e in exprs]
            return
        cols = self.params.get("columns")
        if not cols:
            raise OperatorError(f"select {self.ctx.operator_name!r} needs 'columns' or 'expressions'")
        self.renames = dict(cols) if isinstance(cols, dict) else {c: c for c in cols}
        self.checked_schema = None

    def process(self, batch, input_index):
        if self.expressions is not None:
            try:
                table = project(batch, self.expressions, self.names)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError) as exc:
                raise OperatorError(
                    f"select {self.ctx.operator_name!r}: expressions {[str(e) for e in self.expressions]} failed "
                    f"on columns {batch.schema.names}: {exc}") from exc
            return [b for b in table.combine_chunks().to_batches() if b.num_rows] or []
        # each batch has its own schema object: compare (a microsecond), check only a new schema
        if self.checked_schema is None or not batch.schema.equals(self.checked_schema):
            check_columns(self.ctx, batch.schema, list(self.renames), "selected")
            self.checked_schema = batch.schema
        out = batch.select(list(self.renames))
        if any(k != v for k, v in self.renames.items()):
            out = out.rename_columns(list(self.renames.values()))
        return [out]


@register("union")
class Union(Operator):
    """Merge several inputs of one schema."""


@register("key_by")
class KeyBy(Operator):
    """Identity: its input edge is HASH-partitioned by the node's key_by columns."""

    def process(self, batch, input_index):
        check_columns(self.ctx, batch.schema, self.ctx.operator.get("key_by") or [], "key_by")
        return [batch]

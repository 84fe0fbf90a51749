"""Keyed running aggregation over the compiled per-key-group state table."""

import numpy as np

from sabot._core import partition
from sabot._core.state import KeyedAggregateTable
from sabot.errors import OperatorError
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.transforms import check_columns


def output_name(column, fn):
    """Result column of one aggregate: ``"<column>_<fn>"``, ``"count"`` for count(*)."""
    return "count" if column in (None, "*") else f"{column}_{fn}"


@register("aggregate")
class KeyedAggregate(Operator):
    """count / sum / min / max / mean per key, state held per key group.

    Parameters: ``aggregates`` ([[column, fn], ...]) and ``emit``: ``"final"`` (one
    row per key when the input ends) or ``"updates"`` (after each batch, the
    current values of the keys it touched).
    """

    def open(self):
        keys = self.ctx.operator.get("key_by") or []
        if len(keys) != 1:
            raise OperatorError(
                f"aggregate {self.ctx.operator_name!r} is keyed by {keys}; keyed aggregation "
                "supports exactly one key column for now (combine several into one column first)"
            )
        self.key = keys[0]
        self.specs = [(None if c == "*" else c, fn) for c, fn in self.params["aggregates"]]
        self.emit = self.params.get("emit", "final")
        self.table = None
        self.checked_schema = None
        # The table names results "<fn>_<col>"; the API promises "<col>_<fn>".
        self.renames = {f"{fn}_{c}": output_name(c, fn) for c, fn in self.specs if c}

    def _create(self, key_type):
        self.table = KeyedAggregateTable(key_type, self.specs, self.ctx.max_parallelism, key_name=self.key)

    def _output(self, table):
        names = [self.renames.get(n, n) for n in table.column_names]
        wanted = [self.key] + [output_name(c, fn) for c, fn in self.specs]
        return table.rename_columns(names).select(wanted)

    def process(self, batch, input_index):
        if batch.schema is not self.checked_schema:
            check_columns(self.ctx, batch.schema, [self.key] + [c for c, _ in self.specs if c], "aggregate")
            self.checked_schema = batch.schema
        if self.table is None:
            self._create(batch.schema.field(self.key).type)
        keys = batch.column(self.key)
        hashes = partition.hash_columns(batch, [self.key])
        key_groups = partition.key_groups(hashes, self.ctx.max_parallelism)
        values = {c: batch.column(c) for c, _ in self.specs if c}
        groups = self.table.update(keys, hashes, key_groups, values, return_groups=self.emit == "updates")
        if self.emit != "updates" or not len(groups):
            return []
        return self._output(self.table.result(np.unique(groups))).to_batches()

    def finish(self):
        if self.table is None or self.emit == "updates":
            return []
        return self._output(self.table.result()).to_batches()

    # keyed state, per key group (checkpoints and rescaling move these tables)
    def snapshot_state(self, checkpoint_id):
        if self.table is None or not self.table.num_keys:
            return None
        return {"keyed": self.table.snapshot(), "state": None}

    def restore_state(self, keyed, state, checkpoint_id):
        if keyed is None or not keyed.num_rows:
            return
        if self.table is None:
            self._create(keyed.schema.field(self.key).type)
        self.table.merge(keyed)


__all__ = ["KeyedAggregate", "output_name"]

"""Keyed running aggregation over the compiled per-key-group state table.

One key column of a type the table holds natively (integer, temporal, string,
binary) is stored as it is. Several key columns, or one of another key type
(boolean, dictionary, fixed_size_binary, views), are packed row by row into one
binary column of canonical bytes (``sabot._core.state.pack_keys``) and the table
keys on those bytes; results unpack them into the original columns. Either way the
rows are hashed with ``partition.hash_columns(batch, keys)``, the hash the upstream
HashPartitioner routes by, so a key's key group is the one the exchange sent it to.
"""

import logging

import numpy as np
import pyarrow as pa

from sabot._core import partition
from sabot._core.state import KeyedAggregateTable, pack_keys, unpack_keys
from sabot.errors import OperatorError, UnsupportedStateType
from sabot.execution.operator_spec import (
    AGGREGATE_FUNCTIONS,
    aggregate_output_name,
    check_key_fields,
    decode_schema,
    encode_schema,
    parse_aggregates,
)
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.transforms import check_columns

log = logging.getLogger(__name__)

#: Name of the packed key column in the state table and its snapshots.
PACKED_KEY = "_packed_key"
#: Schema metadata of a packed snapshot: the key columns' fields (names and types),
#: so a restored operator can unpack keys before it sees any input.
KEY_SCHEMA_METADATA = b"sabot.packed_key_schema"


def _native_key_type(t):
    """True when the state table holds a single key of type t as it is (no packing)."""
    return (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_duration(t)
            or t in (pa.string(), pa.large_string(), pa.binary(), pa.large_binary()))


def _key_class(t):
    """The type a key column packs as: batches may vary within one class, not across.

    A dictionary column packs its values, a view or a 32-bit-offset string the same
    bytes as the large form, so these may alternate between batches; an int32 and an
    int64 column pack to different bytes and may not.
    """
    if isinstance(t, pa.ExtensionType):
        t = t.storage_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_string_view(t):
        return pa.large_string()
    if pa.types.is_binary(t) or pa.types.is_binary_view(t):
        return pa.large_binary()
    return t


@register("aggregate")
class KeyedAggregate(Operator):
    """count / sum / min / max / mean per key, state held per key group.

    Parameters: ``aggregates`` ([[column, fn], ...]) and ``emit``: ``"final"`` (one
    row per key when the input ends) or ``"updates"`` (after each batch, the
    current values of the keys it touched). The key is the operator's ``key_by``,
    one column or several.
    """

    def open(self):
        keys = self.ctx.operator.get("key_by") or []
        if not keys:
            raise OperatorError(
                f"aggregate {self.ctx.operator_name!r} has no key_by columns; a keyed running "
                "aggregation needs at least one key column"
            )
        self.keys = list(keys)
        items = parse_aggregates(self.params["aggregates"])
        if not all(i.plain for i in items):
            raise OperatorError(
                f"aggregate {self.ctx.operator_name!r}: the compiled engine runs {AGGREGATE_FUNCTIONS} without "
                "where= or by=; this operator's aggregates need parameter kind='arrow' (the Stream API sets it)")
        self.specs = [(i.column, i.fn) for i in items]
        self.output_names = [i.name for i in items]  # the table names <column>_<fn>; name= renames
        self.emit = self.params.get("emit", "final")
        self.table = None
        self.packed = None        # decided by the first batch or restored snapshot
        self.key_fields = None    # packed mode: the key columns' fields (output names/types)
        self.checked_schema = None
        self.value_names = [aggregate_output_name(c, fn) for c, fn in self.specs]

    def _error(self, message):
        return OperatorError(f"aggregate {self.ctx.operator_name!r}: {message}")

    def _create(self, packed, key_type=None):
        self.packed = packed
        if packed:
            self.table = KeyedAggregateTable(pa.large_binary(), self.specs, self.ctx.max_parallelism,
                                             key_name=PACKED_KEY)
        else:
            self.table = KeyedAggregateTable(key_type, self.specs, self.ctx.max_parallelism,
                                             key_name=self.keys[0])

    def _check_key_schema(self, schema):
        """First batch: pick the storage mode; later batches: same key classes as before."""
        fields = [schema.field(k) for k in self.keys]
        try:
            check_key_fields(fields, f"aggregate {self.ctx.operator_name!r}")
        except UnsupportedStateType as exc:
            raise OperatorError(str(exc)) from exc
        if self.table is None:
            packed = len(fields) > 1 or not _native_key_type(fields[0].type)
            self._create(packed, fields[0].type)
        if not self.packed:
            return
        if self.key_fields is None:
            self.key_fields = fields
            return
        for have, got in zip(self.key_fields, fields):
            if _key_class(have.type) != _key_class(got.type):
                raise self._error(
                    f"key column {got.name!r} has type {got.type} in this batch but {have.type} "
                    f"before; a key column keeps its type for the whole stream"
                )

    def _output(self, table):
        out = self._columns(table)
        if self.output_names != self.value_names:
            out = out.rename_columns(out.column_names[:len(self.keys)] + self.output_names)
        return out

    def _columns(self, table):
        if not self.packed:
            return table.select([self.keys[0]] + self.value_names)
        if self.key_fields is None:
            raise self._error(
                "restored keyed state has no key schema (snapshot metadata "
                f"{KEY_SCHEMA_METADATA.decode()!r} is missing) and no input batch arrived to "
                "give the key column types"
            )
        key_cols = unpack_keys(table.column(PACKED_KEY), [f.type for f in self.key_fields])
        values = table
        fields = [pa.field(f.name, f.type) for f in self.key_fields]
        cols = key_cols + [values.column(n) for n in self.value_names]
        fields += [values.schema.field(n) for n in self.value_names]
        return pa.Table.from_arrays(cols, schema=pa.schema(fields))

    def process(self, batch, input_index):
        # each batch has its own schema object: compare (a microsecond), check only a new schema
        if self.checked_schema is None or not batch.schema.equals(self.checked_schema):
            check_columns(self.ctx, batch.schema, self.keys + [c for c, _ in self.specs if c], "aggregate")
            self._check_key_schema(batch.schema)
            self.checked_schema = batch.schema
        hashes = partition.hash_columns(batch, self.keys)
        key_groups = partition.key_groups(hashes, self.ctx.max_parallelism)
        if self.packed:
            keys = pack_keys([batch.column(k) for k in self.keys])
        else:
            keys = batch.column(self.keys[0])
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
        keyed = self.table.snapshot()
        if self.packed and self.key_fields is not None:
            keyed = keyed.replace_schema_metadata(
                {KEY_SCHEMA_METADATA: encode_schema(pa.schema(self.key_fields))})
        return {"keyed": keyed, "state": None}

    def restore_state(self, keyed, state, checkpoint_id):
        if keyed is None or not keyed.num_rows:
            return
        names = keyed.schema.names
        packed = PACKED_KEY in names
        if not packed and self.keys[0] not in names:
            raise self._error(
                f"the restored keyed state has neither a {PACKED_KEY!r} column nor the key column "
                f"{self.keys[0]!r}; its columns: {names}"
            )
        if self.table is None:
            self._create(packed, None if packed else keyed.schema.field(self.keys[0]).type)
        elif packed != self.packed:
            raise self._error(
                f"restored keyed state is {'packed' if packed else 'single-column'} but this "
                f"operator already holds {'packed' if self.packed else 'single-column'} state"
            )
        if packed:
            self._restore_key_fields(keyed.schema.metadata or {})
        self.table.merge(keyed)

    def _restore_key_fields(self, metadata):
        encoded = metadata.get(KEY_SCHEMA_METADATA)
        if encoded is None:
            log.warning("aggregate %r: packed keyed state without a key schema; "
                        "key types will come from the input", self.ctx.operator_name)
            return
        fields = list(decode_schema(encoded.decode("ascii")))
        if [f.name for f in fields] != self.keys:
            raise self._error(
                f"restored keyed state is keyed by {[f.name for f in fields]}, this operator "
                f"by {self.keys}"
            )
        if self.key_fields is None:
            self.key_fields = fields
            return
        for have, got in zip(self.key_fields, fields):
            if _key_class(have.type) != _key_class(got.type):
                raise self._error(
                    f"restored key column {got.name!r} has type {got.type}, this operator "
                    f"holds {have.type}"
                )


__all__ = ["KeyedAggregate", "PACKED_KEY", "KEY_SCHEMA_METADATA"]

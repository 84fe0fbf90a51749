"""Keyed process functions (Flink's ``KeyedProcessFunction``), over whole batches.

User code subclasses :class:`KeyedProcessFunction` and gets, per batch, every row of
the keys this subtask owns, with vectorised keyed state and timers:

.. code-block:: python

    class CountAndAlert(KeyedProcessFunction):
        def open(self, ctx):
            self.count = ctx.value_state("count", pa.int64())

        def process(self, batch, ctx):
            seen = pc.fill_null(self.count.get(batch), 0)          # one value per row's key
            ...                                                      # vectorised logic
            self.count.update(batch, new_counts)                    # last row of a key wins
            ctx.register_event_time_timer(batch, pc.add(batch["ts"], 60_000))
            return out_batch

        def on_timer(self, timers, ctx):                              # key columns, timestamp, domain
            return ...

State is addressed by *rows*: any table or batch holding the key columns (the input
batch, a slice of it, the timers table). Every state lives per key group and is
snapshotted as keyed state, so the function checkpoints, restores at another
parallelism and rescales live; timers move with their keys.

* ``value_state(name, type)``: ``get(rows) -> Array`` (null where unset),
  ``update(rows, values)``, ``clear(rows)``.
* ``list_state(name, schema)``: ``add(rows, values)`` (one element per row, appended in
  order), ``get(rows) -> Table`` (``row``: index into ``rows``, then the element
  columns, in insertion order per key), ``clear(rows)``.
* ``map_state(name, key_type, value_type)``: ``put(rows, keys, values)``,
  ``get(rows, keys) -> Array``, ``remove(rows, keys)``, ``entries(rows) -> Table``
  (``row``, ``key``, ``value``), ``clear(rows)``.
* Timers: ``register_event_time_timer(rows, ts)``, ``register_processing_time_timer``,
  ``delete_event_time_timer``, ``delete_processing_time_timer`` (ms or event-time units;
  one timer per key, timestamp and domain). ``on_timer(timers, ctx)`` gets a table of
  the due timers (key columns, ``timestamp``, ``domain`` "event" | "processing"):
  event-time timers when the watermark reaches them, processing-time timers when the
  task's clock does (the task wakes up for them without input). At the end of the
  input every event-time timer fires (the watermark goes to +inf); processing-time
  timers still pending then are dropped.
* ``ctx.current_watermark``, ``ctx.current_processing_time``, ``ctx.keys``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sabot.errors import OperatorError
from sabot.execution.operator_spec import decode_schema
from sabot.runtime.operators import keyed_state
from sabot.runtime.operators.base import Operator, register
from sabot.runtime.operators.keyed_rows import KeyedRows, keys_equal

__all__ = ["KeyedProcessFunction", "ProcessContext"]

_EVENT, _PROC = 0, 1
_MAX_TIMER_ROUNDS = 100


class KeyedProcessFunction:
    """Base class of user process functions (see the module docs)."""

    def open(self, ctx):
        pass

    def process(self, batch, ctx):
        """Required: what ``batch`` (rows of the keys this subtask owns) becomes: a batch or
        table, a list of them, or None."""
        raise NotImplementedError(f"{type(self).__name__} must define process(batch, ctx): a "
                                  "KeyedProcessFunction subclass overrides it (see sabot.runtime.operators.process)")

    def on_timer(self, timers, ctx):
        return None

    def close(self):
        pass


def _rows_table(rows, keys):
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    missing = [k for k in keys if k not in rows.column_names]
    if missing:
        raise OperatorError(f"state access needs the key columns {keys}; the rows have {rows.column_names}")
    return rows.select(keys)


def _array(values, n, type_=None):
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(values, type=type_)
    if type_ is not None and values.type != type_:
        values = values.cast(type_)
    if len(values) != n:
        raise OperatorError(f"state update: {len(values)} values for {n} rows")
    return values


def _last_per_key(keys_table):
    """Index of the last row of each distinct key."""
    gid, first = keyed_state.group_ids(keys_table.columns)
    last = np.full(len(first), -1, dtype=np.int64)
    np.maximum.at(last, gid, np.arange(len(gid), dtype=np.int64))
    return last


def _scatter(rows, n, i, j, value_type):
    """An array of n values: stored row j's ``value`` at position i, null elsewhere."""
    if len(i) == 0:
        return pa.nulls(n, value_type)
    found = rows.take(j, ["value"]).column("value").combine_chunks()
    pos = np.full(n, -1, dtype=np.int64)
    pos[i] = np.arange(len(i))
    return found.take(pa.array(pos, mask=pos < 0))


class _State:
    """Rows keyed by (key columns [+ sub key]), found through their hash."""

    def __init__(self, kind, name, keys, extra_key=None):
        self.kind, self.name, self.keys, self.extra_key = kind, name, keys, extra_key
        self.rows = KeyedRows()

    @property
    def lookup_columns(self):
        return self.keys + ([self.extra_key] if self.extra_key else [])

    def _find(self, probe):
        """(probe row, stored row) pairs with equal lookup columns."""
        cols = self.lookup_columns
        i, j = self.rows.probe(keyed_state.key_hashes(probe, cols))
        if len(i):
            ok = keys_equal([probe.column(c).take(pa.array(i)) for c in cols],
                            list(self.rows.take(j, cols).columns))
            i, j = i[ok], j[ok]
        return i, j

    def _kill_matching(self, probe):
        _, j = self._find(probe)
        self.rows.kill(np.unique(j))

    def clear(self, rows):
        keys = _rows_table(rows, self.keys)
        i, j = self.rows.probe(keyed_state.key_hashes(keys, self.keys))
        if len(i):
            ok = keys_equal([keys.column(c).take(pa.array(i)) for c in self.keys],
                            list(self.rows.take(j, self.keys).columns))
            self.rows.kill(np.unique(j[ok]))

    def snapshot(self, max_parallelism):
        table = self.rows.alive_table()
        if table is None or table.num_rows == 0:
            return None
        kg = keyed_state.key_groups(keyed_state.key_hashes(table, self.keys), max_parallelism)
        return table.append_column(keyed_state.KEY_GROUP, pa.array(kg))

    def restore(self, table):
        self.rows.append(table, keyed_state.key_hashes(table, self.lookup_columns))


class ValueState(_State):
    """One value per key."""

    def __init__(self, name, keys, value_type):
        super().__init__("value", name, keys)
        self.type = value_type

    def get(self, rows):
        keys = _rows_table(rows, self.keys)
        return _scatter(self.rows, keys.num_rows, *self._find(keys), self.type)

    def update(self, rows, values):
        keys = _rows_table(rows, self.keys)
        values = _array(values, keys.num_rows, self.type)
        last = _last_per_key(keys)
        keys, values = keys.take(pa.array(last)), values.take(pa.array(last))
        self._kill_matching(keys)
        table = keys.append_column("value", values)
        self.rows.append(table, keyed_state.key_hashes(keys, self.keys))


class ListState(_State):
    """A list of elements (rows of ``schema``) per key, in insertion order."""

    def __init__(self, name, keys, schema):
        super().__init__("list", name, keys)
        self.schema = schema
        self.seq = 0

    def add(self, rows, values):
        keys = _rows_table(rows, self.keys)
        if isinstance(values, pa.RecordBatch):
            values = pa.Table.from_batches([values])
        values = values.select(self.schema.names).cast(self.schema)
        if values.num_rows != keys.num_rows:
            raise OperatorError(f"list state {self.name!r}: {values.num_rows} elements for {keys.num_rows} rows")
        seq = pa.array(np.arange(self.seq, self.seq + keys.num_rows, dtype=np.int64))
        self.seq += keys.num_rows
        table = pa.Table.from_arrays(keys.columns + values.columns + [seq],
                                     names=self.keys + self.schema.names + ["__seq"])
        self.rows.append(table, keyed_state.key_hashes(keys, self.keys))

    def get(self, rows):
        keys = _rows_table(rows, self.keys)
        i, j = self._find(keys)
        if len(i) == 0:
            return pa.table([pa.array([], pa.int64())] + [pa.array([], f.type) for f in self.schema],
                            names=["row"] + self.schema.names)
        found = self.rows.take(j, self.schema.names + ["__seq"])
        order = np.lexsort((found.column("__seq").to_numpy(), i))
        found = found.take(pa.array(order))
        return pa.Table.from_arrays([pa.array(i[order])] + [found.column(n) for n in self.schema.names],
                                    names=["row"] + self.schema.names)

    def restore(self, table):
        super().restore(table)
        self.seq = max(self.seq, int(pc.max(table.column("__seq")).as_py()) + 1)


class MapState(_State):
    """A map per key: ``key`` (the map key) -> ``value``."""

    def __init__(self, name, keys, key_type, value_type):
        super().__init__("map", name, keys, extra_key="key")
        self.key_type, self.value_type = key_type, value_type

    def _probe_table(self, rows, map_keys):
        keys = _rows_table(rows, self.keys)
        return keys.append_column("key", _array(map_keys, keys.num_rows, self.key_type))

    def put(self, rows, map_keys, values):
        probe = self._probe_table(rows, map_keys)
        values = _array(values, probe.num_rows, self.value_type)
        last = _last_per_key(probe)
        probe, values = probe.take(pa.array(last)), values.take(pa.array(last))
        self._kill_matching(probe)
        self.rows.append(probe.append_column("value", values), keyed_state.key_hashes(probe, self.lookup_columns))

    def get(self, rows, map_keys):
        probe = self._probe_table(rows, map_keys)
        return _scatter(self.rows, probe.num_rows, *self._find(probe), self.value_type)

    def remove(self, rows, map_keys):
        self._kill_matching(self._probe_table(rows, map_keys))

    def _entries_of(self, keys):
        """(row of ``keys``, stored row id) for every entry of those keys (the map is indexed by
        key and map key, so this groups the alive entries by key instead)."""
        alive = self.rows.alive_rows()
        none = np.zeros(0, dtype=np.int64)
        if len(alive) == 0 or keys.num_rows == 0:
            return none, none
        stored = self.rows.take(alive, self.keys)
        both = [pa.chunked_array(keys.column(k).chunks + stored.column(k).chunks, type=keys.schema.field(k).type)
                for k in self.keys]
        gid, _ = keyed_state.group_ids(both)
        probe_gid, stored_gid = gid[:keys.num_rows], gid[keys.num_rows:]
        order = np.argsort(stored_gid, kind="stable")
        sorted_gid = stored_gid[order]
        left = np.searchsorted(sorted_gid, probe_gid, "left")
        counts = np.searchsorted(sorted_gid, probe_gid, "right") - left
        total = int(counts.sum())
        if total == 0:
            return none, none
        rows = np.repeat(np.arange(keys.num_rows, dtype=np.int64), counts)
        starts = np.repeat(left - (np.cumsum(counts) - counts), counts)
        return rows, alive[order[np.arange(total) + starts]]

    def entries(self, rows):
        rows_idx, ids = self._entries_of(_rows_table(rows, self.keys))
        if len(ids) == 0:
            return pa.table({"row": pa.array([], pa.int64()), "key": pa.array([], self.key_type),
                             "value": pa.array([], self.value_type)})
        found = self.rows.take(ids, ["key", "value"])
        return pa.table({"row": pa.array(rows_idx, pa.int64()), "key": found.column("key"),
                         "value": found.column("value")})

    def clear(self, rows):
        _, ids = self._entries_of(_rows_table(rows, self.keys))
        self.rows.kill(np.unique(ids))


class _Timers(_State):
    """Timers per (key, timestamp, domain); due ones are taken out and fired."""

    def __init__(self, keys):
        super().__init__("timers", "timers", keys)
        self.rows = KeyedRows({"ts": np.int64, "domain": np.int8})

    @property
    def lookup_columns(self):
        return self.keys + ["timestamp", "domain"]

    def _table(self, rows, timestamps, domain):
        keys = _rows_table(rows, self.keys)
        ts = _array(timestamps, keys.num_rows)
        if not pa.types.is_int64(ts.type):
            ts = ts.cast(pa.int64())
        return keys.append_column("timestamp", ts).append_column(
            "domain", pa.array(np.full(keys.num_rows, domain, dtype=np.int8)))

    def register(self, rows, timestamps, domain):
        table = self._table(rows, timestamps, domain)
        if table.num_rows == 0:
            return
        table = table.take(pa.array(_last_per_key(table)))
        i, _ = self._find(table)
        if len(i):  # already registered: one timer per (key, timestamp, domain)
            have = np.zeros(table.num_rows, dtype=bool)
            have[i] = True
            table = table.filter(pa.array(~have))
        self.rows.append(table, keyed_state.key_hashes(table, self.lookup_columns),
                         ts=table.column("timestamp").to_numpy(), domain=table.column("domain").to_numpy())

    def delete(self, rows, timestamps, domain):
        self._kill_matching(self._table(rows, timestamps, domain))

    def due(self, domain, up_to):
        """Take out the timers of ``domain`` at or before ``up_to`` (None: all), by timestamp."""
        rows = self.rows
        if rows.num_alive == 0:
            return None
        hit = rows.alive & (rows.side["domain"] == domain)
        if up_to is not None:
            hit &= rows.side["ts"] <= up_to
        ids = np.flatnonzero(hit)
        if len(ids) == 0:
            return None
        ids = ids[np.argsort(rows.side["ts"][ids], kind="stable")]
        fired = rows.take(ids)
        rows.kill(ids)
        return fired.set_column(fired.schema.get_field_index("domain"), "domain", pa.array(
            np.where(fired.column("domain").to_numpy() == _EVENT, "event", "processing")))

    def next_processing(self):
        rows = self.rows
        if rows.num_alive == 0:
            return None
        hit = rows.alive & (rows.side["domain"] == _PROC)
        return int(rows.side["ts"][hit].min()) if hit.any() else None

    def restore(self, table):
        self.rows.append(table, keyed_state.key_hashes(table, self.lookup_columns),
                         ts=table.column("timestamp").to_numpy(), domain=table.column("domain").to_numpy())


class ProcessContext:
    """What a process function sees: its state, timers, the watermark and the clock."""

    def __init__(self, operator):
        self._op = operator
        self.keys = list(operator.keys)

    def _declare(self, state):
        if state.name in self._op.states:
            raise OperatorError(f"process function: state {state.name!r} is declared twice")
        self._op.states[state.name] = state
        return state

    def value_state(self, name, value_type):
        return self._declare(ValueState(name, self.keys, value_type))

    def list_state(self, name, schema):
        return self._declare(ListState(name, self.keys, schema))

    def map_state(self, name, key_type, value_type):
        return self._declare(MapState(name, self.keys, key_type, value_type))

    def register_event_time_timer(self, rows, timestamps):
        self._op.timers.register(rows, timestamps, _EVENT)

    def register_processing_time_timer(self, rows, timestamps):
        self._op.timers.register(rows, timestamps, _PROC)

    def delete_event_time_timer(self, rows, timestamps):
        self._op.timers.delete(rows, timestamps, _EVENT)

    def delete_processing_time_timer(self, rows, timestamps):
        self._op.timers.delete(rows, timestamps, _PROC)

    @property
    def current_watermark(self):
        return self._op.watermark

    @property
    def current_processing_time(self):
        return self._op.ctx.clock.now_ms()


@register("process")
class KeyedProcess(Operator):
    """Runs a :class:`KeyedProcessFunction` (see the module docs). Parameters:
    ``{"schema": b64 output schema | None}``; the function's import reference is the
    node's ``function``; keys from ``key_by``."""

    def open(self):
        self.keys = list(self.ctx.operator.get("key_by") or [])
        if not self.keys:
            raise OperatorError(f"process {self.ctx.operator_name!r} needs key_by columns")
        self.ref, factory = self.user_function()
        self.fn = self.call_user(self.ref, factory)
        if not hasattr(self.fn, "process"):
            raise OperatorError(f"process {self.ctx.operator_name!r}: {self.ref!r} did not give an object with "
                                "process(batch, ctx) (subclass sabot.KeyedProcessFunction)")
        declared = self.params.get("schema")
        self.schema = decode_schema(declared) if declared else None
        self.states = {}
        self.timers = _Timers(self.keys)
        self.watermark = None
        self.fn_ctx = ProcessContext(self)
        self.call_user(self.ref, self.fn.open, self.fn_ctx)

    def _out(self, result):
        if result is None:
            return []
        if isinstance(result, (pa.RecordBatch, pa.Table)):
            result = [result]
        out = []
        for item in result:
            table = pa.Table.from_batches([item]) if isinstance(item, pa.RecordBatch) else item
            if self.schema is not None and not table.schema.equals(self.schema):
                try:
                    table = table.select(self.schema.names).cast(self.schema)
                except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise OperatorError(f"process {self.ctx.operator_name!r}: {self.ref!r} returned schema "
                                        f"{table.schema}, declared {self.schema}: {exc}") from exc
            out += [b for b in table.combine_chunks().to_batches() if b.num_rows]
        return out

    def process(self, batch, input_index):
        return self._out(self.call_user(self.ref, self.fn.process, batch, self.fn_ctx))

    def _fire(self, domain, up_to):
        out = []
        for _ in range(_MAX_TIMER_ROUNDS):  # timers registered by on_timer that are due fire too
            timers = self.timers.due(domain, up_to)
            if timers is None:
                return out
            out += self._out(self.call_user(self.ref, self.fn.on_timer, timers, self.fn_ctx))
        raise OperatorError(f"process {self.ctx.operator_name!r}: on_timer kept registering due timers "
                            f"({_MAX_TIMER_ROUNDS} rounds)")

    def on_watermark(self, timestamp):
        if not isinstance(timestamp, (int, np.integer)):
            timestamp = pa.scalar(timestamp).cast(pa.int64()).as_py()
        self.watermark = int(timestamp)
        return self._fire(_EVENT, self.watermark)

    def next_processing_time(self):
        return self.timers.next_processing()

    def on_processing_time(self, now_ms):
        return self._fire(_PROC, now_ms)

    def finish(self):
        return self._fire(_EVENT, None)

    def close(self):
        if hasattr(self, "fn"):
            self.call_user(self.ref, self.fn.close)

    # -- checkpoints ---------------------------------------------------------------------

    def snapshot_state(self, checkpoint_id):
        mp = self.ctx.max_parallelism
        parts = {f"{s.kind}:{name}": s.snapshot(mp) for name, s in self.states.items()}
        parts["timers"] = self.timers.snapshot(mp)
        keyed = keyed_state.bundle(parts, {"watermark": self.watermark})
        return None if keyed is None else {"keyed": keyed, "state": None}

    def restore_state(self, keyed, state, checkpoint_id):
        parts, metas = keyed_state.unbundle(keyed, f"process {self.ctx.operator_name!r}")
        self.watermark = keyed_state.min_meta(metas, "watermark")
        for part, table in parts.items():
            if part == "timers":
                self.timers.restore(table)
                continue
            kind, _, name = part.partition(":")
            s = self.states.get(name)
            if s is None or s.kind != kind:
                raise OperatorError(f"process {self.ctx.operator_name!r}: checkpoint {checkpoint_id} holds "
                                    f"{kind} state {name!r}, which open() did not declare; declared: "
                                    f"{sorted(self.states)}")
            s.restore(table)

"""Connectors: what a table's ``'connector' = '...'`` option turns into.

A connector is an object with any of

* ``source(table, ctx) -> Source``: the Stream a ``FROM table`` reads (and whether it ends);
* ``sink(stream, table, ctx) -> StreamSink``: where ``INSERT INTO table`` writes;
* ``accepts_updates``: True when the sink can take an updating result (a non-windowed
  ``GROUP BY`` or Top-N over an unbounded input), or a function of the table saying so
  (``jdbc`` does when the table declares a PRIMARY KEY); append-only sinks refuse those;
* ``read_table(table, ctx) -> pyarrow.Table``: a bounded table for lookup joins
  (``JOIN t FOR SYSTEM_TIME AS OF ...``).

Register one with :func:`register_connector`; ``kafka`` and ``jdbc`` (PostgreSQL) put
:mod:`sabot.connectors` behind the same interface as the built-in ones:

    >>> register_connector("my-source", MyConnector())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from sabot.api.stream import Stream
from sabot.sql.errors import SqlError

CONNECTORS = {}


def register_connector(name, connector):
    """Make ``'connector' = name`` in ``CREATE TABLE`` use ``connector``."""
    CONNECTORS[name] = connector
    return connector


@dataclass
class Source:
    """A planned source: the stream, whether it is bounded, its arrival-order columns
    (``hidden``: never in ``SELECT *``; Top-N breaks ties on them) and the computed columns
    the connector already provides (their DDL expression is not evaluated)."""

    stream: Stream
    bounded: bool
    hidden: list = field(default_factory=list)
    provided: set = field(default_factory=set)


@dataclass
class Context:
    """What a connector may read: the script's text (for errors) and the session's settings."""

    text: str
    settings: dict

    def error(self, message, table, hint=None):
        return SqlError(message, text=self.text, node=table.node, hint=hint)


def _option(table, ctx, key, kind=str, default=None):
    value = table.options.get(key)
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ctx.error(f"table {table.name!r}: option {key!r} = {value!r} is not a valid {kind.__name__}", table) \
            from None


_DURATION_UNITS = {"ms": 0.001, "milli": 0.001, "millis": 0.001, "s": 1.0, "sec": 1.0, "second": 1.0,
                   "seconds": 1.0, "min": 60.0, "minute": 60.0, "minutes": 60.0}


def _duration_s(table, ctx, key):
    """Option ``key`` as seconds: Flink's durations (``'10 s'``, ``'500 ms'``, ``'1 min'``; a bare
    number is milliseconds), or None when not set."""
    value = table.options.get(key)
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return None
    text = str(value).strip().lower()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz ").strip()
    unit = text[len(number):].strip() or "ms"
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except (ValueError, KeyError):
        seconds = None
    if seconds is None or seconds <= 0:
        raise ctx.error(f"table {table.name!r}: option {key!r} = {value!r} is not a positive duration", table,
                        hint="write e.g. '10 s', '500 ms' or '1 min'")
    return seconds


def _check_columns(table, schema, ctx, provided=(), hidden=()):
    """Every declared physical column must be in what the source produces, with its type."""
    for name, t in table.columns:
        i = schema.get_field_index(name)
        if i < 0:
            raise ctx.error(f"table {table.name!r}: column {name!r} is not produced by connector "
                            f"{table.connector!r}", table, hint=f"it produces: {schema.names}")
        if not schema.field(i).type.equals(t) and not _compatible(schema.field(i).type, t):
            raise ctx.error(f"table {table.name!r}: column {name!r} is declared {t} but connector "
                            f"{table.connector!r} produces {schema.field(i).type}", table,
                            hint=f"declare it as {schema.field(i).type}")


def _compatible(actual, declared):
    if pa.types.is_integer(actual) and pa.types.is_integer(declared):
        return True
    if pa.types.is_struct(actual) and pa.types.is_struct(declared):
        return all(actual.get_field_index(f.name) >= 0 for f in declared)
    if pa.types.is_timestamp(actual) and pa.types.is_timestamp(declared):
        return True
    return False


def _watermarked(stream, table, ctx, schema):
    if table.watermark:
        column, delay = table.watermark
        if schema.get_field_index(column) < 0:
            raise ctx.error(f"table {table.name!r}: WATERMARK FOR {column!r} needs a column the source produces",
                            table, hint=f"the source produces {schema.names}; a computed column cannot carry "
                                        "the watermark here")
        stream = stream.with_watermarks(column, delay,
                                        idle_timeout_ms=_option(table, ctx, "scan.watermark.idle-timeout", int, None))
    return stream


def _batch_size(table, ctx):
    return _option(table, ctx, "rows-per-batch", int, None) or int(ctx.settings.get("sabot.batch-size", 8192))


class NexmarkConnector:
    """``'connector' = 'nexmark'``: Sabot's Nexmark generator (one row per event, as the
    published DDL declares), with ``events.num`` (bounded when set), ``first-event.rate``
    (events per second of event time) and ``person/auction/bid.proportion``. It provides
    the DDL's computed ``dateTime`` itself, and the hidden arrival-order column ``__seq``."""

    accepts_updates = False

    def source(self, table, ctx):
        from sabot.nexmark.queries import SEQ, sequenced_events

        config = {}
        rate = _option(table, ctx, "first-event.rate", float) or _option(table, ctx, "next-event.rate", float)
        if rate:
            config["event_rate"] = rate
        for kind in ("person", "auction", "bid"):
            p = _option(table, ctx, f"{kind}.proportion", int)
            if p:
                config[f"{kind}_proportion"] = p
        events = _option(table, ctx, "events.num", int)
        if events is not None and events <= 0:
            events = None
        schema = sequenced_events(0, 0, **config).schema
        _check_columns(table, schema, ctx)
        # SET 'sabot.nexmark.generator' = 'module:function': a stand-in with the same rows (tests slow it down)
        generator = ctx.settings.get("sabot.nexmark.generator") or sequenced_events
        stream = Stream.from_generator(generator, total_rows=events, batch_size=_batch_size(table, ctx),
                                       parameters=config, name=table.name)
        stream = _watermarked(stream, table, ctx, schema)
        return Source(stream, bounded=events is not None, hidden=[SEQ],
                      provided={n for n, _ in table.computed if n == "dateTime"})


class DatagenConnector:
    """``'connector' = 'datagen'``: a Sabot generator, ``'generator' = 'module:function'``
    (``fn(offset, num_rows, **params) -> RecordBatch``; ``'generator' = 'nexmark'`` is the
    Nexmark generator), ``'number-of-rows'`` (bounded when set), ``'rows-per-batch'``."""

    accepts_updates = False

    def source(self, table, ctx):
        from sabot.runtime import functions as refs

        generator = table.options.get("generator")
        if generator in (None, "nexmark"):
            if generator is None and not table.columns:
                raise ctx.error(f"table {table.name!r}: datagen needs 'generator' = 'module:function'", table)
            if generator == "nexmark":
                return NexmarkConnector().source(table, ctx)
            raise ctx.error(f"table {table.name!r}: datagen needs 'generator' = 'module:function' (a Sabot "
                            "generator) or 'nexmark'", table)
        try:
            fn = refs.resolve(generator)
        except Exception as exc:  # noqa: BLE001
            raise ctx.error(f"table {table.name!r}: cannot import generator {generator!r}: {exc}", table) from None
        rows = _option(table, ctx, "number-of-rows", int)
        schema = fn(0, 0).schema
        _check_columns(table, schema, ctx)
        stream = Stream.from_generator(generator, total_rows=rows, batch_size=_batch_size(table, ctx),
                                       name=table.name)
        stream = _watermarked(stream, table, ctx, schema)
        return Source(stream, bounded=rows is not None)


_FORMATS = {"parquet": "parquet", "ipc": "ipc", "arrow": "ipc", "feather": "ipc", "csv": "csv"}


class FilesystemConnector:
    """``'connector' = 'filesystem'``: ``'path'``, ``'format'`` = parquet | ipc (arrow) | csv.

    As a source: Parquet and IPC are read through ``pyarrow.dataset`` by the job (split
    by file, columns and filters pushed into the scan; with ``'source.monitor-interval'``
    the directory is listed again at that interval and new files are read too, an
    unbounded source as Flink's continuous file source); CSV files (no header, columns in
    DDL order, as Flink's csv format) are read when the job is built. As a sink: part
    files written exactly once, Hive-style directories for ``PARTITIONED BY``. Append-only."""

    accepts_updates = False

    def _path(self, table, ctx):
        path = table.options.get("path")
        if not path:
            raise ctx.error(f"table {table.name!r}: the filesystem connector needs 'path'", table)
        if "${" in path:
            raise ctx.error(f"table {table.name!r}: path {path!r} has an unset variable", table,
                            hint="pass it in variables= (sabot.sql) or --var NAME=VALUE (sabot sql)")
        return path[len("file://"):] if path.startswith("file://") else path

    def _format(self, table, ctx):
        fmt = (table.options.get("format") or "parquet").lower()
        if fmt not in _FORMATS:
            raise ctx.error(f"table {table.name!r}: format {fmt!r} is not supported", table,
                            hint="use 'parquet', 'ipc' (Arrow) or 'csv'")
        return _FORMATS[fmt]

    def read_table(self, table, ctx):
        path, fmt = self._path(table, ctx), self._format(table, ctx)
        if fmt == "csv":
            read = pacsv.ReadOptions(column_names=[n for n, _ in table.columns])
            convert = pacsv.ConvertOptions(column_types=dict(table.columns))
            return ds.dataset(path, format=ds.CsvFileFormat(read_options=read, convert_options=convert)).to_table()
        return ds.dataset(path, format=fmt).to_table().select([n for n, _ in table.columns])

    def source(self, table, ctx):
        fmt = self._format(table, ctx)
        # 'sabot.sequence-column': a column of the files holding each row's arrival order (hidden)
        seq = table.options.get("sabot.sequence-column")
        hidden = [seq] if seq else []
        monitor = _duration_s(table, ctx, "source.monitor-interval")
        if fmt == "csv":
            if monitor is not None:
                raise ctx.error(f"table {table.name!r}: 'source.monitor-interval' needs Parquet or IPC files", table)
            if seq:
                raise ctx.error(f"table {table.name!r}: 'sabot.sequence-column' needs Parquet or IPC files", table)
            data = self.read_table(table, ctx)
            stream = Stream.from_table(data, batch_size=_batch_size(table, ctx), name=table.name)
            schema = data.schema
        else:
            path = self._path(table, ctx)
            available = ds.dataset(path, format=fmt).schema
            given = None
            if monitor is not None and not available.names:
                available = given = table.schema  # a monitored directory still empty: the DDL's columns
            if seq and available.get_field_index(seq) < 0:
                raise ctx.error(f"table {table.name!r}: sequence column {seq!r} is not in the files", table,
                                hint=f"the files have {available.names}")
            missing = [n for n, _ in table.columns if available.get_field_index(n) < 0]
            if missing:
                raise ctx.error(f"table {table.name!r}: column(s) {missing} are not in the files", table,
                                hint=f"the files have {available.names}")
            stream = Stream.from_dataset(path, format=fmt, columns=[n for n, _ in table.columns] + hidden,
                                         batch_size=_option(table, ctx, "rows-per-batch", int, None),
                                         monitor_interval=monitor, schema=given, name=table.name)
            schema = stream.schema
            _check_columns(table, schema, ctx)
        return Source(_watermarked(stream, table, ctx, schema), bounded=monitor is None, hidden=hidden)

    def sink(self, stream, table, ctx):
        fmt = self._format(table, ctx)
        if fmt == "csv":
            raise ctx.error(f"table {table.name!r}: the filesystem sink writes 'parquet' or 'ipc', not csv", table,
                            hint="set 'format' = 'parquet'")
        mode = table.options.get("sabot.mode", "error")
        return stream.to_files(self._path(table, ctx), format=fmt, partition_by=table.partitioned_by or None,
                               mode=mode, name=table.name)


class PrintConnector:
    """``'connector' = 'print'``: rows to standard output, prefixed by the sink's name and subtask."""

    accepts_updates = True

    def sink(self, stream, table, ctx):
        return stream.print(limit=_option(table, ctx, "sabot.limit", int, None), name=table.name)


class BlackholeConnector:
    """``'connector' = 'blackhole'``: swallows every row (benchmarks)."""

    accepts_updates = True

    def sink(self, stream, table, ctx):
        return stream.sink("sabot.sql.udfs:discard", name=table.name)


class CollectConnector:
    """``'connector' = 'collect'``: the rows become the job result's table named after the
    sink table (``JobResult.table(name)``); an updating result is its final table."""

    accepts_updates = True

    def sink(self, stream, table, ctx):
        return stream.collect(name=table.name)


_KAFKA_STARTUP = {"earliest-offset": "earliest", "latest-offset": "latest", "group-offsets": "committed"}
_KAFKA_FORMATS = ("json", "raw", "avro")


def _discovery_ms(table, ctx):
    seconds = _duration_s(table, ctx, "scan.topic-partition-discovery.interval")
    return None if seconds is None else seconds * 1000.0


class KafkaConnector:
    """``'connector' = 'kafka'`` (Flink's option names): ``'topic'`` (several separated by
    ``;``), ``'properties.bootstrap.servers'``, ``'properties.group.id'``, ``'format'`` = json |
    raw | avro (``'avro.schema'``: the record schema as JSON), ``'scan.startup.mode'`` =
    earliest-offset | latest-offset | group-offsets | timestamp (with
    ``'scan.startup.timestamp-millis'``), ``'scan.bounded.mode'`` = latest-offset (stop at the
    end offsets seen at the start), ``'scan.watermark.idle-timeout'`` (ms),
    ``'scan.topic-partition-discovery.interval'`` (a duration: new partitions are read too); as a sink
    ``'sink.delivery-guarantee'`` = none | at-least-once | exactly-once,
    ``'sink.transactional-id-prefix'``, ``'key.fields'`` (one column: the record key).
    The DDL's WATERMARK is kept per partition by the source. Append-only, as Flink's
    ``kafka`` connector."""

    accepts_updates = False

    def _common(self, table, ctx):
        servers = table.options.get("properties.bootstrap.servers")
        if not servers:
            raise ctx.error(f"table {table.name!r}: the kafka connector needs 'properties.bootstrap.servers'", table)
        fmt = (table.options.get("format") or "json").lower()
        if fmt not in _KAFKA_FORMATS:
            raise ctx.error(f"table {table.name!r}: format {fmt!r} is not supported by the kafka connector", table,
                            hint=f"use one of {list(_KAFKA_FORMATS)}")
        topic = table.options.get("topic")
        if not topic:
            raise ctx.error(f"table {table.name!r}: the kafka connector needs 'topic'", table)
        config = {k[len("properties."):]: v for k, v in table.options.items()
                  if k.startswith("properties.") and k not in ("properties.bootstrap.servers", "properties.group.id")}
        return servers, fmt, topic, config

    def source(self, table, ctx):
        servers, fmt, topic, config = self._common(table, ctx)
        mode = table.options.get("scan.startup.mode", "group-offsets" if table.options.get("properties.group.id")
                                 else "earliest-offset")
        if mode == "timestamp":
            millis = _option(table, ctx, "scan.startup.timestamp-millis", int)
            if millis is None:
                raise ctx.error(f"table {table.name!r}: 'scan.startup.mode' = 'timestamp' needs "
                                "'scan.startup.timestamp-millis'", table)
            start = {"timestamp": millis}
        elif mode in _KAFKA_STARTUP:
            start = _KAFKA_STARTUP[mode]
        else:
            raise ctx.error(f"table {table.name!r}: 'scan.startup.mode' = {mode!r} is not supported", table,
                            hint=f"use one of {sorted(_KAFKA_STARTUP) + ['timestamp']}")
        bounded_mode = table.options.get("scan.bounded.mode", "unbounded")
        if bounded_mode not in ("unbounded", "latest-offset"):
            raise ctx.error(f"table {table.name!r}: 'scan.bounded.mode' = {bounded_mode!r} is not supported", table,
                            hint="use 'unbounded' or 'latest-offset'")
        event_time, delay = (table.watermark if table.watermark else (None, 0))
        try:
            stream = Stream.from_kafka(
                servers, topic.split(";"), format=fmt, schema=table.schema if fmt == "json" else None,
                avro_schema=table.options.get("avro.schema") if fmt == "avro" else None, start=start,
                bounded=bounded_mode == "latest-offset", group_id=table.options.get("properties.group.id"),
                metadata=[], event_time=event_time, max_out_of_orderness=delay,
                idle_timeout_ms=_option(table, ctx, "scan.watermark.idle-timeout", int, None),
                partition_discovery_interval_ms=_discovery_ms(table, ctx),
                batch_size=_batch_size(table, ctx), config=config, name=table.name)
        except (ValueError, TypeError) as exc:
            raise ctx.error(f"table {table.name!r}: {exc}", table) from None
        _check_columns(table, stream.schema, ctx)
        return Source(stream, bounded=bounded_mode == "latest-offset")

    def sink(self, stream, table, ctx):
        servers, fmt, topic, config = self._common(table, ctx)
        keys = [k for k in (table.options.get("key.fields") or "").split(";") if k]
        if len(keys) > 1:
            raise ctx.error(f"table {table.name!r}: 'key.fields' names {keys}; the kafka sink takes one key column",
                            table)
        try:
            return stream.to_kafka(
                servers, topic, key=keys[0] if keys else None, format=fmt,
                avro_schema=table.options.get("avro.schema") if fmt == "avro" else None,
                delivery=table.options.get("sink.delivery-guarantee", "at-least-once"),
                transactional_id_prefix=table.options.get("sink.transactional-id-prefix"), config=config,
                name=table.name)
        except (ValueError, TypeError) as exc:
            raise ctx.error(f"table {table.name!r}: {exc}", table) from None


class JdbcConnector:
    """``'connector' = 'jdbc'`` for PostgreSQL (Flink's option names): ``'url'`` =
    ``jdbc:postgresql://host:port/database``, ``'table-name'``, ``'username'``, ``'password'``.
    As a sink it appends with COPY, or upserts by the table's ``PRIMARY KEY (...) NOT
    ENFORCED`` when the DDL declares one (then it also takes an updating result, as Flink's
    JDBC sink does: +I/+U rows upsert, -U/-D rows delete their key), exactly once with
    checkpoints; without checkpoints it writes every ``'sink.buffer-flush.max-rows'`` rows.
    As a source it reads the table once (bounded), and serves lookup joins."""

    @staticmethod
    def accepts_updates(table):
        return bool(table.primary_key)

    def _dsn(self, table, ctx):
        url = table.options.get("url") or ""
        if not url.startswith("jdbc:postgresql://"):
            raise ctx.error(f"table {table.name!r}: 'url' = {url!r} is not a PostgreSQL JDBC URL", table,
                            hint="'url' = 'jdbc:postgresql://host:port/database' (only PostgreSQL is supported)")
        from psycopg.conninfo import make_conninfo

        extra = {k: table.options[o] for k, o in (("user", "username"), ("password", "password"))
                 if table.options.get(o)}
        return make_conninfo(url[len("jdbc:"):], **extra)

    def _table_name(self, table, ctx):
        name = table.options.get("table-name")
        if not name:
            raise ctx.error(f"table {table.name!r}: the jdbc connector needs 'table-name'", table)
        return name

    def sink(self, stream, table, ctx):
        dsn, name = self._dsn(table, ctx), self._table_name(table, ctx)
        mode = "upsert" if table.primary_key else "append"
        flush = _option(table, ctx, "sink.buffer-flush.max-rows", int, None)
        try:
            return stream.to_postgres(dsn, name, mode=mode, key=table.primary_key or None, name=table.name,
                                      **({"batch_rows": flush} if flush else {}))
        except (ValueError, TypeError) as exc:
            raise ctx.error(f"table {table.name!r}: {exc}", table) from None

    def _schema(self, dsn, name, table, ctx):
        """The table's Arrow schema, as the PostgreSQL source reads it (checked against the DDL)."""
        from sabot.connectors.postgres import ConnectorError, arrow_type_of, connect, table_columns

        try:
            with connect(dsn, f"table {table.name!r}") as conn:
                columns = table_columns(conn, name)
            if columns is None:
                raise ConnectorError(f"PostgreSQL has no table {name!r}")
            schema = pa.schema([(c, arrow_type_of(t, c)) for c, t in columns.items()])
        except ConnectorError as exc:
            raise ctx.error(f"table {table.name!r}: {exc}", table) from None
        _check_columns(table, schema, ctx)
        return pa.schema([schema.field(n) for n, _ in table.columns])

    def source(self, table, ctx):
        dsn, name = self._dsn(table, ctx), self._table_name(table, ctx)
        schema = self._schema(dsn, name, table, ctx)
        stream = Stream.from_postgres(dsn, table=name, columns=schema.names, batch_size=_batch_size(table, ctx),
                                      name=table.name)
        stream.schema = schema
        return Source(_watermarked(stream, table, ctx, schema), bounded=True)

    def read_table(self, table, ctx):
        """The whole table, read when the job is planned (a lookup join's static side)."""
        from psycopg import sql

        from sabot.connectors.postgres import _identifier, connect

        dsn, name = self._dsn(table, ctx), self._table_name(table, ctx)
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(n) for n, _ in table.columns), _identifier(name))
        with connect(dsn, f"table {table.name!r}") as conn:
            rows = conn.execute(query).fetchall()
        return pa.table([pa.array([r[i] for r in rows], type=t) for i, (_, t) in enumerate(table.columns)],
                        names=[n for n, _ in table.columns])


for _name, _connector in (("nexmark", NexmarkConnector()), ("datagen", DatagenConnector()),
                          ("filesystem", FilesystemConnector()), ("print", PrintConnector()),
                          ("blackhole", BlackholeConnector()), ("collect", CollectConnector()),
                          ("kafka", KafkaConnector()), ("jdbc", JdbcConnector())):
    register_connector(_name, _connector)


def connector_of(table, ctx, role):
    """The table's connector, checked to have ``role`` (``"source"``, ``"sink"``, ``"read_table"``)."""
    name = table.connector
    connector = CONNECTORS.get(name)
    if connector is None:
        raise ctx.error(f"table {table.name!r}: unknown connector {name!r}", table,
                        hint=f"registered connectors: {sorted(CONNECTORS)} (register_connector adds one)")
    if not hasattr(connector, role):
        what = {"source": "read from", "sink": "written to", "read_table": "used in a lookup join"}[role]
        can = [r for r in ("source", "sink") if hasattr(connector, r)]
        raise ctx.error(f"table {table.name!r}: connector {name!r} cannot be {what}", table,
                        hint=f"connector {name!r} is a {' and '.join(can)}")
    return connector

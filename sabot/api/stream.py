"""The Stream API: a fluent way to build a JobGraph, run it here or ship it.

Example:
    >>> import pyarrow as pa
    >>> from sabot import Stream
    >>> t = pa.table({"key": [1, 2, 1], "value": [0.2, 0.9, 0.7]})
    >>> result = (Stream.from_table(t)
    ...     .filter(pa.compute.field("value") > 0.5)
    ...     .key_by("key")
    ...     .aggregate({"value": ["count", "sum"]})
    ...     .collect()
    ...     .run())
    >>> result.table().sort_by("key").to_pydict()
    {'key': [1, 2], 'value_count': [1, 1], 'value_sum': [0.7, 0.9]}

Every transformation returns a new Stream (``parallelism()``, ``name()`` and
``with_watermarks()`` configure the operator the stream comes from and return the
same stream); streams derived from one source share one plan. Nothing runs until
``run()`` (in this process) or until the JobGraph from ``to_job_graph()`` is
submitted to a cluster. Functions are passed as callables or ``"package.module:function"``
strings; lambdas and closures work for ``run()`` but cannot be shipped to
worker processes (``to_job_graph(shippable=True)`` says which operator).
"""

import itertools
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from sabot.errors import GraphValidationError, UnsupportedStateType
from sabot.execution.chaining import chain_operators
from sabot.execution.job_graph import JobGraph, OperatorType, StreamOperatorNode
from sabot.runtime import functions, tables
from sabot.runtime.embedded import run_coroutine, run_job_graph_async
from sabot.api.joining import JoiningMixin
from sabot.api.pushdown import PlanView, narrow_selects, pushdown
from sabot.api.windowing import WindowingMixin
from sabot.execution.operator_spec import (
    aggregate_output_schema,
    check_aggregate_types,
    check_key_fields,
    compiled_engine_supports,
    encode_expression,
    encode_schema,
    expression_types,
    normalise_aggregates,
    parse_aggregates,
)

_names = itertools.count()


class _Plan:
    """The operators and edges shared by every Stream derived from one source."""

    def __init__(self):
        self.nodes = {}  # operator_id -> StreamOperatorNode
        self.edges = []  # (upstream_id, downstream_id)
        self.schemas = {}  # operator_id -> the schema it emits, where known (for the push-downs)
        self.tables = {}  # table id -> the in-memory table an operator refers to (sabot.runtime.tables)

    def add(self, node, upstream_ids=()):
        self.nodes[node.operator_id] = node
        for up in upstream_ids:
            self.edges.append((up, node.operator_id))
        return node

    def add_table(self, table):
        """Keep ``table`` with the plan; the reference its operator's parameters hold."""
        ref = tables.new_ref(table)
        self.tables[ref["table_id"]] = table
        return ref

    def merge(self, other):
        if other is self:
            return self
        self.nodes.update(other.nodes)
        self.edges.extend(e for e in other.edges if e not in self.edges)
        self.schemas.update(other.schemas)
        self.tables.update(other.tables)
        return self


def _columns_error(what, missing, schema):
    return GraphValidationError(
        f"{what}: column(s) {missing} not found; available columns: {schema.names}"
    )


class Stream(JoiningMixin, WindowingMixin):
    """A stream of Arrow record batches: one operator of a plan and what it emits."""

    def __init__(self, plan, node, schema=None, key_by=None, input_schema=None):
        self._plan = plan
        self._node = node
        self.schema = schema
        if schema is not None:
            plan.schemas[node.operator_id] = schema
        self._key_by = key_by
        self._input_schema = input_schema  # what the operator reads (its late records' schema)

    # -- sources ----------------------------------------------------------------------

    @classmethod
    def _source(cls, name, parameters, schema, parallelism=None):
        plan = _Plan()
        node = StreamOperatorNode(
            operator_type=OperatorType.SOURCE,
            name=name or f"source_{next(_names)}",
            parallelism=parallelism,
            parameters=parameters,
        )
        return cls(plan, plan.add(node), schema)

    @classmethod
    def from_table(cls, table, *, batch_size=65536, name=None, parallelism=None):
        """A bounded source over an in-memory table, sliced into batches of ``batch_size`` rows.

        The job refers to the table; it does not copy it. An embedded run
        (:meth:`run`) reads it where it is; submitting to a cluster uploads it once,
        and each worker maps one copy that its subtasks share (see
        :mod:`sabot.runtime.tables`).
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(f"from_table expects a pyarrow.Table or RecordBatch, got {type(table).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"from_table: batch_size must be a positive integer, got {batch_size!r}")
        stream = cls._source(name, {"kind": "table", "batch_size": batch_size}, table.schema, parallelism)
        stream._node.parameters["data"] = stream._plan.add_table(table)
        return stream

    @classmethod
    def from_batches(cls, batches, *, name=None, parallelism=None):
        """A bounded source over a list of record batches, emitted as they are (by
        reference, as :meth:`from_table`). Batch ``b`` belongs to split ``b % S`` (``S`` = 32,
        or the parallelism if higher; splits go round robin to the subtasks), so subtask ``i``
        of ``P`` emits batches ``i, i + P, …`` when ``P`` divides ``S``; each subtask emits
        its batches in order (see the README's Source API)."""
        batches = list(batches)
        if not batches:
            raise ValueError("from_batches needs at least one batch (the schema comes from it)")
        table = pa.Table.from_batches(batches)
        stream = cls._source(name, {"kind": "table", "batch_size": None}, table.schema, parallelism)
        stream._node.parameters["data"] = stream._plan.add_table(table)
        return stream

    @classmethod
    def from_generator(cls, function, *, total_rows=None, batch_size=65536, parameters=None,
                       name=None, parallelism=None, time_column=None, max_out_of_orderness=0):
        """A deterministic, replayable generator: ``function(offset, num_rows, **parameters)``.

        ``total_rows=None`` makes the source unbounded.
        """
        ref = functions.reference_of(function)
        params = {
            "kind": "generator",
            "function": ref,
            "total_rows": total_rows,
            "batch_size": batch_size,
            "parameters": dict(parameters or {}),
        }
        schema = None
        try:
            schema = functions.resolve(ref)(0, 0, **params["parameters"]).schema
        except Exception:  # the schema is only a build-time convenience
            schema = None
        stream = cls._source(name, params, schema, parallelism)
        return stream.with_watermarks(time_column, max_out_of_orderness) if time_column else stream

    @classmethod
    def from_dataset(cls, path, *, format="parquet", columns=None, batch_size=None, monitor_interval=None,
                     schema=None, name=None, parallelism=None):
        """Files through ``pyarrow.dataset`` (Parquet, Arrow IPC, CSV).

        The files are split over the subtasks; one file of several record batches (IPC) or
        row groups (Parquet) is itself cut into pieces, so a single large file keeps every
        subtask busy (CSV files are read whole).

        When the job is built, the source reads only the columns its consumers use, and the
        expression filters right behind it are pushed into the scan (row groups whose
        statistics exclude them are skipped).

        ``monitor_interval`` (seconds): list the directory again at that interval and read
        the new files too (Flink's continuous file source); the source then never ends (cancel
        the job). Give the file a name starting with ``.`` or ``_`` while writing it and rename
        it when complete: such names are not listed. ``schema`` is needed when the directory
        may still be empty; otherwise it is the files'. See :mod:`sabot.connectors.source`.
        """
        if monitor_interval is not None and (isinstance(monitor_interval, bool)
                                             or not isinstance(monitor_interval, (int, float)) or monitor_interval <= 0):
            raise ValueError(f"from_dataset: monitor_interval must be a positive number of seconds or None, "
                             f"got {monitor_interval!r}")
        if schema is not None and not isinstance(schema, pa.Schema):
            raise TypeError(f"from_dataset: schema must be a pyarrow.Schema, got {type(schema).__name__}")
        given = schema
        if monitor_interval is not None and given is not None and not os.path.exists(str(path)):
            schema = given  # a monitored directory that does not exist yet: files may come later
        else:
            schema = ds.dataset(path, format=format, schema=given).schema
        if not schema.names and given is None:
            raise ValueError(f"from_dataset({path!r}): no files there to take the schema from; pass schema=")
        if columns:
            missing = [c for c in columns if schema.get_field_index(c) < 0]
            if missing:
                raise _columns_error(f"from_dataset({path!r})", missing, schema)
            schema = pa.schema([schema.field(c) for c in columns])
        params = {"kind": "dataset", "path": str(path), "format": format, "columns": columns, "batch_size": batch_size,
                  "monitor_interval_s": monitor_interval, "schema": encode_schema(given) if given is not None else None}
        return cls._source(name, params, schema, parallelism)

    @classmethod
    def from_parquet(cls, path, **kwargs):
        return cls.from_dataset(path, format="parquet", **kwargs)

    @classmethod
    def from_kafka(cls, bootstrap_servers, topics, *, format="raw", schema=None, avro_schema=None, start="earliest",
                   bounded=False,
                   group_id=None, metadata=None, event_time=None, max_out_of_orderness=0, idle_timeout_ms=None,
                   partition_discovery_interval_ms=None, batch_size=10_000, config=None, name=None, parallelism=None):
        """Records of Kafka ``topics`` (a name or a list); their partitions are split between subtasks.

        ``format="raw"`` gives binary ``key`` and ``value`` columns; ``"json"`` parses the values
        into ``schema`` (a pyarrow schema); ``"avro"`` decodes schemaless Avro binary written
        with ``avro_schema`` (a record schema, dict or JSON; the columns follow its fields). ``metadata`` adds ``kafka_topic``, ``kafka_partition``,
        ``kafka_offset``, ``kafka_timestamp``, ``kafka_key`` (all of them for raw, none for
        JSON by default). ``start``: ``"earliest"``, ``"latest"``, ``"committed"`` (the
        offsets of ``group_id``) or ``{"timestamp": ms}``. ``bounded=True`` stops at the end
        offsets seen when the job started. ``event_time``: ``"kafka"`` (the record timestamp)
        or a column of the value, for watermarks ``max_out_of_orderness`` (ms for
        ``"kafka"``) behind the largest seen. The watermark is kept per partition: a subtask's
        is the smallest of its partitions', and a partition without records for
        ``idle_timeout_ms`` is left out until it delivers again (Flink's idleness), so one idle
        partition does not hold event time back; a subtask whose partitions are all idle is
        announced idle downstream (``WatermarkStatus``), so it does not hold the operators after
        it back either (README: Watermarks and idleness). Offsets live in Sabot's checkpoints and are
        committed to the group when a checkpoint completes. ``partition_discovery_interval_ms``
        (unbounded sources): look for new partitions at that interval and read them from
        the start. See :mod:`sabot.connectors.kafka`.
        """
        from sabot.connectors.kafka import METADATA, SOURCE_FORMATS

        topics = [topics] if isinstance(topics, str) else list(topics)
        if format not in SOURCE_FORMATS:
            raise ValueError(f"from_kafka: format must be one of {SOURCE_FORMATS}, got {format!r}")
        if format == "json" and not isinstance(schema, pa.Schema):
            raise ValueError("from_kafka: format='json' needs schema= (a pyarrow.Schema of the values)")
        if format == "avro":
            from sabot.connectors.kafka import arrow_schema_of_avro, avro_schema_dict

            try:
                schema = arrow_schema_of_avro(avro_schema, "from_kafka")
                avro_schema = avro_schema_dict(avro_schema, "from_kafka")
            except Exception as exc:
                raise GraphValidationError(str(exc)) from None
        if metadata is None:
            metadata = list(METADATA) if format == "raw" else []
        metadata = list(metadata)
        if event_time == "kafka" and "timestamp" not in metadata:
            metadata.append("timestamp")
        out = pa.schema([("key", pa.binary()), ("value", pa.binary())]) if format == "raw" else schema
        meta_types = {"topic": pa.string(), "partition": pa.int32(), "offset": pa.int64(),
                      "timestamp": pa.timestamp("ms"), "key": pa.binary()}
        for m in metadata:
            if m not in meta_types:
                raise ValueError(f"from_kafka: unknown metadata {m!r}; expected some of {METADATA}")
            out = out.append(pa.field(f"kafka_{m}", meta_types[m]))
        params = {"kind": "kafka", "bootstrap_servers": bootstrap_servers, "topics": topics, "format": format,
                  "schema": encode_schema(schema) if schema is not None and format == "json" else None,
                  "avro_schema": avro_schema if format == "avro" else None, "start": start,
                  "bounded": bool(bounded), "group_id": group_id, "metadata": metadata, "batch_size": batch_size,
                  "idle_timeout_ms": idle_timeout_ms, "partition_discovery_interval_ms": partition_discovery_interval_ms,
                  "config": dict(config or {})}
        stream = cls._source(name, params, out, parallelism)
        if event_time is not None:
            stream.with_watermarks("kafka_timestamp" if event_time == "kafka" else event_time, max_out_of_orderness)
        return stream

    @classmethod
    def from_postgres(cls, dsn, *, table=None, query=None, columns=None, order_by=None, partition_column=None,
                      batch_size=65536, name=None, parallelism=None):
        """A bounded read of a PostgreSQL ``table`` (or ``query``) through psycopg 3.

        ``partition_column`` (an integer column) cuts the rows into splits by its value
        modulo the number of splits (32, or the parallelism if higher), shared out between
        the subtasks; without it one subtask reads. A restored job resumes
        after the rows already emitted, in ``order_by`` order (default: the table's primary
        key). See :mod:`sabot.connectors.postgres`.
        """
        if (table is None) == (query is None):
            raise ValueError("from_postgres needs exactly one of table= and query=")
        params = {"kind": "postgres", "dsn": dsn, "table": table, "query": query, "columns": columns,
                  "order_by": list(order_by) if order_by else None, "partition_column": partition_column,
                  "batch_size": batch_size}
        return cls._source(name, params, None, parallelism)

    def with_watermarks(self, time_column, max_out_of_orderness=0, idle_timeout_ms=None):
        """Event time for this source: watermark = max(time_column) - max_out_of_orderness.

        A source whose splits are independent streams (files, Kafka partitions) keeps it per
        split: a subtask's watermark is the smallest of its splits being read, and a split
        without records for ``idle_timeout_ms`` is left out until it delivers again."""
        if self._node.operator_type != OperatorType.SOURCE:
            raise GraphValidationError("with_watermarks applies to a source")
        self._check_columns([time_column], "with_watermarks")
        if self.schema is not None:
            t = self.schema.field(time_column).type
            if not (pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
                    or pa.types.is_duration(t)):
                raise GraphValidationError(
                    f"with_watermarks: time column {time_column!r} is {t}; expected an integer, timestamp, "
                    "date or duration column (max_out_of_orderness is in its stored unit)"
                )
        self._node.parameters["time_column"] = time_column
        self._node.parameters["max_out_of_orderness"] = int(max_out_of_orderness)
        if idle_timeout_ms is not None:
            if isinstance(idle_timeout_ms, bool) or not isinstance(idle_timeout_ms, (int, float)) or idle_timeout_ms <= 0:
                raise ValueError(f"with_watermarks: idle_timeout_ms must be a positive number, got {idle_timeout_ms!r}")
            self._node.parameters["idle_timeout_ms"] = idle_timeout_ms
        return self

    # -- transformations -----------------------------------------------------------

    def _then(self, operator_type, name, schema, *, function=None, parameters=None, key_by=None,
              stateful=False, upstreams=None):
        node = StreamOperatorNode(
            operator_type=operator_type,
            name=name or f"{operator_type.value}_{next(_names)}",
            function=function,
            parameters=parameters or {},
            key_by=list(key_by) if key_by else None,
            stateful=stateful,
        )
        ups = upstreams or [self]
        plan = self._plan
        for other in ups:
            plan.merge(other._plan)
        plan.add(node, [s._node.operator_id for s in ups])
        return Stream(plan, node, schema, input_schema=ups[0].schema)

    def _check_columns(self, names, what):
        if self.schema is None:
            return
        missing = [n for n in names if self.schema.get_field_index(n) < 0]
        if missing:
            raise _columns_error(f"{what} after {self._node.name!r}", missing, self.schema)

    def parallelism(self, n):
        """Set the parallelism of the operator this stream comes from."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"parallelism must be a positive int, got {n!r}")
        self._node.parallelism = n
        return self

    def name(self, name):
        """Rename the operator this stream comes from."""
        self._node.name = name
        return self

    def disable_chaining(self):
        """Keep the operator this stream comes from in a task of its own: it is not fused
        with its neighbours (see ``to_job_graph(chaining=)``), so it has its own metrics
        and can be rescaled alone."""
        self._node.parameters["chaining"] = False
        return self

    def filter(self, predicate, *, name=None):
        """Keep rows where ``predicate`` holds: a pyarrow Expression, or ``fn(batch) -> bool mask``."""
        key_by = self._key_by
        if isinstance(predicate, pc.Expression):
            return self._then(OperatorType.FILTER, name, self.schema, key_by=key_by,
                              parameters={"expression": encode_expression(predicate)})
        return self._then(OperatorType.FILTER, name, self.schema, key_by=key_by,
                          function=functions.reference_of(predicate))

    def map(self, function, *, schema=None, name=None):
        """``function(batch) -> batch``; declare ``schema`` to let later steps check columns."""
        params = {"schema": encode_schema(schema)} if schema is not None else {}
        return self._then(OperatorType.MAP, name, schema, key_by=self._key_by,
                          function=functions.reference_of(function), parameters=params)

    def flat_map(self, function, *, schema=None, name=None):
        """``function(batch) -> iterable of batches`` (or None)."""
        params = {"schema": encode_schema(schema)} if schema is not None else {}
        return self._then(OperatorType.FLAT_MAP, name, schema, key_by=self._key_by,
                          function=functions.reference_of(function), parameters=params)

    def select(self, *columns, name=None, **expressions):
        """Project and compute columns.

        ``select("a", "b")`` picks columns, ``select({"a": "x"})`` renames, and keyword
        arguments compute columns from pyarrow expressions, evaluated over whole batches:
        ``select("auction", price=pc.field("price") * 0.908)``. Positional columns come
        first, then the keyword ones in order. A dict with expressions,
        ``select({"name": pc.field("name"), "total": ...})``, maps output names to
        expressions (or column names), for names a keyword cannot take.

        Example:
            >>> s.select("auction", "bidder", total=pc.multiply(pc.field("price"), 2))  # doctest: +SKIP
        """
        if len(columns) == 1 and isinstance(columns[0], (dict, list, tuple)):
            columns = columns[0]
        if isinstance(columns, dict) and any(isinstance(v, pc.Expression) for v in columns.values()):
            # {output: expression or column}: for output names that clash with keywords (name=)
            expressions = {**columns, **expressions}
            columns = ()
        renames = dict(columns) if isinstance(columns, dict) else {c: c for c in columns}
        self._check_columns(list(renames), "select")
        if not expressions:
            if not renames:
                raise ValueError("select needs at least one column")
            schema = None
            if self.schema is not None:
                schema = pa.schema([self.schema.field(c).with_name(n) for c, n in renames.items()])
            params = {"columns": renames if isinstance(columns, dict) else list(columns)}
            return self._then(OperatorType.SELECT, name, schema, key_by=self._key_by, parameters=params)
        outputs = [(new, pc.field(old)) for old, new in renames.items()]
        for out_name, expr in expressions.items():
            if isinstance(expr, str):
                expr = pc.field(expr)
            if not isinstance(expr, pc.Expression):
                raise TypeError(f"select: {out_name}= takes a pyarrow compute expression or a column name, "
                                f"got {type(expr).__name__}")
            outputs.append((out_name, expr))
        names = [n for n, _ in outputs]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise GraphValidationError(f"select: output column(s) {clash} given twice")
        schema = None
        if self.schema is not None:
            try:
                types = expression_types(self.schema, [e for _, e in outputs])
            except ValueError as exc:
                raise GraphValidationError(f"select after {self._node.name!r}: {exc}") from None
            schema = pa.schema([pa.field(n, t) for n, t in zip(names, types)])
        params = {"expressions": [[n, encode_expression(e)] for n, e in outputs]}
        return self._then(OperatorType.SELECT, name, schema, key_by=self._key_by, parameters=params)

    def union(self, *others, name=None):
        """Merge this stream with others of the same schema."""
        for other in others:
            if self.schema is not None and other.schema is not None and not self.schema.equals(other.schema):
                raise GraphValidationError(
                    f"union of streams with different schemas: {self.schema} vs {other.schema}"
                )
        return self._then(OperatorType.UNION, name, self.schema, upstreams=[self, *others])

    def key_by(self, *columns):
        """Partition by key columns: the next operator gets each key on one subtask."""
        if len(columns) == 1 and isinstance(columns[0], (list, tuple)):
            columns = tuple(columns[0])
        if not columns:
            raise ValueError("key_by needs at least one column")
        self._check_columns(list(columns), "key_by")
        return Stream(self._plan, self._node, self.schema, key_by=list(columns))

    def _keys(self, what):
        if not self._key_by:
            raise GraphValidationError(f"{what} needs a keyed stream: call .key_by(...) first")
        return self._key_by

    def aggregate(self, aggregates, *, emit="final", name=None):
        """Running keyed aggregation.

        ``aggregates``: ``{"col": ["count", "sum", "min", "max", "mean", ...]}``, or a list
        of ``(col, fn)`` pairs and :func:`sabot.agg` objects for options: ``where=`` (SQL's
        ``FILTER (WHERE ...)``), ``by=`` (``max_by`` / ``min_by``) and ``name=``; or
        ``{"out_name": agg(...)}``. Functions: count, sum, min, max, mean, count_distinct
        (exact), first_value, last_value (by arrival), max_by, min_by (the value of the
        row with the largest / smallest ``by``, ties by arrival). min / max take any
        orderable column (numbers, temporal, strings, binary); types an aggregate cannot
        take are refused here, when the job is built.

        Keyed by the ``key_by`` column(s), one or several (integer, temporal, boolean,
        string, binary or dictionary columns; not floating point). The output has the
        key columns, with their input names and types, then one column per aggregate
        (``"<col>_<fn>"``, ``"count"`` for ``"*"``, or its ``name``). ``emit="final"``
        emits one row per key when the input ends; ``"updates"`` emits the updated rows
        of the keys each batch touched.

        Plain count / sum / min / max / mean over numbers run on the compiled keyed state
        table; everything else on Arrow partials (the same results, slower).

        Example:
            >>> Stream.from_table(t).key_by("region", "day").aggregate({"amount": ["sum"]})  # doctest: +SKIP
            >>> s.key_by("day").aggregate([agg("count_distinct", "bidder", where=pc.field("price") < 100,
            ...                                name="small_bidders")])  # doctest: +SKIP
        """
        keys = self._keys("aggregate")
        specs = normalise_aggregates(aggregates)
        try:
            items = parse_aggregates(specs)
        except ValueError as exc:
            raise GraphValidationError(f"aggregate: {exc}") from None
        self._check_columns([c for i in items for c in i.input_columns()], "aggregate")
        if emit not in ("final", "updates"):
            raise ValueError(f"emit must be 'final' or 'updates', got {emit!r}")
        if self.schema is not None:
            try:
                check_key_fields([self.schema.field(k) for k in keys], f"aggregate after key_by{tuple(keys)}")
                check_aggregate_types(self.schema, specs, f"aggregate after key_by{tuple(keys)}")
            except UnsupportedStateType as exc:
                raise GraphValidationError(str(exc)) from None
        # output: the key columns (names and types as in the input), then the aggregates
        schema = aggregate_output_schema(self.schema, keys, specs)
        names = list(keys) + [i.name for i in items]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise GraphValidationError(
                f"aggregate after key_by{tuple(keys)}: output column(s) {clash} would appear twice "
                f"(key columns {list(keys)}, aggregates {[n for n in names[len(keys):]]}); rename "
                "a key column first"
            )
        params = {"aggregates": specs, "emit": emit}
        if not compiled_engine_supports(self.schema, specs):
            params["kind"] = "arrow"
        return self._then(OperatorType.AGGREGATE, name, schema, key_by=keys, stateful=True, parameters=params)

    def changelog(self, key=None, *, count_column=None, name=None):
        """An upsert stream (each row the current version of its key, e.g. ``aggregate(...,
        emit="updates")``) as a changelog: the rows get an int8 column ``"$op"`` (Flink's row
        kinds: 0 ``+I``, 1 ``-U``, 2 ``+U``, 3 ``-D``; see :mod:`sabot.runtime.changelog`).
        A key's first row is ``+I``; a changed row is ``-U`` (the row emitted before) then
        ``+U``; an unchanged one emits nothing; with ``count_column``, a count of 0 is
        ``-D`` (that column is dropped). ``key``: the columns identifying a row (default:
        the ``key_by`` columns, which must be a prefix of it). The last row of each key is
        keyed state (checkpointed, rescaled). ``collect()`` of a changelog gives the
        materialised table (``JobResult.table``) and the raw rows (``JobResult.changelog``).
        A consumer that applies kinds per key needs each key's rows in order: keep them on
        one path after this operator (forward, or hash by a key column), not a rebalance.

        Example:
            >>> s.key_by("k").aggregate({"*": "count"}, emit="updates").key_by("k").changelog()  # doctest: +SKIP
        """
        from sabot.runtime.changelog import OP, OP_TYPE

        route = list(self._key_by or [])
        key = list(key) if key else route
        if not key:
            raise GraphValidationError("changelog needs key= (the columns identifying a row) or a key_by first")
        if key[:len(route)] != route:
            raise GraphValidationError(f"changelog: key_by {route} must be a prefix of key {key}")
        self._check_columns(key + ([count_column] if count_column else []), "changelog")
        schema = None
        if self.schema is not None:
            if self.schema.get_field_index(OP) >= 0:
                raise GraphValidationError(f"changelog after {self._node.name!r}: the stream is a changelog already "
                                           f"(it has the {OP!r} column)")
            schema = pa.schema([f for f in self.schema if f.name != count_column] + [pa.field(OP, OP_TYPE)])
        params = {"kind": "changelog", "key": key, "count_column": count_column}
        return self._then(OperatorType.PROCESS, name, schema, key_by=route or None, stateful=True,
                          parameters=params)

    def _event_time_column(self):
        seen, stack = set(), [self._node.operator_id]
        incoming = {}
        for up, down in self._plan.edges:
            incoming.setdefault(down, []).append(up)
        while stack:
            op = stack.pop()
            if op in seen:
                continue
            seen.add(op)
            col = self._plan.nodes[op].parameters.get("time_column")
            if self._plan.nodes[op].operator_type == OperatorType.SOURCE and col:
                return col
            stack.extend(incoming.get(op, []))
        return None

    # -- sinks -------------------------------------------------------------------------

    def _sink(self, name, parameters, function=None):
        from sabot.runtime.changelog import OP, is_changelog

        kind = parameters.get("kind")
        if is_changelog(self.schema) and (kind in ("files", "partitioned_files", "kafka")
                                          or (kind == "postgres" and parameters.get("mode") != "upsert")):
            raise GraphValidationError(
                f"a {kind} sink after {self._node.name!r} is append-only, but the stream is a changelog (its "
                f"{OP!r} column holds +I/-U/+U/-D row kinds, an updating result): it cannot withdraw rows; "
                "collect(), print(), sink(fn) or to_postgres(..., mode='upsert') take a changelog, or drop the "
                f"{OP!r} column first to write every change as a row")
        keyed = self._key_by
        stream = self
        if keyed:  # keyed but nothing keyed follows: partition the sink's input by key
            stream = self._then(OperatorType.KEY_BY, None, self.schema, key_by=keyed)
        node = stream._then(OperatorType.SINK, name, stream.schema, function=function, parameters=parameters)
        return StreamSink(node._plan, node._node, node.schema)

    def collect(self, *, name=None):
        """Gather the stream into a table, returned by ``run()`` (empty, with the stream's
        schema, when no row arrives)."""
        params = {"kind": "collect"}
        if self.schema is not None:
            params["schema"] = encode_schema(self.schema)
        return self._sink(name, params)

    def to_parquet(self, path, *, name=None, format="parquet", mode="error", partition_by=None,
                   success_file="_SUCCESS"):
        """Write part files (``part-<lineage>-<subtask>-<n>``) into directory ``path``, exactly once
        with checkpoints (two-phase commit).

        ``mode``: a directory that holds another job's output is refused (``"error"``, the
        default), replaced (``"overwrite"``: the other job's part files are deleted at the
        start) or added to (``"append"``). A job restored from a checkpoint goes on with
        the files of the job it was restored from.

        ``partition_by``: columns whose values make Hive-style directories
        (``dt=2024-01-01/hm=10%3A05/part-...``; the files hold the other columns); each
        partition is committed exactly once, and gets ``success_file`` when the job finished.
        """
        if mode not in ("error", "overwrite", "append"):
            raise ValueError(f"to_parquet: mode must be 'error', 'overwrite' or 'append', got {mode!r}")
        if partition_by:
            partition_by = [partition_by] if isinstance(partition_by, str) else list(partition_by)
            self._check_columns(partition_by, "to_parquet(partition_by=)")
            return self._sink(name, {"kind": "partitioned_files", "path": str(path), "format": format,
                                     "mode": mode, "partition_by": partition_by, "success_file": success_file})
        return self._sink(name, {"kind": "files", "path": str(path), "format": format, "mode": mode})

    def to_files(self, path, *, partition_by=None, format="parquet", mode="error", name=None,
                 success_file="_SUCCESS"):
        """Alias of :meth:`to_parquet` (``format="ipc"`` writes Arrow IPC files)."""
        return self.to_parquet(path, name=name, format=format, mode=mode, partition_by=partition_by,
                               success_file=success_file)

    def to_postgres(self, dsn, table, *, mode="append", key=None, create_table=False, batch_rows=100_000,
                    progress_table="sabot_sink_progress", name=None):
        """Write the stream into PostgreSQL table ``table`` (``"name"`` or ``"schema.name"``).

        ``mode="append"`` loads rows with COPY; ``"upsert"`` inserts or updates by ``key``
        (default: the table's primary key), e.g. the running results of an aggregate. With
        checkpoints each checkpoint's rows are written in one transaction together with a
        row of the progress table, so after a recovery nothing is written twice (exactly
        once). ``create_table=True`` creates a missing table from the stream's schema. See
        :mod:`sabot.connectors.postgres` for the type mapping and guarantees.
        """
        from sabot.connectors.postgres import SINK_MODES, pg_type

        if mode not in SINK_MODES:
            raise ValueError(f"to_postgres: mode must be one of {SINK_MODES}, got {mode!r}")
        key = [key] if isinstance(key, str) else list(key or [])
        if key and mode != "upsert":
            raise ValueError("to_postgres: key= is for mode='upsert'")
        self._check_columns(key, "to_postgres(key=)")
        if self.schema is not None:
            for f in self.schema:
                try:
                    pg_type(f.type, f.name)
                except Exception as exc:
                    raise GraphValidationError(f"to_postgres({table!r}): {exc}") from None
        if not isinstance(batch_rows, int) or batch_rows <= 0:
            raise ValueError(f"to_postgres: batch_rows must be a positive int, got {batch_rows!r}")
        params = {"kind": "postgres", "dsn": dsn, "table": table, "mode": mode, "key": key or None,
                  "create_table": bool(create_table), "batch_rows": batch_rows, "progress_table": progress_table}
        if self.schema is not None:
            params["schema"] = encode_schema(self.schema)
        return self._sink(name, params)

    def to_kafka(self, bootstrap_servers, topic, *, key=None, format="json", avro_schema=None,
                 delivery="at-least-once", transactional_id_prefix=None, progress_topic="sabot_sink_progress",
                 config=None, name=None):
        """Write the stream's rows to Kafka ``topic``, one record per row.

        ``format="json"`` writes each row as a JSON object; ``"raw"`` writes column ``value``
        (binary or string); ``"avro"`` writes schemaless Avro binary with ``avro_schema``. ``key``: a column whose value is the record key (so records of a
        key go to one partition). ``delivery``: ``"none"``, ``"at-least-once"`` (every
        checkpoint waits until Kafka acknowledged the records before it), or
        ``"exactly-once"`` (one Kafka transaction per checkpoint and subtask, committed when
        the checkpoint completes; read the topic with ``isolation.level=read_committed``).
        See :mod:`sabot.connectors.kafka`.
        """
        from sabot.connectors.kafka import DELIVERY, SINK_FORMATS

        if delivery not in DELIVERY:
            raise ValueError(f"to_kafka: delivery must be one of {DELIVERY}, got {delivery!r}")
        if format not in SINK_FORMATS:
            raise ValueError(f"to_kafka: format must be one of {SINK_FORMATS}, got {format!r}")
        if key is not None:
            self._check_columns([key], "to_kafka(key=)")
        if format == "raw":
            self._check_columns(["value"], "to_kafka(format='raw')")
        if format == "avro":
            from sabot.connectors.kafka import arrow_schema_of_avro, avro_schema_dict

            try:
                self._check_columns(arrow_schema_of_avro(avro_schema, "to_kafka").names, "to_kafka(avro_schema=)")
                avro_schema = avro_schema_dict(avro_schema, "to_kafka")
            except GraphValidationError:
                raise
            except Exception as exc:
                raise GraphValidationError(str(exc)) from None
        params = {"kind": "kafka", "bootstrap_servers": bootstrap_servers, "topic": topic, "key": key,
                  "format": format, "avro_schema": avro_schema if format == "avro" else None,
                  "delivery": delivery, "transactional_id_prefix": transactional_id_prefix,
                  "progress_topic": progress_topic, "config": dict(config or {})}
        return self._sink(name, params)

    def sink(self, function, *, name=None):
        """Call ``function(batch)`` for every batch."""
        ref = functions.reference_of(function)
        return self._sink(name, {"kind": "callable", "function": ref})

    def print(self, *, limit=20, name=None):
        return self._sink(name, {"kind": "print", "limit": limit})

    # -- building and running ----------------------------------------------------------

    def to_job_graph(self, job_name="sabot-job", *, default_parallelism=1, shippable=False, chaining=True,
                     **config):
        """The JobGraph of everything connected to this stream.

        ``shippable=True`` refuses lambdas and closures, which only run in this process.
        ``chaining=True`` fuses each run of stateless operators (filter, map, flat_map,
        select) joined by forward edges into one operator, run in one task
        (:mod:`sabot.execution.chaining`).
        """
        job = JobGraph(job_name=job_name, default_parallelism=default_parallelism, **config)
        used = {ref["table_id"] for node in self._plan.nodes.values() for ref in tables.refs_in(node.parameters)}
        job.tables = {table_id: t for table_id, t in self._plan.tables.items() if table_id in used}
        # selects first (they make what the sources must read), then the file sources
        narrowed = narrow_selects(self._plan, self._plan.schemas)
        plan = PlanView({**self._plan.nodes, **narrowed}, self._plan.edges)
        pushed = pushdown(plan, self._plan.schemas)
        evaluated = {f for p in pushed.values() for f in p["filters"]}
        for node in plan.nodes.values():
            if node.operator_id in pushed:  # a copy: the push-down depends on the whole plan
                node = node.copy()
                node.parameters["filter"] = (encode_expression(pushed[node.operator_id]["filter"])
                                             if pushed[node.operator_id]["filter"] is not None else None)
                if pushed[node.operator_id]["columns"] is not None:
                    node.parameters["columns"] = pushed[node.operator_id]["columns"]
            elif node.operator_id in evaluated:  # its predicate runs in the source's scan
                node = node.copy()
                node.parameters["evaluated_by_source"] = True
            job.add_operator(node)
        for up, down in self._plan.edges:
            job.connect(up, down)
        if chaining:
            job = chain_operators(job)
        if shippable:
            functions.check_shippable(job)
        return job

    async def run_async(self, *, default_parallelism=1, timeout=None, job_name="sabot-job", chaining=True):
        job = self.to_job_graph(job_name, default_parallelism=default_parallelism, chaining=chaining)
        return await run_job_graph_async(job, timeout=timeout)

    def run(self, *, default_parallelism=1, timeout=None, job_name="sabot-job", chaining=True):
        """Run the job in this process (uvloop) and return its JobResult (``chaining``: see
        :meth:`to_job_graph`)."""
        return run_coroutine(self.run_async(default_parallelism=default_parallelism, timeout=timeout,
                                            job_name=job_name, chaining=chaining))


class StreamSink(Stream):
    """A stream that ends in a sink: run it, or turn it into a JobGraph."""

    def __repr__(self):
        return f"<StreamSink {self._node.name!r}>"

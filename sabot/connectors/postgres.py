"""PostgreSQL sink and source on psycopg 3.

**Sink** (``parameters["kind"] == "postgres"``): ``{"dsn": str, "table": str, "mode":
"append" | "upsert", "key": [columns] | None, "create_table": bool, "batch_rows": int,
"progress_table": str}``.

* ``append`` loads rows with ``COPY ... FROM STDIN (FORMAT csv)``, the CSV written by
  Arrow's C++ writer (no Python per row).
* ``upsert`` COPYs into a temporary table and merges with ``INSERT ... ON CONFLICT (key)
  DO UPDATE``; ``key`` defaults to the table's primary key. Of several rows of one key in
  one write, the last one wins (the order the sink received them).

Exactly once with checkpoints: the rows a subtask receives between two checkpoint barriers
are kept (in memory, and in the checkpoint's state as Arrow IPC) and written when the
checkpoint completes, in ONE transaction that also inserts ``(job, sink, subtask,
checkpoint_id)`` into a progress table (``sabot_sink_progress`` by default, created when
missing). If that row is already there, the transaction wrote those rows before (a
notification that arrived twice, or a restore whose checkpoint was committed just before a
crash) and nothing is written. A restore from checkpoint ``c`` commits what ``c``'s state
holds as pending (its notification may have been lost with the worker) and drops the rest:
the sources replay it. ``job`` is the lineage of the job's output
(:func:`sabot.runtime.operators.sinks.output_lineage`), kept across a restore into a new
job. Without checkpoints, rows are written every ``batch_rows`` rows and at the end of
input, each write in its own transaction (a restart from scratch writes them again).

A write that fails (server down, constraint violated) keeps its rows pending and fails the
task at its next batch or barrier: the job's restart strategy takes over, and no checkpoint
is acknowledged for rows that were not written. Connection problems, a wrong password, a
missing table or column and Arrow types PostgreSQL has no column type for are refused when
the task opens (or when the job is built), with what was expected.

**Source** (``kind == "postgres"``): ``{"dsn", "table" | "query", "columns", "order_by",
"batch_size", "partition_column", "num_splits"}``: a bounded read through server-side
cursors, a split source (:mod:`sabot.connectors.source`). With ``partition_column`` (an
integer column) split ``k`` of ``S`` reads the rows where ``mod(partition_column, S) = k``
and the splits go round robin to the subtasks; without it there is one split. The position
of a split is the number of its rows emitted; resuming from it needs a deterministic order
(``order_by``, or the table's primary key).
"""

import io
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sabot.connectors import ConnectorError
from sabot.connectors.source import DEFAULT_SPLITS, Split, SplitSource
from sabot.connectors.two_phase import TwoPhaseCommitSink
from sabot.runtime import changelog
from sabot.runtime.operators.base import register

log = logging.getLogger(__name__)

SINK_MODES = ("append", "upsert")
DEFAULT_PROGRESS_TABLE = "sabot_sink_progress"
DEFAULT_BATCH_ROWS = 100_000


# -- types ---------------------------------------------------------------------------------


def pg_type(arrow_type, column="?"):
    """The PostgreSQL column type for an Arrow type (ConnectorError for one it has none for)."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return pg_type(t.value_type, column)
    simple = [
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_int8, "smallint"), (pa.types.is_int16, "smallint"), (pa.types.is_uint8, "smallint"),
        (pa.types.is_int32, "integer"), (pa.types.is_uint16, "integer"),
        (pa.types.is_int64, "bigint"), (pa.types.is_uint32, "bigint"),
        (pa.types.is_uint64, "numeric(20,0)"),
        (pa.types.is_float16, "real"), (pa.types.is_float32, "real"), (pa.types.is_float64, "double precision"),
        (pa.types.is_string, "text"), (pa.types.is_large_string, "text"),
        (pa.types.is_binary, "bytea"), (pa.types.is_large_binary, "bytea"), (pa.types.is_fixed_size_binary, "bytea"),
        (pa.types.is_date, "date"), (pa.types.is_time, "time"),
    ]
    for test, name in simple:
        if test(t):
            return name
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz is not None else "timestamp"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision},{t.scale})"
    if pa.types.is_duration(t):
        return "interval"
    raise ConnectorError(
        f"column {column!r} has Arrow type {t}, which the PostgreSQL sink cannot write; supported: booleans, "
        "integers, floats, decimals, strings, binary, dates, times, timestamps, durations (and dictionaries "
        "of those); cast or serialise it first (e.g. lists and structs to JSON text)"
    )


# PostgreSQL type name (format_type / typname) -> Arrow type, for the source
_PG_TO_ARROW = {
    "boolean": pa.bool_(), "bool": pa.bool_(),
    "smallint": pa.int16(), "int2": pa.int16(),
    "integer": pa.int32(), "int4": pa.int32(),
    "bigint": pa.int64(), "int8": pa.int64(),
    "real": pa.float32(), "float4": pa.float32(),
    "double precision": pa.float64(), "float8": pa.float64(),
    "text": pa.string(), "varchar": pa.string(), "character varying": pa.string(), "bpchar": pa.string(),
    "character": pa.string(), "name": pa.string(), "json": pa.string(), "jsonb": pa.string(), "uuid": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"), "timestamp": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"), "timestamptz": pa.timestamp("us", tz="UTC"),
    "time without time zone": pa.time64("us"), "time": pa.time64("us"),
    "interval": pa.duration("us"),
}


def arrow_type_of(pg_name, column="?"):
    base = pg_name.split("(")[0].strip()
    if base == "numeric":
        if "(" in pg_name:
            precision, _, scale = pg_name[pg_name.index("(") + 1:-1].partition(",")
            return pa.decimal128(int(precision), int(scale or 0))
        return pa.string()  # unconstrained numeric: exact digits as text
    for name in (pg_name, base):
        if name in _PG_TO_ARROW:
            return _PG_TO_ARROW[name]
    raise ConnectorError(f"column {column!r} has PostgreSQL type {pg_name}, which the PostgreSQL source cannot "
                         f"read into Arrow; supported: {', '.join(sorted(set(_PG_TO_ARROW)))}, numeric; "
                         "cast it in a query (e.g. col::text)")


def _for_csv(table):
    """The table as Arrow's CSV writer should write it for ``COPY (FORMAT csv)``: dictionaries
    decoded, binary as bytea hex text, uint64 kept exact."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_dictionary(t):
            column = column.cast(t.value_type)
            t = t.value_type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            column = pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string())
        elif pa.types.is_duration(t):
            column = pa.array([None if v is None else f"{v.total_seconds()} seconds" for v in column.to_pylist()],
                              pa.string())
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def _safe_dsn(dsn):
    """The connection string without its password (for error messages)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable dsn>"
    parts.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def _split_name(table):
    """``"schema.table"`` -> ("schema", "table"); ``"table"`` -> (None, "table")."""
    schema, dot, name = table.rpartition(".")
    return (schema or None), name


def _identifier(table):
    from psycopg import sql

    schema, name = _split_name(table)
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def connect(dsn, what):
    """A psycopg connection (autocommit off), or ConnectorError saying why there is none."""
    import psycopg

    try:
        return psycopg.connect(dsn, autocommit=False)
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("check the user and password" if "password" in detail or "authentication" in detail
                else "check that the server runs and the host, port and database are right")
        raise ConnectorError(f"{what}: cannot connect to PostgreSQL ({_safe_dsn(dsn)}): {detail}; {hint}") from exc


def table_columns(conn, table):
    """``{column: formatted type}`` of ``table`` in table order; None if there is no such table."""
    schema, name = _split_name(table)
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (_quoted(schema, name),)).fetchall()
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_quoted(schema, name),)).fetchone()[0]
    conn.commit()
    return dict(rows) if exists else None


def _quoted(schema, name):
    q = '"' + name.replace('"', '""') + '"'
    return ('"' + schema.replace('"', '""') + '".' + q) if schema else q


def primary_key(conn, table):
    schema, name = _split_name(table)
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)", (_quoted(schema, name),)).fetchall()
    conn.commit()
    return [r[0] for r in rows]


def _has_unique_index_on(conn, table, key):
    schema, name = _split_name(table)
    rows = conn.execute(
        "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) "
        "AND i.indisunique GROUP BY i.indexrelid", (_quoted(schema, name),)).fetchall()
    conn.commit()
    return any(sorted(r[0]) == sorted(key) for r in rows)


def create_table_sql(table, schema, key=None):
    """``CREATE TABLE`` for an Arrow schema (``key``: the primary key columns)."""
    from psycopg import sql

    cols = [sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(pg_type(f.type, f.name))) for f in schema]
    if key:
        cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key))))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(_identifier(table), sql.SQL(", ").join(cols))


def copy_table(cursor, target, table):
    """``COPY target (columns) FROM STDIN`` of an Arrow table, written as CSV by Arrow."""
    from psycopg import sql

    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        target, sql.SQL(", ").join(map(sql.Identifier, table.column_names)))
    prepared = _for_csv(table)
    options = pacsv.WriteOptions(include_header=False)
    with cursor.copy(statement) as copy:
        for batch in prepared.to_batches(max_chunksize=65536):
            buffer = io.BytesIO()
            pacsv.write_csv(batch, buffer, write_options=options)
            copy.write(buffer.getbuffer())


def last_per_key(table, key):
    """The last row of every key (rows in arrival order): what an upsert of them leaves."""
    if table.num_rows <= 1:
        return table
    indexed = table.append_column("__sabot_row", pa.array(range(table.num_rows), pa.int64()))
    last = indexed.group_by(key, use_threads=False).aggregate([("__sabot_row", "max")])
    keep = pc.sort_indices(last.column("__sabot_row_max"))
    return table.take(pc.take(last.column("__sabot_row_max"), keep))


# -- sink ------------------------------------------------------------------------------------


@register("sink", kind="postgres")
class PostgresSink(TwoPhaseCommitSink):
    """Rows into a PostgreSQL table, exactly once with checkpoints (see the module docs).

    The checkpoint bookkeeping is :class:`~sabot.connectors.two_phase.TwoPhaseCommitSink`'s;
    this class opens the connection, checks the table, and commits one checkpoint's rows
    with its progress row in one PostgreSQL transaction (:meth:`commit`)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        p = self.params
        name = ctx.operator_name
        self.what = f"PostgreSQL sink {name!r}"
        self.dsn = p.get("dsn")
        self.table = p.get("table")
        if not isinstance(self.dsn, str) or not self.dsn:
            raise ConnectorError(f"{self.what} needs parameter 'dsn' (a libpq connection string or URI)")
        if not isinstance(self.table, str) or not self.table:
            raise ConnectorError(f"{self.what} needs parameter 'table' (name or schema.name)")
        self.target = repr(self.table)
        self.mode = p.get("mode") or "append"
        if self.mode not in SINK_MODES:
            raise ConnectorError(f"{self.what}: unknown mode {self.mode!r}; expected one of {SINK_MODES}")
        self.key = list(p.get("key") or [])
        self.create = bool(p.get("create_table"))
        self.flush_rows = p.get("batch_rows") or DEFAULT_BATCH_ROWS
        self.progress_table = p.get("progress_table") or DEFAULT_PROGRESS_TABLE
        self.conn = None
        self.columns = None  # the target table's {column: type}
        self.schema = None
        self.written_rows = 0

    # -- connection and checks ---------------------------------------------------------

    def open(self):
        self.conn = connect(self.dsn, self.what)
        self.columns = table_columns(self.conn, self.table)
        declared = self.params.get("schema")
        if self.columns is None and not self.create:
            raise ConnectorError(f"{self.what}: table {self.table!r} does not exist in {_safe_dsn(self.dsn)}; "
                                 "create it, or pass create_table=True to create it from the stream's schema")
        if self.columns is None and declared is not None:
            schema = _decode_schema(declared)
            self._create_table(pa.schema([f for f in schema if f.name != changelog.OP]))
        if self.ctx.checkpointing:
            self._ensure_progress_table()
        if self.columns is not None:
            self._check_key()

    def _create_table(self, schema):
        with self.conn.transaction():
            # subtasks of one sink may try at once: one creates, the others find it
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            self.conn.execute(create_table_sql(self.table, schema, self.key if self.mode == "upsert" else None))
        self.columns = table_columns(self.conn, self.table)

    def _check_key(self):
        if self.mode != "upsert":
            return
        if not self.key:
            self.key = primary_key(self.conn, self.table)
            if not self.key:
                raise ConnectorError(f"{self.what}: upsert into {self.table!r} needs a key: the table has no primary "
                                     "key; pass key=[columns] (with a unique index on them)")
        missing = [k for k in self.key if k not in self.columns]
        if missing:
            raise ConnectorError(f"{self.what}: key column(s) {missing} are not columns of {self.table!r} "
                                 f"({list(self.columns)})")
        if not _has_unique_index_on(self.conn, self.table, self.key):
            raise ConnectorError(f"{self.what}: upsert into {self.table!r} by {self.key} needs a primary key or "
                                 "unique index on exactly those columns (ON CONFLICT uses it); there is none")

    def _ensure_progress_table(self):
        from psycopg import sql

        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.progress_table,))
            self.conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (job text NOT NULL, sink text NOT NULL, subtask integer NOT NULL, "
                "checkpoint_id bigint NOT NULL, rows bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT "
                "now(), PRIMARY KEY (job, sink, subtask, checkpoint_id))").format(_identifier(self.progress_table)))

    def _check_schema(self, schema):
        if changelog.is_changelog(schema):  # a changelog: upserts and deletes by key; $op is no column
            if self.mode != "upsert":
                raise ConnectorError(f"{self.what}: the stream is a changelog (it has the {changelog.OP!r} "
                                     "column: an updating result) and mode 'append' cannot withdraw rows; "
                                     "use mode='upsert' with a key")
            schema = pa.schema([f for f in schema if f.name != changelog.OP])
        for f in schema:
            pg_type(f.type, f.name)  # an unsupported type fails here, naming the column
        if self.columns is None:  # create_table without a schema known when the job was built
            self._create_table(schema)
            self._check_key()
        missing = [n for n in schema.names if n not in self.columns]
        if missing:
            raise ConnectorError(f"{self.what}: the stream has column(s) {missing} that table {self.table!r} lacks; "
                                 f"its columns: {list(self.columns)} (select or rename before the sink)")
        if self.mode == "upsert":
            absent = [k for k in self.key if k not in schema.names]
            if absent:
                raise ConnectorError(f"{self.what}: key column(s) {absent} are not in the stream ({schema.names})")

    def check_batch(self, batch):
        if self.schema is None:
            self._check_schema(batch.schema)
            self.schema = batch.schema
        elif not batch.schema.equals(self.schema, check_metadata=False):
            raise ConnectorError(f"{self.what} received a batch with schema {batch.schema}; earlier batches "
                                 f"had {self.schema}")

    def check_restored(self, table):
        if self.schema is None:
            self._check_schema(table.schema)
            self.schema = table.schema

    # -- the target's part of the two-phase commit --------------------------------------

    def commit(self, table, progress):
        """Write ``table`` in one transaction; with ``progress``, insert that row into the
        progress table in the same transaction, and write nothing (False) if it is there already."""
        import psycopg
        from psycopg import sql

        rows = table.num_rows if table is not None else 0
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn, self.what)
            with self.conn.transaction(), self.conn.cursor() as cur:
                if progress is not None:
                    cur.execute(sql.SQL("INSERT INTO {} (job, sink, subtask, checkpoint_id, rows) VALUES "
                                        "(%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1").format(
                        _identifier(self.progress_table)), (*progress, rows))
                    if cur.fetchone() is None:
                        return False
                if rows:
                    if self.mode == "append":
                        copy_table(cur, _identifier(self.table), table)
                    elif changelog.is_changelog(table.schema):
                        self._apply_changelog(cur, last_per_key(table, self.key))
                    else:
                        self._upsert(cur, last_per_key(table, self.key))
            self.written_rows += rows
            return True
        except psycopg.Error as exc:
            if self.conn is not None and self.conn.broken:
                self.conn = None
            raise ConnectorError(f"{self.what}: writing {rows} rows to {self.table!r}"
                                 + (f" for checkpoint {progress.checkpoint_id}" if progress is not None else "")
                                 + f" failed: {type(exc).__name__}: {str(exc).strip()}") from exc

    def last_committed_checkpoint(self, job):
        """The highest checkpoint id in this subtask's progress rows of lineage ``job``, or -1."""
        import psycopg
        from psycopg import sql

        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.dsn, self.what)
            with self.conn.transaction():
                row = self.conn.execute(sql.SQL(
                    "SELECT max(checkpoint_id) FROM {} WHERE job = %s AND sink = %s AND subtask = %s").format(
                    _identifier(self.progress_table)),
                    (job, self.ctx.operator_name, self.ctx.subtask_index)).fetchone()
        except psycopg.Error as exc:
            if self.conn is not None and self.conn.broken:
                self.conn = None
            raise ConnectorError(f"{self.what}: reading the progress table {self.progress_table!r} failed: "
                                 f"{type(exc).__name__}: {str(exc).strip()}") from exc
        return -1 if row is None or row[0] is None else int(row[0])

    def _apply_changelog(self, cur, table):
        """A changelog's last row per key: +I/+U rows upsert, -U/-D rows delete their key (a -U
        followed by its +U was dropped by last_per_key)."""
        from psycopg import sql

        gone = pc.equal(pc.bit_wise_and(table.column(changelog.OP), 1), 1)
        upserts = table.filter(pc.invert(gone)).drop_columns([changelog.OP])
        deletes = table.filter(gone).select(self.key)
        if upserts.num_rows:
            self._upsert(cur, upserts)
        if deletes.num_rows:
            temp = sql.Identifier("_sabot_delete")
            keys = sql.SQL(", ").join(map(sql.Identifier, self.key))
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} "
                                "WITH NO DATA").format(temp, keys, _identifier(self.table)))
            copy_table(cur, temp, deletes)
            match = sql.SQL(" AND ").join(sql.SQL("t.{0} = d.{0}").format(sql.Identifier(k)) for k in self.key)
            cur.execute(sql.SQL("DELETE FROM {} AS t USING {} AS d WHERE {}").format(
                _identifier(self.table), temp, match))

    def _upsert(self, cur, table):
        from psycopg import sql

        temp = sql.Identifier("_sabot_upsert")
        cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
            temp, _identifier(self.table)))
        copy_table(cur, temp, table)
        cols = table.column_names
        others = [c for c in cols if c not in self.key]
        action = sql.SQL("DO NOTHING") if not others else sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                               for c in others))
        names = sql.SQL(", ").join(map(sql.Identifier, cols))
        cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}").format(
            _identifier(self.table), names, names, temp, sql.SQL(", ").join(map(sql.Identifier, self.key)), action))

    # -- checkpoints: pre-commit at the barrier, commit on completion -----------------

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                log.exception("%s: closing the connection failed", self.what)
            self.conn = None

    def summary(self):
        out = super().summary()
        out["written_rows"] = self.written_rows
        return out


def _decode_schema(data):
    from sabot.execution.operator_spec import decode_schema

    return decode_schema(data)


def _to_arrow(values, arrow_type):
    try:
        return pa.array(values, type=arrow_type)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        if not pa.types.is_string(arrow_type):
            raise
        import json

        # json / jsonb (dicts, lists), uuid, unconstrained numeric: their text
        return pa.array([None if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)
                         for v in values], pa.string())


# -- source ----------------------------------------------------------------------------------


@register("source", kind="postgres")
class PostgresSource(SplitSource):
    """A bounded read of a table or query (see the module docs), split by a column.

    With ``partition_column`` (an integer column) split ``k`` of ``S`` (``num_splits``, default
    ``max(DEFAULT_SPLITS, parallelism)``) reads the rows with ``mod(column, S) = k``; without
    it there is one split, the whole result. A split's position is the rows it emitted; it is
    resumed with ``OFFSET`` in ``order_by`` order (default: the table's primary key). The
    splits move with their positions in a restore at another parallelism or a live rescale.
    """

    def __init__(self, ctx):
        p = ctx.parameters
        self.what = f"PostgreSQL source {ctx.operator_name!r}"
        self.dsn = p.get("dsn")
        self.table = p.get("table")
        self.query = p.get("query")
        if not isinstance(self.dsn, str) or not self.dsn:
            raise ConnectorError(f"{self.what} needs parameter 'dsn' (a libpq connection string or URI)")
        if bool(self.table) == bool(self.query):
            raise ConnectorError(f"{self.what} needs exactly one of 'table' and 'query'")
        self.columns = p.get("columns") or None
        self.order_by = list(p.get("order_by") or [])
        self.batch_size = p.get("batch_size") or 65536
        self.partition_column = p.get("partition_column")
        splits = p.get("num_splits")
        if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
            raise ConnectorError(f"{self.what}: num_splits must be an integer >= 1, got {splits!r}")
        self.conn = None
        self.schema = None
        super().__init__(ctx)

    def initial_splits(self):
        if not self.partition_column:
            return [Split("all", ordinal=0, description={})]
        count = None
        for split in self.enumerator.splits:  # a restored source keeps its split count
            count = split.description.get("of", count)
        if count is None:
            count = self.params.get("num_splits") or max(DEFAULT_SPLITS, self.ctx.parallelism)
        return [Split(f"mod/{k}", ordinal=k, description={"k": k, "of": count}) for k in range(count)]

    def seek(self, position):
        if isinstance(position, int) and not isinstance(position, bool):
            # rows emitted of a single-split read (a table or query without partition_column)
            if position < 0 or self.partition_column:
                raise ConnectorError(f"{self.what}: an integer position (rows emitted) needs a read without "
                                     f"partition_column and must be >= 0, got {position!r}")
            position = {"splits": {"all": {"split": {"id": "all"}, "position": position, "finished": False}}}
        super().seek(position)

    def _statement(self, split, emitted):
        from psycopg import sql

        if self.table:
            cols = sql.SQL(", ").join(map(sql.Identifier, self.columns)) if self.columns else sql.SQL("*")
            base = sql.SQL("SELECT {} FROM {}").format(cols, _identifier(self.table))
        else:
            base = sql.SQL("SELECT * FROM ({}) AS q").format(sql.SQL(self.query))
        if self.partition_column:
            where = sql.SQL("mod({}, {}) = {}").format(sql.Identifier(self.partition_column),
                                                       sql.Literal(split.description["of"]),
                                                       sql.Literal(split.description["k"]))
            base = sql.SQL("SELECT * FROM ({}) AS p WHERE {}").format(base, where)
        if self.order_by:
            base = sql.SQL("{} ORDER BY {}").format(base, sql.SQL(", ").join(map(sql.Identifier, self.order_by)))
        if emitted:
            base = sql.SQL("{} OFFSET {}").format(base, sql.Literal(emitted))
        return base

    def open(self):
        self.conn = connect(self.dsn, self.what)
        if self.table:
            columns = table_columns(self.conn, self.table)
            if columns is None:
                raise ConnectorError(f"{self.what}: table {self.table!r} does not exist in {_safe_dsn(self.dsn)}")
            missing = [c for c in (self.columns or []) if c not in columns]
            if missing:
                raise ConnectorError(f"{self.what}: column(s) {missing} not in {self.table!r}; its columns: "
                                     f"{list(columns)}")
            if not self.order_by:
                self.order_by = primary_key(self.conn, self.table)
        self._prepare()

    def read_split(self, split, position):
        import psycopg

        emitted = position or 0
        if emitted and not self.order_by:
            what = f"table {self.table!r}" if self.table else "a query"
            raise ConnectorError(f"{self.what}: cannot resume {what} after {emitted} rows without a deterministic "
                                 "order; pass order_by=[columns]")
        try:
            with self.conn.cursor(name=f"sabot_{self.ctx.subtask_index}_{split.ordinal}") as cur:
                cur.itersize = self.batch_size
                cur.execute(self._statement(split, emitted))
                names, types = None, None
                while True:
                    rows = cur.fetchmany(self.batch_size)
                    if names is None:
                        names = [d.name for d in cur.description]
                        types = [arrow_type_of(self._type_name(d), d.name) for d in cur.description]
                        self.schema = pa.schema(list(zip(names, types)))
                    if not rows:
                        break
                    columns = list(zip(*rows))
                    batch = pa.RecordBatch.from_arrays(
                        [_to_arrow(col, t) for col, t in zip(columns, types)], schema=self.schema)
                    emitted += batch.num_rows
                    yield batch, emitted
            self.conn.commit()
        except psycopg.Error as exc:
            raise ConnectorError(f"{self.what}: reading failed: {type(exc).__name__}: {str(exc).strip()}") from exc

    def _type_name(self, column):
        oid = column.type_code
        name = None
        info = self.conn.adapters.types.get(oid)
        if info is None:
            from psycopg.types import TypeInfo

            info = TypeInfo.fetch(self.conn, oid)
        name = info.name if info is not None else str(oid)
        if name == "numeric" and column.precision is not None:
            return f"numeric({column.precision},{column.scale or 0})"
        return name

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

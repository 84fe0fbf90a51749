"""Kafka source and sink on confluent-kafka (librdkafka).

**Source** (``parameters["kind"] == "kafka"``): ``{"bootstrap_servers", "topics": [..],
"group_id", "start": "earliest" | "latest" | "committed" | {"timestamp": ms}, "bounded":
bool, "format": "raw" | "json", "schema": b64 | None, "metadata": [..], "batch_size",
"poll_timeout_ms", "partition_discovery_interval_ms", "time_column", "max_out_of_orderness",
"idle_timeout_ms", "config": {librdkafka settings}}``.

Partitions are the splits of the Source API (:mod:`sabot.connectors.source`): partition
``k`` of topic ``t`` goes to subtask ``(hash(t) + k) % P``, so every topic's partitions are
spread evenly; with ``partition_discovery_interval_ms`` (unbounded sources) the topics are
listed again at that interval and new partitions are read from their start. Each subtask
``assign()``s its partitions
(no consumer-group rebalancing) and reads them with ``isolation.level=read_committed``. The
offsets are Sabot's: the next offset of every partition is in each checkpoint, a restore
(at any parallelism: the offsets of all old subtasks are merged and each new subtask takes
its partitions) continues exactly there, and only when a checkpoint completes are its
offsets committed to ``group_id`` (for lag monitoring; never read back unless ``start`` is
``"committed"``). ``bounded=True`` reads up to the end offsets the first attempt saw (kept
with each split in the checkpoints), then ends; otherwise the source runs until the job is canceled.

Records become Arrow columns: ``"raw"`` gives ``key`` and ``value`` (binary); ``"json"``
parses the values with Arrow's JSON reader into ``schema`` (missing fields are null,
others ignored); ``"avro"`` decodes schemaless Avro binary written with ``avro_schema`` (a
flat record schema; fastavro), the sink writes it the same way. ``metadata`` adds ``kafka_topic``, ``kafka_partition``, ``kafka_offset``,
``kafka_timestamp`` (timestamp[ms], the record's Kafka timestamp) and ``kafka_key``;
event time is any of these columns or a field of the value (``Stream.with_watermarks``).
The watermark is kept per partition by the shared split reader: a subtask's is the
smallest over its partitions that are neither finished nor idle (no record for
``idle_timeout_ms``), see :meth:`SplitSource.current_watermark`. A subtask none of whose
partitions is live (or that has no partition) is :attr:`SplitSource.idle`: the task
announces it downstream (``WatermarkStatus``), so downstream operators leave it out of
their event time.

A live rescale moves the partitions with their offsets, as every split source: the old
tasks stop where they paused, and the new tasks take their partitions from the positions
the old ones reported (the coordinator's ``source_start`` message).

**Sink** (``kind == "kafka"``): ``{"bootstrap_servers", "topic", "key": column | None,
"format": "json" | "raw", "delivery": "none" | "at-least-once" | "exactly-once",
"transactional_id_prefix", "progress_topic", "config"}``.

* ``none``: records are produced as they come; nothing is waited for.
* ``at-least-once``: at every checkpoint barrier the producer is flushed and any delivery
  error fails the snapshot, so a completed checkpoint means every record before it is in
  Kafka (a restore may produce some again).
* ``exactly-once``: the records between two barriers wait in the sink (and in the
  checkpoint's state); when the checkpoint completes they are produced in ONE Kafka
  transaction per checkpoint and subtask, together with a record in ``progress_topic``
  (key ``job/sink/subtask``, value the checkpoint id). The transactional id
  ``{prefix}-{subtask}`` is the same for every attempt, so a restarted subtask's
  ``init_transactions()`` fences the old producer and aborts its open transaction; the
  restore then reads the progress topic (read_committed) and commits again only the
  checkpoints whose record is not there. Consumers see the records with
  ``isolation.level=read_committed``.

Unreachable brokers, a missing topic and bad settings fail the task with a clear error
(the job's restart strategy takes over); a failed delivery or commit fails the next
barrier and batch, so no checkpoint is acknowledged for records Kafka did not take.

librdkafka's mock cluster (``test.mock.num.brokers``), which Sabot's tests use, speaks the
Kafka protocol but does not implement transactional isolation (read_committed consumers
also see aborted and open transactions) nor producer fencing; see the README.
"""

import io
import logging
import threading
import time

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson

from sabot.connectors import ConnectorError
from sabot.connectors.source import Split, SplitSource
from sabot.connectors.two_phase import TwoPhaseCommitSink
from sabot.runtime.operators.base import register
from sabot.runtime.operators.sinks import output_lineage

log = logging.getLogger(__name__)

SOURCE_FORMATS = ("raw", "json", "avro")
SINK_FORMATS = ("json", "raw", "avro")
DELIVERY = ("none", "at-least-once", "exactly-once")
STARTS = ("earliest", "latest", "committed")
METADATA = ("topic", "partition", "offset", "timestamp", "key")
DEFAULT_PROGRESS_TOPIC = "sabot_sink_progress"
TIMEOUT_S = 30.0


def list_partitions(client, topics, what, timeout=None):
    """``[(topic, partition), ...]`` sorted; ConnectorError if a topic is missing or the
    brokers cannot be reached."""
    from confluent_kafka import KafkaException

    out = []
    for topic in topics:
        try:
            md = client.list_topics(topic, timeout=TIMEOUT_S if timeout is None else timeout)
        except KafkaException as exc:
            raise ConnectorError(f"{what}: cannot reach the Kafka brokers to read topic {topic!r}'s metadata: "
                                 f"{exc.args[0].str() if exc.args else exc}; check bootstrap_servers and that "
                                 "the brokers run") from exc
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            why = t.error.str() if t is not None and t.error is not None else "no partitions"
            raise ConnectorError(f"{what}: topic {topic!r} does not exist or cannot be read ({why}); "
                                 f"topics there: {sorted(md.topics)[:20] if md.topics else '(none listed)'}")
        out += [(topic, p) for p in sorted(t.partitions)]
    return sorted(out)


def _tp_key(topic, partition):
    return f"{topic}/{partition}"


def _parse_tp_key(key):
    topic, _, partition = key.rpartition("/")
    return topic, int(partition)


# -- Avro (schemaless binary, the writer's schema given) -------------------------------------

_AVRO_PRIMITIVES = {"boolean": pa.bool_(), "int": pa.int32(), "long": pa.int64(), "float": pa.float32(),
                    "double": pa.float64(), "string": pa.string(), "bytes": pa.binary()}
_AVRO_LOGICAL = {("long", "timestamp-millis"): pa.timestamp("ms", tz="UTC"),
                 ("long", "timestamp-micros"): pa.timestamp("us", tz="UTC"), ("int", "date"): pa.date32()}


def avro_schema_dict(avro_schema, what):
    """The Avro schema as a dict (given as a dict or its JSON text)."""
    if isinstance(avro_schema, str):
        try:
            avro_schema = orjson.loads(avro_schema)
        except orjson.JSONDecodeError as exc:
            raise ConnectorError(f"{what}: avro_schema is not JSON: {exc}") from exc
    if not isinstance(avro_schema, dict) or avro_schema.get("type") != "record":
        raise ConnectorError(f"{what}: avro_schema must be an Avro record schema (a dict with type 'record'), "
                             f"got {avro_schema!r}")
    return avro_schema


def arrow_schema_of_avro(avro_schema, what="Avro"):
    """The Arrow schema of an Avro record schema's fields (flat records of primitive types,
    ``["null", T]`` unions and the timestamp / date logical types)."""
    fields = []
    for f in avro_schema_dict(avro_schema, what).get("fields", []):
        t, nullable = f.get("type"), False
        if isinstance(t, list):
            others = [x for x in t if x != "null"]
            if len(others) != 1 or len(t) != 2:
                raise ConnectorError(f"{what}: field {f.get('name')!r} has union {t}; only [\"null\", T] is supported")
            t, nullable = others[0], True
        if isinstance(t, dict) and (t.get("type"), t.get("logicalType")) in _AVRO_LOGICAL:
            arrow = _AVRO_LOGICAL[(t["type"], t["logicalType"])]
        elif isinstance(t, dict) and t.get("type") in _AVRO_PRIMITIVES and "logicalType" not in t:
            arrow = _AVRO_PRIMITIVES[t["type"]]
        elif isinstance(t, str) and t in _AVRO_PRIMITIVES:
            arrow = _AVRO_PRIMITIVES[t]
        else:
            raise ConnectorError(f"{what}: field {f.get('name')!r} has Avro type {t!r}; supported: "
                                 f"{sorted(_AVRO_PRIMITIVES)}, [\"null\", T], timestamp-millis, timestamp-micros, date")
        fields.append(pa.field(f["name"], arrow, nullable=nullable))
    return pa.schema(fields)


def _parsed_avro(avro_schema, what):
    try:
        import fastavro
    except ImportError as exc:  # a dependency of Sabot; a broken install says so
        raise ConnectorError(f"{what}: format 'avro' needs fastavro ({exc})") from exc
    return fastavro.parse_schema(avro_schema_dict(avro_schema, what))


# -- source ----------------------------------------------------------------------------------


@register("source", kind="kafka")
class KafkaSource(SplitSource):
    """Topics' partitions as splits, offsets in Sabot's checkpoints (see the module docs).

    A split is ``topic/partition`` (``group=topic, ordinal=partition``: every topic's
    partitions spread evenly over the subtasks); its position is the next offset to read,
    None until the start offsets are looked up; a bounded split carries its end offset in
    its description (``stop``) and is finished there. One consumer reads all the
    partitions of the subtask (``read`` is this class's own).
    """

    def __init__(self, ctx):
        p = ctx.parameters
        self.what = f"Kafka source {ctx.operator_name!r}"
        self.bootstrap = p.get("bootstrap_servers")
        self.topics = list(p.get("topics") or [])
        if not isinstance(self.bootstrap, str) or not self.bootstrap:
            raise ConnectorError(f"{self.what} needs parameter 'bootstrap_servers' ('host:port,...')")
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            raise ConnectorError(f"{self.what} needs parameter 'topics' (a list of topic names)")
        self.group_id = p.get("group_id") or f"sabot-{output_lineage(ctx.job_id)}-{ctx.operator_name}"
        self.start = p.get("start") or "earliest"
        if not (self.start in STARTS or (isinstance(self.start, dict) and isinstance(self.start.get("timestamp"), int))):
            raise ConnectorError(f"{self.what}: start must be one of {STARTS} or {{'timestamp': ms}}, got {self.start!r}")
        self.bounded = bool(p.get("bounded"))
        self.format = p.get("format") or "raw"
        if self.format not in SOURCE_FORMATS:
            raise ConnectorError(f"{self.what}: unknown format {self.format!r}; expected one of {SOURCE_FORMATS}")
        schema = p.get("schema")
        from sabot.execution.operator_spec import decode_schema

        self.schema = decode_schema(schema) if schema else None
        self.avro = None
        if self.format == "avro":
            self.avro = _parsed_avro(p.get("avro_schema"), self.what)
            self.schema = arrow_schema_of_avro(p.get("avro_schema"), self.what)
        if self.format == "json" and self.schema is None:
            raise ConnectorError(f"{self.what}: format 'json' needs the value schema (a pyarrow schema)")
        self.metadata = list(p.get("metadata") if p.get("metadata") is not None
                             else (METADATA if self.format == "raw" else ()))
        bad = [m for m in self.metadata if m not in METADATA]
        if bad:
            raise ConnectorError(f"{self.what}: unknown metadata column(s) {bad}; expected some of {METADATA}")
        self.batch_size = int(p.get("batch_size") or 10_000)
        self.poll_timeout = (p.get("poll_timeout_ms") or 100) / 1000.0
        self.config = dict(p.get("config") or {})
        discovery = p.get("partition_discovery_interval_ms")
        if discovery is not None and (isinstance(discovery, bool) or not isinstance(discovery, (int, float))
                                      or discovery <= 0):
            raise ConnectorError(f"{self.what}: partition_discovery_interval_ms must be a positive number or None, "
                                 f"got {discovery!r}")
        if discovery is not None and self.bounded:
            raise ConnectorError(f"{self.what}: a bounded source reads the partitions there at the start; "
                                 "partition_discovery_interval_ms is for unbounded ones")
        self.discovery_interval_s = None if discovery is None else discovery / 1000.0
        self.consumer = None
        self._assigned = []  # (topic, partition) the consumer reads, in the order given to it
        self._at_checkpoint = {}  # checkpoint id -> offsets it covers (committed to the group on completion)
        self._lock = threading.Lock()
        super().__init__(ctx)

    # -- setup -------------------------------------------------------------------------

    def _consumer_config(self):
        # fetch.queue.backoff.ms: librdkafka (2.x) postpones a partition's next fetch by 1 s
        # when its prefetch queue is full; a source drains the queue in milliseconds, and the
        # default left it starving for most of that second (160k records: 1.2 s instead of 0.25 s)
        return {"bootstrap.servers": self.bootstrap, "group.id": self.group_id, "enable.auto.commit": False,
                "enable.auto.offset.store": False, "isolation.level": "read_committed",
                "allow.auto.create.topics": False, "enable.partition.eof": False,
                "auto.offset.reset": "earliest", "fetch.queue.backoff.ms": 20, **self.config}

    def open(self):
        from confluent_kafka import Consumer

        try:
            self.consumer = Consumer(self._consumer_config())
        except Exception as exc:
            raise ConnectorError(f"{self.what}: invalid consumer settings: {exc}") from exc
        self._prepare()

    @property
    def partitions(self):
        """This subtask's ``[(topic, partition)]``."""
        return [(s.description["topic"], s.description["partition"]) for s in self.splits]

    def _split(self, topic, partition):
        split = Split(_tp_key(topic, partition), ordinal=partition, group=topic,
                      description={"topic": topic, "partition": partition})
        if self.bounded and split.owner(self.ctx.parallelism) == self.ctx.subtask_index:
            # the end the first attempt saw; kept with the split in every checkpoint
            split.description["stop"] = self._watermarks((topic, partition))[1]
        return split

    def initial_splits(self):
        return [self._split(t, p) for t, p in list_partitions(self.consumer, self.topics, self.what)]

    def discover_splits(self):
        return [self._split(t, p) for t, p in list_partitions(self.consumer, self.topics, self.what)
                if _tp_key(t, p) not in self.enumerator]

    def initial_position(self, split):
        return None  # looked up for all new partitions at once (_fill_start_offsets)

    def on_splits_added(self, splits):
        from confluent_kafka import TopicPartition

        self._fill_start_offsets()
        new = [TopicPartition(s.description["topic"], s.description["partition"], self.split_position(s.id))
               for s in splits]
        self.consumer.incremental_assign(new)
        self._assigned += [(t.topic, t.partition) for t in new]

    def _now_ms(self):
        clock = self.ctx.clock
        return clock.now_ms() if clock is not None else time.time_ns() // 1_000_000

    def reading_splits(self):
        # the consumer reads every partition at once: each one makes the watermark
        return [s.id for s in self.active_splits]

    def _watermarks(self, tp):
        from confluent_kafka import KafkaException, TopicPartition

        try:
            return self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=TIMEOUT_S)
        except KafkaException as exc:
            raise ConnectorError(f"{self.what}: cannot read the offsets of {tp[0]}[{tp[1]}]: {exc}") from exc

    def _initial_offsets(self, missing):
        """Start offsets of the partitions no checkpoint covers."""
        from confluent_kafka import TopicPartition

        if not missing:
            return {}
        if self.start == "earliest":
            return {tp: self._watermarks(tp)[0] for tp in missing}
        if self.start == "latest":
            return {tp: self._watermarks(tp)[1] for tp in missing}
        if self.start == "committed":
            got = self.consumer.committed([TopicPartition(*tp) for tp in missing], timeout=TIMEOUT_S)
            # a partition the group never committed starts at the beginning
            return {(t.topic, t.partition): (t.offset if t.offset >= 0 else self._watermarks((t.topic, t.partition))[0])
                    for t in got}
        ts = self.start["timestamp"]
        got = self.consumer.offsets_for_times([TopicPartition(*tp, ts) for tp in missing], timeout=TIMEOUT_S)
        # no record at or after the timestamp: start at the end
        return {(t.topic, t.partition): (t.offset if t.offset >= 0 else self._watermarks((t.topic, t.partition))[1])
                for t in got}

    def _fill_start_offsets(self):
        missing = [tp for tp in self.partitions if self.split_position(_tp_key(*tp)) is None]
        for tp, offset in self._initial_offsets(missing).items():
            self.advance(_tp_key(*tp), offset)
        for split in self.active_splits:
            stop = split.description.get("stop")
            if stop is not None and self.split_position(split.id) >= stop:
                self.finish_split(split.id)

    # -- positions and checkpoints -----------------------------------------------------

    @property
    def offsets(self):
        """``{(topic, partition): next offset}`` of this subtask's partitions."""
        return {tp: self.split_position(_tp_key(*tp)) for tp in self.partitions}

    def snapshot_state(self, checkpoint_id):
        with self._lock:
            self._at_checkpoint[int(checkpoint_id)] = {tp: o for tp, o in self.offsets.items() if o is not None}
            return {"keyed": None, "state": self.position}

    def notify_checkpoint_complete(self, checkpoint_id):
        """Commit the offsets the checkpoint covers to the group (monitoring only)."""
        from confluent_kafka import TopicPartition

        with self._lock:
            done = [c for c in self._at_checkpoint if c <= checkpoint_id]
            if not done or self.consumer is None:
                return
            offsets = self._at_checkpoint[max(done)]
            for c in done:
                del self._at_checkpoint[c]
        if offsets:
            try:
                self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                                     asynchronous=True)
            except Exception:  # monitoring only: never fails the job
                log.warning("%s: committing offsets of checkpoint %s to group %r failed", self.what, checkpoint_id,
                            self.group_id, exc_info=True)

    # -- reading -----------------------------------------------------------------------

    def _assign(self):
        from confluent_kafka import TopicPartition

        self._assigned = [(s.description["topic"], s.description["partition"]) for s in self.active_splits]
        self.consumer.assign([TopicPartition(t, p, self.split_position(_tp_key(t, p))) for t, p in self._assigned])

    def read(self):
        from confluent_kafka import TopicPartition

        self._prepare()
        self._fill_start_offsets()
        if self._stopped:
            return
        self._assign()
        idle_polls = 0
        while not self._stopped:
            if self._discovery_due():
                self.discover()
            if not self.active_splits:
                if self.discovery_interval_s is None:
                    return
                time.sleep(self.idle_sleep_s)
                yield None
                continue
            messages = self.consumer.consume(self.batch_size, self.poll_timeout)
            batch = self._decode(messages) if messages else None
            if batch is None:
                idle_polls += 1
                if self.bounded and idle_polls % 5 == 0:
                    # read_committed skips transaction markers: the consumer's position, not the
                    # last record, says whether a partition reached its end
                    live = self.active_splits
                    for t in self.consumer.position([TopicPartition(s.description["topic"], s.description["partition"])
                                                     for s in live]):
                        sid = _tp_key(t.topic, t.partition)
                        stop = self._splits[sid].split.description["stop"]
                        if t.offset >= stop > self.split_position(sid):
                            with self._lock:
                                self.advance(sid, stop, finished=True)
                if self.bounded and not self.active_splits:
                    return
                yield None  # nothing now: the task may take a checkpoint (or pause) meanwhile
                continue
            idle_polls = 0
            if batch.num_rows:
                yield batch
            if self.bounded and not self.active_splits:
                return

    def _decode(self, messages):
        """Arrow columns of the records up to each partition's end (bounded); offsets advance.

        One list comprehension per field (no per-record appends): this loop is the source's
        cost per record on top of librdkafka's.
        """
        ok = [m for m in messages if m.error() is None]
        if len(ok) != len(messages):
            for m in messages:
                err = m.error()
                if err is not None and err.code() != -191:  # -191: _PARTITION_EOF, not an error
                    raise ConnectorError(f"{self.what}: reading {m.topic()}[{m.partition()}] failed: {err.str()}")
        if not ok:
            return None
        single = len(self.topics) == 1
        topic0 = self.topics[0]
        parts = [m.partition() for m in ok]
        offs = [m.offset() for m in ok]
        topics = None if single else [m.topic() for m in ok]
        if single:
            # the last offset of each partition (records of one partition come in offset order)
            p_arr, o_arr = np.asarray(parts), np.asarray(offs)
            last = {(topic0, int(p)): int(o_arr[p_arr == p].max()) for p in np.unique(p_arr)}
        else:
            last = {}
            for t, p, o in zip(topics, parts, offs):
                last[(t, p)] = o
        stop = {tp: self._splits[_tp_key(*tp)].split.description.get("stop") for tp in last} if self.bounded else {}
        if self.bounded and any(o >= stop[tp] for tp, o in last.items()):
            # the end of a bounded partition is in this batch: drop what lies beyond it
            keep = [o < stop[(topic0 if single else topics[i], p)] for i, (p, o) in enumerate(zip(parts, offs))]
            ok = [m for m, k in zip(ok, keep) if k]
            parts = [x for x, k in zip(parts, keep) if k]
            offs = [x for x, k in zip(offs, keep) if k]
            topics = None if single else [x for x, k in zip(topics, keep) if k]
            new_offsets = {tp: min(o + 1, stop[tp]) for tp, o in last.items()}
        else:
            new_offsets = {tp: o + 1 for tp, o in last.items()}
        if not ok:
            self._advance_all(new_offsets, stop)
            return None
        values = [m.value() for m in ok]
        need_keys = self.format == "raw" or "key" in self.metadata
        keys = pa.array([m.key() for m in ok], pa.binary()) if need_keys else None
        if self.format == "raw":
            columns = {"key": keys, "value": pa.array(values, pa.binary())}
        elif self.format == "avro":
            columns = self._avro_columns(values)
        else:
            columns = self._json_columns(values)
        for name in self.metadata:
            if name == "topic":
                column = pa.array([topic0] * len(ok) if single else topics, pa.string())
            elif name == "partition":
                column = pa.array(parts, pa.int32())
            elif name == "offset":
                column = pa.array(offs, pa.int64())
            elif name == "timestamp":
                column = pa.array([m.timestamp()[1] for m in ok], pa.int64()).cast(pa.timestamp("ms"))
            else:
                column = keys
            columns[f"kafka_{name}"] = column
        batch = pa.RecordBatch.from_pydict(columns)
        if self.time_column:
            index = {tp: i for i, tp in enumerate(self._assigned)}
            rows = [index[(topic0, p)] for p in parts] if single else [index[tp] for tp in zip(topics, parts)]
            self.observe_event_time(batch, split_ids=[_tp_key(*tp) for tp in self._assigned], row_splits=rows)
        else:  # no per-record work: only which partitions delivered (idleness)
            self.mark_active([_tp_key(*tp) for tp in last])
        self._advance_all(new_offsets, stop)
        return batch

    def _advance_all(self, new_offsets, stop):
        with self._lock:
            for tp, offset in new_offsets.items():
                end = stop.get(tp)
                self.advance(_tp_key(*tp), offset, finished=end is not None and offset >= end)

    def _avro_columns(self, values):
        from fastavro import schemaless_reader

        try:
            rows = [schemaless_reader(io.BytesIO(v), self.avro, self.avro) for v in values]
        except Exception as exc:
            raise ConnectorError(f"{self.what}: a record value is not Avro of the given schema: "
                                 f"{type(exc).__name__}: {exc}") from exc
        table = pa.Table.from_pylist(rows, schema=self.schema)
        return {name: table.column(name).combine_chunks() for name in self.schema.names}

    def _json_columns(self, values):
        if any(v is None for v in values):
            values = [v if v is not None else b"{}" for v in values]
        data = b"\n".join(values)
        try:
            table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=max(1 << 20, len(data) + 1)),
                                     parse_options=pajson.ParseOptions(explicit_schema=self.schema,
                                                                       unexpected_field_behavior="ignore"))
        except pa.ArrowInvalid as exc:
            raise ConnectorError(f"{self.what}: a record value is not JSON of the declared schema "
                                 f"{self.schema}: {exc}") from exc
        table = table.select(self.schema.names).combine_chunks()
        return {name: table.column(name).chunk(0) if table.column(name).num_chunks else pa.array([], f.type)
                for name, f in zip(self.schema.names, self.schema)}

    def close(self):
        if self.consumer is not None:
            try:
                self.consumer.close()
            except Exception:
                log.debug("%s: closing the consumer failed", self.what, exc_info=True)
            self.consumer = None


# -- sink ------------------------------------------------------------------------------------


def encode_rows(table, fmt, key_column, avro=None):
    """``(keys, values)`` (lists of bytes or None) of a table's rows (``avro``: a parsed schema)."""
    n = table.num_rows
    if key_column is None:
        keys = [None] * n
    else:
        col = table.column(key_column)
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            keys = col.to_pylist()
        else:
            keys = [None if v is None else str(v).encode() for v in col.to_pylist()]
    if fmt == "avro":
        from fastavro import schemaless_writer

        values = []
        for row in table.to_pylist():
            buf = io.BytesIO()
            schemaless_writer(buf, avro, row)
            values.append(buf.getvalue())
    elif fmt == "raw":
        col = table.column("value")
        values = col.to_pylist()
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            values = [None if v is None else v.encode() for v in values]
    else:
        dumps = orjson.dumps
        values = [dumps(r, option=orjson.OPT_NAIVE_UTC | orjson.OPT_PASSTHROUGH_SUBCLASS, default=_json_default)
                  for r in table.to_pylist()]
    return keys, values


def _json_default(value):
    import decimal

    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@register("sink", kind="kafka")
class KafkaSink(TwoPhaseCommitSink):
    """Records into a Kafka topic with the chosen delivery guarantee (see the module docs).

    ``exactly-once`` is :class:`~sabot.connectors.two_phase.TwoPhaseCommitSink`'s checkpoint
    bookkeeping; this class encodes the records (:meth:`stage`), commits one checkpoint's
    records with its progress record in one Kafka transaction (:meth:`commit`) and reads the
    progress topic back (:meth:`last_committed_checkpoint`). ``none`` and ``at-least-once``
    produce every batch at once (:meth:`write_unbuffered`)."""

    def __init__(self, ctx):
        super().__init__(ctx)
        p = self.params
        self.what = f"Kafka sink {ctx.operator_name!r}"
        self.bootstrap = p.get("bootstrap_servers")
        self.topic = p.get("topic")
        if not isinstance(self.bootstrap, str) or not self.bootstrap:
            raise ConnectorError(f"{self.what} needs parameter 'bootstrap_servers' ('host:port,...')")
        if not isinstance(self.topic, str) or not self.topic:
            raise ConnectorError(f"{self.what} needs parameter 'topic'")
        self.target = f"topic {self.topic!r}"
        self.key = p.get("key")
        self.format = p.get("format") or "json"
        if self.format not in SINK_FORMATS:
            raise ConnectorError(f"{self.what}: unknown format {self.format!r}; expected one of {SINK_FORMATS}")
        self.delivery = p.get("delivery") or "at-least-once"
        if self.delivery not in DELIVERY:
            raise ConnectorError(f"{self.what}: unknown delivery {self.delivery!r}; expected one of {DELIVERY}")
        self.two_phase = self.delivery == "exactly-once"
        self.avro = _parsed_avro(p.get("avro_schema"), self.what) if self.format == "avro" else None
        self.prefix = p.get("transactional_id_prefix")
        self.progress_topic = p.get("progress_topic") or DEFAULT_PROGRESS_TOPIC
        self.config = dict(p.get("config") or {})
        self.producer = None
        self.schema = None
        self._errors = []  # delivery errors reported by librdkafka's callback
        self.produced = 0

    # -- setup -------------------------------------------------------------------------

    @property
    def transactional_id(self):
        prefix = self.prefix or f"sabot-{self.job}-{self.ctx.operator_name}"
        return f"{prefix}-{self.ctx.subtask_index}"

    @staticmethod
    def progress_key(progress_job, sink, subtask):
        """The key of a progress record in the progress topic."""
        return f"{progress_job}/{sink}/{subtask}".encode()

    def open(self):
        self._connect()

    def _connect(self):
        from confluent_kafka import KafkaException, Producer

        config = {"bootstrap.servers": self.bootstrap, "error_cb": self._on_error, **self.config}
        if self.delivery == "none":
            config.setdefault("acks", 0)
        else:
            config.setdefault("acks", "all")
            config.setdefault("enable.idempotence", True)
        if self.delivery == "exactly-once":
            config["transactional.id"] = self.transactional_id
            config.setdefault("transaction.timeout.ms", 60_000)
        try:
            self.producer = Producer(config)
        except Exception as exc:
            raise ConnectorError(f"{self.what}: invalid producer settings: {exc}") from exc
        list_partitions(self.producer, [self.topic], self.what)
        if self.delivery == "exactly-once":
            list_partitions(self.producer, [self.progress_topic], self.what + " (its progress topic)")
            try:
                # fences every older producer of this transactional id and aborts its open transaction
                self.producer.init_transactions(TIMEOUT_S)
            except KafkaException as exc:
                raise ConnectorError(f"{self.what}: init_transactions for {self.transactional_id!r} failed: "
                                     f"{exc.args[0].str() if exc.args else exc}") from exc

    def lineage_changed(self):
        """Restored into a new job: go on with the old one's transactional id (fencing its producers)."""
        self.producer.flush(TIMEOUT_S)
        self._connect()

    def _on_error(self, err):
        log.warning("%s: %s", self.what, err.str() if hasattr(err, "str") else err)

    def _on_delivery(self, err, msg):
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def failure_detail(self):
        if not self._errors:
            return None
        return f"{len(self._errors)} record(s) were not delivered to {self.topic!r}: {'; '.join(self._errors[:3])}"

    # -- rows --------------------------------------------------------------------------

    def check_batch(self, batch):
        if self.schema is None:
            self._check_schema(batch.schema)
            self.schema = batch.schema

    def stage(self, batch):
        """The records of ``batch``: a table of binary ``key`` and ``value``."""
        try:
            keys, values = encode_rows(pa.Table.from_batches([batch]), self.format, self.key, self.avro)
        except (ValueError, TypeError) as exc:  # fastavro: a row that does not fit the schema
            raise ConnectorError(f"{self.what}: a row cannot be written as {self.format}: {exc}") from exc
        return pa.table({"key": pa.array(keys, pa.binary()), "value": pa.array(values, pa.binary())})

    def write_unbuffered(self, table):
        """``none`` / ``at-least-once``: produce now (at-least-once waits at the next barrier)."""
        self._produce(table.column("key").to_pylist(), table.column("value").to_pylist())
        self.producer.poll(0)

    def _check_schema(self, schema):
        if self.key is not None and schema.get_field_index(self.key) < 0:
            raise ConnectorError(f"{self.what}: key column {self.key!r} is not in the stream ({schema.names})")
        if self.format == "raw":
            i = schema.get_field_index("value")
            ok = i >= 0 and (pa.types.is_binary(schema.field(i).type) or pa.types.is_string(schema.field(i).type)
                             or pa.types.is_large_binary(schema.field(i).type)
                             or pa.types.is_large_string(schema.field(i).type))
            if not ok:
                raise ConnectorError(f"{self.what}: format 'raw' writes column 'value' (binary or string); the "
                                     f"stream has {schema}")

    def _produce(self, keys, values):
        from confluent_kafka import KafkaException

        produce = self.producer.produce
        topic = self.topic
        callback = self._on_delivery
        for k, v in zip(keys, values):
            while True:
                try:
                    produce(topic, value=v, key=k, on_delivery=callback)
                    break
                except BufferError:  # the local queue is full: let librdkafka send
                    self.producer.poll(0.05)
                except KafkaException as exc:
                    raise ConnectorError(f"{self.what}: producing to {topic!r} failed: {exc}") from exc
        self.produced += len(values)

    def _flush(self, what):
        left = self.producer.flush(TIMEOUT_S)
        if left:
            raise ConnectorError(f"{self.what}: {left} record(s) still undelivered after {TIMEOUT_S:.0f} s ({what}); "
                                 "are the brokers reachable?")
        self._raise_failure()

    # -- exactly-once: the target's part of the two-phase commit --------------------------

    def commit(self, table, progress):
        """Produce ``table`` and (with checkpoints) the ``progress`` record in one transaction and
        commit it. Kafka cannot check the progress topic inside a transaction: a replay is kept
        from producing twice by the restore reading it first (:meth:`last_committed_checkpoint`)."""
        from confluent_kafka import KafkaException

        if self.producer is None:  # closed at the end of input; the job's end publishes (notify_job_finished)
            self._connect()
        try:
            self.producer.begin_transaction()
            if table is not None:
                self._produce(table.column("key").to_pylist(), table.column("value").to_pylist())
            if progress is not None:
                self.producer.produce(self.progress_topic, key=self.progress_key(*progress[:3]),
                                      value=orjson.dumps({"checkpoint_id": progress.checkpoint_id,
                                                          "rows": table.num_rows if table is not None else 0}),
                                      on_delivery=self._on_delivery)
            self.producer.flush(TIMEOUT_S)
            self._raise_failure()
            self.producer.commit_transaction(TIMEOUT_S)
            return True
        except (KafkaException, ConnectorError) as exc:
            try:
                self.producer.abort_transaction(TIMEOUT_S)
            except Exception:
                log.debug("%s: abort after a failed commit failed", self.what, exc_info=True)
            what = f"checkpoint {progress.checkpoint_id}" if progress is not None else "the end of input"
            raise ConnectorError(f"{self.what}: committing the transaction of {what} to "
                                 f"{self.topic!r} failed: {exc}") from exc

    def last_committed_checkpoint(self, job):
        """The highest checkpoint id this subtask committed in a job of lineage ``job``, read from
        the progress topic (read_committed), or -1."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"{self.transactional_id}-progress",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             **{k: v for k, v in self.config.items() if k.startswith(("security", "sasl", "ssl"))}})
        key = self.progress_key(job, self.ctx.operator_name, self.ctx.subtask_index)
        try:
            parts = list_partitions(consumer, [self.progress_topic], self.what + " (its progress topic)")
            ends = {tp: consumer.get_watermark_offsets(TopicPartition(*tp), timeout=TIMEOUT_S) for tp in parts}
            todo = {tp for tp, (low, high) in ends.items() if high > low}
            consumer.assign([TopicPartition(t, p, ends[(t, p)][0]) for t, p in sorted(todo)])
            last = -1
            while todo:
                for m in consumer.consume(10_000, 1.0):
                    if m.error() is not None:
                        continue
                    tp = (m.topic(), m.partition())
                    if m.key() == key:
                        last = max(last, int(orjson.loads(m.value())["checkpoint_id"]))
                    if m.offset() + 1 >= ends[tp][1]:
                        todo.discard(tp)
                for t in consumer.position([TopicPartition(*tp) for tp in todo]):
                    if t.offset >= ends[(t.topic, t.partition)][1]:
                        todo.discard((t.topic, t.partition))
            return last
        finally:
            consumer.close()

    # -- checkpoints: exactly-once is the base class's; the other guarantees flush ----------

    def snapshot_state(self, checkpoint_id):
        if self.two_phase:
            return super().snapshot_state(checkpoint_id)
        with self._lock:
            self._raise_failure()
            if self.delivery == "at-least-once":
                self._flush(f"checkpoint {checkpoint_id}")
        return None

    def notify_checkpoint_complete(self, checkpoint_id):
        if self.two_phase:
            super().notify_checkpoint_complete(checkpoint_id)

    def restore_state(self, keyed, state, checkpoint_id):
        if self.two_phase:
            super().restore_state(keyed, state, checkpoint_id)

    def finish(self):
        if self.two_phase:
            return super().finish()
        with self._lock:
            self._raise_failure()
            if self.producer is not None:
                self._flush("end of input")
        return []

    def notify_job_finished(self):
        if self.two_phase:
            super().notify_job_finished()

    def close(self):
        if self.producer is not None:
            try:
                self.producer.flush(5)
            except Exception:
                log.debug("%s: flushing at close failed", self.what, exc_info=True)
            self.producer = None

    def summary(self):
        out = super().summary()
        out["produced"] = self.produced
        return out

"""The Kafka source and sink against librdkafka's mock cluster (a real cluster when
$SABOT_KAFKA_BOOTSTRAP is set). Records are produced and read back with plain
confluent-kafka clients and compared with what was produced."""

import json

import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from sabot import JobFailed, Stream
from sabot.connectors import ConnectorError
from sabot.connectors import kafka as kafka_module
from sabot.runtime.operators.base import TaskContext, create_operator

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000_000


def produce_keyed(kafka_cluster, topic, n):
    """``n`` JSON records over the 4 partitions, with keys and timestamps; returns them as dicts."""
    rows = [{"id": i, "user": f"u{i % 17}", "amount": float(i % 101) / 4} for i in range(n)]
    kafka_cluster.produce(topic, [orjson.dumps(r) for r in rows], keys=[r["user"].encode() for r in rows],
                          partitions=[i % 4 for i in range(n)], timestamps=[T0 + i for i in range(n)])
    return rows


def make(kind_type, params, *, subtask=0, parallelism=1, job="job", checkpointing=True, name="op"):
    operator = {"name": name, "operator_id": name, "operator_type": kind_type, "key_by": None, "function": None,
                "parameters": params}
    ctx = TaskContext(job_id=job, task_id=f"{name}-{subtask}", attempt=0, operator=operator, subtask_index=subtask,
                      parallelism=parallelism, max_parallelism=128, checkpointing=checkpointing)
    op = create_operator(ctx)
    op.open()
    return op


def source_params(kafka_cluster, topic, **kw):
    return {"kind": "kafka", "bootstrap_servers": kafka_cluster.bootstrap, "topics": [topic], "bounded": True, **kw}


def drain(source, limit=None):
    out = []
    for batch in source.read():
        if batch is not None and batch.num_rows:
            out.append(batch)
            if limit is not None and len(out) >= limit:
                break
    return pa.Table.from_batches(out) if out else None


def test_bounded_source_reads_every_record_once_across_subtasks(kafka_cluster, kafka_topic):
    topic = kafka_topic()
    rows = produce_keyed(kafka_cluster, topic, 5000)
    got = Stream.from_kafka(kafka_cluster.bootstrap, topic, bounded=True, batch_size=700).parallelism(3) \
        .collect().run().table()
    assert got.num_rows == len(rows)
    ids = sorted(json.loads(v)["id"] for v in got.column("value").to_pylist())
    assert ids == list(range(len(rows)))
    for r in got.select(["key", "value", "kafka_partition", "kafka_timestamp", "kafka_topic"]).to_pylist():
        i = json.loads(r["value"])["id"]
        assert r["key"] == rows[i]["user"].encode() and r["kafka_partition"] == i % 4 and r["kafka_topic"] == topic
        assert int(r["kafka_timestamp"].timestamp() * 1000) == T0 + i
    # the offsets of a partition are 0..n-1 without gaps
    offsets = {}
    for p, o in zip(got.column("kafka_partition").to_pylist(), got.column("kafka_offset").to_pylist()):
        offsets.setdefault(p, []).append(o)
    assert {p: sorted(o) for p, o in offsets.items()} == {p: list(range(1250)) for p in range(4)}


def test_json_values_decode_into_the_schema(kafka_cluster, kafka_topic):
    topic = kafka_topic()
    rows = produce_keyed(kafka_cluster, topic, 3000)
    schema = pa.schema([("id", pa.int64()), ("user", pa.string()), ("amount", pa.float64())])
    got = Stream.from_kafka(kafka_cluster.bootstrap, topic, format="json", schema=schema, bounded=True,
                            event_time="kafka").collect().run().table()
    assert got.schema.names == ["id", "user", "amount", "kafka_timestamp"]
    expected = pa.Table.from_pylist(rows, schema=schema)
    assert got.select(schema.names).sort_by("id").equals(expected)


def test_offsets_live_in_checkpoints_and_a_restore_at_another_parallelism_resumes_exactly(kafka_cluster, kafka_topic):
    topic = kafka_topic()
    produce_keyed(kafka_cluster, topic, 4000)
    group = f"g-{topic}"
    params = source_params(kafka_cluster, topic, format="raw", metadata=["partition", "offset"], batch_size=300,
                           group_id=group)
    first = [make("source", params, subtask=i, parallelism=2) for i in range(2)]
    seen = [drain(op, limit=3) for op in first]  # part of the input, then a checkpoint
    states = {i: op.snapshot_state(7)["state"] for i, op in enumerate(first)}
    for op in first:
        op.notify_checkpoint_complete(7)
    # the group's committed offsets are the checkpoint's (monitoring)
    consumer = Consumer({"bootstrap.servers": kafka_cluster.bootstrap, "group.id": group})
    import time
    deadline = time.monotonic() + 10
    expected = {kafka_module._parse_tp_key(k): e["position"] for s in states.values() for k, e in s["splits"].items()}
    while True:
        got = {(t.topic, t.partition): t.offset
               for t in consumer.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    consumer.close()
    assert got == expected
    for op in first:
        op.close()
    # restore at parallelism 3: every record exactly once over before + after
    after = []
    for i in range(3):
        op = make("source", params, subtask=i, parallelism=3)
        op.restore_subtask_states(states, 7)
        t = drain(op)
        if t is not None:
            after.append(t)
        op.close()
    both = pa.concat_tables([t for t in seen + after if t is not None])
    pairs = sorted(zip(both.column("kafka_partition").to_pylist(), both.column("kafka_offset").to_pylist()))
    assert pairs == [(p, o) for p in range(4) for o in range(1000)]


def test_start_from_committed_and_latest(kafka_cluster, kafka_topic):
    topic = kafka_topic()
    produce_keyed(kafka_cluster, topic, 400)
    group = f"g-{topic}"
    consumer = Consumer({"bootstrap.servers": kafka_cluster.bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, p, 10 * (p + 1)) for p in range(4)], asynchronous=False)
    consumer.close()
    src = make("source", source_params(kafka_cluster, topic, start="committed", group_id=group,
                                       metadata=["partition", "offset"]))
    t = drain(src)
    src.close()
    got = sorted(zip(t.column("kafka_partition").to_pylist(), t.column("kafka_offset").to_pylist()))
    assert got == [(p, o) for p in range(4) for o in range(10 * (p + 1), 100)]
    latest = make("source", source_params(kafka_cluster, topic, start="latest"))
    assert drain(latest) is None
    latest.close()


def test_start_from_a_timestamp(kafka_cluster, kafka_topic):
    if kafka_cluster.is_mock:
        pytest.skip("librdkafka's mock cluster does not answer offset lookups by timestamp (it returns -1); "
                    "runs with SABOT_KAFKA_BOOTSTRAP")
    topic = kafka_topic()
    produce_keyed(kafka_cluster, topic, 400)
    src = make("source", source_params(kafka_cluster, topic, start={"timestamp": T0 + 200}, metadata=["offset"]))
    t = drain(src)
    src.close()
    ids = sorted(json.loads(v)["id"] for v in t.column("value").to_pylist())
    assert ids == list(range(200, 400))


@pytest.mark.parametrize("delivery", ["none", "at-least-once", "exactly-once"])
def test_sink_writes_every_row_as_json_keyed(kafka_cluster, kafka_topic, delivery):
    topic = kafka_topic()
    t = pa.table({"user": [f"u{i % 9}" for i in range(3000)], "n": list(range(3000)),
                  "x": [i / 8 for i in range(3000)]})
    Stream.from_table(t, batch_size=500).to_kafka(kafka_cluster.bootstrap, topic, key="user",
                                                  delivery=delivery).run()
    records = kafka_cluster.read(topic)
    assert sorted(orjson.loads(v)["n"] for _, _, _, v, _ in records) == list(range(3000))
    for _, _, k, v, _ in records:
        row = orjson.loads(v)
        assert k == row["user"].encode() and row["x"] == row["n"] / 8
    # one key's records share a partition
    parts = {}
    for p, _, k, _, _ in records:
        parts.setdefault(k, set()).add(p)
    assert all(len(s) == 1 for s in parts.values())


def test_exactly_once_sink_commits_each_checkpoint_once_across_restores(kafka_cluster, kafka_topic):
    topic = kafka_topic()
    progress = kafka_topic("progress")
    params = {"kind": "kafka", "bootstrap_servers": kafka_cluster.bootstrap, "topic": topic, "format": "json",
              "delivery": "exactly-once", "progress_topic": progress}
    batch = lambda a, b: pa.record_batch([pa.array(range(a, b))], names=["n"])  # noqa: E731
    values = lambda: sorted(orjson.loads(v)["n"] for *_, v, _ in kafka_cluster.read(topic))  # noqa: E731
    op = make("sink", params, job=f"job-{topic}")
    op.process(batch(0, 100), 0)
    s1 = op.snapshot_state(1)
    op.process(batch(100, 250), 0)
    s2 = op.snapshot_state(2)
    op.process(batch(250, 300), 0)  # after the last barrier
    assert values() == []  # nothing is produced before a checkpoint completes
    op.notify_checkpoint_complete(1)
    assert values() == list(range(100))
    op.notify_checkpoint_complete(1)
    assert values() == list(range(100))
    # the worker dies before checkpoint 2's notification; a new attempt restores checkpoint 2
    op.close()
    again = make("sink", params, job=f"job-{topic}")
    again.restore_state(None, s2["state"], 2)
    assert values() == list(range(250))
    assert (again.skipped_checkpoints, again.committed_checkpoints) == (1, 1)
    third = make("sink", params, job=f"job-{topic}")
    third.restore_state(None, s2["state"], 2)
    third.restore_state(None, s1["state"], 1)
    assert values() == list(range(250)) and third.committed_checkpoints == 0
    marks = [orjson.loads(v)["checkpoint_id"] for *_, v, _ in kafka_cluster.read(progress)]
    assert sorted(marks) == [1, 2]
    for o in (again, third):
        o.close()


def test_clear_errors_for_unreachable_brokers_and_missing_topics(kafka_cluster, monkeypatch):
    monkeypatch.setattr(kafka_module, "TIMEOUT_S", 2.0)
    with pytest.raises(ConnectorError, match="cannot reach the Kafka brokers.*check bootstrap_servers"):
        make("source", {"kind": "kafka", "bootstrap_servers": "127.0.0.1:1", "topics": ["x"]})
    with pytest.raises(ConnectorError, match="topic 'no-such-topic' does not exist"):
        make("source", {"kind": "kafka", "bootstrap_servers": kafka_cluster.bootstrap, "topics": ["no-such-topic"]})
    with pytest.raises(JobFailed, match="cannot reach the Kafka brokers"):
        Stream.from_table(pa.table({"n": [1]})).to_kafka("127.0.0.1:1", "x").run(timeout=30)
    with pytest.raises(ValueError, match="delivery must be one of"):
        Stream.from_table(pa.table({"n": [1]})).to_kafka("b", "x", delivery="twice")


def test_watermark_per_partition_leaves_idle_partitions_out(kafka_cluster, kafka_topic):
    from sabot.runtime.timers import ManualClock

    topic = kafka_topic()
    clock = ManualClock(0)

    def source(idle_timeout_ms):
        operator = {"name": "src", "operator_id": "src", "operator_type": "source", "key_by": None, "function": None,
                    "parameters": {"kind": "kafka", "bootstrap_servers": kafka_cluster.bootstrap, "topics": [topic],
                                   "metadata": ["timestamp"], "time_column": "kafka_timestamp",
                                   "max_out_of_orderness": 10, "idle_timeout_ms": idle_timeout_ms,
                                   "poll_timeout_ms": 50}}
        op = create_operator(TaskContext(job_id="j", task_id="s", attempt=0, operator=operator, subtask_index=0,
                                         parallelism=1, max_parallelism=128, clock=clock))
        op.open()
        return op, op.read()

    def read_until(reader, rows):
        got = 0
        while got < rows:
            batch = next(reader)
            got += batch.num_rows if batch is not None else 0

    def produce(partition, timestamps):
        kafka_cluster.produce(topic, [b"x"] * len(timestamps), partitions=[partition] * len(timestamps),
                              timestamps=[T0 + t for t in timestamps])

    produce(0, list(range(1000, 1100)))
    produce(1, list(range(5000, 5100)))
    idle, idle_reader = source(1000)
    strict, strict_reader = source(None)
    read_until(idle_reader, 200)
    read_until(strict_reader, 200)
    # partitions 2 and 3 have delivered nothing: they hold event time back
    assert idle.current_watermark() is None and strict.current_watermark() is None
    clock.set(600)
    produce(0, [1100])
    produce(1, [5100])
    read_until(idle_reader, 2)
    read_until(strict_reader, 2)
    clock.set(1200)  # 2 and 3 idle for 1200 ms >= 1000; 0 and 1 delivered 600 ms ago
    assert idle.current_watermark() == T0 + 1100 - 10
    assert strict.current_watermark() is None  # without an idleness timeout they hold it back for ever
    clock.set(1500)
    produce(1, [5200])
    read_until(idle_reader, 1)
    clock.set(1700)  # partition 0 is idle now too: the slow partition no longer holds event time back
    assert idle.current_watermark() == T0 + 5200 - 10
    clock.set(3000)  # every partition idle: no watermark to give
    assert idle.current_watermark() is None
    idle.close()
    strict.close()


AVRO = {"type": "record", "name": "Payment", "fields": [
    {"name": "id", "type": "long"}, {"name": "user", "type": "string"},
    {"name": "amount", "type": ["null", "double"]},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}


def test_avro_values_both_ways(kafka_cluster, kafka_topic):
    import datetime
    import io

    import fastavro

    parsed = fastavro.parse_schema(AVRO)
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [{"id": i, "user": f"u{i % 7}", "amount": None if i % 5 == 0 else i / 4,
             "at": base + datetime.timedelta(milliseconds=37 * i)} for i in range(2000)]

    def encode(row):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, row)
        return buf.getvalue()

    topic_in, topic_out = kafka_topic(), kafka_topic()
    kafka_cluster.produce(topic_in, [encode(r) for r in rows], partitions=[i % 4 for i in range(len(rows))])
    stream = Stream.from_kafka(kafka_cluster.bootstrap, topic_in, format="avro", avro_schema=AVRO, bounded=True)
    got = stream.collect().run().table()
    expected = pa.Table.from_pylist(rows, schema=got.schema)
    assert got.schema.names == ["id", "user", "amount", "at"]
    assert got.sort_by("id").equals(expected)
    # and back out: decoded with fastavro, the records are the input
    Stream.from_kafka(kafka_cluster.bootstrap, topic_in, format="avro", avro_schema=AVRO, bounded=True) \
        .to_kafka(kafka_cluster.bootstrap, topic_out, format="avro", avro_schema=AVRO, key="user").run()
    back = [fastavro.schemaless_reader(io.BytesIO(v), parsed, parsed) for *_, v, _ in kafka_cluster.read(topic_out)]
    assert sorted(back, key=lambda r: r["id"]) == rows
    with pytest.raises(Exception, match="field 'tags' has Avro type"):
        Stream.from_kafka(kafka_cluster.bootstrap, topic_in, format="avro", avro_schema={
            "type": "record", "name": "X", "fields": [{"name": "tags", "type": {"type": "array", "items": "string"}}]})


def test_new_partitions_are_discovered_and_read_from_their_start(kafka_cluster, kafka_topic, monkeypatch):
    """The mock cluster cannot add partitions to a topic, so the listing is cut: the sources
    first see partitions 0 and 1, later all 4 (as after a CreatePartitions); the new ones are
    assigned (each to one subtask) and read from their first record, once."""
    import time

    topic = kafka_topic()
    produce_keyed(kafka_cluster, topic, 2000)
    real = kafka_module.list_partitions
    grown = {"now": False}

    def listing(client, topics, what, timeout=None):
        parts = real(client, topics, what, timeout)
        return parts if grown["now"] else [tp for tp in parts if tp[1] < 2]

    monkeypatch.setattr(kafka_module, "list_partitions", listing)
    params = source_params(kafka_cluster, topic, bounded=False, metadata=["partition", "offset"], format="raw",
                           partition_discovery_interval_ms=50, poll_timeout_ms=20)
    sources = [make("source", params, subtask=i, parallelism=2) for i in range(2)]
    readers = [op.read() for op in sources]

    def pump(rows_wanted, settle=0.3, timeout=20):
        """Read until ``rows_wanted`` records came (or ``timeout``), then ``settle`` s more: a
        record read twice would show up."""
        rows = []
        deadline = time.monotonic() + timeout
        settled = None
        while time.monotonic() < (settled or deadline):
            for r in readers:
                batch = next(r)
                if batch is not None:
                    rows += zip(batch.column("kafka_partition").to_pylist(), batch.column("kafka_offset").to_pylist())
            if settled is None and len(rows) >= rows_wanted:
                settled = time.monotonic() + settle
        return rows

    got = pump(1000)
    assert sorted(got) == [(p, o) for p in (0, 1) for o in range(500)]
    assert sorted(tp for op in sources for tp in op.partitions) == [(topic, 0), (topic, 1)]
    grown["now"] = True
    got += pump(1000)
    assert sorted(got) == [(p, o) for p in range(4) for o in range(500)]
    owners = {tp: i for i, op in enumerate(sources) for tp in op.partitions}
    assert sorted(owners) == [(topic, p) for p in range(4)]  # each partition has exactly one reader
    # a checkpoint holds the discovered partitions with their offsets
    states = [op.snapshot_state(1)["state"] for op in sources]
    offsets = {k: e["position"] for s in states for k, e in s["splits"].items()}
    assert offsets == {f"{topic}/{p}": 500 for p in range(4)}
    for op in sources:
        op.close()

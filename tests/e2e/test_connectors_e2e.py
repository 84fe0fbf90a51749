"""Kafka -> keyed aggregate -> Kafka (exactly once) and PostgreSQL (upsert), on real worker
processes, with a worker killed by SIGKILL while the job runs.

The input (4 partitions, produced by the test) is read by a bounded Kafka source; one
branch copies every record to a Kafka topic through the exactly-once sink and appends it to
a PostgreSQL table, one aggregates per user and writes the final rows to another
exactly-once Kafka topic, one upserts the running aggregates into PostgreSQL. After the kill and the restart from a checkpoint, the
read_committed topics and the table must equal references computed with pyarrow from the
produced records: nothing lost, nothing twice.

The Kafka peer is librdkafka's mock cluster (a real one with $SABOT_KAFKA_BOOTSTRAP). The
mock does not hide aborted or open transactions from read_committed readers, so against it
the killed worker is one that runs no Kafka sink subtask: a producer killed inside its
commit would leave its half transaction visible there (a real broker aborts it when the
restarted sink fences the transactional id; with SABOT_KAFKA_BOOTSTRAP the victim is the
worker of a Kafka sink).
"""

import time
import uuid

import orjson
import psycopg
import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.testing import assert_tables_equal
from tests.conftest import started_local_cluster, wait_rescale

pytestmark = pytest.mark.timeout(240)

RECORDS = 200_000
USERS = 500
SCHEMA = pa.schema([("id", pa.int64()), ("user", pa.string()), ("amount", pa.float64())])


def produce_input(kafka_cluster, topic):
    ids = list(range(RECORDS))
    # quarters: float sums are exact in any order, so the comparison can be exact
    rows = {"id": ids, "user": [f"u{i * 7919 % USERS}" for i in ids], "amount": [(i % 101) / 4 for i in ids]}
    kafka_cluster.produce(topic, [orjson.dumps({"id": i, "user": u, "amount": a})
                                  for i, u, a in zip(rows["id"], rows["user"], rows["amount"])],
                          keys=[u.encode() for u in rows["user"]], partitions=[i % 4 for i in ids])
    return pa.table(rows, schema=SCHEMA)


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path):
    with started_local_cluster(checkpoint_dir=str(tmp_path / "checkpoints"), restart_slot_wait_s=30) as made:
        yield made


def setup_topics_and_table(kafka_cluster, postgres_server):
    run = uuid.uuid4().hex[:8]
    topics = {name: f"{name}-{run}" for name in ("in", "copy", "totals", "progress")}
    for topic in topics.values():
        kafka_cluster.create_topic(topic, partitions=4)
    table = f"totals_{run}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (\"user\" text PRIMARY KEY, amount_count bigint, amount_sum float8)")
        conn.execute(f"CREATE TABLE {table}_copy (id bigint, \"user\" text, amount float8)")
    return topics, table


def connectors_job(kafka_cluster, postgres_server, topics, table, *, source_parallelism=2,
                   slow="connector_udfs:slow_identity", batch_size=1000):
    """Kafka -> (copy -> Kafka exactly-once), (aggregate final -> Kafka exactly-once),
    (aggregate updates -> PostgreSQL upsert)."""
    bootstrap = kafka_cluster.bootstrap
    source = (Stream.from_kafka(bootstrap, topics["in"], format="json", schema=SCHEMA, bounded=True,
                                batch_size=batch_size, name="source").parallelism(source_parallelism)
              .map(slow, name="slow").parallelism(2))
    source.to_kafka(bootstrap, topics["copy"], key="user", delivery="exactly-once",
                    progress_topic=topics["progress"], name="copy_sink").parallelism(1)
    source.to_postgres(postgres_server.dsn, f"{table}_copy", name="pg_copy_sink").parallelism(2)
    keyed = source.key_by("user")
    keyed.aggregate({"amount": ["count", "sum"]}, emit="final", name="final") \
        .to_kafka(bootstrap, topics["totals"], key="user", delivery="exactly-once",
                  progress_topic=topics["progress"], name="totals_sink").parallelism(1)
    return keyed.aggregate({"amount": ["count", "sum"]}, emit="updates", name="updates") \
        .to_postgres(postgres_server.dsn, table, mode="upsert", name="pg_sink").parallelism(2) \
        .to_job_graph("connectors-e2e", default_parallelism=2, shippable=True, checkpoint_interval_ms=200)


def check_outputs(kafka_cluster, postgres_server, topics, table, produced):
    """The read_committed topics and the table equal pyarrow's reference over the input."""
    copy = kafka_cluster.read(topics["copy"])
    copied = pa.Table.from_pylist([orjson.loads(v) for *_, v, _ in copy], schema=SCHEMA)
    assert copied.num_rows == RECORDS, (copied.num_rows, RECORDS)
    assert_tables_equal(copied, produced, sort_by=["id"])
    assert all(k == orjson.loads(v)["user"].encode() for _, _, k, v, _ in copy)

    expected = produced.group_by("user").aggregate([("amount", "count"), ("amount", "sum")]) \
        .select(["user", "amount_count", "amount_sum"])
    totals = pa.Table.from_pylist([orjson.loads(v) for *_, v, _ in kafka_cluster.read(topics["totals"])])
    assert totals.num_rows == USERS
    assert_tables_equal(totals.select(expected.column_names), expected, sort_by=["user"], check_types=False)

    with psycopg.connect(postgres_server.dsn) as conn:
        appended = conn.execute(f'SELECT id, "user", amount FROM {table}_copy').fetchall()
        rows = conn.execute(f'SELECT "user", amount_count, amount_sum FROM {table}').fetchall()
    appended = pa.table({"id": [r[0] for r in appended], "user": [r[1] for r in appended],
                         "amount": [r[2] for r in appended]}, schema=SCHEMA)
    assert appended.num_rows == RECORDS, (appended.num_rows, RECORDS)
    assert_tables_equal(appended, produced, sort_by=["id"])
    in_pg = pa.table({"user": [r[0] for r in rows], "amount_count": [r[1] for r in rows],
                      "amount_sum": [r[2] for r in rows]})
    assert_tables_equal(in_pg, expected, sort_by=["user"], check_types=False)


def test_kafka_to_aggregate_to_kafka_and_postgres_exactly_once_through_a_kill_9(
        cluster, kafka_cluster, postgres_server):
    topics, table = setup_topics_and_table(kafka_cluster, postgres_server)
    produced = produce_input(kafka_cluster, topics["in"])
    job_id = cluster.submit(connectors_job(kafka_cluster, postgres_server, topics, table))
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 2, 60,
               "two completed checkpoints")
    tasks = cluster.job(job_id)["tasks"]
    kafka_nodes = {t["node_id"] for t in tasks if t["operator_name"] in ("copy_sink", "totals_sink")}
    nodes = cluster.node_ids
    if kafka_cluster.is_mock:
        candidates = [n for n in nodes if n not in kafka_nodes]
    else:
        candidates = sorted(kafka_nodes)
    assert candidates, f"every worker runs a Kafka sink: {tasks}"
    assert cluster.job(job_id)["state"] == "RUNNING", "the job ended before the kill; slow it down"
    cluster.kill_worker(nodes.index(candidates[0]))
    cluster.add_worker()
    assert cluster.wait(job_id, 150) == "FINISHED", cluster.job(job_id).get("failure")
    info = cluster.job(job_id)
    assert info["restarts"] >= 1 and info["restored_from"] is not None
    check_outputs(kafka_cluster, postgres_server, topics, table, produced)


def test_live_rescale_of_the_kafka_source_4_2_3_keeps_the_output_exact(cluster, kafka_cluster, postgres_server):
    """The source's partitions move with their offsets while data flows: 4 -> 2 -> 3 tasks."""
    cluster.add_worker()  # 3 workers x 2 slots: the new source tasks start beside the old ones
    topics, table = setup_topics_and_table(kafka_cluster, postgres_server)
    produced = produce_input(kafka_cluster, topics["in"])
    job_id = cluster.submit(connectors_job(kafka_cluster, postgres_server, topics, table, source_parallelism=4,
                                           slow="connector_udfs:slower_identity", batch_size=200))
    client = cluster.client()
    wait_until(lambda: (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0) >= 1, 60,
               "a completed checkpoint")
    source = next(op["operator_id"] for op in client.job(job_id)["operators"] if op["name"] == "source")
    before = None
    for new_parallelism in (2, 3):
        assert client.job(job_id)["state"] == "RUNNING", "the job ended before the rescale; slow it down"
        plan = client.request("POST", f"/jobs/{job_id}/rescale", {"operator_id": source,
                                                                  "new_parallelism": new_parallelism})
        detail, record = wait_rescale(client, job_id, plan["rescale_id"])
        assert record["state"] == "COMPLETED", record
        assert {op["name"]: op["parallelism"] for op in detail["operators"]}["source"] == new_parallelism
        before = record
        time.sleep(0.3)
    assert before is not None
    assert cluster.wait(job_id, 150) == "FINISHED", cluster.job(job_id).get("failure")
    check_outputs(kafka_cluster, postgres_server, topics, table, produced)


def test_an_unreachable_database_goes_through_the_restart_strategy(cluster, postgres_server):
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    strategy = {"type": "fixed-delay", "attempts": 2, "delay_ms": 50}
    job = (Stream.from_generator("connector_udfs:numbers", total_rows=1000, batch_size=100, name="numbers")
           .to_postgres(postgres_server.dsn.replace("password=sabot-test", "password=wrong"), missing, name="pg")
           .to_job_graph("bad-credentials", default_parallelism=1, shippable=True, restart_strategy=strategy))
    job_id = cluster.submit(job)
    assert cluster.wait(job_id, 60) == "FAILED"
    info = cluster.job(job_id)
    assert info["restarts"] == 2
    error = info["failure"]["error"]
    assert "password authentication failed" in error and "check the user and password" in error, error
    assert "wrong" not in error.replace("went wrong", "")


def test_postgres_down_mid_job_restarts_and_the_table_is_exact(cluster, postgres_server):
    """The database stops while the job runs: sinks fail (no checkpoint acknowledged for rows
    not written), the restart strategy retries until it is back, and the appended table holds
    every row exactly once: the rows of the failed commits come back from the restored
    checkpoint's state."""
    table = f"rows_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (n bigint)")
    total = 120_000
    strategy = {"type": "fixed-delay", "attempts": 50, "delay_ms": 200}
    job = (Stream.from_generator("connector_udfs:numbers", total_rows=total, batch_size=200, name="numbers")
           .map("connector_udfs:slower_identity", name="slow")
           .to_postgres(postgres_server.dsn, table, name="pg").parallelism(2)
           .to_job_graph("pg-down", default_parallelism=2, shippable=True, checkpoint_interval_ms=200,
                         restart_strategy=strategy))

    def rows_in_table():
        with psycopg.connect(postgres_server.dsn) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    job_id = cluster.submit(job)
    wait_until(lambda: rows_in_table() > 0, 60, "committed rows")
    assert cluster.job(job_id)["state"] == "RUNNING", "the job ended before the database stopped; slow it down"
    postgres_server.pause()
    try:
        wait_until(lambda: cluster.job(job_id)["restarts"] >= 1, 30, "a restart after the database stopped")
        time.sleep(1.0)
    finally:
        postgres_server.resume()
    assert cluster.wait(job_id, 150) == "FINISHED", cluster.job(job_id).get("failure")
    info = cluster.job(job_id)
    assert info["restarts"] >= 1
    with psycopg.connect(postgres_server.dsn) as conn:
        got = sorted(r[0] for r in conn.execute(f"SELECT n FROM {table}").fetchall())
    assert len(got) == total and got == list(range(total))


def test_a_job_restored_from_another_jobs_checkpoint_writes_the_table_exactly(cluster, postgres_server):
    """A job submitted with restore_from: the PostgreSQL sink's progress rows of the first job
    (same output lineage) must not make it skip the rows of its own checkpoints, and its
    checkpoint ids go on from the restored one."""
    table = f"restored_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (n bigint)")
    total = 30_000

    def job():
        return (Stream.from_generator("connector_udfs:numbers", total_rows=total, batch_size=100, name="numbers")
                .map("connector_udfs:slow_identity", name="slow")
                .to_postgres(postgres_server.dsn, table, name="pg")
                .to_job_graph("pg-restored", default_parallelism=1, shippable=True, checkpoint_interval_ms=200))

    first = cluster.submit(job())
    wait_until(lambda: (cluster.checkpoints(first)["counts"] or {}).get("completed", 0) >= 3, 60,
               "three completed checkpoints")
    assert cluster.cancel(first) == "CANCELED"
    second = cluster.submit_restored(job(), first)
    assert cluster.wait(second, 120) == "FINISHED", cluster.job(second).get("failure")
    assert cluster.job(second)["restored_from"]["job_id"] == first
    # its checkpoints go on from the one it restored (as Flink's), they do not start at 1 again
    restored_id = cluster.job(second)["restored_from"]["checkpoint_id"]
    ids = [c["id"] for c in cluster.checkpoints(second)["history"]]
    assert ids and min(ids) == restored_id + 1, (restored_id, ids)
    with psycopg.connect(postgres_server.dsn) as conn:
        got = sorted(r[0] for r in conn.execute(f"SELECT n FROM {table}").fetchall())
    assert len(got) == total and got == list(range(total))

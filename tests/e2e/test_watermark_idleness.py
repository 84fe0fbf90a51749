"""Idleness reaches downstream (WatermarkStatus): a Kafka source at parallelism 2 whose second
subtask's partitions receive no record, into a keyed event-time window.

Without idleness the window tasks wait for the idle subtask's watermark for ever and no
window fires while the job runs. With it, that subtask announces idle once
``idle_timeout_ms`` passed, the windows leave its channel out and fire by the other
subtask's watermark, which a trickle of records keeps active (so what fires is the
exclusion of the idle channel, not the "every channel idle" flush). The fired windows are
compared with a pyarrow reference; on a LocalCluster (channels between worker processes)
checkpoints keep completing meanwhile: an idle channel still delivers its barriers.
"""

import asyncio
import threading
import time
import uuid

import orjson
import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.runtime.embedded import run_job_graph_async
from sabot.testing import assert_tables_equal
from tests.conftest import started_local_cluster

pytestmark = pytest.mark.timeout(180)

SCHEMA = pa.schema([("user", pa.string()), ("ts", pa.int64()), ("amount", pa.float64())])
RECORDS = 3000
WINDOW_MS = 1000
TRICKLE_FROM = 1_000_000  # the trickle's event times: past every window of the main records


def produce_main(kafka_cluster, topic):
    """Records in partitions 0 and 2 only (source subtask 0 of 2); 1 and 3 (subtask 1) stay empty."""
    rows = {"user": [f"u{i % 7}" for i in range(RECORDS)], "ts": [i * 5 for i in range(RECORDS)],
            "amount": [(i % 13) / 4 for i in range(RECORDS)]}  # quarters: exact sums in any order
    table = pa.table(rows, schema=SCHEMA)
    kafka_cluster.produce(topic, [orjson.dumps(r) for r in table.to_pylist()],
                          partitions=[2 * (i % 2) for i in range(RECORDS)])
    return table


class Trickle:
    """A record every 50 ms into partition 0 (user "trickle"): source subtask 0 never goes idle."""

    def __init__(self, bootstrap, topic):
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        self.topic = topic
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        ts = TRICKLE_FROM
        while not self.stop.wait(0.05):
            self.producer.produce(self.topic, orjson.dumps({"user": "trickle", "ts": ts, "amount": 0.0}), partition=0)
            self.producer.poll(0)
            ts += 100

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.producer.flush(5)


def expected_windows(table):
    start = pa.array([t - t % WINDOW_MS for t in table.column("ts").to_pylist()], pa.int64())
    return (table.append_column("window_start", start)
            .group_by(["user", "window_start"]).aggregate([("amount", "count"), ("amount", "sum")])
            .select(["user", "window_start", "amount_count", "amount_sum"]))


def fired_windows(kafka_cluster, topic):
    rows = [orjson.loads(v) for *_, v, _ in kafka_cluster.read(topic)]
    rows = [r for r in rows if r["user"] != "trickle"]
    return pa.Table.from_pylist(rows).select(["user", "window_start", "amount_count", "amount_sum"]) if rows else None


def idle_job(bootstrap, source_topic, out_topic, **graph_config):
    return (Stream.from_kafka(bootstrap, source_topic, format="json", schema=SCHEMA, event_time="ts",
                              idle_timeout_ms=300, batch_size=500, name="source").parallelism(2)
            .key_by("user").window(WINDOW_MS, {"amount": ["count", "sum"]}, name="window").parallelism(2)
            .to_kafka(bootstrap, out_topic, key="user", delivery="at-least-once", name="sink").parallelism(1)
            .to_job_graph("idleness", default_parallelism=2, **graph_config))


def topics(kafka_cluster):
    run = uuid.uuid4().hex[:8]
    names = (f"idle-in-{run}", f"idle-out-{run}")
    for name in names:
        kafka_cluster.create_topic(name, partitions=4)
    return names


def wait_for_windows(kafka_cluster, out_topic, expected, timeout, still_running):
    deadline = time.monotonic() + timeout
    while True:
        got = fired_windows(kafka_cluster, out_topic)
        if got is not None and got.num_rows >= expected.num_rows:
            return got
        still_running()
        assert time.monotonic() < deadline, (
            f"{0 if got is None else got.num_rows} of {expected.num_rows} windows fired within {timeout} s: "
            "the idle source subtask holds event time back")
        time.sleep(0.2)


def test_windows_fire_by_event_time_while_one_source_subtask_is_idle_in_process(kafka_cluster):
    source_topic, out_topic = topics(kafka_cluster)
    produced = produce_main(kafka_cluster, source_topic)
    expected = expected_windows(produced)
    job = idle_job(kafka_cluster.bootstrap, source_topic, out_topic)

    async def body():
        running = asyncio.ensure_future(run_job_graph_async(job))

        def still_running():
            if running.done():
                running.result()  # a failure raises here
                raise AssertionError("the unbounded job ended")

        try:
            with Trickle(kafka_cluster.bootstrap, source_topic):
                return await asyncio.to_thread(wait_for_windows, kafka_cluster, out_topic, expected, 30,
                                               still_running)
        finally:
            running.cancel()
            try:
                await running
            except asyncio.CancelledError:
                pass

    got = asyncio.run(body())
    assert_tables_equal(got, expected, sort_by=["user", "window_start"], check_types=False)


@pytest.fixture
def cluster(tmp_path):
    with started_local_cluster(checkpoint_dir=str(tmp_path / "checkpoints")) as made:
        yield made


def test_windows_fire_and_checkpoints_complete_with_an_idle_subtask_on_a_local_cluster(cluster, kafka_cluster):
    source_topic, out_topic = topics(kafka_cluster)
    produced = produce_main(kafka_cluster, source_topic)
    expected = expected_windows(produced)
    job_id = cluster.submit(idle_job(kafka_cluster.bootstrap, source_topic, out_topic, shippable=True,
                                     checkpoint_interval_ms=200))

    def still_running():
        info = cluster.job(job_id)
        assert info["state"] not in ("FAILED", "FINISHED", "CANCELED"), f"job {info['state']}: {info.get('failure')}"

    def completed():
        return (cluster.checkpoints(job_id)["counts"] or {}).get("completed", 0)

    try:
        with Trickle(kafka_cluster.bootstrap, source_topic):
            got = wait_for_windows(kafka_cluster, out_topic, expected, 60, still_running)
            # the windows fired, so subtask 1 is idle now: checkpoints still align across its channels
            before = completed()
            deadline = time.monotonic() + 30
            while completed() < before + 2:
                still_running()
                assert time.monotonic() < deadline, f"no checkpoint completed after {before} while a source was idle"
                time.sleep(0.1)
    finally:
        cluster.cancel(job_id)
    assert_tables_equal(got, expected, sort_by=["user", "window_start"], check_types=False)
    tasks = cluster.job(job_id)["tasks"]
    assert {t["node_id"] for t in tasks} == set(cluster.node_ids), "the job should span both workers"

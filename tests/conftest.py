"""Shared fixtures: event-loop flavours, user-code modules, local clusters (real processes)."""

import asyncio
import contextlib
import os
import sys
import textwrap
import time
import uuid

import pytest

# Functions a test job ships to workers. They live in a module written to a temp
# directory (put on sys.path here and on the workers' path), as user code would.
USER_MODULE_SOURCE = textwrap.dedent(
    '''
    import time

    import numpy as np
    import pyarrow as pa


    def slow_identity(batch):
        time.sleep(0.02)
        return batch


    def fail_on_big_value(batch):
        if batch.num_rows and max(batch.column("value").to_pylist()) > 0.999:
            raise ZeroDivisionError("value too big for this test")
        return batch


    def counter_rows(offset, num_rows):
        """Deterministic keyed rows: key = row % 7, value = row."""
        rows = np.arange(offset, offset + num_rows, dtype=np.int64)
        return pa.RecordBatch.from_arrays([pa.array(rows % 7), pa.array(rows.astype("float64"))],
                                          names=["key", "value"])


    def slow_rows(offset, num_rows):
        time.sleep(0.01)
        return counter_rows(offset, num_rows)
    '''
)


def run_on(loop_kind, coro, timeout):
    """Run ``coro`` on a fresh loop of the given kind, bounded by ``timeout`` seconds.

    As uvloop's own tests do, the test fails if the loop's exception handler was called
    (an exception nobody awaited: a background task that crashed, a callback that raised).
    """
    unhandled = []

    async def bounded():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            await asyncio.sleep(0)  # let callbacks scheduled by the last step run
            if unhandled:
                details = "; ".join(f"{c.get('message')}: {c.get('exception')!r}" for c in unhandled)
                raise AssertionError(f"the event loop reported {len(unhandled)} unhandled error(s): {details}")

    if loop_kind == "uvloop":
        import uvloop

        return uvloop.run(bounded())
    return asyncio.run(bounded())


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request):
    """Run each coordinator test on the default asyncio loop and on uvloop."""
    return request.param


@pytest.fixture
def arun(loop_kind):
    """``arun(coro, timeout=30)`` runs an async test body on ``loop_kind``, with a timeout."""

    def run(coro, timeout=30):
        return run_on(loop_kind, coro, timeout)

    return run


@pytest.fixture(scope="session")
def user_module(tmp_path_factory):
    """Name of an importable module of test user functions (see USER_MODULE_SOURCE)."""
    directory = tmp_path_factory.mktemp("usercode")
    name = f"sabot_test_udfs_{uuid.uuid4().hex[:8]}"
    (directory / f"{name}.py").write_text(USER_MODULE_SOURCE)
    sys.path.insert(0, str(directory))
    yield name
    sys.path.remove(str(directory))
    sys.modules.pop(name, None)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def pid_alive():
    """``pid_alive(pid)``: is that process still running (zombies count as dead)?"""
    return _pid_alive


@contextlib.contextmanager
def started_local_cluster(**coordinator_config):
    """A started LocalCluster of 2 workers x 2 slots; afterwards, every worker process it
    started must be gone."""
    from sabot.cluster.local import LocalCluster

    cluster = LocalCluster(workers=2, slots_per_worker=2, coordinator_config=coordinator_config)
    pids = []
    try:
        cluster.start()
        pids = [p for p in cluster.worker_pids if p]
        yield cluster
    finally:
        pids += [p.pid for p in cluster._procs if p is not None]
        cluster.close()
        leftover = [p for p in set(pids) if _pid_alive(p)]
        assert not leftover, f"worker processes left running: {leftover}"


def wait_until(predicate, timeout, what):
    """Poll ``predicate`` every 10 ms until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def local_cluster(user_module):
    """A LocalCluster of 2 workers x 2 slots; asserts every worker process is gone afterwards."""
    with started_local_cluster(slot_wait_timeout_s=10) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_server():
    """A private PostgreSQL server for the session (see :class:`sabot.testing.PostgresServer`),
    stopped and its directory deleted at the end."""
    from sabot.testing import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_table(postgres_server):
    """A fresh table name for one test (dropped afterwards, with the sinks' progress table rows)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def kafka_cluster():
    """librdkafka's mock Kafka cluster in this process, or the real one at $SABOT_KAFKA_BOOTSTRAP
    (see :class:`sabot.testing.KafkaTestCluster`)."""
    from sabot.testing import KafkaTestCluster

    cluster = KafkaTestCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kafka_topic(kafka_cluster):
    """A factory of fresh topic names (4 partitions each)."""

    def make(prefix="t"):
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        kafka_cluster.create_topic(name, partitions=4)
        return name

    return make


def wait_rescale(client, job_id, rescale_id, timeout=60):
    """Poll a job until its live rescale ``rescale_id`` is no longer in progress; the job's
    detail and the rescale's record. The job must stay RUNNING meanwhile."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        detail = client.job(job_id)
        record = next((r for r in detail["rescales"] if r["rescale_id"] == rescale_id), None)
        if record and record["state"] != "IN_PROGRESS":
            return detail, record
        assert detail["state"] == "RUNNING", \
            f"job left RUNNING during the rescale: {detail['state']} {detail.get('failure')}"
        assert time.monotonic() < deadline, f"rescale {rescale_id} did not complete: {record}"
        time.sleep(0.02)


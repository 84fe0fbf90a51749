"""ClusterCoordinator with in-process workers (real runtime, real HTTP on 127.0.0.1).

Every test runs on the default asyncio loop and on uvloop (the ``arun`` fixture)
and is bounded in time.
"""

import asyncio
import contextlib
import time

import aiohttp
import pyarrow as pa
import pytest

from sabot.api.stream import Stream
from sabot.cluster import protocol
from sabot.cluster.coordinator import ClusterCoordinator
from sabot.cluster.http_api import build_coordinator_app, openapi_document
from sabot.cluster.worker import Worker
from sabot.testing import ManualClock, assert_tables_equal

pytestmark = pytest.mark.timeout(90)


# -- helpers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def cluster(workers=2, slots=2, token=None, **config):
    coordinator = ClusterCoordinator(dict(port=0, token=token, **config))
    await coordinator.start()
    started = []
    try:
        for _ in range(workers):
            started.append(await Worker(coordinator.url, num_slots=slots, token=token).start())
        yield coordinator, started
    finally:
        for w in started:
            await w.stop()
        await coordinator.stop()


async def http(method, url, json=None, data=None, token=None):
    headers = protocol.auth_headers(token)
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.request(method, url, json=json, data=data) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()


async def upload_tables(url, job_graph):
    """Upload the in-memory tables ``job_graph`` refers to, as SabotClient.submit does."""
    for table_id, table in job_graph.tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        status, _ = await http("PUT", f"{url}/tables/{table_id}", data=sink.getvalue().to_pybytes())
        assert status == 201


async def until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def keyed_table(n=20_000):
    key = pa.array([(i * 7919) % 97 for i in range(n)], pa.int64())
    value = pa.array([float(i % 1000) / 1000.0 for i in range(n)])
    return pa.table({"key": key, "value": value})


def keyed_count_job(parallelism, table=None, name="keyed-count"):
    table = keyed_table() if table is None else table
    stream = (Stream.from_table(table, batch_size=1000)
              .key_by("key").aggregate({"value": ["count", "sum"]}).collect(name="counts"))
    return table, stream.to_job_graph(name, default_parallelism=parallelism, shippable=True)


def reference_counts(table):
    """The keyed count computed by pyarrow alone (independent of Sabot)."""
    out = table.group_by("key").aggregate([("value", "count"), ("value", "sum")])
    return out.select(["key", "value_count", "value_sum"])


def unbounded_job(user_module, parallelism=2, name="endless", **config):
    stream = (Stream.from_generator(f"{user_module}:slow_rows", total_rows=None, batch_size=100)
              .map(f"{user_module}:slow_identity").collect(name="out"))
    return stream.to_job_graph(name, default_parallelism=parallelism, shippable=True, **config)


# -- jobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_keyed_count_matches_pyarrow_reference(arun, parallelism):
    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            table, job = keyed_count_job(parallelism)
            job_id = await c.submit_stream_job(job)
            assert await c.wait_for_job(job_id, 30) == "FINISHED", c.jobs[job_id].failure
            graph = c.active_jobs[job_id]
            summary = graph.get_metrics_summary()
            assert summary["total_tasks"] == len(graph.tasks) == 3 * parallelism + (0 if parallelism == 1 else 0)
            assert summary["total_rows_processed"] >= table.num_rows
            nodes = {t.node_id for t in graph.tasks.values()}
            assert nodes <= {w.node_id for w in workers}
            if parallelism > 1:
                assert len(nodes) == 2, "the subtasks should be spread over both workers"
            # each worker lists exactly the tasks the coordinator placed on it
            for w in workers:
                status, listing = await http("GET", f"{w.url}/tasks")
                assert status == 200
                expected = {t.task_id for t in graph.tasks.values() if t.node_id == w.node_id}
                assert {t["task_id"] for t in listing["tasks"]} == expected
                assert all(t["state"] == "FINISHED" for t in listing["tasks"])
            result = await c.job_result(job_id)
            assert_tables_equal(result.table("counts"), reference_counts(table))
            # the coordinator holds the result now: the workers let go of the job's tasks
            await until(lambda: not any(w.task_manager.tasks for w in workers), what="workers released the job")
            assert (await c.job_result(job_id)) is result
            assert c.slot_pool.free_slots == c.slot_pool.total_slots == 4
            status, info = await http("GET", f"{c.url}/jobs/{job_id}")
            assert status == 200 and info["state"] == "FINISHED"
            assert [op["parallelism"] for op in info["operators"]] == [parallelism] * len(info["operators"])
            assert all(t["node_id"] and t["slot_id"] for t in info["tasks"])

    arun(body(), 60)


def test_job_result_over_http_is_arrow(arun):
    async def body():
        async with cluster(workers=1, slots=2) as (c, _):
            table, job = keyed_count_job(2)
            job_id = await c.submit_stream_job(job)
            await c.wait_for_job(job_id, 30)
            status, info = await http("GET", f"{c.url}/jobs/{job_id}/result")
            assert status == 200 and info["tables"]["counts"]["num_rows"] == 97
            status, data = await http("GET", f"{c.url}/jobs/{job_id}/result/counts")
            assert status == 200
            got = pa.ipc.open_stream(data).read_all()
            assert_tables_equal(got, reference_counts(table))
            status, err = await http("GET", f"{c.url}/jobs/{job_id}/result/nope")
            assert status == 404 and "counts" in err["error"]

    arun(body())


def test_second_job_runs_while_first_is_running(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, _):
            endless = await c.submit_stream_job(unbounded_job(user_module, 2))
            await until(lambda: c.jobs[endless].state.value == "RUNNING", what="RUNNING")
            table, job = keyed_count_job(2)
            second = await c.submit_stream_job(job)
            assert await c.wait_for_job(second, 30) == "FINISHED"
            assert_tables_equal((await c.job_result(second)).table("counts"), reference_counts(table))
            assert c.jobs[endless].state.value == "RUNNING"
            assert await c.cancel_job(endless) == "CANCELED"

    arun(body(), 60)


def test_cancel_running_job_frees_all_slots(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            job_id = await c.submit_stream_job(unbounded_job(user_module, 4))
            await until(lambda: c.jobs[job_id].state.value == "RUNNING", what="RUNNING")
            assert c.slot_pool.free_slots == 0
            status, answer = await http("POST", f"{c.url}/jobs/{job_id}/cancel")
            assert status == 200 and answer["state"] == "CANCELED"
            assert c.slot_pool.free_slots == c.slot_pool.total_slots == 4
            assert all(t.state.name == "CANCELED" for t in c.active_jobs[job_id].tasks.values())
            for w in workers:  # the tasks really stopped on the workers
                _, listing = await http("GET", f"{w.url}/tasks")
                assert listing["tasks"] and all(t["state"] in ("CANCELED", "FAILED") for t in listing["tasks"])
            status, err = await http("POST", f"{c.url}/jobs/{job_id}/cancel")
            assert status == 409 and "CANCELED" in err["error"]

    arun(body())


def test_task_failure_fails_job_with_error_and_traceback(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, _):
            table = pa.table({"key": [1, 2, 3] * 100, "value": [0.1, 0.5, 1.0] * 100})
            stream = (Stream.from_table(table, batch_size=50)
                      .map(f"{user_module}:fail_on_big_value", name="fragile").collect())
            job_id = await c.submit_stream_job(stream.to_job_graph("fails", default_parallelism=2, shippable=True))
            assert await c.wait_for_job(job_id, 30) == "FAILED"
            failure = c.jobs[job_id].failure
            assert "ZeroDivisionError" in failure["error"] and "fragile" in failure["error"]
            assert "Traceback" in failure["traceback"] or "ZeroDivisionError" in failure["traceback"]
            assert c.slot_pool.free_slots == c.slot_pool.total_slots
            status, info = await http("GET", f"{c.url}/jobs/{job_id}")
            assert info["state"] == "FAILED" and "ZeroDivisionError" in info["failure"]["error"]
            status, err = await http("GET", f"{c.url}/jobs/{job_id}/result")
            assert status == 409 and "ZeroDivisionError" in err["error"]

    arun(body())


# -- slots ---------------------------------------------------------------------------------


def test_job_waits_for_slots_and_starts_when_a_worker_joins(arun):
    async def body():
        async with cluster(workers=0) as (c, _):
            table, job = keyed_count_job(2)
            job_id = await c.submit_stream_job(job)
            assert c.jobs[job_id].state.value == "WAITING_FOR_SLOTS"
            status, info = await http("GET", f"{c.url}/jobs/{job_id}")
            assert info["state"] == "WAITING_FOR_SLOTS"
            worker = await Worker(c.url, num_slots=2).start()
            try:
                assert await c.wait_for_job(job_id, 30) == "FINISHED"
                assert_tables_equal((await c.job_result(job_id)).table("counts"), reference_counts(table))
            finally:
                await worker.stop()

    arun(body())


def test_job_fails_after_slot_wait_timeout(arun, user_module):
    async def body():
        async with cluster(workers=1, slots=2, slot_wait_timeout_s=0.5) as (c, _):
            busy = await c.submit_stream_job(unbounded_job(user_module, 2))
            _, job = keyed_count_job(1)
            waiting = await c.submit_stream_job(job)
            assert c.jobs[waiting].state.value == "WAITING_FOR_SLOTS"
            assert await c.wait_for_job(waiting, 5) == "FAILED"
            error = c.jobs[waiting].failure["error"]
            assert "waited 0.5 s" in error and "1 free slots" in error and "0 were free" in error
            assert c.jobs[busy].state.value == "RUNNING"
            await c.cancel_job(busy)

    arun(body())


def test_job_larger_than_cluster_is_refused(arun):
    async def body():
        async with cluster(workers=1, slots=2) as (c, _):
            _, job = keyed_count_job(4)
            status, err = await http("POST", f"{c.url}/jobs/submit", json=job.to_dict())
            assert status == 400
            assert "needs 4 slots" in err["error"] and "has 2 slots" in err["error"]
            assert not c.jobs

    arun(body())


def test_cancel_of_a_waiting_job(arun):
    async def body():
        async with cluster(workers=0) as (c, _):
            _, job = keyed_count_job(1)
            job_id = await c.submit_stream_job(job)
            assert c.jobs[job_id].state.value == "WAITING_FOR_SLOTS"
            await until(lambda: c.slot_pool.pending_requests == len(c.jobs[job_id].exec_graph.tasks),
                        what="the job's slot requests queued")
            assert await c.cancel_job(job_id) == "CANCELED"
            assert c.slot_pool.pending_requests == 0 and c.overview()["pending_jobs"] == 0

    arun(body())


# -- bad input -----------------------------------------------------------------------------


def test_bad_submissions_get_4xx_and_running_jobs_are_unaffected(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, _):
            table, good = keyed_count_job(2, table=keyed_table(5000))
            running = await c.submit_stream_job(unbounded_job(user_module, 1))
            url = f"{c.url}/jobs/submit"

            status, err = await http("POST", url, data=b"{not json")
            assert status == 400 and "malformed JSON" in err["error"]
            status, err = await http("POST", url, data=b"")
            assert status == 400 and "empty" in err["error"]
            status, err = await http("POST", url, json=[1, 2])
            assert status == 400 and "JSON object" in err["error"]
            status, err = await http("POST", url, json={"hello": "world"})
            assert status == 400 and "'operators'" in err["error"]
            status, err = await http("POST", url, json={"operators": "x", "job_name": "j"})
            assert status == 400 and "not a valid job graph" in err["error"]

            # a cycle: the validate() message names the operators on it
            chain = (Stream.from_table(table).map(f"{user_module}:slow_identity", name="m1")
                     .map(f"{user_module}:slow_identity", name="m2").collect())
            cyclic = chain.to_job_graph("cyclic", chaining=False).to_dict()
            a, b = (next(o for o in cyclic["operators"] if o["name"] == n) for n in ("m1", "m2"))
            assert b["operator_id"] in a["downstream_ids"]
            a["upstream_ids"].append(b["operator_id"])
            b["downstream_ids"].append(a["operator_id"])
            cyclic["edges"].append({"upstream_id": b["operator_id"], "downstream_id": a["operator_id"],
                                    "partitioning": None})
            status, err = await http("POST", url, json=cyclic)
            assert status == 400 and "invalid job graph" in err["error"]
            assert a["name"] in err["error"] and b["name"] in err["error"]

            # an operator reference that cannot be imported
            bad = Stream.from_table(table).map("no_such_module_xyz:fn", name="broken").collect()
            status, err = await http("POST", url, json=bad.to_job_graph("bad").to_dict())
            assert status == 400 and "no_such_module_xyz" in err["error"] and "broken" in err["error"]
            # the coordinator does not import user modules: a missing function in a module that
            # exists fails the job when the workers import it, naming the function
            bad = Stream.from_table(table).map(f"{user_module}:missing_fn", name="broken2").collect() \
                .to_job_graph("bad2", restart_strategy={"type": "none"})
            await upload_tables(c.url, bad)
            status, answer = await http("POST", url, json=bad.to_dict())
            assert status == 201
            assert await c.wait_for_job(answer["job_id"], 30) == "FAILED"
            assert "missing_fn" in c.jobs[answer["job_id"]].failure["error"]
            # a lambda cannot be shipped
            local = Stream.from_table(table).map(lambda b: b, name="lam").collect()
            status, err = await http("POST", url, json=local.to_job_graph("lam").to_dict())
            assert status == 400 and "lam" in err["error"] and "lambda" in err["error"]

            status, err = await http("GET", f"{c.url}/jobs/does-not-exist")
            assert status == 404 and "does-not-exist" in err["error"]
            status, err = await http("POST", f"{c.url}/jobs/does-not-exist/cancel")
            assert status == 404
            status, err = await http("GET", f"{c.url}/no/such/route")
            assert status == 404 and "no route" in err["error"]
            status, err = await http("DELETE", f"{c.url}/jobs")
            assert status == 405 and "error" in err

            # the coordinator still serves, the running job is untouched, a good job runs
            assert c.jobs[running].state.value == "RUNNING"
            finished = await c.submit_stream_job(good)
            assert await c.wait_for_job(finished, 30) == "FINISHED"
            status, err = await http("POST", f"{c.url}/jobs/{finished}/cancel")
            assert status == 409 and "FINISHED" in err["error"]
            assert_tables_equal((await c.job_result(finished)).table("counts"), reference_counts(table))
            assert c.jobs[running].state.value == "RUNNING"
            await c.cancel_job(running)

    arun(body(), 60)


def test_worker_registration_errors(arun):
    async def body():
        async with cluster(workers=1) as (c, (worker,)):
            url = f"{c.url}/workers/register"
            base = {"node_id": "w9", "host": "127.0.0.1", "port": 9999, "data_host": "127.0.0.1",
                    "data_port": 9998, "num_slots": 2}
            for bad, needle in [({"num_slots": 0}, "num_slots"), ({"num_slots": -3}, "num_slots"),
                                ({"num_slots": "two"}, "num_slots"), ({"num_slots": 2.5}, "num_slots"),
                                ({"cpu_cores_per_slot": 0}, "cpu_cores_per_slot"),
                                ({"memory_mb_per_slot": -1}, "memory_mb_per_slot"),
                                ({"port": 70000}, "port"), ({"node_id": ""}, "node_id")]:
                status, err = await http("POST", url, json={**base, **bad})
                assert status == 400 and needle in err["error"], (bad, err)
            status, err = await http("POST", url, json={k: v for k, v in base.items() if k != "num_slots"})
            assert status == 400 and "missing 'num_slots'" in err["error"]
            status, err = await http("POST", url, data=b"[[")
            assert status == 400 and "malformed JSON" in err["error"]
            # registering twice: same id, or same address under another id
            status, err = await http("POST", url, json={**base, "node_id": worker.node_id})
            assert status == 409 and "already registered" in err["error"]
            status, err = await http("POST", url, json={**base, "port": worker.port})
            assert status == 409 and worker.node_id in err["error"]
            assert set(c.nodes) == {worker.node_id} and c.slot_pool.total_slots == 2
            # the websocket of an unregistered node is refused
            status, err = await http("GET", f"{c.url}/workers/nobody/ws")
            assert status == 404

    arun(body())


# -- failure detection ---------------------------------------------------------------------


def test_missed_heartbeats_mark_node_lost(arun):
    async def body():
        clock = ManualClock()
        c = ClusterCoordinator({"port": 0, "heartbeat_interval_s": 3600, "heartbeat_timeout_s": 7200}, clock=clock)
        c.registry.heartbeat_timeout_s = 0.5  # judged by check_heartbeats() with the manual clock only
        await c.start()
        try:
            c.register_worker({"node_id": "a", "host": "127.0.0.1", "port": 1, "data_host": "127.0.0.1",
                               "data_port": 2, "num_slots": 3})
            c.register_worker({"node_id": "b", "host": "127.0.0.1", "port": 3, "data_host": "127.0.0.1",
                               "data_port": 4, "num_slots": 1})
            assert c.slot_pool.total_slots == 4
            await clock.advance(0.4)
            c.registry.heard_from("b")
            assert c.check_heartbeats() == []
            await clock.advance(0.2)  # a: 0.6 s silent, b: 0.2 s
            assert c.check_heartbeats() == ["a"]
            assert set(c.nodes) == {"b"} and c.slot_pool.total_slots == 1
            assert "no heartbeat for 0.60 s" in c.registry.lost["a"].lost_reason
        finally:
            await c.stop()

    arun(body())


def test_dropped_worker_connection_is_detected_fast_and_fails_its_job(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            job_id = await c.submit_stream_job(unbounded_job(user_module, 2, restart_strategy={"type": "none"}))
            await until(lambda: c.jobs[job_id].state.value == "RUNNING", what="RUNNING")
            victim = workers[1]
            # drop the connection without a goodbye, as a killed process would
            start = time.monotonic()
            victim._ws._response.connection.transport.abort()
            assert await c.wait_for_job(job_id, 1.0) == "FAILED"  # the loss was seen at once
            assert time.monotonic() - start < 1.0
            assert victim.node_id in c.jobs[job_id].failure["error"]
            assert "lost" in c.jobs[job_id].failure["error"]
            assert c.registry.losses == 1 and c.overview()["worker_losses_total"] == 1
            # the dropped worker cancels its old attempts and rejoins with its slots
            await until(lambda: victim.joins == 2 and victim.node_id in c.nodes, what="the worker rejoined")
            assert all(t.state.is_terminal for t in victim.task_manager.tasks.values())
            assert c.slot_pool.total_slots == 4 and c.slot_pool.free_slots == 4

    arun(body())


# -- security ------------------------------------------------------------------------------


def test_token_required_on_every_request(arun):
    async def body():
        async with cluster(workers=1, token="s3cret") as (c, (worker,)):
            for url in (f"{c.url}/health", f"{c.url}/jobs", f"{worker.url}/tasks"):
                status, err = await http("GET", url)
                assert status == 401 and "token" in err["error"]
                status, _ = await http("GET", url, token="wrong")
                assert status == 401
                status, _ = await http("GET", url, token="s3cret")
                assert status == 200
            status, _ = await http("POST", f"{c.url}/jobs/submit", json={})
            assert status == 401
            with pytest.raises(protocol.ClusterError, match="401"):
                await Worker(c.url, num_slots=1, token="wrong").start()
            assert list(c.nodes) == [worker.node_id]

    arun(body())


def test_non_loopback_binding_requires_token(monkeypatch):
    monkeypatch.delenv("SABOT_TOKEN", raising=False)
    with pytest.raises(protocol.InsecureBinding, match="token"):
        ClusterCoordinator({"host": "0.0.0.0"})
    with pytest.raises(protocol.InsecureBinding, match="token"):
        Worker("http://127.0.0.1:1", host="0.0.0.0")
    ClusterCoordinator({"host": "0.0.0.0", "token": "t"})
    monkeypatch.setenv("SABOT_TOKEN", "from-env")
    assert ClusterCoordinator({"host": "0.0.0.0"}).config.token == "from-env"


# -- observability -------------------------------------------------------------------------


def test_overview_nodes_slots_jobs_and_metrics(arun):
    async def body():
        async with cluster(workers=2, slots=2) as (c, workers):
            _, job = keyed_count_job(2)
            job_id = await c.submit_stream_job(job)
            await c.wait_for_job(job_id, 30)
            status, health = await http("GET", f"{c.url}/health")
            assert status == 200 and health["status"] == "ok" and health["workers"] == 2
            _, overview = await http("GET", f"{c.url}/overview")
            assert overview["workers"] == 2 and overview["total_slots"] == 4 and overview["jobs"]["FINISHED"] == 1
            _, nodes = await http("GET", f"{c.url}/nodes")
            assert {n["node_id"] for n in nodes["nodes"]} == {w.node_id for w in workers}
            assert all(n["state"] == "CONNECTED" and n["free_slots"] == 2 for n in nodes["nodes"])
            _, slots = await http("GET", f"{c.url}/slots")
            assert slots["total_slots"] == 4 and len(slots["slots"]) == 4
            _, jobs = await http("GET", f"{c.url}/jobs")
            assert [j["job_id"] for j in jobs["jobs"]] == [job_id]
            status, text = await http("GET", f"{c.url}/metrics")
            text = text.decode()
            assert status == 200
            assert "sabot_workers 2.0" in text and "sabot_slots_total 4.0" in text
            assert 'sabot_jobs{state="FINISHED"} 1.0' in text
            assert "sabot_job_submit_to_running_seconds_count 1.0" in text
            assert 'sabot_http_requests_total{route="/health",status="200"} 1.0' in text

    arun(body())


def test_openapi_document_lists_every_route(arun):
    async def body():
        async with cluster(workers=0) as (c, _):
            status, doc = await http("GET", f"{c.url}/openapi.json")
            assert status == 200 and doc["openapi"].startswith("3.")
            app = build_coordinator_app(c)
            served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
            documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
            assert served == documented
            for path in ("/health", "/overview", "/nodes", "/slots", "/jobs/submit", "/jobs", "/jobs/{job_id}",
                         "/jobs/{job_id}/cancel", "/metrics", "/openapi.json"):
                assert path in doc["paths"]
            assert doc == openapi_document()

    arun(body())


def test_same_graph_submitted_twice_runs_twice(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2) as (c, _):
            endless = unbounded_job(user_module, 1)
            first = await c.submit_stream_job(endless)
            second = await c.submit_stream_job(endless.to_dict())
            assert first == endless.job_id and second != first
            tasks = [set(c.active_jobs[j].tasks) for j in (first, second)]
            assert not tasks[0] & tasks[1]
            await until(lambda: c.jobs[first].state.value == c.jobs[second].state.value == "RUNNING",
                        what="both RUNNING")
            await c.cancel_job(first)
            await c.cancel_job(second)
            table, job = keyed_count_job(2)
            ids = [await c.submit_stream_job(job), await c.submit_stream_job(job)]
            for job_id in ids:
                assert await c.wait_for_job(job_id, 30) == "FINISHED"
                assert_tables_equal((await c.job_result(job_id)).table("counts"), reference_counts(table))

    arun(body(), 60)


def test_operator_bigger_than_any_slot_is_refused(arun):
    async def body():
        async with cluster(workers=1, slots=2) as (c, _):
            _, job = keyed_count_job(1)
            next(iter(job.operators.values())).memory_mb = 10 ** 6
            status, err = await http("POST", f"{c.url}/jobs/submit", json=job.to_dict())
            assert status == 400
            assert "1000000 MB" in err["error"] and "1024 MB" in err["error"]

    arun(body())

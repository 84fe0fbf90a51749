"""The dashboard's HTTP side: login and session cookie, 401 without the token, and the JSON
routes it reads (plan, subtasks, throughput, key groups, exceptions), on a real coordinator
with in-process workers. The page itself is tested in a browser: tests/e2e/test_dashboard_browser.py."""

import asyncio
import contextlib
import time

import aiohttp
import pytest

from sabot import Stream
from sabot.cluster import protocol
from sabot.cluster.coordinator import ClusterCoordinator
from sabot.cluster.http_api import openapi_document
from sabot.cluster.worker import Worker

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-token"


@contextlib.asynccontextmanager
async def cluster(workers=1, slots=2, token=None, **config):
    coordinator = ClusterCoordinator(dict(port=0, token=token, **config))
    await coordinator.start()
    started = []
    try:
        for _ in range(workers):
            started.append(await Worker(coordinator.url, num_slots=slots, token=token).start())
        yield coordinator
    finally:
        for w in started:
            await w.stop()
        await coordinator.stop()


async def request(session, method, url, **kwargs):
    async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp, body


async def until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate() if not asyncio.iscoroutinefunction(predicate) else await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_without_the_token_nothing_of_the_dashboard_is_served(arun):
    async def body():
        async with cluster(workers=0, token=TOKEN) as c, aiohttp.ClientSession() as s:
            for path in ("/dashboard/app.js", "/jobs", "/overview", "/jobs/x/plan", "/jobs/x/subtasks",
                         "/jobs/x/throughput", "/jobs/x/key-groups", "/jobs/x/exceptions"):
                resp, err = await request(s, "GET", c.url + path)
                assert resp.status == 401 and "token" in err["error"], path
            resp, _ = await request(s, "GET", c.url + "/")
            assert resp.status == 303 and resp.headers["Location"] == "/login"
            resp, page = await request(s, "GET", c.url + "/login")
            assert resp.status == 200 and resp.content_type == "text/html"
            assert '<form method="post" action="/login"' in page and 'name="token"' in page
            assert "app.js" not in page and TOKEN not in page
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            resp, css = await request(s, "GET", c.url + "/dashboard/style.css")  # the login page's look
            assert resp.status == 200 and resp.content_type == "text/css" and "--accent" in css
            resp, _ = await request(s, "GET", c.url + "/", cookies={"sabot_session": "forged"})
            assert resp.status == 303
            resp, _ = await request(s, "GET", c.url + "/jobs", cookies={"sabot_session": TOKEN})
            assert resp.status == 401  # the token is no session id

    arun(body())


def test_login_session_cookie_and_logout(arun):
    async def body():
        async with cluster(workers=0, token=TOKEN) as c, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            resp, page = await request(s, "POST", c.url + "/login", data={"token": "wrong"})
            assert resp.status == 401 and "Wrong token." in page and "sabot_session" not in resp.cookies
            resp, err = await request(s, "POST", c.url + "/login", json={"token": "wrong"})
            assert resp.status == 401 and err["error"] == "wrong token"
            resp, err = await request(s, "POST", c.url + "/login", json={"nope": 1})
            assert resp.status == 400
            resp, _ = await request(s, "POST", c.url + "/login", data={"token": TOKEN})
            assert resp.status == 303 and resp.headers["Location"] == "/"
            cookie = resp.cookies["sabot_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
            assert TOKEN not in cookie.value and len(cookie.value) >= 32
            assert TOKEN not in resp.headers["Set-Cookie"].replace(cookie.value, "")
            # the cookie opens the dashboard and the API
            resp, page = await request(s, "GET", c.url + "/")
            assert resp.status == 200 and '<script src="/dashboard/app.js"' in page and 'data-login="true"' in page
            resp, js = await request(s, "GET", c.url + "/dashboard/app.js")
            assert resp.status == 200 and resp.content_type == "text/javascript" and "X-Sabot-Dashboard" in js
            resp, jobs = await request(s, "GET", c.url + "/jobs")
            assert resp.status == 200 and jobs == {"jobs": []}
            resp, _ = await request(s, "GET", c.url + "/login")
            assert resp.status == 303  # logged in already
            # ... but changes need the header another site's page cannot send
            resp, err = await request(s, "POST", c.url + "/jobs/nope/checkpoints")
            assert resp.status == 403 and "X-Sabot-Dashboard" in err["error"]
            resp, err = await request(s, "POST", c.url + "/jobs/nope/checkpoints", headers={"X-Sabot-Dashboard": "1"})
            assert resp.status == 404  # authenticated: the job is what is missing
            resp, _ = await request(s, "GET", c.url + "/dashboard/nope.js")
            assert resp.status == 404
            # logging out forgets the session
            old = cookie.value
            resp, _ = await request(s, "POST", c.url + "/logout", data={})
            assert resp.status == 303 and resp.cookies["sabot_session"].value == ""
            resp, _ = await request(s, "GET", c.url + "/jobs", cookies={"sabot_session": old})
            assert resp.status == 401
            # a JSON login works as well; the bearer header still works without any cookie
            resp, answer = await request(s, "POST", c.url + "/login", json={"token": TOKEN})
            assert resp.status == 200 and answer["authenticated"] and resp.cookies["sabot_session"]["httponly"]
            async with aiohttp.ClientSession(headers=protocol.auth_headers(TOKEN)) as bearer:
                resp, _ = await request(bearer, "GET", c.url + "/")
                assert resp.status == 200
                resp, _ = await request(bearer, "POST", c.url + "/jobs/nope/cancel")
                assert resp.status == 404  # no CSRF header needed with the token itself

    arun(body())


def test_without_a_token_the_dashboard_is_open(arun):
    async def body():
        async with cluster(workers=0) as c, aiohttp.ClientSession() as s:
            resp, page = await request(s, "GET", c.url + "/")
            assert resp.status == 200 and 'data-login="false"' in page
            resp, answer = await request(s, "POST", c.url + "/login", json={"token": "anything"})
            assert resp.status == 200 and answer == {"authenticated": True, "token_required": False}
            doc = openapi_document()
            for path in ("/", "/login", "/logout", "/dashboard/{name}", "/jobs/{job_id}/plan",
                         "/jobs/{job_id}/subtasks", "/jobs/{job_id}/throughput", "/jobs/{job_id}/key-groups",
                         "/jobs/{job_id}/exceptions"):
                assert path in doc["paths"], path
            assert doc["components"]["securitySchemes"]["session"]["in"] == "cookie"

    arun(body())


def keyed_endless(user_module, parallelism=2):
    stream = (Stream.from_generator(f"{user_module}:slow_rows", total_rows=None, batch_size=200, name="rows")
              .parallelism(1)
              .key_by("key").aggregate({"value": ["count", "sum"]}, name="totals")
              .collect(name="out").parallelism(1))
    return stream.to_job_graph("keyed-endless", default_parallelism=parallelism, shippable=True)


def test_json_routes_of_a_running_job(arun, user_module):
    async def body():
        async with cluster(workers=2, slots=2, metrics_sample_interval_s=0.1, metrics_history_s=0.5) as c, \
                aiohttp.ClientSession() as s:
            job_id = await c.submit_stream_job(keyed_endless(user_module))
            await until(lambda: c.jobs[job_id].state.value == "RUNNING", what="RUNNING")
            url = f"{c.url}/jobs/{job_id}"
            for path in ("/plan", "/subtasks", "/throughput", "/key-groups", "/exceptions"):
                resp, err = await request(s, "GET", f"{c.url}/jobs/nope{path}")
                assert resp.status == 404 and "no job 'nope'" in err["error"], path

            _, plan = await request(s, "GET", url + "/plan")
            names = {o["name"]: o for o in plan["operators"]}
            assert [o["name"] for o in plan["operators"]] == ["rows", "totals", "out"]
            assert {n: o["parallelism"] for n, o in names.items()} == {"rows": 1, "totals": 2, "out": 1}
            assert names["totals"]["keyed"] and names["totals"]["key_by"] == ["key"] and not names["rows"]["keyed"]
            edges = {(e["upstream_operator_id"], e["downstream_operator_id"]): e for e in plan["edges"]}
            ids = {n: o["operator_id"] for n, o in names.items()}
            assert edges[(ids["rows"], ids["totals"])]["partitioning"] == "hash"
            assert edges[(ids["rows"], ids["totals"])]["key_by"] == ["key"]
            assert edges[(ids["totals"], ids["out"])]["partitioning"] == "rebalance"

            async def measured():
                _, view = await request(s, "GET", url + "/subtasks")
                totals = next(o for o in view["operators"] if o["name"] == "totals")
                return view if totals["rows_in_per_second"] and all(
                    t["busy"] is not None for t in totals["subtasks"]) else None

            view = await until(measured, 15, "rates")
            _, detail = await request(s, "GET", url)
            assert {t["task_id"] for o in view["operators"] for t in o["subtasks"]} == {
                t["task_id"] for t in detail["tasks"]}
            by_id = {t["task_id"]: t for t in detail["tasks"]}
            for op in view["operators"]:
                for t in op["subtasks"]:
                    assert (t["node_id"], t["slot_id"], t["subtask_index"]) == (
                        by_id[t["task_id"]]["node_id"], by_id[t["task_id"]]["slot_id"],
                        by_id[t["task_id"]]["subtask_index"])
                    if t["busy"] is not None:
                        assert 0 <= t["busy"] + t["backpressured"] + t["idle"] <= 1.0001
            totals = next(o for o in view["operators"] if o["name"] == "totals")
            # the source's slow_rows sleeps 10 ms per 200 rows: at most ~20,000 rows/s
            assert 0 < totals["rows_in_per_second"] < 25_000
            assert totals["max_busy"] >= totals["busy"]

            async def full():
                _, history = await request(s, "GET", url + "/throughput")
                return history if len(history["samples"]) == history["capacity"] == 5 else None

            history = await until(full, 10, "a full throughput history")
            await asyncio.sleep(0.3)
            _, later = await request(s, "GET", url + "/throughput")
            assert len(later["samples"]) == 5 and later["samples"][0]["time"] > history["samples"][0]["time"]
            assert set(later["samples"][-1]["rows_in_per_second"]) == set(ids.values())
            assert later["interval_seconds"] == 0.1

            _, summary = await request(s, "GET", c.url + "/jobs")
            assert summary["jobs"][0]["rows_per_second"] > 0

            async def loaded():
                _, kg = await request(s, "GET", url + "/key-groups")
                return kg if kg["operators"][0]["rows_per_second"] is not None else None

            kg = (await until(loaded, 10, "key-group load"))["operators"][0]
            assert kg["name"] == "totals" and len(kg["assignment"]) == kg["max_parallelism"]
            assert sorted(set(kg["assignment"])) == [0, 1] and not kg["custom_assignment"]
            assert kg["rows_total"] is not None and sum(kg["subtask_rows_total"]) == sum(kg["rows_total"])
            assert sum(v > 0 for v in kg["rows_total"]) == 7  # the keys are row % 7
            assert kg["rescales"] == []

            # a rescale: the key-group tables before and after, and its timeline
            _, plan = await request(s, "POST", url + "/rescale", json={"operator_id": ids["totals"],
                                                                         "new_parallelism": 3})

            async def rescaled():
                _, d = await request(s, "GET", url)
                return d if d["rescales"] and d["rescales"][-1]["state"] == "COMPLETED" else None

            record = (await until(rescaled, 20, "the rescale"))["rescales"][-1]
            offsets = {step["step"]: step["offset_ms"] for step in record["timeline"]}
            assert 0 == offsets["requested"] <= offsets["deployed"] <= offsets["switched"]
            assert offsets["deployed"] <= offsets["state_moved"] <= offsets["completed"]
            _, kg = await request(s, "GET", url + "/key-groups")
            move = kg["operators"][0]["rescales"][-1]
            assert move["rescale_id"] == plan["rescale_id"]
            assert sorted(set(move["assignment_before"])) == [0, 1]
            assert sorted(set(move["assignment_after"])) == [0, 1, 2]
            assert move["assignment_after"] == kg["operators"][0]["assignment"]

            # a checkpoint's state per operator adds up to its size
            checkpoint_id = await c.trigger_checkpoint(job_id)

            async def completed():
                _, view = await request(s, "GET", url + "/checkpoints")
                entry = next((h for h in view["history"] if h["id"] == checkpoint_id), None)
                return entry if entry and entry["state"] == "COMPLETED" else None

            entry = await until(completed, 15, "the checkpoint")
            assert set(entry["operator_sizes"]) <= set(ids.values()) and ids["totals"] in entry["operator_sizes"]
            assert sum(entry["operator_sizes"].values()) == entry["size_bytes"]

            _, exceptions = await request(s, "GET", url + "/exceptions")
            assert exceptions["failure"] is None and exceptions["history"] == [] and exceptions["restarts"] == 0

    arun(body(), 60)


def test_exceptions_name_the_failing_task(arun, user_module):
    import pyarrow as pa

    async def body():
        async with cluster(workers=1, slots=2, restart_strategy={"type": "fixed-delay", "attempts": 1,
                                                                  "delay_ms": 10}) as c, \
                aiohttp.ClientSession() as s:
            failing = (Stream.from_table(pa.table({"value": [0.5, 1.0]}))
                       .map(f"{user_module}:fail_on_big_value", name="fragile").collect(name="out"))
            job_id = await c.submit_stream_job(failing.to_job_graph("fails", shippable=True))
            assert await c.wait_for_job(job_id, 30) == "FAILED"
            _, view = await request(s, "GET", f"{c.url}/jobs/{job_id}/exceptions")
            assert view["restarts"] == 1 and len(view["history"]) == 1
            entry = view["history"][0]
            assert "value too big" in entry["cause"]
            assert entry["task"]["operator_name"] == "fragile" and entry["task"]["subtask_index"] == 0
            assert view["failure"]["task"]["operator_name"] == "fragile"
            assert "ZeroDivisionError" in view["failure"]["traceback"]

    arun(body())

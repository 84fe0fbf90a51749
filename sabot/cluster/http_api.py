"""The coordinator's HTTP API (aiohttp), its error/auth middleware, OpenAPI document and metrics.

Every response is JSON except ``GET /metrics`` (Prometheus text) and the Arrow
result stream. Every error, unknown routes included, is ``{"error": "..."}``
with a 4xx/5xx status (:mod:`sabot.cluster.web` maps domain errors to status
codes). The route table of :func:`_routes` is the single source of both the router
and the OpenAPI document (``GET /openapi.json``), so they cannot drift apart.
"""

import asyncio
import json
import logging
import re
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from sabot.cluster.dashboard import PUBLIC_ROUTES, Dashboard
from sabot.cluster.job import JobState
from sabot.cluster.protocol import MAX_SLOTS_PER_WORKER
from sabot.cluster.rescaling import AUTO_REBALANCE_INTERVAL_S, AUTO_REBALANCE_THRESHOLD, auto_rebalance_settings
from sabot.cluster.views import MAX_TASKS_IN_DETAILS
from sabot.cluster.web import (
    ARROW_STREAM,
    LIMITS,
    SessionStore,
    arrow_response,
    auth_middleware,
    dumps,
    error_middleware,
    make_app,
    read_json,
)
from sabot.errors import InvalidRequest, NotFound
from sabot.execution.ids import ID_PATTERN
from sabot.execution.execution_graph import TaskState
from sabot.runtime.tables import TABLE_ID_PATTERN

log = logging.getLogger(__name__)

# -- metrics -----------------------------------------------------------------------------


class _StateCollector:
    """Reads the coordinator's state at scrape time (scrapes run on its loop thread)."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        c = self.coordinator
        pool = c.slot_pool
        yield GaugeMetricFamily("sabot_workers", "Registered live workers", value=len(c.nodes))
        yield GaugeMetricFamily("sabot_slots_total", "Task slots of all live workers", value=pool.total_slots)
        yield GaugeMetricFamily("sabot_slots_free", "Free task slots", value=pool.free_slots)
        jobs = GaugeMetricFamily("sabot_jobs", "Jobs by state", labels=["state"])
        counts = {}
        for job in c.jobs.values():
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        rows = GaugeMetricFamily("sabot_job_rows_processed", "Rows processed by all tasks of a job",
                                 labels=["job_id", "job_name"])
        tasks = GaugeMetricFamily("sabot_job_tasks_running", "Running tasks of a job", labels=["job_id", "job_name"])
        for job in c.jobs.values():
            if job.terminal:
                continue
            labels = [job.job_id, job.job_graph.job_name]
            rows.add_metric(labels, sum(t.rows_processed for t in job.exec_graph.tasks.values()))
            tasks.add_metric(labels, sum(1 for t in job.exec_graph.tasks.values()
                                         if t.state == TaskState.RUNNING))
        yield rows
        yield tasks


class CoordinatorMetrics:
    """Prometheus metrics of one coordinator, in its own CollectorRegistry."""

    def __init__(self, coordinator):
        self.registry = CollectorRegistry()
        self.requests = Counter("sabot_http_requests", "HTTP requests served", ["route", "status"],
                                registry=self.registry)
        self.jobs_submitted = Counter("sabot_jobs_submitted", "Jobs accepted", registry=self.registry)
        self.submit_to_running = Histogram(
            "sabot_job_submit_to_running_seconds", "Time from submit until every task was deployed",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=self.registry,
        )
        self.registry.register(_StateCollector(coordinator))

    def render(self):
        return generate_latest(self.registry)


def metrics_middleware(metrics):
    @web.middleware
    async def count(request, handler):
        response = await handler(request)
        resource = getattr(request.match_info.route, "resource", None)
        name = resource.canonical if resource is not None else "unmatched"
        metrics.requests.labels(name, str(response.status)).inc()
        return response

    return count


# -- routes ------------------------------------------------------------------------------

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_NODE_ID = {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SINK = {"name": "sink", "in": "path", "required": True, "schema": {"type": "string"}}
_ASSET = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_TABLE_ID = {"name": "table_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": f"^{TABLE_ID_PATTERN}$"}}


def _table_id(request):
    table_id = request.match_info["table_id"]
    if not re.fullmatch(TABLE_ID_PATTERN, table_id):
        raise InvalidRequest(f"a table id is 32 lowercase hex digits, got {table_id[:80]!r}")
    return table_id


async def json_response_off_loop(data, status=200):
    """A JSON response encoded on a thread (big job views take a while to encode); ``data``
    must be freshly built, as the views are."""
    body = await asyncio.to_thread(dumps, data)
    return web.Response(body=body, status=status, content_type="application/json")


def _query_int(request, name, default, minimum, maximum):
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise InvalidRequest(f"query parameter {name!r} must be in {bound}, got {value}")
    return value


def _routes(c, dashboard=None):
    """(method, path, handler, summary, parameters, request body schema, responses).

    ``dashboard``: the :class:`~sabot.cluster.dashboard.Dashboard` serving the page and
    the login (None when only the table's shape is needed).
    """

    async def health(request):
        return web.json_response({"status": "ok", "workers": len(c.nodes), "time": time.time()})

    async def overview(request):
        return web.json_response(c.overview())

    async def nodes(request):
        return web.json_response(c.nodes_view())

    async def slots(request):
        status = c.slot_pool.get_status()
        status["slots"] = [s.to_dict() for s in c.slot_pool.get_slots()]
        return web.json_response(json.loads(json.dumps(status, default=str)))

    async def submit(request):
        body = await read_json(request, "job submission")
        restore_from = request.query.get("restore_from")
        if isinstance(body, dict) and "job_graph" in body and "operators" not in body:
            unknown = sorted(set(body) - {"job_graph", "restore_from"})
            if unknown:
                raise InvalidRequest(f"job submission: unknown field(s) {unknown}; expected 'job_graph' and "
                                 "optionally 'restore_from' (or a plain JobGraph.to_dict())")
            restore_from = body.get("restore_from") or restore_from
            body = body["job_graph"]
        if restore_from is not None and not isinstance(restore_from, str):
            raise InvalidRequest(f"restore_from must be a job id or a checkpoint directory (a string), "
                                 f"got {restore_from!r}")
        job_id = await c.submit_stream_job(body, restore_from=restore_from)
        job = c.jobs[job_id]
        return web.json_response({"job_id": job_id, "state": job.state.value, "failure": job.failure}, status=201)

    async def list_jobs(request):
        return web.json_response({"jobs": [c.job_summary(j) for j in c.jobs.values()]})

    async def get_job(request):
        return await json_response_off_loop(c.job_details(c.get_job(request.match_info["job_id"])))

    async def job_tasks(request):
        offset = _query_int(request, "offset", 0, 0, None)
        limit = _query_int(request, "limit", MAX_TASKS_IN_DETAILS, 1, MAX_TASKS_IN_DETAILS)
        return await json_response_off_loop(c.job_tasks(request.match_info["job_id"], offset, limit))

    async def forget(request):
        await c.forget_job(request.match_info["job_id"])
        return web.Response(status=204)

    async def cancel(request):
        state = await c.cancel_job(request.match_info["job_id"])
        return web.json_response({"job_id": request.match_info["job_id"], "state": state})

    async def trigger_checkpoint(request):
        checkpoint_id = await c.trigger_checkpoint(request.match_info["job_id"])
        return web.json_response({"job_id": request.match_info["job_id"], "checkpoint_id": checkpoint_id},
                                 status=202)

    async def rescale(request):
        body = await read_json(request, "rescale request")
        if not isinstance(body, dict) or "operator_id" not in body or "new_parallelism" not in body:
            raise InvalidRequest('POST /jobs/{job_id}/rescale expects {"operator_id": str, "new_parallelism": int}')
        plan = await c.rescale_operator(request.match_info["job_id"], body["operator_id"], body["new_parallelism"])
        return web.json_response(plan, status=202)

    async def auto_rebalance(request):
        body = await read_json(request, "auto-rebalance request")
        if not isinstance(body, dict):
            raise InvalidRequest('POST /jobs/{job_id}/auto-rebalance expects {"interval_seconds": number, '
                             '"imbalance_threshold": number} or {"enabled": false}')
        job_id = request.match_info["job_id"]
        unknown = sorted(set(body) - {"interval_seconds", "imbalance_threshold", "enabled"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {unknown}; expected interval_seconds, imbalance_threshold, enabled")
        enabled = body.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidRequest(f"enabled must be true or false, got {enabled!r}")
        interval, threshold = auto_rebalance_settings(body.get("interval_seconds", 60.0),
                                                      body.get("imbalance_threshold", 0.3))
        if not enabled:
            return web.json_response(await c.disable_auto_rebalance(job_id))
        settings = await c.enable_auto_rebalance(job_id, interval, threshold)
        return web.json_response(settings)

    def view(name):
        async def handler(request):
            return await json_response_off_loop(getattr(c, name)(request.match_info["job_id"]))
        return handler

    async def checkpoints(request):
        return web.json_response(json.loads(json.dumps(c.checkpoints_view(request.match_info["job_id"]),
                                                       default=str)))

    async def result(request):
        res = await c.job_result(request.match_info["job_id"])
        return web.json_response({
            "job_id": res.job_id,
            "duration_seconds": res.duration_seconds,
            "summaries": json.loads(json.dumps(res.summaries, default=str)),
            "tables": {name: {"num_rows": t.num_rows, "columns": t.column_names,
                              "schema": [str(f) for f in t.schema]} for name, t in res.tables.items()},
        })

    async def result_table(request):
        res = await c.job_result(request.match_info["job_id"])
        name = request.match_info["sink"]
        if name not in res.tables:
            raise NotFound(f"job {res.job_id} has no collect sink named {name!r}; collect sinks: {sorted(res.tables)}")
        return arrow_response(res.tables[name])

    async def metrics(request):
        return web.Response(body=c.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def put_table(request):
        table_id = _table_id(request)
        timeout = request.app[LIMITS].body_timeout_s

        async def chunks():
            while True:
                try:
                    chunk = await asyncio.wait_for(request.content.readany(), timeout)
                except asyncio.TimeoutError:
                    raise InvalidRequest(f"PUT /tables/{table_id}: nothing of the body arrived for {timeout:g} s") \
                        from None
                if not chunk:
                    return
                yield chunk

        info = await c.tables.receive(table_id, chunks(), request.content_length)
        return web.json_response(info, status=201 if info.pop("new") else 200)

    async def get_table(request):
        path = c.tables.path_of(_table_id(request))
        return web.FileResponse(path, headers={"Content-Type": ARROW_STREAM})

    async def get_table_file(request):
        return web.json_response(c.tables.file_of(_table_id(request)))

    async def openapi(request):
        return web.json_response(openapi_document())

    async def register(request):
        body = await read_json(request, "worker registration")
        return web.json_response(c.register_worker(body), status=201)

    async def worker_socket(request):
        node_id = request.match_info["node_id"]
        if node_id not in c.nodes:
            raise NotFound(f"node {node_id!r} is not registered; POST /workers/register first")
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        await c.handle_worker_socket(node_id, ws)
        return ws

    job_ok = {"200": "the job (see summary)", "404": "unknown job"}
    d = dashboard
    return [
        ("GET", "/", d and d.index, "The web dashboard (HTML). With a token configured and neither the bearer "
         "header nor a session (POST /login): a redirect to the login page", [], None,
         {"200": "the dashboard page (text/html)", "303": "to /login"}),
        ("GET", "/login", d and d.login_form, "The dashboard's login page (HTML; a form that POSTs the token)",
         [], None, {"200": "the login page (text/html)", "303": "already logged in: to the dashboard"}),
        ("GET", "/dashboard/{name}", d and d.asset, "A file of the dashboard (app.js, style.css)", [_ASSET], None,
         {"200": "the file", "401": "no token or session", "404": "no such file"}),
        ("POST", "/login", d and d.login, "Log in to the dashboard: the token as the form field 'token' or "
         "{\"token\": ...}. Sets an HttpOnly, SameSite=Strict session cookie (a random id, never the token), "
         "accepted instead of the bearer header; a POST with only the cookie must send 'X-Sabot-Dashboard: 1'",
         [], {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
         {"200": "logged in (JSON body)", "303": "logged in (form): to the dashboard",
          "400": "no token given", "401": "wrong token"}),
        ("POST", "/logout", d and d.logout, "Log out of the dashboard: forget the session, clear the cookie", [],
         None, {"200": "logged out (JSON)", "303": "logged out (form): to the login page"}),
        ("GET", "/health", health, "Liveness and number of workers", [], None, {"200": "ok"}),
        ("GET", "/overview", overview, "Cluster overview: workers, slots, jobs by state", [], None, {"200": "overview"}),
        ("GET", "/nodes", nodes, "Registered workers (and recently lost ones)", [], None, {"200": "nodes"}),
        ("GET", "/slots", slots, "Slot pool status and every slot", [], None, {"200": "slot pool status"}),
        ("POST", "/jobs/submit", submit, "Submit a job (body: JobGraph.to_dict(), or {\"job_graph\": ..., "
         "\"restore_from\": job id or checkpoint path} to start from a checkpoint)",
         [{"name": "restore_from", "in": "query", "required": False, "schema": {"type": "string"},
           "description": "start from the latest checkpoint of this job id, or from this checkpoint directory"}],
         {"type": "object", "description": "JobGraph.to_dict(), or {job_graph, restore_from}"},
         {"201": "accepted: job id and state", "400": "malformed JSON, not a job graph, invalid graph, "
          "unimportable function, a job larger than the cluster, or a checkpoint that does not fit the job",
          "404": "restore_from names no job and no checkpoint", "409": "restore_from job has no checkpoint"}),
        ("GET", "/jobs", list_jobs, "All jobs with their states", [], None, {"200": "jobs"}),
        ("GET", "/jobs/{job_id}", get_job, "A job: state, operators with parallelism and rates, tasks "
         f"with state/node/slot/metrics (the first {MAX_TASKS_IN_DETAILS}; tasks_total says how many), metrics "
         "summary", [_JOB_ID], None, job_ok),
        ("GET", "/jobs/{job_id}/tasks", job_tasks, "A page of the job's tasks (state, worker, slot, metrics)",
         [_JOB_ID, {"name": "offset", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
          {"name": "limit", "in": "query", "required": False,
           "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TASKS_IN_DETAILS}}], None,
         {"200": "tasks", "400": "bad offset or limit", "404": "unknown job"}),
        ("DELETE", "/jobs/{job_id}", forget, "Forget an ended job now: its record, result and tasks here and on "
         "the workers (otherwise kept for retain_ended_jobs / ended_job_ttl_s)", [_JOB_ID], None,
         {"204": "forgotten", "404": "unknown job", "409": "the job has not ended"}),
        ("POST", "/jobs/{job_id}/cancel", cancel, "Cancel a job; frees its slots", [_JOB_ID], None,
         {"200": "canceled", "404": "unknown job", "409": "the job already ended"}),
        ("POST", "/jobs/{job_id}/rescale", rescale, "Rescale one operator live: new tasks get slots, keyed "
         "state moves to them by key group, nothing else stops. Returns the plan at once; GET /jobs/{job_id} "
         "shows progress and timing", [_JOB_ID],
         {"type": "object", "required": ["operator_id", "new_parallelism"],
          "properties": {"operator_id": {"type": "string"}, "new_parallelism": {"type": "integer", "minimum": 1}}},
         {"202": "rescaling: the seed's plan dict plus rescale_id", "400": "bad body, parallelism, or a source/sink",
          "404": "unknown job or operator",
          "409": "job not RUNNING, another rescale in progress, or not enough slots (the job keeps its parallelism)"}),
        ("POST", "/jobs/{job_id}/auto-rebalance", auto_rebalance, "Enable (or, with enabled=false, disable) "
         "automatic rebalancing of keyed operators' key groups", [_JOB_ID],
         {"type": "object", "additionalProperties": False,
          "properties": {"interval_seconds": {"type": "number", "minimum": AUTO_REBALANCE_INTERVAL_S[0],
                                              "maximum": AUTO_REBALANCE_INTERVAL_S[1]},
                         "imbalance_threshold": {"type": "number", "minimum": AUTO_REBALANCE_THRESHOLD[0],
                                                 "maximum": AUTO_REBALANCE_THRESHOLD[1]},
                         "enabled": {"type": "boolean"}}},
         {"200": "the auto-rebalance settings", "400": "bad body", "404": "unknown job", "409": "the job ended"}),
        ("POST", "/jobs/{job_id}/checkpoints", trigger_checkpoint, "Trigger a checkpoint now; returns its id "
         "(it completes asynchronously: see GET)", [_JOB_ID], None,
         {"202": "triggered: checkpoint id", "404": "unknown job",
          "409": "the job is not RUNNING, its input ended, or a checkpoint is in progress"}),
        ("GET", "/jobs/{job_id}/checkpoints", checkpoints, "Checkpoint history (id, state, trigger time, "
         "duration, size, alignment), counts, latest completed, restored-from and skipped corrupt "
         "checkpoints", [_JOB_ID], None, {"200": "checkpoints", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/plan", view("job_plan"), "The job's plan: operators (topological order) with "
         "type, parallelism, max_parallelism and key, and the edges between them with their partitioning "
         "(FORWARD, HASH, REBALANCE, BROADCAST)", [_JOB_ID], None, {"200": "plan", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/subtasks", view("subtasks_view"), "Per operator and per subtask: state, worker, "
         "slot, rows in/out, rows per second in/out and the busy / back-pressured / idle shares of time "
         "(between the tasks' last reports), watermark; per operator the sums and the mean and max shares",
         [_JOB_ID], None, {"200": "operators with their subtasks", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/throughput", view("throughput_view"), "Rows per second in and out of each "
         "operator, sampled every metrics_sample_interval_s over the last metrics_history_s (a bounded ring "
         "buffer)", [_JOB_ID], None, {"200": "samples, oldest first", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/key-groups", view("key_groups_view"), "Keyed operators: rows per second and in "
         "total per key group (measured by the upstream hash partitioners), per subtask, the imbalance, the "
         "key-group -> subtask table, and the tables before and after each of the latest rescales and "
         "rebalances", [_JOB_ID], None, {"200": "keyed operators", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/exceptions", view("exceptions_view"), "Restart history, newest first, with each "
         "root cause and failing task (operator, subtask), the last failure with its traceback, and the failure "
         "that ended the job", [_JOB_ID], None, {"200": "exceptions", "404": "unknown job"}),
        ("GET", "/jobs/{job_id}/result", result, "Result of a finished job: sink summaries and collected "
         "table shapes", [_JOB_ID], None,
         {"200": "result", "404": "unknown job", "409": "job not finished, failed or canceled"}),
        ("GET", "/jobs/{job_id}/result/{sink}", result_table, "The table a collect sink gathered, as an Arrow "
         "IPC stream", [_JOB_ID, _SINK], None,
         {"200": "Arrow IPC stream", "404": "unknown job or sink", "409": "job not finished"}),
        ("PUT", "/tables/{table_id}", put_table, "Upload an in-memory table a job refers to (an Arrow IPC "
         "stream; SabotClient.submit does it before POST /jobs/submit). Kept until the jobs using it are "
         "forgotten; the workers fetch it once each. Any content type: the bytes must be one Arrow IPC stream",
         [_TABLE_ID], ("application/octet-stream", {"type": "string", "format": "binary"}),
         {"201": "kept: table_id, num_rows, nbytes", "200": "already here", "400": "not an Arrow IPC stream, "
          "a bad id, or a stalled body", "413": "larger than max_table_bytes"}),
        ("GET", "/tables/{table_id}", get_table, "An uploaded table, as the Arrow IPC stream it was uploaded as",
         [_TABLE_ID], None, {"200": "Arrow IPC stream", "400": "a bad id", "404": "unknown table"}),
        ("GET", "/tables/{table_id}/file", get_table_file, "Where the coordinator keeps an uploaded table: its "
         "file's path, device, inode, size and mtime_ns. A worker on the coordinator's host that finds that very "
         "file maps it instead of downloading a copy", [_TABLE_ID], None,
         {"200": "table_id, path, device, inode, size, mtime_ns", "400": "a bad id", "404": "unknown table"}),
        ("GET", "/metrics", metrics, "Prometheus metrics", [], None, {"200": "Prometheus text format"}),
        ("GET", "/openapi.json", openapi, "This document", [], None, {"200": "OpenAPI 3 document"}),
        ("POST", "/workers/register", register, "A worker joins with its slots", [],
         {"type": "object", "required": ["node_id", "host", "port", "data_host", "data_port", "num_slots"],
          "properties": {"node_id": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
                         "host": {"type": "string", "minLength": 1, "maxLength": 253},
                         "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                         "data_host": {"type": "string", "minLength": 1, "maxLength": 253},
                         "data_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                         "num_slots": {"type": "integer", "minimum": 1, "maximum": MAX_SLOTS_PER_WORKER},
                         "cpu_cores_per_slot": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                         "memory_mb_per_slot": {"type": "integer", "minimum": 1},
                         "pid": {"type": "integer", "minimum": 0}}},
         {"201": "registered: node id and heartbeat settings", "400": "bad slot counts or fields",
          "409": "node id or address already registered"}),
        ("GET", "/workers/{node_id}/ws", worker_socket, "The worker's persistent WebSocket (heartbeats, task "
         "updates); see sabot.cluster.protocol", [_NODE_ID], None,
         {"101": "switching protocols", "400": "not a WebSocket upgrade", "404": "node not registered"}),
    ]


def openapi_document():
    """The OpenAPI 3 document of the coordinator's routes (built from the route table)."""
    paths = {}
    for method, path, _handler, summary, params, body, responses in _routes(_NoCoordinator()):
        op = {
            "summary": summary,
            "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}"
                           or "root",
            "parameters": params,
            "responses": {
                code: {
                    "description": desc,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                    if int(code) >= 400 else {},
                }
                for code, desc in responses.items()
            },
        }
        if body is not None:
            media, schema = body if isinstance(body, tuple) else ("application/json", body)
            op["requestBody"] = {"required": True, "content": {media: {"schema": schema}}}
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Sabot coordinator API", "version": "1",
                 "description": "Every error is {\"error\": \"...\"}. With a token configured every request needs "
                                "'Authorization: Bearer <token>' (else 401), or the dashboard's session cookie "
                                "(POST /login)."},
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "session": {"type": "apiKey", "in": "cookie", "name": "sabot_session"}},
        },
        "security": [{"bearer": []}, {"session": []}, {}],
        "paths": paths,
    }


class _NoCoordinator:
    """Stands in for the coordinator when only the route table's shape is needed."""

    def __getattr__(self, name):
        raise AttributeError(name)


def build_coordinator_app(coordinator):
    """The aiohttp Application serving ``coordinator`` (the API and the dashboard)."""
    sessions = SessionStore(ttl_s=coordinator.config.session_ttl_s)
    app = make_app([metrics_middleware(coordinator.metrics), error_middleware,
                    auth_middleware(coordinator.config.token, sessions, PUBLIC_ROUTES)],
                   coordinator.config.http_limits())
    dashboard = Dashboard(coordinator.config.token, sessions)
    for method, path, handler, *_ in _routes(coordinator, dashboard):
        app.router.add_route(method, path, handler)
    return app

"""Worker: a process that offers task slots to a coordinator and runs the tasks it is sent.

A worker starts the runtime's :class:`~sabot.runtime.data_server.DataServer` (task
channels from other workers connect there) and a small aiohttp control server:

- ``POST /tasks/deploy``: body a task deployment descriptor, or a JSON list of
  them (the coordinator sends one list per worker). Operator code is imported
  here; a reference that cannot be imported is a 400 naming it, and the tasks of
  that request that were already started are canceled again.
- ``POST /jobs/{job_id}/finished``: every task of the job finished; its sinks
  publish the output that end of input left staged (answers once they have).
- ``POST /tasks/{task_id}/control``: a live-rescale control message for a running
  task; a ``source_pause`` is answered once the source stopped between two units
  (``{"reply": {"task_id", "position"}}``; 504 if it does not within ``timeout_s``).
- ``POST /tasks/{task_id}/cancel``, ``GET /tasks`` (every task with its state and
  metrics; the worker's pid and node id), ``GET /tasks/{task_id}/result`` (the
  table a collect sink gathered, as an Arrow IPC stream; 204 if none), ``GET /health``.

It registers with the coordinator (``POST /workers/register``), keeps one
WebSocket to it (every task report of the runtime's
:class:`~sabot.runtime.task_manager.TaskManager`, checkpoint triggers and
completions) and one heartbeat connection, fed by a native thread that never takes
the GIL (:class:`sabot._core.liveness.HeartbeatThread`): a worker whose Python is
busy for seconds keeps its liveness, a stopped one falls silent.

If the coordinator drops the worker (it was silent too long, e.g. stopped with
SIGSTOP, or partitioned), the worker *rejoins*, as Flink's TaskManagers do: it
cancels every task it still runs (their attempts are superseded: fencing), registers
again under the same node id and serves new deployments. Only a coordinator that
does not come back within ``rejoin_timeout_s`` makes it give up and exit.

Example:
    >>> worker = Worker("http://127.0.0.1:8081", num_slots=4)   # doctest: +SKIP
    >>> await worker.run()      # until the coordinator is gone for good  # doctest: +SKIP
"""

import asyncio
import json
import logging
import os
import socket
import struct
import time
import urllib.parse

import aiohttp
from aiohttp import web

from sabot._core.liveness import HeartbeatThread
from sabot._loop import LoopLag
from sabot.cluster import liveness, protocol
from sabot.cluster.table_fetch import TableFetcher
from sabot.cluster.tls import TlsConfig
from sabot.cluster.tls import scheme as tls_scheme
from sabot.cluster.web import HttpLimits, arrow_response, auth_middleware, error_middleware, make_app, read_json, serve
from sabot.errors import Conflict, ControlTimeout, InvalidRequest, NotFound
from sabot.execution.deployment import TaskDeploymentDescriptor
from sabot.execution.messages import CheckpointComplete, TriggerCheckpoint, control_from_dict
from sabot.runtime.data_server import DataServer
from sabot.runtime.task_manager import TaskManager

log = logging.getLogger(__name__)

#: a worker's requests come from its coordinator (authenticated when a token is set);
#: deployments of a very large job to one worker are the biggest bodies
WORKER_HTTP_LIMITS = HttpLimits(max_body_bytes=256 * 1024 * 1024, max_json_items=50_000_000)

__all__ = ["Worker"]

#: how long a control route waits for a task's reply (source_pause) unless the message says
CONTROL_REPLY_TIMEOUT_S = 10.0
#: most messages sent to the coordinator in one WebSocket frame
SEND_BATCH = 256
#: how long deploying many tasks may run before it lets the event loop serve others
YIELD_EVERY_S = 0.005


class Worker:
    """One worker process's control plane.

    Args:
        coordinator_url: ``http://host:port`` of the coordinator.
        num_slots: task slots offered (>= 1).
        cpu_cores_per_slot, memory_mb_per_slot: resources of each slot.
        host: address to bind the control and data servers (non-loopback needs a token).
        port: control server port (0: a free one).
        token: shared secret (default ``$SABOT_TOKEN``), sent to the coordinator and
            required on every request to this worker.
        node_id: id to register under (default ``worker-<pid>-<port>``).
        data_port: DataServer port (0: a free one).
        connect_timeout_s: how long to keep trying to reach the coordinator at start.
        threads: size of the thread pool operator code runs on.
        rejoin_timeout_s: how long a worker dropped by its coordinator keeps trying to
            register again before it gives up (default: ``connect_timeout_s``).
        tls: a :class:`~sabot.cluster.tls.TlsConfig` (or dict): HTTPS for this worker's
            server and its requests, WSS to the coordinator, TLS on the data plane; None:
            ``$SABOT_TLS_*`` if set, else plain TCP.
    """

    def __init__(self, coordinator_url, num_slots=1, cpu_cores_per_slot=1.0, memory_mb_per_slot=1024,
                 host="127.0.0.1", port=0, token=None, *, node_id=None, data_port=0,
                 connect_timeout_s=10.0, threads=None, rejoin_timeout_s=None, tls=None):
        if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
            raise ValueError(f"num_slots must be an integer >= 1, got {num_slots!r}")
        if not isinstance(cpu_cores_per_slot, (int, float)) or cpu_cores_per_slot <= 0:
            raise ValueError(f"cpu_cores_per_slot must be a positive number, got {cpu_cores_per_slot!r}")
        if isinstance(memory_mb_per_slot, bool) or not isinstance(memory_mb_per_slot, int) or memory_mb_per_slot <= 0:
            raise ValueError(f"memory_mb_per_slot must be a positive integer, got {memory_mb_per_slot!r}")
        self.coordinator_url = coordinator_url.rstrip("/")
        self.num_slots = num_slots
        self.cpu_cores_per_slot = float(cpu_cores_per_slot)
        self.memory_mb_per_slot = memory_mb_per_slot
        self.host = host
        self.port = port
        self.token = protocol.resolve_token(token)
        protocol.check_binding(host, self.token, "worker")
        self.tls = TlsConfig.coerce(tls) or TlsConfig.from_env()
        self.node_id = node_id
        self.data_port = data_port
        self.connect_timeout_s = connect_timeout_s
        self.rejoin_timeout_s = connect_timeout_s if rejoin_timeout_s is None else rejoin_timeout_s
        self.threads = threads
        self.data_server = None
        self.task_manager = None
        self.heartbeat_interval_s = None
        self.heartbeat_timeout_s = None
        self.closed_reason = None
        self.joins = 0  # registrations with the coordinator (1 + rejoins)
        self.loop_lag = LoopLag()
        self._runner = None
        self._session = None
        self._ws = None
        self._heartbeat = None
        self._outbox = None
        self._loops = []
        self._supervisor = None
        self._disconnected = None
        self._closed = None
        self._stopping = False
        self._url = None
        self._shut_down = False
        self.table_fetcher = None  # gets the in-memory tables tasks refer to (once started)

    @property
    def url(self):
        if self._url is None:
            raise RuntimeError("the worker is not started; await start() first")
        return self._url

    async def start(self):
        """Start the data and control servers and join the coordinator."""
        self._closed = asyncio.Event()
        self._outbox = asyncio.Queue()
        client_ssl = self.tls.client_context() if self.tls else None
        self.data_server = DataServer(host=self.host, key=protocol.derive_key(self.token, "sabot data plane"),
                                      server_ssl=self.tls.server_context() if self.tls else None,
                                      client_ssl=client_ssl)
        await self.data_server.start(self.data_port)
        self.task_manager = TaskManager(self.data_server, on_update=self._on_task_update, threads=self.threads,
                                        on_checkpoint=self._on_checkpoint)
        app = make_app([error_middleware, auth_middleware(self.token)], WORKER_HTTP_LIMITS)
        app.router.add_get("/health", self._health)
        app.router.add_post("/tasks/deploy", self._deploy)
        app.router.add_get("/tasks", self._list_tasks)
        app.router.add_post("/tasks/{task_id}/cancel", self._cancel)
        app.router.add_post("/tasks/{task_id}/control", self._control)
        app.router.add_get("/tasks/{task_id}/result", self._result)
        app.router.add_post("/jobs/{job_id}/finished", self._job_finished)
        app.router.add_post("/jobs/{job_id}/release", self._release_job)
        self._runner, (_, self.port) = await serve(app, self.host, self.port, WORKER_HTTP_LIMITS,
                                                   ssl_context=self.tls.server_context() if self.tls else None)
        self._url = f"{tls_scheme(self.tls)}://{self.host}:{self.port}"
        if self.node_id is None:
            self.node_id = f"worker-{os.getpid()}-{self.port}"
        self._session = aiohttp.ClientSession(
            headers=protocol.auth_headers(self.token),
            connector=aiohttp.TCPConnector(ssl=client_ssl) if client_ssl is not None else None)
        self.table_fetcher = TableFetcher(self.node_id, self.coordinator_url, self._session, self.task_manager.tables)
        try:
            await self._join(self.connect_timeout_s)
        except BaseException:
            await self.stop()
            raise
        self._supervisor = asyncio.ensure_future(self._supervise())
        self.loop_lag.start()
        log.info("worker %s at %s (data %s) joined %s with %d slots", self.node_id, self._url,
                 self.data_server.address, self.coordinator_url, self.num_slots)
        return self

    async def _join(self, timeout):
        """Register, then open the WebSocket and the heartbeat connection."""
        self._disconnected = asyncio.Event()
        self.closed_reason = None
        await self._register(timeout)
        self._ws = await self._session.ws_connect(
            f"{self.coordinator_url}/workers/{self.node_id}/ws", heartbeat=None, autoping=True,
            max_msg_size=64 * 1024 * 1024,
        )
        self._heartbeat = await self._start_heartbeat()
        self._loops = [asyncio.ensure_future(self._send_loop()), asyncio.ensure_future(self._receive_loop()),
                       asyncio.ensure_future(self._watch_heartbeat())]
        self.joins += 1

    async def _start_heartbeat(self):
        host = urllib.parse.urlsplit(self.coordinator_url).hostname

        def connect():
            sock = socket.create_connection((host, self.liveness_port), timeout=self.connect_timeout_s)
            challenge = b""
            while len(challenge) < liveness.CHALLENGE_BYTES:
                chunk = sock.recv(liveness.CHALLENGE_BYTES - len(challenge))
                if not chunk:
                    raise ConnectionError(f"the coordinator's heartbeat listener at {host}:{self.liveness_port} "
                                          "closed the connection before its challenge")
                challenge += chunk
            hello = json.dumps({"node_id": self.node_id,
                                "proof": liveness.proof(self.liveness_ticket, challenge)}).encode()
            sock.sendall(struct.pack(">I", len(hello)) + hello)
            sock.settimeout(None)
            return sock

        sock = await asyncio.to_thread(connect)
        beat = HeartbeatThread(sock.detach(), self.heartbeat_interval_s)
        beat.start()
        return beat

    async def _register(self, timeout):
        host, data_port = self.data_server.address
        body = protocol.RegisterRequest(
            node_id=self.node_id, host=self.host, port=self.port, data_host=host, data_port=data_port,
            num_slots=self.num_slots, cpu_cores_per_slot=self.cpu_cores_per_slot,
            memory_mb_per_slot=self.memory_mb_per_slot, pid=os.getpid(),
        ).to_dict()
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with self._session.post(f"{self.coordinator_url}/workers/register", json=body) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status == 201:
                        break
                    error = protocol.ClusterError(
                        f"the coordinator at {self.coordinator_url} refused worker {self.node_id} "
                        f"(HTTP {resp.status}): {(answer or {}).get('error')}")
                    if resp.status != 409 or time.monotonic() > deadline:
                        raise error
                    # 409: it still counts this node as live (it has not noticed our silence yet)
            except aiohttp.ClientConnectionError as exc:
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"cannot reach the coordinator at {self.coordinator_url} within {timeout} s: {exc}"
                    ) from exc
            await asyncio.sleep(0.1)
        self.heartbeat_interval_s = answer["heartbeat_interval_s"]
        self.heartbeat_timeout_s = answer["heartbeat_timeout_s"]
        self.liveness_port = answer["liveness_port"]
        self.liveness_ticket = answer.get("liveness_ticket", "")

    async def _supervise(self):
        """Rejoin whenever the coordinator drops this worker; give up when it stays away."""
        while True:
            await self._disconnected.wait()
            if self._stopping:
                return
            reason = self.closed_reason
            log.warning("worker %s: %s; canceling its tasks (their attempts are superseded) and rejoining",
                        self.node_id, reason)
            await self._leave_session()
            await self.task_manager.cancel_all()
            try:
                await self._join(self.rejoin_timeout_s)
            except (ConnectionError, protocol.ClusterError, OSError) as exc:
                self._give_up(f"{reason}; rejoining failed: {exc}")
                return
            log.info("worker %s rejoined %s (join %d)", self.node_id, self.coordinator_url, self.joins)

    async def _leave_session(self):
        loops, self._loops = self._loops, []
        for task in loops:
            if task is not asyncio.current_task():
                task.cancel()
        if self._heartbeat is not None:
            await asyncio.to_thread(self._heartbeat.stop)
            self._heartbeat = None
        if self._ws is not None and not self._ws.closed:
            try:
                await asyncio.wait_for(self._ws.close(), 1.0)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError):
                pass
        while not self._outbox.empty():  # reports of superseded attempts: the coordinator dropped them
            self._outbox.get_nowait()

    # -- coordinator connection --------------------------------------------------------

    def _on_task_update(self, report):
        if self._outbox is not None and not self._closed.is_set():
            self._outbox.put_nowait(protocol.task_update_message(report.to_dict()))

    def _on_checkpoint(self, message):
        if self._outbox is not None and not self._closed.is_set():
            self._outbox.put_nowait(protocol.checkpoint_message(message.to_dict()))

    def _on_coordinator_message(self, message):
        """Handle a checkpoint trigger or completion sent over the WebSocket."""
        kind = message.get("type")
        if kind == TriggerCheckpoint.TYPE:
            self.task_manager.trigger_checkpoint(TriggerCheckpoint.from_dict(message))
        elif kind == CheckpointComplete.TYPE:
            done = CheckpointComplete.from_dict(message)
            self.task_manager.notify_checkpoint_complete(done.job_id, done.checkpoint_id, done.attempts)
        elif kind != protocol.HEARTBEAT_ACK:
            log.warning("worker %s: unknown message type %r from the coordinator", self.node_id, kind)

    async def _send_loop(self):
        try:
            while not self._ws.closed:
                messages = [await self._outbox.get()]
                while len(messages) < SEND_BATCH and not self._outbox.empty():
                    messages.append(self._outbox.get_nowait())  # what piled up goes in one frame
                frame = messages[0] if len(messages) == 1 else {"type": protocol.BATCH, "messages": messages}
                await self._ws.send_str(json.dumps(frame, default=str))
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            self._disconnect(f"sending to the coordinator failed: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("worker send loop failed")
            self._disconnect(f"send loop failed: {exc}")

    async def _receive_loop(self):
        reason = "the coordinator closed the connection"
        try:
            while True:
                msg = await self._ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    if self._ws.close_code is not None and msg.extra:
                        reason = f"the coordinator closed the connection: {msg.extra}"
                    break
                if msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"the connection to the coordinator failed: {self._ws.exception()}"
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        message = json.loads(msg.data)
                    except ValueError:
                        log.warning("worker %s: malformed message from the coordinator: %.200s",
                                    self.node_id, msg.data)
                        continue
                    try:
                        self._on_coordinator_message(message)
                    except Exception:  # one bad message must not drop the connection
                        log.exception("worker %s: handling %r failed", self.node_id, message.get("type"))
        finally:
            self._disconnect(reason)

    async def _watch_heartbeat(self):
        """The heartbeat connection ends when the coordinator drops this worker; a coordinator
        that stops answering (stopped, hung) counts as gone after ``max(5 s, 10 x timeout)``."""
        silence = max(5.0, 10 * self.heartbeat_timeout_s)
        while True:
            await asyncio.sleep(min(0.1, self.heartbeat_interval_s))
            beat = self._heartbeat
            if beat is None:
                return
            if beat.closed:
                self._disconnect(f"the coordinator closed the heartbeat connection ({beat.closed})")
                return
            if beat.seconds_since_ack > silence:
                self._disconnect(f"no word from the coordinator for {beat.seconds_since_ack:.1f} s")
                return

    def _disconnect(self, reason):
        if self._disconnected is not None and not self._disconnected.is_set():
            self.closed_reason = reason
            self._disconnected.set()

    def _give_up(self, reason, level=logging.WARNING):
        if not self._closed.is_set():
            self.closed_reason = reason
            log.log(level, "worker %s: %s", self.node_id, reason)
            self._closed.set()

    async def wait_closed(self):
        """Wait until the worker gives up on its coordinator (it did not come back); return why."""
        await self._closed.wait()
        return self.closed_reason

    async def run(self):
        """Start, serve (rejoining when dropped) until the coordinator is gone for good, stop;
        return the reason."""
        await self.start()
        try:
            return await self.wait_closed()
        finally:
            await self.stop()

    async def stop(self):
        """Say goodbye, cancel every task, close the servers."""
        self._stopping = True
        self.loop_lag.stop()
        if self._closed is not None and not self._closed.is_set():
            self._give_up("worker stopping", logging.INFO)
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        if self._ws is not None and not self._ws.closed:
            try:
                await self._ws.send_json({"type": protocol.GOODBYE})
                await self._ws.close()
            except (ConnectionError, OSError, RuntimeError, aiohttp.ClientError):
                pass  # the coordinator is gone already
        for task in self._loops:
            task.cancel()
        self._loops = []
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self.task_manager is not None and not self._shut_down:
            self._shut_down = True
            await self.task_manager.shutdown()
            self.task_manager.tables.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.data_server is not None:
            await self.data_server.stop()
            self.data_server = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    # -- HTTP handlers -----------------------------------------------------------------

    async def _health(self, request):
        return web.json_response({"status": "ok", "node_id": self.node_id, "pid": os.getpid(),
                                  "tasks": len(self.task_manager.tasks), "joins": self.joins,
                                  "tables": len(self.task_manager.tables),
                                  "table_bytes": self.task_manager.tables.nbytes,
                                  "tables_mapped": self.table_fetcher.mapped if self.table_fetcher else 0,
                                  "tables_downloaded": self.table_fetcher.downloaded if self.table_fetcher else 0,
                                  "loop_lag": self.loop_lag.snapshot()})

    async def _deploy(self, request):
        body = await read_json(request, "deployment")
        items = body if isinstance(body, list) else [body]
        if not items:
            raise InvalidRequest("POST /tasks/deploy expects a task deployment descriptor (a JSON object) or a "
                                 "list of them")
        # thousands of descriptors take a while to check: not on the event loop
        tdds = await asyncio.to_thread(
            lambda: [TaskDeploymentDescriptor.from_dict(item, f"task deployment descriptor {i}")
                     for i, item in enumerate(items)])
        await self.table_fetcher.fetch_for(tdds)
        deployed = []
        started = time.perf_counter()
        for tdd in tdds:
            if time.perf_counter() - started > YIELD_EVERY_S:
                await asyncio.sleep(0)  # let heartbeats, reports and other requests through
                started = time.perf_counter()
            try:
                await self.task_manager.deploy(tdd)
            except Exception as exc:
                for task_id in deployed:
                    await self.cancel_task(task_id)
                raise InvalidRequest(
                    f"worker {self.node_id} cannot deploy task {tdd.task_id!r}: {type(exc).__name__}: {exc}"
                ) from exc
            deployed.append(tdd.task_id)
        return web.json_response({"deployed": deployed, "node_id": self.node_id})

    def _known(self, task_id):
        if task_id not in self.task_manager.tasks:
            raise NotFound(f"worker {self.node_id} has no task {task_id!r}")

    async def _cancel(self, request):
        task_id = request.match_info["task_id"]
        self._known(task_id)
        state = await self.cancel_task(task_id)
        return web.json_response({"task_id": task_id, "state": state})

    async def _control(self, request):
        """A live-rescale control message for a running task (see sabot.runtime.task)."""
        task_id = request.match_info["task_id"]
        self._known(task_id)
        message = control_from_dict(await read_json(request, "control message"))
        if message.attempt_id.task_id != task_id:
            raise InvalidRequest(f"POST /tasks/{task_id}/control got a message for {message.attempt_id}")
        task = self.task_manager.tasks[task_id]
        if task.state.is_terminal:
            raise Conflict(f"task {task_id} on worker {self.node_id} is {task.state.value}")
        try:
            reply = self.task_manager.control(message)
        except (ValueError, KeyError) as exc:
            raise InvalidRequest(f"task {task_id}: {exc}") from None
        answer = {"task_id": task_id, "accepted": message.TYPE}
        if reply is not None:  # a source_pause: answer once the source stopped between two units
            timeout = float(getattr(message, "timeout_s", None) or CONTROL_REPLY_TIMEOUT_S)
            try:
                answer["reply"] = await asyncio.wait_for(asyncio.shield(reply), timeout)
            except asyncio.TimeoutError:
                raise ControlTimeout(
                    f"task {task_id} on worker {self.node_id} did not answer {message['type']} within "
                    f"{timeout:g} s (state {task.state.value})"
                ) from None
            except ValueError as exc:
                raise Conflict(f"task {task_id}: {exc}") from None
        return web.json_response(answer)

    async def cancel_task(self, task_id, timeout=10.0):
        """Cancel a task and wait until it has stopped; return its final state.

        The cancel is repeated while the task runs on: on Python 3.11 a cancel that
        lands while ``asyncio.wait_for`` is completing (e.g. a channel connecting)
        is swallowed, and the task would otherwise keep running.
        """
        task = self.task_manager.tasks[task_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempts = []
        try:
            while not task.state.is_terminal:
                attempts.append(asyncio.ensure_future(self.task_manager.cancel(task_id)))
                await asyncio.wait({attempts[-1]}, timeout=0.1)
                if loop.time() > deadline:
                    raise protocol.ClusterError(
                        f"task {task_id} on worker {self.node_id} did not stop within {timeout} s of cancel "
                        f"(state {task.state.value})"
                    )
        finally:
            for attempt in attempts:
                if not attempt.done():
                    attempt.cancel()
        return task.state.value

    async def _job_finished(self, request):
        """Every task of the job finished: two-phase-commit sinks publish what end of input staged."""
        job_id = request.match_info["job_id"]
        await self.task_manager.notify_job_finished(job_id)
        return web.json_response({"job_id": job_id, "node_id": self.node_id})

    async def _release_job(self, request):
        """The coordinator forgot the job: drop its tasks and channels here."""
        job_id = request.match_info["job_id"]
        released = await self.task_manager.release_job(job_id)
        return web.json_response({"job_id": job_id, "node_id": self.node_id, "released_tasks": released})

    async def _list_tasks(self, request):
        tasks = json.loads(json.dumps(self.task_manager.list_tasks(), default=str))
        return web.json_response({"node_id": self.node_id, "pid": os.getpid(), "tasks": tasks})

    async def _result(self, request):
        task_id = request.match_info["task_id"]
        self._known(task_id)
        table = self.task_manager.result(task_id)
        if table is None:
            return web.Response(status=204)
        return arrow_response(table)

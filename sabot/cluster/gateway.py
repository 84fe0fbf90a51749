"""How the coordinator talks to its workers (Flink's TaskExecutorGateway).

:class:`WorkerGateway` is the narrow interface the control plane uses: deploy task
descriptors, send a control message, cancel a task, tell a job's sinks to publish,
fetch a collected result, and push a message over the worker's connection.
:class:`HttpWorkerGateway` does it over HTTP (requests to the worker's server) and
the worker's WebSocket (pushes, and everything the worker reports, which it hands
to a :class:`WorkerListener`). ``sabot.testing.TestingWorkerGateway`` is an
in-process fake that records calls, so placement, failover, rescaling and
checkpoint scheduling are tested without processes or sockets.
"""

from __future__ import annotations

import abc
import asyncio
import io
import json
import logging
import time

import aiohttp
import pyarrow as pa

from sabot.cluster import protocol
from sabot.cluster import web as web_json
from sabot.errors import Conflict

log = logging.getLogger(__name__)

#: how long handing over a worker's messages may run before the loop is let go
YIELD_EVERY_S = 0.005

__all__ = ["HttpWorkerGateway", "WorkerGateway", "WorkerListener", "WorkerUnreachable"]


class WorkerUnreachable(ConnectionError):
    """A worker is gone or did not answer."""


class WorkerGateway(abc.ABC):
    """What the control plane asks of its workers. Every method names the worker by node id."""

    @abc.abstractmethod
    async def deploy(self, node_id, tdds) -> None:
        """Start these task attempts (``TaskDeploymentDescriptor`` s) on the worker.

        Raises:
            WorkerUnreachable: the worker is gone.
            RuntimeError: the worker refused (the message says why, e.g. an unimportable function).
        """

    @abc.abstractmethod
    async def control(self, node_id, message) -> dict:
        """Hand a live-rescale control message to the task it names; the worker's answer
        (``{"reply": ...}`` for a source pause)."""

    @abc.abstractmethod
    async def cancel(self, node_id, task_id) -> None:
        """Cancel a task and wait until it stopped (best effort: an unreachable worker is logged)."""

    @abc.abstractmethod
    async def job_finished(self, node_id, job_id) -> None:
        """Every task of the job finished: the worker's sinks publish what end of input staged."""

    @abc.abstractmethod
    async def release_job(self, node_id, job_id) -> None:
        """The coordinator forgot the job: the worker drops its tasks and channels."""

    @abc.abstractmethod
    async def fetch_result(self, node_id, task_id) -> pa.Table | None:
        """The table a collect sink task gathered (None if it gathered nothing)."""

    @abc.abstractmethod
    async def send(self, node_id, message) -> None:
        """Push a record (TriggerCheckpoint, CheckpointComplete) over the worker's connection."""

    @abc.abstractmethod
    def is_connected(self, node_id) -> bool:
        """True while the worker's connection is open."""

    async def start(self) -> None:
        """Open what the gateway needs (sessions)."""

    async def close(self) -> None:
        """Close every connection."""


class WorkerListener(abc.ABC):
    """What a worker's connection delivers to the coordinator."""

    @abc.abstractmethod
    def on_worker_message(self, node_id, message: dict) -> None:
        """A message (``protocol`` envelope: task update, checkpoint answer, heartbeat)."""

    @abc.abstractmethod
    def on_worker_gone(self, node_id, reason: str, *, left: bool) -> None:
        """The connection closed (``left``: the worker said goodbye first)."""


class HttpWorkerGateway(WorkerGateway):
    """Requests to each worker's HTTP server; pushes and reports over its WebSocket.

    Args:
        registry: the :class:`~sabot.cluster.nodes.NodeRegistry` (worker addresses).
        token: the cluster secret sent with every request.
        request_timeout_s: bound on each request to a worker.
    """

    def __init__(self, registry, token=None, request_timeout_s=30.0, ssl=None):
        self.registry = registry
        self.token = token
        self.request_timeout_s = request_timeout_s
        self.ssl = ssl  # client SSLContext when the cluster runs TLS
        self._session = None
        self._sockets = {}  # node_id -> WebSocketResponse

    async def start(self):
        self._session = aiohttp.ClientSession(
            headers=protocol.auth_headers(self.token),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            connector=aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None,
        )

    async def close(self):
        for ws in list(self._sockets.values()):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"coordinator stopping")
        self._sockets.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, node_id):
        node = self.registry.get(node_id)
        if node is None:
            raise WorkerUnreachable(f"worker {node_id} is gone")
        return node.url

    async def _post(self, node_id, path, body, what):
        url = self._url(node_id)
        kwargs = {"data": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
            else {"json": body}
        try:
            async with self._session.post(f"{url}{path}", **kwargs) as resp:
                answer = await resp.json(content_type=None)
                if resp.status >= 300:
                    error = (answer or {}).get("error") if isinstance(answer, dict) else answer
                    if resp.status == 409:
                        raise Conflict(f"worker {node_id} refused {what}: {error}")
                    raise RuntimeError(f"worker {node_id} refused {what} (HTTP {resp.status}): {error}")
                return answer or {}
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise WorkerUnreachable(f"cannot reach worker {node_id} at {url} for {what}: "
                                    f"{type(exc).__name__}: {exc}") from exc

    async def deploy(self, node_id, tdds):
        # thousands of descriptors take a while to encode: not on the event loop
        body = await asyncio.to_thread(lambda: web_json.dumps([t.to_dict() for t in tdds]))
        await self._post(node_id, "/tasks/deploy", body, f"the deployment of {len(tdds)} task(s)")

    async def control(self, node_id, message):
        return await self._post(node_id, f"/tasks/{message.attempt_id.task_id}/control", message.to_dict(),
                                f"{message.TYPE} for {message.attempt_id}")

    async def cancel(self, node_id, task_id):
        try:
            url = self._url(node_id)
            async with self._session.post(f"{url}/tasks/{task_id}/cancel") as resp:
                if resp.status >= 300 and resp.status != 404:
                    log.warning("cancel of %s on %s: HTTP %d", task_id, node_id, resp.status)
        except (WorkerUnreachable, aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("cancel of %s on %s failed: %s", task_id, node_id, exc)

    async def job_finished(self, node_id, job_id):
        await self._post(node_id, f"/jobs/{job_id}/finished", {}, f"publishing the output of job {job_id}")

    async def release_job(self, node_id, job_id):
        await self._post(node_id, f"/jobs/{job_id}/release", {}, f"releasing job {job_id}")

    async def fetch_result(self, node_id, task_id):
        url = self._url(node_id)
        try:
            async with self._session.get(f"{url}/tasks/{task_id}/result") as resp:
                if resp.status == 204:
                    return None
                data = await resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"worker {node_id} could not return the result of {task_id}: "
                                       f"HTTP {resp.status} {data[:300]!r}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise WorkerUnreachable(f"cannot fetch the result of {task_id} from worker {node_id}: {exc}") from exc
        return pa.ipc.open_stream(io.BytesIO(data)).read_all()

    async def send(self, node_id, message):
        ws = self._sockets.get(node_id)
        if ws is None or ws.closed:
            raise WorkerUnreachable(f"worker {node_id} is not connected")
        try:
            await ws.send_json(message.to_dict())
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise WorkerUnreachable(f"sending {message.TYPE} to worker {node_id} failed: {exc}") from exc

    def is_connected(self, node_id):
        ws = self._sockets.get(node_id)
        return ws is not None and not ws.closed

    def disconnect(self, node_id, reason):
        """Close a worker's connection (it was declared lost)."""
        ws = self._sockets.pop(node_id, None)
        if ws is not None and not ws.closed:
            asyncio.ensure_future(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=reason.encode()[:120]))

    async def serve(self, node_id, ws, listener: WorkerListener):
        """Serve one worker's WebSocket until it closes (then the listener hears it is gone).

        Messages are handed over one by one; after every few ms of work the loop is let go
        (a worker with thousands of tasks sends thousands of reports)."""
        if node_id in self._sockets:
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"node already connected")
            return
        self._sockets[node_id] = ws
        self.registry.connected(node_id)
        reason, left = "its connection closed", False
        started = time.perf_counter()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        reason = f"its connection failed: {ws.exception()}"
                    continue
                if node_id not in self.registry:
                    break  # declared lost meanwhile
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    log.warning("worker %s sent a malformed message: %.200s", node_id, msg.data)
                    continue
                if not isinstance(message, dict):
                    log.warning("worker %s sent a message that is not an object: %.200s", node_id, msg.data)
                    continue
                if message.get("type") == protocol.GOODBYE:
                    reason, left = "it shut down", True
                    break
                if message.get("type") == protocol.HEARTBEAT:
                    await ws.send_json({"type": protocol.HEARTBEAT_ACK})
                parts = message.get("messages") if message.get("type") == protocol.BATCH else [message]
                for part in parts if isinstance(parts, list) else ():
                    if isinstance(part, dict):
                        listener.on_worker_message(node_id, part)
                    if time.perf_counter() - started > YIELD_EVERY_S:
                        await asyncio.sleep(0)
                        started = time.perf_counter()
                        if node_id not in self.registry:
                            break
        finally:
            if self._sockets.get(node_id) is ws:
                del self._sockets[node_id]
            listener.on_worker_gone(node_id, reason, left=left)

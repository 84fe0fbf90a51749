"""ClusterCoordinator: Sabot's JobManager.

It takes jobs (a :class:`~sabot.execution.job_graph.JobGraph`), allocates a slot
per task from the :class:`~sabot.execution.slot_pool.SlotPool`, deploys every
task to the worker owning its slot, and follows the job from the task reports
workers send over their WebSocket until it FINISHED, FAILED or was CANCELED.

Threading: everything (jobs, nodes, the slot pool) is owned by the thread that
runs the coordinator's event loop. HTTP handlers and worker messages run as
coroutines/callbacks on that same loop, so no lock is needed; other threads must
post to the loop (``asyncio.run_coroutine_threadsafe``), as
:class:`~sabot.cluster.local.LocalCluster` does.

Scheduling: a job is *gang-scheduled*. All tasks of a job share one slot-sharing
group (the job id; an operator's own ``sharing_group`` makes a separate group),
so the job needs, per group, as many slots as its widest operator. The job
waits in a FIFO (state ``WAITING_FOR_SLOTS``) until that many fitting slots are
free, then all its slots are taken at once, so two half-placed jobs can never
block each other. A job still waiting after ``slot_wait_timeout_s`` FAILS with a
message saying what it needed and what the cluster had. With
``refuse_oversized=True`` (the default) a job needing more slots than all
registered workers hold together is refused at submit (HTTP 400), because
waiting for workers that nobody is starting surprises users more than a clear
error; set it to False on an elastic cluster where workers are still joining.
With no worker registered at all, jobs wait (the cluster is starting up).

Checkpoints: every job gets a :class:`~sabot.cluster.checkpoints.CheckpointCoordinator`
once it runs, and a storage location (``config["checkpoint_dir"]`` of the job, else
``CoordinatorConfig.checkpoint_dir``, else a temp directory of this coordinator).
``checkpoint_interval_ms`` of the JobGraph triggers checkpoints periodically;
:meth:`ClusterCoordinator.trigger_checkpoint` (``POST /jobs/{id}/checkpoints``) on
demand. Triggers go to the source tasks' workers over their WebSocket, acks come
back the same way; when every task acked, the checkpoint is committed through
:class:`~sabot.runtime.checkpoint_storage.CheckpointStorage` (metadata written last)
and every worker of the job is told (two-phase-commit sinks publish). A checkpoint
is aborted on timeout, on a decline and on a task failure; the next one goes on.

Failure handling: a task failure (user exception, broken channel), or the loss of
a worker (its WebSocket drops or it misses heartbeats for ``heartbeat_timeout_s``),
restarts the affected pipelined region(s) (``exec_graph.pipelined_regions()``;
the whole job when it is one region) from the latest completed checkpoint, after
the delay of the job's restart strategy (``config["restart_strategy"]``, see
:mod:`sabot.cluster.restart`; default 3 restarts 100 ms apart). Tasks that kept a
slot on a live worker restart there; tasks of a lost worker get free slots of any
live worker (waiting up to ``restart_slot_wait_s`` for a replacement to join). Each
restarted task gets a new attempt number, so its channels are new and reports or
acks of the old attempt are dropped. A job whose strategy is exhausted FAILS with
the cause. ``submit_stream_job(graph, restore_from=...)`` starts a job from the
last checkpoint of an earlier job (or a checkpoint directory), keyed operators
possibly at another parallelism.

Example:
    >>> coordinator = ClusterCoordinator(CoordinatorConfig(port=0))
    >>> await coordinator.start()                   # doctest: +SKIP
    >>> job_id = await coordinator.submit_stream_job(job_graph)   # doctest: +SKIP
    >>> await coordinator.wait_for_job(job_id, timeout=60)        # doctest: +SKIP
    'FINISHED'
    >>> (await coordinator.job_result(job_id)).table("counts")    # doctest: +SKIP
"""

import asyncio
import collections
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from enum import Enum

import aiohttp
import pyarrow as pa
from aiohttp import web

from sabot.cluster import protocol
from sabot.cluster.checkpoints import CheckpointCoordinator, InvalidCheckpointAck
from sabot.cluster.restart import InvalidRestartStrategy, restart_strategy_from_config
from sabot.cluster.protocol import BadRequest, Conflict, NodeInfo, NotFound, RegisterRequest
from sabot.errors import (
    GraphValidationError,
    IllegalStateTransition,
    JobFailed,
    SlotRequestTooLarge,
    SlotsExhausted,
)
from sabot.execution.deployment import build_deployment_descriptors
from sabot.execution.job_graph import JobGraph
from sabot.execution.slot_pool import SlotPool, SlotRequest
from sabot.runtime import functions
from sabot.runtime.checkpoint_storage import CheckpointStorage, CompletedCheckpoint

log = logging.getLogger(__name__)

__all__ = ["ClusterCoordinator", "CoordinatorConfig", "JobState"]


@dataclass
class CoordinatorConfig:
    """Settings of a :class:`ClusterCoordinator`.

    Attributes:
        host: address to bind (anything but loopback requires ``token``).
        port: port to bind; 0 picks a free one (see ``ClusterCoordinator.url``).
        token: shared secret every request and worker must send as
            ``Authorization: Bearer <token>``; None: no authentication (loopback only).
        heartbeat_interval_s: how often workers send a heartbeat.
        heartbeat_timeout_s: a worker silent for longer is declared lost.
        slot_wait_timeout_s: how long a job may wait for free slots before it FAILS.
        refuse_oversized: refuse at submit a job needing more slots than all
            registered workers hold together (see the module docstring).
        check_imports: import every operator's function reference at submit and
            refuse the job (400) if it cannot be imported here. Turn off when
            user code is installed only on the workers; a bad reference then
            fails the job at deploy time, naming it.
        deploy_timeout_s: how long a worker may take to accept a deployment.
        checkpoint_dir: where checkpoints go (a directory or a pyarrow.fs URI) unless a
            job's ``config["checkpoint_dir"]`` says otherwise; None: a temp directory
            of this coordinator, deleted on stop.
        checkpoint_timeout_s: a checkpoint not acknowledged by every task within this
            time is aborted (a job's ``config["checkpoint_timeout_s"]`` overrides it).
        checkpoint_retain: completed checkpoints kept per job.
        restart_strategy: the restart strategy of jobs that name none (see
            :mod:`sabot.cluster.restart`; None: 3 restarts, 100 ms apart).
        restart_slot_wait_s: how long a restart waits for free slots (a replacement
            worker may join) before the job FAILS; None: ``slot_wait_timeout_s``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str = None
    heartbeat_interval_s: float = 0.1
    heartbeat_timeout_s: float = 0.5
    slot_wait_timeout_s: float = 30.0
    refuse_oversized: bool = True
    check_imports: bool = True
    deploy_timeout_s: float = 30.0
    checkpoint_dir: str = None
    checkpoint_timeout_s: float = 10.0
    checkpoint_retain: int = 3
    restart_strategy: dict = None
    restart_slot_wait_s: float = None

    @classmethod
    def coerce(cls, config):
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(config) - known)
            if unknown:
                raise ValueError(f"unknown coordinator setting(s) {unknown}; known: {sorted(known)}")
            return cls(**config)
        raise TypeError(f"config must be a CoordinatorConfig, a dict or None, got {type(config).__name__}")


class JobState(str, Enum):
    CREATED = "CREATED"
    WAITING_FOR_SLOTS = "WAITING_FOR_SLOTS"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    CANCELING = "CANCELING"
    FINISHED = "FINISHED"
    CANCELED = "CANCELED"
    FAILED = "FAILED"


TERMINAL_JOB_STATES = (JobState.FINISHED, JobState.CANCELED, JobState.FAILED)
TERMINAL_TASK_STATES = ("FINISHED", "CANCELED", "FAILED")


class JobRecord:
    """Everything the coordinator knows about one job (owned by the loop thread)."""

    def __init__(self, job_id, job_graph, exec_graph, now):
        self.job_id = job_id
        self.job_graph = job_graph
        self.exec_graph = exec_graph
        self.state = JobState.CREATED
        self.submitted_at = now
        self.wall_submitted_at = time.time()
        self.started_at = None
        self.ended_at = None
        self.failure = None  # {"error", "traceback", "task_id"}
        self.task_status = {}  # task_id -> last update from its worker
        self.task_node = {}  # task_id -> node_id
        self.slots = {}  # task_id -> Slot
        self.done = asyncio.Event()
        self.deployed = asyncio.Event()
        self.wait_timer = None
        self.result = None
        self.slots_needed = 0
        self.max_cpu = 0.0
        self.max_memory = 0
        # checkpoints and recovery
        self.storage = None  # CheckpointStorage
        self.checkpoint_spec = None  # {"storage": uri, "retain": n} for the TDDs
        self.checkpoints = None  # CheckpointCoordinator, once running
        self.checkpoint_loop = None
        self.commits = set()  # commit coroutines in flight
        self.latest_checkpoint = None  # CompletedCheckpoint.to_dict() summary of the last commit
        self.skipped_checkpoints = []  # why a restore passed over checkpoint directories
        self.restart_strategy = None
        self.failures = 0  # failures counted against the restart strategy
        self.restarts = 0
        self.restart_history = []
        self.last_failure = None
        self.restored_from = None  # {"checkpoint_id", "path", "job_id", "at"} of the last (re)start
        self.initial_restore = None  # restore spec of a job submitted with restore_from
        self.restarting_tasks = set()
        self.restart_task = None
        self.finishing = False  # every task finished; the workers are publishing staged output

    @property
    def terminal(self):
        return self.state in TERMINAL_JOB_STATES


def _task_state_name(task):
    state = task.state
    return getattr(state, "name", None) or str(state)


class ClusterCoordinator:
    """The JobManager: HTTP API, worker registry, slot pool, deployment, job states.

    Args:
        config: a :class:`CoordinatorConfig` or a dict of its fields.
        clock: monotonic time source (injected so heartbeat timeouts are testable).

    Attributes:
        active_jobs: ``{job_id: ExecutionGraph}`` of every job this coordinator has
            accepted (finished ones included, so their final metrics stay readable);
            its tasks carry live state, node_id, slot_id, rows/bytes processed.
        jobs: ``{job_id: JobRecord}`` (state, failure, per-task reports).
        nodes: ``{node_id: NodeInfo}`` of registered, live workers.
        slot_pool: the :class:`~sabot.execution.slot_pool.SlotPool`.
    """

    def __init__(self, config=None, *, clock=time.monotonic):
        self.config = CoordinatorConfig.coerce(config)
        self.config.token = protocol.resolve_token(self.config.token)
        protocol.check_binding(self.config.host, self.config.token, "coordinator")
        if self.config.heartbeat_timeout_s <= self.config.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s ({self.config.heartbeat_timeout_s}) must be larger than "
                f"heartbeat_interval_s ({self.config.heartbeat_interval_s})"
            )
        self.clock = clock
        self.slot_pool = SlotPool()
        self.nodes = {}
        self.lost_nodes = collections.OrderedDict()
        self.jobs = {}
        self.active_jobs = {}
        self._pending = collections.deque()  # jobs waiting for slots, FIFO
        self._operator_ids = set()  # of every job accepted, so resubmissions get fresh ids
        self._sockets = {}  # node_id -> WebSocketResponse
        self._runner = None
        self._session = None
        self._monitor = None
        self._background = set()
        self._url = None
        self._started_at = None
        self._loop = None
        self._stopping = False
        self._own_checkpoint_dir = None
        self.checkpoint_root = self.config.checkpoint_dir
        restart_strategy_from_config(self.config.restart_strategy)  # refuse a bad default early
        from sabot.cluster.http_api import CoordinatorMetrics
        from sabot.cluster.rescaling import Rescaler

        self.metrics = CoordinatorMetrics(self)
        self.rescaler = Rescaler(self)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self):
        """``http://host:port`` once started."""
        if self._url is None:
            raise RuntimeError("the coordinator is not started; await start() first")
        return self._url

    async def start(self):
        """Bind the HTTP server and start watching heartbeats."""
        from sabot.cluster.http_api import build_coordinator_app

        self._loop = asyncio.get_running_loop()
        self._started_at = self.clock()
        if self.checkpoint_root is None:
            self._own_checkpoint_dir = tempfile.mkdtemp(prefix="sabot-checkpoints-")
            self.checkpoint_root = self._own_checkpoint_dir
        app = build_coordinator_app(self)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]
        self._url = f"http://{host}:{port}"
        self._session = aiohttp.ClientSession(
            headers=protocol.auth_headers(self.config.token),
            timeout=aiohttp.ClientTimeout(total=self.config.deploy_timeout_s),
        )
        self._monitor = asyncio.ensure_future(self._heartbeat_monitor())
        log.info("coordinator listening on %s", self._url)
        return self

    async def stop(self):
        """Cancel running jobs' tasks on the workers, close every connection, stop serving."""
        if self._runner is None:
            return
        self._stopping = True
        if self._monitor is not None:
            self._monitor.cancel()
        for job in list(self.jobs.values()):
            if not job.terminal:
                try:
                    await asyncio.wait_for(self.cancel_job(job.job_id), 5)
                except Exception:  # stopping anyway
                    log.exception("canceling job %s on stop failed", job.job_id)
        for ws in list(self._sockets.values()):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"coordinator stopping")
        for task in list(self._background):
            task.cancel()
        await self._session.close()
        await self._runner.cleanup()
        self._runner = None
        if self._own_checkpoint_dir is not None:
            shutil.rmtree(self._own_checkpoint_dir, ignore_errors=True)
            self._own_checkpoint_dir = None
            self.checkpoint_root = self.config.checkpoint_dir
        self._stopping = False
        log.info("coordinator %s stopped", self._url)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def _spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- workers -----------------------------------------------------------------------

    def register_worker(self, body):
        """Register a worker (the body of ``POST /workers/register``); return the response dict."""
        req = RegisterRequest.from_dict(body)
        if req.node_id in self.nodes:
            raise Conflict(
                f"node {req.node_id!r} is already registered (pid {self.nodes[req.node_id].pid}, "
                f"{self.nodes[req.node_id].url}); a worker registers once"
            )
        for node in self.nodes.values():
            if (node.host, node.port) == (req.host, req.port):
                raise Conflict(
                    f"a worker at {req.host}:{req.port} is already registered as node {node.node_id!r}"
                )
        now = self.clock()
        node = NodeInfo(
            node_id=req.node_id, host=req.host, port=req.port, data_host=req.data_host,
            data_port=req.data_port, num_slots=req.num_slots,
            cpu_cores_per_slot=req.cpu_cores_per_slot, memory_mb_per_slot=req.memory_mb_per_slot,
            pid=req.pid, registered_at=now, last_heartbeat=now,
        )
        self.slot_pool.register_node(
            req.node_id, req.num_slots, req.cpu_cores_per_slot, req.memory_mb_per_slot,
            metadata={"url": node.url, "pid": req.pid},
        )
        self.nodes[req.node_id] = node
        self.lost_nodes.pop(req.node_id, None)
        log.info("worker %s registered: %d slots, %s (pid %d)", req.node_id, req.num_slots, node.url, req.pid)
        self._try_schedule_pending()
        return protocol.RegisterResponse(
            req.node_id, self.config.heartbeat_interval_s, self.config.heartbeat_timeout_s
        ).to_dict()

    async def handle_worker_socket(self, node_id, ws):
        """Serve one worker's WebSocket until it closes; then the node is lost."""
        node = self.nodes.get(node_id)
        if node is None:
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"unknown node; register first")
            return
        if node_id in self._sockets:
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"node already connected")
            return
        self._sockets[node_id] = ws
        node.state = "CONNECTED"
        node.last_heartbeat = self.clock()
        reason = "its connection closed"
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type == aiohttp.WSMsgType.ERROR:
                        reason = f"its connection failed: {ws.exception()}"
                    continue
                try:
                    message = msg.json()
                    kind = message.get("type")
                except (ValueError, AttributeError):
                    log.warning("worker %s sent a malformed message: %.200s", node_id, msg.data)
                    continue
                if self.nodes.get(node_id) is not node:
                    break  # declared lost meanwhile
                node.last_heartbeat = self.clock()
                if kind == protocol.HEARTBEAT:
                    await ws.send_json({"type": protocol.HEARTBEAT_ACK})
                elif kind == protocol.TASK_UPDATE:
                    self.on_task_update(node_id, message.get("update") or {})
                elif kind == protocol.CHECKPOINT:
                    self.on_checkpoint_message(node_id, message.get("message") or {})
                elif kind == protocol.GOODBYE:
                    reason = "it shut down"
                    break
                else:
                    log.warning("worker %s sent an unknown message type %r", node_id, kind)
        finally:
            if self._sockets.get(node_id) is ws:
                del self._sockets[node_id]
            if self.nodes.get(node_id) is node:
                self.node_lost(node_id, reason)

    async def _heartbeat_monitor(self):
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            try:
                self.check_heartbeats()
            except Exception:
                log.exception("heartbeat check failed")
            for job in list(self.jobs.values()):
                if job.checkpoints is not None and not job.terminal:
                    for cid in job.checkpoints.check_timeouts():
                        self._spawn(self._discard_checkpoint(job, cid))

    def check_heartbeats(self, now=None):
        """Declare lost every node silent for more than ``heartbeat_timeout_s``; return their ids."""
        now = self.clock() if now is None else now
        lost = [
            n.node_id for n in self.nodes.values()
            if now - n.last_heartbeat > self.config.heartbeat_timeout_s
        ]
        for node_id in lost:
            silent = now - self.nodes[node_id].last_heartbeat
            self.node_lost(node_id, f"no heartbeat for {silent:.2f} s (timeout {self.config.heartbeat_timeout_s} s)")
        return lost

    def node_lost(self, node_id, reason):
        """Drop a node: its slots leave the pool, its tasks fail, their jobs fail."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return
        node.state = "LEFT" if reason == "it shut down" else "LOST"
        node.lost_reason = reason
        self.lost_nodes[node_id] = node
        while len(self.lost_nodes) > 100:
            self.lost_nodes.popitem(last=False)
        log.log(logging.INFO if self._stopping or node.state == "LEFT" else logging.WARNING,
                "worker %s %s: %s", node_id, "left" if node.state == "LEFT" else "lost", reason)
        ws = self._sockets.pop(node_id, None)
        if ws is not None and not ws.closed:
            self._spawn(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node declared lost"))
        self.slot_pool.unregister_node(node_id)
        for job in list(self.jobs.values()):
            if job.terminal:
                continue
            on_node = [t for t, n in job.task_node.items() if n == node_id]
            for task_id in on_node:
                job.slots.pop(task_id, None)  # the pool already freed them
            if on_node:
                cause = f"worker {node_id} (pid {node.pid}) was lost: {reason}"
                for task_id in on_node:
                    task = job.exec_graph.tasks.get(task_id)
                    if task is not None and _task_state_name(task) not in TERMINAL_TASK_STATES:
                        task.failure_cause = cause
                        self._advance(task, "FAILED")
                if self._stopping:
                    self._fail_job(job, f"job {job.job_id} failed: task {on_node[0]} ran on {cause}",
                                   task_id=on_node[0])
                else:
                    self._handle_failure(job, f"job {job.job_id}: task {on_node[0]} ran on {cause}",
                                         task_ids=on_node)

    # -- task reports --------------------------------------------------------------------

    def on_task_update(self, node_id, update):
        """Apply one task report from a worker (stale attempts and unknown jobs are dropped)."""
        job = self.jobs.get(update.get("job_id"))
        if job is None:
            log.debug("update for unknown job %r dropped", update.get("job_id"))
            return
        if self.rescaler.on_task_update(job, node_id, update):
            return  # an old task of a live rescale handing its state over
        task_id = update.get("task_id")
        task = job.exec_graph.tasks.get(task_id)
        if task is None or update.get("attempt") != task.attempt or job.task_node.get(task_id) != node_id:
            log.debug("stale update for task %r (attempt %r) dropped", task_id, update.get("attempt"))
            return
        job.task_status[task_id] = update
        metrics = update.get("metrics") or {}
        is_source = _operator_type(job.job_graph.operators[task.operator_id]) == "source"
        task.rows_processed = int(metrics.get("rows_out" if is_source else "rows_in", 0))
        task.bytes_processed = int(metrics.get("bytes_out" if is_source else "bytes_in", 0))
        state = update.get("state")
        if job.terminal or job.state == JobState.CANCELING:
            return
        if job.state == JobState.RESTARTING and task_id in job.restarting_tasks:
            if state in ("FAILED", "CANCELED"):
                self._advance(task, state)  # a task of the region being restarted stopping: expected
            return
        if state == "FAILED":
            error = update.get("error") or ""
            task.failure_cause = error
            self._advance(task, "FAILED")
            attempt = task.attempt
            message = f"job {job.job_id}: task {task_id} ({task.operator_name}) on worker {node_id} failed: {error}"

            def fail():
                if task.attempt != attempt or job.terminal or task_id in job.restarting_tasks:
                    return  # already restarted (e.g. the lost worker was named as the cause)
                self._handle_failure(job, message, task_ids=[task_id], traceback=update.get("traceback"))

            if "ChannelClosed" in error:
                # A broken channel is usually the symptom of a peer worker dying; give its
                # loss (WebSocket drop or missed heartbeats) the chance to be named as the cause.
                asyncio.get_running_loop().call_later(self.config.heartbeat_timeout_s + 0.1, fail)
            else:
                fail()
        elif state == "CANCELED":
            self._advance(task, "CANCELED")
            self._handle_failure(job, f"job {job.job_id}: task {task_id} was canceled on worker {node_id} "
                                      "without the coordinator asking", task_ids=[task_id])
        elif state in ("RUNNING", "FINISHED"):
            self._advance(task, state)
            if state == "FINISHED" and not job.finishing and all(
                _task_state_name(t) == "FINISHED" for t in job.exec_graph.tasks.values()
            ):
                job.finishing = True
                self._spawn(self._finish_job(job))
            elif state == "RUNNING" and job.state == JobState.DEPLOYING and all(
                _task_state_name(t) in ("RUNNING", "FINISHED") for t in job.exec_graph.tasks.values()
            ):
                self._set_running(job)

    def _advance(self, task, target):
        """Move ``task`` to ``target``, through the intermediate states a report may skip."""
        from sabot.execution.execution_graph import TaskState

        if _task_state_name(task) == target:
            return
        paths = ([target], ["RUNNING", target], ["DEPLOYING", "RUNNING", target], ["CANCELING", target],
                 ["SCHEDULED", "DEPLOYING", "RUNNING", target])
        for path in paths:
            try:
                for step in path:
                    if _task_state_name(task) != step:
                        task.transition(TaskState[step])
                return
            except IllegalStateTransition:
                continue
        log.warning("task %s cannot move from %s to %s; report ignored", task.task_id, _task_state_name(task), target)

    # -- jobs ----------------------------------------------------------------------------

    def _parse_job_graph(self, job_graph):
        if isinstance(job_graph, JobGraph):
            return job_graph
        if hasattr(job_graph, "to_job_graph"):
            return job_graph.to_job_graph(shippable=True)
        if not isinstance(job_graph, dict):
            raise BadRequest(
                f"a job must be a JobGraph or its to_dict() form (a JSON object), got {type(job_graph).__name__}"
            )
        if "operators" not in job_graph:
            raise BadRequest(
                f"the body is not a job graph: JobGraph.to_dict() has an 'operators' field; got fields "
                f"{sorted(job_graph)[:10]}"
            )
        try:
            return JobGraph.from_dict(job_graph)
        except GraphValidationError as exc:
            raise BadRequest(f"invalid job graph: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadRequest(f"the body is not a valid job graph (JobGraph.to_dict()): {type(exc).__name__}: {exc}") from exc

    def _check_functions(self, job_graph):
        for op in job_graph.operators.values():
            refs = [op.function] + [v for k, v in sorted((op.parameters or {}).items())
                                    if k.endswith("function") and isinstance(v, str)]
            for ref in refs:
                if ref is None:
                    continue
                if functions.is_local(ref):
                    raise BadRequest(
                        f"operator {op.name!r} uses a lambda or closure ({ref}); only module-level functions "
                        "('package.module:function') can be shipped to workers"
                    )
                if self.config.check_imports:
                    try:
                        functions.resolve(ref)
                    except functions.FunctionReferenceError as exc:
                        raise BadRequest(f"operator {op.name!r}: {exc}") from exc

    def _make_unique(self, job_graph):
        """Give a resubmitted graph a fresh job id and operator ids.

        Task ids derive from operator ids, and workers, the slot pool and results are
        keyed by task id, so submitting one JobGraph (or JSON file) twice must not
        let the two runs share ids. The copy differs only in those ids.
        """
        ids = list(job_graph.operators)
        if job_graph.job_id not in self.jobs and not self._operator_ids.intersection(ids):
            return job_graph
        n = 2
        while f"{job_graph.job_id}-{n}" in self.jobs or any(f"{o}-{n}" in self._operator_ids for o in ids):
            n += 1
        rename = {o: f"{o}-{n}" for o in ids}
        data = job_graph.to_dict()
        data["job_id"] = f"{job_graph.job_id}-{n}"
        for op in data["operators"]:
            op["operator_id"] = rename[op["operator_id"]]
            op["upstream_ids"] = [rename[u] for u in op.get("upstream_ids") or []]
            op["downstream_ids"] = [rename[d] for d in op.get("downstream_ids") or []]
        for edge in data.get("edges") or []:
            edge["upstream_id"] = rename[edge["upstream_id"]]
            edge["downstream_id"] = rename[edge["downstream_id"]]
        return JobGraph.from_dict(data)

    async def submit_stream_job(self, job_graph, restore_from=None):
        """Validate, plan, allocate slots for, deploy and start a job; return its id.

        Args:
            job_graph: a JobGraph, its ``to_dict()``, or a Stream (``to_job_graph()``).
            restore_from: start from a checkpoint instead of the beginning: the id of
                an earlier job of this coordinator (its latest completed checkpoint),
                or the path/URI of a checkpoint directory (``.../<job>/chk-<n>``) or
                of a job's checkpoint directory (its latest valid checkpoint). State
                is matched to operators by id, else by name; keyed operators may run
                at another parallelism (state is re-split by key group), sources,
                sinks and other operator state must keep theirs.

        Returns once the job is RUNNING, or has FAILED during deployment, or waits
        for slots (``jobs[job_id].state`` says which).

        Raises:
            BadRequest (ValueError): not a job graph, invalid graph (the validate()
                message), an operator function that cannot be imported here, or a
                job larger than the cluster (``refuse_oversized``).
            SlotRequestTooLarge: an operator asks for more cpu/memory than any slot has.
            NotFound: ``restore_from`` names no known job and no checkpoint directory.
            Conflict: ``restore_from`` names a job that has no completed checkpoint.
        """
        job_graph = self._parse_job_graph(job_graph)
        try:
            job_graph.validate()
        except GraphValidationError as exc:
            raise BadRequest(f"invalid job graph {getattr(job_graph, 'job_name', '?')!r}: {exc}") from exc
        self._check_functions(job_graph)
        try:
            strategy = restart_strategy_from_config(
                job_graph.config.get("restart_strategy", self.config.restart_strategy))
        except InvalidRestartStrategy as exc:
            raise BadRequest(str(exc)) from exc
        job_graph = self._make_unique(job_graph)
        exec_graph = job_graph.to_execution_graph()
        job_id = job_graph.job_id
        job = JobRecord(job_id, job_graph, exec_graph, self.clock())
        job.restart_strategy = strategy
        root = job_graph.config.get("checkpoint_dir") or self.checkpoint_root
        retain = int(job_graph.config.get("checkpoint_retain") or self.config.checkpoint_retain)
        job.storage = await asyncio.to_thread(CheckpointStorage, root, retain)
        job.checkpoint_spec = {"storage": job.storage.uri, "retain": retain}
        if restore_from is not None:
            job.initial_restore, job.restored_from = await self._resolve_restore(job, restore_from)
        job.slots_needed, job.max_cpu, job.max_memory = self._slot_demand(job)
        self._check_fits_cluster(job)
        self.jobs[job_id] = job
        self.active_jobs[job_id] = exec_graph
        self._operator_ids.update(job_graph.operators)
        self.metrics.jobs_submitted.inc()
        log.info("job %s (%s) submitted: %d tasks, needs %d slots", job_id, job_graph.job_name,
                 len(exec_graph.tasks), job.slots_needed)
        job.state = JobState.WAITING_FOR_SLOTS
        self._pending.append(job)
        job.wait_timer = asyncio.get_running_loop().call_later(
            self.config.slot_wait_timeout_s, self._slot_wait_expired, job
        )
        self._try_schedule_pending()
        if job.state == JobState.DEPLOYING:
            await job.deployed.wait()
        return job_id

    def _groups(self, job):
        groups = collections.defaultdict(list)
        for op in job.job_graph.operators.values():
            group = getattr(op, "sharing_group", None)
            groups[f"{job.job_id}/{group}" if group else job.job_id].append(op.operator_id)
        return groups

    def _slot_demand(self, job):
        needed, cpu, memory = 0, 0.0, 0
        for op_ids in self._groups(job).values():
            needed += max(len(job.exec_graph.operator_tasks(o)) for o in op_ids)
        for op in job.job_graph.operators.values():
            cpu = max(cpu, float(op.cpu_cores or 0))
            memory = max(memory, int(op.memory_mb or 0))
        return needed, cpu, memory

    def _fitting_nodes(self, job):
        return [n for n in self.nodes.values()
                if n.cpu_cores_per_slot >= job.max_cpu and n.memory_mb_per_slot >= job.max_memory]

    def _check_fits_cluster(self, job):
        if not self.nodes:
            return
        if not self._fitting_nodes(job):
            largest = max(self.nodes.values(), key=lambda n: (n.cpu_cores_per_slot, n.memory_mb_per_slot))
            raise SlotRequestTooLarge(
                f"job {job.job_graph.job_name!r} has an operator asking for {job.max_cpu:g} cpu cores / "
                f"{job.max_memory} MB per slot; the largest slot has {largest.cpu_cores_per_slot:g} cpu "
                f"cores / {largest.memory_mb_per_slot} MB"
            )
        total = sum(n.num_slots for n in self._fitting_nodes(job))
        if self.config.refuse_oversized and job.slots_needed > total:
            raise BadRequest(
                f"job {job.job_graph.job_name!r} needs {job.slots_needed} slots (its widest operator's "
                f"parallelism, per sharing group) but the whole cluster has {total} slots on "
                f"{len(self.nodes)} worker(s); lower the parallelism or add workers"
            )

    def _slot_wait_expired(self, job):
        if job.state != JobState.WAITING_FOR_SLOTS:
            return
        self._pending.remove(job)
        free = sum(self.slot_pool.get_free_slots(n.node_id) for n in self._fitting_nodes(job))
        self._fail_job(
            job,
            f"job {job.job_id} failed: it waited {self.config.slot_wait_timeout_s:g} s for "
            f"{job.slots_needed} free slots ({job.max_cpu:g} cpu / {job.max_memory} MB each) but only "
            f"{free} were free (cluster: {self.slot_pool.total_slots} slots on {len(self.nodes)} workers)",
            error_type=SlotsExhausted,
        )

    def _try_schedule_pending(self):
        """Start waiting jobs, strictly in submission order, while their slots are free."""
        while self._pending:
            job = self._pending[0]
            fitting = self._fitting_nodes(job)
            free = {n.node_id: self.slot_pool.get_free_slots(n.node_id) for n in fitting}
            if sum(free.values()) < job.slots_needed:
                return
            self._pending.popleft()
            if self._allocate(job, free):
                job.wait_timer.cancel()
                job.state = JobState.DEPLOYING
                self._spawn(self._deploy(job))
            else:  # the pool placed differently than counted: wait for more slots
                self._pending.appendleft(job)
                return

    def _allocate(self, job, free):
        """Take every slot of ``job`` now (all or nothing), spreading subtasks over workers."""
        plan = []  # slot position -> preferred node: most free slots first, round robin
        free = dict(free)
        for _ in range(max(1, job.slots_needed)):
            node_id = max(free, key=lambda n: free[n])
            plan.append(node_id)
            free[node_id] -= 1
        taken = []
        try:
            for group_ops in self._groups(job).values():
                for op_id in group_ops:
                    op = job.job_graph.operators[op_id]
                    group = getattr(op, "sharing_group", None)
                    for task in job.exec_graph.operator_tasks(op_id):
                        request = SlotRequest(
                            task_id=task.task_id, operator_id=op_id,
                            cpu_cores=float(op.cpu_cores or 0), memory_mb=int(op.memory_mb or 0),
                            sharing_group=f"{job.job_id}/{group}" if group else job.job_id,
                            preferred_node=plan[task.subtask_index % len(plan)],
                        )
                        slot = self.slot_pool.request_slot(request)
                        if slot is None:
                            self.slot_pool.cancel_request(task.task_id)
                            raise SlotsExhausted(f"no slot for {task.task_id}")
                        taken.append(task.task_id)
                        job.slots[task.task_id] = slot
                        job.task_node[task.task_id] = slot.node_id
                        task.slot_id = slot.slot_id
                        task.node_id = slot.node_id
                        self.nodes[slot.node_id].task_ids.add(task.task_id)
                        self._advance(task, "SCHEDULED")
        except SlotsExhausted:
            log.warning("job %s: the slot pool placed tasks differently than expected; waiting", job.job_id)
            for task_id in taken:
                self._release_task_slot(job, task_id)
            return False
        return True

    def _release_task_slot(self, job, task_id):
        slot = job.slots.pop(task_id, None)
        node = self.nodes.get(job.task_node.get(task_id))
        if node is not None:
            node.task_ids.discard(task_id)
        if slot is not None and self.slot_pool.get_task_slot(task_id) is not None:
            self.slot_pool.release_task(task_id)

    def _release_job_slots(self, job):
        for task_id in list(job.slots):
            self._release_task_slot(job, task_id)
        for node in self.nodes.values():
            node.task_ids.difference_update(job.task_node)
        self._try_schedule_pending()

    async def _deploy(self, job):
        try:
            locations = {tid: self.nodes[nid].data_address for tid, nid in job.task_node.items()}
            tdds = build_deployment_descriptors(job.exec_graph, job.job_id, locations,
                                                restore=job.initial_restore, checkpoint=job.checkpoint_spec,
                                                assignments=self.rescaler.assignments.get(job.job_id))
            per_node = collections.defaultdict(list)
            for task_id, tdd in tdds.items():
                per_node[job.task_node[task_id]].append(tdd)
                self._advance(job.exec_graph.tasks[task_id], "DEPLOYING")
            results = await asyncio.gather(
                *(self._post_deploy(node_id, batch) for node_id, batch in per_node.items()),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors and not job.terminal:
                self._fail_job(job, f"job {job.job_id} failed to deploy: {errors[0]}")
            elif job.state == JobState.DEPLOYING:
                self._set_running(job)
        except Exception as exc:  # a bug must not leave the job hanging
            log.exception("deploying job %s failed", job.job_id)
            if not job.terminal:
                self._fail_job(job, f"job {job.job_id} failed to deploy: {type(exc).__name__}: {exc}")
        finally:
            job.deployed.set()

    async def _post_deploy(self, node_id, tdds):
        return await self.post_to_worker(node_id, "/tasks/deploy", tdds, "the deployment")

    async def post_to_worker(self, node_id, path, body, what):
        """POST JSON to a worker; its JSON answer, or an error naming the worker and ``what``."""
        node = self.nodes.get(node_id)
        if node is None:
            raise ConnectionError(f"worker {node_id} is gone")
        try:
            async with self._session.post(f"{node.url}{path}", json=body) as resp:
                answer = await resp.json(content_type=None)
                if resp.status >= 300:
                    raise RuntimeError(f"worker {node_id} refused {what} (HTTP {resp.status}): "
                                       f"{(answer or {}).get('error')}")
                return answer or {}
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"cannot reach worker {node_id} at {node.url}: {exc}") from exc

    def _set_running(self, job):
        job.state = JobState.RUNNING
        job.started_at = self.clock()
        self.metrics.submit_to_running.observe(job.started_at - job.submitted_at)
        log.info("job %s RUNNING (%.3f s after submit)", job.job_id, job.started_at - job.submitted_at)
        self._start_checkpointing(job)

    def _end_job(self, job, state):
        job.state = state
        job.ended_at = self.clock()
        if job.wait_timer is not None:
            job.wait_timer.cancel()
        if job.checkpoint_loop is not None:
            job.checkpoint_loop.cancel()
            job.checkpoint_loop = None
        if job.checkpoints is not None:
            for cid in job.checkpoints.abort_all(f"the job {state.value}"):
                self._spawn(self._discard_checkpoint(job, cid))
        if job.restart_task is not None and not job.restart_task.done() \
                and job.restart_task is not asyncio.current_task():
            job.restart_task.cancel()
        self.rescaler.job_ended(job)
        self._release_job_slots(job)
        job.done.set()
        log.info("job %s %s", job.job_id, state.value)

    def _fail_job(self, job, message, traceback=None, task_id=None, error_type=None):
        if job.terminal:
            return
        job.failure = {"error": message, "traceback": traceback, "task_id": task_id,
                       "type": (error_type or JobFailed).__name__}
        others = [(tid, nid) for tid, nid in job.task_node.items()
                  if tid != task_id and _task_state_name(job.exec_graph.get_task(tid)) not in TERMINAL_TASK_STATES]
        for tid, _ in others:
            self._advance(job.exec_graph.get_task(tid), "CANCELED")
        for tid, task in job.exec_graph.tasks.items():
            if _task_state_name(task) not in TERMINAL_TASK_STATES and tid not in job.task_node:
                self._advance(task, "CANCELED")
        log.error("%s", message)
        self._end_job(job, JobState.FAILED)
        if others:
            self._spawn(self._cancel_on_workers(job, others))

    async def _finish_job(self, job):
        """Every task finished: let each worker of the job publish the output its sinks kept
        staged at end of input (two-phase commit), then the job is FINISHED."""
        async def publish(node_id):
            node = self.nodes.get(node_id)
            if node is None:
                raise ConnectionError(f"worker {node_id} is gone")
            async with self._session.post(f"{node.url}/jobs/{job.job_id}/finished") as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"worker {node_id}: HTTP {resp.status} {(await resp.text())[:300]}")

        try:
            if job.commits:
                await asyncio.gather(*list(job.commits), return_exceptions=True)
            nodes = {job.task_node[t] for t in job.exec_graph.tasks if t in job.task_node}
            results = await asyncio.gather(*(publish(n) for n in nodes), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if job.terminal:
                return
            if errors:
                self._fail_job(job, f"job {job.job_id} failed: publishing the output of its sinks failed: "
                                    f"{type(errors[0]).__name__}: {errors[0]}")
            else:
                self._end_job(job, JobState.FINISHED)
        finally:
            job.finishing = False

    async def _cancel_on_workers(self, job, tasks):
        async def cancel_one(task_id, node_id):
            node = self.nodes.get(node_id)
            if node is None:
                return
            try:
                async with self._session.post(f"{node.url}/tasks/{task_id}/cancel") as resp:
                    if resp.status >= 300 and resp.status != 404:
                        log.warning("cancel of %s on %s: HTTP %d", task_id, node_id, resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("cancel of %s on %s failed: %s", task_id, node_id, exc)

        await asyncio.gather(*(cancel_one(t, n) for t, n in tasks))

    # -- checkpoints -------------------------------------------------------------------

    def _source_ids(self, job):
        return [t.task_id for op_id, op in job.job_graph.operators.items() if _operator_type(op) == "source"
                for t in job.exec_graph.operator_tasks(op_id)]

    def _task_attempts(self, job):
        return {tid: t.attempt for tid, t in job.exec_graph.tasks.items()}

    def _start_checkpointing(self, job):
        """Create the job's CheckpointCoordinator (once) and its periodic trigger."""
        if job.checkpoints is None:
            attempts = self._task_attempts(job)
            sources = {tid: attempts[tid] for tid in self._source_ids(job)}
            if not sources:
                return
            timeout = float(job.job_graph.config.get("checkpoint_timeout_s") or self.config.checkpoint_timeout_s)
            job.checkpoints = CheckpointCoordinator(job.job_id, attempts, sources, timeout_s=timeout,
                                                    clock=self.clock)
        interval = job.job_graph.checkpoint_interval_ms
        if interval and job.checkpoint_loop is None:
            job.checkpoint_loop = self._spawn(self._checkpoint_loop(job, interval / 1000.0))

    async def _checkpoint_loop(self, job, interval):
        while not job.terminal:
            await asyncio.sleep(interval)
            if job.state != JobState.RUNNING or job.checkpoints is None:
                continue
            for cid in job.checkpoints.check_timeouts():
                self._spawn(self._discard_checkpoint(job, cid))
            if not job.checkpoints.can_trigger() or self._finished_sources(job):
                continue  # one in progress, or a bounded job's input is over: no barrier can follow
            try:
                await self._trigger(job)
            except Conflict as exc:
                log.debug("job %s: periodic checkpoint skipped: %s", job.job_id, exc)
            except Exception:
                log.exception("job %s: triggering a checkpoint failed", job.job_id)

    def _finished_sources(self, job):
        return [tid for tid in self._source_ids(job)
                if _task_state_name(job.exec_graph.tasks[tid]) == "FINISHED"]

    async def trigger_checkpoint(self, job_id):
        """Start a checkpoint of a RUNNING job now; return its id (it completes asynchronously,
        see :meth:`checkpoints_view`).

        Raises:
            NotFound: unknown job.
            Conflict: the job is not RUNNING, a source already reached the end of its
                input, or a checkpoint is still in progress.
        """
        return await self._trigger(self.get_job(job_id))

    async def _trigger(self, job):
        if job.state != JobState.RUNNING or job.checkpoints is None:
            raise Conflict(f"job {job.job_id} is {job.state.value}; checkpoints are taken while it is RUNNING")
        if self.rescaler.blocks_checkpoints(job):
            raise Conflict(f"job {job.job_id} is rescaling; the next checkpoint waits until it is done")
        done = self._finished_sources(job)
        if done:
            raise Conflict(f"job {job.job_id}: source task(s) {done} reached the end of their input; "
                           "a checkpoint barrier can no longer pass them")
        cc = job.checkpoints
        for cid in cc.check_timeouts():
            self._spawn(self._discard_checkpoint(job, cid))
        if not cc.can_trigger():
            (pending,) = cc.pending.values()
            raise Conflict(f"job {job.job_id}: checkpoint {pending.checkpoint_id} is in progress "
                           f"({len(pending.acks)}/{len(pending.expected)} acks); one checkpoint at a time")
        pending = cc.trigger()
        timestamp_ms = int(time.time() * 1000)
        for task_id, attempt in pending.source_tasks.items():
            node_id = job.task_node.get(task_id)
            ws = self._sockets.get(node_id)
            try:
                if ws is None or ws.closed:
                    raise ConnectionError(f"worker {node_id} is not connected")
                await ws.send_json(protocol.trigger_checkpoint_message(
                    job.job_id, task_id, attempt, pending.checkpoint_id, timestamp_ms))
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                if cc.abort(pending.checkpoint_id, f"cannot send the trigger to source {task_id}: {exc}"):
                    self._spawn(self._discard_checkpoint(job, pending.checkpoint_id))
                break
        return pending.checkpoint_id

    def on_checkpoint_message(self, node_id, message):
        """Apply a task's checkpoint ack/decline (stale attempts and unknown jobs are dropped)."""
        job = self.jobs.get(message.get("job_id"))
        if job is None or job.checkpoints is None or job.terminal:
            log.debug("checkpoint message for job %r dropped", message.get("job_id"))
            return
        task_id = message.get("task_id")
        checkpoint_id = message.get("checkpoint_id")
        attempt = message.get("attempt")
        if job.task_node.get(task_id) != node_id:
            log.debug("checkpoint message of task %r from worker %s, which does not host it: dropped",
                      task_id, node_id)
            return
        cc = job.checkpoints
        if message.get("type") == "checkpoint_ack":
            try:
                record = cc.acknowledge(checkpoint_id, task_id, attempt, message.get("stats"))
            except InvalidCheckpointAck as exc:
                log.error("job %s: %s", job.job_id, exc)
                if cc.abort(checkpoint_id, str(exc)):
                    self._spawn(self._discard_checkpoint(job, checkpoint_id))
                return
            if record is not None:
                commit = self._spawn(self._commit_checkpoint(job, record))
                job.commits.add(commit)
                commit.add_done_callback(job.commits.discard)
        elif message.get("type") == "checkpoint_declined":
            if cc.decline(checkpoint_id, task_id, attempt, message.get("reason") or "no reason given"):
                self._spawn(self._discard_checkpoint(job, checkpoint_id))
        else:
            log.warning("worker %s sent an unknown checkpoint message type %r", node_id, message.get("type"))

    def _checkpoint_metadata(self, job):
        return {
            "job_name": job.job_graph.job_name,
            "operators": {
                op_id: {"name": op.name, "operator_type": _operator_type(op),
                        "parallelism": len(job.exec_graph.operator_tasks(op_id)),
                        "max_parallelism": op.max_parallelism}
                for op_id, op in job.job_graph.operators.items()
            },
        }

    async def _commit_checkpoint(self, job, record):
        cid = record.checkpoint_id
        try:
            completed = await asyncio.to_thread(job.storage.commit, job.job_id, cid,
                                                self._checkpoint_metadata(job), handles=record.handles)
        except Exception as exc:
            log.error("job %s: committing checkpoint %d failed: %s", job.job_id, cid, exc)
            job.checkpoints.fail_completed(cid, f"commit failed: {type(exc).__name__}: {exc}")
            await self._discard_checkpoint(job, cid)
            return
        job.latest_checkpoint = {"checkpoint_id": cid, "path": completed.path, "size_bytes": completed.size_bytes,
                                 "timestamp": completed.timestamp}
        message = protocol.checkpoint_complete_message(job.job_id, cid)
        for node_id in set(job.task_node.values()):
            ws = self._sockets.get(node_id)
            if ws is None or ws.closed:
                continue  # its tasks restart from this checkpoint, which commits their pending output
            try:
                await ws.send_json(message)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                log.warning("job %s: telling worker %s that checkpoint %d completed failed: %s",
                            job.job_id, node_id, cid, exc)

    async def _discard_checkpoint(self, job, checkpoint_id):
        try:
            await asyncio.to_thread(job.storage.discard, job.job_id, checkpoint_id)
        except Exception as exc:  # a late writer, or already committed: leave it
            log.debug("job %s: discarding checkpoint %s: %s", job.job_id, checkpoint_id, exc)

    def _checkpoint_summary(self, job):
        cc = job.checkpoints
        counts = cc.counts if cc is not None else None
        if counts is not None:
            counts = {k: v for k, v in counts.items() if k != "dropped_by_reason"}
        return {"interval_ms": job.job_graph.checkpoint_interval_ms, "counts": counts,
                "latest_completed": job.latest_checkpoint}

    def checkpoints_view(self, job_id):
        """``GET /jobs/{job_id}/checkpoints``: the job's checkpoint history and settings."""
        job = self.get_job(job_id)
        cc = job.checkpoints
        return {
            "job_id": job.job_id,
            "state": job.state.value,
            "storage": job.storage.uri if job.storage is not None else None,
            "interval_ms": job.job_graph.checkpoint_interval_ms,
            "timeout_s": cc.timeout_s if cc is not None else None,
            "counts": cc.counts if cc is not None else None,
            "history": cc.history() if cc is not None else [],
            "latest_completed": job.latest_checkpoint,
            "restored_from": job.restored_from,
            "skipped": list(job.skipped_checkpoints),
        }

    # -- recovery ------------------------------------------------------------------------

    def tasks_changed(self, job):
        """The job's task set changed (live rescale): checkpoints in flight cannot complete."""
        if job.checkpoints is not None:
            attempts = self._task_attempts(job)
            for cid in job.checkpoints.update_tasks(attempts, {t: attempts[t] for t in self._source_ids(job)},
                                                    reason="the job was rescaled"):
                self._spawn(self._discard_checkpoint(job, cid))

    def task_failed(self, job, task_id, message, traceback=None):
        """A failure outside the usual task reports (e.g. during a live rescale)."""
        self._handle_failure(job, message, task_ids=[task_id] if task_id else [], traceback=traceback)

    # -- live rescaling and auto-rebalance (see sabot.cluster.rescaling) -----------------

    async def rescale_operator(self, job_id, operator_id, new_parallelism):
        """Rescale one operator of a running job, live; returns the seed's plan dict.

        The plan (``status``, ``old_parallelism``, ``new_parallelism``,
        ``old_task_ids``, ``new_task_ids``, ``requires_state_redistribution``, plus
        ``rescale_id``) comes back at once; the move goes on while the job runs and
        ``GET /jobs/{job_id}`` shows its progress and timing.

        Raises:
            NotFound: unknown job or operator.
            BadRequest: a bad parallelism, or a source or sink.
            Conflict: the job is not RUNNING, another rescale goes on, or there are
                not enough slots (the job keeps its parallelism).
        """
        return await self.rescaler.rescale(job_id, operator_id, new_parallelism)

    async def enable_auto_rebalance(self, job_id, interval_seconds=60.0, imbalance_threshold=0.3):
        """Every ``interval_seconds``, move key groups of keyed operators whose measured
        imbalance ((max - mean) / mean of the tasks' rows) exceeds ``imbalance_threshold``."""
        return self.rescaler.enable_auto_rebalance(job_id, interval_seconds, imbalance_threshold)

    async def disable_auto_rebalance(self, job_id):
        return self.rescaler.disable_auto_rebalance(job_id)

    def _regions_of(self, job, task_ids):
        """Operator ids of the pipelined regions holding ``task_ids``."""
        ops = {job.exec_graph.tasks[t].operator_id for t in task_ids if t in job.exec_graph.tasks}
        wanted = []
        for region in job.exec_graph.pipelined_regions():
            if ops.intersection(region):
                wanted.extend(region)
        return wanted or list(job.job_graph.operators)

    def _handle_failure(self, job, message, task_ids=(), traceback=None):
        """A task failed or its worker was lost: restart its region, or fail the job."""
        if job.terminal or job.state in (JobState.CANCELING, JobState.WAITING_FOR_SLOTS):
            return
        task_ids = list(task_ids)
        first = task_ids[0] if task_ids else None
        job.last_failure = {"error": message, "task_id": first, "traceback": traceback, "time": time.time()}
        self.rescaler.abort(job, message)
        if job.state == JobState.RESTARTING:
            if not set(task_ids) - job.restarting_tasks:
                return  # a task of the region being restarted: expected
            log.warning("%s (while restarting; the restart is redone)", message)
        job.failures += 1
        delay = job.restart_strategy.next_delay(job.failures) if job.restart_strategy else None
        if delay is None:
            strategy = job.restart_strategy.to_dict() if job.restart_strategy else None
            self._fail_job(job, f"{message} (restart strategy {strategy} exhausted after {job.restarts} "
                                f"restart(s))", traceback=traceback, task_id=first)
            return
        ops = self._regions_of(job, task_ids)
        previous = job.restart_task
        if previous is not None and not previous.done():
            previous.cancel()
            ops = list(dict.fromkeys(ops + [t.operator_id for t in job.exec_graph.tasks.values()
                                            if t.task_id in job.restarting_tasks]))
        job.state = JobState.RESTARTING
        job.restarting_tasks = {t.task_id for op in ops for t in job.exec_graph.operator_tasks(op)}
        if job.checkpoints is not None:
            for cid in job.checkpoints.abort_all(f"task failure: {message}"):
                self._spawn(self._discard_checkpoint(job, cid))
        log.warning("%s; restarting %d task(s) in %.3f s (failure %d, restart strategy %s)", message,
                    len(job.restarting_tasks), delay, job.failures, job.restart_strategy.to_dict())
        job.restart_task = self._spawn(self._restart(job, ops, delay, message, previous))

    def _latest_checkpoint(self, job):
        """Newest valid completed checkpoint (corrupt ones skipped, reasons kept), or None."""
        latest = job.storage.latest(job.job_id)
        skipped = [dataclasses.asdict(s) for s in job.storage.skipped]
        return latest, skipped

    async def _restart(self, job, ops, delay, cause, previous=None):
        started = self.clock()
        ids = {t.task_id for op in ops for t in job.exec_graph.operator_tasks(op)}
        try:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await job.deployed.wait()  # never race the first deployment
            survivors = [(tid, nid) for tid, nid in job.task_node.items()
                         if tid in ids and nid in self.nodes
                         and _task_state_name(job.exec_graph.tasks[tid]) not in TERMINAL_TASK_STATES]
            await self._cancel_on_workers(job, survivors)
            for tid in ids:
                task = job.exec_graph.tasks[tid]
                if _task_state_name(task) not in TERMINAL_TASK_STATES:
                    self._advance(task, "CANCELED")
            await asyncio.sleep(delay)
            if job.commits:
                await asyncio.gather(*list(job.commits), return_exceptions=True)
            checkpoint, skipped = await asyncio.to_thread(self._latest_checkpoint, job)
            job.skipped_checkpoints = skipped
            tasks = [job.exec_graph.tasks[tid] for tid in ids]
            for task in tasks:
                slot = job.slots.get(task.task_id)
                task.transition("CREATED")  # a finished task of the region runs again too
                job.task_status.pop(task.task_id, None)
                if slot is not None and job.task_node.get(task.task_id) in self.nodes:
                    task.slot_id, task.node_id = slot.slot_id, slot.node_id
                    self._advance(task, "SCHEDULED")
                else:
                    job.slots.pop(task.task_id, None)
                    job.task_node.pop(task.task_id, None)
            homeless = [t for t in tasks if t.task_id not in job.task_node]
            await self._allocate_for_restart(job, homeless)
            restore = None
            if checkpoint is not None:
                restore = {"storage": job.storage.uri, "checkpoint": checkpoint.to_dict(), "assignment": None}
            elif job.initial_restore is not None:
                restore = job.initial_restore  # nothing newer than what the job was submitted from
            locations = {tid: self.nodes[nid].data_address for tid, nid in job.task_node.items() if nid in self.nodes}
            tdds = build_deployment_descriptors(job.exec_graph, job.job_id, locations, restore=restore,
                                                checkpoint=job.checkpoint_spec,
                                                assignments=self.rescaler.assignments.get(job.job_id))
            per_node = collections.defaultdict(list)
            for tid in ids:
                per_node[job.task_node[tid]].append(tdds[tid])
                self._advance(job.exec_graph.tasks[tid], "DEPLOYING")
            job.restarts += 1
            job.restarting_tasks = set()
            job.state = JobState.RUNNING
            if job.started_at is None:
                job.started_at = self.clock()
            self._start_checkpointing(job)
            if checkpoint is not None:
                job.restored_from = {"job_id": job.job_id, "checkpoint_id": checkpoint.checkpoint_id,
                                     "path": checkpoint.path, "at": time.time()}
            entry = {"restart": job.restarts, "cause": cause, "tasks": len(ids),
                     "checkpoint_id": checkpoint.checkpoint_id if checkpoint is not None else None,
                     "skipped_checkpoints": [s["reason"] for s in skipped],
                     "seconds": None, "time": time.time()}
            job.restart_history.append(entry)
            if job.checkpoints is not None:
                attempts = self._task_attempts(job)
                job.checkpoints.update_tasks(attempts, {t: attempts[t] for t in self._source_ids(job)},
                                             reason="the job restarted")
            results = await asyncio.gather(*(self._post_deploy(n, batch) for n, batch in per_node.items()),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            entry["seconds"] = round(self.clock() - started, 4)
            if errors:
                self._handle_failure(job, f"job {job.job_id}: redeploying after a failure failed: {errors[0]}",
                                     task_ids=list(ids))
                return
            log.info("job %s restarted %d task(s) from %s in %.3f s (restart %d)", job.job_id, len(ids),
                     f"checkpoint {checkpoint.checkpoint_id}" if checkpoint is not None else "the beginning",
                     entry["seconds"], job.restarts)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("restarting job %s failed", job.job_id)
            if not job.terminal:
                self._fail_job(job, f"{cause}; restarting failed: {type(exc).__name__}: {exc}")

    async def _allocate_for_restart(self, job, tasks):
        """Give ``tasks`` free slots on live workers, waiting for a worker to join if needed."""
        if not tasks:
            return
        wait = self.config.restart_slot_wait_s
        if wait is None:
            wait = self.config.slot_wait_timeout_s
        deadline = self.clock() + wait
        while True:
            if self._place(job, tasks):
                return
            if self.clock() > deadline:
                raise SlotsExhausted(
                    f"no free slots for {len(tasks)} task(s) of job {job.job_id} within {wait:g} s "
                    f"(cluster: {self.slot_pool.free_slots} free of {self.slot_pool.total_slots} slots on "
                    f"{len(self.nodes)} workers)")
            await asyncio.sleep(0.02)

    def _place(self, job, tasks):
        """All-or-nothing slot requests for ``tasks`` (subtask i prefers the i-th freest worker)."""
        fitting = self._fitting_nodes(job)
        free = {n.node_id: self.slot_pool.get_free_slots(n.node_id) for n in fitting}
        if not free:
            return False
        plan = []
        for _ in range(len(tasks)):
            node_id = max(free, key=lambda n: free[n])
            plan.append(node_id)
            free[node_id] -= 1
        taken = []
        for task in tasks:
            op = job.job_graph.operators[task.operator_id]
            group = getattr(op, "sharing_group", None)
            request = SlotRequest(
                task_id=task.task_id, operator_id=task.operator_id,
                cpu_cores=float(op.cpu_cores or 0), memory_mb=int(op.memory_mb or 0),
                sharing_group=f"{job.job_id}/{group}" if group else job.job_id,
                preferred_node=plan[task.subtask_index % len(plan)],
            )
            try:
                slot = self.slot_pool.request_slot(request)
            except (SlotRequestTooLarge, ValueError):
                slot = None
            if slot is None:
                self.slot_pool.cancel_request(task.task_id)
                for tid in taken:
                    self._release_task_slot(job, tid)
                    job.task_node.pop(tid, None)
                return False
            taken.append(task.task_id)
            job.slots[task.task_id] = slot
            job.task_node[task.task_id] = slot.node_id
            task.slot_id, task.node_id = slot.slot_id, slot.node_id
            self.nodes[slot.node_id].task_ids.add(task.task_id)
            self._advance(task, "SCHEDULED")
        return True

    # -- restore at submit -----------------------------------------------------------------

    async def _resolve_restore(self, job, restore_from):
        """(restore spec for the TDDs, restored_from info) of ``restore_from`` for ``job``."""
        if not isinstance(restore_from, str) or not restore_from:
            raise BadRequest(f"restore_from must be a job id or a checkpoint path, got {restore_from!r}")
        old = self.jobs.get(restore_from)
        if old is not None:
            if old.storage is None:
                raise Conflict(f"job {restore_from} has no checkpoint storage")
            storage, old_job_id, wanted = old.storage, old.job_id, None
        else:
            path = restore_from.rstrip("/")
            base = path.rsplit("/", 1)[-1]
            if base.startswith("chk-") and base[4:].isdigit():
                wanted = int(base[4:])
                path = path.rsplit("/", 1)[0]
            else:
                wanted = None
            if "/" not in path:
                raise NotFound(f"restore_from {restore_from!r} is neither a job of this coordinator "
                               f"(known: {sorted(self.jobs)[-10:]}) nor a checkpoint directory")
            root, old_job_id = path.rsplit("/", 1)
            if "://" not in root and not os.path.isdir(path):
                raise NotFound(f"restore_from {restore_from!r}: no checkpoint directory {path}")
            storage = await asyncio.to_thread(CheckpointStorage, root)
        found = await asyncio.to_thread(storage.list_completed, old_job_id)
        skipped = [dataclasses.asdict(s) for s in storage.skipped]
        if wanted is not None:
            found = [c for c in found if c.checkpoint_id == wanted]
            if not found:
                reasons = [s["reason"] for s in skipped if s["checkpoint_id"] == wanted]
                raise NotFound(f"restore_from {restore_from!r}: checkpoint {wanted} of job {old_job_id} is not a "
                               f"valid completed checkpoint" + (f" ({reasons[0]})" if reasons else ""))
        if not found:
            raise Conflict(f"restore_from {restore_from!r}: job {old_job_id} has no completed checkpoint in "
                           f"{storage.uri}" + (f"; skipped: {[s['reason'] for s in skipped]}" if skipped else ""))
        checkpoint = found[0]
        job.skipped_checkpoints = skipped
        checkpoint = self._map_checkpoint(job, checkpoint)
        spec = {"storage": storage.uri, "checkpoint": checkpoint.to_dict(), "assignment": None}
        info = {"job_id": old_job_id, "checkpoint_id": checkpoint.checkpoint_id, "path": checkpoint.path,
                "at": time.time()}
        log.info("job %s starts from checkpoint %d of job %s (%s)", job.job_id, checkpoint.checkpoint_id,
                 old_job_id, checkpoint.path)
        return spec, info

    def _map_checkpoint(self, job, checkpoint):
        """Rename the checkpoint's operator ids to ``job``'s and check the parallelism rules."""
        old_ops = (checkpoint.metadata or {}).get("operators") or {}
        new_ops = job.job_graph.operators
        by_name = collections.defaultdict(list)
        for op_id, op in new_ops.items():
            by_name[op.name].append(op_id)
        rename = {}
        for old_id in checkpoint.operator_ids():
            if old_id in new_ops:
                rename[old_id] = old_id
                continue
            name = (old_ops.get(old_id) or {}).get("name")
            matches = by_name.get(name, [])
            if len(matches) != 1:
                raise BadRequest(
                    f"restore: checkpoint {checkpoint.checkpoint_id} holds state of operator {old_id!r} "
                    f"(name {name!r}), which matches {len(matches)} operators of the new job "
                    f"(ids {sorted(new_ops)}); keep operator ids or unique names")
            rename[old_id] = matches[0]
        for old_id, new_id in rename.items():
            op = new_ops[new_id]
            new_par = len(job.exec_graph.operator_tasks(new_id))
            keyed = checkpoint.keyed_handles(old_id)
            operator_state = checkpoint.operator_handles(old_id)
            old_meta = old_ops.get(old_id) or {}
            old_par = old_meta.get("parallelism")
            if old_par is None and operator_state:
                old_par = max(h["subtask_index"] for h in operator_state) + 1
            if keyed and keyed[0]["max_parallelism"] != op.max_parallelism:
                raise BadRequest(
                    f"restore: operator {op.name!r} has max_parallelism {op.max_parallelism} but its keyed state "
                    f"in checkpoint {checkpoint.checkpoint_id} was cut into {keyed[0]['max_parallelism']} key "
                    f"groups; keep max_parallelism")
            if operator_state and old_par is not None and old_par != new_par:
                kind = _operator_type(op)
                raise BadRequest(
                    f"restore: operator {op.name!r} ({kind}) ran at parallelism {old_par} in checkpoint "
                    f"{checkpoint.checkpoint_id} and keeps per-subtask state (source offsets, sink files), "
                    f"so it must keep that parallelism; the new job asks for {new_par}. Only keyed operators "
                    f"can change parallelism on restore")
        if all(k == v for k, v in rename.items()):
            return checkpoint
        handles = [dict(h, operator_id=rename.get(h["operator_id"], h["operator_id"])) for h in checkpoint.handles]
        return CompletedCheckpoint(job_id=checkpoint.job_id, checkpoint_id=checkpoint.checkpoint_id,
                                   path=checkpoint.path, timestamp=checkpoint.timestamp,
                                   metadata=checkpoint.metadata, size_bytes=checkpoint.size_bytes, handles=handles)

    def get_job(self, job_id):
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}; known jobs: {sorted(self.jobs)[-20:]}")
        return job

    async def cancel_job(self, job_id):
        """Cancel a job: its tasks stop on every worker and its slots are freed.

        Raises:
            NotFound: unknown job id.
            Conflict: the job already FINISHED, FAILED or was CANCELED.
        """
        job = self.get_job(job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} is already {job.state.value}; only a job that has not ended can be canceled")
        if job.state == JobState.CANCELING:
            await job.done.wait()
            return job.state.value
        if job.state == JobState.WAITING_FOR_SLOTS:
            self._pending.remove(job)
        elif job.state == JobState.DEPLOYING:
            job.state = JobState.CANCELING
            await job.deployed.wait()
        job.state = JobState.CANCELING
        restart = job.restart_task
        if restart is not None and not restart.done():
            restart.cancel()
            await asyncio.gather(restart, return_exceptions=True)
        running = [(tid, nid) for tid, nid in job.task_node.items()
                   if _task_state_name(job.exec_graph.get_task(tid)) not in TERMINAL_TASK_STATES]
        await self._cancel_on_workers(job, running)
        for task in job.exec_graph.tasks.values():
            if _task_state_name(task) not in TERMINAL_TASK_STATES:
                self._advance(task, "CANCELED")
        if not job.terminal:
            self._end_job(job, JobState.CANCELED)
        return job.state.value

    async def wait_for_job(self, job_id, timeout=None):
        """Wait until the job ends; return its final state name.

        Raises:
            NotFound: unknown job id.
            TimeoutError: still running after ``timeout`` seconds.
        """
        job = self.get_job(job_id)
        try:
            await asyncio.wait_for(job.done.wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"job {job_id} is still {job.state.value} after {timeout} s") from None
        return job.state.value

    async def job_result(self, job_id):
        """The result of a FINISHED job: a :class:`~sabot.runtime.embedded.JobResult`.

        ``result.tables`` maps each collect sink's name to its pyarrow.Table (fetched
        from the workers that ran it), ``result.summaries`` each sink's per-subtask
        summaries. Raises :class:`~sabot.errors.JobFailed` for a failed job and
        Conflict for one that is still running or was canceled.
        """
        from sabot.runtime.embedded import gather_results

        job = self.get_job(job_id)
        if job.state == JobState.FAILED:
            raise JobFailed(job.failure["error"] + (f"\n{job.failure['traceback']}" if job.failure.get("traceback") else ""),
                            [job.failure])
        if job.state != JobState.FINISHED:
            raise Conflict(f"job {job_id} is {job.state.value}; a result exists once it has FINISHED")
        if job.result is None:
            statuses = list(job.task_status.values())
            wanted = []
            for op_id, op in job.job_graph.operators.items():
                if _operator_type(op) == "sink" and (op.parameters or {}).get("kind", "collect") == "collect":
                    wanted.extend(t.task_id for t in job.exec_graph.operator_tasks(op_id))
            tables = dict(zip(wanted, await asyncio.gather(*(self._fetch_table(job, t) for t in wanted))))
            result = gather_results(job_id, job.job_graph, statuses, tables.get)
            result.duration_seconds = (job.ended_at or self.clock()) - (job.started_at or job.submitted_at)
            job.result = result
        return job.result

    async def _fetch_table(self, job, task_id):
        node_id = job.task_node.get(task_id)
        node = self.nodes.get(node_id)
        if node is None:
            raise Conflict(f"the result of task {task_id} lived on worker {node_id}, which is gone")
        async with self._session.get(f"{node.url}/tasks/{task_id}/result") as resp:
            if resp.status == 204:
                return None
            data = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"worker {node_id} could not return the result of {task_id}: HTTP {resp.status} {data[:300]!r}")
        return pa.ipc.open_stream(io.BytesIO(data)).read_all()

    # -- views (JSON for the HTTP API) -------------------------------------------------

    def job_summary(self, job):
        now = self.clock()
        end = job.ended_at or now
        return {
            "job_id": job.job_id,
            "job_name": job.job_graph.job_name,
            "state": job.state.value,
            "submitted_at": job.wall_submitted_at,
            "duration_seconds": round(end - job.submitted_at, 4),
            "num_tasks": len(job.exec_graph.tasks),
            "slots_needed": job.slots_needed,
            "failure": job.failure,
        }

    def job_details(self, job):
        info = self.job_summary(job)
        now = self.clock()
        running_for = max(1e-9, (job.ended_at or now) - (job.started_at or job.submitted_at))
        operators = []
        for op in job.job_graph.topological_sort():
            tasks = job.exec_graph.operator_tasks(op.operator_id)
            reports = [job.task_status.get(t.task_id) or {} for t in tasks]
            rows_in = sum((r.get("metrics") or {}).get("rows_in", 0) for r in reports)
            rows_out = sum((r.get("metrics") or {}).get("rows_out", 0) for r in reports)
            totals = [r.get("total_rows") for r in reports]
            total_rows = sum(totals) if totals and all(isinstance(t, int) for t in totals) else None
            operators.append({
                "operator_id": op.operator_id,
                "name": op.name,
                "operator_type": _operator_type(op),
                "parallelism": len(tasks),
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_processed": sum(t.rows_processed for t in tasks),
                "rows_per_second": round(sum(t.rows_processed for t in tasks) / running_for, 2),
                "total_rows": total_rows,
                "task_states": dict(collections.Counter(_task_state_name(t) for t in tasks)),
            })
        tasks = []
        for task in job.exec_graph.tasks.values():
            report = job.task_status.get(task.task_id) or {}
            tasks.append({
                "task_id": task.task_id,
                "operator_id": task.operator_id,
                "operator_name": task.operator_name,
                "subtask_index": task.subtask_index,
                "attempt": task.attempt,
                "state": _task_state_name(task),
                "node_id": task.node_id,
                "slot_id": task.slot_id,
                "rows_processed": task.rows_processed,
                "bytes_processed": task.bytes_processed,
                "metrics": report.get("metrics") or {},
                "error": report.get("error") or getattr(task, "failure_cause", None),
            })
        info["operators"] = operators
        info["tasks"] = tasks
        info["restarts"] = job.restarts
        info["restart_strategy"] = job.restart_strategy.to_dict() if job.restart_strategy else None
        info["last_failure"] = job.last_failure
        info["restart_history"] = job.restart_history[-20:]
        info["restored_from"] = job.restored_from
        info["checkpoints"] = self._checkpoint_summary(job)
        info.update(_jsonable(self.rescaler.details(job)))
        info["metrics"] = _jsonable(job.exec_graph.get_metrics_summary())
        return info

    def overview(self):
        states = collections.Counter(j.state.value for j in self.jobs.values())
        return {
            "url": self._url,
            "uptime_seconds": round(self.clock() - (self._started_at or self.clock()), 3),
            "workers": len(self.nodes),
            "lost_workers": sum(1 for n in self.lost_nodes.values() if n.state == "LOST"),
            "total_slots": self.slot_pool.total_slots,
            "free_slots": self.slot_pool.free_slots,
            "utilization": self.slot_pool.utilization,
            "jobs": {s.value: states.get(s.value, 0) for s in JobState},
            "pending_jobs": len(self._pending),
            "running_tasks": sum(
                1 for j in self.jobs.values() if not j.terminal
                for t in j.exec_graph.tasks.values() if _task_state_name(t) == "RUNNING"
            ),
        }

    def nodes_view(self):
        now = self.clock()
        live = [n.to_dict(now) for n in self.nodes.values()]
        for item in live:
            item["free_slots"] = self.slot_pool.get_free_slots(item["node_id"])
        return {"nodes": live, "lost": [n.to_dict(now) for n in self.lost_nodes.values()]}


def _operator_type(op):
    return getattr(op.operator_type, "value", op.operator_type)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


"""ClusterCoordinator: Sabot's JobManager, a facade over small collaborators.

It takes jobs (a :class:`~sabot.execution.job_graph.JobGraph`), places and deploys
their tasks on the workers, and follows each job from the reports its tasks send
until it FINISHED, FAILED or was CANCELED. The work is done by one owner per piece
of state (see ``docs/control-plane.md``):

==========================  ==========================================================
:mod:`~sabot.cluster.job`   job records and the job state machine
:mod:`~.nodes`              the live workers, heartbeats, node loss
:mod:`~.gateway`            talking to workers (HTTP + WebSocket; a fake in tests)
:mod:`~.placement`          slots for tasks (all or nothing, one sharing rule) and deployment
:mod:`~.checkpoint_scheduler`  periodic and on-demand checkpoints, commits, notifications
:mod:`~.failover`           restarts of pipelined regions from the latest checkpoint
:mod:`~.restore`            starting a job from a checkpoint
:mod:`~.rescaling`          live rescales and auto-rebalance
:mod:`~.live_metrics`       live rates and throughput history (the dashboard's figures)
:mod:`~.views`              the JSON the HTTP API shows
==========================  ==========================================================

Threading: everything is owned by the thread that runs the coordinator's event
loop. HTTP handlers and worker messages run on that loop; other threads must post
to it (``asyncio.run_coroutine_threadsafe``), as
:class:`~sabot.cluster.local.LocalCluster` does.

Scheduling: a job is *gang-scheduled*: all its tasks get slots together or none do
(the slot pool's all-or-nothing queue), in submission order, so two half-placed
jobs never block each other. By default all tasks of a job share one slot-sharing
group, so the job needs, per group, as many slots as its widest operator. A job
still waiting after ``slot_wait_timeout_s`` FAILS with a message saying what it
needed and what the cluster had. With ``refuse_oversized=True`` (the default) a job
needing more slots than all registered workers hold together is refused at submit,
because waiting for workers nobody is starting surprises users more than a clear
error; set it to False on an elastic cluster where workers are still joining.

Checkpoints, failures and restarts, restore and rescaling: see the modules above and
the README.

Example:
    >>> coordinator = ClusterCoordinator(CoordinatorConfig(port=0))
    >>> await coordinator.start()                   # doctest: +SKIP
    >>> job_id = await coordinator.submit_stream_job(job_graph)   # doctest: +SKIP
    >>> await coordinator.wait_for_job(job_id, timeout=60)        # doctest: +SKIP
    'FINISHED'
    >>> (await coordinator.job_result(job_id)).table("counts")    # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import types

from aiohttp import web

from sabot._loop import LoopLag
from sabot.cluster import admission, protocol, views
from sabot.cluster.checkpoint_scheduler import JobCheckpointing
from sabot.cluster.clock import Clock
from sabot.cluster.config import CoordinatorConfig
from sabot.cluster.failover import Failover
from sabot.cluster.gateway import HttpWorkerGateway, WorkerListener
from sabot.cluster.http_api import CoordinatorMetrics, build_coordinator_app
from sabot.cluster.job import JobRecord, JobState
from sabot.cluster.job_tables import JobTables
from sabot.cluster.live_metrics import LiveMetrics
from sabot.cluster.liveness import LivenessServer
from sabot.cluster.nodes import NodeRegistry
from sabot.cluster.placement import ExecutionDeployer, TaskPlacer
from sabot.cluster.protocol import RegisterRequest
from sabot.cluster.rescaling import Rescaler
from sabot.cluster.restart import InvalidRestartStrategy, restart_strategy_from_config
from sabot.cluster.restore import resolve_restore
from sabot.cluster.retention import EndedJobs
from sabot.cluster.tls import TlsConfig
from sabot.cluster.tls import scheme as tls_scheme
from sabot.cluster.web import serve
from sabot.errors import Conflict, IllegalStateTransition, InvalidRequest, JobFailed, NotFound, SlotsExhausted
from sabot.execution.execution_graph import TaskState
from sabot.execution.messages import TaskUpdate, checkpoint_answer_from_dict
from sabot.execution.slot_pool import SlotPool
from sabot.runtime.checkpoint_storage import CheckpointStorage
from sabot.runtime.functions import FunctionPolicy
from sabot.runtime.embedded import gather_results

log = logging.getLogger(__name__)

__all__ = ["ClusterCoordinator", "CoordinatorConfig", "JobState"]


class ClusterCoordinator(WorkerListener):
    """The JobManager: submit, cancel, wait for and read the results of jobs on a cluster.

    Args:
        config: a :class:`CoordinatorConfig` or a dict of its fields.
        clock: a :class:`~sabot.cluster.clock.Clock` (injected so timeouts are testable).
        gateway: how to reach workers (default: HTTP + WebSocket; tests pass
            ``sabot.testing.TestingWorkerGateway``).
        offload: ``async fn(callable, *args, **kwargs)`` that runs blocking work (storage I/O,
            expanding and checking big jobs, building descriptors) off the event loop: a
            thread; ``sabot.testing.TestingCluster`` runs it inline, deterministically.

    Attributes:
        jobs: ``{job_id: JobRecord}`` (state, failure, per-task reports).
        active_jobs: ``{job_id: ExecutionGraph}`` of every job (the seed's view; finished
            ones included, so their final metrics stay readable).
        nodes: ``{node_id: NodeInfo}`` of registered, live workers.
        slot_pool: the :class:`~sabot.execution.slot_pool.SlotPool`.
    """

    def __init__(self, config=None, *, clock=None, gateway=None, offload=asyncio.to_thread):
        self.config = CoordinatorConfig.coerce(config)
        self.config.token = protocol.resolve_token(self.config.token)
        protocol.check_binding(self.config.host, self.config.token, "coordinator")
        if self.config.heartbeat_timeout_s <= self.config.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s ({self.config.heartbeat_timeout_s}) must be larger than "
                f"heartbeat_interval_s ({self.config.heartbeat_interval_s})")
        restart_strategy_from_config(self.config.restart_strategy)  # refuse a bad default early
        self.function_policy = FunctionPolicy(self.config.allowed_function_modules)
        self.tls = TlsConfig.coerce(self.config.tls) or TlsConfig.from_env()
        self.clock = clock or Clock()
        self.offload = offload
        self.slot_pool = SlotPool()
        self.registry = NodeRegistry(self.slot_pool, self.clock, self.config.heartbeat_timeout_s,
                                     on_lost=self._node_lost, scheme=tls_scheme(self.tls))
        self.gateway = gateway or HttpWorkerGateway(self.registry, self.config.token, self.config.request_timeout_s,
                                                    ssl=self.tls.client_context() if self.tls else None)
        self.liveness = LivenessServer(self.registry, self.config.host)
        self.placer = TaskPlacer(self.slot_pool, self.registry, self.clock)
        self.deployer = ExecutionDeployer(self.placer, self.gateway, self.offload)
        self.jobs = {}
        self.ended_jobs = EndedJobs(self.config.retain_ended_jobs, self.config.ended_job_ttl_s)
        self._operator_ids = set()  # of every job kept, so resubmissions get fresh ids
        self._reserved_job_ids = set()  # ids of jobs being created (not in jobs yet)
        self._scheduling = {}  # job id -> the task waiting for its slots
        self._background = set()
        restart_wait = self.config.restart_slot_wait_s
        self.failover = Failover(
            placer=self.placer, deployer=self.deployer, registry=self.registry, clock=self.clock,
            spawn=self._spawn,
            slot_wait_s=self.config.slot_wait_timeout_s if restart_wait is None else restart_wait,
            heartbeat_timeout_s=self.config.heartbeat_timeout_s, fail_job=self._fail_job,
            set_running=self._maybe_running, abort_rescale=lambda job, reason: self.rescaler.abort(job, reason))
        self.rescaler = Rescaler(get_job=self.get_job, placer=self.placer, deployer=self.deployer,
                                 gateway=self.gateway, clock=self.clock, spawn=self._spawn, offload=self.offload,
                                 on_failure=self.failover.on_failure, fail_job=self._fail_job)
        self.metrics = CoordinatorMetrics(self)
        self.loop_lag = LoopLag()
        if not self.config.metrics_sample_interval_s > 0 or not self.config.metrics_history_s > 0:
            raise ValueError("metrics_sample_interval_s and metrics_history_s must be positive, got "
                             f"{self.config.metrics_sample_interval_s} and {self.config.metrics_history_s}")
        self.live = LiveMetrics(capacity=max(1, round(self.config.metrics_history_s
                                                      / self.config.metrics_sample_interval_s)))
        self._sampler = None
        self._runner = None
        self._monitor = None
        self._url = None
        self._started_at = None
        self._own_checkpoint_dir = None
        self.checkpoint_root = self.config.checkpoint_dir
        #: in-memory tables of the jobs (uploaded by clients, or handed over in process);
        #: workers fetch them with GET /tables/{table_id}
        self.tables = JobTables(self.config.max_table_bytes, self.config.max_unused_tables, self.offload)

    # -- the seed's view -------------------------------------------------------------------

    @property
    def nodes(self):
        """``{node_id: NodeInfo}`` of the live workers (read-only view)."""
        return types.MappingProxyType(self.registry.nodes)

    @property
    def active_jobs(self):
        """``{job_id: ExecutionGraph}`` of every job this coordinator accepted."""
        return types.MappingProxyType({job_id: job.exec_graph for job_id, job in self.jobs.items()})

    # -- lifecycle -------------------------------------------------------------------

    @property
    def url(self):
        """``http://host:port`` once started."""
        if self._url is None:
            raise RuntimeError("the coordinator is not started; await start() first")
        return self._url

    async def start(self, *, serve_http=True):
        """Start watching heartbeats and (``serve_http``) bind the HTTP server."""
        self._started_at = self.clock.now()
        if self.checkpoint_root is None:
            self._own_checkpoint_dir = tempfile.mkdtemp(prefix="sabot-checkpoints-")
            self.checkpoint_root = self._own_checkpoint_dir
        self.tables.start()
        await self.gateway.start()
        await self.liveness.start(self.config.liveness_port)
        if serve_http:
            self._runner, (host, port) = await serve(
                build_coordinator_app(self), self.config.host, self.config.port, self.config.http_limits(),
                ssl_context=self.tls.server_context() if self.tls else None)
            self._url = f"{tls_scheme(self.tls)}://{host}:{port}"
        else:
            self._url = "in-process"
        self._monitor = asyncio.ensure_future(self._heartbeat_monitor())
        self.loop_lag.start()
        self._sampler = asyncio.ensure_future(self._sample_metrics())
        log.info("coordinator listening on %s", self._url)
        return self

    async def stop(self):
        """Cancel running jobs' tasks on the workers, close every connection, stop serving."""
        if self._monitor is None:
            return
        self.registry.quiet = True
        self._monitor.cancel()
        self._monitor = None
        self.loop_lag.stop()
        self._sampler.cancel()
        self._sampler = None
        for job in list(self.jobs.values()):
            if not job.terminal:
                try:
                    await asyncio.wait_for(self.cancel_job(job.job_id), 5)
                except Exception:  # stopping anyway
                    log.exception("canceling job %s on stop failed", job.job_id)
        await self.gateway.close()
        await self.liveness.stop()
        for task in list(self._background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_checkpoint_dir is not None:
            shutil.rmtree(self._own_checkpoint_dir, ignore_errors=True)
            self._own_checkpoint_dir = None
            self.checkpoint_root = self.config.checkpoint_dir
        self.tables.stop()
        self.registry.quiet = False
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

    async def _heartbeat_monitor(self):
        interval = self.config.heartbeat_interval_s
        while True:
            before = self.clock.now()
            await self.clock.sleep(interval)
            late = self.clock.now() - before - interval
            try:
                if late > self.config.heartbeat_timeout_s / 2:
                    self.registry.coordinator_stalled(late)
                else:
                    self.check_heartbeats()
                self._forget_due_jobs()
            except Exception:
                log.exception("heartbeat check failed")

    async def _sample_metrics(self):
        while True:
            await self.clock.sleep(self.config.metrics_sample_interval_s)
            try:
                self.live.sample(list(self.jobs.values()), self.clock.wall())
            except Exception:
                log.exception("sampling job metrics failed")

    # -- workers -----------------------------------------------------------------------

    def register_worker(self, body):
        """Register a worker (the body of ``POST /workers/register``); return the response dict."""
        request = body if isinstance(body, RegisterRequest) else RegisterRequest.from_dict(body)
        self.registry.register(request)
        return protocol.RegisterResponse(request.node_id, self.config.heartbeat_interval_s,
                                         self.config.heartbeat_timeout_s, self.liveness.port,
                                         self.liveness.issue_ticket(request.node_id)).to_dict()

    async def handle_worker_socket(self, node_id, ws):
        """Serve one worker's WebSocket until it closes; then the node is lost."""
        await self.gateway.serve(node_id, ws, self)

    def check_heartbeats(self, now=None):
        """Declare lost every node silent for more than ``heartbeat_timeout_s``; return their ids."""
        return self.registry.check(now)

    def on_worker_message(self, node_id, message):
        self.registry.heard_from(node_id)
        kind = message.get("type")
        try:
            if kind == protocol.TASK_UPDATE:
                self.on_task_update(node_id, TaskUpdate.from_dict(message.get("update"), "task update"))
            elif kind == protocol.CHECKPOINT:
                self.on_checkpoint_message(node_id, checkpoint_answer_from_dict(message.get("message")))
            elif kind != protocol.HEARTBEAT:
                log.warning("worker %s sent an unknown message type %r", node_id, kind)
        except InvalidRequest as exc:
            log.warning("worker %s sent a malformed %s message: %s", node_id, kind, exc)

    def on_worker_gone(self, node_id, reason, *, left):
        self.registry.lose(node_id, reason, left=left)

    def _node_lost(self, node, reason, task_ids):
        """A node left the pool: fail (and restart) the jobs whose tasks ran there."""
        if hasattr(self.gateway, "disconnect"):
            self.gateway.disconnect(node.node_id, "node declared lost")
        self.liveness.disconnect(node.node_id)
        lost = set(task_ids)
        for job in list(self.jobs.values()):
            if job.terminal:
                continue
            on_node = [t for t in list(job.exec_graph.tasks) + list(job.exec_graph.retired_tasks) if t in lost]
            if not on_node:
                continue
            cause = f"worker {node.node_id} (pid {node.pid}) was lost: {reason}"
            for task_id in on_node:
                task = job.exec_graph.get_task(task_id)
                if not task.state.is_terminal:
                    task.failure_cause = cause
                    task.transition(TaskState.FAILED)
            message = f"job {job.job_id}: task {on_node[0]} ran on {cause}"
            if self.registry.quiet:
                self._fail_job(job, f"job {job.job_id} failed: task {on_node[0]} ran on {cause}", task_id=on_node[0])
            else:
                self.failover.on_failure(job, message, on_node)

    # -- task reports --------------------------------------------------------------------

    def on_task_update(self, node_id, update: TaskUpdate):
        """Apply one task report (stale attempts and unknown jobs are dropped)."""
        job = self.jobs.get(update.job_id)
        if job is None:
            log.debug("update for unknown job %r dropped", update.job_id)
            return
        if self.rescaler.on_task_update(job, node_id, update):
            return  # an old task of a live rescale handing its state over
        task = job.exec_graph.tasks.get(update.task_id)
        if task is None or update.attempt != task.attempt or self.placer.node_of(task.task_id) != node_id:
            log.debug("stale update for %s dropped", update.attempt_id)
            return
        job.reports[task.task_id] = update
        self.live.on_report(job, update)
        source = job.job_graph.operators[task.operator_id].operator_type.value == "source"
        metrics = update.metrics
        job.exec_graph.update_task_metrics(task.task_id, metrics.get("rows_out" if source else "rows_in", 0),
                                           metrics.get("bytes_out" if source else "bytes_in", 0))
        if job.terminal or job.state == JobState.CANCELING:
            return
        try:
            moves = task.apply_report(update.state)
        except IllegalStateTransition as exc:
            log.error("job %s: protocol error from worker %s: %s", job.job_id, node_id, exc)
            return
        if not moves:
            return
        state = task.state  # what the report means here (a task being canceled ends CANCELED)
        if state == TaskState.FAILED:
            self.failover.task_failed(job, task, node_id, update)
        elif state == TaskState.CANCELED and moves[0] == TaskState.CANCELING:
            self.failover.on_failure(job, f"job {job.job_id}: task {task.task_id} was canceled on worker {node_id} "
                                          "without the coordinator asking", [task.task_id])
        elif state in (TaskState.RUNNING, TaskState.FINISHED):
            self._maybe_running(job)
            if state == TaskState.FINISHED and not job.finishing and job.exec_graph.all_in(TaskState.FINISHED):
                job.finishing = True
                self._spawn(self._finish_job(job))

    def on_checkpoint_message(self, node_id, answer):
        """A task's checkpoint ack or decline (dropped unless its worker hosts the task)."""
        job = self.jobs.get(answer.job_id)
        if job is None or job.checkpointing is None or job.terminal:
            log.debug("checkpoint message for job %r dropped", answer.job_id)
            return
        if self.placer.node_of(answer.attempt_id.task_id) != node_id:
            log.debug("checkpoint message of %s from worker %s, which does not host it: dropped",
                      answer.attempt_id, node_id)
            return
        job.checkpointing.on_answer(answer)

    # -- submission --------------------------------------------------------------------

    async def submit_stream_job(self, job_graph, restore_from=None):
        """Validate, plan, place, deploy and start a job; return its id.

        Args:
            job_graph: a JobGraph, its ``to_dict()``, or a Stream (``to_job_graph()``).
            restore_from: start from a checkpoint instead of the beginning: the id of
                an earlier job of this coordinator (its latest completed checkpoint),
                or the path/URI of a checkpoint directory (``.../<job>/chk-<n>``) or
                of a job's checkpoint directory (its latest valid checkpoint). State
                is matched to operators by id, else by name; keyed operators may run
                at another parallelism (state is re-split by key group), sources,
                sinks and other operator state must keep theirs.

        Returns once the job's tasks are deployed (the job is RUNNING once every task
        reported running), or it FAILED during deployment, or it waits for slots
        (``jobs[job_id].state`` says which).

        Raises:
            InvalidRequest: not a job graph, invalid graph (the validate() message), an
                operator function that cannot be imported here, a job larger than the
                cluster (``refuse_oversized``), or a checkpoint that does not fit.
            SlotRequestTooLarge: an operator asks for more cpu/memory than any slot has.
            NotFound: ``restore_from`` names no known job and no checkpoint directory.
            Conflict: ``restore_from`` names a job that has no completed checkpoint.
        """
        if hasattr(job_graph, "to_job_graph"):  # a Stream: its graph, with its in-memory tables
            job_graph = await self.offload(job_graph.to_job_graph, shippable=True)
        await self.tables.hand_over(getattr(job_graph, "tables", None))  # written once, for the workers
        # parsed, checked and expanded on threads: a big job never holds the event loop
        job_graph, demand = await self.offload(
            admission.admit, job_graph, max_operators=self.config.max_operators_per_job,
            max_tasks=self.config.max_tasks_per_job, check_imports=self.config.check_imports,
            policy=self.function_policy)
        self.placer.check_fits(job_graph, demand, self.config.refuse_oversized)
        try:
            strategy = restart_strategy_from_config(
                job_graph.config.get("restart_strategy", self.config.restart_strategy))
        except InvalidRestartStrategy as exc:
            raise InvalidRequest(str(exc)) from exc
        job_graph = await self.offload(admission.with_unique_ids, job_graph, self._taken_job_ids(),
                                            set(self._operator_ids))
        while job_graph.job_id in self._taken_job_ids() or self._operator_ids.intersection(job_graph.operators):
            # another submission took these ids meanwhile (rare): rename again, here
            job_graph = admission.with_unique_ids(job_graph, self._taken_job_ids(), self._operator_ids)
        table_ids = self.tables.check(job_graph)
        self._reserved_job_ids.add(job_graph.job_id)
        self._operator_ids.update(job_graph.operators)
        self.tables.use(job_graph.job_id, table_ids)
        try:
            job = await self._create_job(job_graph, strategy, restore_from)
            job.demand = demand
        finally:
            self._reserved_job_ids.discard(job_graph.job_id)
        self.jobs[job.job_id] = job
        self.metrics.jobs_submitted.inc()
        log.info("job %s (%s) submitted: %d tasks, needs %d slots", job.job_id, job.name,
                 len(job.exec_graph.tasks), demand.slots)
        self._transition(job, JobState.WAITING_FOR_SLOTS)
        pending = self.placer.request(job, job.exec_graph.tasks.values())  # queued now: FIFO
        if pending.placed:
            await self._deploy(job)
        else:
            self._scheduling[job.job_id] = (self._spawn(self._wait_for_slots(job, pending)), pending)
        return job.job_id

    def _taken_job_ids(self):
        return set(self.jobs) | self._reserved_job_ids

    async def _create_job(self, job_graph, strategy, restore_from):
        exec_graph, order = await self.offload(admission.expand, job_graph)
        job = JobRecord(job_graph.job_id, job_graph, exec_graph, self.clock.now(), self.clock.wall(), order)
        job.restart_strategy = strategy
        root = job_graph.config.get("checkpoint_dir") or self.checkpoint_root
        retain = int(job_graph.config.get("checkpoint_retain") or self.config.checkpoint_retain)
        storage = await self.offload(CheckpointStorage, root, retain)
        job.checkpointing = JobCheckpointing(
            job, storage, retain=retain, gateway=self.gateway, placer=self.placer, clock=self.clock,
            spawn=self._spawn, blocked_by=self.rescaler.blocks_checkpoints, offload=self.offload,
            timeout_s=float(job_graph.config.get("checkpoint_timeout_s") or self.config.checkpoint_timeout_s))
        if restore_from is not None:
            source = await resolve_restore(job, restore_from, self.jobs, self.clock.wall(), self.offload)
            job.initial_restore, job.restored_from, job.skipped_checkpoints = source.spec, source.info, source.skipped
        return job

    async def _wait_for_slots(self, job, pending):
        try:
            await self.placer.wait(job, pending, self.config.slot_wait_timeout_s)
        except SlotsExhausted:
            self._fail_job(job, f"job {job.job_id} failed: it waited {self.config.slot_wait_timeout_s:g} s for "
                                f"its slots; {self.placer.shortage(job)}", error_type=SlotsExhausted)
            return
        finally:
            self._scheduling.pop(job.job_id, None)
        await self._deploy(job)

    async def _deploy(self, job):
        """The job got its slots: deploy every task."""
        try:
            self._transition(job, JobState.DEPLOYING)
            tdds = await self.deployer.descriptors(job, restore=job.initial_restore)
            errors = await self.deployer.deploy(job, tdds.values())
            if errors and job.state == JobState.DEPLOYING:  # (a lost worker restarts the job instead)
                self._fail_job(job, f"job {job.job_id} failed to deploy: {errors[0]}")
        except Exception as exc:  # a bug must not leave the job hanging
            log.exception("deploying job %s failed", job.job_id)
            if not job.terminal:
                self._fail_job(job, f"job {job.job_id} failed to deploy: {type(exc).__name__}: {exc}")
        finally:
            job.deployed.set()

    # -- job state changes ---------------------------------------------------------------

    def _transition(self, job, state):
        job.transition(state, self.clock.now(), self.clock.wall())

    def _stop_waiting_for_slots(self, job):
        """Withdraw the job's queued slot request; returns the waiting task (canceled) or None."""
        entry = self._scheduling.pop(job.job_id, None)
        if entry is None:
            return None
        task, pending = entry
        self.placer.withdraw(pending)
        if task is not asyncio.current_task():
            task.cancel()
        return task

    def _maybe_running(self, job):
        """A (re)deployed job is RUNNING once every task reported RUNNING (or already FINISHED)."""
        if job.state not in (JobState.DEPLOYING, JobState.RESTARTING):
            return
        if job.exec_graph.all_in(TaskState.RUNNING, TaskState.FINISHED):
            self._set_running(job)

    def _set_running(self, job):
        self._transition(job, JobState.RUNNING)
        if job.restarts == 0:
            self.metrics.submit_to_running.observe(job.started_at - job.submitted_at)
            log.info("job %s RUNNING (%.3f s after submit)", job.job_id, job.started_at - job.submitted_at)
        job.checkpointing.start()

    def _end_job(self, job, state):
        if job.terminal:
            return
        self._transition(job, state)
        self._stop_waiting_for_slots(job)
        job.checkpointing.stop(f"the job {state.value}")
        self.failover.forget(job)
        self.rescaler.job_ended(job)
        self.placer.release_job(job)
        log.info("job %s %s", job.job_id, state.value)
        self.ended_jobs.ended(job.job_id, self.clock.now())
        self._forget_due_jobs()

    def _forget_due_jobs(self):
        for job_id in self.ended_jobs.due(self.clock.now()):
            self._forget_job(self.jobs[job_id])

    def _forget_job(self, job):
        """Drop an ended job everywhere: here, its workers' tasks and channels, and its
        checkpoints when they live in this coordinator's own temporary directory."""
        self.ended_jobs.forget(job.job_id)
        del self.jobs[job.job_id]
        self.tables.release_job(job.job_id)
        self.rescaler.forget(job.job_id)
        self._operator_ids.difference_update(job.job_graph.operators)
        self._release_on_workers(job)
        storage = job.checkpointing.storage
        if self._own_checkpoint_dir is not None and storage.uri == self._own_checkpoint_dir:
            self._spawn(self.offload(shutil.rmtree, storage.job_path(job.job_id), ignore_errors=True))
        log.info("job %s forgotten (%s %.0f s ago; retain_ended_jobs=%d, ended_job_ttl_s=%g)", job.job_id,
                 job.state.value, self.clock.now() - (job.ended_at or self.clock.now()),
                 self.ended_jobs.max_jobs, self.ended_jobs.ttl_s)

    def _release_on_workers(self, job):
        graph = job.exec_graph
        nodes = {graph.get_task(t).node_id for t in list(graph.tasks) + list(graph.retired_tasks)}
        for node_id in sorted(n for n in nodes if n is not None and n in self.registry):
            self._spawn(self._release_on(node_id, job.job_id))

    async def _release_on(self, node_id, job_id):
        try:
            await self.gateway.release_job(node_id, job_id)
        except Exception as exc:  # the worker bounds what it keeps by itself (TaskManager.max_ended_tasks)
            log.warning("worker %s could not release job %s: %s", node_id, job_id, exc)

    def _fail_job(self, job, message, traceback=None, task_id=None, error_type=None):
        if job.terminal:
            return
        job.failure = {"error": message, "traceback": traceback, "task_id": task_id,
                       "type": (error_type or JobFailed).__name__}
        graph = job.exec_graph
        others = [tid for tid in list(graph.tasks) + list(graph.retired_tasks)
                  if tid != task_id and not graph.get_task(tid).state.is_terminal
                  and self.placer.node_of(tid) is not None]
        log.error("%s", message)
        if others:
            self._spawn(self.deployer.cancel(job, others))
        for task in graph.tasks.values():
            if task.task_id not in others:
                task.cancel()
        self._end_job(job, JobState.FAILED)

    async def _finish_job(self, job):
        """Every task finished: let each worker of the job publish the output its sinks kept
        staged at end of input (two-phase commit), then the job is FINISHED."""
        try:
            await job.checkpointing.wait_commits()
            nodes = self.placer.nodes_of(job)
            results = await asyncio.gather(*(self.gateway.job_finished(n, job.job_id) for n in nodes),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if job.terminal:
                return
            if errors:
                self._fail_job(job, f"job {job.job_id} failed: publishing the output of its sinks failed: "
                                    f"{type(errors[0]).__name__}: {errors[0]}")
                return
            self._maybe_running(job)  # every task finished before the last RUNNING report came
            self._end_job(job, JobState.FINISHED)
        finally:
            job.finishing = False

    # -- the job API ----------------------------------------------------------------------

    def get_job(self, job_id):
        job = self.jobs.get(job_id)
        if job is None:
            if self.ended_jobs.was_forgotten(job_id):
                raise NotFound(f"job {job_id!r} ended and is no longer kept: the coordinator keeps the last "
                               f"{self.ended_jobs.max_jobs} ended jobs for {self.ended_jobs.ttl_s:g} s "
                               "(retain_ended_jobs, ended_job_ttl_s)")
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
            raise Conflict(f"job {job_id} is already {job.state.value}; only a job that has not ended can be "
                           "canceled")
        if job.state == JobState.CANCELING:
            await job.done.wait()
            return job.state.value
        before = job.state
        self._transition(job, JobState.CANCELING)
        waiting = self._stop_waiting_for_slots(job)
        if waiting is not None:
            await asyncio.gather(waiting, return_exceptions=True)
        if before == JobState.DEPLOYING:
            await job.deployed.wait()
        await self.failover.cancel(job)
        graph = job.exec_graph
        live = [tid for tid in list(graph.tasks) + list(graph.retired_tasks)
                if not graph.get_task(tid).state.is_terminal and self.placer.node_of(tid) is not None]
        await self.deployer.cancel(job, live)
        for task in graph.tasks.values():
            task.cancel()
        # a checkpoint every task acknowledged is being committed: let it land, so what the
        # canceled job shows as its latest checkpoint is what a restore from it will use
        await job.checkpointing.wait_commits()
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
        job = self.get_job(job_id)
        if job.state == JobState.FAILED:
            raise JobFailed(job.failure["error"] + (f"\n{job.failure['traceback']}" if job.failure.get("traceback")
                                                    else ""), [job.failure])
        if job.state != JobState.FINISHED:
            raise Conflict(f"job {job_id} is {job.state.value}; a result exists once it has FINISHED")
        if job.result is None:
            if job.result_fetch is None:  # one fetch, however many ask at once
                job.result_fetch = asyncio.ensure_future(self._fetch_result(job))
            try:
                await asyncio.shield(job.result_fetch)
            finally:
                if job.result is None and job.result_fetch.done():
                    job.result_fetch = None  # it failed: the next call tries again
        return job.result

    async def _fetch_result(self, job):
        wanted = [t.task_id for op_id in job.sinks("collect") for t in job.exec_graph.operator_tasks(op_id)]
        tables = dict(zip(wanted, await asyncio.gather(*(self._fetch_table(job, t) for t in wanted))))
        result = gather_results(job.job_id, job.job_graph, list(job.reports.values()), tables.get)
        result.duration_seconds = (job.ended_at or self.clock.now()) - (job.started_at or job.submitted_at)
        job.result = result
        # the tables are held here now: the workers need not keep their copies
        self._release_on_workers(job)

    async def forget_job(self, job_id):
        """Forget an ended job now (its owner is done with it): here, on its workers, and its
        checkpoints in this coordinator's own directory. ``DELETE /jobs/{job_id}``.

        Raises:
            NotFound: unknown job.
            Conflict: the job has not ended (cancel it first).
        """
        job = self.get_job(job_id)
        if not job.terminal:
            raise Conflict(f"job {job_id} is {job.state.value}; only an ended job can be forgotten (cancel it first)")
        self._forget_job(job)

    async def _fetch_table(self, job, task_id):
        # the job ended, so its slots are free again; the task's view still says where it ran
        node_id = job.exec_graph.get_task(task_id).node_id
        if node_id is None or node_id not in self.registry:
            raise Conflict(f"the result of task {task_id} lived on worker {node_id}, which is gone")
        return await self.gateway.fetch_result(node_id, task_id)

    async def trigger_checkpoint(self, job_id):
        """Start a checkpoint of a RUNNING job now; return its id (it completes asynchronously,
        see :meth:`checkpoints_view`).

        Raises:
            NotFound: unknown job.
            Conflict: the job is not RUNNING, a source already reached the end of its
                input, or a checkpoint is still in progress.
        """
        return await self.get_job(job_id).checkpointing.trigger()

    async def rescale_operator(self, job_id, operator_id, new_parallelism):
        """Rescale one operator of a running job, live; returns the seed's plan dict.

        The plan (``status``, ``old_parallelism``, ``new_parallelism``,
        ``old_task_ids``, ``new_task_ids``, ``requires_state_redistribution``, plus
        ``rescale_id``) comes back at once; the move goes on while the job runs and
        ``GET /jobs/{job_id}`` shows its progress and timing.

        Raises:
            NotFound: unknown job or operator.
            InvalidRequest: a bad parallelism, or a source or sink that cannot move.
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

    # -- views (JSON for the HTTP API) -------------------------------------------------

    def job_summary(self, job):
        return views.job_summary(job, self.clock.now(), self.live.job_rate(job))

    def job_details(self, job):
        return views.job_details(job, self.clock.now(), self.rescaler.details(job), self.live.job_rate(job))

    def job_plan(self, job_id):
        """``GET /jobs/{job_id}/plan``: operators and edges with their partitioning."""
        return views.job_plan(self.get_job(job_id))

    def subtasks_view(self, job_id):
        """``GET /jobs/{job_id}/subtasks``: rates, busy / back-pressured / idle shares per subtask."""
        return views.subtasks_view(self.get_job(job_id), self.live)

    def throughput_view(self, job_id):
        """``GET /jobs/{job_id}/throughput``: rows per second per operator over the last minutes."""
        return views.throughput_view(self.get_job(job_id), self.live, self.config.metrics_sample_interval_s)

    def key_groups_view(self, job_id):
        """``GET /jobs/{job_id}/key-groups``: load per key group and key-group tables of keyed operators."""
        return views.key_groups_view(self.get_job(job_id), self.live, self.rescaler)

    def exceptions_view(self, job_id):
        """``GET /jobs/{job_id}/exceptions``: restarts with their root causes, and the final failure."""
        return views.exceptions_view(self.get_job(job_id))

    def job_tasks(self, job_id, offset=0, limit=views.MAX_TASKS_IN_DETAILS):
        """``GET /jobs/{job_id}/tasks``: a page of the job's tasks."""
        return views.job_tasks(self.get_job(job_id), offset, limit)

    def checkpoints_view(self, job_id):
        """``GET /jobs/{job_id}/checkpoints``: the job's checkpoint history and settings."""
        return views.checkpoints_view(self.get_job(job_id))

    def overview(self):
        info = views.overview(url=self._url, uptime_seconds=self.clock.now() - (self._started_at or self.clock.now()),
                              registry=self.registry, slot_pool=self.slot_pool, jobs=list(self.jobs.values()),
                              pending_jobs=len(self._scheduling))
        info["loop_lag"] = self.loop_lag.snapshot()
        return info

    def nodes_view(self):
        return self.registry.view()

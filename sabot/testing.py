"""What users need to test their own Sabot jobs, and Sabot its control plane.

Jobs: :func:`run_stream`, :func:`run_graph`, :func:`testing_source` and
:func:`assert_tables_equal` (multiset comparison with a float tolerance).

Control plane, in-process and deterministic: :class:`ManualClock` (time moves only
when the test says), :class:`TestingWorkerGateway` (a fake of the workers that
records what the coordinator asks) and :class:`TestingCluster`, a coordinator with
fake workers on a manual clock, where the test plays the workers' part. For real
workers without processes: :func:`in_process_cluster`; for real processes:
:class:`sabot.cluster.local.LocalCluster`, and :class:`ChaosMonkey` to kill, pause and
rescale them at random while jobs run. Connector peers: :class:`PostgresServer` (a private
PostgreSQL server) and :class:`KafkaTestCluster` (librdkafka's mock Kafka cluster, or a real
one named by ``$SABOT_KAFKA_BOOTSTRAP``).

Example:
    >>> import pyarrow as pa
    >>> from sabot import Stream
    >>> from sabot.testing import run_stream, assert_tables_equal
    >>> out = run_stream(Stream.from_table(pa.table({"x": [1, 2, 3]})).select("x"))
    >>> assert_tables_equal(out, pa.table({"x": [1, 2, 3]}))
"""

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import time

import pyarrow as pa

from sabot.api.stream import Stream, StreamSink
from sabot.cluster import protocol
from sabot.cluster.clock import Clock
from sabot.cluster.coordinator import ClusterCoordinator
from sabot.cluster.gateway import WorkerGateway, WorkerUnreachable
from sabot.cluster.protocol import RegisterRequest
from sabot.cluster.worker import Worker
from sabot.execution.execution_graph import TaskState
from sabot.execution.ids import AttemptId
from sabot.execution.messages import CheckpointAck, TaskUpdate
from sabot.runtime.embedded import JobResult, run_job_graph, run_job_graph_async

__all__ = [
    "ChaosMonkey",
    "ChaosReport",
    "JobResult",
    "KafkaTestCluster",
    "ManualClock",
    "PostgresServer",
    "TestingCluster",
    "TestingWorkerGateway",
    "assert_tables_equal",
    "canonical",
    "in_process_cluster",
    "run_graph",
    "run_graph_async",
    "run_stream",
    "testing_source",
    "until",
]


def testing_source(rows_or_table, *, batch_size=None, parallelism=None, name=None):
    """A bounded source from a table, a RecordBatch, or a dict of columns."""
    table = rows_or_table
    if isinstance(table, dict):
        table = pa.table(table)
    kwargs = {"name": name, "parallelism": parallelism}
    if batch_size:
        kwargs["batch_size"] = batch_size
    return Stream.from_table(table, **kwargs)


def run_stream(stream, *, default_parallelism=1, timeout=60):
    """Run ``stream`` in this process, collecting its output, and return the table.

    A stream that already ends in a sink is run as it is and its only collect
    sink's table is returned.
    """
    if not isinstance(stream, StreamSink):
        stream = stream.collect()
    return stream.run(default_parallelism=default_parallelism, timeout=timeout).table()


def run_graph(job_graph, *, timeout=60):
    """Run a JobGraph in this process and return its JobResult."""
    return run_job_graph(job_graph, timeout=timeout)


async def run_graph_async(job_graph, *, timeout=60):
    return await run_job_graph_async(job_graph, timeout=timeout)


def canonical(table, sort_by=None):
    """The table's rows in a canonical order (all columns, or ``sort_by``), chunks combined."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    keys = sort_by or table.column_names
    keys = [keys] if isinstance(keys, str) else keys
    sortable = [k for k in keys if not pa.types.is_nested(table.schema.field(k).type)]
    return table.sort_by([(k, "ascending") for k in sortable]).combine_chunks()


def assert_tables_equal(actual, expected, *, sort_by=None, check_order=False, check_types=True, rel_tol=1e-9):
    """Assert two tables hold the same rows (as multisets unless ``check_order``).

    Column names and (with ``check_types``) types must match. Floating-point
    columns are compared with a relative tolerance, since a parallel sum adds in
    a different order than a serial one; a null never equals a NaN.
    """
    if actual.schema.names != expected.schema.names:
        raise AssertionError(f"columns differ: {actual.schema.names} != {expected.schema.names}")
    if check_types and actual.schema.types != expected.schema.types:
        diff = [(n, str(a), str(e)) for n, a, e in zip(expected.schema.names, actual.schema.types,
                                                        expected.schema.types) if a != e]
        raise AssertionError(f"column types differ (name, actual, expected): {diff}")
    if actual.num_rows != expected.num_rows:
        raise AssertionError(f"row counts differ: {actual.num_rows} != {expected.num_rows}")
    if not check_order:
        # exact columns first, so float rounding rarely decides the order
        floats = [n for n in expected.column_names if pa.types.is_floating(expected.schema.field(n).type)]
        order = sort_by or [n for n in expected.column_names if n not in floats] + floats
        actual, expected = canonical(actual, order), canonical(expected, order)
    for name in expected.column_names:
        a, e = actual.column(name), expected.column(name)
        if pa.types.is_floating(e.type):
            import numpy as np

            a_null = a.is_null().to_numpy(zero_copy_only=False)
            e_null = e.is_null().to_numpy(zero_copy_only=False)
            if not np.array_equal(a_null, e_null):
                bad = int(np.argmax(a_null != e_null))
                raise AssertionError(f"column {name!r} differs at row {bad}: null in one table only")
            av = a.fill_null(0.0).to_numpy(zero_copy_only=False).astype("float64")
            ev = e.fill_null(0.0).to_numpy(zero_copy_only=False).astype("float64")
            if not np.allclose(av, ev, rtol=rel_tol, atol=0.0, equal_nan=True):
                bad = int(np.argmax(~np.isclose(av, ev, rtol=rel_tol, atol=0.0, equal_nan=True)))
                raise AssertionError(f"column {name!r} differs at row {bad}: {av[bad]!r} != {ev[bad]!r}")
            continue
        if a.type != e.type:
            a = a.cast(e.type)
        if not a.equals(e):
            al, el = a.to_pylist(), e.to_pylist()
            bad = next((i for i, (x, y) in enumerate(zip(al, el)) if x != y), None)
            if bad is None:
                raise AssertionError(f"column {name!r} differs ({a.type} vs {e.type}) though its values compare equal")
            raise AssertionError(f"column {name!r} differs at row {bad}: {al[bad]!r} != {el[bad]!r}")


# -- control plane ---------------------------------------------------------------------------


async def until(predicate, timeout=10.0, what="condition", interval=0.01):
    """Wait (real time) until ``predicate()`` is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def settle(rounds=50):
    """Let every coroutine that can run without waiting on I/O or time run (in-process tests)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class _Timer:
    __slots__ = ("at", "seq", "callback", "args", "cancelled")

    def __init__(self, at, seq, callback, args):
        self.at, self.seq, self.callback, self.args, self.cancelled = at, seq, callback, args, False

    def __lt__(self, other):
        return (self.at, self.seq) < (other.at, other.seq)

    def cancel(self):
        self.cancelled = True


class ManualClock(Clock):
    """A clock that moves only when the test calls :meth:`advance` (Flink's
    ManuallyTriggeredScheduledExecutor idea): sleeps and timers fire in time order.

    Example:
        >>> clock = ManualClock()
        >>> fired = []
        >>> _ = clock.call_later(2.0, fired.append, "two")
        >>> asyncio.run(clock.advance(1.0)); fired
        []
        >>> asyncio.run(clock.advance(1.0)); fired
        ['two']
    """

    def __init__(self, start=1000.0, wall_start=1_700_000_000.0):
        self._now = float(start)
        self._wall_offset = wall_start - start
        self._timers = []
        self._seq = itertools.count()

    def now(self):
        return self._now

    def wall(self):
        return self._wall_offset + self._now

    def call_later(self, delay, callback, *args):
        timer = _Timer(self._now + max(0.0, float(delay)), next(self._seq), callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds):
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            timer.cancel()

    @property
    def pending_timers(self):
        return sum(1 for t in self._timers if not t.cancelled)

    async def advance(self, seconds, *, rounds=50):
        """Move time forward by ``seconds``, firing due timers in order and letting the
        coroutines they wake run (and schedule more) before the next one."""
        target = self._now + seconds
        await settle(rounds)
        while self._timers and self._timers[0].at <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.at)
            timer.callback(*timer.args)
            await settle(rounds)
        self._now = target
        await settle(rounds)


class TestingWorkerGateway(WorkerGateway):
    """A fake of the workers: records every call the coordinator makes and answers at once.

    Attributes:
        deployed: ``[(node_id, TaskDeploymentDescriptor)]`` in order.
        controls: ``[(node_id, control message)]``.
        canceled: ``[(node_id, task_id)]``.
        finished_jobs: ``[(node_id, job_id)]`` (``POST /jobs/{id}/finished``).
        sent: ``[(node_id, record)]`` pushed over the connection (checkpoint triggers, completions).
        results: ``{task_id: pyarrow.Table}`` a collect sink returns.
        refuse_deploy: ``{node_id: exception}`` to raise on a deployment there.
        control_replies: ``{task_id: reply}`` answered to a control message (e.g. a source pause).
        on_deploy: callbacks ``fn(node_id, tdd)`` for every task deployed (a fake worker
            starting it).
    """

    __test__ = False  # not a pytest test class

    def __init__(self):
        self.connected = set()
        self.deployed = []
        self.controls = []
        self.canceled = []
        self.finished_jobs = []
        self.released_jobs = []
        self.sent = []
        self.results = {}
        self.refuse_deploy = {}
        self.control_replies = {}
        self.on_deploy = []

    def _check(self, node_id):
        if node_id not in self.connected:
            raise WorkerUnreachable(f"worker {node_id} is gone")

    async def deploy(self, node_id, tdds):
        self._check(node_id)
        if node_id in self.refuse_deploy:
            raise self.refuse_deploy[node_id]
        self.deployed += [(node_id, t) for t in tdds]
        for tdd in tdds:
            for callback in self.on_deploy:
                callback(node_id, tdd)

    async def control(self, node_id, message):
        self._check(node_id)
        self.controls.append((node_id, message))
        reply = self.control_replies.get(message.attempt_id.task_id)
        return {"task_id": message.attempt_id.task_id, "accepted": message.TYPE,
                **({"reply": reply} if reply is not None else {})}

    async def cancel(self, node_id, task_id):
        if node_id in self.connected:
            self.canceled.append((node_id, task_id))

    async def job_finished(self, node_id, job_id):
        self._check(node_id)
        self.finished_jobs.append((node_id, job_id))

    async def release_job(self, node_id, job_id):
        self._check(node_id)
        self.released_jobs.append((node_id, job_id))

    async def fetch_result(self, node_id, task_id):
        self._check(node_id)
        return self.results.get(task_id)

    async def send(self, node_id, message):
        self._check(node_id)
        self.sent.append((node_id, message))

    def is_connected(self, node_id):
        return node_id in self.connected

    def latest(self, task_id):
        """The latest descriptor deployed for ``task_id``."""
        for _, tdd in reversed(self.deployed):
            if tdd.task_id == task_id:
                return tdd
        raise KeyError(f"task {task_id!r} was never deployed")


class TestingCluster:
    """A coordinator with fake workers on a :class:`ManualClock`: the test plays the workers.

    Every step is deterministic: no sockets, no processes, no threads (storage I/O runs
    inline), and time moves only with :meth:`advance`. With ``auto_run`` (the default) a
    deployed task reports RUNNING right after its deployment, as a worker's task does.

    Example:
        >>> async def scenario():                                  # doctest: +SKIP
        ...     async with TestingCluster() as tc:
        ...         tc.add_worker("w1", slots=2)
        ...         job_id = await tc.coordinator.submit_stream_job(graph)
        ...         tc.report_all(job_id, "RUNNING")
        ...         tc.kill_worker("w1")
        ...         await tc.advance(0.2)
    """

    __test__ = False

    def __init__(self, config=None, *, auto_run=True, **settings):
        async def inline(fn, *args, **kwargs):
            return fn(*args, **kwargs)

        self.clock = ManualClock()
        self.gateway = TestingWorkerGateway()
        self.coordinator = ClusterCoordinator(dict(config or {}, **settings), clock=self.clock,
                                              gateway=self.gateway, offload=inline)
        if auto_run:
            self.gateway.on_deploy.append(self._start_task)

    def _start_task(self, node_id, tdd):
        def report():
            job = self.coordinator.jobs.get(tdd.job_id)
            task = job.exec_graph.tasks.get(tdd.task_id) if job is not None else None
            if task is not None and task.attempt == tdd.attempt and task.state.value == "DEPLOYING":
                self.report(tdd.job_id, tdd.task_id, "RUNNING", node_id=node_id)

        asyncio.get_running_loop().call_soon(report)

    async def __aenter__(self):
        await self.coordinator.start(serve_http=False)
        return self

    async def __aexit__(self, *exc):
        await self.coordinator.stop()

    def add_worker(self, node_id, slots=2, cpu_cores_per_slot=1.0, memory_mb_per_slot=1024, port=None):
        """Register (and connect) a fake worker."""
        port = port or 20000 + len(self.gateway.connected) * 2 + len(self.coordinator.registry.lost) * 2
        self.coordinator.register_worker(RegisterRequest(
            node_id, "127.0.0.1", port, "127.0.0.1", port + 1, slots, cpu_cores_per_slot, memory_mb_per_slot, 1))
        self.gateway.connected.add(node_id)
        self.coordinator.registry.connected(node_id)

    def kill_worker(self, node_id, reason="its connection closed"):
        """The worker's connection drops (kill -9)."""
        self.gateway.connected.discard(node_id)
        self.coordinator.on_worker_gone(node_id, reason, left=False)

    def silence_worker(self, node_id):
        """The worker stops talking (SIGSTOP, partition): only heartbeats time it out."""
        self.gateway.connected.discard(node_id)

    def heartbeat(self, *node_ids):
        for node_id in node_ids or list(self.gateway.connected):
            self.coordinator.on_worker_message(node_id, protocol.heartbeat_message(self.clock.wall()))

    def job(self, job_id):
        return self.coordinator.jobs[job_id]

    def report(self, job_id, task_id, state, *, error=None, error_type=None, metrics=None, handed_off=False,
               attempt=None, node_id=None, summary=None):
        """The task's worker reports ``state`` for its current attempt (or ``attempt``)."""
        job = self.job(job_id)
        task = job.exec_graph.get_task(task_id)
        node_id = node_id or task.node_id
        update = TaskUpdate(job_id, AttemptId(task_id, task.attempt if attempt is None else attempt),
                            task.operator_id, task.operator_name, task.subtask_index, TaskState(state), error=error,
                            error_type=error_type, metrics=dict(metrics or {}), handed_off=handed_off,
                            summary=summary)
        self.coordinator.on_worker_message(node_id, protocol.task_update_message(update.to_dict()))

    def report_all(self, job_id, state, **kwargs):
        """Every live task of the job reports ``state``."""
        for task_id in list(self.job(job_id).exec_graph.tasks):
            self.report(job_id, task_id, state, **kwargs)

    def acknowledge(self, job_id, checkpoint_id, task_ids=None, stats=None):
        """Tasks acknowledge a checkpoint (default: every live task, with no state)."""
        job = self.job(job_id)
        for task_id in task_ids or list(job.exec_graph.tasks):
            task = job.exec_graph.tasks[task_id]
            ack = CheckpointAck(job_id, task.attempt_id, checkpoint_id, dict(stats or {"handles": []}))
            self.coordinator.on_worker_message(task.node_id, protocol.checkpoint_message(ack.to_dict()))

    async def advance(self, seconds):
        """Move time forward; connected fake workers send a heartbeat every heartbeat interval
        (a silenced one does not)."""
        step = self.coordinator.config.heartbeat_interval_s
        left = seconds
        while left > 1e-12:
            self.heartbeat()
            chunk = min(step, left)
            await self.clock.advance(chunk)
            left -= chunk

    async def settle(self):
        await settle()


@contextlib.asynccontextmanager
async def in_process_cluster(workers=2, slots=2, token=None, **config):
    """A real coordinator and ``workers`` real workers (HTTP, WebSocket, data plane on 127.0.0.1)
    in this process and event loop; yields ``(coordinator, [Worker])``."""
    coordinator = ClusterCoordinator(dict(port=0, token=token, **config))
    await coordinator.start()
    started = []
    try:
        for _ in range(workers):
            started.append(await Worker(coordinator.url, num_slots=slots, token=token).start())
        yield coordinator, started
    finally:
        for worker in started:
            await worker.stop()
        await coordinator.stop()


# -- chaos: random faults on a LocalCluster's real worker processes -------------------------


@dataclasses.dataclass
class ChaosEvent:
    at_s: float  # seconds since the chaos started
    kind: str  # "kill", "pause", "rescale", "checkpoint"
    target: str
    outcome: str  # "done" (maybe with details after "; ") or "refused: <why>"

    @property
    def done(self):
        return self.outcome == "done" or self.outcome.startswith("done;")


@dataclasses.dataclass
class ChaosReport:
    """What :meth:`ChaosMonkey.run` did: every event, and the counts by kind and outcome."""

    seed: int
    seconds: float
    events: list

    def count(self, kind, done=True):
        return sum(1 for e in self.events if e.kind == kind and e.done == done)

    def summary(self):
        kinds = sorted({e.kind for e in self.events})
        return {k: {"done": self.count(k), "refused": self.count(k, done=False)} for k in kinds}


class ChaosMonkey:
    """Random faults and operations on a :class:`~sabot.cluster.local.LocalCluster` while jobs run.

    Every ``interval_s`` (drawn uniformly) one of the following, drawn from a shuffled deck
    of ``kinds`` dealt in turn (every kind once in each round of ``len(kinds)`` events: a run
    of a few events is not left without one kind, as independent draws would leave it
    often: 9 draws of 4 kinds miss a given one 7.5 % of the time):

    * ``kill``: SIGKILL a worker process, then start a replacement;
    * ``pause``: SIGSTOP a worker for ``pause_s`` (drawn uniformly), then SIGCONT (a pause
      longer than the heartbeat timeout gets it declared lost; it then rejoins);
    * ``rescale``: live-rescale an operator of ``rescalable`` (``{job_id: operator_id}``)
      to a parallelism in ``1..max_parallelism`` (the coordinator may refuse: a restart or
      another rescale going on, too few slots; that is recorded, not an error);
    * ``checkpoint``: trigger a checkpoint of a running job.

    At least ``min_workers`` workers are left running and not paused. Paused workers are
    always resumed, even when the run is interrupted. The same ``seed`` draws the same
    sequence of choices (what the cluster does in between is not deterministic).

    Example:
        >>> monkey = ChaosMonkey(cluster, seed=7, rescalable={job_id: agg_op})  # doctest: +SKIP
        >>> report = monkey.run(seconds=20, stop=lambda: cluster.job(job_id)["state"] != "RUNNING")
        >>> report.summary()                                                      # doctest: +SKIP
        {'checkpoint': {'done': 4, 'refused': 0}, 'kill': {'done': 3, 'refused': 0}, ...}
    """

    KINDS = ("kill", "pause", "rescale", "checkpoint")

    def __init__(self, cluster, *, seed=0, kinds=KINDS, interval_s=(0.3, 1.5), pause_s=(0.2, 3.0),
                 rescalable=None, max_parallelism=3, min_workers=1, log=None):
        import random

        unknown = set(kinds) - set(self.KINDS)
        if unknown:
            raise ValueError(f"unknown chaos kind(s) {sorted(unknown)}; known: {list(self.KINDS)}")
        self.cluster = cluster
        self.client = cluster.client()
        self.seed = seed
        self.random = random.Random(seed)
        self.kinds = tuple(kinds)
        self.interval_s = interval_s
        self.pause_s = pause_s
        self.rescalable = dict(rescalable or {})
        self.max_parallelism = max_parallelism
        self.min_workers = min_workers
        self.log = log
        self.events = []
        self._started = None

    def _event(self, kind, target, outcome):
        event = ChaosEvent(round(time.monotonic() - self._started, 3), kind, target, outcome)
        self.events.append(event)
        if self.log is not None:
            self.log(f"[chaos {event.at_s:7.2f} s] {kind} {target}: {outcome}")

    def _running_workers(self):
        return [i for i, pid in enumerate(self.cluster.worker_pids) if pid is not None]

    def run(self, seconds, stop=lambda: False):
        """Inject faults for ``seconds`` or until ``stop()`` is true; return a :class:`ChaosReport`."""
        self._started = time.monotonic()
        deadline = self._started + seconds
        deck = []
        while time.monotonic() < deadline and not stop():
            if not deck:
                deck = list(self.kinds)
                self.random.shuffle(deck)
            kind = deck.pop()
            getattr(self, f"_{kind}")()
            time.sleep(self.random.uniform(*self.interval_s))
        return ChaosReport(self.seed, round(time.monotonic() - self._started, 3), list(self.events))

    def _kill(self):
        running = self._running_workers()
        if len(running) <= self.min_workers:
            self._event("kill", "-", f"refused: only {len(running)} worker(s) run (min_workers={self.min_workers})")
            return
        index = self.random.choice(running)
        pid = self.cluster.kill_worker(index)
        replacement = self.cluster.add_worker()
        self._event("kill", f"worker {index} (pid {pid})", f"done; worker {replacement} replaces it")

    def _pause(self):
        import os
        import signal

        running = self._running_workers()
        seconds = self.random.uniform(*self.pause_s)
        if len(running) <= self.min_workers:
            self._event("pause", "-", f"refused: only {len(running)} worker(s) run (min_workers={self.min_workers})")
            return
        index = self.random.choice(running)
        pid = self.cluster.worker_pids[index]
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        self._event("pause", f"worker {index} (pid {pid}) for {seconds:.2f} s", "done")

    def _rescale(self):
        from sabot.cluster.client import ApiError

        if not self.rescalable:
            self._event("rescale", "-", "refused: nothing rescalable was given")
            return
        job_id = self.random.choice(sorted(self.rescalable))
        operator_id = self.rescalable[job_id]
        new = self.random.randint(1, self.max_parallelism)
        try:
            plan = self.client.rescale(job_id, operator_id, new)
        except ApiError as exc:
            self._event("rescale", f"{operator_id} of {job_id} -> {new}", f"refused: HTTP {exc.status}: {exc}")
            return
        self._event("rescale", f"{operator_id} of {job_id} {plan['old_parallelism']} -> {new}", "done")

    def _checkpoint(self):
        from sabot.cluster.client import ApiError

        jobs = [j["job_id"] for j in self.client.jobs() if j["state"] == "RUNNING"]
        if not jobs:
            self._event("checkpoint", "-", "refused: no job runs")
            return
        job_id = self.random.choice(sorted(jobs))
        try:
            checkpoint_id = self.client.trigger_checkpoint(job_id)
        except ApiError as exc:
            self._event("checkpoint", job_id, f"refused: HTTP {exc.status}: {exc}")
            return
        self._event("checkpoint", f"{job_id} #{checkpoint_id}", "done")


# -- real protocol peers for connector tests ---------------------------------------------


class PostgresServer:
    """A private PostgreSQL server in a temporary directory, on a free loopback port.

    Uses the server binaries of Debian's ``postgresql-NN`` package (``initdb``, ``pg_ctl``;
    found on ``PATH`` or under ``/usr/lib/postgresql/*/bin``). PostgreSQL refuses to run
    as root, so when this process is root the server runs as the ``postgres`` user and its
    directory is handed to that user. TCP connections need the password (scram-sha-256),
    so a wrong one is refused as on a real server.

    Example:
        >>> with PostgresServer() as pg:  # doctest: +SKIP
        ...     import psycopg
        ...     with psycopg.connect(pg.dsn) as conn:
        ...         conn.execute("select 1")
    """

    USER = "postgres"

    def __init__(self, password="sabot-test"):
        self.password = password
        self.port = None
        self.directory = None
        self._started = False

    @staticmethod
    def binaries():
        """The directory holding ``initdb`` and ``pg_ctl`` (None if PostgreSQL is not installed)."""
        import glob
        import os
        import shutil

        found = shutil.which("pg_ctl")
        if found and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(found)), "initdb")):
            return os.path.dirname(os.path.realpath(found))
        for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
            if os.path.exists(os.path.join(candidate, "pg_ctl")):
                return candidate
        return None

    @property
    def dsn(self):
        """A libpq connection string for the superuser on database ``postgres``."""
        return (f"host=127.0.0.1 port={self.port} user={self.USER} password={self.password} "
                "dbname=postgres connect_timeout=5")

    def _run(self, *argv, timeout=60):
        import os
        import shlex
        import subprocess

        command = " ".join(shlex.quote(a) for a in argv)
        if os.geteuid() == 0:
            argv = ["su", self.USER, "-s", "/bin/sh", "-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL test server: {command} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self):
        import os
        import pwd
        import socket
        import tempfile

        bindir = self.binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed: no pg_ctl on PATH or under "
                               "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")
        self.directory = tempfile.mkdtemp(prefix="sabot-pg-")
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.USER)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        os.chmod(self.directory, 0o700)
        data = os.path.join(self.directory, "data")
        pwfile = os.path.join(self.directory, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        self._run(os.path.join(bindir, "initdb"), "-D", data, "-U", self.USER, "--pwfile", pwfile,
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._started = True
        self._run(os.path.join(bindir, "pg_ctl"), "-D", data, "-o", options, "-l",
                  os.path.join(self.directory, "log"), "-w", "-t", "60", "start", timeout=90)
        return self

    def pause(self):
        """Stop the server, keeping its data (connections fail until :meth:`resume`)."""
        import os

        self._run(os.path.join(self.binaries(), "pg_ctl"), "-D", os.path.join(self.directory, "data"),
                  "-m", "fast", "-w", "stop")
        self._started = False

    def resume(self):
        """Start a paused server again, on the same port, with its data."""
        import os

        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._started = True
        self._run(os.path.join(self.binaries(), "pg_ctl"), "-D", os.path.join(self.directory, "data"), "-o",
                  options, "-l", os.path.join(self.directory, "log"), "-w", "-t", "60", "start", timeout=90)

    def stop(self):
        import os
        import shutil

        try:
            if self._started:
                self._run(os.path.join(self.binaries(), "pg_ctl"), "-D", os.path.join(self.directory, "data"),
                          "-m", "immediate", "-w", "stop")
        finally:
            self._started = False
            if self.directory:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


class KafkaTestCluster:
    """Kafka for tests: librdkafka's built-in mock cluster, or a real cluster when
    ``$SABOT_KAFKA_BOOTSTRAP`` names one (``host:port,...``).

    The mock cluster (``test.mock.num.brokers``) runs inside this process, on loopback TCP
    ports that other processes (a LocalCluster's workers) reach like any broker. It speaks
    the Kafka protocol (produce, fetch, offsets, consumer-group offset commits, the
    transaction requests), creates topics with 4 partitions when they are first asked for,
    keeps only the last few MB of each partition (about 45,000 records of 100 bytes), and
    does NOT implement transactional isolation (read_committed consumers see aborted and
    open transactions), producer fencing or timestamp lookups; tests that need those run
    only against a real cluster (:attr:`is_mock` says which).

    Example:
        >>> with KafkaTestCluster() as kafka:  # doctest: +SKIP
        ...     kafka.create_topic("events", partitions=4)
        ...     kafka.produce("events", [b"a", b"b"], partitions=[0, 1])
    """

    MOCK_PARTITIONS = 4

    def __init__(self, brokers=3):
        import os

        self.brokers = brokers
        self.bootstrap = os.environ.get("SABOT_KAFKA_BOOTSTRAP") or None
        self.is_mock = self.bootstrap is None
        self._holder = None

    def start(self):
        from confluent_kafka import Producer

        if self.is_mock:
            # the mock cluster lives as long as the client that created it
            self._holder = Producer({"test.mock.num.brokers": self.brokers, "log_level": 3})
            md = self._holder.list_topics(timeout=10)
            self.bootstrap = ",".join(f"{b.host}:{b.port}" for _, b in sorted(md.brokers.items()))
        return self

    def stop(self):
        self._holder = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def create_topic(self, name, partitions=4):
        """Create ``name`` (the mock cluster: only with its default of 4 partitions)."""
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        if self.is_mock:
            if partitions != self.MOCK_PARTITIONS:
                raise ValueError(f"librdkafka's mock cluster creates topics with {self.MOCK_PARTITIONS} partitions "
                                 f"(no CreateTopics support); asked for {partitions}")
            md = Producer({"bootstrap.servers": self.bootstrap}).list_topics(name, timeout=10)
            assert len(md.topics[name].partitions) == partitions
            return
        futures = AdminClient({"bootstrap.servers": self.bootstrap}).create_topics(
            [NewTopic(name, partitions, 1)], operation_timeout=30)
        futures[name].result(60)

    def produce(self, topic, values, *, keys=None, partitions=None, timestamps=None):
        """Produce records (bytes), then wait until every one is acknowledged (and, on the mock
        cluster, check that it kept them all)."""
        from confluent_kafka import Consumer, Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 20, "acks": "all",
                             "queue.buffering.max.messages": 1_000_000})
        errors = []

        def done(err, msg):
            if err is not None:
                errors.append(err)

        for i, value in enumerate(values):
            kwargs = {"value": value, "on_delivery": done}
            if keys is not None:
                kwargs["key"] = keys[i]
            if partitions is not None:
                kwargs["partition"] = partitions[i]
            if timestamps is not None:
                kwargs["timestamp"] = timestamps[i]
            while True:
                try:
                    producer.produce(topic, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)
        left = producer.flush(60)
        if left or errors:
            raise RuntimeError(f"producing to {topic!r}: {left} undelivered, errors: {errors[:3]}")
        if self.is_mock:
            from confluent_kafka import TopicPartition

            md = producer.list_topics(topic, timeout=10)
            consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "sabot-test-check"})
            try:
                lows = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                        for p in md.topics[topic].partitions}
            finally:
                consumer.close()
            if any(lows.values()):
                raise RuntimeError(f"librdkafka's mock cluster deleted the oldest records of {topic!r} (it keeps a "
                                   f"few MB per partition; first offsets now {lows}); produce less")

    def read(self, topic, *, read_committed=True, timeout=30):
        """Every record of ``topic`` up to its current end: a list of ``(partition, offset, key,
        value, timestamp_ms)``."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "sabot-test-reader",
                             "enable.auto.commit": False,
                             "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
        try:
            md = consumer.list_topics(topic, timeout=10)
            parts = sorted(md.topics[topic].partitions)
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
            todo = {p for p, (low, high) in ends.items() if high > low}
            consumer.assign([TopicPartition(topic, p, ends[p][0]) for p in sorted(todo)])
            out = []
            deadline = time.monotonic() + timeout
            while todo:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic!r}: partitions {sorted(todo)} did not reach their end")
                for m in consumer.consume(10_000, 0.5):
                    if m.error() is not None:
                        continue
                    out.append((m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1]))
                for t in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if t.offset >= ends[t.partition][1]:
                        todo.discard(t.partition)
            return out
        finally:
            consumer.close()

"""LocalCluster: a coordinator and N worker processes on this machine.

The coordinator runs in a background thread of this process, on its own event
loop (uvloop when available), so :attr:`LocalCluster.coordinator` is the real
object (its ``active_jobs``, ``slot_pool``...) and results come back without a
copy. The workers are separate ``python -P -m sabot.cli worker`` processes on
127.0.0.1 with free ports, each in its own process group. They import exactly the
Sabot this process imported (see :func:`worker_command`), whatever the current
directory holds. Every process is
cleaned up on exit, after errors too (and by an ``atexit`` hook if the cluster
was never closed).

Example:
    >>> with LocalCluster(workers=2, slots_per_worker=2) as cluster:   # doctest: +SKIP
    ...     job_id = cluster.submit(stream.to_job_graph())
    ...     cluster.wait(job_id, timeout=60)
    ...     table = cluster.result(job_id).table()

In async code use ``async with LocalCluster(...)`` and the ``*_async`` methods.
"""

import asyncio
import atexit
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

import sabot
from sabot import _loop
from sabot.cluster import protocol
from sabot.cluster.client import SabotClient
from sabot.cluster.coordinator import ClusterCoordinator, CoordinatorConfig
from sabot.cluster.tls import TlsConfig

log = logging.getLogger(__name__)

__all__ = ["LocalCluster"]


#: set for worker processes: the directory of the ``sabot`` package they must import
EXPECTED_PACKAGE_ENV = "SABOT_EXPECTED_PACKAGE"


def worker_command():
    """The argv prefix that starts a worker process running this process's Sabot.

    ``-P`` (Python 3.11+) keeps the current directory off ``sys.path``: started from a
    source checkout, ``-m`` would otherwise import the unbuilt ``./sabot`` tree instead
    of the installed package. The package's own root goes first on ``PYTHONPATH``
    (:func:`worker_environment`).
    """
    return [sys.executable, "-P", "-m", "sabot.cli", "worker"]


def worker_environment(extra_paths=(), base=None):
    """The environment of a worker process: this process's import path, Sabot's root first."""
    env = dict(os.environ if base is None else base)
    package_dir = os.path.dirname(os.path.abspath(sabot.__file__))
    paths = [os.path.dirname(package_dir)] + list(extra_paths) + [p or os.getcwd() for p in sys.path]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env[EXPECTED_PACKAGE_ENV] = package_dir
    return env


def check_expected_package():
    """In a worker process: refuse to run a Sabot other than the one the parent imported."""
    expected = os.environ.get(EXPECTED_PACKAGE_ENV)
    actual = os.path.dirname(os.path.abspath(sabot.__file__))
    if expected and os.path.realpath(expected) != os.path.realpath(actual):
        raise RuntimeError(
            f"this worker imported sabot from {actual}, but the process that started it uses {expected}; "
            "start workers with sabot.cluster.local.worker_command() and worker_environment()"
        )


class LocalCluster:
    """A coordinator (in a thread of this process) and ``workers`` worker processes.

    Args:
        workers: number of worker processes (>= 0; more can be added with add_worker()).
        slots_per_worker: task slots each worker offers (>= 1).
        cpu_cores_per_slot, memory_mb_per_slot: resources each slot advertises.
        token: the cluster secret; default ``$SABOT_TOKEN`` / ``$SABOT_TOKEN_FILE``, else a
            random one made for this cluster (workers get it in their environment, never
            on their command line; :meth:`client` uses it).
        tls: a :class:`~sabot.cluster.tls.TlsConfig` (or dict) for every process of the
            cluster (default ``$SABOT_TLS_*``, else none).
        coordinator_config: extra CoordinatorConfig fields (dict), e.g.
            ``{"slot_wait_timeout_s": 5}``.
        start_timeout_s: how long workers may take to start and register.
        worker_threads: operator thread-pool size in each worker.
        python_path: extra import paths for the workers (the parent's sys.path is always passed,
            so functions importable here are importable there).
    """

    def __init__(self, workers=2, slots_per_worker=2, *, cpu_cores_per_slot=1.0, memory_mb_per_slot=1024,
                 token=None, coordinator_config=None, start_timeout_s=30.0, worker_threads=None,
                 python_path=(), tls=None):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        if isinstance(slots_per_worker, bool) or not isinstance(slots_per_worker, int) or slots_per_worker < 1:
            raise ValueError(f"slots_per_worker must be an integer >= 1, got {slots_per_worker!r}")
        self.num_workers = workers
        self.slots_per_worker = slots_per_worker
        self.cpu_cores_per_slot = cpu_cores_per_slot
        self.memory_mb_per_slot = memory_mb_per_slot
        # a cluster secret always: without one given, a random one for these processes only,
        # so other local users cannot submit jobs, deploy tasks or feed the data plane
        self.token = protocol.resolve_token(token) or secrets.token_urlsafe(32)
        config = dict(coordinator_config or {})
        config.setdefault("host", "127.0.0.1")
        config.setdefault("port", 0)
        config["token"] = self.token
        self.tls = TlsConfig.coerce(tls) or TlsConfig.coerce(config.get("tls")) or TlsConfig.from_env()
        config["tls"] = self.tls
        self._config = CoordinatorConfig.coerce(config)
        self.start_timeout_s = start_timeout_s
        self.worker_threads = worker_threads
        self.python_path = list(python_path)
        self.coordinator = None
        self._loop = None
        self._thread = None
        self._procs = []  # index -> Popen | None (killed)
        self._node_ids = []
        self._log_dir = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self):
        """Start the coordinator and the workers; return once every worker has registered."""
        if self._started:
            return self
        self._started = True
        atexit.register(self._kill_all)
        try:
            self._log_dir = tempfile.TemporaryDirectory(prefix="sabot-local-")
            self._loop = _loop.new_event_loop()
            self._thread = threading.Thread(target=self._run_loop, name="sabot-coordinator", daemon=True)
            self._thread.start()
            self.coordinator = ClusterCoordinator(self._config)
            self.call(self.coordinator.start())
            indices = [self._spawn_worker() for _ in range(self.num_workers)]
            self._wait_registered(indices)
        except BaseException:
            self.close()
            raise
        return self

    def _run_loop(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, coro, timeout=None):
        """Run ``coro`` on the coordinator's loop and return its result (blocking)."""
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise RuntimeError("the local cluster is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def call_async(self, coro):
        """Run ``coro`` on the coordinator's loop from another event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def close(self):
        """Stop the coordinator, then every worker process (SIGTERM, then SIGKILL)."""
        if self.coordinator is not None and self._loop is not None and self._loop.is_running():
            try:
                self.call(self.coordinator.stop(), timeout=10)
            except Exception:
                log.exception("stopping the coordinator failed")
        self._stop_workers()
        if self._loop is not None:
            if self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
        atexit.unregister(self._kill_all)
        self._started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    async def __aenter__(self):
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.close)

    # -- workers ---------------------------------------------------------------------------

    def _worker_env(self):
        env = worker_environment(self.python_path)
        if self.token:
            env["SABOT_TOKEN"] = self.token
        if self.tls is not None:
            env.update(self.tls.to_env())
        return env

    def _spawn_worker(self):
        index = len(self._procs)
        node_id = f"local-{index}"
        cmd = worker_command() + [
            "--coordinator", self.coordinator.url,
            "--slots", str(self.slots_per_worker),
            "--cpu-per-slot", str(self.cpu_cores_per_slot),
            "--memory-per-slot", str(self.memory_mb_per_slot),
            "--host", "127.0.0.1", "--port", "0",
            "--node-id", node_id,
        ]
        if self.worker_threads:
            cmd += ["--threads", str(self.worker_threads)]
        log_path = os.path.join(self._log_dir.name, f"{node_id}.log")
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._worker_env(), start_new_session=True)
        proc.log_path = log_path
        self._procs.append(proc)
        self._node_ids.append(node_id)
        return index

    def _registered(self):
        async def ids():
            return set(self.coordinator.nodes)

        return self.call(ids(), timeout=5)

    def _wait_registered(self, indices):
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            registered = self._registered()
            waiting = [i for i in indices if self._node_ids[i] not in registered]
            if not waiting:
                return
            for i in waiting:
                proc = self._procs[i]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"worker {self._node_ids[i]} exited with code {proc.returncode} before registering; "
                        f"its output:\n{self._worker_log(i)}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"workers {[self._node_ids[i] for i in waiting]} did not register within "
                    f"{self.start_timeout_s} s; output of the first:\n{self._worker_log(waiting[0])}"
                )
            time.sleep(0.05)

    def _worker_log(self, index, limit=4000):
        try:
            with open(self._procs[index].log_path, "rb") as f:
                return f.read()[-limit:].decode(errors="replace")
        except OSError:
            return "(no output)"

    def add_worker(self):
        """Start one more worker; return its index once it has registered."""
        index = self._spawn_worker()
        self._wait_registered([index])
        return index

    def kill_worker(self, index, sig=signal.SIGKILL):
        """Kill worker ``index`` (SIGKILL by default: no goodbye); return its pid."""
        proc = self._procs[index]
        if proc is None or proc.poll() is not None:
            raise ValueError(f"worker {index} is not running")
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(10)
        return proc.pid

    @property
    def worker_pids(self):
        """Pids of the worker processes, by index (None once a worker has exited)."""
        return [p.pid if p is not None and p.poll() is None else None for p in self._procs]

    @property
    def node_ids(self):
        return list(self._node_ids)

    def node_of_pid(self, pid):
        for proc, node_id in zip(self._procs, self._node_ids):
            if proc is not None and proc.pid == pid:
                return node_id
        raise KeyError(pid)

    def _stop_workers(self, grace=3.0):
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)

    def _kill_all(self):
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- jobs ------------------------------------------------------------------------------

    @property
    def url(self):
        return self.coordinator.url

    def client(self):
        return SabotClient(self.url, token=self.token, tls=self.tls)

    def submit(self, job):
        """Submit a JobGraph (or Stream, or to_dict() dict); return the job id."""
        return self.call(self.coordinator.submit_stream_job(job))

    def wait(self, job_id, timeout=None):
        """Wait until the job ends; return its final state ('FINISHED', 'FAILED', 'CANCELED')."""
        return self.call(self.coordinator.wait_for_job(job_id, timeout))

    def result(self, job_id):
        """The JobResult of a finished job (raises JobFailed if it failed)."""
        return self.call(self.coordinator.job_result(job_id))

    def cancel(self, job_id):
        return self.call(self.coordinator.cancel_job(job_id))

    def job(self, job_id):
        """The job's details (the GET /jobs/{id} document)."""
        async def details():
            return self.coordinator.job_details(self.coordinator.get_job(job_id))

        return self.call(details())

    def run(self, job, timeout=None):
        """Submit, wait and return the JobResult (JobFailed if the job failed)."""
        job_id = self.submit(job)
        self.wait(job_id, timeout)
        return self.result(job_id)

    def submit_restored(self, job, restore_from):
        """Submit a job starting from a checkpoint (an earlier job id or a checkpoint path)."""
        return self.call(self.coordinator.submit_stream_job(job, restore_from=restore_from))

    def trigger_checkpoint(self, job_id):
        """Trigger a checkpoint of a running job now; return its id."""
        return self.call(self.coordinator.trigger_checkpoint(job_id))

    def checkpoints(self, job_id):
        """The job's checkpoint history (the GET /jobs/{id}/checkpoints document)."""
        async def view():
            return self.coordinator.checkpoints_view(job_id)

        return self.call(view())

    async def submit_async(self, job):
        return await self.call_async(self.coordinator.submit_stream_job(job))

    async def wait_async(self, job_id, timeout=None):
        return await self.call_async(self.coordinator.wait_for_job(job_id, timeout))

    async def result_async(self, job_id):
        return await self.call_async(self.coordinator.job_result(job_id))

    async def cancel_async(self, job_id):
        return await self.call_async(self.coordinator.cancel_job(job_id))

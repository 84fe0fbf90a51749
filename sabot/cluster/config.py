"""Settings of a :class:`~sabot.cluster.coordinator.ClusterCoordinator`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["CoordinatorConfig"]


@dataclass
class CoordinatorConfig:
    """Settings of a :class:`ClusterCoordinator`.

    Attributes:
        host: address to bind (anything but loopback requires ``token``).
        port: port to bind; 0 picks a free one (see ``ClusterCoordinator.url``).
        token: shared secret every request and worker must send as
            ``Authorization: Bearer <token>``; None: no authentication (loopback only).
        heartbeat_interval_s: how often workers send a heartbeat (from a native thread
            that never waits for the GIL).
        heartbeat_timeout_s: a worker silent for longer is declared lost (a stopped or
            partitioned one: a killed worker's connection closes and it is lost at once).
            2 s = 10 missed beats: beats do not wait for Python, so only an OS-level stall
            of the whole worker process delays them.
        liveness_port: port of the heartbeat listener (0: a free one; workers learn it
            when they register).
        slot_wait_timeout_s: how long a job may wait for free slots before it FAILS.
        refuse_oversized: refuse at submit a job needing more slots than all
            registered workers hold together (see the module docstring).
        check_imports: refuse at submit (400) a function reference whose top-level
            package cannot be found here (found, not imported: the coordinator never runs
            user code). Turn off when user code is installed only on the workers; a bad
            reference then fails the job at deploy time, naming it.
        allowed_function_modules: module prefixes user functions may come from; None: the
            job's own packages (anything outside the standard library, pyarrow and sabot).
            ``os``, ``subprocess``, ``builtins`` and the like are always refused; see
            :class:`sabot.runtime.functions.FunctionPolicy`.
        request_timeout_s: bound on every request the coordinator makes to a worker
            (deploy, control, cancel, publish, fetching a result).
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
        max_operators_per_job, max_tasks_per_job: a job with more operators, or whose
            operators' parallelisms add up to more tasks, is refused at submit (before
            anything is expanded).
        max_request_bytes: the largest HTTP request body accepted (413 above).
        max_json_depth: the deepest nesting of JSON accepted in a request (400 above).
        max_json_items: the most JSON values (containers and commas) accepted in a request
            (400 above): a 10,000-operator job graph holds ~220,000.
        request_body_timeout_s: a request body not fully arrived this long after its
            headers is refused (408).
        idle_connection_timeout_s: an HTTP connection silent this long is closed.
        retain_ended_jobs: ended jobs (FINISHED, FAILED, CANCELED) kept readable, with
            their results; beyond it the longest-ended is forgotten, on the coordinator and
            on its workers (see :mod:`sabot.cluster.retention`).
        ended_job_ttl_s: an ended job is forgotten this long after it ended.
        tls: a :class:`~sabot.cluster.tls.TlsConfig` (or a dict of its fields): HTTPS,
            WSS and TLS on the data plane; None: ``$SABOT_TLS_*`` if set, else plain TCP.
        metrics_sample_interval_s: how often each running job's throughput is sampled
            into its history (``GET /jobs/{job_id}/throughput``).
        metrics_history_s: how much throughput history is kept per job (a ring buffer
            of ``metrics_history_s / metrics_sample_interval_s`` points).
        session_ttl_s: how long a dashboard login (session cookie) stays valid.
        max_table_bytes: the largest in-memory table a client may upload for its jobs
            (``PUT /tables/{table_id}``, 413 above); uploads go to a temp directory of
            this coordinator, deleted on stop.
        max_unused_tables: uploaded tables no job uses yet, kept at most (the oldest goes).
    """

    host: str = "127.0.0.1"
    port: int = 0
    token: str = None
    heartbeat_interval_s: float = 0.2
    heartbeat_timeout_s: float = 2.0
    liveness_port: int = 0
    slot_wait_timeout_s: float = 30.0
    refuse_oversized: bool = True
    check_imports: bool = True
    allowed_function_modules: list = None
    request_timeout_s: float = 30.0
    checkpoint_dir: str = None
    checkpoint_timeout_s: float = 10.0
    checkpoint_retain: int = 3
    restart_strategy: dict = None
    restart_slot_wait_s: float = None
    max_operators_per_job: int = 10_000
    max_tasks_per_job: int = 20_000
    max_request_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 64
    max_json_items: int = 1_000_000
    request_body_timeout_s: float = 30.0
    idle_connection_timeout_s: float = 15.0
    retain_ended_jobs: int = 100
    ended_job_ttl_s: float = 3600.0
    tls: object = None
    metrics_sample_interval_s: float = 1.0
    max_table_bytes: int = 64 * 1024 ** 3
    max_unused_tables: int = 64
    metrics_history_s: float = 300.0
    session_ttl_s: float = 12 * 3600.0

    def http_limits(self):
        from sabot.cluster.web import HttpLimits

        return HttpLimits(max_body_bytes=self.max_request_bytes, max_json_depth=self.max_json_depth,
                          max_json_items=self.max_json_items,
                          body_timeout_s=self.request_body_timeout_s,
                          idle_timeout_s=self.idle_connection_timeout_s)

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

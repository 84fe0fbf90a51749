"""A small blocking HTTP client for the coordinator API (used by the CLI, LocalCluster and tests).

Example:
    >>> client = SabotClient("http://127.0.0.1:8081")          # doctest: +SKIP
    >>> job_id = client.submit(job_graph)                       # doctest: +SKIP
    >>> client.wait(job_id, timeout=60)                         # doctest: +SKIP
    'FINISHED'
    >>> client.result(job_id).table("counts")                   # doctest: +SKIP
"""

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pyarrow as pa

from sabot.cluster import protocol
from sabot.cluster.tls import TlsConfig
from sabot.cluster.web import ARROW_STREAM
from sabot.errors import JobFailed, SabotError
from sabot.runtime import tables
from sabot.runtime.embedded import JobResult

__all__ = ["ApiError", "SabotClient"]

TERMINAL = ("FINISHED", "CANCELED", "FAILED")


class ApiError(SabotError, RuntimeError):
    """The coordinator answered with an error; ``status`` is the HTTP status."""

    def __init__(self, message, status=None, method=None, path=None):
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path


class SabotClient:
    """Blocking client of one coordinator.

    Args:
        url: the coordinator's ``http://host:port``.
        token: sent as ``Authorization: Bearer <token>`` (default ``$SABOT_TOKEN`` or the
            file ``$SABOT_TOKEN_FILE``).
        timeout: seconds per request.
        tls: a :class:`~sabot.cluster.tls.TlsConfig` (or dict) for an ``https://`` coordinator:
            its CA verifies the server, its certificate answers a mutual-TLS server; None:
            ``$SABOT_TLS_*`` if set, else the system's CAs.
    """

    def __init__(self, url, token=None, timeout=30.0, tls=None):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"coordinator URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.token = protocol.resolve_token(token)
        self.timeout = timeout
        tls = TlsConfig.coerce(tls) or TlsConfig.from_env()
        self._ssl = tls.client_context() if tls is not None and self.url.startswith("https://") else None

    def request(self, method, path, body=None, raw=False, content_type="application/json"):
        """Send one request; return the decoded JSON (or bytes with ``raw``; None for 204)."""
        data = None
        headers = dict(protocol.auth_headers(self.token))
        if body is not None:
            data = body if isinstance(body, (bytes, memoryview)) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                message = json.loads(payload)["error"]
            except (ValueError, KeyError, TypeError):
                message = payload.decode(errors="replace")[:500] or exc.reason
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {message}", exc.code, method, path) from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"cannot reach the coordinator at {self.url}: {exc.reason}") from None
        if status == 204:
            return None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    # -- API ------------------------------------------------------------------------------

    def health(self):
        return self.request("GET", "/health")

    def overview(self):
        return self.request("GET", "/overview")

    def nodes(self):
        return self.request("GET", "/nodes")

    def slots(self):
        return self.request("GET", "/slots")

    def metrics(self):
        return self.request("GET", "/metrics", raw=True).decode()

    def openapi(self):
        return self.request("GET", "/openapi.json")

    def submit(self, job):
        """Submit a JobGraph, a Stream, or a ``to_dict()`` dict; return the job id. The
        in-memory tables the job refers to are uploaded first (once each)."""
        return self.request("POST", "/jobs/submit", self._shipped(job))["job_id"]

    def submit_restored(self, job, restore_from):
        """Submit a job that starts from the checkpoint ``restore_from`` names (a job id or
        a checkpoint path); return the new job id."""
        return self.request("POST", "/jobs/submit",
                            {"job_graph": self._shipped(job), "restore_from": restore_from})["job_id"]

    def _shipped(self, job):
        if hasattr(job, "to_job_graph"):
            job = job.to_job_graph(shippable=True)
        for table_id, table in getattr(job, "tables", {}).items():
            self.upload_table(table_id, table)
        return job.to_dict() if hasattr(job, "to_dict") else job

    def upload_table(self, table_id, table):
        """Upload an in-memory table a job refers to (``PUT /tables/{table_id}``)."""
        sink = pa.BufferOutputStream()
        tables.write_ipc(table, sink)
        return self.request("PUT", f"/tables/{table_id}", memoryview(sink.getvalue()),
                            content_type=ARROW_STREAM)

    def trigger_checkpoint(self, job_id):
        """Start a checkpoint of a running job now; return its id."""
        return self.request("POST", f"/jobs/{_quote(job_id)}/checkpoints")["checkpoint_id"]

    def rescale(self, job_id, operator_id, new_parallelism):
        """Rescale one operator of a running job live; returns the plan (the move goes on
        while the job runs: ``job(job_id)["rescales"]`` shows its progress)."""
        return self.request("POST", f"/jobs/{_quote(job_id)}/rescale",
                            {"operator_id": operator_id, "new_parallelism": new_parallelism})

    def checkpoints(self, job_id):
        """The job's checkpoint history (``GET /jobs/{job_id}/checkpoints``)."""
        return self.request("GET", f"/jobs/{_quote(job_id)}/checkpoints")

    def jobs(self):
        return self.request("GET", "/jobs")["jobs"]

    def job(self, job_id):
        return self.request("GET", f"/jobs/{_quote(job_id)}")

    def forget(self, job_id):
        """Release an ended job now (its record, result and tasks); see ``retain_ended_jobs``."""
        self.request("DELETE", f"/jobs/{_quote(job_id)}")

    def cancel(self, job_id):
        return self.request("POST", f"/jobs/{_quote(job_id)}/cancel")

    def wait(self, job_id, timeout=None, poll_interval=0.05):
        """Poll until the job ends; return its final state. Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.job(job_id)["state"]
            if state in TERMINAL:
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {state} after {timeout} s")
            time.sleep(poll_interval)

    def result(self, job_id):
        """The JobResult of a finished job (tables fetched as Arrow IPC).

        Raises JobFailed for a failed job, ApiError (409) for one not finished.
        """
        try:
            info = self.request("GET", f"/jobs/{_quote(job_id)}/result")
        except ApiError as exc:
            if exc.status == 409:
                job = self.job(job_id)
                if job["state"] == "FAILED":
                    failure = job.get("failure") or {}
                    raise JobFailed(failure.get("error") or str(exc), [failure]) from None
            raise
        result = JobResult(job_id=job_id, summaries=info["summaries"], duration_seconds=info["duration_seconds"])
        for name in info["tables"]:
            data = self.request("GET", f"/jobs/{_quote(job_id)}/result/{_quote(name)}", raw=True)
            result.tables[name] = pa.ipc.open_stream(io.BytesIO(data)).read_all()
        return result


def _quote(part):
    return urllib.parse.quote(str(part), safe="")

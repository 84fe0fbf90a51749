"""Messages between the coordinator and its workers, and the errors of the control plane.

A worker joins in two steps:

1. ``POST /workers/register`` with a :class:`RegisterRequest` body. The
   coordinator answers ``201`` with :meth:`RegisterResponse.to_dict` (the node id
   and the heartbeat settings), or a 4xx naming what was wrong (a node id or
   address already registered: 409; nonsense slot counts: 400).
2. ``GET /workers/{node_id}/ws`` upgrades to the one persistent WebSocket the
   worker keeps open. Over it the worker sends JSON messages:

   - ``{"type": "heartbeat", "sent_at": <unix seconds>}`` every ``heartbeat_interval_s``;
   - ``{"type": "task_update", "update": TaskUpdate.to_dict()}`` with a task
     attempt's report (:class:`~sabot.execution.messages.TaskUpdate`);
   - ``{"type": "checkpoint", "message": ...}`` with a task's
     :class:`~sabot.execution.messages.CheckpointAck` or ``CheckpointDecline``;
   - ``{"type": "goodbye"}`` before a clean shutdown;
   - ``{"type": "batch", "messages": [...]}``: several of the above in one frame.

   The coordinator sends ``{"type": "heartbeat_ack"}`` back for each heartbeat
   (so the worker notices a hung coordinator too), and over the same socket the
   records :class:`~sabot.execution.messages.TriggerCheckpoint` (a source task
   injects that barrier; a task that is not there, or runs another attempt,
   declines) and :class:`~sabot.execution.messages.CheckpointComplete` (the job's
   tasks here publish what the checkpoint covers: two-phase-commit sinks).

Control calls go the other way over plain HTTP to the worker's own server:
``POST /tasks/deploy`` (body: a list of
:class:`~sabot.execution.deployment.TaskDeploymentDescriptor` dicts), ``POST
/tasks/{task_id}/control`` (a live-rescale control message), ``POST
/tasks/{task_id}/cancel``, ``POST /jobs/{job_id}/finished`` (the job's sinks publish
what end of input left staged), ``GET /tasks``, ``GET /tasks/{task_id}/result``
(Arrow IPC stream), ``GET /health``.

When a token is configured every request and the WebSocket carry
``Authorization: Bearer <token>``.
"""

import hashlib
import hmac
import ipaddress
import math
import os
from dataclasses import asdict, dataclass

from sabot.errors import Conflict, InsecureBinding, InvalidRequest, NotFound, SabotError  # noqa: F401
from sabot.execution.ids import ID_RULE, is_valid_id

# -- errors ---------------------------------------------------------------------------
#
# The control plane raises the domain errors of sabot.errors; only sabot.cluster.web maps
# them to HTTP status codes. These names are kept for code written against them.

BadRequest = InvalidRequest


class ClusterError(SabotError, RuntimeError):
    """A control-plane operation failed for a reason that is not the caller's (HTTP 500)."""


# -- message kinds ---------------------------------------------------------------------

HEARTBEAT = "heartbeat"
HEARTBEAT_ACK = "heartbeat_ack"
TASK_UPDATE = "task_update"
GOODBYE = "goodbye"
#: worker -> coordinator: a task's checkpoint ack or decline (``{"type", "message": {...}}``)
CHECKPOINT = "checkpoint"
#: worker -> coordinator: several messages in one frame (``{"type", "messages": [...]}``)
BATCH = "batch"

TOKEN_ENV = "SABOT_TOKEN"
#: a file holding the token (readable by its owner only), when $SABOT_TOKEN is not set
TOKEN_FILE_ENV = "SABOT_TOKEN_FILE"

#: the most slots one worker may offer
MAX_SLOTS_PER_WORKER = 4096


def is_loopback(host):
    """True if ``host`` is a loopback address or ``localhost``."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host, token, what="server"):
    """Refuse to bind a non-loopback ``host`` without a token (workers import submitted code)."""
    if not is_loopback(host) and not token:
        raise InsecureBinding(
            f"refusing to bind the {what} to {host!r} without a token: submitting a job makes workers "
            f"import and run code, so any address other than 127.0.0.1 needs --token (or {TOKEN_ENV})"
        )


def resolve_token(token=None, token_file=None):
    """The cluster secret: ``token``, else the file ``token_file``, else ``$SABOT_TOKEN``,
    else the file ``$SABOT_TOKEN_FILE``, else None (no authentication: loopback only).

    A command line is readable by every local user (``/proc/<pid>/cmdline``): pass the
    secret in the environment or in a file only its owner can read.

    Raises:
        InvalidRequest: the token file cannot be read, is empty, or others may read it.
    """
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if os.environ.get(TOKEN_FILE_ENV):
        return read_token_file(os.environ[TOKEN_FILE_ENV])
    return None


def read_token_file(path):
    """The token in ``path`` (surrounding whitespace stripped); the file must be private."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise InvalidRequest(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if st.st_mode & 0o077:
        raise InvalidRequest(f"the token file {path} may be read by others (mode {st.st_mode & 0o777:o}); "
                             f"chmod 600 {path}")
    if not token:
        raise InvalidRequest(f"the token file {path} is empty")
    return token


def write_token_file(path, token):
    """Write ``token`` to a new file only its owner can read; return the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return path


def derive_key(token, purpose):
    """A key for one use of the cluster secret (HMAC-SHA256 of ``purpose``), so a value
    proven on one channel proves nothing on another; b"" without a secret."""
    if not token:
        return b""
    return hmac.new(token.encode("utf-8"), purpose.encode("ascii"), hashlib.sha256).digest()


def auth_headers(token):
    return {"Authorization": f"Bearer {token}"} if token else {}


def _require(body, name, kind, what):
    if name not in body:
        raise BadRequest(f"{what} is missing {name!r}")
    value = body[name]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRequest(f"{what}: {name!r} must be {expected}, got {value!r}")
    return value


@dataclass
class RegisterRequest:
    """What a worker tells the coordinator when it joins.

    Attributes:
        node_id: the worker's id (unique within the cluster).
        host, port: the worker's HTTP control server.
        data_host, data_port: its runtime DataServer (task channels connect there).
        num_slots: task slots it offers (>= 1).
        cpu_cores_per_slot, memory_mb_per_slot: resources of each slot (> 0).
        pid: the worker's process id (shown by GET /nodes).
    """

    node_id: str
    host: str
    port: int
    data_host: str
    data_port: int
    num_slots: int
    cpu_cores_per_slot: float = 1.0
    memory_mb_per_slot: int = 1024
    pid: int = 0

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, body):
        """Validate a registration body; raise :class:`BadRequest` naming the bad field."""
        what = "worker registration"
        if not isinstance(body, dict):
            raise BadRequest(f"{what} must be a JSON object, got {type(body).__name__}")
        node_id = _require(body, "node_id", str, what)
        if not is_valid_id(node_id):
            raise BadRequest(f"{what}: 'node_id' {node_id!r} is not a valid id: {ID_RULE}")
        host = _require(body, "host", str, what)
        port = _require(body, "port", int, what)
        data_host = _require(body, "data_host", str, what)
        data_port = _require(body, "data_port", int, what)
        for name, value in (("host", host), ("data_host", data_host)):
            if not 0 < len(value) <= 253:
                raise BadRequest(f"{what}: {name!r} must be a host name or address, got {value!r}")
        for name, value in (("port", port), ("data_port", data_port)):
            if not 0 < value < 65536:
                raise BadRequest(f"{what}: {name!r} must be a TCP port in 1..65535, got {value}")
        num_slots = _require(body, "num_slots", int, what)
        if not 1 <= num_slots <= MAX_SLOTS_PER_WORKER:
            raise BadRequest(f"{what}: 'num_slots' must be between 1 and {MAX_SLOTS_PER_WORKER}, got {num_slots}")
        cpu = body.get("cpu_cores_per_slot", 1.0)
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu) or cpu <= 0:
            raise BadRequest(f"{what}: 'cpu_cores_per_slot' must be a positive number, got {cpu!r}")
        memory = body.get("memory_mb_per_slot", 1024)
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
            raise BadRequest(f"{what}: 'memory_mb_per_slot' must be a positive integer, got {memory!r}")
        pid = body.get("pid", 0)
        if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
            raise BadRequest(f"{what}: 'pid' must be a non-negative integer, got {pid!r}")
        return cls(node_id, host, port, data_host, data_port, num_slots, float(cpu), memory, pid)


@dataclass
class RegisterResponse:
    """The coordinator's answer to a registration: heartbeat settings, where to send beats,
    and the ticket the heartbeat connection proves itself with (see :mod:`sabot.cluster.liveness`)."""

    node_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    liveness_port: int
    liveness_ticket: str = ""

    def to_dict(self):
        return asdict(self)


@dataclass
class NodeInfo:
    """The coordinator's view of one registered worker."""

    node_id: str
    host: str
    port: int
    data_host: str
    data_port: int
    num_slots: int
    cpu_cores_per_slot: float
    memory_mb_per_slot: int
    pid: int
    last_heartbeat: float
    state: str = "REGISTERED"  # REGISTERED -> CONNECTED -> LOST | LEFT
    lost_reason: str = None
    scheme: str = "http"  # https when the cluster runs TLS

    @property
    def url(self):
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def data_address(self):
        return (self.data_host, self.data_port)

    def to_dict(self, now):
        return {
            "node_id": self.node_id,
            "url": self.url,
            "data_address": f"{self.data_host}:{self.data_port}",
            "pid": self.pid,
            "state": self.state,
            "num_slots": self.num_slots,
            "cpu_cores_per_slot": self.cpu_cores_per_slot,
            "memory_mb_per_slot": self.memory_mb_per_slot,
            "seconds_since_heartbeat": round(max(0.0, now - self.last_heartbeat), 4),
            "lost_reason": self.lost_reason,
        }


def heartbeat_message(sent_at):
    return {"type": HEARTBEAT, "sent_at": sent_at}


def task_update_message(update):
    return {"type": TASK_UPDATE, "update": update}


def checkpoint_message(message):
    return {"type": CHECKPOINT, "message": message}


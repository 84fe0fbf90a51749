"""HTTP plumbing shared by the coordinator's and the workers' servers (aiohttp).

The one place where errors become HTTP status codes: domain code raises
:mod:`sabot.errors` (``InvalidRequest``, ``NotFound``, ``Conflict``, ...) and
:func:`error_middleware` answers ``{"error": "..."}`` with the status of
:func:`status_of`. Unknown routes and methods get the same JSON shape.
"""

import asyncio
import collections
import hmac
import io
import logging
import secrets
import time
from dataclasses import dataclass

import orjson
import pyarrow as pa
from aiohttp import web

from sabot._core import jsonscan
from sabot.errors import (
    Conflict,
    ControlTimeout,
    GraphValidationError,
    InvalidRequest,
    JobFailed,
    NotFound,
    SabotError,
    PayloadTooLarge,
    SlotRequestTooLarge,
    SlotsExhausted,
    UnknownNode,
)

log = logging.getLogger(__name__)

__all__ = ["ARROW_STREAM", "CSRF_HEADER", "SESSION_COOKIE", "Forbidden", "HttpLimits", "SessionStore",
           "Unauthorized", "arrow_response", "auth_middleware", "authenticated_by", "error_middleware", "make_app",
           "read_json", "serve", "status_of"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class Unauthorized(SabotError, PermissionError):
    """A request without the cluster's secret (or with a wrong one)."""


class Forbidden(SabotError, PermissionError):
    """An authenticated request that may not do what it asks (a cookie-only POST from another page)."""


#: exception type -> HTTP status, most specific first (the first isinstance match wins)
STATUS_BY_TYPE = (
    (Unauthorized, 401),
    (Forbidden, 403),
    (PayloadTooLarge, 413),
    (InvalidRequest, 400),
    (GraphValidationError, 400),
    (SlotRequestTooLarge, 400),
    (NotFound, 404),
    (UnknownNode, 404),
    (Conflict, 409),
    (JobFailed, 409),
    (SlotsExhausted, 503),
    (ControlTimeout, 504),
    (LookupError, 404),
    (ValueError, 400),
    (TypeError, 400),
)


def status_of(exc):
    """The HTTP status a raised exception maps to (500 for anything unexpected)."""
    for kind, status in STATUS_BY_TYPE:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(status, message):
    return web.json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(request, handler):
    """Turn every failure into ``{"error": ...}``; unknown routes and methods included."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            message = f"no route {request.method} {request.path}; see GET /openapi.json"
        elif exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            response = error_response(405, f"method {request.method} is not allowed on {request.path}; "
                                           f"allowed: {', '.join(allowed)}")
            response.headers["Allow"] = ", ".join(allowed)
            return response
        else:
            message = exc.text or exc.reason
            if exc.text and exc.text.startswith("{"):
                return web.Response(status=exc.status, text=exc.text, content_type="application/json")
        return error_response(exc.status, message)
    except Exception as exc:
        status = status_of(exc)
        message = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError) and not isinstance(exc, SabotError) and exc.args:
            message = str(exc.args[0])
        if status >= 500:
            log.exception("%s %s failed", request.method, request.path)
            message = f"internal error: {type(exc).__name__}: {message}"
        return error_response(status, message)


#: the dashboard's session cookie (a random session id; never the token)
SESSION_COOKIE = "sabot_session"
#: a request authenticated by the session cookie alone must carry this header to change
#: anything: another site's page cannot set it without a CORS preflight, which is refused
CSRF_HEADER = "X-Sabot-Dashboard"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionStore:
    """Dashboard logins: random session ids held in memory, each valid for ``ttl_s``.

    At most ``max_sessions`` are kept (the oldest login goes first), so a flood of
    logins cannot grow memory. Restarting the coordinator logs everyone out.
    """

    def __init__(self, ttl_s=12 * 3600.0, max_sessions=1000, clock=time.monotonic):
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self.clock = clock
        self._expiry = collections.OrderedDict()  # session id -> monotonic expiry, oldest first

    def create(self) -> str:
        session_id = secrets.token_urlsafe(32)
        self._expiry[session_id] = self.clock() + self.ttl_s
        while len(self._expiry) > self.max_sessions:
            self._expiry.popitem(last=False)
        return session_id

    def valid(self, session_id) -> bool:
        if not session_id:
            return False
        expiry = self._expiry.get(session_id)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._expiry[session_id]
            return False
        return True

    def revoke(self, session_id) -> None:
        self._expiry.pop(session_id, None)

    def __len__(self):
        return len(self._expiry)


def bearer_ok(request, token) -> bool:
    """Does the request carry ``Authorization: Bearer <token>``?"""
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


def authenticated_by(request, token, sessions=None):
    """How the request proves it knows the token: "token" (bearer header), "session"
    (a valid dashboard session cookie), "open" (no token configured) or None."""
    if not token:
        return "open"
    if bearer_ok(request, token):
        return "token"
    if sessions is not None and sessions.valid(request.cookies.get(SESSION_COOKIE)):
        return "session"
    return None


def auth_middleware(token, sessions=None, public=frozenset()):
    """Require ``Authorization: Bearer <token>`` on every request when a token is set.

    Args:
        sessions: a :class:`SessionStore`: a valid ``sabot_session`` cookie is accepted
            too (the dashboard's login); a request with only the cookie must send the
            ``X-Sabot-Dashboard: 1`` header to use a method other than GET/HEAD on a route
            that is not public (else 403).
        public: ``(method, path)`` pairs served without authentication (the login page,
            the login itself); their handlers call :func:`authenticated_by` themselves.
    """

    @web.middleware
    async def check(request, handler):
        how = authenticated_by(request, token, sessions)
        public_route = (request.method, request.path) in public
        if how is None and not public_route:
            raise Unauthorized(
                "missing or wrong token: send 'Authorization: Bearer <token>' (the --token / SABOT_TOKEN "
                "this server was started with)"
            )
        if (how == "session" and request.method not in _SAFE_METHODS and not public_route
                and request.headers.get(CSRF_HEADER) != "1"):
            raise Forbidden(f"a request authenticated by the dashboard's session cookie must send the header "
                            f"'{CSRF_HEADER}: 1' to {request.method} {request.path}")
        return await handler(request)

    return check


#: bodies larger than this are parsed on a thread, so the event loop keeps serving
PARSE_ON_THREAD_BYTES = 256 * 1024


def dumps(data) -> bytes:
    """JSON bytes. orjson: a multi-MB payload (thousands of deployment descriptors, a big job
    graph) is encoded in one call that holds the GIL, so only its speed keeps loops responsive."""
    return orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def loads(raw):
    return orjson.loads(raw)


@dataclass(frozen=True)
class HttpLimits:
    """What one HTTP server accepts from a client.

    Attributes:
        max_body_bytes: a larger request body is refused (413) before it is read.
        max_json_depth: JSON nested deeper is refused (400): nothing Sabot accepts nests
            deeper than a few levels, and deep nesting only costs the parser and whoever
            walks the result.
        max_json_items: JSON with more values (containers and commas) is refused (400):
            parsing makes one Python object per value while holding the GIL. Both are
            measured on the raw bytes first (:func:`sabot._core.jsonscan.measure`).
        body_timeout_s: a body that has not fully arrived this long after its headers
            is refused (408): a client trickling a body must not hold a handler forever.
        idle_timeout_s: a connection that sends nothing for this long (between requests,
            or a half-open one) is closed, so strangers cannot pile up open sockets.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_json_depth: int = 64
    max_json_items: int = 1_000_000
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 15.0


LIMITS = web.AppKey("sabot_http_limits", HttpLimits)


def make_app(middlewares, limits: HttpLimits) -> web.Application:
    """An aiohttp Application enforcing ``limits`` (read back by :func:`read_json`)."""
    app = web.Application(middlewares=middlewares, client_max_size=limits.max_body_bytes)
    app[LIMITS] = limits
    return app


async def serve(app, host, port, limits: HttpLimits, ssl_context=None):
    """Bind ``app`` (HTTPS with ``ssl_context``); returns ``(runner, (bound_host, bound_port))``.
    Idle connections close after ``limits.idle_timeout_s``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0,
                           keepalive_timeout=limits.idle_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[:2]


def _parse(raw, limits, what):
    """Measure the raw JSON (no GIL held), refuse it if it passes a limit, else parse it."""
    depth, items = jsonscan.measure(raw, limits.max_json_depth, limits.max_json_items)
    if depth > limits.max_json_depth:
        raise InvalidRequest(f"the {what} nests JSON deeper than {limits.max_json_depth} levels "
                             "(max_json_depth); Sabot's requests nest a few levels")
    if items > limits.max_json_items:
        raise InvalidRequest(f"the {what} holds more than {limits.max_json_items} JSON values (max_json_items)")
    try:
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON in the {what}: {exc}") from None


async def read_json(request, what="request body"):
    """The request's JSON body, or InvalidRequest naming the problem."""
    limits = request.app.get(LIMITS) or HttpLimits()
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limits.max_body_bytes, actual_size=request.content_length,
            text=dumps({"error": f"the {what} is {request.content_length} bytes; at most "
                                 f"{limits.max_body_bytes} are accepted"}).decode(),
            content_type="application/json")
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=dumps({"error": f"the {what} did not arrive within {limits.body_timeout_s:g} s"}).decode(),
            content_type="application/json") from None
    if not raw:
        raise InvalidRequest(f"the {what} is empty; expected JSON")
    if len(raw) > PARSE_ON_THREAD_BYTES:
        return await asyncio.to_thread(_parse, raw, limits, what)
    return _parse(raw, limits, what)


def arrow_response(table):
    """A table as an Arrow IPC stream response."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return web.Response(body=sink.getvalue(), content_type=ARROW_STREAM)

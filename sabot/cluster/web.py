"""HTTP plumbing shared by the coordinator's and the workers' servers (aiohttp).

The one place where errors become HTTP status codes: domain code raises
:mod:`sabot.errors` (``InvalidRequest``, ``NotFound``, ``Conflict``, ...) and
:func:`error_middleware` answers ``{"error": "..."}`` with the status of
:func:`status_of`. Unknown routes and methods get the same JSON shape.
"""

import asyncio
import hmac
import io
import json
import logging

import orjson
import pyarrow as pa
from aiohttp import web

from sabot.errors import (
    Conflict,
    ControlTimeout,
    GraphValidationError,
    InvalidRequest,
    JobFailed,
    NotFound,
    SabotError,
    SlotRequestTooLarge,
    SlotsExhausted,
    UnknownNode,
)

log = logging.getLogger(__name__)

__all__ = ["ARROW_STREAM", "Unauthorized", "arrow_response", "auth_middleware", "error_middleware",
           "read_json", "status_of"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class Unauthorized(SabotError, PermissionError):
    """A request without the cluster's secret (or with a wrong one)."""


#: exception type -> HTTP status, most specific first (the first isinstance match wins)
STATUS_BY_TYPE = (
    (Unauthorized, 401),
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
            message = f"method {request.method} is not allowed on {request.path}"
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


def auth_middleware(token):
    """Require ``Authorization: Bearer <token>`` on every request when a token is set."""

    @web.middleware
    async def check(request, handler):
        if token:
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise Unauthorized(
                    "missing or wrong token: send 'Authorization: Bearer <token>' (the --token / SABOT_TOKEN "
                    "this server was started with)"
                )
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


async def read_json(request, what="request body"):
    """The request's JSON body, or InvalidRequest naming the problem."""
    raw = await request.read()
    if not raw:
        raise InvalidRequest(f"the {what} is empty; expected JSON")
    try:
        if len(raw) > PARSE_ON_THREAD_BYTES:
            return await asyncio.to_thread(loads, raw)
        return loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON in the {what}: {exc}") from None


def arrow_response(table):
    """A table as an Arrow IPC stream response."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return web.Response(body=sink.getvalue(), content_type=ARROW_STREAM)

"""The coordinator's web dashboard: static files and the login that guards them.

The dashboard is plain HTML, CSS and JavaScript shipped in this package (no build
step); the page reads only the coordinator's JSON API, so the API stays the
contract. This module serves the files and the login:

- ``GET /``: the dashboard; with a token configured and neither the bearer header
  nor a valid session, a redirect (303) to the login page: the page, its script and
  every API route answer 401 without the token, so nothing of the dashboard is
  served before the login.
- ``GET /login``: the login page (a form that POSTs the token).
- ``POST /login``: the token in a form field or a JSON body (never in a URL). Right:
  a random session id in an ``HttpOnly``, ``SameSite=Strict`` cookie (the token itself
  never leaves the client again). Wrong: 401 (the form comes back with a message).
- ``POST /logout``: forgets the session and clears the cookie.
- ``GET /dashboard/{name}``: the page's scripts and styles (behind the login, except
  the stylesheet the login page itself uses).

Every HTML page is sent with a strict Content-Security-Policy: scripts and styles
only from this server, no framing.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import importlib.resources
import re

from aiohttp import web

from sabot.cluster.web import SESSION_COOKIE, Unauthorized, authenticated_by, read_json
from sabot.errors import InvalidRequest, NotFound

__all__ = ["ASSETS", "PUBLIC_ROUTES", "Dashboard"]

#: the files ``GET /dashboard/{name}`` serves, with their content types
ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
#: served without authentication: the login page, logging in and out, the login page's stylesheet
PUBLIC_ROUTES = frozenset({("GET", "/"), ("GET", "/login"), ("POST", "/login"), ("POST", "/logout"),
                           ("GET", "/dashboard/style.css")})

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_HTML_HEADERS = dict(_HEADERS, **{"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
                                  "X-Frame-Options": "DENY"})
#: a wrong token costs the guesser this long (the event loop goes on serving others)
WRONG_TOKEN_DELAY_S = 0.25


def _read(name) -> str:
    return importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


class Dashboard:
    """The dashboard's handlers for one coordinator.

    Args:
        token: the coordinator's token (None: no login; the page is open, as the API is).
        sessions: the :class:`~sabot.cluster.web.SessionStore` the auth middleware checks.
    """

    def __init__(self, token, sessions):
        self.token = token
        self.sessions = sessions

    def _html(self, text, status=200, **kwargs):
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                            headers=_HTML_HEADERS, **kwargs)

    def login_page(self, error=None, status=401):
        text = _read("login.html").replace("{{error}}", html.escape(error) if error else "")
        text = text.replace("{{error_hidden}}", "" if error else "hidden")
        return self._html(text, status=status)

    async def index(self, request):
        if authenticated_by(request, self.token, self.sessions) is None:
            return web.Response(status=303, headers={"Location": "/login", **_HEADERS})
        text = _read("index.html").replace("{{login}}", "true" if self.token else "false")
        return self._html(text)

    async def asset(self, request):
        name = request.match_info["name"]
        if name not in ASSETS or not re.fullmatch(r"[a-z]+\.[a-z]+", name):
            raise NotFound(f"the dashboard has no file {name!r}; files: {sorted(ASSETS)}")
        return web.Response(text=_read(name), content_type=ASSETS[name], charset="utf-8", headers=_HEADERS)

    async def login_form(self, request):
        if self.token and authenticated_by(request, self.token, self.sessions) == "session":
            return web.Response(status=303, headers={"Location": "/", **_HEADERS})
        return self.login_page(status=200)

    async def login(self, request):
        form = request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
        if form:
            given = (await request.post()).get("token")
        else:
            body = await read_json(request, "login request")
            given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given:
            if form:
                return self.login_page("Enter the token.", status=400)
            raise InvalidRequest('POST /login expects the form field "token" or {"token": "..."}')
        if not self.token:
            return web.json_response({"authenticated": True, "token_required": False})
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            await asyncio.sleep(WRONG_TOKEN_DELAY_S)
            if form:
                return self.login_page("Wrong token.")
            raise Unauthorized("wrong token")
        session_id = self.sessions.create()
        if form:
            response = web.Response(status=303, headers={"Location": "/", **_HEADERS})
        else:
            response = web.json_response({"authenticated": True, "token_required": True,
                                          "expires_in_seconds": self.sessions.ttl_s})
        response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="Strict", path="/",
                            secure=request.secure, max_age=int(self.sessions.ttl_s))
        return response

    async def logout(self, request):
        self.sessions.revoke(request.cookies.get(SESSION_COOKIE))
        form = request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
        if form:
            response = web.Response(status=303, headers={"Location": "/", **_HEADERS})
        else:
            response = web.json_response({"authenticated": False})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

"""The authenticated proxy: ``/proxy/{execution_id}/{instance}/{port}/...`` to a port of a
running instance, HTTP and WebSocket, for the execution's owner and admins only.

Anyone else gets the same 403 whether the execution exists or not. The upstream is the
address the instance's executor published for that container port (its endpoint). A port
marked ``"proxy": true`` in its ZApp serves under the proxy's path itself (a ZApp passes it
with the ``{proxy_base}`` template variable: ``{proxy_base}/{dns_name#self}/8888/``) and
gets the whole path; any other port gets the path without the prefix. Zoe's own
credentials (its session cookies, an ``Authorization`` header) never reach the instance;
a notebook's ``JUPYTER_TOKEN`` is sent as its ``Authorization: token`` instead, so the
user never types it. Once the instance stops running, its links are gone (404).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from aiohttp import web

from common.errors import NotFound
from common.states import EXECUTION_FINAL
from services.api import auth, limits
from services.api.limits import ascii_int
from services.api.responses import json_response

log = structlog.get_logger("api.proxy")

PREFIX = "/proxy"
CLIENT = web.AppKey("proxy_client", aiohttp.ClientSession)
OWN_COOKIES = frozenset({"zoe_session", "zoe_csrf"})
# hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself
_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Authorization",
        "Cookie",
        "X-CSRF-Token",
    )
)
_WS_HEADERS = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"})


def _forbidden() -> auth.Forbidden:
    """The same answer for an execution that is not the caller's and one that does not
    exist."""
    return auth.Forbidden("forbidden")


def _unreachable() -> web.Response:
    return json_response(
        {"error": "the instance does not answer (yet?): try again in a moment", "errors": []},
        status=502,
    )


def base_path(execution_id: int, instance: str, port: int) -> str:
    """The proxy's path of one port of an instance (no trailing slash)."""
    return f"{PREFIX}/{execution_id}/{instance}/{port}"


async def _target(request: web.Request) -> tuple[str, bool, dict[str, str]]:
    """(upstream base URL, whether the port serves under the prefix, extra headers)."""
    from services.api.http import DEPS  # http mounts the proxy: imported when called
    from services.api.pages import may_see

    execution_id = ascii_int(request.match_info["execution_id"])
    port = ascii_int(request.match_info["port"], 65535)
    name = request.match_info["instance"]
    if execution_id is None or port is None or not limits.storable(name):
        raise _forbidden()
    row = await request.app[DEPS].pool.fetchrow(
        "SELECT e.user_name, e.state AS execution_state, i.state, i.endpoints, i.spec"
        " FROM instances i JOIN executions e ON e.id = i.execution_id"
        " WHERE i.execution_id = $1 AND i.name = $2",
        execution_id,
        name,
    )
    if row is None or not may_see(request, row["user_name"]):
        raise _forbidden()
    if row["state"] != "running" or row["execution_state"] in EXECUTION_FINAL:
        raise NotFound(f"instance {name!r} of execution {execution_id} is not running")
    spec = row["spec"] or {}
    ports = [p for p in spec.get("ports", []) if p.get("port_number") == port]
    url = (row["endpoints"] or {}).get(ports[0]["name"]) if ports else None
    if url is None:
        raise NotFound(f"instance {name!r} publishes no port {port}")
    parts = urlsplit(url if "//" in url else f"http://{url}")
    headers = {}
    token = dict(spec.get("environment", {})).get("JUPYTER_TOKEN")
    if token:
        headers["Authorization"] = f"token {token}"
    return f"http://{parts.netloc}", bool(ports[0].get("proxy")), headers


def _upstream_path(request: web.Request, keep_prefix: bool) -> str:
    raw = request.raw_path
    if keep_prefix:
        return raw
    base = base_path(
        int(request.match_info["execution_id"]),
        request.match_info["instance"],
        int(request.match_info["port"]),
    )
    rest = raw[len(base) :] if raw.startswith(base) else "/" + request.match_info["tail"]
    return rest if rest.startswith("/") else "/" + rest


def _forwarded_headers(request: web.Request, extra: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    cookies = SimpleCookie()
    with contextlib.suppress(Exception):
        cookies.load(request.headers.get("Cookie", ""))
    kept = "; ".join(f"{k}={m.value}" for k, m in cookies.items() if k not in OWN_COOKIES)
    if kept:
        out["Cookie"] = kept
    out["X-Forwarded-For"] = request.remote or ""
    out["X-Forwarded-Proto"] = request.scheme
    out["X-Forwarded-Host"] = request.host
    out.update(extra)
    return out


async def _authenticate(request: web.Request) -> None:
    """Set the request's caller from a Bearer token or the session cookie.

    Unlike the api's routes, an unsafe request with the session cookie needs no
    ``X-CSRF-Token``: the proxied application's own requests cannot send one. The cookie
    is SameSite=Strict, so another site's request does not carry it; what stands against
    forged requests from the proxied application's own pages is that application's own
    guard (Jupyter's XSRF cookie).
    """
    from services.api.http import DEPS

    pool = request.app[DEPS].pool
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() == "bearer":
        found = await auth.caller_of_token(pool, secret.strip())
    else:
        cookie = request.cookies.get(auth.SESSION_COOKIE)
        found = await auth.caller_of_token(pool, cookie) if cookie else None
    if found is None:
        if request.method == "GET" and "websocket" not in request.headers.get("Upgrade", ""):
            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs)}")
        raise auth.Unauthorized("authentication required")
    request[auth.CALLER] = found


@auth.public  # authenticated by `_authenticate`, without the api's CSRF header
async def handle(request: web.Request) -> web.StreamResponse:
    """Forward one request (or a WebSocket) to the instance's port."""
    await _authenticate(request)
    upstream, keep_prefix, extra = await _target(request)
    url = upstream + _upstream_path(request, keep_prefix)
    headers = _forwarded_headers(request, extra)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return await _websocket(request, url, headers)
    # read whole (at most the api's MAX_BODY): a streamed, chunked body is not what every
    # server takes
    body = await request.read() if request.body_exists else None
    try:
        reply = await request.app[CLIENT].request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            auto_decompress=False,
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("proxy.unreachable", url=url, error=repr(exc))
        return _unreachable()
    async with reply:
        response = web.StreamResponse(status=reply.status, reason=reply.reason)
        for k, v in reply.headers.items():
            if k.lower() not in _HOP or k.lower() == "content-length":
                response.headers.add(k, v)
        try:
            await response.prepare(request)
            async for chunk in reply.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientError) as exc:  # either side went away
            log.debug("proxy.interrupted", url=url, error=repr(exc))
        return response


async def _websocket(request: web.Request, url: str, headers: dict[str, str]) -> web.StreamResponse:
    """Accept the browser's WebSocket, open one to the instance, and pump both ways."""
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    headers = {
        k: v
        for k, v in headers.items()
        if k.lower() not in _WS_HEADERS and k.lower() != "sec-websocket-protocol"
    }
    try:
        upstream = await request.app[CLIENT].ws_connect(
            "ws" + url.removeprefix("http"), headers=headers, protocols=protocols, max_msg_size=0
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("proxy.ws_unreachable", url=url, error=repr(exc))
        return _unreachable()
    browser = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=0
    )
    await browser.prepare(request)

    async def pump(source: Any, sink: Any) -> None:
        """Copy messages until ``source`` closes, then close ``sink`` (which ends the
        other direction's pump too)."""
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
            async for msg in source:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                else:
                    break
        await sink.close()

    async with upstream, asyncio.TaskGroup() as tg:
        tg.create_task(pump(browser, upstream))
        tg.create_task(pump(upstream, browser))
    return browser


async def _client(app: web.Application) -> AsyncIterator[None]:
    app[CLIENT] = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    )
    yield
    await app[CLIENT].close()


def add_routes(app: web.Application) -> None:
    """Mount the proxy on ``app``, with its HTTP client for the app's lifetime."""
    app.cleanup_ctx.append(_client)
    app.router.add_route("*", PREFIX + "/{execution_id}/{instance}/{port}/{tail:.*}", handle)
    app.router.add_route("*", PREFIX + "/{execution_id}/{instance}/{port}", _slash)


@auth.public  # authenticated by `_authenticate`
async def _slash(request: web.Request) -> web.StreamResponse:
    """The port's root without its trailing slash: redirected to it (after the checks)."""
    await _authenticate(request)
    await _target(request)
    raise web.HTTPFound(request.raw_path + "/")


__all__ = ["CLIENT", "add_routes", "base_path", "handle"]

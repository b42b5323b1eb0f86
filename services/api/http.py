"""The HTTP gateway: JSON in and out under ``/api/v1``.

A user error becomes a 4xx with ``{"error": ..., "errors": [{"path", "message"}]}``;
nothing is stored unless the whole request is valid. docs/api.md lists the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from common import messages as m
from common import metrics
from common.bus import Bus
from common.errors import FieldError, InvalidRequest, NotFound, UserError
from common.probe import Probe
from common.retry import is_transient
from common.states import ExecutionState
from services.api import (
    accounts,
    actions,
    auth,
    events,
    hygiene,
    limits,
    openapi,
    pages,
    store,
    users,
)
from services.api import endpoints as endpoints_of
from services.api import nodes as node_routes
from services.api.limits import MAX_BODY, ascii_int
from services.api.responses import json_response
from services.api.shop import SHOP, Shop, add_routes, json_object

log = structlog.get_logger("api")

MAX_LIST = 10_000  # executions one list may return
MAX_TAIL = 1_000_000  # lines a ?tail= may ask for
_STATES = frozenset(s.value for s in ExecutionState)
FOLLOWS = web.AppKey("follows", limits.Slots)
WEB = Path(__file__).parent / "web"


@dataclass(frozen=True)
class Deps:
    """What the routes need."""

    pool: asyncpg.Pool
    bus: Bus
    deployment: str
    rpc_timeout: float
    public_url: str = ""  # the gateway as users reach it (endpoint links); "": none


DEPS = web.AppKey("deps", Deps)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count each answered request by its route's pattern (``/api/v1/executions/{id}``,
    never the raw path: ids would make a series each), method and status, and time it."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    began = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect, re-raised by errors_middleware
        status = exc.status
        raise
    finally:
        metrics.HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
        metrics.HTTP_DURATION.labels(route, request.method).observe(time.perf_counter() - began)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map user errors to their status with a JSON body; the database or the broker away
    is a 503 the client may retry (with its Idempotency-Key); a bug is a logged 500."""
    try:
        return await handler(request)
    except UserError as exc:
        headers = auth.unauthorized_headers() if exc.status == 401 else None
        return json_response(exc.to_dict(), status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None  # a 405's
        return json_response({"error": exc.reason, "errors": []}, status=exc.status, headers=allow)
    except Exception as exc:
        if is_transient(exc):
            log.warning("http.unavailable", path=request.path, error=repr(exc))
            return json_response(
                {"error": "temporarily unavailable, try again", "errors": []},
                status=503,
                headers={"Retry-After": "1"},
            )
        log.exception("http.failed", path=request.path)
        return json_response({"error": "internal error", "errors": []}, status=500)


def _execution_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    execution_id = ascii_int(raw)
    if execution_id is None:
        raise NotFound(f"execution {raw!r} does not exist")
    return execution_id


def _instance_name(request: web.Request, execution_id: int) -> str:
    name = request.match_info["instance"]
    if not limits.storable(name):  # no instance has such a name, and PostgreSQL refuses it
        raise NotFound(f"execution {execution_id} has no service instance {name!r}")
    return name


def _query_int(request: web.Request, key: str, low: int, high: int) -> int | None:
    """``?key=`` as an integer from ``low`` to ``high`` (ASCII digits); None if absent."""
    raw = request.query.get(key)
    if raw is None:
        return None
    value = ascii_int(raw, high)
    if value is None or value < low:
        raise InvalidRequest(
            "invalid query", [FieldError(key, f"must be an integer from {low} to {high}")]
        )
    return value


def _state_filter(request: web.Request) -> str | None:
    raw = request.query.get("state")
    if raw is None or raw in _STATES:
        return raw
    allowed = ", ".join(s.value for s in ExecutionState)
    raise InvalidRequest("invalid query", [FieldError("state", f"must be one of {allowed}")])


@auth.public
async def health(request: web.Request) -> web.Response:
    """Liveness and the database's reachability."""
    await request.app[DEPS].pool.fetchval("SELECT 1")
    return json_response({"status": "ok"})


async def submit(request: web.Request) -> web.Response:
    """Create an execution of a ZApp (a description, or a shop entry with parameters).

    An ``Idempotency-Key`` header makes a retried request return the first one's
    execution (200) instead of creating another (201); the same key with another body
    is a 409.
    """
    deps = request.app[DEPS]
    body = await json_object(request)
    execution, created = await actions.submit(
        deps.pool,
        request.app[SHOP],
        deps.deployment,
        body,
        auth.caller(request),
        request_id=request.headers.get("Idempotency-Key"),
        parsed=True,
    )
    return json_response(execution, status=201 if created else 200)


async def list_executions(request: web.Request) -> web.Response:
    """The caller's executions, newest first; ``?all=1`` everyone's (operate-all),
    ``?user=NAME`` one user's, ``?state=`` filters, ``?limit=`` caps (default 100)."""
    limit = _query_int(request, "limit", 1, MAX_LIST)
    rows = await store.list_executions(
        request.app[DEPS].pool,
        state=_state_filter(request),
        limit=100 if limit is None else limit,
        user=_user_filter(request),
    )
    return json_response(rows)


def _user_filter(request: web.Request) -> str | None:
    """Whose executions a list shows: the caller's own by default; ``?all=1`` or another
    ``?user=`` needs operate-all."""
    caller = auth.caller(request)
    everyone = request.query.get("all", "").lower() in ("1", "true", "yes")
    who = request.query.get("user")
    if who is not None:
        users.check_name(who, "user")
    if (everyone or (who is not None and who != caller.name)) and not caller.sees_all:
        raise auth.Forbidden(
            "only roles that operate everyone's executions may list others'",
            [FieldError("all" if everyone else "user", f"role {caller.role!r} sees its own only")],
        )
    if who is not None:
        return who
    return None if everyone else caller.name


async def get_execution(request: web.Request) -> web.Response:
    """One execution with its service instances (the caller's, or anyone's for roles
    that operate all: another's is a 404, as if it did not exist)."""
    owner = auth.caller(request).owner_filter()
    deps = request.app[DEPS]
    execution = await store.get_execution(deps.pool, _execution_id(request), owner)
    return json_response(endpoints_of.shown(execution, deps.public_url))


async def terminate(request: web.Request) -> web.Response:
    """Ask for an execution to be terminated (202: it ends terminated once cleaned up)."""
    execution_id = _execution_id(request)
    owner = auth.caller(request).owner_filter()
    state = await store.request_termination(request.app[DEPS].pool, execution_id, owner)
    return json_response({"id": execution_id, "state": state, "terminating": True}, status=202)


async def endpoints(request: web.Request) -> web.Response:
    """The published endpoints of an execution's instances, with their URLs."""
    owner = auth.caller(request).owner_filter()
    deps = request.app[DEPS]
    execution = await store.get_execution(deps.pool, _execution_id(request), owner)
    endpoints_of.shown(execution, deps.public_url)
    return json_response(
        {s["name"]: s["endpoints"] for s in execution["services"] if s["endpoints"]}
    )


async def logs(request: web.Request) -> web.StreamResponse:
    """An instance's log: live from its executor, or the copy kept after removal.

    ``?tail=N`` gives its last N lines (0: none). ``?follow=1`` streams it (chunked
    text/plain) while the container runs: the api asks the executor again and again with
    the cursor of its previous reply (a poll every quarter second while nothing new
    came), and ends the response once the container stopped, was removed, or its
    executor does not answer. At most ``MAX_LOG_FOLLOWS`` follows at once (then 429).
    """
    deps = request.app[DEPS]
    execution_id = _execution_id(request)
    name = _instance_name(request, execution_id)
    tail = _query_int(request, "tail", 0, MAX_TAIL)
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    owner = auth.caller(request).owner_filter()
    row = await store.find_instance(deps.pool, execution_id, name, owner)
    if row["node"] and row["container_name"] and not row["removed"]:
        with contextlib.ExitStack() as held:
            if follow:
                held.enter_context(request.app[FOLLOWS].hold())
            live = await _live_log(request, row, tail, follow)
            if live is not None:
                return live
    if row["saved_log"] is not None:
        lines = str(row["saved_log"]).splitlines(keepends=True)
        text = "".join(lines if tail is None else lines[len(lines) - min(tail, len(lines)) :])
        return web.Response(text=text, content_type="text/plain")
    raise NotFound(f"no log for instance {name!r} yet")


async def _live_log(
    request: web.Request, row: asyncpg.Record, tail: int | None, follow: bool
) -> web.StreamResponse | None:
    """The log from the instance's executor; None when it has none to give."""
    deps = request.app[DEPS]
    stream: web.StreamResponse | None = None
    cursor = ""
    try:
        while True:
            ask = m.LogsRequest(
                container_name=row["container_name"], tail=tail, follow=follow, cursor=cursor
            )
            body = await deps.bus.request(row["node"], ask, timeout=deps.rpc_timeout)
            reply = m.decoder(m.LogsReply).decode(body)
            if not reply.found:
                break
            if not follow:
                return web.Response(text=reply.log, content_type="text/plain")
            if stream is None:
                stream = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
                stream.enable_chunked_encoding()
                await stream.prepare(request)
            if reply.log:
                await limits.write(request, stream, reply.log.encode())
            if not reply.running:
                break
            if request.transport is None or request.transport.is_closing():
                return stream  # the follower went away (a quiet log writes nothing to tell)
            if reply.cursor == cursor:
                await asyncio.sleep(0.25)
            cursor = reply.cursor
    except ConnectionResetError:
        if stream is None:
            raise
        return stream  # the follower went away, or stopped reading and was dropped
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.warning("logs.unreachable", node=row["node"], error=repr(exc))
    if stream is not None:
        await stream.write_eof()
    return stream


async def nodes(request: web.Request) -> web.Response:
    """The cluster: every node that ever registered, with capacity and reservations."""
    auth.caller(request).require(auth.SEE_STATUS)
    return json_response(await store.list_nodes(request.app[DEPS].pool))


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.app[DEPS].pool


def make_app(
    deps: Deps,
    shop: Shop,
    *,
    event_streams: int = limits.MAX_EVENT_STREAMS,
    log_follows: int = limits.MAX_LOG_FOLLOWS,
    probe: Probe | None = None,
    auth_backend: str = "database",
    policy: hygiene.Policy = hygiene.LOCAL,
) -> web.Application:
    """The aiohttp application with every route; at most ``event_streams`` event streams
    and ``log_follows`` log follows open at once (429 beyond). ``probe``: the process's
    ``/metrics``, ``/healthz`` and ``/readyz``, served at the root beside ``/api/v1``.
    ``policy``: the names and origins requests must come with (services/api/hygiene.py)."""
    app = web.Application(
        middlewares=[
            metrics_middleware,
            hygiene.middleware(policy),
            errors_middleware,
            auth.middleware(_pool),
        ],
        client_max_size=MAX_BODY,
    )
    if probe is not None:
        probe.add_routes(app)
    app[DEPS] = deps
    app[FOLLOWS] = limits.Slots(log_follows, "log follows")
    app[events.STREAMS] = limits.Slots(event_streams, "event streams")
    add_routes(app, shop)
    accounts.add_routes(app, deps.pool, auth_backend)
    pages.add_routes(app)
    app.router.add_static("/ui", WEB)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/nodes", nodes)
    node_routes.add_routes(app)
    app.router.add_get("/api/v1/events", events.stream)
    app.router.add_post("/api/v1/executions", submit)
    app.router.add_get("/api/v1/executions", list_executions)
    app.router.add_get("/api/v1/executions/{id}", get_execution)
    app.router.add_post("/api/v1/executions/{id}/terminate", terminate)
    app.router.add_get("/api/v1/executions/{id}/endpoints", endpoints)
    app.router.add_get("/api/v1/executions/{id}/services/{instance}/logs", logs)
    openapi.install(app)  # serves the document; refuses to start with an undeclared route
    return app

"""The HTTP gateway: JSON in and out under ``/api/v1``.

A user error becomes a 4xx with ``{"error": ..., "errors": [{"path", "message"}]}``;
nothing is stored unless the whole request is valid. docs/api.md lists the routes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import structlog
from aiohttp import web

from common import messages as m
from common.bus import Bus
from common.errors import FieldError, InvalidRequest, NotFound, UserError
from services.api import actions, events, store
from services.api.shop import SHOP, Shop, add_routes, json_object

log = structlog.get_logger("api")

MAX_BODY = 4 * 1024 * 1024
WEB = Path(__file__).parent / "web"


@dataclass(frozen=True)
class Deps:
    """What the routes need."""

    pool: asyncpg.Pool
    bus: Bus
    deployment: str
    rpc_timeout: float


DEPS = web.AppKey("deps", Deps)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Map user errors to their status with a JSON body; a bug is a logged 500."""
    try:
        return await handler(request)
    except UserError as exc:
        return web.json_response(exc.to_dict(), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason, "errors": []}, status=exc.status)
    except Exception:
        log.exception("http.failed", path=request.path)
        return web.json_response({"error": "internal error", "errors": []}, status=500)


def _execution_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"execution {raw!r} does not exist")
    return int(raw)


async def health(request: web.Request) -> web.Response:
    """Liveness and the database's reachability."""
    await request.app[DEPS].pool.fetchval("SELECT 1")
    return web.json_response({"status": "ok"})


async def submit(request: web.Request) -> web.Response:
    """Create an execution of a ZApp (a description, or a shop entry with parameters).

    An ``Idempotency-Key`` header makes a retried request return the first one's
    execution (200) instead of creating another (201).
    """
    deps = request.app[DEPS]
    body = await json_object(request)
    execution, created = await actions.submit(
        deps.pool,
        request.app[SHOP],
        deps.deployment,
        body,
        request_id=request.headers.get("Idempotency-Key"),
    )
    return web.json_response(execution, status=201 if created else 200)


async def list_executions(request: web.Request) -> web.Response:
    """Executions, newest first; ``?state=`` filters, ``?limit=`` caps (default 100)."""
    limit_raw = request.query.get("limit", "100")
    if not limit_raw.isdigit() or not 1 <= int(limit_raw) <= 10000:
        raise InvalidRequest(
            "invalid query", [FieldError("limit", "must be an integer from 1 to 10000")]
        )
    rows = await store.list_executions(
        request.app[DEPS].pool, state=request.query.get("state"), limit=int(limit_raw)
    )
    return web.json_response(rows)


async def get_execution(request: web.Request) -> web.Response:
    """One execution with its service instances."""
    return web.json_response(
        await store.get_execution(request.app[DEPS].pool, _execution_id(request))
    )


async def terminate(request: web.Request) -> web.Response:
    """Ask for an execution to be terminated (202: it ends terminated once cleaned up)."""
    execution_id = _execution_id(request)
    state = await store.request_termination(request.app[DEPS].pool, execution_id)
    return web.json_response({"id": execution_id, "state": state, "terminating": True}, status=202)


async def endpoints(request: web.Request) -> web.Response:
    """The published endpoints of an execution's instances, with their URLs."""
    execution = await store.get_execution(request.app[DEPS].pool, _execution_id(request))
    return web.json_response(
        {s["name"]: s["endpoints"] for s in execution["services"] if s["endpoints"]}
    )


async def logs(request: web.Request) -> web.StreamResponse:
    """An instance's log: live from its executor, or the copy kept after removal.

    ``?follow=1`` streams it (chunked text/plain) while the container runs: the api asks
    the executor again and again with the cursor of its previous reply (a poll every
    quarter second while nothing new came), and ends the response once the container
    stopped, was removed, or its executor does not answer.
    """
    deps = request.app[DEPS]
    execution_id = _execution_id(request)
    row = await store.find_instance(deps.pool, execution_id, request.match_info["instance"])
    tail_raw = request.query.get("tail")
    tail = int(tail_raw) if tail_raw and tail_raw.isdigit() else None
    follow = request.query.get("follow", "").lower() in ("1", "true", "yes")
    if row["node"] and row["container_name"] and not row["removed"]:
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
                    stream = web.StreamResponse(
                        headers={"Content-Type": "text/plain; charset=utf-8"}
                    )
                    stream.enable_chunked_encoding()
                    await stream.prepare(request)
                if reply.log:
                    await stream.write(reply.log.encode())
                if not reply.running:
                    break
                if reply.cursor == cursor:
                    await asyncio.sleep(0.25)
                cursor = reply.cursor
        except ConnectionResetError:
            if stream is None:
                raise
            return stream  # the follower went away
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("logs.unreachable", node=row["node"], error=repr(exc))
        if stream is not None:
            await stream.write_eof()
            return stream
    if row["saved_log"] is not None:
        text: str = row["saved_log"]
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:]) + ("\n" if tail else "")
        return web.Response(text=text, content_type="text/plain")
    raise NotFound(f"no log for instance {request.match_info['instance']!r} yet")


async def nodes(request: web.Request) -> web.Response:
    """The cluster: every node that ever registered, with capacity and reservations."""
    return web.json_response(await store.list_nodes(request.app[DEPS].pool))


async def index(_: web.Request) -> web.FileResponse:
    """The web interface: the ZApp shop, executions and nodes."""
    return web.FileResponse(WEB / "index.html")


def make_app(deps: Deps, shop: Shop) -> web.Application:
    """The aiohttp application with every route."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY)
    app[DEPS] = deps
    add_routes(app, shop)
    app.router.add_get("/", index)
    app.router.add_static("/ui", WEB)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/events", events.stream)
    app.router.add_post("/api/v1/executions", submit)
    app.router.add_get("/api/v1/executions", list_executions)
    app.router.add_get("/api/v1/executions/{id}", get_execution)
    app.router.add_post("/api/v1/executions/{id}/terminate", terminate)
    app.router.add_get("/api/v1/executions/{id}/endpoints", endpoints)
    app.router.add_get("/api/v1/executions/{id}/services/{instance}/logs", logs)
    return app

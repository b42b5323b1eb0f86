"""The HTTP gateway: JSON in and out under ``/api/v1``.

A user error becomes a 4xx with ``{"error": ..., "errors": [{"path", "message"}]}``;
nothing is stored unless the whole request is valid. docs/api.md lists the routes.
"""

from __future__ import annotations

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
from common.zapp import LoadedDescription, load_description
from services.api import store
from services.api.shop import SHOP, Shop, add_routes, json_object

log = structlog.get_logger("api")

MAX_BODY = 4 * 1024 * 1024
WEB = Path(__file__).parent / "web"
NAME_MAX = 128


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
    """Validate a ZApp (a description, or a shop entry with parameters) and create an
    execution of it."""
    deps = request.app[DEPS]
    body = await json_object(request)
    errors: list[FieldError] = []
    unknown = sorted(set(body) - {"name", "application", "zapp", "params", "resources", "priority"})
    errors += [FieldError(k, "unknown field") for k in unknown]
    name = body.get("name")
    if not isinstance(name, str) or not (1 <= len(name) <= NAME_MAX) or not name.isprintable():
        errors.append(
            FieldError("name", f"must be a printable string of 1 to {NAME_MAX} characters")
        )
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -100 <= priority <= 100:
        errors.append(FieldError("priority", "must be an integer from -100 to 100"))
    loaded = None
    try:
        loaded = _description(request, body)
    except InvalidRequest as exc:
        errors += exc.errors
    if errors or loaded is None:
        raise InvalidRequest("invalid execution request", errors)
    execution_id = await store.create_execution(
        deps.pool,
        name=str(name),
        user_name="admin",
        description=loaded.description,
        deployment=deps.deployment,
        priority=int(priority),
    )
    out = await store.get_execution(deps.pool, execution_id)
    out["warnings"] = list(loaded.warnings)
    return web.json_response(out, status=201)


def _description(request: web.Request, body: dict[str, Any]) -> LoadedDescription:
    """The description to run: ``application`` as given, or ``zapp`` from the shop."""
    if ("application" in body) == ("zapp" in body):
        raise InvalidRequest(
            "invalid execution request",
            [FieldError("application", "give exactly one of application or zapp")],
        )
    if "application" in body:
        if "params" in body or "resources" in body:
            raise InvalidRequest(
                "invalid execution request",
                [FieldError("params", "params and resources apply to a shop zapp only")],
            )
        try:
            return load_description(body["application"])
        except InvalidRequest as exc:
            raise InvalidRequest(
                exc.message,
                [FieldError(_join("application", e.path), e.message) for e in exc.errors],
            ) from exc
    zapp_id = body["zapp"]
    if not isinstance(zapp_id, str):
        raise InvalidRequest("invalid execution request", [FieldError("zapp", "must be a string")])
    try:
        return request.app[SHOP].render(zapp_id, body.get("params"), body.get("resources"))
    except NotFound as exc:
        raise InvalidRequest(exc.message, [FieldError("zapp", exc.message)]) from exc


def _join(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


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


async def logs(request: web.Request) -> web.Response:
    """An instance's log: live from its executor, or the copy kept after removal."""
    deps = request.app[DEPS]
    execution_id = _execution_id(request)
    row = await store.find_instance(deps.pool, execution_id, request.match_info["instance"])
    tail_raw = request.query.get("tail")
    tail = int(tail_raw) if tail_raw and tail_raw.isdigit() else None
    if row["node"] and row["container_name"] and not row["removed"]:
        try:
            body = await deps.bus.request(
                row["node"],
                m.LogsRequest(container_name=row["container_name"], tail=tail),
                timeout=deps.rpc_timeout,
            )
            reply = m.decoder(m.LogsReply).decode(body)
            if reply.found:
                return web.Response(text=reply.log, content_type="text/plain")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("logs.unreachable", node=row["node"], error=repr(exc))
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
    app.router.add_post("/api/v1/executions", submit)
    app.router.add_get("/api/v1/executions", list_executions)
    app.router.add_get("/api/v1/executions/{id}", get_execution)
    app.router.add_post("/api/v1/executions/{id}/terminate", terminate)
    app.router.add_get("/api/v1/executions/{id}/endpoints", endpoints)
    app.router.add_get("/api/v1/executions/{id}/services/{instance}/logs", logs)
    return app

"""Admins drain nodes and put them back to work: ``POST /api/v1/nodes/{name}/drain``
(body ``{"deadline": S}``, optional) and ``POST /api/v1/nodes/{name}/undrain``.

The api only asks: the request goes through the outbox and the bus to the scheduler,
the only writer of node state, which records it and moves the node's work
(services/scheduler/drain.py). Both need the ``change-config`` capability.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from common import messages as m
from common.bus import Outgoing
from common.errors import FieldError, InvalidRequest, NotFound
from common.outbox import enqueue
from services.api import auth, limits
from services.api.responses import json_response
from services.api.shop import json_object

MAX_DEADLINE = 365 * 24 * 3600.0  # seconds a drain's deadline may be at most


def _deadline(body: dict[str, Any]) -> float | None:
    unknown = sorted(set(body) - {"deadline"})
    if unknown:
        raise InvalidRequest(
            f"unknown field {unknown[0]!r}", [FieldError(k, "unknown field") for k in unknown]
        )
    value = body.get("deadline")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest("deadline must be a number", [FieldError("deadline", "not a number")])
    if not 0 <= value <= MAX_DEADLINE:
        raise InvalidRequest(
            f"deadline must be between 0 and {MAX_DEADLINE:.0f} seconds",
            [FieldError("deadline", f"out of range 0..{MAX_DEADLINE:.0f}")],
        )
    return float(value)


async def _ask(request: web.Request, drain: bool, deadline: float | None) -> web.Response:
    from services.api.http import DEPS  # the application's key, where make_app puts it

    name = request.match_info["name"]
    if not limits.storable(name):  # no node has such a name, and PostgreSQL refuses it
        raise NotFound(f"node {name!r} does not exist")
    async with request.app[DEPS].pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM nodes WHERE name = $1", name) is None:
            raise NotFound(f"node {name} does not exist")
        msg = m.NodeDrainRequested(node=name, drain=drain, deadline=deadline)
        await enqueue(conn, [Outgoing(msg)])
    return json_response({"name": name, "draining": drain, "deadline": deadline}, status=202)


async def drain(request: web.Request) -> web.Response:
    """Drain a node (202: the scheduler drains it)."""
    auth.caller(request).require("change-config")  # 403 otherwise
    body = await json_object(request) if request.can_read_body else {}
    return await _ask(request, True, _deadline(body))


async def undrain(request: web.Request) -> web.Response:
    """Let a drained node take new instances again (202)."""
    auth.caller(request).require("change-config")
    return await _ask(request, False, None)


def add_routes(app: web.Application) -> None:
    """The node routes of admins."""
    app.router.add_post("/api/v1/nodes/{name}/drain", drain)
    app.router.add_post("/api/v1/nodes/{name}/undrain", undrain)

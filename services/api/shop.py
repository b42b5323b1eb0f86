"""The ZApp shop over HTTP: the library's entries, validation and rendering.

The shop is read from the library folder (``ZOE_ZAPPS_ROOT``) and read again when a file
in it changes, so adding a ZApp folder needs no restart. A broken folder is left out
(and logged with its errors); the rest of the shop stays available.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import msgspec
import structlog
from aiohttp import web

from common.errors import FieldError, InvalidRequest, InvalidZApp, NotFound
from common.zapp import (
    LoadedDescription,
    ShopEntry,
    load_description,
    render,
    scan_shop,
    visible_to,
)
from services.api import auth, limits
from services.api.auth import Caller
from services.api.responses import json_response

log = structlog.get_logger("api.shop")


class Shop:
    """The entries of one library folder, cached until a file in it changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stamp: tuple[int, float] | None = None
        self._entries: dict[str, ShopEntry] = {}

    def _fingerprint(self) -> tuple[int, float]:
        count, newest = 0, 0.0
        if not self.root.is_dir():
            return count, newest
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for dirpath, _, files in os.walk(folder):
                if "/images" in dirpath[len(str(self.root)) :]:
                    continue  # image contexts do not change the shop
                for name in files:
                    count += 1
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
        return count, newest

    def entries(self, caller: Caller) -> list[ShopEntry]:
        """The entries ``caller`` may see, in library order: those its manifest opens to
        the caller's role, or all of them with the ``whole-shop`` capability."""
        stamp = self._fingerprint()
        if stamp != self._stamp:
            entries, errors = scan_shop(self.root)
            for e in errors:
                log.warning("shop.invalid", path=e.path, problem=e.message)
            self._entries = {e.id: e for e in entries}
            self._stamp = stamp
        whole = caller.can(auth.WHOLE_SHOP)
        return [e for e in self._entries.values() if whole or visible_to(e, caller.role)]

    def get(self, zapp_id: str, caller: Caller) -> ShopEntry:
        """One entry; NotFound if it does not exist or ``caller`` may not see it."""
        for e in self.entries(caller):
            if e.id == zapp_id:
                return e
        raise NotFound(f"no ZApp {zapp_id!r} in the shop")

    def render(
        self, zapp_id: str, params: Any, resources: Any, caller: Caller
    ) -> LoadedDescription:
        """The entry's description with parameters and resource overrides applied (the
        latter only with the ``customise`` capability)."""
        entry = self.get(zapp_id, caller)
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest("invalid parameters", [FieldError("params", "must be an object")])
        return render(
            entry,
            params or {},
            resources=resources,  # the caller may see it: `get` checked
            can_customize_resources=caller.can(auth.CUSTOMISE),
        )


SHOP = web.AppKey("shop", Shop)


def _summary(entry: ShopEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "category": entry.category,
        "name": entry.name,
        "will_end": entry.description.will_end,
        "parameters": msgspec.to_builtins(entry.parameters),
        "logo_url": f"/api/v1/zapps/{entry.id}/logo" if entry.logo else None,
    }


async def list_zapps(request: web.Request) -> web.Response:
    """Every ZApp of the shop the caller may see."""
    return json_response([_summary(e) for e in request.app[SHOP].entries(auth.caller(request))])


async def get_zapp(request: web.Request) -> web.Response:
    """One ZApp: its README (Markdown), logo (base64 PNG), parameters and description."""
    entry = request.app[SHOP].get(request.match_info["id"], auth.caller(request))
    out = _summary(entry)
    out.update(
        readme=entry.readable_descr,
        logo=base64.b64encode(entry.logo).decode() if entry.logo else None,
        description=msgspec.to_builtins(entry.description),
        warnings=list(entry.warnings),
    )
    return json_response(out)


async def get_logo(request: web.Request) -> web.Response:
    """The ZApp's logo as an image."""
    entry = request.app[SHOP].get(request.match_info["id"], auth.caller(request))
    if not entry.logo:
        raise NotFound(f"ZApp {entry.id!r} has no logo")
    return web.Response(body=entry.logo, content_type="image/png")


async def render_zapp(request: web.Request) -> web.Response:
    """The final description for ``{"params": {...}, "resources": {...}}``."""
    body = await json_object(request)
    loaded = request.app[SHOP].render(
        request.match_info["id"], body.get("params"), body.get("resources"), auth.caller(request)
    )
    return json_response(
        {"description": msgspec.to_builtins(loaded.description), "warnings": loaded.warnings}
    )


async def validate(request: web.Request) -> web.Response:
    """Validate a ZApp description: 200 with its warnings, or 422 with every error."""
    loaded = load_description(await json_any(request))
    return json_response(
        {
            "valid": True,
            "warnings": loaded.warnings,
            "instances": sum(s.total_count for s in loaded.description.services),
        }
    )


async def json_any(request: web.Request) -> Any:
    """The request body as JSON within the bounds of `limits`, or a 4xx naming the problem
    (413 beyond ``MAX_BODY``)."""
    return limits.loads(limits.decode_text(await request.read(), request.charset))


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    body = await json_any(request)
    if not isinstance(body, dict):
        raise InvalidRequest(
            "request body must be a JSON object", [FieldError("", "must be an object")]
        )
    return body


def add_routes(app: web.Application, shop: Shop) -> None:
    """Mount the shop's routes on ``app``."""
    app[SHOP] = shop
    app.router.add_get("/api/v1/zapps", list_zapps)
    app.router.add_post("/api/v1/zapps/validate", validate)
    app.router.add_get("/api/v1/zapps/{id:.+}/logo", get_logo)
    app.router.add_post("/api/v1/zapps/{id:.+}/render", render_zapp)
    app.router.add_get("/api/v1/zapps/{id:.+}", get_zapp)


__all__ = ["SHOP", "InvalidZApp", "Shop", "add_routes"]

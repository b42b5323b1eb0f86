"""The OpenAPI 3.1 document of the HTTP API, made from the route table
(services/api/routetable.py) and the request and response types of
services/api/schemas.py.

The api serves it at ``GET /api/v1/openapi.json``; ``python -m services.api.openapi >
docs/openapi.json`` regenerates the committed copy (a unit test checks that it matches).
The app refuses to start with a route under ``/api/v1`` that the table does not declare
(``install``), so no route exists undocumented.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

from aiohttp import web

from services.api import schemas as s
from services.api.responses import json_response
from services.api.routetable import BY_KEY, PREFIX, PUBLIC, ROUTES, SIGNED_IN, UNSAFE, Route

_REF = "#/components/schemas/{name}"
_REASONS = {
    200: "OK",
    201: "created",
    202: "accepted",
    204: "no content",
    400: "a malformed request: `errors` names every offending field",
    401: "no valid credentials (`WWW-Authenticate: Bearer`)",
    403: "the caller's role may not, over quota, a cross-site request (`Origin`), or a"
    " session cookie without its `X-CSRF-Token`",
    404: "no such object (or one the caller may not see)",
    409: "the object's state forbids it",
    413: "the body is larger than 4 MiB",
    415: "the body is not JSON (`Content-Type` must be `application/json`)",
    421: "the `Host` header is not one of the api's names (`ZOE_HTTP_ALLOWED_HOSTS`)",
    422: "an invalid ZApp description: `errors` lists every violation",
    429: "too many of these open at once: retry later",
    503: "the database or the broker is away: retry (`Retry-After`)",
}


def error_statuses(route: Route) -> list[int]:
    """Every error status ``route`` may answer: its own, and those of every route of its
    kind (sign-in, capability, body, Host, availability)."""
    out = set(route.errors) | {421}
    if route.path != "/openapi.json":
        out.add(503)
    if route.access != PUBLIC:
        out.add(401)
    if route.access not in (PUBLIC, SIGNED_IN) or route.method in UNSAFE:
        out.add(403)
    if route.request is not None:
        out |= {400, 413, 415}
    if route.params and any(p.where != "path" for p in route.params):
        out.add(400)
    return sorted(out)


def _content(body: Any, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any] | None:
    if body is None:
        return None
    if isinstance(body, str):
        return {body: {"schema": {"type": "string"}}}
    return {"application/json": {"schema": schemas[body]}}


def _operation(route: Route, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, body in route.ok.items():
        responses[str(status)] = {"description": _REASONS.get(status, "OK")}
        content = _content(body, schemas)
        if content is not None:
            responses[str(status)]["content"] = content
    for status in error_statuses(route):
        schema = schemas[s.Error]
        if status == 403 and route.access == "submit":  # over quota: which, and by how much
            schema = {"anyOf": [schemas[s.QuotaError], schema]}
        responses[str(status)] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": schema}},
        }
    op: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": list(route.tags),
        "x-zoe-access": route.access,
        "responses": responses,
    }
    if route.access == PUBLIC:
        op["security"] = []
    if route.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": dict(p.schema),
            }
            for p in route.params
        ]
    if route.request is not None:
        op["requestBody"] = {
            "required": route.body_required,
            "content": _content(route.request, schemas),
        }
    return op


def _operation_id(route: Route) -> str:
    words = [w.strip("{}") for w in route.path.replace(".", "/").split("/") if w]
    return route.method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document as plain data."""
    types: list[Any] = []
    for route in ROUTES:
        for body in (*route.ok.values(), route.request):
            if body is not None and not isinstance(body, str) and body not in types:
                types.append(body)
    types += [s.Error, s.QuotaError]
    refs, components = s.json_schema_of(types, _REF)
    schemas = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zoe",
            "version": "1",
            "description": (
                "The HTTP API of Zoe (docs/api.md). Bodies are JSON; every error of a JSON"
                " route is `{error, errors: [{path, message}]}`. Sign in with"
                " `POST /api/v1/login`, then send `Authorization: Bearer <token>`; the web"
                " page uses the session cookie instead, with `X-CSRF-Token` on every"
                " state-changing request. `x-zoe-access` says who may call an operation:"
                " `public`, `signed-in`, or the capability the caller's role needs."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "zoe_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


def render() -> str:
    """The text of docs/openapi.json."""
    return json.dumps(document(), indent=2, sort_keys=False) + "\n"


def undocumented(app: web.Application) -> list[str]:
    """The routes of ``app`` under ``/api/v1`` that ROUTES does not declare."""
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith(PREFIX)
    }
    return sorted(f"{m} {p}" for m, p in served if m != "HEAD" and (m, p) not in BY_KEY)


async def serve(_: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: the document."""
    return json_response(document())


async def _check(app: web.Application) -> None:
    missing = undocumented(app)
    if missing:
        raise RuntimeError(f"routes not declared in services/api/routetable.py: {missing}")


def install(app: web.Application) -> None:
    """Serve the document on ``app``, and refuse to start it with a route under
    ``/api/v1`` that the document does not declare."""
    app.router.add_get(PREFIX + "/openapi.json", serve)
    app.on_startup.append(_check)


if __name__ == "__main__":
    sys.stdout.write(render())

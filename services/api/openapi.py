"""The HTTP API's routes, one declaration each, and the OpenAPI 3.1 document made from
them and from the request and response types of services/api/schemas.py.

The api serves the document at ``GET /api/v1/openapi.json``; ``python -m
services.api.openapi > docs/openapi.json`` regenerates the committed copy (a unit test
checks that it matches). The app refuses to start with a route under ``/api/v1`` that is
not declared here (``install``), so no route exists undocumented; the route access test
walks this table as every role.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common.states import ExecutionState
from services.api import schemas as s
from services.api.limits import MAX_ID

PREFIX = "/api/v1"
# Who may call a route: anyone, any signed-in user, or a signed-in user whose role has
# the capability named instead (see common/migrations/008_users.sql).
PUBLIC = "public"
SIGNED_IN = "signed-in"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TEXT, EVENTS, PNG = "text/plain", "text/event-stream", "image/png"


@dataclass(frozen=True)
class Param:
    """A query, header or path parameter."""

    name: str
    schema: Mapping[str, Any]
    description: str
    where: str = "query"


@dataclass(frozen=True)
class Route:
    """One route: what it takes, what it answers per status (a msgspec type for JSON,
    or a media type), its error statuses, and who may call it."""

    method: str
    path: str  # under PREFIX, with {name} for a path segment
    summary: str
    ok: Mapping[int, Any]
    errors: tuple[int, ...] = ()
    access: str = SIGNED_IN
    request: Any = None
    params: tuple[Param, ...] = ()
    description: str = ""
    tags: tuple[str, ...] = field(default=())

    @property
    def full_path(self) -> str:
        return PREFIX + self.path

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.full_path


_ID = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
EXECUTION = Param("id", _ID, "an execution id", "path")
INSTANCE = Param("instance", {"type": "string"}, "an instance name, as `spark-worker0`", "path")
ZAPP = Param("id", {"type": "string"}, "a ZApp id of the shop", "path")
USER = Param("name", {"type": "string"}, "a user name", "path")
TOKEN = Param("id", _ID, "a token id", "path")
STATES = [st.value for st in ExecutionState]

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", "the API and its database answer", {200: s.Health}, access=PUBLIC),
    Route(
        "GET",
        "/openapi.json",
        "this document",
        {200: dict[str, Any]},
        access=PUBLIC,
        tags=("meta",),
    ),
    # ---- sign-in ----
    Route(
        "POST",
        "/login",
        "sign in: a token, and the same sign-in as session cookies",
        {200: s.LoginReply},
        (400, 401),
        access=PUBLIC,
        request=s.LoginRequest,
        tags=("users",),
    ),
    Route(
        "POST", "/logout", "revoke the login token, clear the cookies", {204: None}, tags=("users",)
    ),
    Route(
        "GET", "/me", "the caller: role, capabilities, quota and use", {200: s.Me}, tags=("users",)
    ),
    Route(
        "GET",
        "/tokens",
        "the caller's API tokens (`?user=` another's, change-config only)",
        {200: list[s.Token]},
        (400,),
        params=(Param("user", {"type": "string"}, "whose tokens (change-config only)"),),
        tags=("users",),
    ),
    Route(
        "POST",
        "/tokens",
        "make an API token (its secret is answered this once)",
        {201: s.NewToken},
        (404,),
        request=s.TokenRequest,
        tags=("users",),
    ),
    Route(
        "DELETE",
        "/tokens/{id}",
        "revoke a token",
        {204: None},
        (404,),
        params=(TOKEN,),
        tags=("users",),
    ),
    Route(
        "GET", "/users", "every user", {200: list[s.User]}, access="change-config", tags=("users",)
    ),
    Route(
        "POST",
        "/users",
        "add a user (a generated password is answered once when none is given)",
        {201: s.NewUser},
        (409,),
        access="change-config",
        request=s.UserRequest,
        tags=("users",),
    ),
    Route(
        "GET",
        "/users/{name}",
        "one user",
        {200: s.User},
        (404,),
        access="change-config",
        params=(USER,),
        tags=("users",),
    ),
    Route(
        "PATCH",
        "/users/{name}",
        "change a user's role, password, weight, or disable them",
        {200: s.User},
        (404,),
        access="change-config",
        request=s.UserPatch,
        params=(USER,),
        tags=("users",),
    ),
    Route(
        "PUT",
        "/users/{name}/quota",
        "set a user's quota (each null: the role's default)",
        {200: s.User},
        (404,),
        access="change-config",
        request=s.QuotaRequest,
        params=(USER,),
        tags=("users",),
    ),
    # ---- the cluster and executions ----
    Route(
        "GET",
        "/nodes",
        "every node: capacity, reservations, liveness",
        {200: list[s.Node]},
        access="see-status",
        tags=("executions",),
    ),
    Route(
        "GET",
        "/events",
        "server-sent events: `event: state` with `{execution_id, state, at}` per change",
        {200: EVENTS},
        (400, 429),
        params=(Param("execution", _ID, "only this execution's events"),),
        tags=("executions",),
    ),
    Route(
        "POST",
        "/executions",
        "submit a ZApp: validate, store, queue (200: the execution an Idempotency-Key made before)",
        {201: s.Submitted, 200: s.Submitted},
        (409,),
        access="submit",
        request=s.SubmitRequest,
        params=(
            Param(
                "Idempotency-Key",
                {"type": "string", "minLength": 1, "maxLength": 200},
                "a retried request with the same key and body returns the first one's"
                " execution; with another body it is a 409",
                "header",
            ),
        ),
        tags=("executions",),
    ),
    Route(
        "GET",
        "/executions",
        "the caller's executions, newest first (`?all=1`: everyone's, operate-all only)",
        {200: list[s.ExecutionSummary]},
        (400,),
        params=(
            Param("state", {"type": "string", "enum": STATES}, "only executions in this state"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}, "at most"),
            Param("all", {"type": "string"}, "`1`: everyone's (operate-all only)"),
            Param("user", {"type": "string"}, "only this user's"),
        ),
        tags=("executions",),
    ),
    Route(
        "GET",
        "/executions/{id}",
        "one execution and its service instances",
        {200: s.Execution},
        (404,),
        params=(EXECUTION,),
        tags=("executions",),
    ),
    Route(
        "POST",
        "/executions/{id}/terminate",
        "terminate an execution (it ends `terminated` once cleaned up)",
        {202: s.Termination},
        (404, 409),
        params=(EXECUTION,),
        tags=("executions",),
    ),
    Route(
        "GET",
        "/executions/{id}/endpoints",
        "the URLs of the published ports, per instance",
        {200: s.Endpoints},
        (404,),
        params=(EXECUTION,),
        tags=("executions",),
    ),
    Route(
        "GET",
        "/executions/{id}/services/{instance}/logs",
        "an instance's log, live or the copy kept after its container was removed",
        {200: TEXT},
        (400, 404, 429),
        params=(
            EXECUTION,
            INSTANCE,
            Param("tail", {"type": "integer", "minimum": 0, "maximum": 1_000_000}, "last lines"),
            Param("follow", {"type": "string"}, "`1`, `true` or `yes`: stream while it runs"),
        ),
        tags=("executions",),
    ),
    # ---- the shop ----
    Route("GET", "/zapps", "the shop's ZApps", {200: list[s.ZAppSummary]}, tags=("shop",)),
    Route(
        "POST",
        "/zapps/validate",
        "validate a ZApp description (422 lists every error)",
        {200: s.Validated},
        (422,),
        request=dict[str, Any],
        tags=("shop",),
    ),
    Route(
        "GET",
        "/zapps/{id}",
        "one ZApp: README, logo, parameters, description",
        {200: s.ZAppDetail},
        (404,),
        params=(ZAPP,),
        tags=("shop",),
    ),
    Route(
        "GET",
        "/zapps/{id}/logo",
        "the ZApp's logo",
        {200: PNG},
        (404,),
        params=(ZAPP,),
        tags=("shop",),
    ),
    Route(
        "POST",
        "/zapps/{id}/render",
        "the description for these parameters and resource overrides",
        {200: s.Rendered},
        (404, 422),
        request=s.RenderRequest,
        params=(ZAPP,),
        tags=("shop",),
    ),
)
BY_KEY: dict[tuple[str, str], Route] = {r.key: r for r in ROUTES}
# Declared routes the api does not serve yet (the sign-in's): the unit test holds the
# app's routes to the table minus these.
PENDING = frozenset(
    ("POST", PREFIX + p) for p in ("/login", "/logout", "/tokens", "/users")
) | frozenset(
    {
        ("GET", PREFIX + "/me"),
        ("GET", PREFIX + "/tokens"),
        ("DELETE", PREFIX + "/tokens/{id}"),
        ("GET", PREFIX + "/users"),
        ("GET", PREFIX + "/users/{name}"),
        ("PATCH", PREFIX + "/users/{name}"),
        ("PUT", PREFIX + "/users/{name}/quota"),
    }
)


def takes_json(method: str, path: str) -> bool:
    """Whether the route ``method path`` (its aiohttp pattern) takes a JSON body."""
    route = BY_KEY.get((method, path))
    return route is not None and route.request is not None


# ---- the document ------------------------------------------------------------------------

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
        body = s.QuotaError if (status == 403 and route.access == "submit") else s.Error
        responses[str(status)] = {
            "description": _REASONS[status],
            "content": {"application/json": {"schema": schemas[body]}},
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
        op["requestBody"] = {"required": True, "content": _content(route.request, schemas)}
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
    return web.json_response(document())


async def _check(app: web.Application) -> None:
    missing = undocumented(app)
    if missing:
        raise RuntimeError(f"routes not declared in services/api/openapi.py: {missing}")


def install(app: web.Application) -> None:
    """Serve the document on ``app``, and refuse to start it with a route under
    ``/api/v1`` that the document does not declare."""
    app.router.add_get(PREFIX + "/openapi.json", serve)
    app.on_startup.append(_check)


if __name__ == "__main__":
    sys.stdout.write(render())

"""Every route of the HTTP API, one declaration each: its method and path, what it
takes (query, header and path parameters; a request body type from
services/api/schemas.py), what it answers per status, and who may call it.

services/api/openapi.py makes the OpenAPI document from this table, the app refuses to
start with a route under ``/api/v1`` it does not declare, services/api/hygiene.py reads
which routes take JSON from it, and the route access test walks it as every role.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    tags: tuple[str, ...] = ()
    body_required: bool = True  # (when it takes one)

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
NODE = Param("name", {"type": "string"}, "a node name", "path")
TOKEN = Param("id", _ID, "a token id", "path")
STATES = [st.value for st in ExecutionState]

ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/health",
        "the API and its database answer",
        {200: s.Health},
        access=PUBLIC,
        tags=("meta",),
    ),
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
        "the caller's tokens, newest first (`?user=` another's, change-config only)",
        {200: list[s.Token]},
        (400, 403),
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
        "revoke a token: one's own, or anyone's with change-config",
        {204: None},
        (400, 404),
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
        "one user (oneself: anyone signed in)",
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
        "POST",
        "/nodes/{name}/drain",
        "drain a node: it takes no new instances, its work moves elsewhere",
        {202: s.Drain},
        (404,),
        access="change-config",
        request=s.DrainRequest,
        body_required=False,
        params=(NODE,),
        tags=("executions",),
    ),
    Route(
        "POST",
        "/nodes/{name}/undrain",
        "let a drained node take new instances again",
        {202: s.Drain},
        (404,),
        access="change-config",
        params=(NODE,),
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
        "the caller's executions, newest first (`?all=1`, or another `?user=`: operate-all only)",
        {200: list[s.ExecutionSummary]},
        (400, 403),
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


def takes_json(method: str, path: str, *, has_body: bool) -> bool:
    """Whether the route ``method path`` (its aiohttp pattern) takes a JSON body: one
    that it needs, or one that it may take and that came."""
    route = BY_KEY.get((method, path))
    return route is not None and route.request is not None and (has_body or route.body_required)

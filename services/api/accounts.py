"""Signing in and out, API tokens, users and quotas over HTTP (docs/api.md).

Signing in (``POST /api/v1/login``) makes a login token, returned in the reply for the
CLI and set as the HttpOnly session cookie for the web page, with the CSRF cookie the
page echoes in ``X-CSRF-Token``. Managing users and others' tokens needs the
``change-config`` capability; everyone manages their own tokens.
"""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
from aiohttp import web

from common.errors import FieldError, InvalidRequest
from services.api import auth, limits, users
from services.api.auth import Caller
from services.api.responses import json_response
from services.api.shop import json_object

POOL = web.AppKey("accounts_pool", asyncpg.Pool)
BACKEND = web.AppKey("auth_backend", auth.PasswordBackend)  # type: ignore[type-abstract]
MAX_PASSWORD = 1024
MIN_PASSWORD = 8
QUOTA_WHOLE = {"executions": True, "cores": False, "memory": True, "runtime": False}
# below what each column holds (executions: an integer column; the rest: 64 bits)
QUOTA_BELOW = {"executions": 2**31, "cores": 2**62, "memory": 2**62, "runtime": 2**62}


def _fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest("invalid request", [FieldError(k, "unknown field") for k in unknown])


def _string(body: dict[str, Any], key: str, *, high: int = MAX_PASSWORD) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= high or not limits.storable(value):
        raise InvalidRequest(
            "invalid request", [FieldError(key, f"must be a string of 1 to {high} characters")]
        )
    return value


def _password(body: dict[str, Any]) -> str:
    password = _string(body, "password")
    if len(password) < MIN_PASSWORD:
        raise InvalidRequest(
            "invalid request",
            [FieldError("password", f"must be at least {MIN_PASSWORD} characters")],
        )
    return password


@auth.public
async def login(request: web.Request) -> web.Response:
    """Check a user name and password; answer a login token and set the session cookie."""
    body = await json_object(request)
    _fields(body, {"username", "password"})
    username, password = _string(body, "username", high=63), _string(body, "password")
    pool = request.app[POOL]
    name = await request.app[BACKEND].authenticate(pool, username, password)
    if name is None:
        raise auth.Unauthorized("wrong user name or password, or the user is disabled")
    user = await users.get_user(pool, name)
    token = await users.create_token(
        pool, name, kind="login", description="sign-in", lifetime=auth.LOGIN_LIFETIME
    )
    response = json_response(
        {
            "token": token["token"],
            "user": name,
            "role": user["role"],
            "expires_at": token["expires_at"],
        }
    )
    age = int(auth.LOGIN_LIFETIME.total_seconds())
    # behind a TLS proxy (docs/operations.md) the api itself is reached over plain HTTP
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.set_cookie(
        auth.SESSION_COOKIE, token["token"], max_age=age, path="/", httponly=True,
        samesite="Strict", secure=secure,
    )  # fmt: skip
    response.set_cookie(
        auth.CSRF_COOKIE, secrets.token_urlsafe(24), max_age=age, path="/", samesite="Strict",
        secure=secure,
    )  # fmt: skip
    return response


async def logout(request: web.Request) -> web.Response:
    """Revoke the token the request came with and clear the session cookies."""
    caller = auth.caller(request)
    if caller.token_id is not None:
        await users.revoke_token(request.app[POOL], caller.token_id, caller.name)
    response = web.Response(status=204)
    response.del_cookie(auth.SESSION_COOKIE, path="/")
    response.del_cookie(auth.CSRF_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    """The caller: name, role, capabilities, quota and what their executions hold."""
    caller = auth.caller(request)
    pool = request.app[POOL]
    user = await users.get_user(pool, caller.name)
    user["usage"] = await users.usage(pool, caller.name)
    return json_response(user)


# ---- tokens ----------------------------------------------------------------------------


def _user_query(request: web.Request, caller: Caller) -> str | None:
    """``?user=``: whose tokens to list (another's needs change-config)."""
    who = request.query.get("user")
    if who is None:
        return caller.name
    users.check_name(who, "user")
    if who != caller.name:
        caller.require(auth.CHANGE_CONFIG)
    return who


async def list_tokens(request: web.Request) -> web.Response:
    """The caller's tokens (``?user=NAME`` another's, for admins), without secrets."""
    caller = auth.caller(request)
    return json_response(await users.list_tokens(request.app[POOL], _user_query(request, caller)))


async def create_token(request: web.Request) -> web.Response:
    """A new API token (``{"description", "user"?}``); its secret is shown once."""
    caller = auth.caller(request)
    body = await json_object(request)
    _fields(body, {"description", "user"})
    owner = caller.name
    if "user" in body:
        owner = users.check_name(body["user"], "user")
        if owner != caller.name:
            caller.require(auth.CHANGE_CONFIG)
            await users.get_user(request.app[POOL], owner)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise InvalidRequest("invalid token", [FieldError("description", "must be a string")])
    token = await users.create_token(request.app[POOL], owner, description=description)
    return json_response(token, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token: one's own, or anyone's with change-config."""
    caller = auth.caller(request)
    token_id = limits.ascii_int(request.match_info["id"])
    if token_id is None:
        raise InvalidRequest("invalid token id", [FieldError("id", "must be a token id")])
    owner = None if caller.can(auth.CHANGE_CONFIG) else caller.name
    await users.revoke_token(request.app[POOL], token_id, owner)
    return web.Response(status=204)


# ---- users and quotas ------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    auth.caller(request).require(auth.CHANGE_CONFIG)
    return json_response(await users.list_users(request.app[POOL]))


async def create_user(request: web.Request) -> web.Response:
    """A new user ``{"name", "role", "password"?}``; without a password one is generated
    and answered (once)."""
    auth.caller(request).require(auth.CHANGE_CONFIG)
    body = await json_object(request)
    _fields(body, {"name", "role", "password"})
    name = users.check_name(body.get("name"))
    role = _string(body, "role", high=63)
    password = _password(body) if "password" in body else auth.generated_password()
    user = await users.create_user(request.app[POOL], name, role, password)
    if "password" not in body:
        user["password"] = password
    return json_response(user, status=201)


async def get_user(request: web.Request) -> web.Response:
    """A user: oneself, or anyone with change-config."""
    caller = auth.caller(request)
    name = request.match_info["name"]
    if name != caller.name:
        caller.require(auth.CHANGE_CONFIG)
    users.check_name(name)
    return json_response(await users.get_user(request.app[POOL], name))


async def update_user(request: web.Request) -> web.Response:
    """Change a user's ``role``, ``enabled``, ``password`` or ``weight``."""
    auth.caller(request).require(auth.CHANGE_CONFIG)
    name = users.check_name(request.match_info["name"])
    body = await json_object(request)
    _fields(body, {"role", "enabled", "password", "weight"})
    errors = []
    if "enabled" in body and not isinstance(body["enabled"], bool):
        errors.append(FieldError("enabled", "must be true or false"))
    weight = body.get("weight")
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 1e6
    ):
        errors.append(FieldError("weight", "must be a number above 0, at most 1000000"))
    if errors:
        raise InvalidRequest("invalid user", errors)
    user = await users.update_user(
        request.app[POOL],
        name,
        role=_string(body, "role", high=63) if "role" in body else None,
        enabled=body.get("enabled"),
        password=_password(body) if "password" in body else None,
        weight=float(weight) if weight is not None else None,
    )
    return json_response(user)


async def set_quota(request: web.Request) -> web.Response:
    """Set a user's quota ``{"executions", "cores", "memory", "runtime"}``: a number
    overrides the role's default, null (or a missing field) restores it."""
    auth.caller(request).require(auth.CHANGE_CONFIG)
    name = users.check_name(request.match_info["name"])
    body = await json_object(request)
    _fields(body, set(users.QUOTAS))
    errors = []
    for key, whole in QUOTA_WHOLE.items():
        value = body.get(key)
        if value is None:
            continue
        number = isinstance(value, int) or (isinstance(value, float) and not whole)
        if isinstance(value, bool) or not number or not 0 <= value < QUOTA_BELOW[key]:
            errors.append(FieldError(key, QUOTA_RULES[key]))
        elif key == "runtime" and value == 0:
            errors.append(FieldError(key, QUOTA_RULES[key]))
    if errors:
        raise InvalidRequest("invalid quota", errors)
    return json_response(await users.set_quota(request.app[POOL], name, body))


QUOTA_RULES = {
    "executions": "must be a whole number of executions from 0 to 2147483647, or null",
    "cores": "must be a number of cores, 0 or more, or null",
    "memory": "must be a whole number of bytes, 0 or more, or null",
    "runtime": "must be a number of seconds above 0, or null",
}


def add_routes(app: web.Application, pool: asyncpg.Pool, backend: str = "database") -> None:
    """Mount the account routes on ``app``; passwords are checked by ``backend``."""
    app[POOL] = pool
    app[BACKEND] = auth.BACKENDS[backend]
    app.router.add_post("/api/v1/login", login)
    app.router.add_post("/api/v1/logout", logout)
    app.router.add_get("/api/v1/me", me)
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_delete("/api/v1/tokens/{id}", revoke_token)
    app.router.add_get("/api/v1/users", list_users)
    app.router.add_post("/api/v1/users", create_user)
    app.router.add_get("/api/v1/users/{name}", get_user)
    app.router.add_patch("/api/v1/users/{name}", update_user)
    app.router.add_put("/api/v1/users/{name}/quota", set_quota)


__all__ = ["add_routes"]

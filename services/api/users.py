"""Users, their tokens and quotas: the api's reads and writes of them.

A user's quota is their role's, field by field, unless the user overrides it (a null
override: the role's value; a null role value: no limit).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import asyncpg

from common.errors import Conflict, FieldError, InvalidRequest, NotFound
from common.states import EXECUTION_FINAL, sql_list
from services.api import auth

NAME = re.compile(r"[a-z][a-z0-9_.-]{0,62}")
NAME_RULE = "must be 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter"
QUOTAS = ("executions", "cores", "memory", "runtime")
MAX_DESCRIPTION = 200
_ACTIVE = f"state NOT IN {sql_list(EXECUTION_FINAL)}"

_USER_COLUMNS = (
    "u.name, u.role, u.enabled, u.created_at, coalesce(u.weight, r.weight) AS weight,"
    " coalesce(u.max_executions, r.max_executions) AS executions,"
    " coalesce(u.max_cores, r.max_cores) AS cores,"
    " coalesce(u.max_memory, r.max_memory) AS memory,"
    " coalesce(u.max_runtime, r.max_runtime) AS runtime,"
    " r.capabilities, r.max_priority"
)
_USERS = f"SELECT {_USER_COLUMNS} FROM users u JOIN roles r ON r.name = u.role"


def _user(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": row["name"],
        "role": row["role"],
        "enabled": row["enabled"],
        "created_at": row["created_at"].isoformat(),
        "weight": row["weight"],
        "capabilities": sorted(row["capabilities"]),
        "max_priority": row["max_priority"],
        "quota": {q: row[q] for q in QUOTAS},
    }


def check_name(name: object, path: str = "name") -> str:
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise InvalidRequest("invalid user name", [FieldError(path, NAME_RULE)])
    return name


async def roles(db: asyncpg.Pool | asyncpg.Connection) -> set[str]:
    return {r["name"] for r in await db.fetch("SELECT name FROM roles")}


async def create_user(
    db: asyncpg.Pool | asyncpg.Connection, name: str, role: str, password: str
) -> dict[str, Any]:
    """Store a new user; Conflict if the name is taken."""
    check_name(name)
    if role not in await roles(db):
        known = ", ".join(sorted(await roles(db)))
        raise InvalidRequest("invalid user", [FieldError("role", f"must be one of {known}")])
    try:
        await db.execute(
            "INSERT INTO users (name, role, password_hash) VALUES ($1, $2, $3)",
            name,
            role,
            await auth.hash_password(password),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"user {name!r} exists already") from None
    return await get_user(db, name)


async def get_user(db: asyncpg.Pool | asyncpg.Connection, name: str) -> dict[str, Any]:
    row = await db.fetchrow(f"{_USERS} WHERE u.name = $1", name)
    if row is None:
        raise NotFound(f"user {name!r} does not exist")
    return _user(row)


async def list_users(db: asyncpg.Pool) -> list[dict[str, Any]]:
    return [_user(r) for r in await db.fetch(f"{_USERS} ORDER BY u.name")]


async def update_user(
    pool: asyncpg.Pool,
    name: str,
    *,
    role: str | None = None,
    enabled: bool | None = None,
    password: str | None = None,
    weight: float | None = None,
) -> dict[str, Any]:
    """Change what is given; disabling a user revokes their tokens too."""
    if role is not None and role not in await roles(pool):
        known = ", ".join(sorted(await roles(pool)))
        raise InvalidRequest("invalid user", [FieldError("role", f"must be one of {known}")])
    hashed = await auth.hash_password(password) if password is not None else None
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE users SET role = coalesce($2, role), enabled = coalesce($3, enabled),"
            " password_hash = coalesce($4, password_hash), weight = coalesce($5, weight)"
            " WHERE name = $1 RETURNING name",
            name,
            role,
            enabled,
            hashed,
            weight,
        )
        if row is None:
            raise NotFound(f"user {name!r} does not exist")
        if enabled is False:
            await conn.execute(
                "UPDATE tokens SET revoked_at = now() WHERE user_name = $1 AND revoked_at IS NULL",
                name,
            )
        out = await get_user(conn, name)
    auth.forget(pool)  # committed: callers and quotas are read afresh
    return out


async def set_quota(pool: asyncpg.Pool, name: str, quota: dict[str, Any]) -> dict[str, Any]:
    """Set the user's overrides (None: the role's default) of the quotas given."""
    row = await pool.fetchrow(
        "UPDATE users SET max_executions = $2, max_cores = $3, max_memory = $4,"
        " max_runtime = $5 WHERE name = $1 RETURNING name",
        name,
        *(quota.get(q) for q in QUOTAS),
    )
    auth.forget(pool)
    if row is None:
        raise NotFound(f"user {name!r} does not exist")
    return await get_user(pool, name)


async def usage(db: asyncpg.Pool | asyncpg.Connection, name: str) -> dict[str, Any]:
    """What the user's active executions hold: how many, and the cores and memory of all
    their service instances (whether placed yet or not)."""
    row = await db.fetchrow(
        "SELECT count(DISTINCT e.id) AS executions, coalesce(sum(i.cores), 0) AS cores,"
        " coalesce(sum(i.memory), 0)::bigint AS memory"
        " FROM executions e LEFT JOIN instances i ON i.execution_id = e.id"
        f" WHERE e.user_name = $1 AND e.{_ACTIVE}",
        name,
    )
    return {"executions": row["executions"], "cores": row["cores"], "memory": row["memory"]}


# ---- tokens ----------------------------------------------------------------------------

_TOKEN_COLUMNS = (
    "id, user_name, kind, description, created_at, expires_at, last_used_at, revoked_at"
)


def _token(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["user"] = out.pop("user_name")
    for key in ("created_at", "expires_at", "last_used_at", "revoked_at"):
        out[key] = out[key].isoformat() if out[key] is not None else None
    return out


async def create_token(
    db: asyncpg.Pool | asyncpg.Connection,
    user: str,
    *,
    kind: str = "api",
    description: str = "",
    lifetime: datetime.timedelta | None = None,
) -> dict[str, Any]:
    """A new token of ``user``; the secret is in the answer and nowhere else."""
    if len(description) > MAX_DESCRIPTION or not description.isprintable():
        raise InvalidRequest(
            "invalid token",
            [FieldError("description", f"must be printable, at most {MAX_DESCRIPTION} characters")],
        )
    secret = auth.new_secret()
    expires = datetime.datetime.now(datetime.UTC) + lifetime if lifetime is not None else None
    row = await db.fetchrow(
        "INSERT INTO tokens (user_name, digest, kind, description, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_TOKEN_COLUMNS}",
        user,
        auth.digest(secret),
        kind,
        description,
        expires,
    )
    return {**_token(row), "token": secret}


async def list_tokens(pool: asyncpg.Pool, user: str | None) -> list[dict[str, Any]]:
    """Tokens of ``user`` (None: everyone's), newest first, without their secrets."""
    rows = await pool.fetch(
        f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE ($1::text IS NULL OR user_name = $1)"
        " ORDER BY id DESC",
        user,
    )
    return [_token(r) for r in rows]


async def revoke_token(pool: asyncpg.Pool, token_id: int, owner: str | None) -> None:
    """Revoke a token of ``owner`` (None: anyone's); NotFound for another's token."""
    row = await pool.fetchrow(
        "UPDATE tokens SET revoked_at = coalesce(revoked_at, now())"
        " WHERE id = $1 AND ($2::text IS NULL OR user_name = $2) RETURNING id",
        token_id,
        owner,
    )
    auth.forget(pool)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")

"""Who is calling: credentials to a ``Caller``, and what each role may do.

Every HTTP route but the public ones (``PUBLIC_PATHS``, the ``/ui/`` assets, and any
handler marked with ``public``) needs a caller: ``Authorization: Bearer <token>`` (the
CLI, scripts), or the web session (cookie ``zoe_session``, plus header ``X-CSRF-Token``
equal to cookie ``zoe_csrf`` on every state-changing request). An AMQP request carries
its platform's token in the message header ``zoe-token``.

Tokens are random secrets stored as their SHA-256 (a slow hash adds nothing to 256 random
bits); passwords are stored with argon2id. Checking a password is the backend's: the
internal database is the one backend now (``DatabaseBackend``); an LDAP or OAuth backend
implements ``PasswordBackend``, is registered in ``BACKENDS`` and chosen by
``ZOE_AUTH_BACKEND`` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import argon2
import asyncpg
from aiohttp import web

from common.errors import FieldError, Forbidden, UserError

# What a role may do (roles.capabilities; common/migrations/008_users.sql).
SUBMIT = "submit"  # start executions
SEE_STATUS = "see-status"  # read the cluster's nodes and the queue
OPERATE_ALL = "operate-all"  # see and act on anyone's executions
CHANGE_CONFIG = "change-config"  # manage users, quotas and others' tokens
CUSTOMISE = "customise"  # override a shop ZApp's resources
WHOLE_SHOP = "whole-shop"  # start any ZApp, whatever roles its manifest names
RUN_AS_ROOT = "run-as-root"  # start a ZApp whose containers run as root
CAPABILITIES = frozenset(
    {SUBMIT, SEE_STATUS, OPERATE_ALL, CHANGE_CONFIG, CUSTOMISE, WHOLE_SHOP, RUN_AS_ROOT}
)

SESSION_COOKIE = "zoe_session"
CSRF_COOKIE = "zoe_csrf"
CSRF_HEADER = "X-CSRF-Token"
AMQP_HEADER = "zoe-token"
TOKEN_PREFIX = "zoe_"
LOGIN_LIFETIME = datetime.timedelta(days=7)
# A token's last use is written at most this often (not on every request).
LAST_USED_EVERY = datetime.timedelta(minutes=1)
PUBLIC_PATHS = frozenset(
    {"/api/v1/health", "/api/v1/login", "/api/v1/openapi.json", "/login", "/metrics",
     "/healthz", "/readyz"}
)  # fmt: skip
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

_hasher = argon2.PasswordHasher()  # argon2id with the library's recommended costs


class Unauthorized(UserError):
    """No credentials, or credentials that do not name an enabled user."""

    status = 401


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated user, as each request and AMQP message sees it."""

    name: str
    role: str
    capabilities: frozenset[str]
    max_priority: int
    token_id: int | None = None

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str) -> None:
        """Raise Forbidden unless the caller's role has ``capability``."""
        if capability not in self.capabilities:
            raise Forbidden(f"role {self.role!r} may not do this ({capability})")

    @property
    def sees_all(self) -> bool:
        return OPERATE_ALL in self.capabilities

    def owner_filter(self) -> str | None:
        """The user whose executions the caller may see; None: everyone's."""
        return None if self.sees_all else self.name


# ---- secrets ---------------------------------------------------------------------------


async def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (tens of milliseconds: off the event loop)."""
    return await asyncio.to_thread(_hasher.hash, password)


async def password_matches(password_hash: str | None, password: str) -> bool:
    if password_hash is None:
        return False
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def new_secret() -> str:
    """A fresh token: the prefix (for secret scanners) and 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def generated_password() -> str:
    return secrets.token_urlsafe(18)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


# ---- backends --------------------------------------------------------------------------


class PasswordBackend(Protocol):
    """Checks a user name and password; returns the user's name in Zoe, or None."""

    async def authenticate(self, pool: asyncpg.Pool, username: str, password: str) -> str | None:
        """The Zoe user ``username`` names if ``password`` is theirs and they are enabled."""
        ...


class DatabaseBackend:
    """Users and their argon2 hashes in Zoe's own database."""

    async def authenticate(self, pool: asyncpg.Pool, username: str, password: str) -> str | None:
        row = await pool.fetchrow(
            "SELECT name, password_hash FROM users WHERE name = $1 AND enabled", username
        )
        # an unknown name costs a hash too, so timing does not tell names apart
        stored = row["password_hash"] if row is not None else _dummy_hash()
        ok = await password_matches(stored, password)
        return str(row["name"]) if ok and row is not None else None


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


BACKENDS: dict[str, PasswordBackend] = {"database": DatabaseBackend()}


# ---- tokens to callers -----------------------------------------------------------------

_CALLER_OF_TOKEN = (
    "SELECT t.id, t.last_used_at, t.expires_at, u.name, u.role, r.capabilities,"
    " r.max_priority FROM tokens t JOIN users u ON u.name = t.user_name"
    " JOIN roles r ON r.name = u.role"
    " WHERE t.digest = $1 AND t.revoked_at IS NULL AND u.enabled"
    "  AND (t.expires_at IS NULL OR t.expires_at > now())"
)


class Remembered:
    """What this api process read about callers in the last ``ttl`` seconds: the caller
    each token stands for, and each user's quota (services/api/quotas.py), so that a
    busy client costs no query per request for them.

    The bound: a token revoked, a user disabled, a role, quota or user changed by
    *another* process (another api, the CLI on the database) is honoured at most
    ``ttl`` seconds later; by this process (its HTTP and AMQP routes), at once
    (``forget``). An expiry is checked on every use. ``ttl`` 0: nothing is kept.
    """

    MAX_ENTRIES = 10_000  # a process serving more callers than this starts afresh

    def __init__(self, ttl: float = 0.0) -> None:
        self.ttl = ttl
        self._callers: dict[bytes, tuple[Caller, float, datetime.datetime | None]] = {}
        self._quotas: dict[str, tuple[Any, float]] = {}
        # grows at each ``forget``: what was read before one is not kept after it
        self.generation = 0

    def caller(self, token_digest: bytes) -> Caller | None:
        found = self._callers.get(token_digest)
        if found is None:
            return None
        caller, read_at, expires_at = found
        if time.monotonic() - read_at >= self.ttl or (
            expires_at is not None and expires_at <= datetime.datetime.now(datetime.UTC)
        ):
            del self._callers[token_digest]
            return None
        return caller

    def keep_caller(
        self,
        token_digest: bytes,
        caller: Caller,
        expires_at: datetime.datetime | None,
        generation: int,
    ) -> None:
        if self.ttl <= 0 or generation != self.generation:
            return
        if len(self._callers) >= self.MAX_ENTRIES:
            self._callers.clear()
        self._callers[token_digest] = (caller, time.monotonic(), expires_at)

    def quota(self, user: str) -> Any | None:
        found = self._quotas.get(user)
        if found is None:
            return None
        if time.monotonic() - found[1] >= self.ttl:
            del self._quotas[user]
            return None
        return found[0]

    def keep_quota(self, user: str, quota: Any, generation: int) -> None:
        if self.ttl <= 0 or generation != self.generation:
            return
        if len(self._quotas) >= self.MAX_ENTRIES:
            self._quotas.clear()
        self._quotas[user] = (quota, time.monotonic())

    def forget(self) -> None:
        """Drop everything (a token, user, role or quota changed here)."""
        self.generation += 1
        self._callers.clear()
        self._quotas.clear()


# one per pool (so per database), kept with its pool so that the id stays its own
_remembered: dict[int, tuple[asyncpg.Pool, Remembered]] = {}


def remembered(pool: asyncpg.Pool) -> Remembered:
    """What this process remembers about the callers of ``pool``'s database (nothing,
    unless ``remember`` set a time to live: the api service does)."""
    if id(pool) not in _remembered:
        _remembered[id(pool)] = (pool, Remembered())
    return _remembered[id(pool)][1]


def remember(pool: asyncpg.Pool, ttl: float) -> None:
    """Keep callers and quotas read through ``pool`` for ``ttl`` seconds (ZOE_AUTH_CACHE_TTL)."""
    _remembered[id(pool)] = (pool, Remembered(ttl))


def forget(pool: asyncpg.Pool) -> None:
    """A token, user, role or quota changed: read them all afresh from now on."""
    found = _remembered.get(id(pool))
    if found is not None:
        found[1].forget()


async def caller_of_token(pool: asyncpg.Pool, secret: str) -> Caller | None:
    """The caller a token stands for; None for an unknown, revoked or expired token or a
    disabled user. Read at most every ``Remembered.ttl`` seconds per token."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    key = digest(secret)
    kept = remembered(pool)
    found = kept.caller(key)
    if found is not None:
        return found
    generation = kept.generation
    row = await pool.fetchrow(_CALLER_OF_TOKEN, key)
    if row is None:
        return None
    last = row["last_used_at"]
    if last is None or datetime.datetime.now(datetime.UTC) - last > LAST_USED_EVERY:
        await pool.execute("UPDATE tokens SET last_used_at = now() WHERE id = $1", row["id"])
    caller = Caller(
        name=row["name"],
        role=row["role"],
        capabilities=frozenset(row["capabilities"]),
        max_priority=row["max_priority"],
        token_id=row["id"],
    )
    kept.keep_caller(key, caller, row["expires_at"], generation)
    return caller


# ---- HTTP ------------------------------------------------------------------------------

CALLER = web.RequestKey("zoe.caller", Caller)  # the request's key for its Caller
PoolOf = Callable[[web.Request], asyncpg.Pool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a route's handler as open to anyone (no caller needed)."""
    handler.zoe_public = True  # type: ignore[attr-defined]
    return handler


def caller(request: web.Request) -> Caller:
    """The authenticated caller of a request (set by the middleware)."""
    found = request.get(CALLER)
    if found is None:
        raise Unauthorized("authentication required")
    return found


def _is_public(request: web.Request, handler: Any) -> bool:
    if request.path in PUBLIC_PATHS or request.path.startswith("/ui/"):
        return True
    if getattr(handler, "zoe_public", False):
        return True
    # a path no route matches is answered 404 (or 405) by aiohttp, whoever asks
    return request.match_info.http_exception is not None


def middleware(pool_of: PoolOf) -> Any:
    """Authenticate every request that is not public; a web page without a session is
    sent to ``/login``, an API call gets 401."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _is_public(request, handler):
            return await handler(request)
        found, by_cookie = await _credentials(request, pool_of(request))
        if found is None:
            if not request.path.startswith("/api/") and request.method == "GET":
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
            raise Unauthorized("authentication required")
        if by_cookie and request.method in UNSAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            expected = request.cookies.get(CSRF_COOKIE, "")
            if not expected or not secrets.compare_digest(sent, expected):
                raise Forbidden(
                    "missing or wrong CSRF token",
                    [FieldError(CSRF_HEADER, "must equal the zoe_csrf cookie")],
                )
        request[CALLER] = found
        return await handler(request)

    return authenticate


async def _credentials(request: web.Request, pool: asyncpg.Pool) -> tuple[Caller | None, bool]:
    """The caller of a Bearer token or, failing one, of the session cookie."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer":
            return None, False
        return await caller_of_token(pool, secret.strip()), False
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return await caller_of_token(pool, cookie), True
    return None, False


def unauthorized_headers() -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="zoe"'}


# ---- AMQP ------------------------------------------------------------------------------


async def caller_of_message(pool: asyncpg.Pool, headers: Mapping[str, Any] | None) -> Caller:
    """The caller of an AMQP request: the token in its ``zoe-token`` header."""
    raw = (headers or {}).get(AMQP_HEADER)
    secret = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not isinstance(secret, str):
        raise Unauthorized(f"authentication required: a {AMQP_HEADER!r} message header")
    found = await caller_of_token(pool, secret)
    if found is None:
        raise Unauthorized("authentication required: the token is unknown, revoked or expired")
    return found

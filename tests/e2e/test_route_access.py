"""Every operation of the OpenAPI document called as an admin, a user, a guest and
anonymously, each answer held to the operation's declared access (``x-zoe-access``):
``public`` is never a 401; anything else is a 401 without credentials; an operation
that needs a capability is a 403 for a role without it, and neither 401 nor 403 for one
with it. The table is the document itself, so a new route cannot escape it.

Requests carry no valid body (``{}``) and name no existing object, so nothing of the
session's is touched; the callers are users of this test's own (signing out, last,
revokes only their own sign-in).
"""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from services.api import openapi, routetable
from services.api.routetable import PUBLIC, SIGNED_IN
from tests import rawhttp
from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e

ROLES = ("admin", "user", "guest")
NO_SUCH = {"id": str(2**62), "instance": "no-such-instance", "name": "no-such-user"}


def operations() -> list[tuple[str, str, str]]:
    """(method, path, access) of every operation of the document; signing out last."""
    out = [
        (method.upper(), path, op["x-zoe-access"])
        for path, item in openapi.document()["paths"].items()
        for method, op in item.items()
    ]
    return sorted(out, key=lambda o: o[1].endswith("/logout"))


def target(path: str) -> str:
    """``path`` with each parameter naming nothing that exists (a shop ZApp that does)."""

    def fill(match: re.Match[str]) -> str:
        if path.startswith("/api/v1/zapps/"):
            return "hello"
        return NO_SUCH[match[1]]

    return re.sub(r"\{(\w+)\}", fill, path)


def problem(status: int, access: str, role: str | None, capabilities: frozenset[str]) -> str | None:
    """What is wrong with ``status`` for an operation of ``access`` called as ``role``
    (None: anonymously) whose role has ``capabilities``; None if nothing."""
    if status >= 500:
        return "a server error"
    if access == PUBLIC:
        return "401 for a public operation" if status == 401 else None
    if role is None:
        return None if status == 401 else "not 401 without credentials"
    if access != SIGNED_IN and access not in capabilities:
        return None if status == 403 else f"not 403 without {access}"
    return f"{status} although allowed" if status in (401, 403) else None


async def sign_in(platform: Platform, name: str, password: str) -> str:
    body = {"username": name, "password": password}
    status, body = await platform.acall("POST", "/login", body, token=None)
    assert status == 200, body
    return str(body["token"])


@pytest.fixture(scope="module")
async def callers(platform: Platform) -> dict[str, tuple[str, frozenset[str]]]:
    """role -> (a token of a user of that role made here, the role's capabilities)."""
    out = {}
    for role in ROLES:
        name = f"access-{role}-{uuid.uuid4().hex[:6]}"
        password = uuid.uuid4().hex
        status, body = await platform.acall(
            "POST", "/users", {"name": name, "role": role, "password": password}
        )
        assert status == 201, body
        token = await sign_in(platform, name, password)
        status, me = await platform.acall("GET", "/me", token=token)
        assert status == 200 and me["role"] == role, me
        out[role] = (token, frozenset(me["capabilities"]))
    return out


def call(port: int, method: str, path: str, body: bytes | None, token: str | None) -> int:
    headers: dict[str, bytes | str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        headers["Content-Type"] = "application/json"
    return rawhttp.request(port, method, target(path), body, headers).status


async def test_the_live_document_is_the_one_walked(platform: Platform) -> None:
    status, doc = await platform.acall("GET", "/openapi.json")
    assert status == 200 and doc == openapi.document()


@pytest.mark.parametrize("role", [*ROLES, None], ids=[*ROLES, "anonymous"])
async def test_every_operation_answers_as_its_access_says(
    platform: Platform, callers: dict[str, tuple[str, frozenset[str]]], role: str | None
) -> None:
    token, capabilities = callers[role] if role is not None else (None, frozenset[str]())
    bodies = {
        (method.upper(), path): b"{}" if "requestBody" in op else None
        for path, item in openapi.document()["paths"].items()
        for method, op in item.items()
    }
    wrong: list[str] = []
    for method, path, access in operations():
        body = bodies[method, path]
        status = await asyncio.to_thread(call, platform.port, method, path, body, token)
        trouble = problem(status, access, role, capabilities)
        if trouble is not None:
            wrong.append(f"{method} {path} ({access}): {status}, {trouble}")
    assert wrong == [], "\n".join(wrong)


def test_every_route_is_walked() -> None:
    assert len(operations()) == len(routetable.ROUTES)


def test_the_rules_themselves() -> None:
    caps = frozenset({"submit"})
    assert problem(200, PUBLIC, None, caps) is None
    assert problem(401, PUBLIC, None, caps) is not None
    assert problem(401, SIGNED_IN, None, caps) is None
    assert problem(404, SIGNED_IN, None, caps) is not None
    assert problem(403, "change-config", "user", caps) is None
    assert problem(400, "change-config", "user", caps) is not None
    assert problem(400, "submit", "user", caps) is None
    assert problem(403, "submit", "user", caps) is not None
    assert problem(500, SIGNED_IN, "admin", caps) is not None

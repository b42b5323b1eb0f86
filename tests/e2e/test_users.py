"""Users, tokens, sessions, ownership and quotas, over HTTP and AMQP, on the live api."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import aio_pika
import pytest

from common import messages as m
from tests.conftest import TestEnv
from tests.e2e.conftest import SERVE_FOREVER, Platform, service, zapp
from tests.e2e.test_api_interfaces import ask

pytestmark = pytest.mark.e2e


def _name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _job(name: str = "owned", command: str = SERVE_FOREVER) -> dict[str, Any]:
    return {"name": name, "application": zapp(name, service("job", command, cores=0.1))}


async def _count(platform: Platform, user: str) -> int:
    status, rows = await platform.acall("GET", f"/executions?user={user}&limit=10000")
    assert status == 200, rows
    return len(rows)


async def test_anonymous_and_bad_tokens_get_401(platform: Platform) -> None:
    for token in (None, "zoe_not-a-token", "garbage"):
        status, body = await platform.acall("GET", "/executions", token=token)
        assert status == 401, body
        assert body["error"].startswith("authentication required")
    status, _ = await platform.acall("GET", "/health", token=None)  # public
    assert status == 200


async def test_login_token_me_and_revocation(platform: Platform) -> None:
    name = _name("alice")
    await platform.new_user(name, "user", password="correct horse battery")
    status, body = await platform.acall(
        "POST", "/login", {"username": name, "password": "wrong password!"}, token=None
    )
    assert status == 401, body
    status, body = await platform.acall(
        "POST", "/login", {"username": name, "password": "correct horse battery"}, token=None
    )
    assert status == 200, body
    token = body["token"]
    assert body["user"] == name and body["role"] == "user"

    status, me = await platform.acall("GET", "/me", token=token)
    assert status == 200 and me["name"] == name and "submit" in me["capabilities"]
    assert me["quota"]["executions"] == 10 and me["usage"]["executions"] == 0

    status, made = await platform.acall("POST", "/tokens", {"description": "ci"}, token=token)
    assert status == 201 and made["token"].startswith("zoe_")
    status, listed = await platform.acall("GET", "/tokens", token=token)
    assert status == 200 and {t["id"] for t in listed} >= {made["id"]}
    assert all("token" not in t for t in listed)  # secrets are shown once only

    status, _ = await platform.acall("DELETE", f"/tokens/{made['id']}", token=token)
    assert status == 204
    status, _ = await platform.acall("GET", "/me", token=made["token"])
    assert status == 401
    status, _ = await platform.acall("GET", "/me", token=token)  # the other still works
    assert status == 200


async def test_a_user_cannot_reach_another_users_executions(platform: Platform) -> None:
    alice = await platform.new_user(_name("alice"))
    bob = await platform.new_user(_name("bob"))
    status, mine = await platform.acall("POST", "/executions", _job(), token=alice)
    assert status == 201, mine
    eid = mine["id"]
    await platform.wait_state(eid, "running")

    for method, path in [
        ("GET", f"/executions/{eid}"),
        ("GET", f"/executions/{eid}/endpoints"),
        ("GET", f"/executions/{eid}/services/job0/logs"),
        ("POST", f"/executions/{eid}/terminate"),
    ]:
        status, body = await platform.acall(method, path, token=bob)
        assert status == 404, (method, path, body)  # as if it did not exist
        status, body = await platform.acall(method, path, token=alice)
        assert status in (200, 202), (method, path, body)
    status, listed = await platform.acall("GET", "/executions", token=bob)
    assert status == 200 and eid not in {e["id"] for e in listed}
    status, listed = await platform.acall("GET", "/executions", token=alice)
    assert eid in {e["id"] for e in listed}
    status, body = await platform.acall("GET", "/executions?all=1", token=bob)
    assert status == 403, body
    status, listed = await platform.acall("GET", "/executions?all=1")  # the admin
    assert status == 200 and eid in {e["id"] for e in listed}
    await platform.wait_state(eid, "terminated")


async def test_amqp_requests_act_as_their_tokens_user(
    platform: Platform, test_env: TestEnv
) -> None:
    alice = await platform.new_user(_name("alice"))
    bob = await platform.new_user(_name("bob"))
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel()
        job = zapp("amqp-owned", service("job", SERVE_FOREVER, cores=0.1))
        made = await ask(channel, m.SubmitRequest(name="amqp-owned", application=job), alice)
        assert made.status == 201, made.body
        assert made.body["user"] != "admin"
        eid = made.body["id"]
        for token in (None, "zoe_forged"):
            refused = await ask(channel, m.GetRequest(execution_id=eid), token)
            assert refused.status == 401, refused.body
        other = await ask(channel, m.GetRequest(execution_id=eid), bob)
        assert other.status == 404, other.body
        stop = await ask(channel, m.TerminateRequest(execution_id=eid), bob)
        assert stop.status == 404, stop.body
        own = await ask(channel, m.TerminateRequest(execution_id=eid), alice)
        assert own.status == 202, own.body
    finally:
        await connection.close()
    await platform.wait_state(eid, "terminated")


async def test_over_quota_is_refused_and_stores_nothing(platform: Platform) -> None:
    name = _name("carol")
    token = await platform.new_user(name)
    status, user = await platform.acall(
        "PUT", f"/users/{name}/quota", {"executions": 1, "cores": 0.5, "memory": None}
    )
    assert status == 200 and user["quota"]["executions"] == 1, user

    status, body = await platform.acall(
        "POST", "/executions", _job("too-big", "exit 0") | {"application": zapp(
            "too-big", service("job", "exit 0", cores=1.0))}, token=token
    )  # fmt: skip
    assert status == 403, body
    assert body["quota"] == "cores" and body["limit"] == 0.5 and body["requested"] == 1.0
    assert body["errors"][0]["path"] == "quota.cores"
    assert await _count(platform, name) == 0

    status, first = await platform.acall("POST", "/executions", _job(), token=token)
    assert status == 201, first
    status, body = await platform.acall("POST", "/executions", _job(), token=token)
    assert status == 403 and body["quota"] == "executions", body
    assert body["used"] == 1 and body["limit"] == 1
    assert await _count(platform, name) == 1
    status, _ = await platform.acall("POST", f"/executions/{first['id']}/terminate", token=token)
    await platform.wait_state(first["id"], "terminated")
    status, again = await platform.acall("POST", "/executions", _job(), token=token)
    assert status == 201, again  # the ended one no longer counts
    await platform.acall("POST", f"/executions/{again['id']}/terminate", token=token)


async def test_concurrent_submissions_cannot_slip_past_a_quota(platform: Platform) -> None:
    name = _name("dave")
    token = await platform.new_user(name)
    status, _ = await platform.acall("PUT", f"/users/{name}/quota", {"executions": 2})
    assert status == 200
    results = await asyncio.gather(
        *(
            platform.acall("POST", "/executions", _job("race", "exit 0"), token=token)
            for _ in range(8)
        )
    )
    assert sorted(s for s, _ in results).count(201) == 2, results
    assert all(s in (201, 403) for s, _ in results), results
    assert await _count(platform, name) == 2


async def test_priority_ceiling_and_guest(platform: Platform) -> None:
    user = await platform.new_user(_name("erin"))
    status, body = await platform.acall(
        "POST", "/executions", _job() | {"priority": 50}, token=user
    )
    assert status == 403 and body["errors"][0]["path"] == "priority", body
    guest = await platform.new_user(_name("guest"), "guest")
    status, body = await platform.acall("POST", "/executions", _job(), token=guest)
    assert status == 403, body
    status, body = await platform.acall("GET", "/users", token=user)
    assert status == 403, body


async def test_runtime_limit_terminates_with_its_reason(platform: Platform) -> None:
    name = _name("frank")
    token = await platform.new_user(name)
    status, _ = await platform.acall("PUT", f"/users/{name}/quota", {"runtime": 1})
    assert status == 200
    status, made = await platform.acall("POST", "/executions", _job("long"), token=token)
    assert status == 201 and made["runtime_limit"] == 1, made
    ended = await platform.wait_state(made["id"], "terminated", timeout=60)
    assert ended["error"].startswith("runtime-limit"), ended


async def test_disabling_a_user_revokes_their_tokens(platform: Platform) -> None:
    name = _name("gina")
    token = await platform.new_user(name)
    status, _ = await platform.acall("GET", "/me", token=token)
    assert status == 200
    status, user = await platform.acall("PATCH", f"/users/{name}", {"enabled": False})
    assert status == 200 and user["enabled"] is False
    status, _ = await platform.acall("GET", "/me", token=token)
    assert status == 401


def _session(platform: Platform) -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


def _send(
    opener: urllib.request.OpenerDirector, url: str, body: Any, headers: dict[str, str]
) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with opener.open(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_web_session_cookie_needs_the_csrf_token(platform: Platform) -> None:
    name = _name("hal")
    await platform.new_user(name, password="a long enough password")
    opener, jar = _session(platform)
    login = {"username": name, "password": "a long enough password"}
    assert await asyncio.to_thread(_send, opener, platform.url + "/login", login, {}) == 200
    cookies = {c.name: c for c in jar}
    assert cookies["zoe_session"].has_nonstandard_attr("HttpOnly")
    csrf = cookies["zoe_csrf"].value
    url = platform.url + "/tokens"
    assert await asyncio.to_thread(_send, opener, url, {"description": "x"}, {}) == 403
    wrong = {"X-CSRF-Token": "nope"}
    assert await asyncio.to_thread(_send, opener, url, {"description": "x"}, wrong) == 403
    right = {"X-CSRF-Token": csrf}
    assert await asyncio.to_thread(_send, opener, url, {"description": "x"}, right) == 201
    assert await asyncio.to_thread(_send, opener, platform.url + "/logout", {}, right) == 204
    assert await asyncio.to_thread(_send, opener, url, {"description": "y"}, right) == 401

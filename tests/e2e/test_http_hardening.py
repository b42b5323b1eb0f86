"""Inputs that once made the api answer 500, or a wrong answer, now get a clear 4xx with
the api's JSON error body: against the api process of the platform."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest

from common import messages as m
from services.api.limits import MAX_ID
from tests import rawhttp
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import SERVE_FOREVER, Platform, service, zapp
from tests.e2e.test_api_interfaces import ask as amqp_ask

pytestmark = pytest.mark.e2e

ENDED = ("finished", "failed")
STATES = "submitted, queued, starting, running, cleaning_up, finished, failed, terminated, error"


async def ask(
    platform: Platform,
    method: str,
    path: bytes | str,
    body: bytes | None = None,
    **headers: bytes | str,
) -> rawhttp.Answer:
    target = (b"/api/v1" + path) if isinstance(path, bytes) else "/api/v1" + path
    names = {k.replace("_", "-"): v for k, v in headers.items()}
    names.setdefault("Authorization", f"Bearer {platform.env.admin_token}")  # the admin's
    return await asyncio.to_thread(rawhttp.request, platform.port, method, target, body, names)


def refused(answer: rawhttp.Answer, status: int, error: str, path: str | None = None) -> Any:
    """Assert the api's error body with ``status``; returns its ``errors``."""
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.is_json, answer.headers
    body = answer.json
    assert set(body) == {"error", "errors"}
    assert error in body["error"], body
    if path is not None:
        assert any(e["path"] == path for e in body["errors"]), body
    return body["errors"]


def submission(name: str = "hardening", command: str = "exit 0") -> dict[str, Any]:
    return {"name": name, "application": zapp(f"{name}-app", service("job", command))}


async def test_body_nested_too_deep_is_400(platform: Platform) -> None:
    for depth in (1000, 5000, 100):
        deep = b"[" * depth + b"]" * depth
        for route in ("/executions", "/zapps/validate", "/zapps/hello/render"):
            answer = await ask(platform, "POST", route, deep)
            refused(answer, 400, "nested too deep")
    body = submission()
    nested: Any = "x"
    for _ in range(80):
        nested = {"k": nested}
    body["application"]["services"][0]["environment"] = nested
    refused(await ask(platform, "POST", "/executions", json.dumps(body).encode()), 400, "deep")


async def test_huge_integer_and_odd_numbers_are_400(platform: Platform) -> None:
    for number in ("1" * 4301, "-" + "9" * 30, "1e400", "NaN", "-Infinity"):
        text = json.dumps(submission()).replace('"name"', f'"priority": {number}, "name"', 1)
        errors = refused(
            await ask(platform, "POST", "/executions", text.encode()), 400, "not valid JSON"
        )
        assert errors[0]["path"] == ""


async def test_unknown_charset_is_400(platform: Platform) -> None:
    body = json.dumps(submission()).encode()
    for charset in ("no-such-charset", "base64", "\u00e9"):
        answer = await ask(
            platform,
            "POST",
            "/executions",
            body,
            Content_Type=f"application/json; charset={charset}",
        )
        refused(answer, 400, "unsupported charset")
    # a charset Python knows still works, and invalid bytes in it are a 400
    latin = await ask(
        platform, "POST", "/zapps/validate", b"\xff", Content_Type="application/json; charset=utf-8"
    )
    refused(latin, 400, "not valid text")
    ok = await ask(
        platform,
        "POST",
        "/zapps/validate",
        json.dumps(submission()["application"]).encode("utf-16"),
        Content_Type="application/json; charset=utf-16",
    )
    assert ok.status == 200 and ok.json["valid"], ok.body


async def test_only_ascii_digits_are_numbers(platform: Platform) -> None:
    eid = (await platform.submit(submission()["application"], name="digits"))["id"]
    arabic = "".join(chr(0x660 + int(d)) for d in str(eid))  # the same number, Arabic-Indic
    assert (await ask(platform, "GET", f"/executions/{eid}")).status == 200
    for raw in (arabic, "\u00b2", "1\u00b2", "+1", " 1", "1_0", str(MAX_ID + 1), "9" * 40, "-1"):
        quoted = quote(raw).encode()
        for route in (b"", b"/endpoints", b"/services/job0/logs"):
            refused(await ask(platform, "GET", b"/executions/" + quoted + route), 404, "not exist")
        refused(await ask(platform, "POST", b"/executions/" + quoted + b"/terminate"), 404, "")
    refused(await ask(platform, "GET", f"/executions/{MAX_ID}"), 404, "does not exist")
    for raw in ("\u00b2", "\u0661", "1\u0660", "-1", "0", "10001", "9" * 30, "x"):
        target = "/executions?limit=" + quote(raw)
        refused(await ask(platform, "GET", target), 400, "invalid query", "limit")
        logs = f"/executions/{eid}/services/job0/logs?tail={quote(raw)}"
        if raw not in ("0", "10001"):
            refused(await ask(platform, "GET", logs), 400, "invalid query", "tail")
    refused(
        await ask(platform, "GET", "/events?execution=%D9%A1"), 400, "invalid query", "execution"
    )
    await platform.wait_state(eid, *ENDED)  # what these tests ask needs no container


async def test_nul_in_query_and_path_is_4xx(platform: Platform) -> None:
    errors = refused(await ask(platform, "GET", "/executions?state=%00"), 400, "invalid query")
    assert errors == [{"path": "state", "message": f"must be one of {STATES}"}]
    refused(await ask(platform, "GET", "/executions?state=running%00"), 400, "", "state")
    eid = (await platform.submit(submission()["application"], name="nul"))["id"]
    for name in ("%00", "job0%00", "%ED%A0%80", "%FF"):
        answer = await ask(platform, "GET", f"/executions/{eid}/services/{name}/logs")
        refused(answer, 404, "no service instance")
    await platform.wait_state(eid, *ENDED)  # what these tests ask needs no container


async def test_unknown_state_filter_is_400(platform: Platform) -> None:
    errors = refused(await ask(platform, "GET", "/executions?state=nope"), 400, "invalid query")
    assert errors == [{"path": "state", "message": f"must be one of {STATES}"}]
    ok = await ask(platform, "GET", "/executions?state=finished&limit=5")
    assert ok.status == 200 and all(e["state"] == "finished" for e in ok.json)


async def test_non_utf8_idempotency_key_is_400(platform: Platform) -> None:
    body = json.dumps(submission()).encode()
    for key in (b"\xff\xfe", b"caf\xc3\xa9", b"\xe9t\xe9", b"x" * 201):
        answer = await ask(platform, "POST", "/executions", body, Idempotency_Key=key)
        refused(answer, 400, "invalid execution request", "request_id")


async def test_same_idempotency_key_with_another_body_is_409(platform: Platform) -> None:
    key = uuid.uuid4().hex
    body = submission("idem-409")
    first = await ask(
        platform, "POST", "/executions", json.dumps(body).encode(), Idempotency_Key=key
    )
    assert first.status == 201, first.body
    # the same request again, its keys in another order and the default priority spelt out
    same = json.dumps({"priority": 0, **dict(reversed(list(body.items())))}).encode()
    again = await ask(platform, "POST", "/executions", same, Idempotency_Key=key)
    assert again.status == 200 and again.json["id"] == first.json["id"]
    other = json.dumps({**body, "priority": 5}).encode()
    errors = refused(
        await ask(platform, "POST", "/executions", other, Idempotency_Key=key),
        409,
        "was used for another request",
    )
    assert errors == [{"path": "request_id", "message": "already used with a different body"}]
    _, listed = await platform.acall("GET", "/executions?limit=50")
    assert [e["id"] for e in listed if e["name"] == "idem-409"] == [first.json["id"]]
    await platform.wait_state(first.json["id"], *ENDED)  # what these tests ask needs no container


async def test_log_tail(platform: Platform) -> None:
    printer = "echo one; echo two; echo three"
    ended = (await platform.submit(zapp("tail", service("job", printer)), name="tail"))["id"]
    live = await platform.submit(
        zapp("tail-live", service("srv", f"{printer}; {SERVE_FOREVER}"), will_end=False),
        name="tail-live",
    )
    await platform.wait_state(live["id"], "running")
    await platform.wait_state(ended, "finished")
    for eid, name in ((ended, "job0"), (live["id"], "srv0")):
        route = f"/executions/{eid}/services/{name}/logs"

        async def full(route: str = route) -> bool:
            answer = await ask(platform, "GET", route)
            return answer.status == 200 and answer.body == b"one\ntwo\nthree\n"

        await wait_for(full, timeout=30, interval=0.2, what=f"the log of {route}")
        for tail, text in (("0", b""), ("2", b"two\nthree\n"), ("9", b"one\ntwo\nthree\n")):
            answer = await ask(platform, "GET", f"{route}?tail={tail}")
            assert (answer.status, answer.body) == (200, text), (route, tail, answer.body)
        for tail in ("-1", "x", "", "1.5"):
            refused(await ask(platform, "GET", f"{route}?tail={tail}"), 400, "", "tail")
    await platform.acall("POST", f"/executions/{live['id']}/terminate")
    await platform.wait_state(live["id"], "terminated")


async def test_body_too_large_is_413(platform: Platform) -> None:
    from services.api.http import MAX_BODY

    big = b'{"name": "' + b"x" * MAX_BODY + b'"}'
    refused(await ask(platform, "POST", "/executions", big), 413, "Too Large")


async def test_amqp_submissions_get_the_same_checks(platform: Platform, test_env: TestEnv) -> None:
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel()
        app = zapp("amqp-409", service("job", "exit 0"))
        first = m.SubmitRequest(name="amqp-409", application=app)
        created = await amqp_ask(channel, first, test_env.admin_token)
        assert created.status == 201, created.body
        other = m.SubmitRequest(id=first.id, name="amqp-409", application=app, priority=3)
        conflict = await amqp_ask(channel, other, test_env.admin_token)
        assert conflict.status == 409, conflict.body
        assert conflict.body["errors"] == [
            {"path": "request_id", "message": "already used with a different body"}
        ]
        nested: Any = 1
        for _ in range(200):
            nested = [nested]
        deep = await amqp_ask(
            channel, m.SubmitRequest(name="deep", application={"x": nested}), test_env.admin_token
        )
        assert deep.status == 400 and "nested too deep" in deep.body["error"], deep.body
        nul = await amqp_ask(
            channel,
            m.SubmitRequest(name="nul", application={"name": "a\x00"}),
            test_env.admin_token,
        )
        assert nul.status == 400 and nul.body["errors"][0]["path"] == "application.name"
        await platform.wait_state(
            created.body["id"], *ENDED
        )  # what these tests ask needs no container
    finally:
        await connection.close()

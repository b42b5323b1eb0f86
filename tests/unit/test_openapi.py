"""The OpenAPI document (services/api/openapi.py) against the code: the committed copy,
the app's routes, the request types; and the HTTP hygiene policy, without I/O."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
from aiohttp import web

from services.api import actions, hygiene, openapi, routetable, schemas
from services.api.http import Deps, make_app
from services.api.shop import Shop

ROOT = Path(__file__).resolve().parents[2]


def _app() -> web.Application:
    return make_app(Deps(None, None, "openapi", 1.0), Shop(ROOT / "zapps"))  # type: ignore[arg-type]


def test_committed_document_matches_the_code() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == openapi.render(), "run: python -m services.api.openapi > docs/openapi.json"
    assert json.loads(committed)["openapi"] == "3.1.0"


def test_document_is_valid_openapi_3_1() -> None:
    schemathesis.openapi.from_dict(openapi.document()).validate()


def test_every_served_route_is_declared_and_every_declared_route_served() -> None:
    app = _app()
    assert openapi.undocumented(app) == []
    served = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/v1")
        and r.method != "HEAD"
    }
    assert set(routetable.BY_KEY) == served
    assert len(routetable.BY_KEY) == len(routetable.ROUTES), "a route declared twice"


async def test_an_undeclared_route_stops_the_app_from_starting() -> None:
    app = _app()

    async def secret(_: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/api/v1/secret", secret)
    assert openapi.undocumented(app) == ["GET /api/v1/secret"]
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="GET /api/v1/secret"):
        await runner.setup()
    await runner.cleanup()


def test_every_operation_declares_its_access_and_errors() -> None:
    doc = openapi.document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            access = op["x-zoe-access"]
            statuses = set(op["responses"])
            assert {"421"} <= statuses, (method, path)
            if access == routetable.PUBLIC:
                assert op["security"] == [], (method, path)
                # bad credentials are a 401 of the sign-in itself
                assert "401" not in statuses or path == "/api/v1/login", (method, path)
            else:
                assert "security" not in op and "401" in statuses, (method, path)
            if access not in (routetable.PUBLIC, routetable.SIGNED_IN):
                assert "403" in statuses, (method, path)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= statuses, (method, path)


def test_public_routes_are_the_contracts() -> None:
    public = {r.key for r in routetable.ROUTES if r.access == routetable.PUBLIC}
    assert public == {
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/login"),
    }


def test_submit_request_type_names_the_fields_the_action_takes() -> None:
    fields = {f.encode_name for f in msgspec.structs.fields(schemas.SubmitRequest)}
    assert fields == actions.SUBMIT_FIELDS
    with pytest.raises(msgspec.ValidationError, match="extra"):
        msgspec.convert({"name": "x", "zapp": "hello", "extra": 1}, schemas.SubmitRequest)


def _execution(**extra: Any) -> dict[str, Any]:
    return {
        "id": 1,
        "name": "x",
        "user": "admin",
        "state": "running",
        "outcome": None,
        "error": None,
        "exit_code": None,
        "will_end": True,
        "size": 1.0,
        "priority": 0,
        "submitted_at": "2026-01-01T00:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "runtime_limit": None,
        "pending_reason": None,
        "schedulable": True,
        **extra,
    }


def test_response_types_take_what_the_store_answers() -> None:
    instance = {
        "id": 7,
        "name": "job0",
        "service": "job",
        "essential": True,
        "monitor": True,
        "state": "running",
        "node": "n1",
        "container_name": "zoe-1-job0",
        "container_id": "c",
        "exit_code": None,
        "reason": None,
        "restart_count": 0,
        "endpoints": {"web": "http://127.0.0.1:1/"},
        "cores": 0.5,
        "memory": 1 << 20,
        "updated_at": "2026-01-01T00:00:00.123456+00:00",
        "usage": {"cpu_percent": 0.4, "memory_bytes": 1, "sampled_at": "2026-01-01T00:00:00+00:00"},
    }
    msgspec.convert(_execution(services=[instance], warnings=[]), schemas.Submitted, strict=False)
    msgspec.convert(_execution(), schemas.ExecutionSummary, strict=False)
    with pytest.raises(msgspec.ValidationError, match="services"):
        msgspec.convert(_execution(), schemas.Execution, strict=False)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:1234", True),
        ("LOCALHOST", True),
        ("[::1]:8080", True),
        ("zoe.example.com", True),
        ("zoe.example.com:443", True),
        ("10.0.0.5:8080", True),
        ("10.0.0.5:8081", False),
        ("10.0.0.5", False),
        ("evil.example.com:8080", False),
        ("127.0.0.1.evil.example.com", False),
        ("", False),
        ("[::1", False),
    ],
)
def test_host_policy(host: str, allowed: bool) -> None:
    policy = hygiene.Policy.of("10.0.0.5", 8080, ["zoe.example.com"])
    assert policy.host_allowed(host) is allowed


def test_host_policy_of_a_wildcard_bind_and_star() -> None:
    policy = hygiene.Policy.of("0.0.0.0", 8080)
    assert policy.hosts == frozenset(hygiene.LOOPBACK)
    assert not policy.host_allowed("0.0.0.0:8080")
    assert hygiene.Policy.of("0.0.0.0", 8080, ["*"]).host_allowed("anything:1")
    assert hygiene.Policy.of("::1", 8080).host_allowed("[::1]:8080")


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://zoe.example.com", "zoe.example.com", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("https://evil.example.com", "127.0.0.1:8080", False),
        ("null", "127.0.0.1:8080", False),
        ("https://portal.example.com", "127.0.0.1:8080", True),
        ("https://portal.example.com/", "127.0.0.1:8080", True),
        ("ftp://127.0.0.1:8080", "127.0.0.1:8080", False),
    ],
)
def test_origin_policy(origin: str, host: str, allowed: bool) -> None:
    policy = hygiene.Policy.of("127.0.0.1", 8080, origins=["https://Portal.example.com"])
    assert policy.origin_allowed(origin, host) is allowed

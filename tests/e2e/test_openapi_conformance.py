"""The live api against its own OpenAPI document (GET /api/v1/openapi.json), with
schemathesis: requests drawn from the document for every operation the api serves, valid
and invalid, and the answers to a real execution's life; never a 5xx, every status,
content type and body as the document declares.

A drawn request never acts on anything of the session's: the stream of events (which
stays open) and terminations (which could end another test's execution) are not drawn;
they are called on an execution of this test's own. A drawn submission cannot name a
runnable ZApp (``application`` is any object, ``zapp`` any string: the shop's ids are
not drawn).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api import routetable
from tests.e2e.conftest import SERVE_FOREVER, Platform, service, zapp

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 12  # per operation and mode: about a minute for the whole document
NOT_DRAWN = {("GET", "/api/v1/events"), ("POST", "/api/v1/executions/{id}/terminate")}
DRAWN = sorted(r.key for r in routetable.ROUTES if r.key not in NOT_DRAWN)
# (an operation without parameters or body has no invalid request to draw)
CASES = [
    (method, path, mode)
    for method, path in DRAWN
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE
    or routetable.BY_KEY[method, path].params
    or routetable.BY_KEY[method, path].request is not None
]


def load(platform: Platform) -> Any:
    """The document as the live api serves it."""
    return schemathesis.openapi.from_url(platform.url + "/openapi.json")


def _operation(schema: Any, method: str, path: str) -> Any:
    return schema[path][method]


def _conform(platform: Platform, case: Any, **kwargs: Any) -> Any:
    base = platform.url.removesuffix("/api/v1")
    return case.call_and_validate(base_url=base, checks=CHECKS, timeout=30, **kwargs)


def draw(platform: Platform, method: str, path: str, mode: GenerationMode) -> None:
    """``EXAMPLES`` drawn requests of one operation, each answer checked."""
    operation = _operation(load(platform), method, path)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(generation_mode=mode))
    def one(case: Any) -> None:
        _conform(platform, case)

    one()


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
async def test_drawn_requests_conform(
    platform: Platform, method: str, path: str, mode: GenerationMode
) -> None:
    await asyncio.to_thread(draw, platform, method, path, mode)


def test_every_served_operation_is_drawn_or_called() -> None:
    served = {r.key for r in routetable.ROUTES}
    assert served == set(DRAWN) | NOT_DRAWN


class Calls:
    """Explicit requests to one operation after another, each answer checked."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.schema = load(platform)

    def __call__(self, method: str, path: str, status: int, **case: Any) -> Any:
        operation = _operation(self.schema, method, path)
        response = _conform(self.platform, operation.Case(**case))
        assert response.status_code == status, (method, path, response.text[:500])
        kind = response.headers.get("content-type", [""])[0]
        if "json" in kind:
            return json.loads(response.text)
        return response.text if kind.startswith("text/") else response.content


def _ids(shop: list[dict[str, Any]]) -> Iterator[str]:
    for entry in shop:
        yield entry["id"]


async def test_the_answers_about_a_real_execution_conform(platform: Platform) -> None:
    calls = Calls(platform)
    web = {
        "name": "web",
        "port_number": 8000,
        "protocol": "tcp",
        "url_template": "http://{ip_port}/",
    }
    served = service("web", SERVE_FOREVER)
    served["ports"] = [web]
    body = {"name": "conformance", "application": zapp("conformance", served, will_end=False)}
    key = {"Idempotency-Key": "conformance-1"}

    def life() -> None:
        first = calls("POST", "/api/v1/executions", 201, body=body, headers=key)
        assert calls("POST", "/api/v1/executions", 200, body=body, headers=key)["id"] == first["id"]
        calls("POST", "/api/v1/executions", 409, body={**body, "priority": 1}, headers=key)
        ident = {"id": first["id"]}
        calls("GET", "/api/v1/executions", 200, query={"limit": 5})
        calls("GET", "/api/v1/executions", 200, query={"state": "running"})
        calls("GET", "/api/v1/executions/{id}", 200, path_parameters=ident)
        calls("GET", "/api/v1/nodes", 200)
        calls("POST", "/api/v1/executions/{id}/terminate", 404, path_parameters={"id": 2**62})
        calls("GET", "/api/v1/health", 200)

    await asyncio.to_thread(life)
    eid = (await platform.acall("GET", "/executions?limit=1"))[1][0]["id"]
    running = await platform.wait_state(eid, "running")
    assert running["services"][0]["endpoints"], running

    def running_life() -> None:
        ident = {"id": eid}
        calls("GET", "/api/v1/executions/{id}", 200, path_parameters=ident)
        endpoints = calls("GET", "/api/v1/executions/{id}/endpoints", 200, path_parameters=ident)
        assert endpoints["web0"]["web"].startswith("http://"), endpoints
        logs = "/api/v1/executions/{id}/services/{instance}/logs"
        calls("GET", logs, 200, path_parameters={**ident, "instance": "web0"}, query={"tail": 5})
        calls("GET", logs, 404, path_parameters={**ident, "instance": "nope"})
        calls("POST", "/api/v1/executions/{id}/terminate", 202, path_parameters=ident)

    await asyncio.to_thread(running_life)
    await platform.wait_state(eid, "terminated")

    def ended() -> None:
        ident = {"id": eid}
        calls("GET", "/api/v1/executions/{id}", 200, path_parameters=ident)
        calls("POST", "/api/v1/executions/{id}/terminate", 409, path_parameters=ident)
        calls("GET", "/api/v1/executions", 200, query={"state": "terminated"})

    await asyncio.to_thread(ended)


async def test_the_answers_about_the_shop_conform(platform: Platform) -> None:
    calls = Calls(platform)

    def shop() -> None:
        entries = calls("GET", "/api/v1/zapps", 200)
        assert entries
        for zapp_id in _ids(entries):
            ident = {"id": zapp_id}
            entry = calls("GET", "/api/v1/zapps/{id}", 200, path_parameters=ident)
            logo = 200 if entry["logo"] else 404
            calls("GET", "/api/v1/zapps/{id}/logo", logo, path_parameters=ident)
            rendered = calls(
                "POST", "/api/v1/zapps/{id}/render", 200, path_parameters=ident, body={}
            )
            calls("POST", "/api/v1/zapps/validate", 200, body=rendered["description"])
        calls("POST", "/api/v1/zapps/validate", 422, body={"name": "x"})
        calls("GET", "/api/v1/zapps/{id}", 404, path_parameters={"id": "no-such-zapp"})

    await asyncio.to_thread(shop)

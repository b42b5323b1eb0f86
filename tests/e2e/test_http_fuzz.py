"""Random and malformed requests through every HTTP route of the api process: never a
5xx, always JSON where JSON is due (a small budget; tests/bench/fuzz_http.py runs more)."""

from __future__ import annotations

import asyncio

import pytest

from tests import fuzzing, rawhttp
from tests.e2e.conftest import Platform

pytestmark = pytest.mark.e2e

EXAMPLES_PER_ROUTE = 25


def test_routes_are_all_fuzzed() -> None:
    paths = {str(r) for r in fuzzing.routes()}
    assert "POST /api/v1/executions" in paths and "GET /api/v1/events" in paths
    assert len(paths) >= 14, paths


def _judge(route: fuzzing.Route, req: fuzzing.Request, answer: rawhttp.Answer) -> None:
    wrong = fuzzing.problem(route, answer)
    assert wrong is None, f"{route}: {req.target[:300]!r} {req.body!r:.300} -> {wrong}"


@pytest.mark.parametrize("route", fuzzing.routes(), ids=str)
async def test_route_survives_random_requests(platform: Platform, route: fuzzing.Route) -> None:
    # an admin of its own: a fuzzed logout revokes this token, not the session admin's
    token = await platform.new_user("fuzzer", "admin")
    await asyncio.to_thread(fuzzing.fuzz, platform.port, route, EXAMPLES_PER_ROUTE, _judge, token)

"""Random and malformed requests for every HTTP route under /api/v1 (hypothesis
strategies), shared by the fuzz test (a small budget) and tests/bench/fuzz_http.py (a
large one). The only property: the api answers below 500, and with JSON wherever it
answers an error or a JSON route.

Nothing drawn here can start a workload: execution ids are never small numbers (so no
existing execution is terminated), and a submission names no shop ZApp.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import rawhttp

# Routes whose success is not JSON: what they answer instead.
NOT_JSON = {
    "/api/v1/events": "text/event-stream",
    "/api/v1/zapps/{id}/logo": "image/png",
    "/api/v1/executions/{id}/services/{instance}/logs": "text/plain",
}
# aiohttp's parser refuses a longer request line itself (text/plain), before the app.
MAX_TARGET = 8000
SHOP_IDS = ("hello", "spark", "jupyter", "base", "no-such-zapp")


@dataclass(frozen=True)
class Route:
    """One route: its method and path template (``{name}`` for a path segment)."""

    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def routes() -> list[Route]:
    """Every route under /api/v1, read from the app's router."""
    from services.api.http import Deps, make_app
    from services.api.shop import Shop
    from tests.e2e.conftest import ROOT

    app = make_app(Deps(None, None, "fuzz", 1.0), Shop(ROOT / "zapps"))  # type: ignore[arg-type]
    out = {
        Route(r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/api/v1")
        and r.method != "HEAD"
    }
    return sorted(out, key=str)


def _not_an_existing_id(s: str) -> bool:
    return not (s.isascii() and s.isdigit() and len(s) <= 12)


TEXT = st.text(max_size=40)  # any code point, NUL and lone surrogates included
NUMBERISH = st.sampled_from(
    [
        "\u00b2",
        "\u0661",
        "1\u0660",
        "-1",
        "+1",
        " 1",
        "1_0",
        "0x10",
        "1e3",
        "",
        "\x00",
        str(2**63),
        str(2**63 - 1),
        "9" * 40,
        "1" * 5000,
    ]
)
EXECUTION_IDS = st.one_of(
    NUMBERISH,
    st.integers(min_value=10**12, max_value=10**30).map(str),
    TEXT,
).filter(_not_an_existing_id)
SEGMENTS: dict[str, st.SearchStrategy[str]] = {
    "id": EXECUTION_IDS,
    "instance": st.one_of(TEXT, st.sampled_from(["job0", "%00", "a/b", ".."])),
}
QUERY_KEYS = st.sampled_from(["state", "limit", "tail", "follow", "execution", "x"])
QUERY_VALUES = st.one_of(
    TEXT, NUMBERISH, st.sampled_from(["running", "finished", "1", "true", "100"])
)

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=20,
)
SUBMISSIONS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(TEXT, JSON_VALUES),
        "application": JSON_VALUES,
        "zapp": st.one_of(TEXT.filter(lambda s: s not in SHOP_IDS), JSON_VALUES),
        "params": JSON_VALUES,
        "resources": JSON_VALUES,
        "priority": JSON_VALUES,
        "extra": JSON_VALUES,
    },
)


def _deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


ODD_BODIES = st.one_of(
    st.binary(max_size=64),
    st.integers(min_value=1, max_value=3000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(min_value=1, max_value=3000).map(_deep),
    st.sampled_from(
        [
            b"",
            b"NaN",
            b"[Infinity]",
            b"1e999",
            b'"\\u0000"',
            b'["\\ud800"]',
            b"\xef\xbb\xbf{}",
            b'{"priority": ' + b"7" * 4400 + b"}",
            b'{"name": "\\udfff"}',
        ]
    ),
)
BODIES = st.one_of(
    SUBMISSIONS.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(lambda b: json.dumps(b).encode("utf-8", "surrogatepass")),
    ODD_BODIES,
)
HEADER_BYTES = st.binary(min_size=1, max_size=40).filter(
    lambda b: all(c >= 0x20 and c != 0x7F for c in b) and b.strip() == b
)
CONTENT_TYPES = st.one_of(
    st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"text/plain", b""]),
    HEADER_BYTES.map(lambda cs: b"application/json; charset=" + cs),
)


@dataclass(frozen=True)
class Request:
    """One drawn request."""

    method: str
    target: bytes
    body: bytes | None
    headers: dict[str, bytes | str]


@st.composite
def requests(draw: st.DrawFn, route: Route, token: str | None = None) -> Request:
    """A request for ``route``: random segments, query, headers and (for a POST, PUT or
    PATCH) body; sent with ``token`` (when given) as its bearer."""
    path = route.path
    for name in re.findall(r"\{(\w+)\}", route.path):
        segment = draw(st.sampled_from(SHOP_IDS)) if "zapps" in path else None
        if segment is None or draw(st.booleans()):
            segment = draw(SEGMENTS.get(name, TEXT))
        encoded = quote(segment.encode("utf-8", "surrogatepass"), safe="")
        path = path.replace("{" + name + "}", encoded, 1)
    query = [
        f"{k}={quote(v.encode('utf-8', 'surrogatepass'))}"
        for k, v in draw(st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=3))
    ]
    while query and len(path) + sum(len(q) + 1 for q in query) > MAX_TARGET:
        query.pop()
    target = path + ("?" + "&".join(query) if query else "")
    headers: dict[str, bytes | str] = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None
    if route.method in ("POST", "PUT", "PATCH"):
        body = draw(BODIES)
        headers["Content-Type"] = draw(CONTENT_TYPES)
        if draw(st.booleans()):
            headers["Idempotency-Key"] = draw(HEADER_BYTES)
    return Request(route.method, target.encode(), body, headers)


def problem(route: Route, answer: rawhttp.Answer) -> str | None:
    """What is wrong with an answer, if anything."""
    if answer.status >= 500:
        return f"status {answer.status}: {answer.body[:300]!r}"
    if answer.status == 204:
        return f"status 204 with a body: {answer.body[:300]!r}" if answer.body else None
    expected = NOT_JSON.get(route.path, "application/json")
    if answer.status >= 400 or expected == "application/json":
        if not answer.is_json:
            return f"status {answer.status} is not JSON: {answer.headers.get('content-type')}"
        try:
            answer.json  # noqa: B018 (parses it)
        except ValueError:
            return f"status {answer.status}: malformed JSON {answer.body[:300]!r}"
    elif not answer.headers.get("content-type", "").startswith(expected):
        return f"status {answer.status}: {answer.headers.get('content-type')} for {expected}"
    return None


def fuzz(
    port: int,
    route: Route,
    max_examples: int,
    seen: Callable[[Route, Request, rawhttp.Answer], Any],
    token: str | None = None,
) -> None:
    """Send ``max_examples`` drawn requests for ``route`` as ``token``'s user; ``seen``
    judges each answer (raising makes hypothesis shrink to the smallest failing one)."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(route, token))
    def one(req: Request) -> None:
        answer = rawhttp.request(port, req.method, req.target, req.body, req.headers)
        seen(route, req, answer)

    one()

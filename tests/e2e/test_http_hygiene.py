"""HTTP hygiene (services/api/hygiene.py) against api processes: a Host that is not one
of the api's names (DNS rebinding) is a 421, a cross-site state-changing request a 403,
a body that is not JSON a 415, each with the api's JSON error and nothing stored; and
the api listens on loopback only unless told otherwise."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.api.limits import MAX_ID
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import ROOT, Platform, ServiceProcess, _free_port, service, zapp

pytestmark = pytest.mark.e2e

ENDED = ("finished", "failed")


async def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    **headers: str,
) -> tuple[int, Any]:
    """One request to the api on ``port`` with exactly these headers (``Host`` too),
    as ``token``'s user; the answer's status and its JSON (or text)."""
    names = {k.replace("_", "-"): v for k, v in headers.items()}
    names.setdefault("Host", f"127.0.0.1:{port}")
    if token is not None:
        names["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http,
        http.request(
            method, f"http://127.0.0.1:{port}/api/v1{path}", data=body, headers=names
        ) as r,
    ):
        text = await r.text()
        if r.content_type == "application/json":
            return r.status, json.loads(text)
        return r.status, text


def submission(name: str) -> bytes:
    app = zapp(f"{name}-app", service("job", "exit 0"))
    return json.dumps({"name": name, "application": app}).encode()


def refused(answer: tuple[int, Any], status: int, header: str) -> None:
    code, body = answer
    assert code == status, answer
    assert isinstance(body, dict) and set(body) == {"error", "errors"}, body
    assert [e["path"] for e in body["errors"]] == [header], body


async def stored(platform: Platform, name: str) -> list[dict[str, Any]]:
    status, rows = await platform.acall("GET", "/executions?limit=10000")
    assert status == 200, rows
    return [r for r in rows if r["name"] == name]


async def test_a_host_not_named_is_421_and_stores_nothing(platform: Platform) -> None:
    port, admin = platform.port, platform.env.admin_token
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, body = await send(port, "GET", "/health", Host=host)
        assert status == 200, (host, body)
    # a page of rebind.example whose name now resolves to 127.0.0.1
    for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.rebind.example:{port}"):
        refused(await send(port, "GET", "/health", Host=host), 421, "Host")
        refused(await send(port, "GET", "/executions", Host=host), 421, "Host")
        refused(await send(port, "GET", "/executions", None, admin, Host=host), 421, "Host")
    answer = await send(
        port,
        "POST",
        "/executions",
        submission("rebound"),
        admin,
        Host=f"rebind.example:{port}",
        Content_Type="application/json",
    )
    refused(answer, 421, "Host")
    assert await stored(platform, "rebound") == []
    # no Host at all (HTTP/1.0) names nothing either
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /api/v1/health HTTP/1.0\r\n\r\n")
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    assert head.split()[1] == b"421", head
    # the process's probes are held to the same names
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/metrics"
        async with http.get(url, headers={"Host": "rebind.example"}) as r:
            assert r.status == 421
        async with http.get(url) as r:
            assert r.status == 200


async def test_a_cross_site_state_change_is_403_and_stores_nothing(platform: Platform) -> None:
    port, admin = platform.port, platform.env.admin_token
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}"):
        answer = await send(
            port,
            "POST",
            "/executions",
            submission("cross-site"),
            admin,
            Content_Type="application/json",
            Origin=origin,
        )
        refused(answer, 403, "Origin")
        refused(
            await send(port, "POST", f"/executions/{MAX_ID}/terminate", None, admin, Origin=origin),
            403,
            "Origin",
        )
    assert await stored(platform, "cross-site") == []
    # reading from another origin is not refused here (the browser keeps the answer from
    # the page: no CORS header is sent)
    status, _ = await send(
        port, "GET", "/executions?limit=1", None, admin, Origin="http://evil.example"
    )
    assert status == 200
    # the api's own origin may act, and so may a request without Origin (the CLI)
    status, body = await send(
        port,
        "POST",
        "/executions",
        submission("same-site"),
        admin,
        Content_Type="application/json",
        Origin=f"http://127.0.0.1:{port}",
    )
    assert status == 201, body
    await platform.wait_state(body["id"], *ENDED)


async def test_a_body_that_is_not_json_is_415_and_stores_nothing(platform: Platform) -> None:
    port, admin = platform.port, platform.env.admin_token
    body = submission("not-json")
    for kind in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = {} if kind is None else {"Content_Type": kind}
        for route in ("/executions", "/zapps/validate"):
            answer = await send(port, "POST", route, body, admin, **headers)
            refused(answer, 415, "Content-Type")
        answer = await send(port, "POST", "/zapps/hello/render", b"{}", admin, **headers)
        refused(answer, 415, "Content-Type")
    assert await stored(platform, "not-json") == []
    # JSON with a charset, or a +json type, is JSON; a route without a body does not care
    for kind in ("application/json; charset=utf-8", "application/vnd.zoe+json"):
        status, answer = await send(
            port, "POST", "/zapps/hello/render", b"{}", admin, Content_Type=kind
        )
        assert status == 200, (kind, answer)
    status, answer = await send(port, "POST", f"/executions/{MAX_ID}/terminate", None, admin)
    assert status == 404, answer
    # a route whose JSON body is optional: none is fine, a body not JSON is not
    drain = "/nodes/no-such-node/drain"
    status, answer = await send(port, "POST", drain, None, admin)
    assert status == 404, answer
    answer = await send(port, "POST", drain, b"deadline=1", admin, Content_Type="text/plain")
    refused(answer, 415, "Content-Type")


def _outside_address() -> str | None:
    """An address of this host that is not loopback (the one its default route uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_the_api_listens_on_loopback_only(platform: Platform) -> None:
    address = _outside_address()
    if address is None:
        pytest.skip("this host has no address but loopback")
    with pytest.raises(OSError):
        socket.create_connection((address, platform.port), timeout=5).close()
    socket.create_connection(("127.0.0.1", platform.port), timeout=5).close()


@pytest.fixture(scope="module")
async def exposed(test_env: TestEnv, log_dir: Path) -> AsyncIterator[tuple[int, str]]:
    """A second api of the session's platform, told its public name and a portal's
    origin, as behind a reverse proxy; its port."""
    port = _free_port()
    env = test_env.env(
        ZOE_HTTP_PORT=str(port),
        ZOE_ZAPPS_ROOT=str(ROOT / "zapps"),
        ZOE_HTTP_ALLOWED_HOSTS="zoe.example.com, intranet:8443",
        ZOE_HTTP_ALLOWED_ORIGINS="https://portal.example.com",
    )
    api = ServiceProcess("api-exposed", "services.api", env, log_dir)
    api.start()
    try:

        async def up() -> bool:
            try:
                return (await send(port, "GET", "/health"))[0] == 200
            except aiohttp.ClientError:
                return False

        await wait_for(up, timeout=60, interval=0.2, what="the exposed api")
        yield port, test_env.admin_token
    finally:
        api.stop()


async def test_configured_names_and_origins(exposed: tuple[int, str]) -> None:
    port, admin = exposed
    for host in ("zoe.example.com", "zoe.example.com:443", "intranet:8443", f"127.0.0.1:{port}"):
        status, body = await send(port, "GET", "/health", Host=host)
        assert status == 200, (host, body)
    for host in ("intranet:8080", "other.example.com"):
        refused(await send(port, "GET", "/health", Host=host), 421, "Host")
    render = "/zapps/hello/render"
    for origin, host in (
        ("https://zoe.example.com", "zoe.example.com"),  # its own, through the proxy
        ("https://portal.example.com", "zoe.example.com"),  # configured
    ):
        status, body = await send(
            port,
            "POST",
            render,
            b"{}",
            admin,
            Host=host,
            Origin=origin,
            Content_Type="application/json",
        )
        assert status == 200, (origin, body)
    answer = await send(
        port,
        "POST",
        render,
        b"{}",
        admin,
        Host="zoe.example.com",
        Origin="https://evil.example",
        Content_Type="application/json",
    )
    refused(answer, 403, "Origin")

"""Long-lived responses are bounded: event streams and log follows beyond their cap get a
429, and a client that stops reading (or goes away) gives its slot back.

The api runs in this process (``make_app`` on the session's database and broker, the
caps made small), next to the platform whose executor answers for the logs.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from common import messages as m
from common.bus import Bus
from services.api import events, limits
from services.api.events import HUB, Hub
from services.api.http import FOLLOWS, Deps, make_app
from services.api.shop import Shop
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import ROOT, SERVE_FOREVER, Platform, service, zapp

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def serving(
    pool: asyncpg.Pool,
    bus: Bus,
    env: TestEnv,
    *,
    streams: int = limits.MAX_EVENT_STREAMS,
    follows: int = limits.MAX_LOG_FOLLOWS,
    sndbuf: int | None = None,
) -> AsyncIterator[tuple[web.Application, int]]:
    """The api's HTTP app on a port of its own with the caps given; ``sndbuf`` shrinks
    each connection's send buffer (accepted sockets inherit the listener's)."""
    hub = Hub()
    await hub.attach(bus)
    app = make_app(Deps(pool, bus, env.deployment, 5.0), Shop(ROOT / "zapps"))
    app[HUB] = hub
    app[events.STREAMS] = limits.Slots(streams, "event streams")
    app[FOLLOWS] = limits.Slots(follows, "log follows")
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    sock = socket.socket()
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield app, sock.getsockname()[1]
    finally:
        await runner.cleanup()


def _admin(env: TestEnv) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.admin_token}"}


async def test_event_streams_are_capped(
    pool: asyncpg.Pool, bus: Bus, test_env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "KEEP_ALIVE", 0.2)  # a gone client is noticed at a write
    async with serving(pool, bus, test_env, streams=2) as (app, port):
        slots = app[events.STREAMS]
        url = f"http://127.0.0.1:{port}/api/v1/events"
        async with aiohttp.ClientSession(headers=_admin(test_env)) as session:
            first = await session.get(url)
            second = await session.get(url)
            for r in (first, second):
                assert r.status == 200
                assert (await r.content.readline()).startswith(b": connected")
            async with session.get(url) as third:
                assert third.status == 429
                body = await third.json()
            assert body == {
                "error": "too many event streams open (at most 2); retry later",
                "errors": [],
            }
            first.close()
            await wait_for(lambda: slots.held == 1, timeout=10, what="the slot back")
            async with session.get(url) as again:
                assert again.status == 200
            second.close()
            await wait_for(lambda: slots.held == 0, timeout=10, what="every slot back")


def _read_to_end(sock: socket.socket, deadline: float) -> int:
    """Bytes the server had sent before it ended the connection (AssertionError if it
    keeps sending until the deadline)."""
    total = 0
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return total
        if not chunk:
            return total
        total += len(chunk)
    raise AssertionError(f"the connection was not dropped ({total} bytes read)")


async def test_a_client_that_stops_reading_is_dropped(
    pool: asyncpg.Pool, bus: Bus, test_env: TestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "WRITE_TIMEOUT", 0.5)
    async with serving(pool, bus, test_env, sndbuf=4096) as (app, port):
        slots = app[events.STREAMS]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        try:
            bearer = f"Authorization: Bearer {test_env.admin_token}\r\n".encode()
            client.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + bearer + b"\r\n")
            await wait_for(lambda: slots.held == 1, timeout=10, what="the stream open")
            changes = [m.StateChange(execution_id=1, state="running", at=time.time())] * 100

            def flooded() -> bool:  # more events than a stalled client's buffers hold
                app[HUB].deliver(changes)
                return slots.held == 0

            await wait_for(flooded, timeout=30, interval=0.01, what="the stalled client dropped")
            sent = await asyncio.to_thread(_read_to_end, client, time.monotonic() + 20)
            assert sent < 4 * 1024 * 1024  # what the buffers held, not the whole flood
        finally:
            client.close()


async def test_log_follows_are_capped(
    platform: Platform,
    pool: asyncpg.Pool,
    bus: Bus,
    test_env: TestEnv,
) -> None:
    server = zapp("follow-cap", service("srv", SERVE_FOREVER), will_end=False)
    eid = (await platform.submit(server, name="follow-cap"))["id"]
    await platform.wait_state(eid, "running")
    try:
        async with serving(pool, bus, test_env, follows=1) as (app, port):
            slots = app[FOLLOWS]
            url = f"http://127.0.0.1:{port}/api/v1/executions/{eid}/services/srv0/logs"
            async with aiohttp.ClientSession(headers=_admin(test_env)) as session:
                first = await session.get(url, params={"follow": "1"})
                assert first.status == 200
                async with session.get(url, params={"follow": "1"}) as second:
                    assert second.status == 429
                    assert (await second.json())["error"].startswith("too many log follows")
                async with session.get(url, params={"tail": "5"}) as plain:
                    assert plain.status == 200  # a plain read takes no slot
                first.close()  # the log is quiet: the follow must notice without writing
                await wait_for(lambda: slots.held == 0, timeout=10, what="the follow's slot back")
                async with session.get(url, params={"follow": "1"}) as again:
                    assert again.status == 200
    finally:
        await platform.acall("POST", f"/executions/{eid}/terminate")
        await platform.wait_state(eid, "terminated")

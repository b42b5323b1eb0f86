"""The api process: the HTTP gateway and the outbox relay for what it stores."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import structlog
from aiohttp import web

from common import db
from common.bus import Bus
from common.outbox import Relay
from common.settings import ApiSettings
from services.api.http import Deps, make_app
from services.api.shop import Shop

log = structlog.get_logger("api")


async def serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Serve HTTP until ``stop`` is set; then finish requests, then close the bus and pool."""
    await db.migrate(settings.database_url)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(db.pool(settings.database_url))
        bus = await stack.enter_async_context(Bus(settings.amqp_url, name="api"))
        app = make_app(
            Deps(pool, bus, settings.deployment, settings.rpc_timeout),
            Shop(Path(settings.zapps_root)),
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info("api.listening", host=settings.http_host, port=settings.http_port)
        relay_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(Relay(pool, bus).run(relay_stop))
            await stop.wait()
            await site.stop()  # no new requests; the relay still publishes what was stored
            relay_stop.set()

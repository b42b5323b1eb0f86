"""The api process: the HTTP gateway, the AMQP request interface, the state-event
stream, and the outbox relay for what it stores.

Shutdown order: stop accepting HTTP requests and AMQP requests (in-flight ones finish),
then stop the relay (what was stored is published first), then close the bus and pool.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import structlog
from aiohttp import web

from common import db
from common import messages as m
from common.bus import API_QUEUE, Bus
from common.outbox import Relay
from common.settings import ApiSettings
from services.api import amqp
from services.api.events import HUB, Hub
from services.api.http import Deps, make_app
from services.api.shop import Shop

log = structlog.get_logger("api")


async def serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    await db.migrate(settings.database_url)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(db.pool(settings.database_url))
        bus = await stack.enter_async_context(
            Bus(settings.amqp_url, name="api", prefetch=settings.prefetch)
        )
        shop = Shop(Path(settings.zapps_root))
        hub = Hub()
        await hub.attach(bus)
        app = make_app(Deps(pool, bus, settings.deployment, settings.rpc_timeout), shop)
        app[HUB] = hub
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.drain_timeout)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info("api.listening", host=settings.http_host, port=settings.http_port)

        deps = amqp.Deps(pool=pool, shop=shop, deployment=settings.deployment)

        async def on_request(msg: m.Message) -> m.ApiReply:
            return await amqp.handle(msg, deps)

        relay_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(Relay(pool, bus).run(relay_stop))
            await bus.consume(API_QUEUE, m.ApiInbox, on_request)
            await stop.wait()
            await bus.stop_consuming(settings.drain_timeout)
            await site.stop()
            relay_stop.set()

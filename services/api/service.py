"""The api process: the HTTP gateway, the AMQP request interface, the state-event
stream, and the outbox relay for what it stores.

Shutdown is the runtime's (common/runtime.py): AMQP requests drain, then the HTTP site
stops accepting (in-flight requests finish), then the relay stops (what was stored is
published first), then the bus and the pool close.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from aiohttp import web

from common import messages as m
from common import routes
from common.bus import incoming_headers
from common.runtime import Runtime
from common.settings import ApiSettings
from services.api import amqp, auth, hygiene, store
from services.api.events import HUB, Hub
from services.api.http import Deps, make_app
from services.api.limits import MAX_BODY
from services.api.shop import Shop

log = structlog.get_logger("api")


async def serve(settings: ApiSettings, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    async with Runtime("api", settings, stop) as rt:
        pool = await rt.open_pool()
        auth.remember(pool, settings.auth_cache_ttl)
        store.group_submissions(pool, settings.submit_group)
        bus = await rt.open_bus()
        shop = Shop(Path(settings.zapps_root))
        hub = Hub()
        await hub.attach(bus)
        app = make_app(
            Deps(pool, bus, settings.deployment, settings.rpc_timeout, settings.public_url),
            shop,
            event_streams=settings.max_event_streams,
            log_follows=settings.max_log_follows,
            probe=rt.probe,
            auth_backend=settings.auth_backend,
            policy=hygiene.Policy.from_settings(settings),
        )
        app[HUB] = hub
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.drain_timeout)
        await runner.setup()
        rt.on_closed(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        log.info("api.listening", host=settings.http_host, port=settings.http_port)
        rt.on_drained(site.stop)  # in-flight HTTP requests finish before the relay stops

        deps = amqp.Deps(
            pool=pool, shop=shop, deployment=settings.deployment, public_url=settings.public_url
        )

        async def on_request(msg: m.Message) -> m.ApiReply:
            return await amqp.handle(msg, deps, incoming_headers())

        await rt.run_relay(pool, bus)
        await rt.consume(
            routes.API_REQUESTS, on_request, refusal_reply=amqp.error_reply, max_body=MAX_BODY
        )
        await rt.serve()

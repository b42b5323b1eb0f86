"""The monitor process: facts in, verdicts out, and the watch over node heartbeats.

Node liveness is judged from the heartbeats the monitor itself receives (not from a
column another service writes), so a stopped scheduler never makes nodes look lost.
At start every known node gets a full timeout of grace.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import structlog

from common import db
from common import messages as m
from common.bus import MONITOR_QUEUE, Bus
from common.lifecycle import wait_or_stop
from common.outbox import Relay
from common.settings import MonitorSettings
from services.monitor import handlers

log = structlog.get_logger("monitor")


async def serve(settings: MonitorSettings, stop: asyncio.Event) -> None:
    """Run the monitor until ``stop`` is set."""
    await db.migrate(settings.database_url)
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(db.pool(settings.database_url))
        bus = await stack.enter_async_context(
            Bus(settings.amqp_url, name="monitor", prefetch=settings.prefetch)
        )
        deps = handlers.Deps(pool=pool, last_seen={}, clock=time.monotonic)
        for row in await pool.fetch("SELECT name FROM nodes WHERE state = 'up'"):
            deps.last_seen[row["name"]] = deps.clock()

        async def on_message(msg: m.Message) -> None:
            await handlers.HANDLERS[type(msg)](msg, deps)

        loops_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(Relay(pool, bus).run(loops_stop))
            tg.create_task(_watch_nodes(pool, deps, settings, loops_stop))
            await bus.consume(MONITOR_QUEUE, m.MonitorInbox, on_message)
            await stop.wait()
            await bus.stop_consuming(settings.drain_timeout)
            loops_stop.set()


async def _watch_nodes(
    pool: asyncpg.Pool, deps: handlers.Deps, settings: MonitorSettings, stop: asyncio.Event
) -> None:
    """Declare lost every node silent for longer than ``node_timeout``."""
    while not await wait_or_stop(stop, settings.check_interval):
        now = deps.clock()
        for node, seen in list(deps.last_seen.items()):
            if now - seen <= settings.node_timeout:
                continue
            try:
                await handlers.declare_lost(pool, node)
                del deps.last_seen[node]
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("node.check_failed", node=node, error=repr(exc))

"""The monitor process: facts in, verdicts out, and the watch over node heartbeats.

Node liveness is judged from the heartbeats the monitor itself receives (not from a
column another service writes), so a stopped scheduler never makes nodes look lost.
At start every known node gets a full timeout of grace, and so after the monitor's own
link to the broker was down: heartbeats could not reach it, so their silence tells
nothing about the nodes (a broker restart must not make every node look lost).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import asyncpg
import structlog

from common import db
from common import messages as m
from common.bus import MONITOR_QUEUE, Bus, heartbeat_queue
from common.lifecycle import wait_or_stop
from common.outbox import Relay
from common.settings import MonitorSettings
from services.monitor import handlers

log = structlog.get_logger("monitor")

PROBE_KEY = "zoe.monitor.probe"  # no queue has this name: probes are dropped


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
            tg.create_task(_watch_nodes(pool, bus, deps, settings, loops_stop))
            tg.create_task(_store_usage(pool, deps, settings, loops_stop))
            await bus.consume(MONITOR_QUEUE, m.MonitorInbox, on_message)
            await bus.consume(heartbeat_queue(MONITOR_QUEUE), m.MonitorInbox, on_message)
            await stop.wait()
            await bus.stop_consuming(settings.drain_timeout)
            loops_stop.set()


async def _watch_nodes(
    pool: asyncpg.Pool,
    bus: Bus,
    deps: handlers.Deps,
    settings: MonitorSettings,
    stop: asyncio.Event,
) -> None:
    """Declare lost every node silent for longer than ``node_timeout``, while the broker
    answers; once it answers again after an outage, every node gets a fresh timeout."""
    broker_up = True
    while not await wait_or_stop(stop, settings.check_interval):
        if not await _broker_answers(bus, timeout=max(settings.check_interval, 1.0)):
            if broker_up:
                log.warning("monitor.broker_unreachable")
            broker_up = False
            continue
        if not broker_up:
            log.info("monitor.broker_back", grace=settings.node_timeout)
            handlers.grant_grace(deps)
            broker_up = True
            continue
        try:
            await handlers.check_nodes(pool, deps, settings.node_timeout)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("node.check_failed", error=repr(exc))


async def _store_usage(
    pool: asyncpg.Pool, deps: handlers.Deps, settings: MonitorSettings, stop: asyncio.Event
) -> None:
    """Write the containers' usage that heartbeats brought, every ``usage_store_interval``."""
    while not await wait_or_stop(stop, settings.usage_store_interval):
        try:
            await handlers.store_usage(pool, deps)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("usage.store_failed", error=repr(exc))


async def _broker_answers(bus: Bus, *, timeout: float) -> bool:
    """Whether the broker confirms a publish: a probe to the default exchange that no
    queue is named after, so it goes nowhere."""
    try:
        async with asyncio.timeout(timeout):
            await bus.publish_raw([("", PROBE_KEY, b"")])
    except Exception:  # any failure of the link means the same: heartbeats cannot come
        return False
    return True

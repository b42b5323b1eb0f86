"""The monitor process: facts in, verdicts out, and the watch over node heartbeats.

Node liveness is judged from the heartbeats the monitor itself receives (not from a
column another service writes), so a stopped scheduler never makes nodes look lost.
At start every known node gets a full timeout of grace, and so after the monitor's own
link to the broker was down: heartbeats could not reach it, so their silence tells
nothing about the nodes (a broker restart must not make every node look lost).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator

import asyncpg
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common import messages as m
from common import metrics, routes
from common.bus import Bus
from common.runtime import Runtime
from common.settings import MonitorSettings
from services.monitor import handlers

log = structlog.get_logger("monitor")


async def serve(settings: MonitorSettings, stop: asyncio.Event) -> None:
    """Run the monitor until ``stop`` is set."""
    async with Runtime("monitor", settings, stop) as rt:
        pool = await rt.open_pool()
        bus = await rt.open_bus()
        deps = handlers.Deps(
            pool=pool,
            last_seen={},
            clock=time.monotonic,
            say=bus.publish_many,
            restart_grace=settings.node_restart_grace,
        )
        rt.probe.registry.register(HeartbeatAges(deps))
        await rt.serve_metrics()
        for row in await pool.fetch("SELECT name FROM nodes WHERE state = 'up'"):
            deps.last_seen[row["name"]] = deps.clock()

        async def on_message(msg: m.Message) -> None:
            await handlers.HANDLERS[type(msg)](msg, deps)

        await rt.run_relay(pool, bus)
        watch = NodeWatch(pool, bus, deps, settings)
        await rt.every("nodes.check", settings.check_interval, watch.check)
        store = functools.partial(handlers.store_usage, pool, deps)
        await rt.every("usage.store", settings.usage_store_interval, store)
        await rt.consume(routes.MONITOR, on_message)
        alive = functools.partial(handlers.on_alive_many, deps=deps)
        await rt.consume(routes.MONITOR_HEARTBEATS, on_message, batches={m.NodeAlive: alive})
        await rt.serve()


class HeartbeatAges(Collector):
    """``zoe_node_heartbeat_age_seconds{node}``: seconds since each node's last heartbeat
    reached this monitor, read from its ``last_seen`` at each scrape."""

    def __init__(self, deps: handlers.Deps) -> None:
        self._deps = deps

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            metrics.HEARTBEAT_AGE,
            "Seconds since the monitor last heard a node's heartbeat (nodes it watches).",
            labels=["node"],
        )
        now = self._deps.clock()
        for node, seen in sorted(self._deps.last_seen.items()):
            family.add_metric([node], max(0.0, now - seen))
        yield family


class NodeWatch:
    """Declares lost every node silent for longer than ``node_timeout``, while the
    broker answers; once it answers again after an outage, every node gets a fresh
    timeout."""

    def __init__(
        self, pool: asyncpg.Pool, bus: Bus, deps: handlers.Deps, settings: MonitorSettings
    ) -> None:
        self._pool, self._bus, self._deps, self._settings = pool, bus, deps, settings
        self._broker_up = True

    async def check(self) -> None:
        """One round of the watch (every ``check_interval``)."""
        interval = self._settings.check_interval
        if not await self._bus.ping(timeout=max(interval, 1.0)):
            if self._broker_up:
                log.warning("monitor.broker_unreachable")
            self._broker_up = False
            return
        if not self._broker_up:
            log.info("monitor.broker_back", grace=self._settings.node_timeout)
            handlers.grant_grace(self._deps)
            self._broker_up = True
            return
        await handlers.check_nodes(self._pool, self._deps, self._settings.node_timeout)

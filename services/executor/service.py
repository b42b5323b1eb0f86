"""Wiring of one node's executor: resources, queue, reconcile, loops, shutdown.

Shutdown order, and why: stop fetching commands and let in-flight ones finish (they
need the engine and the bus, and their facts must be published before their ack); then
cancel the heartbeat and event loops (whatever they were reporting, the next start's
reconcile reports again); then close the bus, then the Docker client (the exit stack
closes in reverse order of opening).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiodocker
import structlog

from common import messages as m
from common.bus import Bus, declare_executor_queue
from common.settings import ExecutorSettings
from services.executor.engine import DockerEngine, Engine
from services.executor.handlers import Executor
from services.executor.loops import EVENTS_OVERLAP, heartbeat_loop, reconcile, watch_events

log = structlog.get_logger("executor")


async def serve(settings: ExecutorSettings, stop: asyncio.Event) -> None:
    """Run this node's executor over the Docker engine until ``stop`` is set."""
    async with contextlib.AsyncExitStack() as stack:
        docker = await stack.enter_async_context(aiodocker.Docker(url=settings.docker_url))
        bus = await stack.enter_async_context(
            Bus(
                settings.amqp_url, name=f"executor.{settings.node_name}", prefetch=settings.prefetch
            )
        )
        engine = DockerEngine(
            docker,
            deployment=settings.deployment,
            node=settings.node_name,
            publish_host=settings.publish_host,
            zapps_root=Path(settings.zapps_root),
        )
        await run_executor(settings, engine, bus, stop)


async def run_executor(
    settings: ExecutorSettings, engine: Engine, bus: Bus, stop: asyncio.Event
) -> None:
    """Reconcile, then serve commands, watch the engine and beat until ``stop``.

    Engine-agnostic, so a hollow engine (scale benchmarks) runs the same executor.
    """
    ex = Executor(settings, engine, bus)
    structlog.contextvars.bind_contextvars(node=ex.node)
    queue = await declare_executor_queue(bus, ex.node)
    # Events from before the reconcile are replayed, so no death falls between the two.
    since = time.time() - EVENTS_OVERLAP
    await reconcile(ex)
    async with asyncio.TaskGroup() as tg:
        loops = [
            tg.create_task(heartbeat_loop(ex, stop)),  # its first beat registers the node
            tg.create_task(watch_events(ex, stop, since)),
        ]
        await bus.consume(queue, m.ExecutorInbox, ex.handle)
        log.info("executor.ready", queue=queue)
        await stop.wait()
        log.info("executor.stopping", drain_timeout=settings.drain_timeout)
        await bus.stop_consuming(settings.drain_timeout)
        for task in loops:
            task.cancel()

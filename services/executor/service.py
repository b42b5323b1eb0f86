"""Wiring of one node's executor: resources, queue, reconcile, loops, shutdown.

The Docker client and the bus are opened through the service runtime (common/runtime.py);
``run_executor`` is the engine-agnostic executor itself, which hollow nodes run too
(several on one bus). Shutdown order, and why: stop fetching commands and let in-flight ones finish (they
need the engine and the bus, and their facts must be published before their ack); then
cancel the heartbeat and event loops (whatever they were reporting, the next start's
reconcile reports again); then remove the spare networks kept (no start needs one any
more); then close the bus, then the Docker client (the exit stack closes in reverse
order of opening).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import aiodocker
import structlog

from common import messages as m
from common import routes
from common.bus import Bus, declare_executor_queue
from common.errors import StartRefused
from common.runtime import Runtime
from common.settings import ExecutorSettings
from services.executor.engine import DockerEngine, Engine
from services.executor.engine.overlay import OverlayNetworks
from services.executor.engine.swarm import check_swarm
from services.executor.engine.translate import NodeCapacity
from services.executor.facts import parse_nfs_export
from services.executor.handlers import Executor
from services.executor.loops import (
    EVENTS_OVERLAP,
    heartbeat_loop,
    reconcile,
    report_ended_loop,
    say_stopping,
    usage_loop,
    watch_events,
)
from services.executor.networks import BusNetworkAsker, NetworkRequests

log = structlog.get_logger("executor")


async def serve(settings: ExecutorSettings, stop: asyncio.Event) -> None:
    """Run this node's executor over its engine until ``stop`` is set.

    The engine is Docker, unless ``ZOE_ENGINE=hollow`` asks for a fake node (scale
    benchmarks only: services/executor/hollow.py).
    """
    if settings.engine not in ("docker", "hollow"):
        raise ValueError(f"ZOE_ENGINE must be docker or hollow, not {settings.engine!r}")
    name = f"executor.{settings.node_name}"
    try:
        routes.executor_queue(settings.node_name)  # not a name a shared queue takes
        if settings.workspace_nfs:
            parse_nfs_export(settings.workspace_nfs)
    except ValueError as exc:
        raise StartRefused(str(exc)) from None
    async with Runtime(name, settings, stop) as rt:
        engine: Engine
        requests: NetworkRequests | None = None
        if settings.engine == "hollow":
            from services.executor.hollow import HollowEngine

            log.warning("executor.hollow", note="a fake node: no container is started")
            engine = HollowEngine(node=settings.node_name)
            bus = await rt.open_bus(name)
        else:
            docker = await rt.enter(aiodocker.Docker(url=settings.docker_url))
            overlay = None
            if settings.swarm:  # before the bus: a refused engine never registers its node
                overlay = await _swarm_networks(docker, settings)
            bus = await rt.open_bus(name)
            if overlay is not None and not overlay.manager:
                overlay.asker = BusNetworkAsker(
                    bus, node=settings.node_name, timeout=settings.network_timeout
                )
            engine = DockerEngine(
                docker,
                deployment=settings.deployment,
                node=settings.node_name,
                publish_host=settings.publish_host,
                zapps_root=Path(settings.zapps_root),
                network_pool=settings.network_pool,
                debian_mirror=settings.debian_mirror,
                capacity=NodeCapacity(settings.cores, settings.memory),
                overlay=overlay,
                registry=settings.registry,
                workspace_nfs=settings.workspace_nfs,
            )
            if overlay is not None and overlay.manager:
                requests = NetworkRequests(
                    overlay, deployment=settings.deployment, own_user=bus.user
                )
        await rt.serve_metrics()
        await run_executor(settings, engine, bus, stop, network_requests=requests)


async def _swarm_networks(docker: aiodocker.Docker, settings: ExecutorSettings) -> OverlayNetworks:
    """Check that the engine is an active node of the deployment's swarm (`SwarmRefused`
    otherwise, which ends the executor) and keep the executions' overlay networks."""
    where = settings.docker_url or "the default socket (DOCKER_HOST or /var/run/docker.sock)"
    state = await check_swarm(docker, where, settings.swarm_cluster_id)
    log.info(
        "executor.swarm",
        manager=state.manager,
        swarm_node=state.node_id,
        address=state.node_addr,
        cluster=state.cluster_id or None,
    )
    return OverlayNetworks(docker, deployment=settings.deployment, manager=state.manager)


class SharedCommands(Protocol):
    """A command queue that several nodes of one process share (hollow nodes: one
    quorum queue per connection instead of one per node), told apart by routing key."""

    async def bind(self, node: str) -> None:
        """Make the node's commands reach the shared queue (before its first beat)."""

    async def serve(self, node: str, handler: Callable[[m.Message], Awaitable[object]]) -> None:
        """Hand the node's commands to ``handler`` from now on (they wait until then)."""


async def run_executor(
    settings: ExecutorSettings,
    engine: Engine,
    bus: Bus,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None] | None = None,
    network_requests: NetworkRequests | None = None,
    commands: SharedCommands | None = None,
    beats: Callable[[m.Message], Awaitable[None]] | None = None,
) -> None:
    """Reconcile, then serve commands, watch the engine and beat until ``stop``.

    Engine-agnostic, so a hollow engine (scale benchmarks) runs the same executor.
    ``on_ready`` is called once the node consumes its queue; ``network_requests`` (an
    executor on a swarm manager engine) consumes ``executor.networks`` too. Several executors may
    share one bus (hollow nodes): each consumes its own queue, or, with ``commands``,
    a queue they share, and send their heartbeats through ``beats`` (together), and at
    the stop the first to stop consuming stops them all (they stop together).
    """
    ex = Executor(settings, engine, bus, beats=beats)
    structlog.contextvars.bind_contextvars(node=ex.node)
    if commands is None:
        queue = await declare_executor_queue(bus, ex.node)
    else:
        await commands.bind(ex.node)
        queue = "shared"
        ex.resend_to = (routes.COMMANDS, ex.node)
    # Events from before the reconcile are replayed, so no death falls between the two.
    since = time.time() - EVENTS_OVERLAP
    await reconcile(ex)
    # Spares are kept while commands are served, and removed once the last in-flight
    # start is done (it may still take one).
    async with engine.spare_networks(), asyncio.TaskGroup() as tg:
        loops = [
            tg.create_task(heartbeat_loop(ex, stop)),  # its first beat registers the node
            tg.create_task(watch_events(ex, stop, since)),
        ]
        if settings.usage_interval > 0:
            loops.append(tg.create_task(usage_loop(ex, stop)))
        if settings.report_ended_interval > 0:
            loops.append(tg.create_task(report_ended_loop(ex, stop)))
        if commands is None:
            await bus.consume(queue, ex.handle, timeout=settings.handler_timeout)
        else:
            await commands.serve(ex.node, ex.handle)
        if network_requests is not None:
            await bus.consume(
                routes.EXECUTOR_NETWORKS,
                network_requests.handle,
                timeout=settings.handler_timeout,
                sender=network_requests.sender,
                refusal_reply=network_requests.refusal,
            )
        log.info("executor.ready", queue=queue)
        if on_ready is not None:
            on_ready()
        await stop.wait()
        log.info("executor.stopping", drain_timeout=settings.drain_timeout)
        await bus.stop_consuming(settings.drain_timeout)
        for task in loops:
            task.cancel()
        await say_stopping(ex)

"""Many hollow executors in one process (services/executor/hollow.py says what a hollow
node is): ``python -m services.executor.hollow --nodes 1000`` runs a thousand of them,
sharing a few AMQP connections (one per ``NODES_PER_CONNECTION`` nodes, at most
``MAX_CONNECTIONS``), set up a few at a time.

Several connections, because a channel carries one synchronous method at a time: on
one connection the binding each node makes at start waits in line behind every other
node's. A real node has a connection of its own.

One command queue per connection, not per node: the nodes of a connection share the
quorum queue ``executor.<prefix>.<n>``, each bound to ``zoe.commands`` by its own name,
and one consumer hands each command to its node by routing key (`SharedQueue`). A real
node declares its own queue once in its life (it is durable); a process playing ten
thousand fresh nodes would make the broker create ten thousand quorum queues at start,
10-14 ms of its CPU each here (docs/benchmarks.md, "10,000 hollow nodes"). Their
heartbeats go out together too (`SharedBeats`), and each node waits on a stop event
of its own (the process's one would have ten thousand nodes' loops as waiters)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from common import lifecycle
from common import messages as m
from common.bus import Bus, Outgoing, incoming_routing_key
from common.lifecycle import wait_or_stop
from common.routes import COMMANDS
from common.settings import ExecutorSettings
from services.executor.hollow import HollowEngine, HollowJournal

log = structlog.get_logger("executor.hollow")

NODES_PER_CONNECTION = 100
MAX_CONNECTIONS = 128
# Nodes being set up at once, over all connections: more only lengthen the event loop's
# turns (the beats of the nodes already up then come late), the broker gains nothing.
MAX_SETUP = 256
# How often the nodes' heartbeats gathered are sent (`SharedBeats`), and how many go in
# one message.
BEATS_WINDOW = 0.5
BEATS_PER_MESSAGE = 1000


Handler = Callable[[m.Message], Awaitable[object]]


class SharedQueue:
    """The command queue the hollow nodes of one connection share (a `SharedCommands`).

    A command for a node whose executor does not serve yet (the process just started,
    and the queue still holds commands sent to its previous life) waits for it here,
    instead of being requeued: requeues count against the delivery limit.
    """

    def __init__(self, bus: Bus, name: str, handler_timeout: float) -> None:
        self._bus = bus
        self.name = name
        self._timeout = handler_timeout
        self._handlers: dict[str, asyncio.Future[Handler]] = {}

    async def start(self) -> None:
        """Declare the queue and consume it."""
        await self._bus.declare_queue(self.name)
        await self._bus.consume(self.name, self._dispatch)

    def _slot(self, node: str) -> asyncio.Future[Handler]:
        slot = self._handlers.get(node)
        if slot is None:
            slot = self._handlers[node] = asyncio.get_running_loop().create_future()
        return slot

    async def bind(self, node: str) -> None:
        await self._bus.bind_queue(self.name, COMMANDS, node)

    async def serve(self, node: str, handler: Handler) -> None:
        slot = self._slot(node)
        if not slot.done():
            slot.set_result(handler)

    async def _dispatch(self, msg: m.Message) -> m.Message | None:
        node = incoming_routing_key()
        # bounded: a node this process no longer plays never serves (requeued, as for a
        # handler that fails)
        async with asyncio.timeout(self._timeout):
            handler = await asyncio.shield(self._slot(node))
        with structlog.contextvars.bound_contextvars(node=node):
            async with asyncio.timeout(self._timeout):
                reply = await handler(msg)
        return reply if isinstance(reply, m.Message) else None


class SharedBeats:
    """The heartbeats of the hollow nodes of one process, sent together every
    ``window`` seconds: their liveness beats as one `NodesAlive`, their full heartbeats
    as `NodeHeartbeats` (at most ``BEATS_PER_MESSAGE`` each). A node's ``send`` returns
    once its beat went out, and raises as the publish did, so a node's heartbeat loop
    behaves as if it had published alone. A stopping node's last heartbeat goes alone.

    Ten thousand nodes beating every 5 s are 2,000 messages a second for the broker and
    the monitor (~1 ms of CPU each between them on this machine): that is what a
    cluster of real nodes costs, each publishing its own; a process playing them all
    sends a few a second instead, so that it can keep up (docs/benchmarks.md)."""

    def __init__(self, bus: Bus, sender: str, window: float) -> None:
        self._bus = bus
        self._sender = sender
        self._window = window
        self._alive: list[str] = []
        self._full: list[m.NodeHeartbeat] = []
        self._sent: asyncio.Future[None] | None = None

    async def send(self, msg: m.Message) -> None:
        """Send one node's beat with the others (a stopping node's alone, at once)."""
        if isinstance(msg, m.NodeAlive):
            self._alive.append(msg.node)
        elif isinstance(msg, m.NodeHeartbeat) and not msg.stopping:
            self._full.append(msg)
        else:
            await self._bus.publish(msg)
            return
        if self._sent is None:
            self._sent = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._sent)

    async def run(self, stop: asyncio.Event) -> None:
        """Send what was gathered every ``window`` seconds until ``stop``."""
        while not await wait_or_stop(stop, self._window):
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        """Send the beats gathered so far; wake their nodes with the outcome."""
        sent, self._sent = self._sent, None
        alive, self._alive = self._alive, []
        full, self._full = self._full, []
        if sent is None:
            return
        size = BEATS_PER_MESSAGE
        out: list[m.Message] = [
            m.NodeHeartbeats(sender=self._sender, beats=full[i : i + size])
            for i in range(0, len(full), size)
        ]
        now = time.time()
        out += [
            m.NodesAlive(sender=self._sender, nodes=alive[i : i + size], sent_at=now)
            for i in range(0, len(alive), size)
        ]
        try:
            await self._bus.publish_many([Outgoing(x) for x in out])
        except Exception as exc:
            sent.set_exception(exc)
            sent.exception()  # retrieved: a node that timed out meanwhile is not told
        else:
            sent.set_result(None)


def node_names(prefix: str, count: int) -> list[str]:
    """``<prefix>-0000`` ... : the names of a hollow cluster's nodes."""
    width = max(4, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


async def serve_many(
    settings: ExecutorSettings,
    stop: asyncio.Event,
    *,
    nodes: int,
    prefix: str,
    engines: dict[str, HollowEngine] | None = None,
    on_ready: Callable[[], None] | None = None,
    setup_concurrency: int = 32,
    journal: Path | None = None,
    play_commands: bool = False,
    connections: int | None = None,
) -> None:
    """Run ``nodes`` hollow executors on ``connections`` bus connections (None: one per
    ``NODES_PER_CONNECTION`` nodes, at most ``MAX_CONNECTIONS``) until ``stop`` is set.

    Nodes are set up (queue declared, reconciled, consuming) ``setup_concurrency`` at a
    time per connection, at most ``MAX_SETUP`` in all, so ten thousand queue
    declarations do not all hit the broker (and this process's event loop) at once.
    ``engines``, when given, receives each node's engine (for a test to play deaths).
    ``journal`` and ``play_commands``: see `HollowEngine` (soak runs).
    """
    restored = HollowJournal.replay(journal) if journal is not None else {}
    records = HollowJournal(journal) if journal is not None else None
    if records is not None:
        records.write("boot", prefix, restored=sum(map(len, restored.values())))
    try:
        await _serve_nodes(
            settings,
            stop,
            prefix,
            node_names(prefix, nodes),
            engines=engines,
            on_ready=on_ready,
            setup_concurrency=setup_concurrency,
            journal=records,
            restored=restored,
            play_commands=play_commands,
            connections=connections
            or min(MAX_CONNECTIONS, math.ceil(nodes / NODES_PER_CONNECTION)),
        )
    finally:
        if records is not None:
            records.close()


async def _serve_nodes(
    settings: ExecutorSettings,
    stop: asyncio.Event,
    prefix: str,
    names: list[str],
    *,
    engines: dict[str, HollowEngine] | None,
    on_ready: Callable[[], None] | None,
    setup_concurrency: int,
    journal: HollowJournal | None,
    restored: dict[str, list[dict[str, Any]]],
    play_commands: bool,
    connections: int,
) -> None:
    from services.executor.service import run_executor  # the one executor, as is

    nodes = len(names)
    connections = max(1, min(connections, nodes))
    gate = asyncio.Semaphore(min(setup_concurrency * connections, MAX_SETUP))
    ready = 0
    started = time.monotonic()

    def node_ready() -> None:
        nonlocal ready
        gate.release()
        ready += 1
        if ready == nodes:
            log.warning("hollow.ready", nodes=nodes, seconds=round(time.monotonic() - started, 1))
            if on_ready is not None:
                on_ready()

    async with contextlib.AsyncExitStack() as stack, asyncio.TaskGroup() as tg:
        buses = [
            await stack.enter_async_context(
                Bus(
                    settings.amqp_url,
                    name=f"hollow.{prefix}.{i}" if connections > 1 else f"hollow.{prefix}",
                    prefetch=settings.prefetch,
                    quorum_size=settings.amqp_quorum_size,
                )
            )
            for i in range(connections)
        ]
        queues = [
            SharedQueue(bus, f"executor.{prefix}.{i}", settings.handler_timeout)
            for i, bus in enumerate(buses)
        ]
        for queue in queues:
            await queue.start()
        beats = SharedBeats(buses[0], prefix, BEATS_WINDOW)
        tg.create_task(beats.run(stop))
        # A stop event per node, set together when the process stops: every wait on an
        # asyncio.Event ends with a removal from its list of waiters, O(waiters), and
        # ten thousand nodes' loops waiting on one event made each beat cost ~0.3 ms.
        node_stops: list[asyncio.Event] = []

        async def stop_nodes() -> None:
            await stop.wait()
            for node_stop in node_stops:
                node_stop.set()

        tg.create_task(stop_nodes())
        for i, name in enumerate(names):
            await gate.acquire()
            if stop.is_set():
                gate.release()
                break
            engine = HollowEngine(node=name, journal=journal, play_commands=play_commands)
            engine.restore(restored.get(name, []))
            if engines is not None:
                engines[name] = engine
            node_settings = replace_settings(settings, node_name=name)
            bus, queue = buses[i % connections], queues[i % connections]
            node_stops.append(node_stop := asyncio.Event())  # (stop is not set yet: above)
            tg.create_task(
                run_executor(
                    node_settings,
                    engine,
                    bus,
                    node_stop,
                    on_ready=node_ready,
                    commands=queue,
                    beats=beats.send,
                )
            )


def replace_settings(settings: ExecutorSettings, **changes: object) -> ExecutorSettings:
    """``settings`` with some fields changed (they are frozen)."""
    return msgspec.structs.replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    """``python -m services.executor.hollow --nodes N``: N hollow executors, one process."""
    parser = argparse.ArgumentParser(prog="python -m services.executor.hollow")
    parser.add_argument("--nodes", type=int, default=100, help="hollow nodes to run")
    parser.add_argument(
        "--prefix", default="hollow", help="node names are PREFIX-0000, PREFIX-0001, ..."
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="record starts, exits and removals in this file, and take back the"
        " containers it holds at start (soak runs: a killed process keeps its containers)",
    )
    parser.add_argument(
        "--play-commands",
        action="store_true",
        help="a container whose command is 'sleep N[; exit C]' exits by itself after N s",
    )
    args = parser.parse_args(argv)
    settings = ExecutorSettings.from_env(engine="hollow")

    async def serve(s: ExecutorSettings, stop: asyncio.Event) -> None:
        await serve_many(
            s,
            stop,
            nodes=args.nodes,
            prefix=args.prefix,
            journal=args.journal,
            play_commands=args.play_commands,
        )

    return lifecycle.run("executor.hollow", settings, serve)

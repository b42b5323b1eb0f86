"""The executor's command handlers: start, stop, logs.

Each handler publishes its fact (with a broker confirm) before it returns, because the
bus acks the command once the handler returns; a handler that raises gets its command
redelivered. Commands about one container name are serialized (a start and a stop of
the same container never interleave), and so are the event watcher's reports about it.

A container name is never started again once stopped (the scheduler gives a restarted
instance a new name), so a start redelivered after its stop is stale: it does not
resurrect the container, it repeats that the container is gone. This executor
remembers the names it stopped (the most recent ones, for its lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from common import messages as m
from common import metrics, routes
from common.bus import Bus, Outgoing
from common.errors import ZoeError
from common.retry import Backoff
from common.runtime import shielded
from common.settings import ExecutorSettings
from services.executor import admission, facts
from services.executor.engine import (
    Container,
    ContainerExists,
    ContainerSpec,
    Engine,
    NotManaged,
    Removed,
    Stats,
    TransientEngineError,
)
from services.executor.locks import EngineNotices, KeyedLocks, RecentIds

log = structlog.get_logger("executor")


@dataclass
class Executor:
    """What the handlers and loops of one node's executor share."""

    settings: ExecutorSettings
    engine: Engine
    bus: Bus
    locks: KeyedLocks = field(default_factory=KeyedLocks)  # one per container name
    removed: RecentIds = field(default_factory=RecentIds)  # container ids removed here
    stopped: RecentIds = field(default_factory=RecentIds)  # container names stopped here
    notices: EngineNotices = field(default_factory=EngineNotices)  # kill and oom events
    # the last usage sample of each running container (container id -> sample), sent
    # with every heartbeat; refreshed every ``usage_interval`` by the usage loop
    usage: dict[str, tuple[Stats, m.ContainerUsage]] = field(default_factory=dict)
    # what the containers this node runs reserved: every start is checked against it
    ledger: admission.Ledger = field(init=False)
    # Where a start is sent again alone: (exchange, routing key). None: to its own queue
    # by name (an executor may not publish on the commands exchange); a node whose queue
    # is shared with others (hollow nodes) is told apart by its key on zoe.commands.
    resend_to: tuple[str, str] | None = None
    # Where heartbeats go: None, the bus; the nodes of one process (hollow nodes) may
    # send theirs together (services/executor/hollow_cluster.py)
    beats: Callable[[m.Message], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        self.ledger = admission.Ledger(self.settings.cores, self.settings.memory)

    @property
    def node(self) -> str:
        return self.settings.node_name

    async def handle(self, msg: m.Message) -> m.Message | None:
        """The consumer of ``executor.<node>``: route a command to its handler."""
        return await HANDLERS[type(msg)](self, msg)


async def start_instance(ex: Executor, msg: m.StartInstance) -> None:
    """Make the instance's container run (idempotent) and publish what happened."""
    with structlog.contextvars.bound_contextvars(
        instance=msg.instance, container=msg.container_name
    ):
        async with ex.locks(msg.container_name):
            fact = await _started_or_not(ex, msg)
            await ex.bus.publish(fact)
        _log_fact(fact)


async def _started_or_not(ex: Executor, msg: m.StartInstance) -> m.Message:
    """Start the container (unless it was stopped here already: a stale start); its fact.
    The caller holds the container's lock, and publishes the fact before releasing it."""
    began = time.perf_counter()
    if msg.container_name in ex.stopped:
        log.warning("instance.start_after_stop", container=msg.container_name)
        return _removed(ex, msg, None)
    fact = await _start(ex, msg)
    # the command to its fact, as the scheduler waits for it
    outcome = "failed" if isinstance(fact, m.InstanceStartFailed) else "started"
    metrics.START_DURATION.labels(outcome).observe(time.perf_counter() - began)
    return fact


def _log_fact(fact: m.Message) -> None:
    if isinstance(fact, m.InstanceStarted | m.InstanceExited):  # others logged already
        log.info(facts.event_name(fact), container=fact.container_name)


async def start_instances(ex: Executor, msg: m.StartInstances) -> None:
    """Start several instances at once, ``prefetch`` at a time (as many as single
    commands); the containers that run are reported by one InstancesStarted per group,
    published while their locks are held (as a single start's fact is). One that fails
    unexpectedly is sent again to this node alone, as a plain StartInstance: it is
    retried (and dead-lettered if it keeps failing) by itself, while the others,
    started, are not held back by it."""
    size = max(1, ex.settings.prefetch)
    for first in range(0, len(msg.starts), size):
        await _start_group(ex, msg.starts[first : first + size])


async def _start_one(ex: Executor, msg: m.StartInstance) -> m.Message:
    with structlog.contextvars.bound_contextvars(
        instance=msg.instance, container=msg.container_name
    ):
        return await _started_or_not(ex, msg)


async def _start_group(ex: Executor, starts: list[m.StartInstance]) -> None:
    async with contextlib.AsyncExitStack() as held:
        # in name order, so that two groups sharing a name (a redelivery) never deadlock
        for name in sorted({one.container_name for one in starts}):
            await held.enter_async_context(ex.locks(name))
        results = await asyncio.gather(
            *(_start_one(ex, one) for one in starts), return_exceptions=True
        )
        ran = [r for r in results if isinstance(r, m.InstanceStarted)]
        others = [
            r for r in results if isinstance(r, m.Message) and not isinstance(r, m.InstanceStarted)
        ]
        out = [Outgoing(m.InstancesStarted(node=ex.node, started=ran))] if len(ran) > 1 else []
        out += [Outgoing(fact) for fact in (ran if len(ran) == 1 else []) + others]
        if out:
            await ex.bus.publish_many(out)
    for one, result in zip(starts, results, strict=True):
        if isinstance(result, m.Message):
            _log_fact(result)
        elif not isinstance(result, Exception):
            raise result  # a cancellation: the whole command is redelivered
        else:
            log.warning("instance.start_retried", container=one.container_name, error=repr(result))
            exchange, key = ex.resend_to or (routes.DEFAULT, routes.executor_queue(ex.node))
            await ex.bus.publish_raw([(exchange, key, m.encode(one))])


async def _start(ex: Executor, msg: m.StartInstance) -> m.Message:
    """Check the start (mounts, capacity), make its container, and say what happened."""
    running = False
    try:
        # a refused mount or a start over the node's capacity fails before anything is made
        spec = facts.container_spec(msg, ex.settings, resolve=os.path.realpath)
        claim = admission.claim_of(msg)
        ex.ledger.admit(msg.container_name, claim)
        spec = dataclasses.replace(spec, labels={**spec.labels, **claim.labels()})
        try:
            # No lookup first: a start is almost never a redelivery, and the name is
            # what makes a second container impossible.
            container = await _create_retrying(ex, spec)
        except ContainerExists:
            existing = await ex.engine.inspect(msg.container_name)
            if existing is None:  # removed meanwhile: try again with the redelivery
                raise RuntimeError(f"container {msg.container_name} went while starting") from None
            fact = await _resume(ex, existing)
            running = isinstance(fact, m.InstanceStarted)
            return fact
        running = container.running
    except (NotManaged, admission.StartRefused, facts.VolumeRefused) as exc:
        log.warning("command.refused", command="start", reason=str(exc))
        return _start_failed(msg, ex.node, str(exc))
    except ZoeError as exc:  # the engine's refusal, or an image that cannot be made
        log.warning("instance.start_failed", reason=str(exc))
        return _start_failed(msg, ex.node, str(exc))
    finally:
        if msg.container_name in ex.ledger.pending:
            ex.ledger.settle(msg.container_name, running=running)
    return facts.started(ex.node, container, ex.settings.advertise_host)


async def _create_retrying(ex: Executor, spec: ContainerSpec) -> Container:
    """Create and start the container; a failure that may pass (the swarm's manager or
    the registry not answering now) is tried again with backoff for up to
    ``ZOE_START_RETRY`` seconds, then raised with its reason."""
    loop = asyncio.get_running_loop()
    backoff = Backoff(1.0, 15.0)
    give_up = loop.time() + ex.settings.start_retry
    while True:
        try:
            return await ex.engine.create_and_start(spec)
        except TransientEngineError as exc:
            left = give_up - loop.time()
            if left <= 0:
                tried = ex.settings.start_retry
                raise TransientEngineError(f"{exc} (tried for {tried:g} s)") from exc
            delay = min(backoff.next(), left)
            log.warning("instance.start_retrying", reason=str(exc), delay=round(delay, 2))
            await asyncio.sleep(delay)


def _start_failed(msg: m.StartInstance, node: str, reason: str) -> m.InstanceStartFailed:
    return m.InstanceStartFailed(
        node=node,
        execution_id=msg.execution_id,
        instance_id=msg.instance_id,
        container_name=msg.container_name,
        reason=reason,
    )


async def _resume(ex: Executor, container: Container) -> m.Message:
    """A redelivered start: report the container as it is, starting it if only created."""
    if container.state == "created":
        container = await ex.engine.start(container.name)
    if container.running:
        return facts.started(ex.node, container, ex.settings.advertise_host)
    if container.ended:
        return facts.exited(ex.node, container)
    # "removing": someone removes it right now; try again later, it will be gone.
    raise RuntimeError(f"container {container.name} is {container.state}")


async def stop_instance(ex: Executor, msg: m.StopInstance) -> None:
    """Stop and remove the instance's container (idempotent), then its unused network.

    Its reservation is released as the command arrives: the scheduler sends a stop only
    for what it counts as leaving (a reclaimed instance, or a lost node's leftovers that
    it placed elsewhere already), and a start it places in that room may arrive while
    this stop still waits for the container to end."""
    ex.ledger.release(msg.container_name)
    with structlog.contextvars.bound_contextvars(container=msg.container_name):
        async with ex.locks(msg.container_name):
            began = time.perf_counter()
            try:
                gone = await ex.engine.stop_and_remove(
                    msg.container_name,
                    timeout=ex.settings.stop_timeout,
                    log_bytes=ex.settings.log_keep_bytes,
                )
            except NotManaged as exc:  # not ours: left alone, and nothing to report
                log.warning("command.refused", command="stop", reason=str(exc))
                return
            if gone is not None:
                ex.removed.add(gone.container_id)
            ex.stopped.add(msg.container_name)
            # the container is gone: its fact goes out even if the stop is cancelled now
            await shielded(ex.bus.publish(_removed(ex, msg, gone)))
            metrics.STOP_DURATION.observe(time.perf_counter() - began)
        log.info("instance.removed", existed=gone is not None)
        try:
            await ex.engine.remove_network_if_unused(msg.network, msg.execution_id)
        except ZoeError as exc:
            log.warning("network.remove_failed", network=msg.network, reason=str(exc))


def _removed(
    ex: Executor, msg: m.StartInstance | m.StopInstance, gone: Removed | None
) -> m.InstanceRemoved:
    return m.InstanceRemoved(
        node=ex.node,
        execution_id=msg.execution_id,
        instance_id=msg.instance_id,
        container_name=msg.container_name,
        exit_code=gone.exit_code if gone else None,
        oom_killed=gone.oom_killed if gone else False,
        log=gone.log if gone else "",
    )


async def read_logs(ex: Executor, msg: m.LogsRequest) -> m.LogsReply:
    """The tail of a container's log, or (following) what it printed since the cursor."""
    try:
        if msg.follow:
            chunk = await ex.engine.follow_logs(
                msg.container_name,
                cursor=msg.cursor,
                tail=msg.tail,
                max_bytes=ex.settings.log_keep_bytes,
            )
            if chunk is None:
                return m.LogsReply(found=False)
            return m.LogsReply(
                found=True, log=chunk.text, cursor=chunk.cursor, running=chunk.running
            )
        text = await ex.engine.logs(
            msg.container_name, tail=msg.tail, max_bytes=ex.settings.log_keep_bytes
        )
    except NotManaged as exc:
        log.warning(
            "command.refused", command="logs", container=msg.container_name, reason=str(exc)
        )
        return m.LogsReply(found=False, log=str(exc))
    except ZoeError as exc:
        log.warning("logs.failed", container=msg.container_name, reason=str(exc))
        return m.LogsReply(found=False, log=str(exc))
    return m.LogsReply(found=text is not None, log=text or "")


HANDLERS: dict[type[m.Message], Callable[[Executor, Any], Awaitable[m.Message | None]]] = {
    m.StartInstance: start_instance,
    m.StartInstances: start_instances,
    m.StopInstance: stop_instance,
    m.LogsRequest: read_logs,
}

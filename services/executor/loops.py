"""The executor's own activity besides commands: reconcile, engine events, heartbeats.

- ``reconcile`` reports every managed container as it is now (running ones are adopted
  with InstanceStarted, ended ones reported with InstanceExited), after the engine has
  found its executions' networks again. It runs at start and again whenever the
  engine's event stream broke, because events may have been lost.
- ``watch_events`` turns the engine's ``die`` and ``destroy`` events into facts (its
  ``kill`` and ``oom`` events tell a kill from an OOM kill the engine heard of late).
- ``heartbeat_loop`` beats every interval: the node's capacity and inventory when they
  changed (and at least every ``inventory_interval``), a small liveness beat otherwise
  (also while a busy engine is slow to give the inventory); it survives broker and
  engine outages (it logs and tries again on the next beat).
- ``usage_loop`` samples the running containers' CPU and memory use every
  ``usage_interval``; heartbeats carry the latest sample. It is a loop of its own
  because a Docker stats call answers only at the engine's next collection tick (up
  to a second): a heartbeat never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable

import structlog

from common import messages as m
from common.lifecycle import wait_or_stop
from common.retry import Backoff
from services.executor import facts
from services.executor.engine import Container, ContainerEvent, Stats
from services.executor.handlers import Executor
from services.executor.locks import EngineNotices

log = structlog.get_logger("executor")

IMAGE_PREFIX = "zoe/"
# The event stream starts this much before "now": a death just before the start is
# replayed rather than missed (reporting a fact twice is harmless).
EVENTS_OVERLAP = 1.0
# A stream that lasted this long was healthy: its break starts the backoff afresh.
STABLE_STREAM = 10.0
# The exit code of a process killed by SIGKILL (128 + 9): the kernel's OOM kill, or a kill;
# and how the engine names that signal in its ``kill`` events.
SIGKILLED = 137
SIGKILL_NAMES = frozenset({"9", "KILL", "SIGKILL"})
# Stats calls in flight at once (each waits for the engine's collection tick).
USAGE_CONCURRENCY = 64


def _fact_now(ex: Executor, container: Container | None) -> m.Message | None:
    if container is None:
        return None
    if container.running:
        return facts.started(ex.node, container, ex.settings.advertise_host)
    if container.ended:
        return facts.exited(ex.node, container)
    return None  # created: a redelivered start will start it


async def reconcile(ex: Executor) -> None:
    """Report every managed container as it is now, one container lock at a time."""
    await ex.engine.adopt_networks()
    reported: dict[str, int] = {}
    managed = await ex.engine.list_managed()
    ex.ledger.sync(managed)  # what the running containers reserved, from their labels
    for listed in managed:
        if listed.state == "created":
            continue
        async with ex.locks(listed.name):
            fact = _fact_now(ex, await ex.engine.inspect(listed.id))
            if fact is not None:
                await ex.bus.publish(fact)
                name = facts.event_name(fact)
                reported[name] = reported.get(name, 0) + 1
    log.info("executor.reconciled", reported=reported)


async def report_ended(ex: Executor) -> int:
    """Report again every managed container that has ended and is still there; returns
    how many. A fact lost for good (dead-lettered) would otherwise leave its instance
    running for ever in the scheduler's eyes; reported again, it is decided once (a
    verdict about an instance that ended already changes nothing)."""
    count = 0
    for listed in await ex.engine.list_managed():
        if not listed.ended:
            continue
        async with ex.locks(listed.name):
            container = await ex.engine.inspect(listed.id)
            if container is not None and container.ended:
                ex.ledger.release(container.name)
                await ex.bus.publish(facts.exited(ex.node, container))
                count += 1
    if count:
        log.info("executor.ended_reported", containers=count)
    return count


async def report_ended_loop(ex: Executor, stop: asyncio.Event) -> None:
    """``report_ended`` every ``report_ended_interval`` until ``stop``."""
    while not await wait_or_stop(stop, ex.settings.report_ended_interval):
        try:
            await report_ended(ex)
        except Exception as exc:  # engine or broker away: the next round tries again
            log.warning("executor.report_ended_failed", reason=str(exc) or repr(exc))


# ---- engine events ----------------------------------------------------------------------


async def watch_events(ex: Executor, stop: asyncio.Event, since: float) -> None:
    """Report deaths and removals of managed containers until ``stop`` is set.

    When the stream breaks (an engine restart), reconnect with backoff and reconcile,
    replaying the engine's events from the last one seen.
    """
    backoff = Backoff()
    stale = False  # events may have been lost: reconcile before trusting the stream again
    async with asyncio.TaskGroup() as reports:
        while not stop.is_set():
            if stale:
                stale = not await _try(reconcile(ex), "executor.reconcile_failed")
            if not stale:
                since = await _follow(ex, since, reports, backoff)
                stale = True
            if await wait_or_stop(stop, backoff.next()):
                return


async def _follow(
    ex: Executor, since: float, reports: asyncio.TaskGroup, backoff: Backoff
) -> float:
    """Read the event stream until it breaks; returns the time of the last event seen."""
    log.info("events.following", since=since)
    started = time.monotonic()
    try:
        async with contextlib.aclosing(ex.engine.events(since=since)) as stream:
            async for event in stream:
                since = max(since, event.time)
                backoff.reset()
                if event.action == "kill":
                    if event.signal in SIGKILL_NAMES:
                        ex.notices.signalled(event.container_id)
                elif event.action == "oom":
                    ex.notices.oom(event.container_id)
                else:
                    reports.create_task(report_event(ex, event))
        log.warning("events.ended")
    except Exception as exc:  # the watcher must outlive any engine trouble
        log.warning("events.broken", reason=str(exc) or repr(exc))
    if time.monotonic() - started > STABLE_STREAM:
        backoff.reset()
    return since


async def _try(work: Awaitable[object], event: str) -> bool:
    try:
        await work
    except Exception as exc:
        log.warning(event, reason=str(exc) or repr(exc))
        return False
    return True


async def report_event(ex: Executor, event: ContainerEvent) -> None:
    """Publish the fact behind one engine event (after any command on that container)."""
    execution_id, instance_id = facts.ids_of(event.labels)
    with structlog.contextvars.bound_contextvars(
        execution_id=execution_id, instance_id=instance_id, container=event.name
    ):
        try:
            async with ex.locks(event.name):
                fact = await _event_fact(ex, event)
                if fact is not None:
                    await publish_until_confirmed(ex, fact)
                    log.info(facts.event_name(fact), via=event.action)
        except Exception:
            log.exception("event.report_failed", action=event.action)


async def _event_fact(ex: Executor, event: ContainerEvent) -> m.Message | None:
    if event.action == "die":
        container = await ex.engine.inspect(event.container_id)
        # Gone: its destroy event tells. Running again: nothing ended.
        if container is None or container.running:
            return None
        ex.ledger.release(container.name)
        # under the container's lock, which a stop or `report_ended` then waits for: the
        # death must not be told as a crash meanwhile
        if await killed_for_memory(ex.notices, ex.settings.oom_grace, container):
            container = dataclasses.replace(container, oom_killed=True)
        return facts.exited(ex.node, container)
    ex.ledger.release(event.name)
    if event.container_id in ex.removed:  # a StopInstance of ours already reported it
        return None
    return facts.removed_elsewhere(ex.node, event)


async def killed_for_memory(notices: EngineNotices, grace: float, container: Container) -> bool:
    """Whether a container the engine does not call OOM-killed was, all the same: the
    engine may hear of an OOM kill only after the death (Docker on cgroup v1 under load),
    so a SIGKILL it did not send waits ``grace`` seconds for its late ``oom`` event.

    A death found otherwise (``reconcile`` after the stream broke, ``report_ended``) is
    told as the engine's inspect says: an ``oom`` event replayed later changes nothing."""
    if container.oom_killed or container.exit_code != SIGKILLED:
        return False
    if notices.was_signalled(container.id):
        return False
    return await notices.oom_within(container.id, grace)


async def publish_until_confirmed(ex: Executor, fact: m.Message) -> None:
    """Publish a fact nobody will ask for again, retrying through a broker outage."""
    backoff = Backoff(0.2, 5.0)
    while True:
        try:
            await ex.bus.publish(fact)
            return
        except Exception as exc:
            log.warning("fact.publish_failed", fact=facts.event_name(fact), reason=repr(exc))
        await asyncio.sleep(backoff.next())


# ---- heartbeats -------------------------------------------------------------------------


async def heartbeat(ex: Executor, registered: bool, *, stopping: bool = False) -> m.NodeHeartbeat:
    """The node's capacity, its zoe/ images and the instances it holds."""
    # one after the other: two tasks a beat weigh on a process of many (hollow) nodes
    images = await ex.engine.image_tags(IMAGE_PREFIX)
    containers = await ex.engine.list_managed()
    instances = sorted({facts.ids_of(c.labels)[1] for c in containers})
    usage = [ex.usage[c.id][1] for c in containers if c.running and c.id in ex.usage]
    return m.NodeHeartbeat(
        node=ex.node,
        cores=ex.settings.cores,
        memory=ex.settings.memory,
        labels=list(ex.settings.labels),
        images=images,
        instances=instances,
        usage=sorted(usage, key=lambda u: u.instance_id),
        registered=registered,
        stopping=stopping,
        sent_at=time.time(),
    )


async def say_stopping(ex: Executor) -> None:
    """The last heartbeat, at a clean stop: the node is restarting, not lost (the monitor
    waits ``node_restart_grace`` for it). Best effort: a broker away makes it silent."""
    try:
        async with asyncio.timeout(max(ex.settings.heartbeat_interval, 1.0)):
            await ex.bus.publish(await heartbeat(ex, False, stopping=True))
    except Exception as exc:
        log.warning("heartbeat.stopping_failed", reason=str(exc) or repr(exc))


# A beat that goes out later than this many intervals after the previous one (the
# process stalled, the broker was away) is a full heartbeat: the node may have been
# declared lost meanwhile, and the scheduler learns of its return from a full one.
LATE_BEATS = 2.0


def _inventory(beat: m.NodeHeartbeat) -> tuple[object, ...]:
    """What a full heartbeat says besides liveness (its sender and times aside)."""
    return (beat.cores, beat.memory, beat.labels, beat.images, beat.instances, beat.usage)


class EngineStalled(Exception):
    """The engine has not answered the inventory's reads for too long: no beat."""


async def heartbeat_loop(ex: Executor, stop: asyncio.Event) -> None:
    """Beat every interval until ``stop``; the first beat registers the node.

    A beat is a full `NodeHeartbeat` (to the scheduler and the monitor) when the node's
    inventory changed since the last one, when it comes late or after a failed one, and
    at least every ``inventory_interval``; otherwise a small `NodeAlive` (to the monitor
    only: liveness is the monitor's, and the scheduler has nothing new to read).

    A busy engine that does not give the inventory within an interval is not waited
    for: the beat is a `NodeAlive` (the node is alive; its inventory comes with a later
    beat), so that a slow engine is not a lost node. An engine that fails, or has given
    no inventory for ``inventory_interval``, gets no beat: then the node is lost, as it
    should be."""
    registered = True
    said: tuple[object, ...] | None = None  # the inventory of the last full heartbeat
    said_at = 0.0  # when it went out (monotonic)
    last = 0.0  # when the last beat went out
    known = False  # a full heartbeat went out: the node is registered
    read_at = time.monotonic()  # when the engine last gave the inventory
    interval = ex.settings.heartbeat_interval
    while True:
        try:
            now = time.monotonic()
            beat: m.NodeHeartbeat | None = None
            try:
                async with asyncio.timeout(interval):
                    beat = await heartbeat(ex, registered)  # an engine that fails: raises
                read_at = now
            except TimeoutError:
                if not known or now - read_at > ex.settings.inventory_interval:
                    raise EngineStalled(
                        f"the engine has given no inventory for {now - read_at:.1f} s"
                        + ("" if known else " (the node registers with its first inventory)")
                    ) from None
                log.info("heartbeat.engine_slow", waited=round(now - read_at, 2))
            send = ex.beats or ex.bus.publish
            # bounded: a half-restored connection can hold a publish until it recovers
            async with asyncio.timeout(max(2 * interval, 1.0)):
                if beat is None:
                    await send(m.NodeAlive(node=ex.node, sent_at=time.time()))
                else:
                    inventory = _inventory(beat)
                    full = (
                        registered
                        or inventory != said
                        or now - last > LATE_BEATS * interval
                        or now - said_at >= ex.settings.inventory_interval
                    )
                    if full:
                        await send(beat)
                        said, said_at, known = inventory, now, True
                    else:
                        await send(m.NodeAlive(node=ex.node, sent_at=beat.sent_at))
                last = now
            registered = False
        except Exception as exc:  # broker or engine away: the next beat tries again
            log.warning("heartbeat.failed", reason=str(exc) or repr(exc))
            said = None  # ... with the node's whole inventory
        if await wait_or_stop(stop, interval):
            return


# ---- resource usage ---------------------------------------------------------------------


async def sample_usage(ex: Executor) -> int:
    """Sample every running managed container (concurrently); returns how many answered.

    The CPU share is computed against this container's previous sample (or the engine's
    own), so the first sample of a container may say 0 %.
    """
    running = [c for c in await ex.engine.list_managed() if c.running]
    limit = asyncio.Semaphore(USAGE_CONCURRENCY)

    async def one(container: Container) -> tuple[Container, Stats | None]:
        async with limit:
            try:
                return container, await ex.engine.stats(container.id)
            except Exception as exc:  # one container's trouble must not lose the others
                log.debug("usage.sample_failed", container=container.name, reason=str(exc))
                return container, None

    fresh: dict[str, tuple[Stats, m.ContainerUsage]] = {}
    for container, sample in await asyncio.gather(*(one(c) for c in running)):
        if sample is None:
            continue
        previous = ex.usage.get(container.id)
        fresh[container.id] = (
            sample,
            m.ContainerUsage(
                instance_id=facts.ids_of(container.labels)[1],
                cpu_percent=facts.cpu_percent(sample, previous[0] if previous else None),
                memory_bytes=sample.memory_bytes,
            ),
        )
    ex.usage = fresh
    return len(fresh)


async def usage_loop(ex: Executor, stop: asyncio.Event) -> None:
    """Sample the containers' usage every ``usage_interval`` until ``stop``."""
    while True:
        try:
            await sample_usage(ex)
        except Exception as exc:  # engine away: the next round tries again
            log.warning("usage.failed", reason=str(exc) or repr(exc))
        if await wait_or_stop(stop, ex.settings.usage_interval):
            return

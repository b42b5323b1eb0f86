"""The scheduler process: leader election, the consumer, and the pass loop.

Only one scheduler is active at a time: it holds a PostgreSQL session advisory lock on
a dedicated connection for as long as it lives. A standby waits for the lock; when the
active process dies its connection drops, the lock is released and the standby takes
over. All state lives in PostgreSQL, so taking over needs nothing but the lock: each
term reads its in-memory view of the cluster from there again (services/scheduler/view.py). When
the database fails over, the lock's connection breaks with the old primary: the term
ends, and the lock is taken again on the promoted standby (which holds none).

Shutdown is the runtime's (common/runtime.py): consumers drain first (their commits
complete), then the pass loop and the outbox relay stop, then the bus, the pool and at
last the leadership connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import asyncpg
import structlog

from common import db, metrics, routes
from common import messages as m
from common.lifecycle import wait_any, wait_or_stop
from common.retry import Backoff, is_transient, report_failure
from common.runtime import Probe, Runtime
from common.settings import SchedulerSettings
from services.scheduler import collector, drain, handlers, passes, stats, sweeper
from services.scheduler.core import Policy
from services.scheduler.view import Changes

log = structlog.get_logger("scheduler")

LEADER_LOCK = 0x20E_0002


async def acquire_leadership(url: str, stop: asyncio.Event) -> asyncpg.Connection | None:
    """Wait until this process holds the scheduler lock on a primary; None if stopped
    first. The database being away (restarting, or failing over to a standby that is
    not promoted yet) is waited out. ``url`` may list several hosts: with
    ``target_session_attrs=read-write`` asyncpg connects to the one that is primary."""
    backoff = Backoff(0.5, 5.0)
    announced = False
    while not stop.is_set():
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(url)
            while not stop.is_set():
                # A standby grants advisory locks of its own that exclude nobody on the
                # primary: only a lock taken on a primary makes this process the leader.
                if await conn.fetchval("SELECT pg_is_in_recovery()"):
                    raise asyncpg.ReadOnlySQLTransactionError("the server is a standby")
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK):
                    return conn
                if not announced:
                    log.info("scheduler.standby")
                    announced = True
                await wait_or_stop(stop, 0.5)
        except Exception as exc:
            report_failure("scheduler.leadership_unreachable", exc)
            await wait_or_stop(stop, backoff.next())
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
    return None


async def serve(settings: SchedulerSettings, stop: asyncio.Event) -> None:
    """Run the scheduler until ``stop`` is set: lead while this process holds the lock,
    and when the lock's connection is lost (the database restarted, say), stop leading
    and wait for the lock again, as a standby would."""
    policy = Policy.from_name(settings.policy)
    # The metrics and health endpoints outlive the terms of leadership: a standby answers
    # alive and not ready ("leader" missing); each term's runtime adds its own checks.
    async with Runtime("scheduler", settings, stop) as process:
        await process.serve_metrics()
        leading = asyncio.Event()
        process.require("leader", leading.is_set)
        await db.migrate(settings.database_url)
        while not stop.is_set():
            leader = await acquire_leadership(settings.database_url, stop)
            if leader is None:
                return
            leading.set()
            metrics.LEADER.set(1)
            try:
                await lead(settings, policy, leader, stop, process.probe)
            except Exception as exc:
                # the database went while the term began (its pool, its migrations):
                # the lock goes with the connection; wait for it again
                if not is_transient(exc):
                    raise
                report_failure("scheduler.term_failed", exc)
                await wait_or_stop(stop, 1.0)
            finally:
                leading.clear()
                metrics.LEADER.set(0)
                with contextlib.suppress(Exception):
                    await leader.close()


async def lead(
    settings: SchedulerSettings,
    policy: Policy,
    leader: asyncpg.Connection,
    stop: asyncio.Event,
    probe: Probe | None = None,
) -> None:
    """One term of leadership: until ``stop``, or until the lock's connection is lost."""
    log.info("scheduler.active", policy=settings.policy)
    term = asyncio.Event()  # set when this term ends, for either reason
    async with Runtime("scheduler", settings, term, probe=probe) as rt:
        pool = await rt.open_pool()
        bus = await rt.open_bus()
        await rt.loop("leadership", lambda done: _watch_leadership(leader, stop, term, done))
        wake = asyncio.Event()
        wake.set()  # rebuild from the database: run a pass at start
        # what the handlers change, for the view the passes keep in memory: a new one
        # each term, so a takeover reads everything from PostgreSQL again
        changes = Changes()
        deps = handlers.Deps(
            pool=pool,
            deployment=settings.deployment,
            request_pass=wake.set,
            restart_backoff=settings.restart_backoff,
            restart_backoff_max=settings.restart_backoff_max,
            essential_restarts=settings.essential_restarts,
            view=changes,
        )

        async def on_message(msg: m.Message) -> None:
            await handlers.HANDLERS[type(msg)](msg, deps)

        await rt.run_relay(pool, bus)
        view = passes.ClusterView(pool, settings.deployment, policy, changes)
        await rt.loop("passes", lambda done: _pass_loop(view, settings, wake, done))
        rules = sweeper.SweepRules(
            settings.deployment, settings.sweep_resend_after, settings.sweep_give_up_after
        )
        await rt.every(
            "sweep",
            settings.sweep_interval,
            functools.partial(sweeper.sweep, pool, rules, changes),
        )
        await rt.every("stats", settings.stats_interval, functools.partial(stats.collect, pool))
        await rt.every(
            "drains",
            drain.ENFORCE_INTERVAL,
            functools.partial(drain.enforce, pool, deps.rules, wake.set, changes),
        )
        # facts of started containers come in bursts: handled together
        started = functools.partial(handlers.on_started_many, deps=deps)
        await rt.consume(routes.SCHEDULER, on_message, batches={m.InstanceStarted: started})
        # a cluster's nodes register in bursts too: their rows are written together
        beats = functools.partial(handlers.on_heartbeats, deps=deps)
        await rt.consume(routes.SCHEDULER_HEARTBEATS, on_message, batches={m.NodeHeartbeat: beats})
        await rt.serve()


async def _pass_loop(
    view: passes.ClusterView, settings: SchedulerSettings, wake: asyncio.Event, stop: asyncio.Event
) -> None:
    """Run passes one at a time: when asked, and on a period (for expiring backoffs)."""
    next_wake: float | None = None
    backoff = Backoff(0.5, 5.0)
    full = collector.FullCollections()
    while not stop.is_set():
        timeout = settings.pass_interval
        if next_wake is not None:
            timeout = max(0.0, min(timeout, next_wake - time.time()))
        await wait_any(stop, wake, timeout=timeout)
        if stop.is_set():
            return
        wake.clear()
        try:
            _, next_wake = await view.run_pass()
            backoff.reset()
            full.after_pass(busy=wake.is_set())
        except Exception as exc:  # the loop outlives any failure: the next pass retries
            report_failure("pass.failed", exc)
            await wait_or_stop(stop, backoff.next())
            wake.set()


async def _watch_leadership(
    leader: asyncpg.Connection, stop: asyncio.Event, term: asyncio.Event, done: asyncio.Event
) -> None:
    """End the term when the process stops, or at once when the lock's connection is
    lost (another scheduler may take over: this one must not write any more)."""
    while not done.is_set():
        if stop.is_set():
            term.set()
            return
        try:
            if leader.is_closed():
                raise ConnectionError("the connection holding the lock is closed")
            await leader.fetchval("SELECT 1")
        except Exception as exc:
            log.error("scheduler.lost_leadership", error=repr(exc))
            term.set()
            return
        await wait_any(stop, done, timeout=2.0)

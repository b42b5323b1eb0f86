"""One service runtime: what every Zoe service opens, runs and closes, in one written order.

A service's ``serve`` is a few lines over ``Runtime``::

    async with Runtime("monitor", settings, stop) as rt:
        pool = await rt.open_pool()        # migrates first
        bus = await rt.open_bus()
        await rt.serve_metrics()           # /metrics, /healthz, /readyz (common/probe.py)
        rt.run_relay(pool, bus)            # the outbox relay of this process
        rt.every("nodes.check", 1.0, check)
        await rt.consume(routes.MONITOR, on_message)
        await rt.serve()                   # until ``stop``, then the shutdown below

Readiness: opening the pool adds the check that the database answers, opening the bus
that the broker link is up and, once something consumes, that the consumers consume.

Shutdown order, and why:

1. stop fetching messages and let in-flight handlers finish, up to ``drain_timeout``
   (then they are cancelled, and their messages redelivered): they commit their changes
   and outbox rows, or none at all;
2. the ``on_drained`` steps (the api stops its HTTP site here, letting requests finish);
3. stop the loops: the relay publishes the rows it has taken, the periodic loops end;
4. close the bus, then the pool (the reverse of opening: nothing uses the pool after the
   relay and the handlers are done).

Loops started with ``every`` or ``loop`` never die of an error: a transient one (the
broker or the database away) is logged as a warning, anything else with its traceback,
and both are tried again after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
import structlog

from common import db, metrics
from common.bus import BatchHandler, Bus, Handler, RefusalReply
from common.lifecycle import wait_or_stop
from common.outbox import Relay
from common.probe import Probe
from common.retry import Backoff, report_failure
from common.settings import Settings

log = structlog.get_logger("runtime")

T = TypeVar("T")

__all__ = ["Backoff", "Probe", "Runtime", "report_failure", "shielded"]


async def shielded(work: Awaitable[T]) -> T:
    """Finish ``work`` even if the caller is cancelled meanwhile (then re-raise the
    cancellation): for the step that follows a side effect, such as publishing the
    fact of a container just removed, which nobody would do again."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


class Runtime:
    """The resources and tasks of one service process, opened and closed in one order.

    ``probe``: the process's metrics and readiness checks, when they outlive this runtime
    (the scheduler's, served across its terms of leadership); by default its own.
    """

    def __init__(
        self, name: str, settings: Settings, stop: asyncio.Event, *, probe: Probe | None = None
    ) -> None:
        self.name = name
        self.probe = probe or Probe(metrics.registry(metrics.service_of(name)))
        self.settings = settings
        self.stop = stop
        self.loops_stop = asyncio.Event()  # set at step 3 of the shutdown
        self._stack = contextlib.AsyncExitStack()
        # the checks this runtime added go with it (a standby scheduler is not ready)
        self._stack.callback(self._remove_checks)
        self._checks: list[Callable[[], None]] = []
        self._tasks: asyncio.TaskGroup | None = None
        self._bus: Bus | None = None
        self._drained: list[Callable[[], Awaitable[object]]] = []

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.loops_stop.set()
        await self._stack.__aexit__(et, e, tb)

    def require(self, name: str, check: Callable[[], bool | Awaitable[bool]]) -> None:
        """A readiness check of this runtime's lifetime (``Probe.require``)."""
        self._checks.append(self.probe.require(name, check))

    def _remove_checks(self) -> None:
        for remove in self._checks:
            remove()

    def _opening(self) -> None:
        # Resources are opened before any task starts, so that they close after every
        # task has ended (the exit stack closes in reverse order of opening).
        if self._tasks is not None:
            raise RuntimeError("open every resource before starting consumers or loops")

    async def open_pool(self, *, max_size: int = 10) -> asyncpg.Pool:
        """Apply pending migrations, then open the connection pool."""
        self._opening()
        await db.migrate(self.settings.database_url)
        pool: asyncpg.Pool = await self._stack.enter_async_context(
            db.pool(self.settings.database_url, max_size=max_size)
        )

        async def database() -> bool:
            return bool(await pool.fetchval("SELECT 1"))

        self.require("database", database)
        return pool

    async def open_bus(self, name: str | None = None) -> Bus:
        """Connect to the broker (the topology is declared on connect)."""
        self._opening()
        self._bus = await self._stack.enter_async_context(
            Bus(
                self.settings.amqp_url,
                name=name or self.name,
                prefetch=self.settings.prefetch,
                transient_retry=self.settings.transient_retry,
                quorum_size=self.settings.amqp_quorum_size,
            )
        )
        self.watch_bus(self._bus)
        return self._bus

    def watch_bus(self, bus: Bus) -> None:
        """Readiness: the broker link is up, and the consumers consume (once some were
        started: ``Bus.consume`` directly, as the executor does, counts too)."""
        self.require("broker", lambda: bus.connected)
        self.require("consumers", lambda: bus.consuming)

    async def serve_metrics(self) -> None:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``metrics_host:metrics_port``
        until shutdown ends (0: not at all; the api adds them to its own HTTP port).
        Opened before any task, so it answers (not ready) until the last one ended."""
        self._opening()
        if self.settings.metrics_port:
            await self._stack.enter_async_context(
                self.probe.serving(self.settings.metrics_host, self.settings.metrics_port)
            )

    async def enter(self, resource: contextlib.AbstractAsyncContextManager[T]) -> T:
        """Open another resource (a Docker client...), closed in reverse order of opening."""
        self._opening()
        return await self._stack.enter_async_context(resource)

    def _group(self) -> asyncio.TaskGroup:
        # Entered after the pool and the bus: its tasks end before either closes.
        if self._tasks is None:
            raise RuntimeError("start tasks with Runtime.loop/every after opening resources")
        return self._tasks

    async def start_tasks(self) -> None:
        """Open the task group (tasks started afterwards end before resources close)."""
        if self._tasks is None:
            self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())

    async def loop(
        self, name: str, body: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
    ) -> None:
        """Run ``body(loops_stop)`` as a task until it returns (it watches the event)."""
        await self.start_tasks()
        self._group().create_task(body(self.loops_stop), name=name)

    async def every(
        self,
        name: str,
        interval: float,
        work: Callable[[], Awaitable[object]],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        """Call ``work`` every ``interval`` seconds until the loops stop; a failure is
        logged and the next call comes after a growing backoff instead."""

        async def body(stop: asyncio.Event) -> None:
            retry = backoff or Backoff(min(interval, 0.5), max(interval, 5.0))
            delay = interval
            while not await wait_or_stop(stop, delay):
                try:
                    await work()
                except Exception as exc:
                    report_failure(f"{name}.failed", exc)
                    delay = retry.next()
                    continue
                retry.reset()
                delay = interval

        await self.loop(name, body)

    async def run_relay(self, pool: asyncpg.Pool, bus: Bus) -> None:
        """Publish this service's outbox rows (any process's of it) until the loops stop:
        those of the routes it sends, which its broker user may publish."""
        sender = self.name.split(".")[0]
        await self.loop("outbox.relay", Relay(pool, bus, sender=sender).run)

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        batches: Mapping[type[Any], BatchHandler] | None = None,
        refusal_reply: RefusalReply | None = None,
        max_body: int | None = None,
    ) -> None:
        """Deliver ``queue``'s messages to ``handler`` under the bus's ack policy, each
        bounded by ``handler_timeout`` (``Bus.consume`` says the rest)."""
        assert self._bus is not None, "open the bus first"
        await self.start_tasks()
        await self._bus.consume(
            queue,
            handler,
            batches=batches,
            timeout=self.settings.handler_timeout,
            refusal_reply=refusal_reply,
            max_body=max_body,
        )

    def on_closed(self, close: Callable[[], Awaitable[object]]) -> None:
        """Close something at shutdown, in reverse order of what was opened or registered
        (registered before the pool, it closes after it)."""
        self._stack.push_async_callback(close)

    def on_drained(self, step: Callable[[], Awaitable[object]]) -> None:
        """A step of shutdown after the consumers drained and before the loops stop."""
        self._drained.append(step)

    async def serve(self) -> None:
        """Wait for ``stop``, then shut down in the order the module docstring gives."""
        await self.stop.wait()
        log.info("service.draining", timeout=self.settings.drain_timeout)
        if self._bus is not None:
            await self._bus.stop_consuming(self.settings.drain_timeout)
        for step in self._drained:
            await step()
        self.loops_stop.set()

"""One way to run a service process: signals set an event, work drains, resources close.

``run(name, settings, serve)`` configures logging, installs SIGTERM/SIGINT handlers that
only set the stop event, and runs ``serve(settings, stop)``. A service's ``serve`` opens
its resources on an ``AsyncExitStack`` (so they close in reverse order: consumers stop
before the bus closes, the bus before the pool) and returns once ``stop`` is set and its
in-flight work drained.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
import uvloop

from common.errors import StartRefused
from common.logging import configure
from common.settings import Settings

S = TypeVar("S", bound=Settings)


def run(name: str, settings: S, serve: Callable[[S, asyncio.Event], Awaitable[None]]) -> int:
    """Run ``serve`` until SIGTERM or SIGINT; returns the process exit code."""
    configure(name, settings.log_level, settings.log_json)
    log = structlog.get_logger("lifecycle")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("service.starting", settings=_public(settings))
        await serve(settings, stop)
        log.info("service.stopped")

    try:
        # uvloop: the same asyncio, its event loop in C (a sizeable share of each
        # service's CPU goes to the loop and its socket writes)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except StartRefused as exc:  # what the operator must change, without a traceback
        log.error("service.refused", reason=str(exc))
        return 2
    except Exception:
        log.exception("service.crashed")
        return 1
    return 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; returns whether it is set."""
    if stop.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):  # no task of its own (periodic loops are many)
            await stop.wait()
    except TimeoutError:
        return False
    return True


def _public(settings: Settings) -> dict[str, object]:
    import msgspec

    out = msgspec.structs.asdict(settings)
    for key in ("amqp_url", "database_url"):
        url = str(out.get(key, ""))
        if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
            scheme, rest = url.split("//", 1)
            user = rest.split(":", 1)[0]
            out[key] = f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
    return out


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any of ``events`` is set, or after ``timeout`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

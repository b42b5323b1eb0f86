"""What a service answers about itself over HTTP: ``/metrics``, ``/healthz``, ``/readyz``.

- ``/metrics``: the process's registry (common/metrics.py) in the Prometheus text format;
- ``/healthz``: 200 while the process runs and its event loop answers (alive);
- ``/readyz``: 200 when every readiness check passes (the pool and the bus connected, the
  consumers consuming; for the scheduler, that it leads), else 503; both with a small
  JSON body naming what is missing.

The scheduler, monitor and executor serve these on a port of their own
(``ZOE_METRICS_HOST``, ``ZOE_METRICS_PORT``; 0 turns it off), opened by
``Runtime.serve_metrics``; the api adds them to its HTTP application.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger("probe")

# A check answers whether its part is ready; it may be a coroutine (a database ping).
Check = Callable[[], bool | Awaitable[bool]]
CHECK_TIMEOUT = 2.0  # a check that does not answer within it counts as not ready


class Probe:
    """The registry and the readiness checks of one process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._checks: dict[str, Check] = {}

    def require(self, name: str, check: Check) -> Callable[[], None]:
        """Add a readiness check; returns what removes it again."""
        self._checks[name] = check

        def remove() -> None:
            if self._checks.get(name) is check:
                del self._checks[name]

        return remove

    async def missing(self) -> list[str]:
        """The checks that do not pass now, in the order they were added."""
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        return [n for n, ok in zip(names, results, strict=True) if not ok]

    @staticmethod
    async def _run(check: Check) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                result = check()
                if not isinstance(result, bool):
                    result = await result
                return result
        except Exception:  # whatever fails, the part is not ready
            return False

    # ---- HTTP -------------------------------------------------------------------------

    async def metrics(self, _: web.Request) -> web.Response:
        """The registry's figures, in the Prometheus text format."""
        # in the event loop's thread: collectors read the service's own structures
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _: web.Request) -> web.Response:
        """Alive: answering at all is the proof."""
        return web.json_response({"status": "alive"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Ready, or 503 with the checks that fail."""
        missing = await self.missing()
        if missing:
            return web.json_response({"status": "not ready", "missing": missing}, status=503)
        return web.json_response({"status": "ready", "missing": []})

    def add_routes(self, app: web.Application) -> None:
        """``/metrics``, ``/healthz`` and ``/readyz`` at the root of ``app``."""
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[None]:
        """Serve the three routes on ``host:port`` while the context is open."""
        app = web.Application()
        self.add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            log.info("metrics.listening", host=host, port=port)
            yield
        finally:
            await runner.cleanup()

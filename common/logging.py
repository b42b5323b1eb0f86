"""structlog, configured once per process.

JSON lines when stderr is not a terminal (services in the background, CI), coloured
key-value output otherwise. Handlers bind ``execution_id`` / ``instance`` with
``structlog.contextvars`` so every line of one message's handling carries them.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(service: str, level: str = "info", json: bool | None = None) -> None:
    """Set up structlog and the stdlib root logger for ``service``."""
    if json is None:
        json = not sys.stderr.isatty()
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries (aio-pika, aiohttp) log through the stdlib: keep their warnings only.
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; ``name`` is added as ``logger``."""
    log = structlog.get_logger()
    return log.bind(logger=name) if name else log  # type: ignore[no-any-return]

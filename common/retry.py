"""Retrying: which failures are transient, and one backoff for every retry loop."""

from __future__ import annotations

import aiormq
import asyncpg
import structlog

log = structlog.get_logger("retry")

# Failures that say a dependency is away for now (the broker, the database, the engine,
# the network), not that the work is wrong: retried with backoff everywhere.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.OperatorInterventionError,  # shutting down, cannot connect now, cancelled
    asyncpg.TransactionRollbackError,  # serialization failure, deadlock: try again
    asyncpg.TooManyConnectionsError,
    # no listed server is a primary now (a failover under way), or a write met a standby
    asyncpg.TargetServerAttributeNotMatched,
    asyncpg.ReadOnlySQLTransactionError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel is being restored
    ConnectionError,
    OSError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a dependency is away for now (worth a retry later). A message
    the broker returned or refused (``DeliveryError``) is about that message: not
    transient."""
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return False
    return isinstance(exc, TRANSIENT_ERRORS)


class Backoff:
    """Doubling delays between ``first`` and ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self._first, self._cap = first, cap
        self._next = first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (up to the cap)."""
        delay, self._next = self._next, min(self._next * 2, self._cap)
        return delay

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self._next = self._first


def report_failure(event: str, exc: BaseException) -> None:
    """Log a failure that will be retried: briefly when transient, else with a traceback."""
    if is_transient(exc):
        log.warning(event, error=repr(exc))
    else:
        log.error(event, error=repr(exc), exc_info=exc)

"""The transactional outbox: state changes and the messages announcing them commit together.

A handler calls ``enqueue(conn, ...)`` inside its transaction; ``Relay`` publishes the
rows with pipelined confirms and deletes them. Any service's relay may publish any row
(rows are taken with ``FOR UPDATE SKIP LOCKED``), so messages go out as long as one
service runs. A crash between publish and delete publishes a row twice: consumers are
idempotent, as the bus is at-least-once anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import asyncpg
import structlog

from common import messages as m
from common.bus import Bus, Outgoing
from common.lifecycle import wait_any, wait_or_stop

log = structlog.get_logger("outbox")

CHANNEL = "zoe_outbox"
BATCH = 500


async def enqueue(conn: asyncpg.Connection, items: Iterable[Outgoing]) -> None:
    """Add messages to the outbox in the caller's transaction (published on commit)."""
    rows = [(o.exchange, o.routing_key, m.encode(o.message)) for o in items]
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO outbox (exchange, routing_key, body) VALUES ($1, $2, $3)", rows
    )
    await conn.execute(f"NOTIFY {CHANNEL}")


class Relay:
    """Publishes outbox rows; woken by NOTIFY, and by a poll in case a wake-up was missed."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, *, poll_interval: float = 1.0) -> None:
        self._pool = pool
        self._bus = bus
        self._poll = poll_interval
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; broker or database errors are retried."""
        listener = await self._pool.acquire()
        try:
            await listener.add_listener(CHANNEL, self._on_notify)
            backoff = 0.1
            while not stop.is_set():
                try:
                    published = await self.publish_once()
                    backoff = 0.1
                except (asyncpg.PostgresError, OSError, ConnectionError, RuntimeError) as exc:
                    log.warning("outbox.retry", error=repr(exc), backoff=backoff)
                    published = 0
                    await wait_or_stop(stop, backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if published < BATCH:
                    self._wake.clear()
                    await wait_any(stop, self._wake, timeout=self._poll)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(CHANNEL, self._on_notify)
            await self._pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def publish_once(self) -> int:
        """Publish one batch of rows; returns how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, exchange, routing_key, body FROM outbox"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                BATCH,
            )
            if not rows:
                return 0
            await self._bus.publish_raw((r["exchange"], r["routing_key"], r["body"]) for r in rows)
            await conn.execute(
                "DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        return len(rows)

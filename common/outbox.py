"""The transactional outbox: state changes and the messages announcing them commit together.

A handler calls ``enqueue(conn, ...)`` inside its transaction; ``Relay`` publishes the
rows with pipelined confirms and deletes them. Any relay may publish any row it takes
(rows are taken with ``FOR UPDATE SKIP LOCKED``). A crash between publish and commit
publishes a row twice: consumers are idempotent, as the bus is at-least-once anyway.

A relay given its service (``sender``) publishes only the rows of the routes that service
sends (``routes.relayed_by``): those its broker user may publish (docs/operations.md,
"Least privilege"). Rows then wait for a process of the service that wrote them.

Each process NOTIFYs a channel of its own, which only its own relay listens to: the
writer's relay publishes at once (PostgreSQL delivers the notification on commit), and
the other services' relays are not woken for rows they would not find (another relay
took them). Every relay also polls, so rows of a process that died go out within
``PEER_GRACE`` and ``poll_interval`` (with a sender: once a process of the same service
runs). A listening
connection the database dropped (a restart) is made again as soon as the database takes
connections; one lost without the client hearing of it (a partition) is covered by the
poll alone.

The writer also keeps what it wrote in memory (``stage``), under a token its
notification carries: the notification proves the commit, so the relay publishes those
messages from memory and then deletes their rows by id, one statement, instead of a
transaction that takes the rows back from the table (BEGIN, DELETE ... RETURNING,
COMMIT). Anything else goes by the table: a round the poll woke (at least one every
``poll_interval``, however busy the relay), the first after listening again, a token the
relay does not know (staged too long ago, the stage full, a round by the table took its
rows), a batch whose ids its writer never had, a batch the broker refused (parked there,
as below), a row of a route this relay may not send; from that batch on, in order.
Each row names its writer (its channel), and the relays of other processes take a row
only once it is ``PEER_GRACE`` old: its writer's relay publishes it meanwhile, and
a writer that died has its rows published by the others after the grace. A crash
between a publish and its delete publishes the rows again, as before; so does a writer
whose publish and delete take longer than the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import aiormq
import asyncpg
import pamqp.commands
import structlog

from common import messages as m
from common import metrics, routes
from common.bus import Bus, MessageTooLarge, Outgoing
from common.lifecycle import wait_any, wait_or_stop
from common.retry import Backoff, is_transient, report_failure

log = structlog.get_logger("outbox")

# this process's notification channel (see the module's docstring)
CHANNEL = f"zoe_outbox_{uuid.uuid4().hex[:16]}"
BATCH = 500
STAGE_BYTES = 64 << 20  # message bytes staged in memory at most
STAGE_AGE = 60.0  # seconds a staged batch waits for its commit at most (then: the table)
SETTLE_WAIT = 1.0  # seconds the relay waits for a committed batch's ids (its writer has them)
# seconds before a relay takes the rows another process wrote (that process's own relay
# publishes them from memory meanwhile: see the module's docstring)
PEER_GRACE = 5.0

Item = tuple[str, str, bytes]  # exchange, routing key, encoded body
T = TypeVar("T")


class _Staged:
    """Messages one statement wrote, waiting for its transaction's commit."""

    __slots__ = ("at", "ids", "items", "size")

    def __init__(self, items: list[Item], at: float) -> None:
        self.items = items
        self.size = sum(len(body) for _, _, body in items)
        self.at = at
        # the rows' ids, once the statement returned them
        self.ids: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()


class _Stage:
    """This process's staged messages, by token (see the module's docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_token: dict[str, _Staged] = {}  # oldest first
        self._claimed: dict[str, _Staged] = {}  # notified, a relay waiting for the ids
        self._bytes = 0
        self._tokens = itertools.count(1)

    def add(self, items: list[Item]) -> str:
        """Stage ``items``; returns the token for the NOTIFY ('' when the stage is full:
        the rows then go by the table)."""
        self._expire()
        batch = _Staged(items, self._clock())
        if self._bytes + batch.size > STAGE_BYTES:
            return ""
        token = str(next(self._tokens))
        self._by_token[token] = batch
        self._bytes += batch.size
        return token

    def settle(self, token: str, ids: Sequence[int] | None) -> None:
        """The statement stored the rows ``ids`` (None, or not one per item: dropped)."""
        entry = self._by_token.get(token) or self._claimed.get(token)
        if entry is None or entry.ids.done():
            return
        if ids is None or len(ids) != len(entry.items):
            self.drop(token)
        else:
            # a statement's serial ids ascend in the order of its rows: its items' order
            entry.ids.set_result(sorted(ids))

    def drop(self, token: str) -> None:
        """Forget a batch (its statement failed); a relay that claimed it sees its ids
        cancelled."""
        entry = self.discard(token) or self._claimed.get(token)
        if entry is not None:
            entry.ids.cancel()

    def discard(self, token: str) -> _Staged | None:
        """Forget a batch not claimed (the table's way takes its rows)."""
        entry = self._by_token.pop(token, None)
        if entry is not None:
            self._bytes -= entry.size
        return entry

    def claim(self, token: str) -> _Staged | None:
        """The batch of a token whose commit was notified, for one relay alone (None:
        unknown here); ``release`` it once its ids are in hand or given up."""
        entry = self.discard(token)
        if entry is not None:
            self._claimed[token] = entry
        return entry

    def release(self, token: str) -> None:
        self._claimed.pop(token, None)

    def forget(self, taken: set[int]) -> None:
        """Rows ``taken`` from the table: drop their batches, and those whose ids are not
        known yet (which may be among them), so that none goes out twice from here."""
        for token, entry in list(self._by_token.items()):
            if not entry.ids.done() or not taken.isdisjoint(entry.ids.result()):
                self.discard(token)

    def _expire(self) -> None:
        """Drop batches staged over ``STAGE_AGE`` ago (rolled back, or never notified:
        committed ones go by the table)."""
        horizon = self._clock() - STAGE_AGE
        while self._by_token:
            token, entry = next(iter(self._by_token.items()))
            if entry.at >= horizon:
                break
            self.discard(token)

    def __len__(self) -> int:
        return len(self._by_token)


STAGE = _Stage()


def _after_fork() -> None:
    """A forked process is a writer of its own: a channel and a stage of its own (the
    parent's tokens would name the parent's batches)."""
    global CHANNEL, STAGE
    CHANNEL = f"zoe_outbox_{uuid.uuid4().hex[:16]}"
    STAGE = _Stage()


os.register_at_fork(after_in_child=_after_fork)


def columns(items: Iterable[Outgoing]) -> tuple[list[str], list[str], list[bytes]]:
    """The outbox columns of ``items``: the three arrays ``INSERT_ROWS`` takes."""
    exchanges: list[str] = []
    keys: list[str] = []
    bodies: list[bytes] = []
    for o in items:
        exchanges.append(o.exchange)
        keys.append(o.routing_key)
        bodies.append(m.encode(o.message))
    return exchanges, keys, bodies


# The outbox insert, for a statement that stores a change and its messages at once:
# ``{0}``, ``{1}``, ``{2}`` are the parameter numbers of the arrays of ``columns``, ``{3}``
# the one holding CHANNEL (the writer; add ``RETURNING id``: the ids ``STAGE.settle``
# takes).
INSERT_ROWS = (
    "INSERT INTO outbox (exchange, routing_key, body, writer, created_at)"
    " SELECT r.exchange, r.routing_key, r.body, ${3}::text, clock_timestamp()"
    " FROM unnest(${0}::text[], ${1}::text[], ${2}::bytea[]) AS r(exchange, routing_key, body)"
)
# ... and the wake-up of this process's relay: ``{0}``, the parameter holding CHANNEL,
# ``{1}`` the one holding the token of ``stage``.
NOTIFY = "pg_notify(${0}, ${1})"


def stage(exchanges: list[str], keys: list[str], bodies: list[bytes]) -> str:
    """Keep a statement's outbox rows in memory until its commit is notified; returns
    the token for its NOTIFY. ``staged`` does the rest."""
    return STAGE.add(list(zip(exchanges, keys, bodies, strict=True)))


async def staged(
    rows: tuple[list[str], list[str], list[bytes]],
    statement: Callable[[str], Awaitable[T]],
    ids: Callable[[T], Sequence[int] | None],
) -> T:
    """Run ``statement(token)``, which writes the outbox ``rows`` (``columns``) and
    NOTIFYs CHANNEL with ``token``, its messages staged for the relay meanwhile; ``ids``
    reads the rows' ids from its result. Returns the result."""
    token = stage(*rows)
    try:
        result = await statement(token)
    except BaseException:
        STAGE.drop(token)
        raise
    STAGE.settle(token, ids(result))
    return result


async def enqueue(conn: asyncpg.Connection, items: Iterable[Outgoing]) -> None:
    """Add messages to the outbox in the caller's transaction (published on commit)."""
    rows = columns(items)
    if not rows[2]:
        return
    # one round trip, whatever the number of rows: the rows, and the wake-up of this
    # process's relay
    sql = (
        f"WITH rows AS ({INSERT_ROWS.format(1, 2, 3, 4)} RETURNING id)"
        f" SELECT (SELECT array_agg(id) FROM rows), {NOTIFY.format(4, 5)}"
    )
    await staged(rows, lambda token: conn.fetchval(sql, *rows, CHANNEL, token), lambda ids: ids)


def _closed(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is gone (one the pool took back on its loss says so
    by refusing the question)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def refused_for_itself(error: BaseException) -> bool:
    """Whether a publish failed because of the message itself (too large, or returned by
    the broker as unroutable), so that publishing it again would fail again. Any other
    failure (the link, the channel, a timeout, a nack: a quorum queue between leaders
    after a broker node died, the unknown) is retried."""
    if isinstance(error, aiormq.exceptions.DeliveryError):
        return not isinstance(error.frame, pamqp.commands.Basic.Nack)
    return isinstance(error, MessageTooLarge)


class Relay:
    """Publishes outbox rows; woken by NOTIFY, and by a poll in case a wake-up was missed."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        poll_interval: float = 1.0,
        sender: str | None = None,
    ) -> None:
        """``sender``: publish only the rows of the routes this service sends (None: all)."""
        self._pool = pool
        self._bus = bus
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._rows = routes.relayed_by(sender) if sender is not None else ".*"
        self._may_send = re.compile(self._rows).search
        self._tokens: list[str] = []  # staged batches notified as committed, in order
        self._table = False  # a wake-up that only the table's way serves

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set; broker or database errors are retried.

        The listening connection is made again when the database drops it (a restart,
        a terminated backend): without it every row would wait for the poll."""
        listener: asyncpg.Connection | None = None
        backoff = Backoff(0.1, 5.0)
        loop = asyncio.get_running_loop()
        read_at = float("-inf")  # the last round by the table
        try:
            while not stop.is_set():
                # cleared before the rows are read: a wake-up for a row committed while
                # this batch is published is kept for the next round
                self._wake.clear()
                tokens, self._tokens = self._tokens, []
                # by the table: nothing notified (the first round, the poll, a retry), or
                # a poll due (rows of a process that died, or whose wake-up was lost)
                table = self._table or not tokens or loop.time() - read_at >= self._poll
                self._table = False
                try:
                    if listener is not None and _closed(listener):
                        await self._unlisten(listener)
                        listener = None
                    if listener is None:  # (a failure here: tried again next round)
                        listener = await self._listen()
                        table = True  # rows committed while nobody listened
                    published = 0
                    if not table:
                        table = not await self._publish_staged(tokens)
                    else:
                        for token in tokens:  # committed: the table's way takes them
                            STAGE.discard(token)
                    if table:
                        read_at = loop.time()
                        published = await self.publish_once()
                        # rows left behind: older than anything notified since, so the
                        # next round is by the table too
                        self._table = self._table or published >= BATCH
                    backoff.reset()
                except Exception as exc:  # the relay outlives any failure: it tries again
                    self._table = True  # (a publish or a delete may have failed)
                    report_failure("outbox.retry", exc)
                    await wait_or_stop(stop, backoff.next())
                    continue
                if published < BATCH:
                    await wait_any(stop, self._wake, timeout=self._poll)
        finally:
            await self._unlisten(listener)

    async def _listen(self) -> asyncpg.Connection:
        """A connection listening on this process's channel; its loss wakes the relay,
        to listen again."""
        listener: asyncpg.Connection = await self._pool.acquire()
        try:
            await listener.add_listener(CHANNEL, self._on_notify)
            listener.add_termination_listener(self._on_lost)
        except BaseException:
            await self._pool.release(listener)
            raise
        return listener

    async def _unlisten(self, listener: asyncpg.Connection | None) -> None:
        if listener is None:
            return
        try:
            with contextlib.suppress(Exception):  # (a closed one is detached already)
                listener.remove_termination_listener(self._on_lost)
                await listener.remove_listener(CHANNEL, self._on_notify)
        finally:
            with contextlib.suppress(Exception):
                await self._pool.release(listener)

    def _on_notify(self, _conn: object, _pid: object, _channel: object, token: str) -> None:
        if token:
            self._tokens.append(token)
        else:
            self._table = True
        self._wake.set()

    async def _publish_staged(self, tokens: list[str]) -> bool:
        """Publish the staged batches of ``tokens`` (committed: they were notified, in
        the order of their commits) from memory, then delete their rows by id. False:
        from the first batch that cannot go this way on, the batches are left to a round
        by the table (which publishes them in order, or parks the refused)."""
        batches: list[tuple[_Staged, list[int]]] = []
        complete = True
        for n, token in enumerate(tokens):
            batch = STAGE.claim(token)
            if batch is not None:
                try:
                    if not batch.ids.done():  # committed, its writer about to have the ids
                        await asyncio.wait([batch.ids], timeout=SETTLE_WAIT)
                finally:
                    STAGE.release(token)
            if (
                batch is None  # unknown here: only the table has its rows
                or not batch.ids.done()
                or batch.ids.cancelled()  # its writer never learnt the ids
                or not all(self._may_send(f"{e} {k}") for e, k, _ in batch.items)
            ):
                complete = False
                for later in tokens[n + 1 :]:  # (after it, in order: by the table too)
                    STAGE.discard(later)
                break
            batches.append((batch, batch.ids.result()))
        if not batches:
            return complete
        items = [item for batch, _ in batches for item in batch.items]
        try:
            await self._bus.publish_raw(items)
        except Exception as exc:
            # the rows are all still in the table: its way retries, or parks the refused
            log.info("outbox.staged_refused", error=repr(exc), messages=len(items))
            return False
        # (rows a peer took after its grace are locked or gone: skipped, never waited for)
        await self._pool.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
            " WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED)",
            [i for _, ids in batches for i in ids],
        )
        now = time.monotonic()
        _count_published(now - batch.at for batch, _ in batches for _ in batch.items)
        return complete

    def _on_lost(self, *_: object) -> None:
        log.warning("outbox.listener_lost")
        self._wake.set()  # the next round finds it closed, and listens again

    async def publish_once(self) -> int:
        """Publish one batch of rows; returns how many were taken off the outbox.

        The rows are deleted first and the deletion commits only once the broker
        confirmed them all: a failed publish rolls it back, and the rows stay. When the
        batch fails for a reason that is not transient, each row is published alone,
        and a row refused for its own sake (too large, unroutable) is parked in
        ``outbox_parked`` with the reason, so that it never blocks the others.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox"
                " WHERE exchange || ' ' || routing_key ~ $2"
                "  AND (writer IS NULL OR writer = $3"
                "   OR created_at < clock_timestamp() - $4 * interval '1 second')"
                " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
                " RETURNING id, exchange, routing_key, body, created_at",
                BATCH,
                self._rows,
                CHANNEL,
                PEER_GRACE,
            )
            if not rows:
                return 0
            STAGE.forget({r["id"] for r in rows})  # they go out from here, not from memory
            rows.sort(key=lambda r: r["id"])  # RETURNING keeps no order: publish in id order
            items = [(r["exchange"], r["routing_key"], r["body"]) for r in rows]
            try:
                await self._bus.publish_raw(items)
            except Exception as exc:
                if is_transient(exc):
                    raise  # the broker is away: the rows stay for the next try
                await self._park_refused(conn, rows, await self._bus.publish_each(items))
                return len(rows)
            _observe_published(rows)
        return len(rows)

    async def _park_refused(
        self,
        conn: asyncpg.Connection,
        rows: list[asyncpg.Record],
        results: list[BaseException | None],
    ) -> None:
        failed = [(r, e) for r, e in zip(rows, results, strict=True) if e is not None]
        for _, error in failed:
            if not refused_for_itself(error):
                raise error  # try the whole batch again later (some go out twice: fine)
        await conn.executemany(
            "INSERT INTO outbox_parked (id, exchange, routing_key, body, created_at, error)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            [
                (r["id"], r["exchange"], r["routing_key"], r["body"], r["created_at"], repr(e))
                for r, e in failed
            ],
        )
        metrics.OUTBOX_PARKED.inc(len(failed))
        _observe_published([r for r, e in zip(rows, results, strict=True) if e is None])
        for r, e in failed:
            log.error("outbox.parked", id=r["id"], routing_key=r["routing_key"], error=repr(e))


def _observe_published(rows: list[asyncpg.Record]) -> None:
    """Count rows the broker confirmed, and how long each waited in the outbox."""
    now = datetime.datetime.now(datetime.UTC)
    _count_published((now - r["created_at"]).total_seconds() for r in rows)


def _count_published(lags: Iterable[float]) -> None:
    """Count messages the broker confirmed, each with the seconds it waited."""
    n = 0
    for lag in lags:
        metrics.OUTBOX_LAG.observe(max(0.0, lag))
        n += 1
    metrics.OUTBOX_PUBLISHED.inc(n)


async def backlog(conn: asyncpg.Connection) -> tuple[int, float, int]:
    """Rows in the outbox, the age in seconds of the oldest (0: none), and rows parked:
    one cheap statement, for a periodic gauge."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM outbox) AS n,"
        " coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM outbox)), 0)"
        "  AS oldest,"
        " (SELECT count(*) FROM outbox_parked) AS parked"
    )
    assert row is not None
    return int(row["n"]), max(0.0, float(row["oldest"])), int(row["parked"])

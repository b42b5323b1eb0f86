"""The outbox relay against the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from common import messages as m
from common import outbox, routes
from common.bus import EVENTS, Bus, Outgoing
from common.outbox import Relay, enqueue
from tests.conftest import TestEnv, own_database, wait_for


def _event(execution_id: int, state: str = "queued") -> m.ExecutionStatesChanged:
    change = m.StateChange(execution_id=execution_id, state=state, at=0.0)
    return m.ExecutionStatesChanged(changes=[change])


async def _listen(bus: Bus, *events: m.ExecutionStatesChanged) -> tuple[Any, list[int]]:
    """A queue of its own bound to ``events``' keys; returns its channel and the
    execution ids of the events it receives, in order."""
    channel = await bus._conn.channel()  # type: ignore[union-attr]
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for event in events:
        await queue.bind(EVENTS, routing_key=routes.routing_key(event))
    got: list[int] = []

    async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = m.decoder(m.ExecutionStatesChanged).decode(message.body)
        got.extend(c.execution_id for c in event.changes)

    await queue.consume(received, no_ack=True)
    return channel, got


class _Relay(Relay):
    """A relay during whose first publish another transaction commits a row."""

    def __init__(self, pool: asyncpg.Pool, bus: Bus, late: m.Message) -> None:
        super().__init__(pool, bus, poll_interval=600)  # a missed wake-up would show
        self.late: m.Message | None = late

    async def publish_once(self) -> int:
        published = await super().publish_once()
        if published and self.late is not None:
            async with self._pool.acquire() as conn, conn.transaction():
                await enqueue(conn, [Outgoing(self.late)])
            self.late = None
            await asyncio.wait_for(self._wake.wait(), 10)  # its NOTIFY came meanwhile
        return published


class _Counted(Relay):
    """A relay that counts its rounds by the table (``publish_once``, once done) and
    those from memory, with their answers (False: the table's way is needed)."""

    table_rounds = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.from_memory: list[bool] = []

    async def publish_once(self) -> int:
        try:
            return await super().publish_once()
        finally:
            self.table_rounds += 1

    async def _publish_staged(self, tokens: list[str]) -> bool:
        done = await super()._publish_staged(tokens)
        self.from_memory.append(done)
        return done


@contextlib.asynccontextmanager
async def _waiting_relay(pool: asyncpg.Pool, bus: Bus, poll: float) -> AsyncIterator[_Counted]:
    """A counting relay, running, past its first round by the table (so that what a
    test commits next is notified to it); stopped at the end."""
    relay = _Counted(pool, bus, poll_interval=poll)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    try:
        await wait_for(lambda: relay.table_rounds >= 1, what="the relay's first round")
        yield relay
    finally:
        stop.set()
        await running


async def test_committed_rows_go_out_from_memory_and_rolled_back_ones_never(
    test_env: TestEnv,
) -> None:
    """Once the relay waits, what a transaction enqueued goes out when it commits, from
    the writer's memory (no round by the table), and its rows are deleted; what a
    rolled-back transaction enqueued is never published."""
    async with (
        own_database(test_env, "staged") as pool,
        Bus(test_env.amqp_url, name="t-staged") as bus,
    ):
        first, undone, second = _event(10**9 + 31), _event(10**9 + 32), _event(10**9 + 33)
        channel, got = await _listen(bus, first, undone, second)
        async with _waiting_relay(pool, bus, 600) as relay:
            async with pool.acquire() as conn, conn.transaction():
                await enqueue(conn, [Outgoing(first)])
            with pytest.raises(RuntimeError):
                async with pool.acquire() as conn, conn.transaction():
                    await enqueue(conn, [Outgoing(undone)])
                    raise RuntimeError("rolled back")
            async with pool.acquire() as conn, conn.transaction():
                await enqueue(conn, [Outgoing(second)])
            await wait_for(lambda: len(got) == 2, timeout=20, what="the committed rows")
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="their delete"
            )
        assert got == [10**9 + 31, 10**9 + 33]
        assert relay.table_rounds == 1  # (the poll is ten minutes away)
        assert relay.from_memory and all(relay.from_memory)
        await channel.close()


async def test_a_batch_whose_writer_never_learnt_its_ids_goes_by_the_table(
    test_env: TestEnv,
) -> None:
    """A commit notified for a staged batch whose statement's answer never reached its
    writer (the connection lost after the commit): the relay waits a moment for the ids,
    then takes the rows from the table; nothing is lost, nothing goes out twice."""
    async with (
        own_database(test_env, "unsettled") as pool,
        Bus(test_env.amqp_url, name="t-unsettled") as bus,
    ):
        event = _event(10**9 + 41)
        channel, got = await _listen(bus, event)
        async with _waiting_relay(pool, bus, 600) as relay:
            exchanges, keys, bodies = outbox.columns([Outgoing(event)])
            token = outbox.stage(exchanges, keys, bodies)  # never settled
            await pool.execute(
                f"WITH rows AS ({outbox.INSERT_ROWS.format(1, 2, 3, 4)})"
                f" SELECT {outbox.NOTIFY.format(4, 5)}",
                exchanges,
                keys,
                bodies,
                outbox.CHANNEL,
                token,
            )
            await wait_for(lambda: got, timeout=20, what="the row published")
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="its delete"
            )
            await asyncio.sleep(2 * outbox.SETTLE_WAIT)  # a second publish would show
        assert got == [10**9 + 41]
        assert relay.table_rounds == 2
        assert relay.from_memory == [False]  # (after waiting for the ids in vain)
        await channel.close()


async def test_a_row_committed_during_a_publish_goes_out_without_waiting_for_the_poll(
    test_env: TestEnv,
) -> None:
    async with (
        own_database(test_env, "outbox") as pool,
        Bus(test_env.amqp_url, name="t-outbox") as bus,
    ):
        first, late = _event(10**9 + 1), _event(10**9 + 2)
        channel, got = await _listen(bus, first, late)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, [Outgoing(first)])
        stop = asyncio.Event()
        relay = asyncio.create_task(_Relay(pool, bus, late).run(stop))
        try:
            # the poll is 10 minutes away: only the kept wake-up can publish the late row
            await wait_for(lambda: len(got) == 2, timeout=20, what="both rows published")
        finally:
            stop.set()
            await relay
        assert got == [10**9 + 1, 10**9 + 2]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        await channel.close()


@pytest.mark.parametrize("relay_first", [False, True], ids=["from-the-table", "from-memory"])
async def test_rows_the_broker_refuses_are_parked_and_the_others_go_out(
    test_env: TestEnv, relay_first: bool
) -> None:
    """An unroutable command (no queue for its node) and one over the size limit are
    parked with the reason; the rows around them are published; none blocks the head.
    Committed while the relay waits, the batch is first published from memory: refused
    there, it goes by the table and is parked the same way."""
    async with (
        own_database(test_env, "parked") as pool,
        Bus(test_env.amqp_url, name="t-parked") as bus,
    ):
        before, after = _event(10**9 + 11), _event(10**9 + 12)
        channel, got = await _listen(bus, before, after)
        stop_msg = m.StopInstance(execution_id=1, instance_id=2, container_name="c", network="n")
        huge = _event(10**9 + 13, state="x" * (routes.MAX_MESSAGE_BYTES + 1))
        stop = asyncio.Event()
        relay = _Counted(pool, bus, poll_interval=600)
        running = asyncio.create_task(relay.run(stop)) if relay_first else None
        if running is not None:
            await wait_for(lambda: relay.table_rounds == 1, what="the relay's first round")
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(
                conn,
                [
                    Outgoing(before),
                    Outgoing(stop_msg, node=f"nowhere-{test_env.run_id}"),
                    Outgoing(huge),
                    Outgoing(after),
                ],
            )
        if running is None:
            running = asyncio.create_task(relay.run(stop))
        try:
            await wait_for(
                lambda: sorted(got) == [10**9 + 11, 10**9 + 12],
                timeout=20,
                what="the good rows published",
            )
            parked = await wait_for(
                lambda: pool.fetch("SELECT routing_key, error FROM outbox_parked ORDER BY id"),
                what="the refused rows parked",
            )
        finally:
            stop.set()
            await running
        assert relay.table_rounds == (2 if relay_first else 1)
        assert relay.from_memory == ([False] if relay_first else [])
        assert [p["routing_key"] for p in parked] == [
            f"nowhere-{test_env.run_id}",
            routes.routing_key(huge),
        ]
        assert "DeliveryError" in parked[0]["error"] or "NO_ROUTE" in parked[0]["error"]
        assert "MessageTooLarge" in parked[1]["error"]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        await channel.close()


async def test_the_wake_up_comes_back_after_the_database_dropped_the_relays_connections(
    test_env: TestEnv,
) -> None:
    """Every connection of the relay's is cut (as at a database restart): it listens again
    on a new one, so that a row committed later goes out at once, not at the next poll."""
    async with (
        own_database(test_env, "relisten") as pool,
        Bus(test_env.amqp_url, name="t-relisten") as bus,
    ):
        before, middle, after = _event(10**9 + 21), _event(10**9 + 22), _event(10**9 + 23)
        channel, got = await _listen(bus, before, middle, after)
        stop = asyncio.Event()
        relay = asyncio.create_task(Relay(pool, bus, poll_interval=600).run(stop))
        try:
            async with pool.acquire() as conn, conn.transaction():
                await enqueue(conn, [Outgoing(before)])
            await wait_for(lambda: got == [10**9 + 21], timeout=20, what="the first row")
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="its delete"
            )
            database = await pool.fetchval("SELECT current_database()")
            admin = await asyncpg.connect(test_env.database_url)
            try:
                # as at a restart: the connections go, and new ones are refused a while,
                # so the relay's first tries to listen again fail
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
                try:
                    cut = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = $1 AND pid <> pg_backend_pid()",
                        database,
                    )
                    await asyncio.sleep(1.0)  # the relay tries (and fails) meanwhile
                finally:
                    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            finally:
                await admin.close()
            assert cut >= 1

            async def committed(event: m.Message) -> bool:
                try:
                    async with pool.acquire() as conn, conn.transaction():
                        await enqueue(conn, [Outgoing(event)])
                except (
                    asyncpg.PostgresConnectionError,
                    asyncpg.InterfaceError,
                    OSError,
                    asyncpg.InternalClientError,
                ):
                    return False  # a connection the pool had not seen cut yet
                return True

            # the relay's retries take this one (a retry reads the outbox)...
            await wait_for(lambda: committed(middle), what="a row committed after the cut")
            await wait_for(lambda: len(got) == 2, timeout=20, what="the row after the cut")
            await wait_for(
                lambda: pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="its delete"
            )
            # ... then it waits: the poll is 10 minutes away, so only a listener made
            # anew can publish this one
            await wait_for(lambda: committed(after), what="a later row committed")
            await wait_for(lambda: len(got) == 3, timeout=20, what="the later row")
        finally:
            stop.set()
            await relay
        assert got == [10**9 + 21, 10**9 + 22, 10**9 + 23]
        await channel.close()


async def _raw_row(pool: asyncpg.Pool, event: m.Message, writer: str | None) -> None:
    """An outbox row as another process (``writer``) or an older release (None) wrote
    it, with no wake-up for this process's relay."""
    ((exchange,), (key,), (body,)) = outbox.columns([Outgoing(event)])
    await pool.execute(
        "INSERT INTO outbox (exchange, routing_key, body, writer, created_at)"
        " VALUES ($1, $2, $3, $4, clock_timestamp())",
        exchange,
        key,
        body,
        writer,
    )


async def test_another_writers_fresh_rows_are_left_to_it_for_a_grace(
    test_env: TestEnv,
) -> None:
    """A row another process wrote is its own relay's to publish from memory: this relay
    takes it only once it is older than the grace (that process died, say); a row of no
    writer (from before) goes at once."""
    async with (
        own_database(test_env, "grace") as pool,
        Bus(test_env.amqp_url, name="t-grace") as bus,
    ):
        theirs, old = _event(10**9 + 51), _event(10**9 + 52)
        channel, got = await _listen(bus, theirs, old)
        async with _waiting_relay(pool, bus, 0.2):
            await _raw_row(pool, theirs, "zoe_outbox_elsewhere")
            await _raw_row(pool, old, None)
            await wait_for(lambda: got, timeout=20, what="the row of no writer")
            assert got == [10**9 + 52]  # (well within the grace of 5 s)
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
            await wait_for(lambda: len(got) == 2, timeout=30, what="the other's row")
        assert got == [10**9 + 52, 10**9 + 51]
        await channel.close()


async def test_a_row_without_wake_up_goes_out_while_the_relay_is_kept_busy(
    test_env: TestEnv,
) -> None:
    """A relay woken again and again by its own commits still reads the table at its
    poll: a row whose wake-up was lost does not wait for a quiet moment."""
    async with (
        own_database(test_env, "busy") as pool,
        Bus(test_env.amqp_url, name="t-busy") as bus,
    ):
        lost, busy = _event(10**9 + 61), _event(10**9 + 62)
        channel, got = await _listen(bus, lost, busy)
        async with _waiting_relay(pool, bus, 0.5) as relay:
            await _raw_row(pool, lost, outbox.CHANNEL)  # its own, its NOTIFY lost

            async def committed_and_published() -> bool:
                async with pool.acquire() as conn, conn.transaction():
                    await enqueue(conn, [Outgoing(busy)])  # a wake-up every 50 ms
                return 10**9 + 61 in got

            await wait_for(committed_and_published, timeout=20, what="the row without wake-up")
        assert got.count(10**9 + 61) == 1
        assert relay.from_memory  # (the busy rows went from memory)
        await channel.close()

"""The bus layer against the real RabbitMQ: topology, confirms, the ack policy."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from common import messages as m
from common.bus import Bus
from common.errors import UserError
from common.routes import DEAD_LETTERS
from tests.conftest import TestEnv, replies_to, wait_for
from tests.private_postgres import free_port


async def _dead_letter_bodies(bus: Bus) -> list[bytes]:
    channel = await bus._conn.channel()  # type: ignore[union-attr]
    try:
        queue = await channel.get_queue(DEAD_LETTERS)
        bodies = []
        while (msg := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.append(msg.body)
        return bodies
    finally:
        await channel.close()


async def test_bad_and_failing_messages_are_dead_lettered_and_consumer_survives(
    test_env: TestEnv,
) -> None:
    async with Bus(test_env.amqp_url, name="t-consumer") as consumer:
        queue = f"test.acks.{test_env.run_id}"
        await consumer.declare_queue(queue, [("zoe.events", "test.acks")], kind="quorum")
        seen: list[int] = []
        attempts: dict[int, int] = {}

        async def handler(msg: m.ExecutionSubmitted) -> None:
            attempts[msg.execution_id] = attempts.get(msg.execution_id, 0) + 1
            if msg.execution_id == 2:
                raise RuntimeError("always fails")
            if msg.execution_id == 3:
                raise UserError("refused for good")
            seen.append(msg.execution_id)

        await consumer.consume(queue, handler, inbox=m.ExecutionSubmitted, kind="quorum")
        await _dead_letter_bodies(consumer)  # start from an empty dead-letter queue
        ex = consumer._exchanges["zoe.events"]
        for body in (b"not json", b'{"type":"nope"}', b'{"type":"execution.submitted"}'):
            await ex.publish(aio_pika.Message(body), routing_key="test.acks")
        for i in (1, 2, 3, 4):
            await ex.publish(
                aio_pika.Message(m.encode(m.ExecutionSubmitted(execution_id=i))),
                routing_key="test.acks",
            )
        await wait_for(lambda: seen == [1, 4], what="good messages handled")
        dead: list[bytes] = []

        async def collected() -> bool:
            dead.extend(await _dead_letter_bodies(consumer))
            return len(dead) >= 5

        await wait_for(collected, what="five dead letters")
        assert b"not json" in dead
        assert sum(b'"execution_id":2' in d for d in dead) == 1
        assert sum(b'"execution_id":3' in d for d in dead) == 1
        # the failing message was retried up to the delivery limit, the refused one never
        assert attempts[2] > 1
        assert attempts[3] == 1
        # and the consumer still works
        await ex.publish(
            aio_pika.Message(m.encode(m.ExecutionSubmitted(execution_id=5))),
            routing_key="test.acks",
        )
        await wait_for(lambda: 5 in seen, what="consumer alive after poison")


async def test_request_reply(test_env: TestEnv) -> None:
    async with (
        Bus(test_env.amqp_url, name="t-rpc-server") as server,
        Bus(test_env.amqp_url, name="t-rpc-client") as client,
    ):
        from common.bus import declare_executor_queue

        name = await declare_executor_queue(server, "rpcnode")

        async def handler(msg: m.LogsRequest) -> m.LogsReply:
            return m.LogsReply(found=True, log=f"log of {msg.container_name}")

        await server.consume(name, handler)
        body = await client.request("rpcnode", m.LogsRequest(container_name="c1"), timeout=5)
        reply = m.decoder(m.LogsReply).decode(body)
        assert reply.log == "log of c1"
        with pytest.raises(asyncio.TimeoutError):
            await client.request("nobody-listens", m.LogsRequest(container_name="x"), timeout=0.3)


async def test_messages_arriving_together_are_handled_as_a_batch_and_a_bad_one_alone(
    test_env: TestEnv,
) -> None:
    async with Bus(test_env.amqp_url, name="t-batches") as bus:
        queue = f"test.batches.{test_env.run_id}"
        await bus.declare_queue(queue, [("zoe.events", "test.batches")], kind="quorum")
        await _dead_letter_bodies(bus)
        ex = bus._exchanges["zoe.events"]
        for i in range(1, 41):  # all waiting before the consumer starts: they come together
            msg = m.ExecutionSubmitted(execution_id=i)
            await ex.publish(aio_pika.Message(m.encode(msg)), routing_key="test.batches")
        batches: list[list[int]] = []
        alone: list[int] = []

        async def many(msgs: list[m.ExecutionSubmitted]) -> None:
            ids = [x.execution_id for x in msgs]
            batches.append(ids)
            if 7 in ids:
                raise RuntimeError("one bad message spoils its batch")

        async def one(msg: m.ExecutionSubmitted) -> None:
            if msg.execution_id == 7:
                raise UserError("refused for good")
            alone.append(msg.execution_id)

        await bus.consume(
            queue,
            one,
            inbox=m.ExecutionSubmitted,
            kind="quorum",
            batches={m.ExecutionSubmitted: many},
        )

        def handled() -> list[int]:
            return sorted([i for b in batches if 7 not in b for i in b] + alone)

        good = [i for i in range(1, 41) if i != 7]
        await wait_for(lambda: handled() == good, what="every good message handled once")
        assert max(len(b) for b in batches) > 1
        (spoilt,) = [b for b in batches if 7 in b]
        assert sorted(alone) == sorted(i for i in spoilt if i != 7)  # its others, one by one
        dead: list[bytes] = []

        async def dead_lettered() -> bool:
            dead.extend(await _dead_letter_bodies(bus))
            return any(b'"execution_id":7' in b for b in dead)

        await wait_for(dead_lettered, what="the bad message dead-lettered")
        await asyncio.sleep(0.5)  # nothing is redelivered after its ack
        assert handled() == good


async def test_a_heartbeat_whose_handler_fails_is_dropped_not_redelivered(
    test_env: TestEnv,
) -> None:
    async with Bus(test_env.amqp_url, name="t-heartbeats") as bus:
        node = f"t-beat-{test_env.run_id}"
        calls: list[str] = []
        ok: list[str] = []

        async def handler(msg: m.NodeHeartbeat) -> None:
            if msg.node != node:
                return  # a heartbeat of some other test's node
            calls.append(msg.id)
            if len(calls) == 1:
                raise RuntimeError("the database is down")
            ok.append(msg.id)

        # a heartbeat queue of its own: the scheduler of a running platform may share
        # the session's broker
        queue = f"test.{test_env.run_id}.heartbeats"
        bindings = [("zoe.events", f"node.heartbeat.{node}")]
        await bus.declare_queue(queue, bindings, kind="heartbeats")
        await bus.consume(queue, handler, inbox=m.NodeHeartbeat, kind="heartbeats")
        failing = m.NodeHeartbeat(node=node, cores=1, memory=1 << 20)
        await bus.publish(failing)
        await wait_for(lambda: calls, what="the first heartbeat handled")
        later = m.NodeHeartbeat(node=node, cores=1, memory=1 << 20)
        await bus.publish(later)
        await wait_for(lambda: ok, what="the next heartbeat handled")
        # handled in order on one queue: had the failed one been requeued, it would
        # have come again before the next
        assert calls == [failing.id, later.id] and ok == [later.id]


async def test_a_refused_request_gets_an_error_reply_then_is_dead_lettered(
    test_env: TestEnv,
) -> None:
    """Deep JSON, an id out of range, an unknown field, a body over the limit, a user
    error: each gets a 4xx reply naming what is wrong, and the consumer goes on."""
    async with Bus(test_env.amqp_url, name="t-refusals") as bus:
        queue = f"test.refusals.{test_env.run_id}"
        await bus.declare_queue(queue, kind="quorum")
        handled: list[int] = []

        async def handler(msg: m.GetRequest) -> m.ApiReply:
            if msg.execution_id == 13:
                raise UserError("unlucky")
            handled.append(msg.execution_id)
            return m.ApiReply(status=200, body={"id": msg.execution_id})

        def error_reply(exc: UserError) -> m.ApiReply:
            return m.ApiReply(status=exc.status, body=exc.to_dict())

        await bus.consume(
            queue,
            handler,
            inbox=m.GetRequest | m.SubmitRequest,
            kind="quorum",
            refusal_reply=error_reply,
            max_body=8192,
        )
        channel = await bus._conn.channel()  # type: ignore[union-attr]
        nested = b"[" * 3000 + b"]" * 3000
        deep = b'{"type":"api.submit","name":"n","application":' + nested + b"}"
        bodies = {
            "deep": deep,
            "huge-id": b'{"type":"api.get","execution_id":9223372036854775808}',
            "unknown": b'{"type":"api.get","execution_id":1,"replicas":3}',
            "large": b'{"type":"api.get","execution_id":1,"pad":"' + b"x" * 9000 + b'"}',
            "user": m.encode(m.GetRequest(execution_id=13)),
            "good": m.encode(m.GetRequest(execution_id=7)),
        }
        got = await replies_to(channel, queue, bodies, m.ApiReply)
        assert got["good"].status == 200 and handled == [7]
        assert got["deep"].status == 400
        assert got["deep"].body["errors"] == [{"path": "", "message": "nested too deeply"}]
        assert got["huge-id"].status == 400
        assert got["huge-id"].body["errors"][0]["path"] == "execution_id"
        assert got["unknown"].status == 400
        assert got["unknown"].body["errors"][0]["path"] == "replicas"
        assert got["large"].status == 413
        assert got["user"].status == 400 and got["user"].body["error"] == "unlucky"
        dead: list[bytes] = []

        async def dead_lettered() -> bool:
            dead.extend(await _dead_letter_bodies(bus))
            return sum(b'"type":"api.' in d for d in dead) >= 5

        await wait_for(dead_lettered, what="the five refused requests dead-lettered")
        await channel.close()


async def test_a_transient_failure_is_retried_in_place_without_spending_deliveries(
    test_env: TestEnv,
) -> None:
    async with Bus(test_env.amqp_url, name="t-transient", retry_backoff=(0.05, 0.2)) as bus:
        queue = f"test.transient.{test_env.run_id}"
        await bus.declare_queue(
            queue, [("zoe.events", f"test.transient.{test_env.run_id}")], kind="quorum"
        )
        calls: list[bool] = []

        async def handler(msg: m.ExecutionSubmitted) -> None:
            calls.append(True)
            if len(calls) <= 6:  # more failures than the delivery limit allows
                raise ConnectionRefusedError("the database is restarting")

        await bus.consume(queue, handler, inbox=m.ExecutionSubmitted, kind="quorum")
        await bus._exchanges["zoe.events"].publish(
            aio_pika.Message(m.encode(m.ExecutionSubmitted(execution_id=77))),
            routing_key=f"test.transient.{test_env.run_id}",
        )
        await wait_for(lambda: len(calls) == 7, what="handled once the failure passed")
        assert not any(b'"execution_id":77' in d for d in await _dead_letter_bodies(bus))


async def test_an_unroutable_mandatory_message_fails_its_publish(test_env: TestEnv) -> None:
    async with Bus(test_env.amqp_url, name="t-returned") as bus:
        stop = m.StopInstance(execution_id=1, instance_id=2, container_name="c", network="n")
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await bus.publish(stop, node=f"no-such-node-{test_env.run_id}")
        assert await bus.ping(timeout=5)


async def test_a_url_of_several_nodes_connects_to_a_live_one_and_moves_on_when_it_dies(
    test_env: TestEnv,
) -> None:
    from tests.service.test_executor import Proxy  # a cuttable relay

    # three "nodes": nothing listens on the first; the others relay to the broker
    first, second = (Proxy(lambda: asyncio.open_connection("127.0.0.1", 5672)) for _ in "ab")
    servers = [await asyncio.start_server(p.relay, "127.0.0.1", 0) for p in (first, second)]
    ports = [free_port(), *(s.sockets[0].getsockname()[1] for s in servers)]
    vhost = test_env.amqp_url.rsplit("/", 1)[1]
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    url = f"amqp://guest:guest@{hosts}/{vhost}?reconnect_interval=0.2"
    node = f"t-hosts-{test_env.run_id}"
    queue = f"test.{test_env.run_id}.hosts"
    got: list[str] = []

    async def handler(msg: m.NodeHeartbeat) -> None:
        got.append(msg.id)

    try:
        async with Bus(url, name="t-hosts") as bus, Bus(test_env.amqp_url, name="t-pub") as pub:
            bindings = [("zoe.events", f"node.heartbeat.{node}")]
            await bus.declare_queue(queue, bindings, kind="quorum")
            await bus.consume(queue, handler, inbox=m.NodeHeartbeat, kind="quorum")
            assert first._writers and not second._writers  # on the first live one
            beat = m.NodeHeartbeat(node=node, cores=1, memory=1 << 20)
            await pub.publish(beat)
            await wait_for(lambda: got == [beat.id], what="delivered through the first")

            first.cut()  # that node dies for good: the next attempt goes to the next
            await wait_for(lambda: second._writers and bus.consuming, what="reconnected")
            later = m.NodeHeartbeat(node=node, cores=1, memory=1 << 20)
            await pub.publish(later)
            await wait_for(lambda: later.id in got, what="delivered through the second")
            assert await bus.ping(timeout=5)
            await pub.consumer_channel.queue_delete(queue)
    finally:
        for s in servers:
            s.close()


async def test_acks_sent_together_never_cover_a_message_still_being_handled(
    test_env: TestEnv,
) -> None:
    """Finished messages are acked together, but only up to the oldest one in hand: a
    consumer that dies with one message unfinished gets that one (and only it) again."""
    queue = f"test.multiack.{test_env.run_id}"
    slow = asyncio.Event()
    handled: list[int] = []

    async def handler(msg: m.ExecutionSubmitted) -> None:
        if msg.execution_id == 3:
            await slow.wait()  # never set: this one is in hand when the consumer dies
        handled.append(msg.execution_id)

    first = Bus(test_env.amqp_url, name="t-multiack-1")
    await first.connect()
    try:
        await first.declare_queue(queue, [("zoe.events", "test.multiack")], kind="quorum")
        await first.consume(queue, handler, inbox=m.ExecutionSubmitted, kind="quorum")
        ex = first._exchanges["zoe.events"]
        for i in range(1, 41):
            await ex.publish(
                aio_pika.Message(m.encode(m.ExecutionSubmitted(execution_id=i))),
                routing_key="test.multiack",
            )
        await wait_for(lambda: len(handled) == 39, what="all but the slow one handled")
        await first._acks.flush()  # every ack that can go out is out
    finally:
        assert first._conn is not None
        await first._conn.close()  # dies: no stop_consuming, the slow one unfinished
        slow.set()  # its handler may end now (its ack goes nowhere)
    again: list[int] = []

    async def second_handler(msg: m.ExecutionSubmitted) -> None:
        again.append(msg.execution_id)

    async with Bus(test_env.amqp_url, name="t-multiack-2") as second:
        await second.consume(queue, second_handler, inbox=m.ExecutionSubmitted, kind="quorum")
        await wait_for(lambda: again == [3], what="the unfinished message delivered again")
        await asyncio.sleep(0.5)  # and nothing else comes (no other was left unacked)
        assert again == [3]
        assert second._pub is not None
        await second._pub.queue_delete(queue)


async def test_acks_sent_together_keep_the_channel_when_handlers_end_out_of_order(
    test_env: TestEnv,
) -> None:
    """Two queues on one consumer channel, handlers ending in any order: each message is
    handled once (an ack of a tag acked already would close the channel, and every
    unacked message would come again)."""
    import random

    queues = [f"test.anyorder{i}.{test_env.run_id}" for i in (1, 2)]
    handled: list[int] = []
    rng = random.Random(7)

    async def handler(msg: m.ExecutionSubmitted) -> None:
        if rng.random() < 0.3:  # most end at once, some later
            await asyncio.sleep(rng.random() * 0.01)
        handled.append(msg.execution_id)

    async with Bus(test_env.amqp_url, name="t-anyorder", prefetch=32) as bus:
        for i, q in enumerate(queues):
            await bus.declare_queue(q, [("zoe.events", f"test.anyorder{i}")], kind="quorum")
            await bus.consume(q, handler, inbox=m.ExecutionSubmitted, kind="quorum")
        ex = bus._exchanges["zoe.events"]
        for burst in range(0, 2000, 100):
            await asyncio.gather(
                *(
                    ex.publish(
                        aio_pika.Message(m.encode(m.ExecutionSubmitted(execution_id=n))),
                        routing_key=f"test.anyorder{n % 2}",
                    )
                    for n in range(burst, burst + 100)
                )
            )
        await wait_for(lambda: len(handled) >= 2000, what="every message handled")
        await asyncio.sleep(0.5)  # nothing comes twice
        assert sorted(handled) == list(range(2000))
        assert bus.connected
        assert bus._pub is not None
        for q in queues:
            await bus._pub.queue_delete(q)

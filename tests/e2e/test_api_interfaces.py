"""The AMQP request interface, idempotent submissions and the state-event stream."""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
import aiohttp
import pytest

from common import messages as m
from common.bus import EVENTS
from common.routes import API_REQUESTS as API_QUEUE
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import Platform, service, zapp

pytestmark = pytest.mark.e2e


async def ask(
    channel: aio_pika.abc.AbstractChannel, request: m.Message, token: str | None
) -> m.ApiReply:
    """Send an AMQP request as ``token``'s user (None: with no token) and await the reply."""
    replies = await channel.declare_queue(exclusive=True, auto_delete=True)
    correlation = uuid.uuid4().hex
    headers = {"zoe-token": token} if token is not None else {}
    await channel.default_exchange.publish(
        aio_pika.Message(
            m.encode(request), reply_to=replies.name, correlation_id=correlation, headers=headers
        ),
        routing_key=API_QUEUE,
    )
    async with replies.iterator(timeout=30) as it:
        async for message in it:
            await message.ack()
            assert message.correlation_id == correlation
            return m.decoder(m.ApiReply).decode(message.body)
    raise AssertionError("no reply")


async def test_amqp_requests_are_answered_and_idempotent(
    platform: Platform, test_env: TestEnv
) -> None:
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel()
        submit = m.SubmitRequest(
            name="via-amqp", application=zapp("amqp-app", service("job", "exit 0"))
        )
        first = await ask(channel, submit, test_env.admin_token)
        assert first.status == 201, first.body
        again = await ask(channel, submit, test_env.admin_token)  # the same message delivered twice
        assert again.status == 200 and again.body["id"] == first.body["id"]
        eid = first.body["id"]

        got = await ask(channel, m.GetRequest(execution_id=eid), test_env.admin_token)
        assert got.status == 200 and got.body["name"] == "via-amqp"
        missing = await ask(channel, m.GetRequest(execution_id=10**12), test_env.admin_token)
        assert missing.status == 404
        bad = await ask(
            channel, m.SubmitRequest(name="bad", application={"name": "x"}), test_env.admin_token
        )
        assert bad.status == 400
        assert any(e["path"].startswith("application.") for e in bad.body["errors"])
        await platform.wait_state(eid, "finished")
        ended = await ask(channel, m.TerminateRequest(execution_id=eid), test_env.admin_token)
        assert ended.status == 409
    finally:
        await connection.close()


async def test_http_idempotency_key(platform: Platform) -> None:
    body = {"name": "idem", "application": zapp("idem-app", service("job", "exit 0"))}
    key = uuid.uuid4().hex

    def post() -> tuple[int, dict[str, object]]:
        import urllib.request

        req = urllib.request.Request(
            platform.url + "/executions",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "Authorization": f"Bearer {platform.env.admin_token}",
            },
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())

    s1, e1 = await asyncio.to_thread(post)
    s2, e2 = await asyncio.to_thread(post)
    assert (s1, s2) == (201, 200) and e1["id"] == e2["id"]
    await platform.wait_state(int(e1["id"]), "finished")  # type: ignore[arg-type]


async def _states_of(resp: aiohttp.ClientResponse, eid: int) -> list[tuple[int, str]]:
    """The (execution, state) pairs a stream sends until ``eid`` ends."""
    seen: list[tuple[int, str]] = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            seen.append((event["execution_id"], event["state"]))
            if event["execution_id"] == eid and event["state"] in ("finished", "failed"):
                break
    return seen


async def test_state_changes_are_streamed(platform: Platform, test_env: TestEnv) -> None:
    """Over HTTP (server-sent events) and on the bus (``state.executions``)."""
    connection = await aio_pika.connect(test_env.amqp_url)
    auth = {"Authorization": f"Bearer {platform.env.admin_token}"}
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(EVENTS, routing_key="state.executions")
        on_bus: list[m.StateChange] = []

        async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            on_bus.extend(m.decoder(m.ExecutionStatesChanged).decode(message.body).changes)

        await queue.consume(received, no_ack=True)
        async with aiohttp.ClientSession(headers=auth) as session:
            async with session.get(
                platform.url + "/events", timeout=aiohttp.ClientTimeout(total=90)
            ) as resp:
                assert resp.status == 200
                assert (await resp.content.readline()).startswith(b": connected")
                app = zapp("streamed", service("job", "sleep 1; exit 0"))
                eid = (await platform.submit(app))["id"]
                streamed = [s for e, s in await _states_of(resp, eid) if e == eid]
        assert streamed == ["queued", "starting", "running", "cleaning_up", "finished"]
        await wait_for(
            lambda: [c.state for c in on_bus if c.execution_id == eid] == streamed,
            timeout=30,
            what="the same changes on the bus",
        )
        assert {c.user for c in on_bus if c.execution_id == eid} == {"admin"}
    finally:
        await connection.close()


async def test_a_users_stream_shows_only_their_own_executions(platform: Platform) -> None:
    """Another user's changes never reach a stream: those of the admin's execution,
    published before the user's own, are not what the user's stream shows first."""
    alice = await platform.new_user(f"alice{uuid.uuid4().hex[:8]}")
    timeout = aiohttp.ClientTimeout(total=90)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            platform.url + "/events",
            headers={"Authorization": f"Bearer {alice}"},
            timeout=timeout,
        ) as hers,
        session.get(
            platform.url + "/events",
            headers={"Authorization": f"Bearer {platform.env.admin_token}"},
            timeout=timeout,
        ) as admins,
    ):
        assert (await hers.content.readline()).startswith(b": connected")
        assert (await admins.content.readline()).startswith(b": connected")
        theirs = (await platform.submit(zapp("admins", service("job", "exit 0"))))["id"]
        assert (theirs, "finished") in await _states_of(admins, theirs)
        status, mine = await platform.acall(
            "POST",
            "/executions",
            {"name": "hers", "application": zapp("hers", service("job", "exit 0"))},
            token=alice,
        )
        assert status == 201, mine
        seen = await _states_of(hers, mine["id"])
    assert {e for e, _ in seen} == {mine["id"]}, seen
    assert [s for _, s in seen] == ["queued", "starting", "running", "cleaning_up", "finished"]


async def test_a_shop_zapp_s_resources_override_works_over_amqp_as_over_http(
    platform: Platform, test_env: TestEnv
) -> None:
    connection = await aio_pika.connect(test_env.amqp_url)
    try:
        channel = await connection.channel()
        override = {"hello": {"memory": {"min": 48 << 20, "max": 48 << 20}}}
        submit = m.SubmitRequest(name="sized", zapp="hello", params={}, resources=override)
        reply = await ask(channel, submit, test_env.admin_token)
        assert reply.status == 201, reply.body
        (instance,) = reply.body["services"]
        assert instance["memory"] == 48 << 20
        await platform.acall("POST", f"/executions/{reply.body['id']}/terminate")
        await platform.wait_state(reply.body["id"], "terminated", "finished", "failed")
    finally:
        await connection.close()

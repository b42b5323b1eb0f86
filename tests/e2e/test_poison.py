"""A malformed message on each consumed queue is dead-lettered; consumers keep working."""

from __future__ import annotations

import aio_pika
import pytest

from common.bus import Bus
from common.routes import COMMANDS, DEAD_LETTERS, EVENTS, MONITOR_HEARTBEATS, SCHEDULER_HEARTBEATS
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import Platform, service, zapp

HEARTBEAT_QUEUES = (SCHEDULER_HEARTBEATS, MONITOR_HEARTBEATS)

pytestmark = pytest.mark.e2e


async def test_malformed_messages_go_to_dead_letters(platform: Platform, test_env: TestEnv) -> None:
    async with Bus(test_env.amqp_url, name="t-poison") as bus:
        channel = await bus._conn.channel()  # type: ignore[union-attr]
        dead = await channel.get_queue(DEAD_LETTERS)
        while await dead.get(fail=False, no_ack=True) is not None:
            pass
        events = await channel.get_exchange(EVENTS)
        commands = await channel.get_exchange(COMMANDS)
        marker = test_env.run_id.encode()
        poison = {
            "scheduler": (events, "execution.submitted"),
            "monitor": (events, f"fact.exited.{platform.node}"),
            "executor": (commands, platform.node),
            "heartbeats": (events, f"node.heartbeat.{platform.node}"),
        }
        for target, (exchange, key) in poison.items():
            body = (
                b'{"type": "garbage", "target": "' + target.encode() + b'", "m": "' + marker + b'"}'
            )
            await exchange.publish(aio_pika.Message(body), routing_key=key)
        seen: set[str] = set()

        # the heartbeat goes to the scheduler's and the monitor's heartbeat queues, and
        # each refuses it (they name themselves in a header)
        heartbeat_queues: set[str] = set()

        async def all_dead() -> bool:
            while (msg := await dead.get(fail=False, no_ack=True)) is not None:
                if marker in msg.body:
                    for target in poison:
                        if f'"target": "{target}"'.encode() in msg.body:
                            seen.add(target)
                    if b'"target": "heartbeats"' in msg.body:
                        heartbeat_queues.add(str((msg.headers or {}).get("x-zoe-queue")))
            return seen == set(poison) and heartbeat_queues == set(HEARTBEAT_QUEUES)

        await wait_for(all_dead, timeout=30, what="a dead letter from each consumer")
        await channel.close()

    # every consumer still works: a ZApp still runs to its end
    eid = (await platform.submit(zapp("after-poison", service("job", "exit 0"))))["id"]
    ended = await platform.wait_state(eid, "finished", "failed")
    assert ended["state"] == "finished"

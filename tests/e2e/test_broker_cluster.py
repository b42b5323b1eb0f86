"""End to end: Zoe on a RabbitMQ cluster of three nodes loses nothing when one dies.

Three private RabbitMQ nodes (tests/private_rabbitmq.py) are clustered on this machine,
every quorum queue replicated on all three; the platform (api, scheduler, monitor and a
hollow executor) has the three in ``ZOE_AMQP_URL``. Submissions stream in over HTTP while
the node the services connected to (the first one listed) is killed with SIGKILL: every
acknowledged submission reaches running, none twice, those after the kill run too, and
the node, started again, rejoins the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from common import db
from tests.conftest import PG_BASE, TestEnv, dead_letters, migrate, wait_for
from tests.e2e.conftest import Platform, service, zapp
from tests.private_rabbitmq import PrivateBroker, PrivateCluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HOLLOW = {"ZOE_ENGINE": "hollow", "ZOE_CORES": "64", "ZOE_MEMORY": str(64 << 30)}


class ClusterEnv(TestEnv):
    """The session's environment on the cluster, with a database of its own."""

    __test__ = False

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(ZOE_AMQP_QUORUM_SIZE="3", **extra)


@pytest.fixture(scope="module")
def cluster(test_env: TestEnv, log_dir: Path) -> Iterator[PrivateCluster]:
    brokers = PrivateCluster(f"zoeclu{test_env.run_id}")
    try:
        brokers.start()
        yield brokers
    finally:
        # every node killed by pid, its directory removed; its logs kept beside the services'
        brokers.stop(keep_logs=log_dir / "broker-cluster")


@pytest.fixture(scope="module")
async def cluster_platform(
    test_env: TestEnv, cluster: PrivateCluster, log_dir: Path
) -> AsyncIterator[Platform]:
    env = ClusterEnv()
    env.deployment = f"{test_env.deployment}rmq"
    env.database = f"{test_env.database}_rmq"
    env.amqp_url = cluster.url + "?reconnect_interval=0.5"
    env.database_url = PG_BASE.rstrip("/") + "/" + env.database
    admin = await asyncpg.connect(PG_BASE.rstrip("/") + "/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{env.database}"')
        await migrate(env)
        logs = log_dir / "broker-cluster"
        logs.mkdir(exist_ok=True)
        async with Platform(env, f"{env.deployment}-n1", logs, **HOLLOW).running() as p:
            yield p
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{env.database}" WITH (FORCE)')
        await admin.close()


def _app(i: int) -> dict[str, Any]:
    return zapp(f"stream-{i}", service("server", "serve"), will_end=False)


class Stream:
    """Submissions one after the other over HTTP, each kept once acknowledged (201)."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.acked: list[int] = []
        self.refused: list[tuple[int, Any]] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            status, body = await self.platform.acall(
                "POST", "/executions", {"name": "stream", "application": _app(len(self.acked))}
            )
            if status == 201:
                self.acked.append(body["id"])
            elif status == 503:
                self.refused.append((status, body))  # told to come back: not acknowledged
            else:
                raise AssertionError(f"submission refused: {status} {body}")
            await asyncio.sleep(0.1)


async def _all_running(pool: asyncpg.Pool, ids: list[int]) -> bool:
    states = await pool.fetch("SELECT state FROM executions WHERE id = ANY($1)", ids)
    return len(states) == len(ids) and all(r["state"] == "running" for r in states)


async def _stuck(pool: asyncpg.Pool, ids: list[int], via: PrivateBroker) -> str:
    """What a failed wait saw: the executions not running, and the queues as a live node
    tells them (their leader, members online, consumers, messages)."""
    rows = await pool.fetch(
        "SELECT id, state FROM executions WHERE id = ANY($1) AND state <> 'running'", ids
    )
    try:
        queues = via.ctl("list_queues", "name", "leader", "online", "consumers", "messages")
    except Exception as exc:  # the diagnosis must not hide the failure
        queues = f"(list_queues failed: {exc})"
    return f"not running: {[(r['id'], r['state']) for r in rows]}; queues:\n{queues}"


async def test_a_broker_node_killed_mid_stream_loses_nothing_and_rejoins(
    cluster_platform: Platform, cluster: PrivateCluster
) -> None:
    platform = cluster_platform
    first, second, _ = cluster.nodes
    members = second.ctl("list_queues", "name", "members", "--formatter", "json")
    assert f'"{first.node}"' in members and members.count(first.node) >= 3

    stream = Stream(platform)
    stop = asyncio.Event()
    async with db.pool(platform.env.database_url, max_size=2) as pool:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(stream.run(stop))
            try:
                await wait_for(lambda: len(stream.acked) >= 10, timeout=60, what="10 submitted")
                await wait_for(
                    lambda: _all_running(pool, stream.acked[:10]), timeout=60, what="running"
                )
                before = len(stream.acked)
                first.kill()  # the node every service connected to, and the queues' leader
                await wait_for(
                    lambda: len(stream.acked) >= before + 15,
                    timeout=120,
                    what="15 more submitted after the kill",
                )
            finally:
                stop.set()
        acked = stream.acked
        assert len(set(acked)) == len(acked)
        try:
            await wait_for(
                lambda: _all_running(pool, acked), timeout=180, interval=0.5, what="all running"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {await _stuck(pool, acked, second)}") from None
        assert {s for s, _ in stream.refused} <= {503}, stream.refused

        # none started twice: one instance each, never restarted, one container name
        rows = await pool.fetch(
            "SELECT execution_id, restart_count, container_name FROM instances"
            " WHERE execution_id = ANY($1)",
            acked,
        )
        assert sorted(r["execution_id"] for r in rows) == sorted(acked)
        assert all(r["restart_count"] == 0 for r in rows)

        # the node comes back and rejoins; the platform goes on
        await asyncio.to_thread(first.start)
        await wait_for(
            lambda: asyncio.to_thread(lambda: first.node in cluster.running(second)),
            timeout=120,
            what="the node rejoined",
        )
        later = [(await platform.submit(_app(1000 + i)))["id"] for i in range(5)]
        await wait_for(lambda: _all_running(pool, later), timeout=60, what="running after")

    assert all(s.alive for s in platform.services.values()), "a service died"
    assert await dead_letters(platform.env.amqp_url, quorum_size=3) == []
    print(
        f"\nbroker cluster: {before} acknowledged before the kill, {len(acked) - before}"
        f" after it, {len(stream.refused)} refused meanwhile, 5 after the rejoin"
    )
    with contextlib.suppress(Exception):
        print(second.ctl("list_connections", "name", "peer_port", "port"))

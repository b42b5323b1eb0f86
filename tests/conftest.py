"""Fixtures shared by every test layer.

Each test session gets its own RabbitMQ vhost, PostgreSQL database and deployment name
(which labels its containers and networks), so a run never touches a running ``make up``
platform nor another run; all three are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiodocker
import asyncpg
import pytest

from common import db
from common import messages as m
from common.bus import Bus
from common.routes import DEAD_LETTERS, EVENTS

RUN_ID = uuid.uuid4().hex[:8]
AMQP_BASE = os.environ.get("ZOE_TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672/")


def _pg_base() -> str:
    """The superuser the tests make their databases as: ``zoe_admin`` with the password
    deploy/install.sh keeps in var/secrets/ (loopback asks for one), else ``postgres``
    (a server that trusts loopback)."""
    secret = Path(__file__).resolve().parents[1] / "var" / "secrets" / "postgres-admin.password"
    if secret.exists():
        return f"postgresql://zoe_admin:{secret.read_text().strip()}@127.0.0.1:5432/"
    return "postgresql://postgres@127.0.0.1:5432/"


PG_BASE = os.environ.get("ZOE_TEST_PG_BASE") or _pg_base()


class TestEnv:
    """Where this test session's services live."""

    __test__ = False

    def __init__(self) -> None:
        self.run_id = RUN_ID
        self.vhost = f"zoe-test-{RUN_ID}"
        self.database = f"zoe_test_{RUN_ID}"
        self.deployment = f"zt{RUN_ID}"
        self.amqp_url = AMQP_BASE.rstrip("/") + "/" + quote(self.vhost, safe="")
        self.database_url = PG_BASE.rstrip("/") + "/" + self.database
        self.admin_token = ""  # an API token of the user "admin" (set once migrated)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process of this session."""
        out = dict(os.environ)
        out.update(
            ZOE_AMQP_URL=self.amqp_url,
            ZOE_DATABASE_URL=self.database_url,
            ZOE_DEPLOYMENT=self.deployment,
            ZOE_LOG_JSON="true",
            ZOE_LOG_LEVEL="debug",
            # no metrics port unless a test gives one: tests run many services at once
            ZOE_METRICS_PORT="0",
        )
        out.update(extra)
        return out


def _rabbitmqctl(*args: str, attempts: int = 4) -> None:
    """Run rabbitmqctl; retried, since the shared broker may be restarting (a test of
    broker outages restarts it). It runs in a session of its own so that a timeout
    kills the whole CLI (it starts an Erlang VM under su), leaving nothing behind."""
    for attempt in range(attempts):
        proc = subprocess.Popen(
            ["rabbitmqctl", "-q", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err, proc.returncode = b"timed out", -1
        if proc.returncode == 0:
            return
        if attempt == attempts - 1:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed: {err.decode(errors='replace')}"
            )
        time.sleep(2 * (attempt + 1))


@pytest.fixture(scope="session")
def test_env() -> Iterator[TestEnv]:
    env = TestEnv()
    _rabbitmqctl("add_vhost", env.vhost)
    _rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    asyncio.run(migrate(env))
    try:
        yield env
    finally:
        asyncio.run(_remove_containers(env.deployment))
        with contextlib.suppress(RuntimeError):
            _rabbitmqctl("delete_vhost", env.vhost, attempts=2)
        asyncio.run(_drop_database(env.database))


async def migrate(env: TestEnv) -> None:
    """Migrate ``env``'s database and give it an admin with a token (``env.admin_token``)."""
    await db.migrate(env.database_url)
    env.admin_token = await new_user(env.database_url, "admin", "admin")


async def new_user(database_url: str, name: str, role: str, password: str | None = None) -> str:
    """A new API token of user ``name`` (created with ``role`` if it does not exist)."""
    from services.api.bootstrap import ensure_user

    conn = await asyncpg.connect(database_url)
    try:
        return await ensure_user(conn, name, role, password=password)
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_BASE.rstrip("/") + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _remove_containers(deployment: str) -> None:
    async with aiodocker.Docker() as docker:
        label = f"zoe.deployment={deployment}"
        for c in await docker.containers.list(all=True, filters={"label": [label]}):
            await c.delete(force=True)
        volumes = await docker.volumes.list(filters={"label": [label]})
        for v in volumes.get("Volumes") or []:
            with contextlib.suppress(aiodocker.DockerError):
                await aiodocker.volumes.DockerVolume(docker, v["Name"]).delete()
        for n in await docker.networks.list(filters={"label": [label]}):
            try:
                await aiodocker.networks.DockerNetwork(docker, n["Id"]).delete()
            except aiodocker.DockerError:
                pass


@pytest.fixture(scope="session")
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    async with db.pool(test_env.database_url, max_size=5) as p:
        yield p


@asynccontextmanager
async def own_database(env: TestEnv, suffix: str) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database of its own, for tests that must not share rows with a
    running platform of the same session; dropped afterwards."""
    name = f"{env.database}_{suffix}"
    url = PG_BASE.rstrip("/") + "/" + name
    await db.migrate(url)
    try:
        async with db.pool(url, max_size=5) as p:
            yield p
    finally:
        await _drop_database(name)


@pytest.fixture(scope="session")
async def bus(test_env: TestEnv) -> AsyncIterator[Bus]:
    async with Bus(test_env.amqp_url, name="tests") as b:
        yield b


@pytest.fixture(scope="session")
async def docker() -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker() as d:
        yield d


async def wait_for(
    predicate, *, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
):  # type: ignore[no-untyped-def]
    """Poll an async or sync predicate until it returns a truthy value or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Facts:
    """Every fact and heartbeat published in the test vhost, in arrival order."""

    def __init__(self) -> None:
        self.items: list[m.Message] = []
        self.together: list[m.InstancesStarted] = []  # as they came (also in ``items``)

    def all(self, kind: type[m.Message], **match: Any) -> list[Any]:
        return [
            x
            for x in self.items
            if isinstance(x, kind) and all(getattr(x, k) == v for k, v in match.items())
        ]

    async def wait(
        self, kind: type[m.Message], count: int = 1, timeout: float = 20, **match: Any
    ) -> Any:
        """The ``count``-th fact of ``kind`` matching ``match``, once it arrived."""
        found = await wait_for(
            lambda: len(self.all(kind, **match)) >= count and self.all(kind, **match),
            timeout=timeout,
            what=f"{count} x {kind.__name__} {match}",
        )
        return found[count - 1]


@asynccontextmanager
async def node_facts(env: TestEnv) -> AsyncIterator[Facts]:
    """Collect every fact, heartbeat and liveness beat published in the session's vhost
    from now on (those sent together by hollow nodes, one by one)."""
    out = Facts()
    decoder = m.decoder(
        m.InstanceStarted
        | m.InstancesStarted
        | m.InstanceStartFailed
        | m.InstanceExited
        | m.InstanceRemoved
        | m.NodeHeartbeat
        | m.NodeAlive
        | m.NodeHeartbeats
        | m.NodesAlive
    )
    connection = await aio_pika.connect(env.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        keys = ("node.heartbeat.#", "node.alive.#", "node.heartbeat_many.#", "node.alive_many.#")
        for key in ("fact.#", *keys):
            await queue.bind(EVENTS, routing_key=key)

        async def collect(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            fact = decoder.decode(message.body)
            if isinstance(fact, m.NodeHeartbeats):  # hollow nodes' beats, sent together
                out.items.extend(fact.beats)
                return
            if isinstance(fact, m.NodesAlive):
                out.items.extend(m.NodeAlive(node=n, sent_at=fact.sent_at) for n in fact.nodes)
                return
            if isinstance(fact, m.InstancesStarted):
                out.together.append(fact)
            # the facts of one StartInstances come together: each counts by itself
            out.items.extend(fact.started if isinstance(fact, m.InstancesStarted) else [fact])

        await queue.consume(collect, no_ack=True)
        yield out
    finally:
        await connection.close()


async def replies_to(
    channel: aio_pika.abc.AbstractChannel, queue: str, bodies: dict[str, bytes], reply: Any
) -> dict[str, Any]:
    """Send each body to ``queue`` (default exchange) as a request with no ``user_id``;
    the replies, decoded as ``reply``, by the bodies' names."""
    replies = await channel.declare_queue(exclusive=True)
    got: dict[str, Any] = {}
    decoder = m.decoder(reply)

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        got[message.correlation_id or ""] = decoder.decode(message.body)

    await replies.consume(on_reply, no_ack=True)
    for name, body in bodies.items():
        out = aio_pika.Message(body, reply_to=replies.name, correlation_id=name)
        await channel.default_exchange.publish(out, routing_key=queue)
    await wait_for(lambda: len(got) == len(bodies), timeout=60, what="a reply to each request")
    return got


async def dead_letters(amqp_url: str, **bus: Any) -> list[bytes]:
    """Take every message out of the dead letters of ``amqp_url``; returns their bodies
    (``bus``: further arguments of the ``Bus`` that reads them)."""
    async with Bus(amqp_url, name="t-dead-letters", **bus) as b:
        channel = await b._conn.channel()  # type: ignore[union-attr]
        queue = await channel.get_queue(DEAD_LETTERS)
        bodies = []
        while (msg := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.append(msg.body)
        await channel.close()
        return bodies

"""Least privilege between the services, on the real broker and database.

The users and the role are made by deploy/provision.py, the code ``make up`` runs, in a
vhost and a database of this module's own (and removed after): each service's broker
user may do its work (the whole platform runs an execution as those users) and nothing
else; the database role may own and migrate its database, not make roles or databases,
nor read the server's files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import asyncpg
import pytest

from common import db, routes
from common import messages as m
from common.bus import Bus, Outgoing, declare_executor_queue
from common.outbox import Relay, enqueue
from deploy import provision
from tests.conftest import (
    AMQP_BASE,
    PG_BASE,
    TestEnv,
    _rabbitmqctl,
    _remove_containers,
    migrate,
)
from tests.e2e.conftest import Platform, service, zapp

ADMIN_URL = PG_BASE.rstrip("/") + "/postgres"
FAR = 10**9  # an execution and instance id no test here makes


@dataclass
class Provisioned:
    """What provisioning made for this module: broker users' URLs, the role's URL."""

    env: TestEnv
    nodes: tuple[str, str]
    amqp: dict[str, str]  # process -> its AMQP URL
    database_url: str
    role: str

    def executor(self, node: str) -> str:
        return self.amqp[f"zoe-executor-{node}"]


@pytest.fixture(scope="module")
async def provisioned(
    test_env: TestEnv, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Provisioned]:
    env = TestEnv()
    env.vhost = f"{test_env.vhost}-lp"
    env.deployment = f"{test_env.deployment}lp"
    env.database = f"{test_env.database}_lp"
    env.amqp_url = AMQP_BASE.rstrip("/") + "/" + quote(env.vhost, safe="")
    nodes = (f"{env.deployment}-n1", f"{env.deployment}-n2")
    role = f"{env.database}_role"
    store = provision.Secrets(tmp_path_factory.mktemp("secrets"))
    try:
        amqp = await asyncio.to_thread(
            provision.provision_broker, env.amqp_url, env.deployment, nodes, store
        )
        database_url = await provision.provision_database(
            ADMIN_URL, PG_BASE.rstrip("/") + "/" + env.database, store, role=role
        )
        env.database_url = database_url
        yield Provisioned(env, nodes, amqp, database_url, role)
    finally:
        await _remove_containers(env.deployment)
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(provision.remove_broker_users, env.deployment, nodes)
        with contextlib.suppress(RuntimeError):
            _rabbitmqctl("delete_vhost", env.vhost, attempts=2)
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{env.database}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


async def refused(work: Any) -> str:
    """Run ``work`` (a coroutine) and return the broker's refusal of it."""
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as caught:
        await work
    return str(caught.value)


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that is never called: its consume is refused."""


# ---- the broker -------------------------------------------------------------------------


async def test_secrets_are_readable_by_their_owner_only(
    provisioned: Provisioned, tmp_path: Path
) -> None:
    store = provision.Secrets(tmp_path / "secrets")
    password = store.password("x")
    assert store.password("x") == password  # kept, not made again
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "secrets" / "x.password").stat().st_mode & 0o777 == 0o600
    n1, n2 = provisioned.nodes
    written = provision.write_env_files(store, provisioned.amqp, provisioned.database_url, n1)
    assert {p.name for p in written} == {
        "zoe-api.env",
        "zoe-scheduler.env",
        "zoe-monitor.env",
        "zoe-executor.env",  # this host's node
        f"zoe-executor-{n2}.env",  # for the other node's host
    }
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in written)
    executor = (store.root / "zoe-executor.env").read_text()
    assert f"ZOE_AMQP_URL={provisioned.executor(n1)}\n" in executor


async def test_each_service_user_does_its_work_on_the_bus_and_nothing_else(
    provisioned: Provisioned,
) -> None:
    n1, n2 = provisioned.nodes
    amqp = provisioned.amqp
    # each connects as its service does: it declares the topology and its queues
    async with (
        Bus(amqp["zoe-scheduler"], name="t-scheduler") as scheduler,
        Bus(amqp["zoe-monitor"], name="t-monitor"),
        Bus(amqp["zoe-api"], name="t-api") as api,
        Bus(provisioned.executor(n1), name="t-n1") as executor1,
        Bus(provisioned.executor(n2), name="t-n2") as executor2,
    ):
        await declare_executor_queue(executor1, n1)
        await declare_executor_queue(executor2, n2)
        for bus in (scheduler, api, executor1):
            assert await bus.ping(timeout=5)
        # ids no execution of the platform test below has
        stop = m.StopInstance(
            execution_id=FAR, instance_id=FAR, container_name=f"{n1}-none", network="n"
        )
        await scheduler.publish(stop, node=n1)  # the scheduler commands a node
        await executor1.publish(
            m.InstanceRemoved(node=n1, execution_id=FAR, instance_id=FAR, container_name="c")
        )  # a node reports its own facts

    connection = await aio_pika.connect(provisioned.executor(n1))
    try:
        channel = await connection.channel()
        own = await channel.get_queue(routes.executor_queue(n1), ensure=False)
        got = await own.get(timeout=5, no_ack=True)
        assert got.body == m.encode(stop)  # its own queue it reads

        # ... not another node's
        channel = await connection.channel()
        other = await channel.get_queue(routes.executor_queue(n2), ensure=False)
        reason = await refused(other.consume(_ignore))
        assert f"queue '{routes.executor_queue(n2)}'" in reason

        # ... nor the scheduler's
        channel = await connection.channel()
        theirs = await channel.get_queue(routes.SCHEDULER, ensure=False)
        await refused(theirs.get())

        # it may not command anybody, nor report facts of another node
        channel = await connection.channel(publisher_confirms=True)
        commands = await channel.get_exchange(routes.COMMANDS, ensure=False)
        await refused(commands.publish(aio_pika.Message(m.encode(stop)), routing_key=n2))
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(routes.EVENTS, ensure=False)
        forged = m.InstanceRemoved(node=n2, execution_id=FAR, instance_id=FAR, container_name="c")
        key = routes.routing_key(forged)
        assert key.endswith(n2)
        reason = await refused(events.publish(aio_pika.Message(m.encode(forged)), routing_key=key))
        assert key in reason
        # ... nor beats in the name of many nodes (a process of hollow nodes sends those)
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(routes.EVENTS, ensure=False)
        many = m.NodesAlive(sender=n1, nodes=[n1, n2], sent_at=0.0)
        key = routes.routing_key(many)
        reason = await refused(events.publish(aio_pika.Message(m.encode(many)), routing_key=key))
        assert key in reason
    finally:
        await connection.close()

    connection = await aio_pika.connect(amqp["zoe-monitor"])
    try:
        # the monitor publishes verdicts, never a command
        channel = await connection.channel(publisher_confirms=True)
        commands = await channel.get_exchange(routes.COMMANDS, ensure=False)
        reason = await refused(commands.publish(aio_pika.Message(m.encode(stop)), routing_key=n1))
        assert f"exchange '{routes.COMMANDS}'" in reason
        # ... nor another's events (a submission is the api's)
        channel = await connection.channel(publisher_confirms=True)
        events = await channel.get_exchange(routes.EVENTS, ensure=False)
        await refused(events.publish(aio_pika.Message(b"{}"), routing_key="execution.submitted"))
        # ... and reads its own queues only
        channel = await connection.channel()
        requests = await channel.get_queue(routes.API_REQUESTS, ensure=False)
        await refused(requests.get())
    finally:
        await connection.close()


async def test_guest_has_no_right_on_the_deployments_vhost(provisioned: Provisioned) -> None:
    guest = provision.with_credentials(provisioned.env.amqp_url, "guest", "guest")
    with pytest.raises((aio_pika.exceptions.AMQPConnectionError, aiormq.exceptions.AMQPError)):
        connection = await aio_pika.connect(guest, timeout=10)
        await connection.close()


def test_permissions_follow_the_route_table() -> None:
    """Derived, not kept by hand: each user reads its queues and writes what it sends."""
    import re

    def allows(pattern: str, name: str) -> bool:
        return re.fullmatch(pattern, name) is not None

    for q in routes.QUEUES:
        for who in routes.SERVICES:
            node = "n1" if who == "executor" else None
            rights = routes.permissions(who, node)
            name = routes.executor_queue("n1") if q.name == routes.EXECUTOR else q.name
            assert allows(rights.read, name) == (q.service == who), (who, name)
    for r in routes.ROUTES:
        for who in routes.SERVICES:
            node = "n1" if who == "executor" else None
            rights = routes.permissions(who, node)
            exchange = r.exchange or routes.DEFAULT_EXCHANGE
            if r.sender == who:
                assert allows(rights.write, exchange), (who, r.message.__name__)
            if r.exchange == routes.EVENTS:
                key = routes._FIELD.sub("n1", r.key)
                # what speaks for many nodes is no single node's executor's to send
                may = r.sender == who and not (node and r.many_nodes)
                assert allows(rights.topic_write, key) == may, (who, key)
    assert not allows(routes.permissions("executor", "n1").read, routes.executor_queue("n10"))
    assert not allows(routes.permissions("monitor").write, routes.COMMANDS)


async def test_a_relay_publishes_only_the_rows_its_service_sends(
    provisioned: Provisioned,
) -> None:
    n2 = provisioned.nodes[1]  # no executor of the platform test below reads its queue
    await db.migrate(provisioned.database_url)
    verdict = m.NodeLost(node=f"{n2}-gone")
    command = m.StopInstance(
        execution_id=FAR, instance_id=FAR, container_name=f"{n2}-none", network="n"
    )
    async with db.pool(provisioned.database_url, max_size=2) as pool:
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, [Outgoing(command, node=n2), Outgoing(verdict)])
        async with Bus(provisioned.amqp["zoe-monitor"], name="t-monitor-relay") as monitor:
            assert await Relay(pool, monitor, sender="monitor").publish_once() == 1
        left = await pool.fetch("SELECT exchange, routing_key FROM outbox")
        assert [tuple(r) for r in left] == [(routes.COMMANDS, n2)]  # the scheduler's
        async with Bus(provisioned.amqp["zoe-scheduler"], name="t-sched-relay") as scheduler:
            assert await Relay(pool, scheduler, sender="scheduler").publish_once() == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


# ---- the database -----------------------------------------------------------------------


async def test_the_database_role_owns_and_migrates_its_database_and_nothing_more(
    provisioned: Provisioned,
) -> None:
    applied = await db.migrate(provisioned.database_url)  # as the role: it owns the tables
    assert applied or True  # applied once for the module; the tables are the role's
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        role = await admin.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls,"
            " rolpassword LIKE 'SCRAM-SHA-256$%' AS scram FROM pg_authid WHERE rolname = $1",
            provisioned.role,
        )
        owner = await admin.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1",
            provisioned.env.database,
        )
    finally:
        await admin.close()
    assert dict(role) == {
        "rolsuper": False,
        "rolcreaterole": False,
        "rolcreatedb": False,
        "rolreplication": False,
        "rolbypassrls": False,
        "scram": True,
    }
    assert owner == provisioned.role

    conn = await asyncpg.connect(provisioned.database_url)
    try:
        assert await conn.fetchval("SELECT current_user") == provisioned.role
        tables = await conn.fetch(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
        assert tables and {t["tableowner"] for t in tables} == {provisioned.role}
        refusals = [
            f"CREATE ROLE {provisioned.role}_other",
            f"CREATE DATABASE {provisioned.env.database}_other",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_ls_dir('/')",
            "CREATE TEMP TABLE f (line text); COPY f FROM '/etc/passwd'",
            "CREATE TEMP TABLE p (line text); COPY p FROM PROGRAM 'id'",
            f"ALTER ROLE {provisioned.role} SUPERUSER",
        ]
        for sql in refusals:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)  # several statements: one transaction, undone
    finally:
        await conn.close()


async def test_provisioning_again_keeps_the_passwords_and_hands_over_old_tables(
    provisioned: Provisioned, tmp_path: Path
) -> None:
    """An upgraded deployment: tables made by a superuser become the role's."""
    store = provision.Secrets(tmp_path / "s")
    name = f"{provisioned.env.database}_up"
    role = f"{name}_role"
    url = PG_BASE.rstrip("/") + "/" + name
    try:
        await db.migrate(url)  # as the superuser, as earlier versions did
        first = await provision.provision_database(ADMIN_URL, url, store, role=role)
        again = await provision.provision_database(ADMIN_URL, url, store, role=role)
        assert first == again
        conn = await asyncpg.connect(first)
        try:
            owners = await conn.fetch(
                "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND relkind IN ('r', 'S')"
            )
            assert [r["owner"] for r in owners] == [role]
        finally:
            await conn.close()
        assert await db.migrate(first) == []  # the role runs later migrations
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


# ---- the whole platform -----------------------------------------------------------------


async def test_the_platform_runs_as_its_least_privileged_users(
    provisioned: Provisioned, base_image: str, log_dir: Path
) -> None:
    """Every service process with its own broker user and the database role: an
    execution runs, ends and shows its log (the api asks the executor over the bus)."""
    await migrate(provisioned.env)  # as the role, with an admin and its token
    logs = log_dir / "least-privilege"
    logs.mkdir(exist_ok=True)
    n1 = provisioned.nodes[0]
    platform = Platform(provisioned.env, n1, logs, ZOE_CORES="2", ZOE_MEMORY=str(1 << 30))
    for process, proc in platform.services.items():
        url = (
            provisioned.executor(n1)
            if process == "executor"
            else provisioned.amqp[f"zoe-{process}"]
        )
        proc.env.update(ZOE_AMQP_URL=url, ZOE_DATABASE_URL=provisioned.database_url)
    async with platform.running():
        app = zapp("least-privileged", service("job", "echo least-privileged; sleep 1"))
        eid = (await platform.submit(app))["id"]
        # a generous deadline: on a loaded host a first start may take a minute
        ended = await platform.wait_state(eid, "finished", "failed", "terminated", timeout=240)
        assert ended["state"] == "finished", ended
        status, log = await platform.acall("GET", f"/executions/{eid}/services/job0/logs")
        assert status == 200 and "least-privileged" in log
        for name in ("scheduler", "monitor", "executor"):
            assert (await platform.probe(name, "/readyz"))[0] == 200
    for proc in platform.services.values():
        assert "ACCESS_REFUSED" not in proc.log_path.read_text(), proc.name

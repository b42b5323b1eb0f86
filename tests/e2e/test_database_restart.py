"""End to end: a PostgreSQL restart loses nothing and dead-letters nothing.

The platform of this module runs on a PostgreSQL server of its own (tests/private_postgres
.py) and a vhost of its own, so the test may stop the database for seconds while
containers end and die, then start it again: every handler that failed meanwhile for a
transient reason is retried in place (its delivery limit untouched), the scheduler gives
up its term when the lock's connection goes and leads again once the database is back,
and every execution reaches where it should.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import pytest

from common import db
from tests.conftest import TestEnv, _rabbitmqctl, _remove_containers, dead_letters, wait_for
from tests.e2e.conftest import ROOT, Platform, containers_of, service, zapp
from tests.e2e.test_failures import _long_running, _server, _workers, docker_kill, wait_instance
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def private_pg(test_env: TestEnv) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(ROOT / "var" / "test-postgres" / test_env.run_id)
    pg.start()
    try:
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="module")
async def pg_platform(
    test_env: TestEnv, private_pg: PrivatePostgres, base_image: str, log_dir: Path
) -> AsyncIterator[Platform]:
    env = TestEnv()
    env.vhost = f"{test_env.vhost}-pg"
    env.deployment = f"{test_env.deployment}pg"
    env.amqp_url = test_env.amqp_url.rsplit("/", 1)[0] + "/" + env.vhost
    env.database_url = private_pg.url + "zoe"
    _rabbitmqctl("add_vhost", env.vhost)
    _rabbitmqctl("set_permissions", "-p", env.vhost, "guest", ".*", ".*", ".*")
    await db.migrate(env.database_url)
    logs = log_dir / "pg-restart"
    logs.mkdir(exist_ok=True)
    p = Platform(env, f"{env.deployment}-n1", logs, ZOE_CORES="2", ZOE_MEMORY=str(1 << 30))
    p.start()
    try:
        await p.wait_ready()
        yield p
    finally:
        p.stop()
        await _remove_containers(env.deployment)
        with contextlib.suppress(RuntimeError):
            _rabbitmqctl("delete_vhost", env.vhost, attempts=2)


async def test_a_database_restart_loses_nothing_and_dead_letters_nothing(
    pg_platform: Platform, private_pg: PrivatePostgres, docker: aiodocker.Docker
) -> None:
    platform = pg_platform
    env = platform.env
    async with db.pool(env.database_url, max_size=2) as pool:
        running = (await platform.submit(_long_running(_server(), _workers(2))))["id"]
        await platform.wait_state(running, "running")
        worker = await wait_instance(pool, running, "worker1", state="running")
        batch = (await platform.submit(zapp("batch", service("job", "sleep 2; exit 0"))))["id"]
        await platform.wait_state(batch, "running")
        (job,) = await containers_of(docker, env, batch)

    private_pg.stop_server()
    try:
        # while the database is away: a container dies, a batch job ends by itself
        await docker_kill(docker, worker["container_name"])
        await wait_for(
            lambda: _exited(docker, job["Id"]), timeout=30, what="the batch job ends meanwhile"
        )
        await asyncio.sleep(3)  # the outage lasts: handlers and loops meet it and retry
        assert all(s.alive for s in platform.services.values())
        # a client is told to come back, not that something broke
        status, body = await platform.acall(
            "POST",
            "/executions",
            {"name": "during", "application": zapp("during", service("job", "exit 0"))},
        )
        assert status == 503, body
    finally:
        private_pg.start()

    assert (await platform.wait_state(batch, "finished", "failed", timeout=120))["state"] == (
        "finished"
    )
    async with db.pool(env.database_url, max_size=2) as pool:
        replaced = await wait_instance(
            pool, running, "worker1", timeout=120, state="running", restart_count=1
        )
        assert replaced["container_name"] != worker["container_name"]
    assert (await platform.get(running))["state"] == "running"
    assert all(s.alive for s in platform.services.values()), "a service died of the outage"
    assert await dead_letters(env.amqp_url) == []
    await platform.acall("POST", f"/executions/{running}/terminate")
    await platform.wait_state(running, "terminated", timeout=60)


async def _exited(docker: aiodocker.Docker, container_id: str) -> bool:
    info = await docker.containers.container(container_id).show()
    return not info["State"]["Running"]

"""End to end: Zoe stays correct when things fail (containers, executors, nodes, broker).

Every test runs on the real Docker engine, RabbitMQ and PostgreSQL with the services as
processes. Faults are injected from outside (``docker kill``, signals to a service,
``rabbitmqctl stop_app``) and every fault is undone in a ``finally``. A test that needs a
service with other settings runs a second copy of it with those settings for its
duration (`swapped`), then gives the platform its own back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import asyncpg
import pytest

from tests.conftest import TestEnv, _rabbitmqctl, wait_for
from tests.e2e.conftest import (
    SERVE_FOREVER,
    Platform,
    ServiceProcess,
    containers_of,
    service,
    zapp,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


# ---- helpers (test_failover.py uses them too) -------------------------------------------


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The structured log lines of a service process whose event is ``event``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


async def wait_log(
    proc: ServiceProcess, event: str, *, count: int = 1, timeout: float = 30
) -> None:
    """Wait until ``proc``'s log holds ``count`` lines of ``event``."""
    await wait_for(
        lambda: len(log_events(proc.log_path, event)) >= count,
        timeout=timeout,
        interval=0.1,
        what=f"{count} x {event} in {proc.log_path.name}",
    )


@asynccontextmanager
async def swapped(
    platform: Platform, name: str, ready: str | None = None, **env: str
) -> AsyncIterator[ServiceProcess]:
    """Run the platform's service ``name`` with ``env`` added, for the block's duration.

    The platform's own process is stopped first (a scheduler releases its lock) and
    started again afterwards; ``ready`` is a log event the new process must print.
    """
    original = platform[name]
    alt = ServiceProcess(
        f"{name}-{'-'.join(k.lower() for k in env)}"[:60],
        original.module,
        {**original.env, **env},
        original.log_path.parent,
    )
    original.stop()
    alt.start()
    try:
        if ready is not None:
            await wait_log(alt, ready, count=len(log_events(alt.log_path, ready)) + 1)
        yield alt
    finally:
        alt.stop()
        original.start()


async def instance_row(pool: asyncpg.Pool, execution_id: int, name: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT * FROM instances WHERE execution_id = $1 AND name = $2", execution_id, name
    )
    assert row is not None, (execution_id, name)
    return row


async def wait_instance(
    pool: asyncpg.Pool, execution_id: int, name: str, timeout: float = 30, **expected: Any
) -> asyncpg.Record:
    """Wait until the instance row has every ``expected`` column value."""
    last: dict[str, Any] = {}

    async def matches() -> asyncpg.Record | None:
        nonlocal last
        row = await instance_row(pool, execution_id, name)
        last = {k: row[k] for k in expected}
        return row if last == expected else None

    try:
        row: asyncpg.Record = await wait_for(
            matches, timeout=timeout, interval=0.1, what=f"{name} of {execution_id}"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: want {expected}, last seen {last}") from None
    return row


async def container_gone(docker: aiodocker.Docker, name: str) -> bool:
    try:
        await docker.containers.container(name).show()
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return True
        raise
    return False


async def docker_kill(docker: aiodocker.Docker, name: str) -> None:
    """What ``docker kill NAME`` does: SIGKILL to the container's process."""
    await docker.containers.container(name).kill()


async def terminate(platform: Platform, *execution_ids: int) -> None:
    for eid in execution_ids:
        await platform.acall("POST", f"/executions/{eid}/terminate")
    for eid in execution_ids:
        await platform.wait_state(eid, "terminated", "failed", "finished")


def _long_running(*services: dict[str, Any], name: str = "failing") -> dict[str, Any]:
    return zapp(name, *services, will_end=False)


def _server(name: str = "server", **kw: Any) -> dict[str, Any]:
    kw.setdefault("cores", 0.1)
    kw.setdefault("memory", 16 * MiB)
    return service(name, SERVE_FOREVER, **kw)


def _workers(total: int, **kw: Any) -> dict[str, Any]:
    """A service of ``total`` instances: worker0 essential, the others elastic."""
    return _server("worker", monitor=False, essential=1, total=total, **kw)


# ---- containers that die ----------------------------------------------------------------


async def test_killed_elastic_instance_is_replaced_with_growing_backoff(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    eid = (await platform.submit(_long_running(_server(), _workers(2))))["id"]
    await platform.wait_state(eid, "running")
    first = await wait_instance(pool, eid, "worker1", state="running")
    server = await wait_instance(pool, eid, "server0", state="running")
    base = f"{test_env.deployment}-{eid}-worker1"
    assert first["container_name"] == base

    # the first death is replaced at once, the second after restart_backoff (0.5 s)
    for restart, backoff in ((1, 0.0), (2, 0.5)):
        dead = (await instance_row(pool, eid, "worker1"))["container_name"]
        await docker_kill(docker, dead)
        row = await wait_instance(
            pool, eid, "worker1", restart_count=restart, state="running", timeout=30
        )
        assert row["container_name"] == f"{base}-r{restart}"
        assert (row["reason"], row["exit_code"], row["backoff"]) == ("crashed", 137, backoff)
        await wait_for(lambda d=dead: container_gone(docker, d), what=f"{dead} removed")
        assert (await platform.get(eid))["state"] == "running"

    # the others were not touched: same containers, never restarted
    assert (await instance_row(pool, eid, "server0"))["container_id"] == server["container_id"]
    names = sorted(c["Names"][0].lstrip("/") for c in await containers_of(docker, test_env, eid))
    worker0 = f"{test_env.deployment}-{eid}-worker0"
    assert names == sorted([f"{base}-r2", server["container_name"], worker0])
    await terminate(platform, eid)
    assert await containers_of(docker, test_env, eid) == []


async def test_killed_essential_instance_fails_its_execution(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    eid = (await platform.submit(_long_running(_server(), _workers(2))))["id"]
    await platform.wait_state(eid, "running")
    await wait_instance(pool, eid, "worker1", state="running")
    await docker_kill(docker, (await instance_row(pool, eid, "server0"))["container_name"])
    ended = await platform.wait_state(eid, "failed", "finished", "terminated")
    assert ended["state"] == "failed"
    assert ended["error"] == "essential instance server0 ended: crashed (exit code 137)"
    server = next(s for s in ended["services"] if s["name"] == "server0")
    assert (server["state"], server["reason"], server["exit_code"]) == ("died", "crashed", 137)
    assert await containers_of(docker, test_env, eid) == []


async def test_oom_kill_is_told_apart(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    # not at once: Docker (containerd on cgroup v1) watches a container for OOM kills only
    # once it has started it, and one killed before then is never marked OOM-killed
    hog = service("hog", "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1", memory=16 * MiB)
    eid = (await platform.submit(zapp("oom", hog)))["id"]
    ended = await platform.wait_state(eid, "failed", "finished", "terminated")
    assert ended["state"] == "failed"
    (inst,) = ended["services"]
    assert (inst["state"], inst["reason"], inst["exit_code"]) == ("died", "oom", 137)
    assert ended["error"] == "essential instance hog0 ended: oom (exit code 137)"
    assert await containers_of(docker, test_env, eid) == []


async def test_long_running_execution_may_restart_its_essential_instances(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    async with swapped(platform, "scheduler", "scheduler.active", ZOE_ESSENTIAL_RESTARTS="1"):
        eid = (await platform.submit(_long_running(_server(), _workers(2))))["id"]
        await platform.wait_state(eid, "running")
        elastic = await wait_instance(pool, eid, "worker1", state="running")
        first = await instance_row(pool, eid, "server0")
        await docker_kill(docker, first["container_name"])
        row = await wait_instance(pool, eid, "server0", restart_count=1, state="running")
        assert row["container_name"] == first["container_name"] + "-r1"
        assert row["reason"] == "crashed"
        assert (await platform.get(eid))["state"] == "running"
        assert (await instance_row(pool, eid, "worker1"))["container_id"] == elastic["container_id"]
        # the budget (1) is spent: the next death ends the execution
        await docker_kill(docker, row["container_name"])
        ended = await platform.wait_state(eid, "failed", "finished", "terminated")
        assert ended["state"] == "failed"
        assert "server0 ended: crashed" in ended["error"]
        assert await containers_of(docker, test_env, eid) == []


# ---- an executor that dies ----------------------------------------------------------------


async def test_killed_executor_adopts_its_containers_when_it_comes_back(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    eid = (await platform.submit(_long_running(_server(), _workers(3))))["id"]
    await platform.wait_state(eid, "running")
    before = {}
    for name in ("server0", "worker0", "worker1", "worker2"):
        before[name] = (await wait_instance(pool, eid, name, state="running"))["container_id"]
    executor = platform["executor"]
    reconciled = len(log_events(executor.log_path, "executor.reconciled"))
    executor.kill()  # SIGKILL
    try:
        # a container dies while its executor is away: the restart must notice
        await docker_kill(docker, f"{test_env.deployment}-{eid}-worker2")
    finally:
        executor.start()
    await wait_log(executor, "executor.reconciled", count=reconciled + 1)
    row = await wait_instance(pool, eid, "worker2", restart_count=1, state="running")
    assert row["container_name"].endswith("-worker2-r1")
    for name in ("server0", "worker0", "worker1"):  # adopted, not started again
        row = await instance_row(pool, eid, name)
        assert (row["container_id"], row["restart_count"]) == (before[name], 0)
    assert (await platform.get(eid))["state"] == "running"
    await wait_for(
        lambda: _count_containers(docker, test_env, eid, 4), what="one container per instance"
    )
    await terminate(platform, eid)


async def _count_containers(docker: aiodocker.Docker, env: TestEnv, eid: int, n: int) -> bool:
    return len(await containers_of(docker, env, eid)) == n


# ---- a node that goes silent ---------------------------------------------------------------


async def _free_cores(platform: Platform, node: str) -> float:
    _, nodes = await platform.acall("GET", "/nodes")
    (n,) = [x for x in nodes if x["name"] == node]
    return float(n["cores"]) - float(n["cores_reserved"])


@asynccontextmanager
async def _second_executor(
    platform: Platform, node: str, **env: str
) -> AsyncIterator[ServiceProcess]:
    """Another executor process, for the node ``node``; lost after (killed: a node that
    dies says no goodbye, so the monitor declares it lost after its timeout alone)."""
    base = platform["executor"]
    # both executors run at once: the second has no metrics port
    env = {**base.env, "ZOE_NODE_NAME": node, "ZOE_METRICS_PORT": "0", **env}
    proc = ServiceProcess(f"executor-{node}", base.module, env, base.log_path.parent)
    proc.start()
    try:
        yield proc
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGCONT)
        proc.kill()
        # let the monitor declare it lost, so that nothing more is placed there
        await platform.wait_node(node, "lost")


async def test_lost_node_work_moves_and_its_leftovers_go_when_it_returns(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    n1, n2 = platform.node, f"{test_env.deployment}-n2"
    side = {"labels": ["side"]}
    async with swapped(platform, "monitor", None, ZOE_NODE_TIMEOUT="3", ZOE_CHECK_INTERVAL="0.5"):
        # n1 keeps exactly room for A's essential set; its elastic workers wait for n2
        filler_cores = round(await _free_cores(platform, n1) - 0.4, 3)
        filler = (await platform.submit(_long_running(_server("fill", cores=filler_cores))))["id"]
        await platform.wait_state(filler, "running")
        b = (await platform.submit(_long_running({**_server("lonely"), **side})))["id"]
        a = (await platform.submit(_long_running(_server("master", cores=0.2), _workers(3, cores=0.2))))["id"]  # fmt: skip
        await platform.wait_state(a, "running")
        async with _second_executor(
            platform, n2, ZOE_CORES="0.5", ZOE_MEMORY=str(256 * MiB), ZOE_LABELS="side"
        ) as executor2:
            await platform.wait_node(n2)
            await platform.wait_state(b, "running")
            on_n2 = {"lonely0": b}
            for name in ("worker1", "worker2"):
                row = await wait_instance(pool, a, name, state="running")
                assert row["node"] == n2, "the elastic workers should fill n2"
                on_n2[name] = a
            leftovers = [
                (await instance_row(pool, eid, name))["container_name"]
                for name, eid in on_n2.items()
            ]
            essential = {
                n: (await instance_row(pool, a, n))["container_id"] for n in ("master0", "worker0")
            }
            await terminate(platform, filler)  # room on n1 for the workers to move to

            assert executor2.proc is not None
            executor2.proc.send_signal(signal.SIGSTOP)  # alive, but silent
            try:
                await platform.wait_node(n2, "lost")
                ended = await platform.wait_state(b, "failed", "finished", "terminated")
                assert ended["state"] == "failed"
                assert ended["error"] == "essential instance lonely0 ended: node-lost"
                for name in ("worker1", "worker2"):
                    row = await wait_instance(pool, a, name, state="running", node=n1)
                    assert (row["restart_count"], row["reason"]) == (1, "node-lost")
                assert (await platform.get(a))["state"] == "running"
                for name, cid in essential.items():
                    assert (await instance_row(pool, a, name))["container_id"] == cid
                # the lost node takes no new work
                c = (await platform.submit(_long_running({**_server("late"), **side})))["id"]
                await platform.wait_state(c, "queued")
                assert (await instance_row(pool, c, "late0"))["state"] == "created"
                # its containers are out of reach, still there
                for name in leftovers:
                    assert not await container_gone(docker, name)
            finally:
                executor2.proc.send_signal(signal.SIGCONT)

            await platform.wait_node(n2, "up")
            for name in leftovers:
                await wait_for(lambda n=name: container_gone(docker, n), what=f"{name} removed")
            row = await wait_instance(pool, c, "late0", state="running")
            assert row["node"] == n2  # it takes work again
            await terminate(platform, a, c)
            assert await containers_of(docker, test_env, a) == []
            assert await containers_of(docker, test_env, b) == []


# ---- the broker restarts ------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_broker_node() -> None:
    # as its init script would, with room for the files of many quorum queues
    script = (
        "ulimit -n 20000 2>/dev/null; cd /var/lib/rabbitmq;"
        " /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
    )
    subprocess.run(["su", "rabbitmq", "-s", "/bin/sh", "-c", script], check=False, timeout=60)


async def _broker_back() -> None:
    """Start the broker's app again; if the node itself is down, start the node."""
    try:
        await asyncio.to_thread(_rabbitmqctl, "start_app")
    except RuntimeError:
        # the whole node is gone: start it, with room for many quorum queues' files
        await asyncio.to_thread(_start_broker_node)
    await wait_for(lambda: _port_open(5672), timeout=120, interval=0.2, what="RabbitMQ on 5672")


async def test_broker_restart_loses_nothing(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    running = (await platform.submit(_long_running(_server(), _workers(2))))["id"]
    await platform.wait_state(running, "running")
    ids = {
        n: (await wait_instance(pool, running, n, state="running"))["container_id"]
        for n in ("server0", "worker0", "worker1")
    }
    # a batch job that ends (exit 0 on SIGTERM) while the broker is away: reported after
    batch = (await platform.submit(zapp("batch", service("job", SERVE_FOREVER))))["id"]
    await platform.wait_state(batch, "running")
    (job,) = await containers_of(docker, test_env, batch)
    during: list[int] = []
    try:
        await asyncio.to_thread(_rabbitmqctl, "stop_app")
        assert not _port_open(5672)
        for i in range(3):  # stored by the api; its outbox publishes them later
            app = zapp(f"during{i}", service("job", "exit 0")) if i else _long_running(_server())
            during.append((await platform.submit(app))["id"])
        await docker.containers.container(job["Id"]).kill(signal="SIGTERM")
        await wait_for(
            lambda: _exited(docker, job["Id"]), timeout=30, what="the batch job exits meanwhile"
        )
    finally:
        await _broker_back()

    ended = await platform.wait_state(batch, "finished", "failed", "terminated", timeout=90)
    assert ended["state"] == "finished"
    await platform.wait_state(during[0], "running", timeout=90)
    for eid in during[1:]:
        assert (await platform.wait_state(eid, "finished", "failed", timeout=90))["state"] == (
            "finished"
        )
    # the running execution was not touched, and no node was thought lost
    for name, cid in ids.items():
        row = await instance_row(pool, running, name)
        assert (row["state"], row["container_id"], row["restart_count"]) == ("running", cid, 0)
    assert (await platform.get(running))["state"] == "running"
    _, nodes = await platform.acall("GET", "/nodes")
    assert {n["name"]: n["state"] for n in nodes}[platform.node] == "up"
    await terminate(platform, running, during[0])


async def _exited(docker: aiodocker.Docker, container_id: str) -> bool:
    info = await docker.containers.container(container_id).show()
    return not info["State"]["Running"]

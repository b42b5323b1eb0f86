"""The executor against the real Docker engine and RabbitMQ: commands in, facts out.

Most tests run the executor in-process (``serve`` with a stop event); the restart test
runs it as a separate process and SIGKILLs it. Facts are observed on a queue of our own
bound to ``zoe.events``. Every container carries the session's deployment label.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import msgspec
import pytest
from structlog.testing import capture_logs

from common import messages as m
from common.bus import Bus
from common.settings import ExecutorSettings
from services.executor import facts as translations
from services.executor.engine import (
    CLAIM_SUFFIX,
    LABEL_NETWORK,
    LABEL_POOL,
    after_cursor,
    unix_nanos,
)
from services.executor.service import serve
from tests.conftest import (
    PG_BASE,
    Facts,
    TestEnv,
    new_user,
    node_facts,
    own_database,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]

BUSYBOX = "zoe/busybox:1"
MIB = 1 << 20
# Execution ids of these tests' own making, far above those the session's database hands out
# to the e2e platform, which runs on the same engine under the same deployment name: the
# names derived from them (containers, networks, network claims) never meet its own.
_ids = itertools.count(10**12 + 1)
_nodes = itertools.count(1)
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def busybox(docker: aiodocker.Docker) -> str:
    """The busybox base image, made locally unless present."""
    from services.executor.images import ensure_image

    await ensure_image(docker, BUSYBOX, zapps_root=Path("zapps"))
    return BUSYBOX


@pytest.fixture
async def facts(test_env: TestEnv, bus: Bus) -> AsyncIterator[Facts]:
    async with node_facts(test_env) as out:
        yield out


def node_name(test_env: TestEnv) -> str:
    return f"{test_env.deployment}-node{next(_nodes)}"


def executor_env(test_env: TestEnv, node: str, **extra: str) -> dict[str, str]:
    return test_env.env(
        ZOE_NODE_NAME=node,
        ZOE_HEARTBEAT_INTERVAL="0.5",
        ZOE_STOP_TIMEOUT="2",
        ZOE_DRAIN_TIMEOUT="5",
        ZOE_ZAPPS_ROOT="/nonexistent-zapps",
        **extra,
    )


@contextlib.asynccontextmanager
async def in_process_executor(settings: ExecutorSettings) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``serve`` in this event loop until the block ends (then stop and drain)."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def node(
    test_env: TestEnv, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> AsyncIterator[str]:
    """An in-process executor for a fresh node; yields the node name once registered."""
    name = node_name(test_env)
    try:
        async with in_process_executor(ExecutorSettings.from_env(executor_env(test_env, name))):
            await facts.wait(m.NodeHeartbeat, node=name, registered=True)
            yield name
    finally:
        await remove_node_containers(docker, test_env, name)


async def remove_node_containers(docker: aiodocker.Docker, test_env: TestEnv, node: str) -> None:
    labels = [f"zoe.deployment={test_env.deployment}", f"zoe.node={node}"]
    for c in await docker.containers.list(all=True, filters={"label": labels}):
        await c.delete(force=True)


# ---- helpers ----------------------------------------------------------------------------


def start_msg(
    test_env: TestEnv,
    command: str | None,
    *,
    image: str = BUSYBOX,
    instance: str = "main",
    memory: int = 64 * MIB,
    cores: float = 0.5,
    ports: list[m.PortRequest] | None = None,
    **extra: Any,
) -> m.StartInstance:
    execution_id = next(_ids)
    extra["environment"] = {"GREETING": "hello-from-zoe", **extra.get("environment", {})}
    return m.StartInstance(
        execution_id=execution_id,
        instance_id=execution_id * 100 + 1,
        instance=instance,
        container_name=f"{test_env.deployment}-{execution_id}-{instance}",
        network=f"{test_env.deployment}-{execution_id}",
        image=image,
        command=command,
        cores_limit=cores,
        memory_limit=memory,
        ports=ports or [],
        labels={"zoe.test": "executor"},
        **extra,
    )


def stop_msg(start: m.StartInstance) -> m.StopInstance:
    return m.StopInstance(
        execution_id=start.execution_id,
        instance_id=start.instance_id,
        container_name=start.container_name,
        network=start.network,
    )


async def stop_and_wait(bus: Bus, facts: Facts, node: str, start: m.StartInstance) -> Any:
    await bus.publish(stop_msg(start), node=node)
    return await facts.wait(m.InstanceRemoved, execution_id=start.execution_id)


async def containers_named(docker: aiodocker.Docker, name: str) -> list[Any]:
    found = await docker.containers.list(all=True, filters={"name": [name]})
    return [c for c in found if f"/{name}" in c["Names"]]


async def network_exists(docker: aiodocker.Docker, name: str) -> bool:
    return any(n["Name"] == name for n in await docker.networks.list(filters={"name": [name]}))


# A long-running command that exits with 7 soon after SIGTERM (PID 1 has no default
# signal handlers, hence the trap; the short sleeps let the trap run promptly).
LONG_RUNNING = "trap 'exit 7' TERM; echo $GREETING; while :; do sleep 0.1; done"


class Proxy:
    """A TCP or unix-socket relay a test can cut, to play a broker or engine outage.

    ``cut()`` drops every relayed connection and refuses new ones until ``restore()``.
    """

    def __init__(self, upstream: Callable[[], Awaitable[Streams]]) -> None:
        self._upstream = upstream
        self._writers: set[asyncio.StreamWriter] = set()
        self.open = True

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await self._upstream()
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    def cut(self) -> None:
        self.open = False
        for w in list(self._writers):
            w.transport.abort()

    def restore(self) -> None:
        self.open = True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


# ---- tests ------------------------------------------------------------------------------


async def test_start_runs_a_limited_labelled_container_and_stop_removes_it(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, node: str
) -> None:
    start = start_msg(
        test_env,
        "httpd -p 8080 -h /tmp; " + LONG_RUNNING,
        ports=[m.PortRequest(name="http", port_number=8080, url_template="http://{ip_port}/x")],
    )
    await bus.publish(start, node=node)
    fact = await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    assert (fact.node, fact.instance_id, fact.container_name) == (
        node,
        start.instance_id,
        start.container_name,
    )

    info = await docker.containers.container(start.container_name).show()
    assert info["Id"] == fact.container_id
    assert info["HostConfig"]["Memory"] == 64 * MIB
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert info["Config"]["Hostname"] == "main"
    labels = info["Config"]["Labels"]
    assert labels["zoe.deployment"] == test_env.deployment
    assert labels["zoe.node"] == node
    assert labels["zoe.execution"] == str(start.execution_id)
    assert labels["zoe.instance"] == "main"
    assert labels["zoe.instance_id"] == str(start.instance_id)
    assert labels["zoe.test"] == "executor"
    network = await claimed_network(docker, start)  # a spare, or one named start.network
    assert network is not None
    assert "main" in info["NetworkSettings"]["Networks"][network]["Aliases"]

    # the endpoint is the URL of the published port, and something answers there
    url = fact.endpoints["http"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/x")
    host, port = url.removeprefix("http://").removesuffix("/x").rsplit(":", 1)
    assert info["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"] == port

    async def answer() -> bytes:
        """The start of httpd's answer; empty while it does not listen yet."""
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                return await reader.read(12)
            finally:
                writer.close()
        return b""

    assert (await wait_for(answer, what="an answer on the published port")).startswith(b"HTTP/1.")

    beat = await facts.wait(m.NodeHeartbeat, node=node, registered=False)
    await wait_for(
        lambda: start.instance_id in facts.all(m.NodeHeartbeat, node=node)[-1].instances,
        what="the instance in a heartbeat",
    )
    assert BUSYBOX in beat.images

    removed = await stop_and_wait(bus, facts, node, start)
    assert removed.exit_code == 7
    assert not removed.oom_killed
    assert "hello-from-zoe" in removed.log
    assert await containers_named(docker, start.container_name) == []
    await wait_for(lambda: _gone(docker, network, start), what="the network removed")


async def test_redelivered_commands_are_idempotent(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, node: str
) -> None:
    start = start_msg(test_env, LONG_RUNNING)
    await bus.publish(start, node=node)
    await bus.publish(start, node=node)  # the same message again, as a redelivery
    first = await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    second = await facts.wait(m.InstanceStarted, 2, execution_id=start.execution_id)
    assert first.container_id == second.container_id
    assert len(await containers_named(docker, start.container_name)) == 1
    await stop_and_wait(bus, facts, node, start)
    await bus.publish(stop_msg(start), node=node)  # a redelivered stop: still a fact
    again = await facts.wait(m.InstanceRemoved, 2, execution_id=start.execution_id)
    assert again.exit_code is None
    await bus.publish(start, node=node)  # a start redelivered after its stop is stale
    await facts.wait(m.InstanceRemoved, 3, execution_id=start.execution_id)
    assert await containers_named(docker, start.container_name) == []
    assert len(facts.all(m.InstanceStarted, execution_id=start.execution_id)) == 2


async def test_container_exiting_by_itself_is_reported_with_its_code(
    test_env: TestEnv, bus: Bus, facts: Facts, node: str
) -> None:
    start = start_msg(test_env, "echo bye; exit 3")
    await bus.publish(start, node=node)
    exited = await facts.wait(m.InstanceExited, execution_id=start.execution_id)
    assert (exited.exit_code, exited.oom_killed) == (3, False)
    started = facts.all(m.InstanceStarted, execution_id=start.execution_id)
    assert len(started) == 1, "the start is reported before the death"
    assert facts.items.index(started[0]) < facts.items.index(exited)
    assert exited.container_id == started[0].container_id

    await bus.publish(start, node=node)  # a late redelivered start does not restart it
    again = await facts.wait(m.InstanceExited, 2, execution_id=start.execution_id)
    assert again.exit_code == 3
    removed = await stop_and_wait(bus, facts, node, start)
    assert removed.exit_code == 3
    assert "bye" in removed.log


async def test_oom_killed_container_is_reported(
    test_env: TestEnv, bus: Bus, facts: Facts, node: str
) -> None:
    # tail keeps the one endless "line" in memory: far beyond the 8 MiB limit
    start = start_msg(test_env, "head -c 64m /dev/zero | tail", memory=8 * MIB)
    await bus.publish(start, node=node)
    exited = await facts.wait(m.InstanceExited, execution_id=start.execution_id)
    assert exited.oom_killed
    assert exited.exit_code == 137
    removed = await stop_and_wait(bus, facts, node, start)
    assert removed.oom_killed


async def test_missing_image_that_cannot_be_built_fails_the_start(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, node: str
) -> None:
    start = start_msg(test_env, "true", image="zoe/no-such-image-zt:1")
    await bus.publish(start, node=node)
    failed = await facts.wait(m.InstanceStartFailed, execution_id=start.execution_id)
    assert "zoe/no-such-image-zt:1" in failed.reason
    assert failed.container_name == start.container_name
    assert await containers_named(docker, start.container_name) == []
    assert facts.all(m.InstanceStarted, execution_id=start.execution_id) == []


async def test_logs_request_returns_the_container_output(
    test_env: TestEnv, bus: Bus, facts: Facts, node: str
) -> None:
    start = start_msg(test_env, "echo line-one; echo line-two >&2; sleep 0.2; " + LONG_RUNNING)
    await bus.publish(start, node=node)
    await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    decoder = m.decoder(m.LogsReply)

    async def logs(name: str, tail: int | None = None) -> m.LogsReply:
        request = m.LogsRequest(container_name=name, tail=tail)
        return decoder.decode(await bus.request(node, request, timeout=5))

    async def all_lines() -> m.LogsReply | None:
        reply = await logs(start.container_name)
        return reply if "hello-from-zoe" in reply.log else None

    reply = await wait_for(all_lines, what="the three lines in the log")
    assert reply.found
    # stdout and stderr are copied to the log separately: their interleaving may vary
    assert sorted(reply.log.splitlines()) == ["hello-from-zoe", "line-one", "line-two"]
    assert (await logs(start.container_name, tail=1)).log.strip() == "hello-from-zoe"
    missing = await logs(f"{test_env.deployment}-no-such-container")
    assert (missing.found, missing.log) == (False, "")
    await stop_and_wait(bus, facts, node, start)


async def test_container_removed_behind_the_executors_back_is_reported(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, node: str
) -> None:
    start = start_msg(test_env, LONG_RUNNING)
    await bus.publish(start, node=node)
    await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    await docker.containers.container(start.container_name).delete(force=True)
    removed = await facts.wait(m.InstanceRemoved, execution_id=start.execution_id)
    assert (removed.instance_id, removed.container_name) == (
        start.instance_id,
        start.container_name,
    )
    await stop_and_wait(bus, facts, node, start)  # the network goes with the stop


async def test_work_dir_command_shm_and_labels_are_honoured(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, node: str
) -> None:
    start = start_msg(
        test_env,
        "pwd; df -k /dev/shm | tail -1; " + LONG_RUNNING,
        work_dir="/tmp",
        shm_size=96 * MIB,
    )
    await bus.publish(start, node=node)
    await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    info = await docker.containers.container(start.container_name).show()
    assert info["Config"]["WorkingDir"] == "/tmp"
    assert info["Config"]["Cmd"] == ["sh", "-c", start.command]
    assert info["HostConfig"]["ShmSize"] == 96 * MIB
    assert info["Config"]["Labels"]["zoe.test"] == "executor"
    removed = await stop_and_wait(bus, facts, node, start)
    lines = removed.log.splitlines()
    assert lines[0] == "/tmp"
    assert lines[1].split()[1] == str(96 * 1024)  # the size of /dev/shm in KiB


# ---- volumes ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def executor_with(
    test_env: TestEnv, facts: Facts, docker: aiodocker.Docker, **settings: Any
) -> AsyncIterator[str]:
    """An in-process executor of a fresh node with some settings changed."""
    name = node_name(test_env)
    base = ExecutorSettings.from_env(executor_env(test_env, name))
    try:
        async with in_process_executor(msgspec.structs.replace(base, **settings)):
            await facts.wait(m.NodeHeartbeat, node=name, registered=True)
            yield name
    finally:
        await remove_node_containers(docker, test_env, name)


async def remove_volumes(docker: aiodocker.Docker, *names: str) -> None:
    for name in names:
        with contextlib.suppress(aiodocker.DockerError):
            await aiodocker.volumes.DockerVolume(docker, name).delete()


async def test_volumes_workspace_and_allowed_host_paths_are_mounted(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
) -> None:
    allowed = tmp_path / "data"
    (allowed / "in").mkdir(parents=True)
    (allowed / "in").chmod(0o777)  # containers run as uid 1000
    shared = f"{test_env.deployment}-shared"
    workspace = f"{test_env.deployment}-workspace-alice"
    start = start_msg(
        test_env,
        "echo from-host > /data/note; echo mine > /mnt/workspace/w; ls /ro; " + LONG_RUNNING,
        environment={"ZOE_USER": "alice"},
        volumes=[
            m.VolumeRequest(source=str(allowed / "in"), path="/data"),
            m.VolumeRequest(source=str(allowed), path="/ro", read_only=True),
            m.VolumeRequest(source=shared, path="/shared"),
        ],
    )
    try:
        async with executor_with(test_env, facts, docker, host_paths=(str(allowed),)) as node:
            await bus.publish(start, node=node)
            await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
            info = await docker.containers.container(start.container_name).show()
            mounts = {x["Destination"]: x for x in info["Mounts"]}
            assert mounts["/data"]["Source"] == str(allowed / "in")
            assert mounts["/ro"]["RW"] is False
            assert (mounts["/shared"]["Type"], mounts["/shared"]["Name"]) == ("volume", shared)
            assert mounts["/mnt/workspace"]["Name"] == workspace
            volume = await aiodocker.volumes.DockerVolume(docker, workspace).show()
            assert volume["Labels"]["zoe.deployment"] == test_env.deployment
            await wait_for(lambda: (allowed / "in" / "note").exists(), what="the file on the host")
            assert (allowed / "in" / "note").read_text() == "from-host\n"
            removed = await stop_and_wait(bus, facts, node, start)
            assert "in" in removed.log.split()  # /ro shows the allowed directory
    finally:
        await remove_volumes(docker, shared, workspace)


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/etc", "host path /etc is not allowed"),
        ("{allowed}/../outside", "is not allowed"),  # leaves the allowed directory
        ("{allowed}/link", "is not allowed"),  # a symbolic link leading out of it
        ("other-deployment-vol", "does not belong to deployment"),
    ],
)
async def test_a_mount_outside_the_allow_list_fails_the_start(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
    source: str,
    why: str,
) -> None:
    allowed = tmp_path / "data"
    allowed.mkdir()
    (allowed / "link").symlink_to("/etc")
    start = start_msg(
        test_env,
        LONG_RUNNING,
        volumes=[m.VolumeRequest(source=source.format(allowed=allowed), path="/x")],
    )
    async with executor_with(test_env, facts, docker, host_paths=(str(allowed),)) as node:
        await bus.publish(start, node=node)
        failed = await facts.wait(m.InstanceStartFailed, execution_id=start.execution_id)
    assert why in failed.reason
    assert await containers_named(docker, start.container_name) == []


# ---- usage and logs ---------------------------------------------------------------------


async def test_heartbeats_carry_the_containers_cpu_and_memory_use(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    busy = start_msg(test_env, "trap 'exit 0' TERM; while :; do :; done", cores=0.5)
    idle = start_msg(test_env, LONG_RUNNING)
    async with executor_with(test_env, facts, docker, usage_interval=0.5) as node:
        for start in (busy, idle):
            await bus.publish(start, node=node)
            await facts.wait(m.InstanceStarted, execution_id=start.execution_id)

        def samples(instance_id: int) -> list[m.ContainerUsage]:
            return [
                u
                for beat in facts.all(m.NodeHeartbeat, node=node)
                for u in beat.usage
                if u.instance_id == instance_id
            ]

        def hot_sample() -> m.ContainerUsage | None:
            # a busy loop shows (a share of the two cores of a loaded machine may be small)
            return next((u for u in samples(busy.instance_id) if u.cpu_percent >= 10), None)

        hot = await wait_for(hot_sample, timeout=60, what="the busy one's usage")
        assert hot.memory_bytes > 0
        # ... and never above its limit of half a core (some slack for the sampling)
        assert max(u.cpu_percent for u in samples(busy.instance_id)) <= 70
        beat = facts.all(m.NodeHeartbeat, node=node)[-1]
        assert {u.instance_id for u in beat.usage} <= {busy.instance_id, idle.instance_id}
        for start in (busy, idle):
            await stop_and_wait(bus, facts, node, start)


async def test_following_a_log_returns_each_line_once_until_the_container_stops(
    test_env: TestEnv, bus: Bus, facts: Facts, node: str
) -> None:
    start = start_msg(test_env, "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.3; done")
    await bus.publish(start, node=node)
    await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
    decoder = m.decoder(m.LogsReply)
    received: list[str] = []
    cursor, replies = "", 0
    while True:
        request = m.LogsRequest(container_name=start.container_name, follow=True, cursor=cursor)
        reply = decoder.decode(await bus.request(node, request, timeout=5))
        assert reply.found
        received.append(reply.log)
        replies += 1
        if not reply.running:
            break
        cursor = reply.cursor
        await asyncio.sleep(0.1)
    assert "".join(received).splitlines() == [f"line-{i}" for i in range(1, 7)]
    assert sum(1 for chunk in received if chunk) >= 2, "the log came in several pieces"
    await stop_and_wait(bus, facts, node, start)


async def test_api_and_cli_follow_a_log_while_the_container_runs(
    test_env: TestEnv, bus: Bus, facts: Facts, node: str, tmp_path: Path
) -> None:
    """``GET .../logs?follow=1`` and ``zoe logs -f`` stream the log until the end."""
    start = start_msg(test_env, "for i in 1 2 3 4 5; do echo line-$i; sleep 0.4; done")
    port = _free_port()
    api_log = tmp_path / "api.log"
    async with own_database(test_env, "logs") as pool:
        execution_id = await pool.fetchval(
            "INSERT INTO executions (name, description, will_end, state)"
            " VALUES ('logs', $1, true, 'running') RETURNING id",
            {},
        )
        # where the instance runs, as the scheduler would have written it
        await pool.execute(
            "INSERT INTO instances (execution_id, name, service, idx, essential, monitor,"
            " cores, memory, spec, state, node, container_name, removed)"
            " VALUES ($1, 'main0', 'main', 0, true, true, 0.5, 1, $2, 'running', $3, $4, false)",
            execution_id,
            {},
            node,
            start.container_name,
        )
        logs_db = f"{PG_BASE.rstrip('/')}/{test_env.database}_logs"
        token = await new_user(logs_db, "admin", "admin")
        env = test_env.env(
            ZOE_DATABASE_URL=logs_db,
            ZOE_HTTP_PORT=str(port),
            ZOE_ZAPPS_ROOT=str(ROOT / "zapps"),
        )
        api = spawn_service("services.api", env, api_log)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/api/v1/executions/{execution_id}/services/main0/logs?follow=1"
        try:
            auth = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(headers=auth) as session:

                async def healthy() -> bool:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{base}/api/v1/health") as r:
                            return r.status == 200
                    return False

                await wait_for(healthy, timeout=30, what="the api")
                await bus.publish(start, node=node)
                await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
                cli = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "services.cli.main",
                    "logs",
                    "-f",
                    str(execution_id),
                    "main0",
                    env={**env, "ZOE_URL": base, "ZOE_TOKEN": token},
                    stdout=asyncio.subprocess.PIPE,
                )
                async with session.get(url) as response:
                    assert response.status == 200
                    assert response.headers["Transfer-Encoding"] == "chunked"
                    chunks = [c async for c in response.content.iter_any()]
                cli_out, _ = await asyncio.wait_for(cli.communicate(), 30)
        except BaseException:
            print(api_log.read_text()[-5000:])
            raise
        finally:
            api.terminate()
            api.wait(20)
    expected = [f"line-{i}" for i in range(1, 6)]
    assert b"".join(chunks).decode().splitlines() == expected
    assert len(chunks) >= 2, "the lines came as they were printed"
    assert cli.returncode == 0
    assert cli_out.decode().splitlines() == expected
    await stop_and_wait(bus, facts, node, start)


def test_log_cursor_skips_what_was_returned_and_keeps_whole_entries() -> None:
    t1, t2 = "2024-05-01T10:00:00.1Z", "2024-05-01T10:00:00.2Z"
    entries = [f"{t1} a\n", f"{t1} b\n", f"{t2} c\n"]
    assert after_cursor(entries, "", 1 << 20, keep_end=True) == ("a\nb\nc\n", f"{t2} 1")
    # the engine returns entries from the cursor's timestamp on (inclusive)
    assert after_cursor(entries[:2], "", 1 << 20, keep_end=True) == ("a\nb\n", f"{t1} 2")
    assert after_cursor(entries, f"{t1} 2", 1 << 20, keep_end=False) == ("c\n", f"{t2} 1")
    assert after_cursor(entries, f"{t1} 1", 1 << 20, keep_end=False) == ("b\nc\n", f"{t2} 1")
    assert after_cursor(entries[2:], f"{t2} 1", 1 << 20, keep_end=False) == ("", f"{t2} 1")
    # too much at once: the first entries when following, the last for an opening tail
    assert after_cursor(entries, "", 4, keep_end=False) == ("a\nb\n", f"{t1} 2")
    assert after_cursor(entries, "", 4, keep_end=True) == ("b\nc\n", f"{t2} 1")
    assert after_cursor(entries, "", 1, keep_end=False) == ("a\n", f"{t1} 1")
    assert unix_nanos("2024-05-01T10:00:00.1Z") == "1714557600.100000000"
    assert unix_nanos("2024-05-01T10:00:00Z") == "1714557600.000000000"


def test_endpoint_urls_fill_the_template() -> None:
    assert translations.url("http://{ip_port}{proxy_path}/ui", "10.0.0.5", 32768) == (
        "http://10.0.0.5:32768/ui"
    )
    assert translations.url(None, "10.0.0.5", 80) == "10.0.0.5:80"
    assert translations.url("spark://{ip_port}", "fe80::1", 7077) == "spark://[fe80::1]:7077"


def test_the_workspace_is_mounted_unless_turned_off_or_taken() -> None:
    settings = ExecutorSettings(deployment="zoe", node_name="n1")
    start = m.StartInstance(
        execution_id=1,
        instance_id=2,
        instance="main0",
        container_name="zoe-1-main0",
        network="zoe-1",
        image=BUSYBOX,
        cores_limit=1.0,
        memory_limit=MIB,
        environment={"ZOE_USER": "bob"},
    )
    assert translations.mounts(start, settings, str) == (
        ("zoe-workspace-bob:/mnt/workspace",),
        ("zoe-workspace-bob",),
    )
    off = msgspec.structs.replace(settings, workspace_volume=False)
    assert translations.mounts(start, off, str) == ((), ())
    own = msgspec.structs.replace(
        start, volumes=[m.VolumeRequest(source="zoe-data", path="/mnt/workspace/")]
    )
    assert translations.mounts(own, settings, str) == (
        ("zoe-data:/mnt/workspace/",),
        ("zoe-data",),
    )
    anonymous = msgspec.structs.replace(start, environment={})
    assert translations.mounts(anonymous, settings, str) == ((), ())


def test_workspace_volume_names_are_valid_and_distinct() -> None:
    assert translations.workspace_volume("zoe", "alice") == "zoe-workspace-alice"
    odd = translations.workspace_volume("zoe", "al ice/é")
    assert odd.startswith("zoe-workspace-al_ice__") and odd != translations.workspace_volume(
        "zoe", "al_ice/é"
    )


# ---- the executor as a process ----------------------------------------------------------


def spawn_executor(env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )


def spawn_service(module: str, env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(log_file: Path) -> str:
    return log_file.read_text()[-20_000:] if log_file.exists() else "no log"


@contextlib.asynccontextmanager
async def executor_processes(
    docker: aiodocker.Docker, test_env: TestEnv, node: str, env: dict[str, str], log_file: Path
) -> AsyncIterator[Callable[[], subprocess.Popen[bytes]]]:
    """Executors of ``node`` as processes: ``spawn()`` starts one more. Their log is
    printed when the test fails; they and their containers are gone afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        procs.append(spawn_executor(env, log_file))
        return procs[-1]

    try:
        yield spawn
    except BaseException:
        print(_log_tail(log_file))
        raise
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await remove_node_containers(docker, test_env, node)


async def stopped(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    await wait_for(lambda: proc.poll() is not None, timeout=timeout, what="process exit")
    return proc.returncode


async def test_killed_executor_adopts_its_running_container_on_restart(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
) -> None:
    name = node_name(test_env)
    env = executor_env(test_env, name)
    log_file = tmp_path / "executor.log"

    async def registered(count: int) -> m.NodeHeartbeat:
        return await facts.wait(m.NodeHeartbeat, count, node=name, registered=True, timeout=30)

    async with executor_processes(docker, test_env, name, env, log_file) as spawn:
        first_process = spawn()
        await registered(1)
        start = start_msg(test_env, LONG_RUNNING)
        await bus.publish(start, node=name)
        first = await facts.wait(m.InstanceStarted, execution_id=start.execution_id)

        os.kill(first_process.pid, signal.SIGKILL)
        assert await stopped(first_process) == -signal.SIGKILL
        assert (await docker.containers.container(start.container_name).show())["State"]["Running"]

        second_process = spawn()
        adopted = await facts.wait(m.InstanceStarted, 2, execution_id=start.execution_id)
        assert adopted.container_id == first.container_id
        assert adopted.container_name == start.container_name
        beat = await registered(2)
        assert facts.items.index(adopted) < facts.items.index(beat), "reconcile, then register"
        assert start.instance_id in beat.instances
        assert len(await containers_named(docker, start.container_name)) == 1

        removed = await stop_and_wait(bus, facts, name, start)
        assert removed.exit_code == 7
        second_process.send_signal(signal.SIGTERM)
        assert await stopped(second_process) == 0


# ---- outages ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_proxy(test_env: TestEnv) -> AsyncIterator[tuple[Proxy, str]]:
    """A cuttable relay to RabbitMQ; yields it with an AMQP URL through it."""
    proxy = Proxy(lambda: asyncio.open_connection("127.0.0.1", 5672))
    server = await asyncio.start_server(proxy.relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = test_env.amqp_url.replace(":5672/", f":{port}/") + "?reconnect_interval=0.2"
    try:
        yield proxy, url
    finally:
        proxy.cut()
        server.close()


async def consuming(logs: list[dict[str, Any]]) -> None:
    """Wait until the executor consumes its queue: its first heartbeat (the node
    registered) may come before, and an outage then would fail its start instead."""
    await wait_for(
        lambda: any(e["event"] == "executor.ready" for e in logs), what="the executor consuming"
    )


async def test_heartbeats_survive_a_broker_outage(
    test_env: TestEnv, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    name = node_name(test_env)
    async with broker_proxy(test_env) as (proxy, url):
        settings = ExecutorSettings.from_env(executor_env(test_env, name), amqp_url=url)
        with capture_logs() as logs:
            async with in_process_executor(settings) as task:
                await facts.wait(m.NodeHeartbeat, node=name, registered=True)
                await consuming(logs)
                proxy.cut()
                await wait_for(
                    lambda: any(e["event"] == "heartbeat.failed" for e in logs),
                    what="a failed heartbeat",
                )
                beats = len(facts.all(m.NodeHeartbeat, node=name))
                proxy.restore()
                await facts.wait(m.NodeHeartbeat, beats + 1, node=name)
                assert not task.done()


async def test_commands_flow_again_after_a_broker_outage(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    name = node_name(test_env)
    try:
        async with broker_proxy(test_env) as (proxy, url):
            settings = ExecutorSettings.from_env(executor_env(test_env, name), amqp_url=url)
            with capture_logs() as logs:
                async with in_process_executor(settings):
                    await facts.wait(m.NodeHeartbeat, node=name, registered=True)
                    await consuming(logs)
                    proxy.cut()
                    start = start_msg(test_env, LONG_RUNNING)
                    await bus.publish(start, node=name)  # waits in the queue meanwhile
                    beats = len(facts.all(m.NodeHeartbeat, node=name))
                    proxy.restore()
                    await facts.wait(m.NodeHeartbeat, beats + 1, node=name)
                    await facts.wait(m.InstanceStarted, execution_id=start.execution_id, timeout=5)
                    await stop_and_wait(bus, facts, name, start)
    finally:
        await remove_node_containers(docker, test_env, name)


async def test_death_during_an_engine_outage_is_reported_after_it(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
) -> None:
    proxy = Proxy(lambda: asyncio.open_unix_connection("/var/run/docker.sock"))
    socket_path = tmp_path / "docker.sock"
    server = await asyncio.start_unix_server(proxy.relay, str(socket_path))
    name = node_name(test_env)
    settings = ExecutorSettings.from_env(
        executor_env(test_env, name), docker_url=f"unix://{socket_path}"
    )
    try:
        with capture_logs() as logs:
            async with in_process_executor(settings):
                await facts.wait(m.NodeHeartbeat, node=name, registered=True)
                start = start_msg(test_env, LONG_RUNNING)
                await bus.publish(start, node=name)
                started = await facts.wait(m.InstanceStarted, execution_id=start.execution_id)

                proxy.cut()  # the executor loses its engine: the event stream breaks
                await wait_for(
                    lambda: (
                        any(e["event"] == "events.broken" for e in logs)
                        and any(e["event"] == "heartbeat.failed" for e in logs)
                    ),
                    what="the event stream and a heartbeat failing",
                )
                await docker.containers.container(started.container_id).kill(signal="SIGKILL")
                await wait_for(
                    lambda: (
                        facts.all(m.InstanceExited, execution_id=start.execution_id) == []
                        and _exited(docker, started.container_id)
                    ),
                    what="the container dead, unreported",
                )
                proxy.restore()
                exited = await facts.wait(m.InstanceExited, execution_id=start.execution_id)
                assert (exited.container_id, exited.exit_code) == (started.container_id, 137)
                await stop_and_wait(bus, facts, name, start)
    finally:
        proxy.cut()
        server.close()
        await remove_node_containers(docker, test_env, name)


@contextlib.contextmanager
def _closing(writer: asyncio.StreamWriter) -> Iterator[None]:
    """Close `writer` when the block ends: one side's end ends the other's."""
    try:
        yield
    finally:
        writer.close()


class LostStartAnswer:
    """A relay to the engine that carries the first container start it sees and then
    loses the engine's answer: once the container runs, it breaks that connection. The
    start happened; the executor cannot know."""

    def __init__(self, docker: aiodocker.Docker, name: str) -> None:
        self._docker = docker
        self._name = name
        self._caught = False  # the start is caught (on one connection)
        self.started: dict[str, Any] | None = None  # the container as it ran then

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection("/var/run/docker.sock")
        holding = False  # this connection carries the start: its answer is lost

        async def up() -> None:
            nonlocal holding
            with contextlib.suppress(ConnectionError, OSError), _closing(up_writer):
                while data := await reader.read(65536):
                    line = data.split(b"\r\n", 1)[0]
                    if not self._caught and line.startswith(b"POST ") and b"/start " in line:
                        self._caught = holding = True
                    up_writer.write(data)
                    await up_writer.drain()
                    if holding:
                        await wait_for(self._running, what="the container started")
                        for w in (writer, up_writer):
                            w.transport.abort()
                        return

        async def down() -> None:
            with contextlib.suppress(ConnectionError, OSError), _closing(writer):
                while data := await up_reader.read(65536):
                    if not holding:
                        writer.write(data)
                        await writer.drain()

        await asyncio.gather(up(), down())

    async def _running(self) -> bool:
        info = await self._docker.containers.container(self._name).show()
        if info["State"]["Running"]:
            self.started = info
        return self.started is not None


async def test_a_start_whose_answer_is_lost_is_resumed_not_made_again(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
) -> None:
    """The engine started the container but its answer never came (the connection
    broke): the executor must not remove it and make another (that would run it twice),
    but find it again and report it started."""
    name = node_name(test_env)
    start = start_msg(test_env, LONG_RUNNING)
    proxy = LostStartAnswer(docker, start.container_name)
    socket_path = tmp_path / "docker.sock"
    server = await asyncio.start_unix_server(proxy.relay, str(socket_path))
    settings = ExecutorSettings.from_env(
        executor_env(test_env, name), docker_url=f"unix://{socket_path}"
    )
    try:
        with capture_logs() as logs:
            async with in_process_executor(settings):
                await facts.wait(m.NodeHeartbeat, node=name, registered=True)
                await bus.publish(start, node=name)
                started = await facts.wait(m.InstanceStarted, execution_id=start.execution_id)
                assert proxy.started is not None  # the answer to its start was lost
                # the very container that started then, never stopped or made again
                assert started.container_id == proxy.started["Id"]
                [only] = await containers_named(docker, start.container_name)
                info = await docker.containers.container(only["Id"]).show()
                assert info["State"]["Running"]
                assert info["State"]["StartedAt"] == proxy.started["State"]["StartedAt"]
                assert facts.all(m.InstanceStartFailed, execution_id=start.execution_id) == []
                assert any(e["event"] == "instance.start_retrying" for e in logs)
                await stop_and_wait(bus, facts, name, start)
    finally:
        server.close()
        await remove_node_containers(docker, test_env, name)


async def _exited(docker: aiodocker.Docker, container_id: str) -> bool:
    info = await docker.containers.container(container_id).show()
    return info["State"]["Status"] == "exited"


# ---- executions' networks --------------------------------------------------------------
#
# An executor keeps spare networks made ahead; an execution's first start on an engine
# claims one (services/executor/engine/networks.py says how), and the network goes with the
# execution's last container on the engine.


def instance_of(
    start: m.StartInstance, instance: str, number: int, command: str | None = None
) -> m.StartInstance:
    """Another instance of the execution of ``start`` (its own command if given)."""
    return msgspec.structs.replace(
        start,
        instance_id=start.instance_id + number,
        instance=instance,
        container_name=start.container_name.removesuffix(start.instance) + instance,
        command=command or start.command,
    )


async def spares(docker: aiodocker.Docker, test_env: TestEnv, node: str) -> set[str]:
    """The networks made ahead by ``node``'s executor (claimed ones included)."""
    labels = [f"zoe.deployment={test_env.deployment}", f"{LABEL_POOL}={node}"]
    return {n["Name"] for n in await docker.networks.list(filters={"label": labels})}


async def claimed_network(docker: aiodocker.Docker, start: m.StartInstance) -> str | None:
    """The network the claim of ``start``'s execution names; None without a claim."""
    try:
        claim = await docker._query_json(f"volumes/{start.network}{CLAIM_SUFFIX}")
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
    return str(claim["Labels"][LABEL_NETWORK])


async def networks_of(docker: aiodocker.Docker, container: str) -> dict[str, Any]:
    info = await docker.containers.container(container).show()
    return dict(info["NetworkSettings"]["Networks"])


@contextlib.asynccontextmanager
async def executor(
    test_env: TestEnv, facts: Facts, docker: aiodocker.Docker, **extra: str
) -> AsyncIterator[str]:
    """An in-process executor of a fresh node, registered; yields its name."""
    name = node_name(test_env)
    settings = ExecutorSettings.from_env(executor_env(test_env, name, **extra))
    try:
        async with in_process_executor(settings):
            await facts.wait(m.NodeHeartbeat, node=name, registered=True)
            yield name
    finally:
        await remove_node_containers(docker, test_env, name)


async def test_instances_share_a_spare_network_that_goes_with_the_last_of_them(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    async with executor(test_env, facts, docker, ZOE_NETWORK_POOL="2") as node:
        ready = await wait_for(
            lambda: _two(spares(docker, test_env, node)), what="two spare networks"
        )
        # the worker reaches the main instance by its name in the execution's network
        # (over TCP: ping needs a raw socket, which the unprivileged user has not)
        main = start_msg(test_env, "while :; do nc -l -p 7000 -e echo pong; done")
        reach = "until nc main 7000 </dev/null | grep -q pong; do sleep 0.1; done; "
        reach += "echo bytes from main; "
        worker = instance_of(main, "worker", 1, reach + LONG_RUNNING)
        await asyncio.gather(bus.publish(main, node=node), bus.publish(worker, node=node))
        for start in (main, worker):
            await facts.wait(m.InstanceStarted, instance_id=start.instance_id)

        network = await claimed_network(docker, main)
        assert network in ready, "the execution took a spare"
        for start in (main, worker):
            attached = await networks_of(docker, start.container_name)
            assert list(attached) == [network]
            assert start.instance in attached[network]["Aliases"]

        async def pinged() -> bool:
            logs = await docker.containers.container(worker.container_name).log(stdout=True)
            return any("bytes from" in line for line in logs)

        assert await wait_for(pinged, what="the worker's ping of main in its log")

        # the spare taken is made again, once the starts are done
        now = await wait_for(lambda: _count(spares(docker, test_env, node), 3), what="a new spare")
        assert ready < now

        await stop_and_wait(bus, facts, node, worker)
        assert await network_exists(docker, network), "the main instance still uses it"
        await bus.publish(stop_msg(main), node=node)
        await facts.wait(m.InstanceRemoved, instance_id=main.instance_id)
        await wait_for(
            lambda: _gone(docker, network, main), what="the network and its claim removed"
        )
    # a stopped executor removes its spares
    assert await spares(docker, test_env, node) == set()


async def test_executors_sharing_an_engine_give_an_execution_one_network(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    # one of them keeps no spares: its on-demand networks obey the claims all the same
    async with (
        executor(test_env, facts, docker, ZOE_NETWORK_POOL="2") as one,
        executor(test_env, facts, docker, ZOE_NETWORK_POOL="0") as other,
    ):
        await wait_for(lambda: _two(spares(docker, test_env, one)), what="two spares")
        for _ in range(3):
            first = start_msg(test_env, LONG_RUNNING)
            second = instance_of(first, "second", 1)
            # both nodes start an instance of the execution at the same moment
            await asyncio.gather(bus.publish(first, node=one), bus.publish(second, node=other))
            for start in (first, second):
                await facts.wait(m.InstanceStarted, instance_id=start.instance_id)
            network = await claimed_network(docker, first)
            assert network is not None
            for start in (first, second):
                assert list(await networks_of(docker, start.container_name)) == [network]
            await stop_and_wait(bus, facts, one, first)
            assert await network_exists(docker, network), "the other node still uses it"
            await bus.publish(stop_msg(second), node=other)
            await facts.wait(m.InstanceRemoved, instance_id=second.instance_id)
            await wait_for(
                lambda n=network, s=first: _gone(docker, n, s), what="the network removed"
            )
        assert await spares(docker, test_env, other) == set()


async def test_a_restarted_executor_finds_the_network_and_takes_back_its_spares(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    tmp_path: Path,
) -> None:
    name = node_name(test_env)
    env = executor_env(test_env, name, ZOE_NETWORK_POOL="2")
    log_file = tmp_path / "executor.log"
    async with executor_processes(docker, test_env, name, env, log_file) as spawn:
        first_process = spawn()
        await facts.wait(m.NodeHeartbeat, node=name, registered=True, timeout=30)
        await wait_for(lambda: _two(spares(docker, test_env, name)), what="two spares")
        main = start_msg(test_env, LONG_RUNNING)
        await bus.publish(main, node=name)
        await facts.wait(m.InstanceStarted, instance_id=main.instance_id)
        network = await claimed_network(docker, main)
        made = await wait_for(lambda: _count(spares(docker, test_env, name), 3), what="refill")

        os.kill(first_process.pid, signal.SIGKILL)
        await stopped(first_process)
        second_process = spawn()
        await facts.wait(m.NodeHeartbeat, 2, node=name, registered=True, timeout=30)

        # a later instance of the execution joins the network of the first
        worker = instance_of(main, "worker", 1)
        await bus.publish(worker, node=name)
        await facts.wait(m.InstanceStarted, instance_id=worker.instance_id)
        assert list(await networks_of(docker, worker.container_name)) == [network]
        # the spares the killed executor left are used again, none made meanwhile
        assert await spares(docker, test_env, name) == made

        await stop_and_wait(bus, facts, name, main)
        await bus.publish(stop_msg(worker), node=name)
        await facts.wait(m.InstanceRemoved, instance_id=worker.instance_id)
        await wait_for(lambda: _gone(docker, network, main), what="the network removed")
        second_process.send_signal(signal.SIGTERM)
        assert await stopped(second_process) == 0
        assert await spares(docker, test_env, name) == set()


async def test_a_network_made_before_claims_existed_is_joined(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    main = start_msg(test_env, LONG_RUNNING)
    # as an executor without claims made it: named after the execution's network
    labels = {"zoe.deployment": test_env.deployment, "zoe.execution": str(main.execution_id)}
    await docker.networks.create({"Name": main.network, "Driver": "bridge", "Labels": labels})
    async with executor(test_env, facts, docker, ZOE_NETWORK_POOL="2") as node:
        await bus.publish(main, node=node)
        await facts.wait(m.InstanceStarted, instance_id=main.instance_id)
        assert list(await networks_of(docker, main.container_name)) == [main.network]
        await stop_and_wait(bus, facts, node, main)
        await wait_for(lambda: _gone(docker, main.network, main), what="the network removed")


@pytest.mark.parametrize("pool", ["0", "2"])
async def test_a_start_redelivered_during_its_first_delivery_makes_one_container(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str, pool: str
) -> None:
    async with executor(test_env, facts, docker, ZOE_NETWORK_POOL=pool) as node:
        start = start_msg(test_env, LONG_RUNNING)
        await asyncio.gather(*(bus.publish(start, node=node) for _ in range(3)))
        started = await facts.wait(m.InstanceStarted, 3, execution_id=start.execution_id)
        assert {
            f.container_id for f in facts.all(m.InstanceStarted, execution_id=start.execution_id)
        } == {started.container_id}
        await stop_and_wait(bus, facts, node, start)


async def _two(found: Any) -> set[str] | None:
    return await _count(found, 2)


async def _count(found: Any, count: int) -> set[str] | None:
    names: set[str] = await found
    return names if len(names) == count else None


async def _gone(docker: aiodocker.Docker, network: str, start: m.StartInstance) -> bool:
    return (
        not await network_exists(docker, network) and await claimed_network(docker, start) is None
    )


# ---- least privilege: only the node's own containers, only what fits -------------------


@pytest.mark.parametrize("kind", ["plain", "another node's"])
async def test_commands_naming_a_container_that_is_not_the_nodes_leave_it_alone(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str, kind: str
) -> None:
    name = f"{test_env.deployment}-foreign-{next(_ids)}"
    labels = {"zoe.test": "foreign"}
    if kind == "another node's":
        labels |= {"zoe.deployment": test_env.deployment, "zoe.node": "another-node"}
    # made with the engine's API, as anyone sharing the engine could
    foreign = await docker.containers.create(
        {"Image": busybox, "Cmd": ["sh", "-c", LONG_RUNNING], "Labels": labels}, name=name
    )
    try:
        await foreign.start()
        forged_stop = m.StopInstance(
            execution_id=next(_ids), instance_id=1, container_name=name, network="none"
        )
        forged_start = msgspec.structs.replace(start_msg(test_env, "true"), container_name=name)
        decoder = m.decoder(m.LogsReply)
        with capture_logs() as logs:
            async with executor_with(test_env, facts, docker) as node:
                await bus.publish(forged_stop, node=node)
                await bus.publish(forged_start, node=node)  # adopting it by its name
                reply = decoder.decode(
                    await bus.request(node, m.LogsRequest(container_name=name), timeout=10)
                )
                failed = await facts.wait(
                    m.InstanceStartFailed, execution_id=forged_start.execution_id
                )
                refused = await wait_for(
                    lambda: (
                        {e["command"] for e in logs if e["event"] == "command.refused"}
                        >= {"stop", "start", "logs"}
                    ),
                    what="the three commands refused and logged",
                )
        assert refused
        assert "is not managed by this node" in failed.reason
        assert not reply.found and "is not managed by this node" in reply.log
        assert "hello-from-zoe" not in reply.log  # nothing of its log came out
        info = await foreign.show()
        assert info["State"]["Running"], "the foreign container was stopped"
        assert labels.items() <= info["Config"]["Labels"].items()
        assert "zoe.reserved.nano_cpus" not in info["Config"]["Labels"]
        assert facts.all(m.InstanceRemoved, execution_id=forged_stop.execution_id) == []
    finally:
        await foreign.delete(force=True)


async def test_a_start_over_the_nodes_capacity_is_refused_or_held_to_it(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    async def outcome(start: m.StartInstance) -> Any:
        await bus.publish(start, node=node)
        return await wait_for(
            lambda: (
                facts.all(m.InstanceStarted, execution_id=start.execution_id)
                or facts.all(m.InstanceStartFailed, execution_id=start.execution_id)
            ),
            what=f"the outcome of the start of {start.container_name}",
        )

    over_cores = start_msg(test_env, LONG_RUNNING, cores=2, cores_reserved=2)
    over_memory = start_msg(test_env, LONG_RUNNING, memory=512 * MIB, memory_reserved=512 * MIB)
    big_limits = start_msg(test_env, LONG_RUNNING, cores=4, memory=512 * MIB)
    first = start_msg(test_env, LONG_RUNNING, cores=1, cores_reserved=0.75, memory_reserved=MIB)
    second = start_msg(test_env, LONG_RUNNING, cores=0.5, cores_reserved=0.5)
    third = start_msg(test_env, LONG_RUNNING, cores=0.5, cores_reserved=0.5)
    async with executor_with(test_env, facts, docker, cores=1.0, memory=256 * MIB) as node:
        [failed] = await outcome(over_cores)
        assert failed.reason == "over this node's cores: 2 asked, 0 of 1 reserved by 0 containers"
        [failed] = await outcome(over_memory)
        assert failed.reason.startswith(f"over this node's memory: {512 * MIB} bytes asked")
        # limits above the node (a ZApp's maximum) are lowered to what the node has
        [started] = await outcome(big_limits)
        assert isinstance(started, m.InstanceStarted)
        host = (await docker.containers.container(big_limits.container_name).show())["HostConfig"]
        assert (host["NanoCpus"], host["Memory"]) == (1_000_000_000, 256 * MIB)
        await stop_and_wait(bus, facts, node, big_limits)
        [started] = await outcome(first)
        assert isinstance(started, m.InstanceStarted)
        info = await docker.containers.container(first.container_name).show()
        assert info["Config"]["Labels"]["zoe.reserved.nano_cpus"] == "750000000"
        [failed] = await outcome(second)
        assert failed.reason == (
            "over this node's cores: 0.5 asked, 0.75 of 1 reserved by 1 containers"
        )
        await stop_and_wait(bus, facts, node, first)  # its reservation is free again
        [started] = await outcome(third)
        assert isinstance(started, m.InstanceStarted)
        await stop_and_wait(bus, facts, node, third)
    for refused in (over_cores, over_memory, second):
        assert await containers_named(docker, refused.container_name) == []

"""The manager's path of the overlay networks on a real swarm: a Docker engine of the
test's own in a network namespace (prefix ``zo-``, 198.18.1.0/24), made a one-node swarm
(its manager), everything removed in a ``finally``. The machine's own engine is shared
and stays out of any swarm.

An executor on that engine creates the execution's overlay network, its instances join
it under their names and find each other there, the network goes with the last one;
a worker's requests (`NetworkEnsure`, `NetworkRelease` on ``executor.networks``) are
answered by it; the sweep removes a forgotten network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import aiodocker
import msgspec
import pytest

from common import messages as m
from common import routes
from common.bus import Bus
from common.settings import ExecutorSettings
from deploy.provision import rabbitmqctl, with_credentials
from services.executor.engine.overlay import NetworkUnavailable, OverlayNetworks, overlay_name
from services.executor.networks import BusNetworkAsker
from tests.conftest import Facts, TestEnv, dead_letters, replies_to, wait_for
from tests.service import test_executor as tx
from tests.service.test_executor import executor_env, node_name, start_msg

facts = tx.facts  # the executor tests' fixture
DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nsenter") is None or not Path(DOCKERD).exists(),
    reason="needs root, nsenter and dockerd to run an engine in a network namespace",
)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture(scope="module")
def swarm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A dockerd in netns zo-<run>, a one-node swarm; yields its socket's URL."""
    run = uuid.uuid4().hex[:6]
    ns, veth = f"zo-{run}", f"zo-{run}a"
    d = Path(f"/tmp/zo-{run}")
    d.mkdir()
    sock = d / "docker.sock"
    proc: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "addr", "add", "198.18.1.1/24", "dev", veth)
        sh("ip", "link", "set", veth, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", "198.18.1.2/24", "dev", "eth0")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        log = (d / "dockerd.log").open("wb")
        # nsenter --net, not `ip netns exec` (that remounts /sys: dockerd loses its cgroups)
        proc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/var/run/netns/{ns}",
                DOCKERD,
                "--data-root",
                str(d / "data"),
                "--exec-root",
                str(d / "exec"),
                "-H",
                f"unix://{sock}",
                "--pidfile",
                str(d / "docker.pid"),
                "--cgroup-parent",
                ns,
                "--bip",
                "172.31.201.1/24",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while sh(DOCKER, "-H", f"unix://{sock}", "info", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "dockerd.log").read_text()[-2000:])
            time.sleep(0.3)
        engine = [DOCKER, "-H", f"unix://{sock}"]
        sh(*engine, "swarm", "init", "--advertise-addr", "198.18.1.2")
        # the busybox base, from the machine's engine (each engine has its own store)
        saved = subprocess.run([DOCKER, "save", tx.BUSYBOX], capture_output=True, check=True)
        subprocess.run([*engine, "load"], input=saved.stdout, capture_output=True, check=True)
        yield f"unix://{sock}"
    finally:
        if sock.exists():
            engine = [DOCKER, "-H", f"unix://{sock}"]
            ids = sh(*engine, "ps", "-aq", check=False).stdout.split()
            if ids:
                sh(*engine, "rm", "-f", *ids, check=False)
            sh(*engine, "swarm", "leave", "--force", check=False)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", veth, check=False)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(d) + "/"):
                sh("umount", "-l", target, check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def swarm_docker(swarm_engine: str) -> AsyncIterator[aiodocker.Docker]:
    async with aiodocker.Docker(url=swarm_engine) as d:
        yield d


@contextlib.asynccontextmanager
async def manager_executor(
    test_env: TestEnv, facts: Facts, docker: aiodocker.Docker, url: str, **env: str
) -> AsyncIterator[str]:
    name = node_name(test_env)
    base = ExecutorSettings.from_env(executor_env(test_env, name, **env))
    settings = msgspec.structs.replace(base, swarm=True, docker_url=url, network_pool=0)
    async with tx.in_process_executor(settings):
        await facts.wait(m.NodeHeartbeat, node=name, registered=True, timeout=120)
        yield name


async def overlay_exists(docker: aiodocker.Docker, name: str) -> bool:
    return any(n["Name"] == name for n in await docker.networks.list())


async def test_a_managers_executor_makes_the_overlay_its_instances_join_and_removes_it(
    test_env: TestEnv, bus: Bus, facts: Facts, swarm_engine: str, swarm_docker: aiodocker.Docker
) -> None:
    async with manager_executor(test_env, facts, swarm_docker, swarm_engine) as node:
        alpha = start_msg(test_env, "sleep 300", instance="alpha")
        network = overlay_name(test_env.deployment, alpha.execution_id)
        beta = msgspec.structs.replace(
            alpha,
            instance="beta",
            instance_id=alpha.instance_id + 1,
            container_name=alpha.container_name.replace("alpha", "beta"),
            # both names resolve in the overlay (Docker's DNS): exit 0
            command="nslookup alpha && nslookup beta",
        )
        await bus.publish(alpha, node=node)
        await facts.wait(m.InstanceStarted, instance_id=alpha.instance_id, timeout=120)
        await bus.publish(beta, node=node)
        exited = await facts.wait(m.InstanceExited, instance_id=beta.instance_id, timeout=120)
        shown = await (await swarm_docker.networks.get(network)).show()
        assert (shown["Driver"], shown["Attachable"], shown["Scope"]) == ("overlay", True, "swarm")
        assert shown["Labels"] == {
            "zoe.deployment": test_env.deployment,
            "zoe.execution": str(alpha.execution_id),
        }
        c = await swarm_docker.containers.container(alpha.container_name).show()
        assert "alpha" in c["NetworkSettings"]["Networks"][network]["Aliases"]
        assert exited.exit_code == 0, await swarm_docker.containers.container(
            beta.container_name
        ).log(stdout=True, stderr=True)

        await tx.stop_and_wait(bus, facts, node, alpha)
        assert await overlay_exists(swarm_docker, network)  # beta still uses it
        await bus.publish(tx.stop_msg(beta), node=node)
        await facts.wait(m.InstanceRemoved, instance_id=beta.instance_id, timeout=60)
        await wait_for(
            lambda: _gone(swarm_docker, network), timeout=60, what="the overlay network removed"
        )


async def _gone(docker: aiodocker.Docker, name: str) -> bool:
    return not await overlay_exists(docker, name)


async def test_a_workers_requests_are_answered_by_the_managers_executor_and_the_sweep(
    test_env: TestEnv, facts: Facts, swarm_engine: str, swarm_docker: aiodocker.Docker
) -> None:
    execution_id = 900_000 + int(uuid.uuid4().int % 1000)
    network = overlay_name(test_env.deployment, execution_id)
    async with (
        manager_executor(test_env, facts, swarm_docker, swarm_engine),
        Bus(test_env.amqp_url, name="t-worker") as worker_bus,
    ):
        asker = BusNetworkAsker(worker_bus, node="a-worker", timeout=30)
        await asker.ensure(network, execution_id)
        assert await overlay_exists(swarm_docker, network)
        await asker.ensure(network, execution_id)  # idempotent
        await asker.release(network, execution_id)
        await wait_for(lambda: _gone(swarm_docker, network), timeout=60, what="released")
        # a release lost: the sweep removes what nothing uses (here without the age limit)
        await asker.ensure(network, execution_id)
    overlay = OverlayNetworks(swarm_docker, deployment=test_env.deployment, manager=True)
    assert await overlay.sweep(min_age=3600) == []  # too young to be swept
    assert await overlay.sweep(min_age=0) == [network]
    assert not await overlay_exists(swarm_docker, network)


@contextlib.contextmanager
def broker_users(test_env: TestEnv, *names: str) -> Iterator[dict[str, str]]:
    """Broker users with every right on the test's vhost (so that only the consumer's own
    check can refuse them); their URLs by name; deleted afterwards."""
    urls = {}
    try:
        for name in names:
            password = uuid.uuid4().hex
            rabbitmqctl("add_user", name, password)
            rabbitmqctl("set_permissions", "-p", test_env.vhost, name, ".*", ".*", ".*")
            urls[name] = with_credentials(test_env.amqp_url, name, password)
        yield urls
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                rabbitmqctl("delete_user", name, attempts=2)


async def _raw_requests(url: str, bodies: dict[str, bytes]) -> dict[str, m.NetworkReply]:
    """Each body sent to ``executor.networks`` as a request with no ``user_id``; the
    replies, by name."""
    connection = await aio_pika.connect(url)
    try:
        return await replies_to(
            await connection.channel(), routes.EXECUTOR_NETWORKS, bodies, m.NetworkReply
        )
    finally:
        await connection.close()


async def test_a_network_request_is_answered_only_from_the_executor_of_the_node_it_names(
    test_env: TestEnv, facts: Facts, swarm_engine: str, swarm_docker: aiodocker.Docker
) -> None:
    """Another node's executor, a broker user that is no executor, or a publisher naming
    no user, asking in the name of node a-worker, and a request that does not decode, get
    a refusal saying why, are dead-lettered, and make no network; a-worker's own executor
    user is answered."""
    execution_id = 930_000 + int(uuid.uuid4().int % 1000)
    network = overlay_name(test_env.deployment, execution_id)
    own, other, stranger = (
        f"{test_env.deployment}-executor-a-worker",
        f"{test_env.deployment}-executor-b-worker",
        f"{test_env.deployment}-t-stranger",
    )
    with broker_users(test_env, own, other, stranger) as urls:
        async with manager_executor(test_env, facts, swarm_docker, swarm_engine):
            await dead_letters(test_env.amqp_url)  # earlier tests' out of the way
            for user in (other, stranger):
                async with Bus(urls[user], name="t-asker") as bus:
                    assert bus.user == user
                    asker = BusNetworkAsker(bus, node="a-worker", timeout=30)
                    with pytest.raises(NetworkUnavailable) as refused:
                        await asker.ensure(network, execution_id)
                    reason = str(refused.value)
                    assert f"broker user {user!r} may not ask for networks as node" in reason
                    assert f"only {own!r} may" in reason
            # a publisher that names no user, and a request that does not decode
            replies = await _raw_requests(
                urls[stranger],
                {
                    "no-user": m.encode(
                        m.NetworkEnsure(node="a-worker", execution_id=execution_id)
                    ),
                    "bad": b'{"type":"network.ensure","node":"a-worker","execution_id":"x"}',
                },
            )
            assert not replies["no-user"].ok and not replies["bad"].ok
            assert "a publisher that named no broker user may not ask" in replies["no-user"].reason
            assert "invalid message" in replies["bad"].reason
            assert "execution_id" in replies["bad"].reason
            assert not await overlay_exists(swarm_docker, network)
            ensure, asked = m.decoder(m.NetworkEnsure), []
            letters = await dead_letters(test_env.amqp_url)
            for body in letters:
                with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
                    asked.append(ensure.decode(body))
            assert [x.execution_id for x in asked] == [execution_id] * 3
            assert any(b'"execution_id":"x"' in body for body in letters)

            async with Bus(urls[own], name="t-asker") as bus:
                asker = BusNetworkAsker(bus, node="a-worker", timeout=30)
                try:
                    await asker.ensure(network, execution_id)
                    assert await overlay_exists(swarm_docker, network)
                finally:
                    await asker.release(network, execution_id)
            await wait_for(lambda: _gone(swarm_docker, network), timeout=60, what="released")


async def test_executors_racing_to_make_one_network_all_have_it(
    swarm_docker: aiodocker.Docker, test_env: TestEnv
) -> None:
    """The manager's own start and a worker's request make the same network at once:
    the swarm refuses all but one ("name conflicts with an existing object", not the
    409 of a network found there first); every one of them has the network."""
    overlay = OverlayNetworks(swarm_docker, deployment=test_env.deployment, manager=True)
    for k in range(5):
        network = overlay_name(test_env.deployment, 920_000 + k)
        try:
            await asyncio.gather(*(overlay.create(network, 920_000 + k) for _ in range(4)))
            assert await overlay_exists(swarm_docker, network)
        finally:
            await overlay.remove(network)

"""The executor's cluster parts against the real Docker engine and RabbitMQ: the swarm
check at start, a start whose overlay network no manager provides, and images from the
deployment's registry (Debian's docker-registry, run here on 127.0.0.1).

The machine's own engine is in no swarm (and must stay so: it is shared), so the swarm
check is tested as a refusal, and the worker's path as a network nobody answers for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiodocker
import msgspec
import pytest

from common import messages as m
from common.bus import Bus
from common.settings import ExecutorSettings
from services.executor import images
from services.executor.engine import DockerEngine
from services.executor.engine.overlay import OverlayNetworks
from services.executor.networks import BusNetworkAsker
from services.executor.service import run_executor
from tests.conftest import Facts, TestEnv
from tests.service import test_executor as tx
from tests.service.test_executor import (
    containers_named,
    executor_env,
    node_name,
    remove_node_containers,
    start_msg,
)

# the executor tests' fixtures, used here too
busybox = tx.busybox
facts = tx.facts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (
            {"ZOE_SWARM": "true"},
            ["not in a swarm", "'inactive'", "/var/run/docker.sock"],  # names the engine
        ),
        ({"ZOE_WORKSPACE_NFS": "nfs-host-without-path"}, ["ZOE_WORKSPACE_NFS must be"]),
    ],
)
async def test_an_executor_that_cannot_serve_exits_at_start_saying_why(
    test_env: TestEnv, facts: Facts, setting: dict[str, str], says: list[str]
) -> None:
    name = node_name(test_env)
    env = executor_env(test_env, name, ZOE_METRICS_PORT="0", ZOE_LOG_JSON="0", **setting)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.executor",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 2, text
    assert "service.refused" in text and "Traceback" not in text, text
    for part in says:
        assert part in text, text
    assert facts.all(m.NodeHeartbeat, node=name) == []  # it never registered


@contextlib.asynccontextmanager
async def worker_executor(
    test_env: TestEnv, docker: aiodocker.Docker, settings: ExecutorSettings
) -> AsyncIterator[str]:
    """An executor whose engine acts as a swarm worker's: its overlay networks are asked
    of a manager's executor over the bus (none runs here)."""
    stop = asyncio.Event()
    async with Bus(test_env.amqp_url, name="t-worker") as bus:
        overlay = OverlayNetworks(docker, deployment=settings.deployment, manager=False)
        overlay.asker = BusNetworkAsker(
            bus, node=settings.node_name, timeout=settings.network_timeout
        )
        engine = DockerEngine(
            docker,
            deployment=settings.deployment,
            node=settings.node_name,
            publish_host="127.0.0.1",
            zapps_root=Path("/nonexistent-zapps"),
            overlay=overlay,
        )
        task = asyncio.create_task(run_executor(settings, engine, bus, stop))
        try:
            yield settings.node_name
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
            await remove_node_containers(docker, test_env, settings.node_name)


async def test_a_start_whose_overlay_network_no_manager_provides_is_retried_then_fails(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    name = node_name(test_env)
    base = ExecutorSettings.from_env(executor_env(test_env, name))
    settings = msgspec.structs.replace(base, swarm=True, network_timeout=0.5, start_retry=2.0)
    async with worker_executor(test_env, docker, settings) as node:
        await facts.wait(m.NodeHeartbeat, node=node, registered=True, timeout=120)
        start = start_msg(test_env, "sleep 30")
        await bus.publish(start, node=node)
        failed = await facts.wait(
            m.InstanceStartFailed, execution_id=start.execution_id, timeout=120
        )
    network = f"{test_env.deployment}-x{start.execution_id}"
    assert "no swarm manager's executor answered" in failed.reason, failed.reason
    assert network in failed.reason and "tried for 2 s" in failed.reason, failed.reason
    assert await containers_named(docker, start.container_name) == []
    assert facts.all(m.InstanceStarted, execution_id=start.execution_id) == []


# ---- the deployment's registry ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<free port>, data under tmp_path; the root
    engine trusts 127.0.0.1 without TLS."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is missing: apt-get install -y docker-registry")
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: {address}}}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "registry.log").read_text()) from None
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def registry_tags(registry: str, repo: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://{registry}/v2/{repo}/tags/list", timeout=5) as r:
            return list(json.load(r).get("tags") or [])
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


async def remove_images(docker: aiodocker.Docker, *refs: str) -> None:
    for ref in refs:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.images.delete(ref, force=True)


def image_folder(root: Path, name: str) -> Path:
    """A ZApp folder under ``root`` whose one image, zoe/<name>:1, is built FROM busybox."""
    folder = root / "zt" / "images" / name
    folder.mkdir(parents=True)
    (folder / "Dockerfile").write_text(f"FROM zoe/busybox:1\nLABEL zoe.test={name}\n")
    (folder / "TAG").write_text("1\n")
    return root


async def test_a_missing_image_is_pulled_from_the_registry_and_tagged_as_its_ref(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    registry: str,
) -> None:
    ref = f"zoe/zt-pull-{uuid.uuid4().hex[:8]}:1"
    repo, tag = ref.split(":")
    try:
        await docker.images.tag(busybox, repo, tag=tag)
        await images.push(docker, registry, ref)
        assert registry_tags(registry, repo) == ["1"]
        await remove_images(docker, ref, images.registry_ref(registry, ref))
        assert not await images.image_present(docker, ref)
        async with tx.executor_with(test_env, facts, docker, registry=registry) as node:
            start = start_msg(test_env, "sleep 30", image=ref)
            await bus.publish(start, node=node)
            started = await facts.wait(
                m.InstanceStarted, execution_id=start.execution_id, timeout=120
            )
            assert started.container_name == start.container_name
            assert await images.image_present(docker, ref)  # pulled, tagged as its ref
            await tx.stop_and_wait(bus, facts, node, start)
    finally:
        await remove_images(docker, ref, images.registry_ref(registry, ref))


async def test_a_registry_that_does_not_answer_fails_the_start_after_retrying(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    ref = f"zoe/zt-dead-{uuid.uuid4().hex[:8]}:1"
    async with tx.executor_with(test_env, facts, docker, registry=dead, start_retry=2.0) as node:
        start = start_msg(test_env, "true", image=ref)
        await bus.publish(start, node=node)
        failed = await facts.wait(
            m.InstanceStartFailed, execution_id=start.execution_id, timeout=120
        )
    assert f"registry {dead} did not answer" in failed.reason, failed.reason
    assert "tried for 2 s" in failed.reason, failed.reason
    assert await containers_named(docker, start.container_name) == []


async def test_an_image_the_registry_lacks_is_built_here_and_pushed(
    test_env: TestEnv,
    bus: Bus,
    facts: Facts,
    docker: aiodocker.Docker,
    busybox: str,
    registry: str,
    tmp_path: Path,
) -> None:
    name = f"zt-push-{uuid.uuid4().hex[:8]}"
    ref = f"zoe/{name}:1"
    root = image_folder(tmp_path / "zapps", name)
    try:
        async with tx.executor_with(
            test_env, facts, docker, registry=registry, zapps_root=str(root)
        ) as node:
            start = start_msg(test_env, "sleep 30", image=ref)
            await bus.publish(start, node=node)
            await facts.wait(m.InstanceStarted, execution_id=start.execution_id, timeout=120)
            await tx.stop_and_wait(bus, facts, node, start)
        assert registry_tags(registry, f"zoe/{name}") == ["1"]
        # a start pushes what it built, not the base that was here already
        assert registry_tags(registry, "zoe/busybox") == []
    finally:
        await remove_images(docker, ref, images.registry_ref(registry, ref))


async def test_zapp_build_pushes_each_image_to_the_registry_unless_told_not_to(
    test_env: TestEnv, busybox: str, registry: str, tmp_path: Path
) -> None:
    name = f"zt-cli-{uuid.uuid4().hex[:8]}"
    ref = f"zoe/{name}:1"
    root = image_folder(tmp_path / "zapps", name)
    env = test_env.env(ZOE_ZAPPS_ROOT=str(root), ZOE_REGISTRY=registry)
    zoe = [sys.executable, "-m", "services.cli.main", "zapp", "build", "zt"]
    try:
        local = await asyncio.to_thread(
            subprocess.run,
            [*zoe, "--no-push"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert local.returncode == 0, local.stderr
        assert registry_tags(registry, f"zoe/{name}") == []
        pushed = await asyncio.to_thread(
            subprocess.run, zoe, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert pushed.returncode == 0, pushed.stderr
        assert f"{ref}: ready, in {registry}" in pushed.stdout
        assert registry_tags(registry, f"zoe/{name}") == ["1"]
        # what it is built FROM is in the image's layers: only what containers run is pushed
        assert registry_tags(registry, "zoe/busybox") == []
    finally:
        await asyncio.to_thread(
            subprocess.run,
            ["docker", "rmi", "-f", ref, f"{registry}/{ref}"],
            capture_output=True,
        )


# ---- an NFS workspace -------------------------------------------------------------------
# The kernel of these machines has no NFS (no nfsd, no nfs file system, no modprobe): the
# volume's creation with the exact driver options is checked on the real engine, and the
# start then fails with the kernel's reason for the mount.


async def test_with_an_nfs_export_the_workspace_is_a_local_volume_with_nfs_options(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    user = f"nfs{uuid.uuid4().hex[:6]}"
    workspace = f"{test_env.deployment}-workspace-{user}"
    start = start_msg(test_env, "sleep 30", environment={"ZOE_USER": user})
    try:
        async with tx.executor_with(
            test_env, facts, docker, workspace_nfs="198.18.1.9:/srv/zoe/"
        ) as node:
            await bus.publish(start, node=node)
            fact = await facts.wait(
                m.InstanceStartFailed, execution_id=start.execution_id, timeout=120
            )
        volume = await aiodocker.volumes.DockerVolume(docker, workspace).show()
        assert volume["Driver"] == "local"
        assert volume["Options"] == {
            "type": "nfs",
            "o": "addr=198.18.1.9,rw,nfsvers=4",
            "device": f":/srv/zoe/{user}",
        }
        assert volume["Labels"]["zoe.deployment"] == test_env.deployment
        # no NFS in this kernel: the mount fails, and the reason says so
        assert "failed to mount local volume" in fact.reason, fact.reason
        assert await containers_named(docker, start.container_name) == []
    finally:
        await tx.remove_volumes(docker, workspace)


async def test_a_workspace_volume_made_without_the_nfs_options_is_refused_saying_so(
    test_env: TestEnv, bus: Bus, facts: Facts, docker: aiodocker.Docker, busybox: str
) -> None:
    user = f"nfs{uuid.uuid4().hex[:6]}"
    workspace = f"{test_env.deployment}-workspace-{user}"
    await docker.volumes.create({"Name": workspace})
    start = start_msg(test_env, "sleep 30", environment={"ZOE_USER": user})
    try:
        async with tx.executor_with(
            test_env, facts, docker, workspace_nfs="198.18.1.9:/srv/zoe"
        ) as node:
            await bus.publish(start, node=node)
            fact = await facts.wait(
                m.InstanceStartFailed, execution_id=start.execution_id, timeout=120
            )
        assert f"volume {workspace} exists with the options" in fact.reason, fact.reason
        assert f"docker volume rm {workspace}" in fact.reason
    finally:
        await tx.remove_volumes(docker, workspace)

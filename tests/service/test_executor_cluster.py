"""The executor's cluster parts against the real Docker engine and RabbitMQ: the swarm
check at start, a start whose overlay network no manager provides, and images from the
deployment's registry (Debian's docker-registry, run here on 127.0.0.1).

The machine's own engine is in no swarm (and must stay so: it is shared), so the swarm
check is tested as a refusal, and the worker's path as a network nobody answers for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import msgspec

from common import messages as m
from common.bus import Bus
from common.settings import ExecutorSettings
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


async def test_an_executor_told_of_a_swarm_its_engine_is_not_in_exits_saying_so(
    test_env: TestEnv, facts: Facts
) -> None:
    name = node_name(test_env)
    env = executor_env(test_env, name, ZOE_SWARM="true", ZOE_METRICS_PORT="0", ZOE_LOG_JSON="0")
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
    assert proc.returncode not in (0, None), text
    assert "not in a swarm" in text and "'inactive'" in text, text
    assert "/var/run/docker.sock" in text, text  # names the engine
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
        await facts.wait(m.NodeHeartbeat, node=node, registered=True)
        start = start_msg(test_env, "sleep 30")
        await bus.publish(start, node=node)
        failed = await facts.wait(m.InstanceStartFailed, execution_id=start.execution_id)
    network = f"{test_env.deployment}-x{start.execution_id}"
    assert "no swarm manager's executor answered" in failed.reason, failed.reason
    assert network in failed.reason and "tried for 2 s" in failed.reason, failed.reason
    assert await containers_named(docker, start.container_name) == []
    assert facts.all(m.InstanceStarted, execution_id=start.execution_id) == []

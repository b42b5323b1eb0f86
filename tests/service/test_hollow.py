"""Hollow executors (fake nodes for scale benchmarks) against the real RabbitMQ.

They run the real executor over `HollowEngine`: these tests check that such a node
registers, starts, reports and stops fake instances through the bus like a real one,
and that many of them share one process and one connection. They prove nothing about
containers (tests/service/test_executor.py does, on Docker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common import messages as m
from common.bus import Bus
from common.settings import ExecutorSettings
from services.executor.hollow import HollowEngine
from services.executor.hollow_cluster import node_names, serve_many
from services.executor.service import serve
from tests.conftest import Facts, TestEnv, node_facts, wait_for

ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)
_clusters = itertools.count(1)


@pytest.fixture
async def seen(test_env: TestEnv) -> AsyncIterator[Facts]:
    async with node_facts(test_env) as out:
        yield out


def settings_for(test_env: TestEnv, node: str = "unused", **extra: Any) -> ExecutorSettings:
    env = test_env.env(
        ZOE_NODE_NAME=node,
        ZOE_ENGINE="hollow",
        ZOE_HEARTBEAT_INTERVAL="0.3",
        ZOE_USAGE_INTERVAL="0.3",
        ZOE_CORES="16",
        ZOE_MEMORY=str(64 << 30),
    )
    return msgspec.structs.replace(ExecutorSettings.from_env(env), **extra)


def start_msg(prefix: str, **extra: Any) -> m.StartInstance:
    execution_id = next(_ids)
    return m.StartInstance(
        execution_id=execution_id,
        instance_id=execution_id * 10,
        instance="worker0",
        container_name=f"{prefix}-{execution_id}-worker0",
        network=f"{prefix}-{execution_id}",
        image="zoe/busybox:1",
        cores_limit=1.0,
        memory_limit=1 << 30,
        environment={"ZOE_USER": "alice"},
        **extra,
    )


def stop_msg(start: m.StartInstance) -> m.StopInstance:
    return m.StopInstance(
        execution_id=start.execution_id,
        instance_id=start.instance_id,
        container_name=start.container_name,
        network=start.network,
    )


@contextlib.asynccontextmanager
async def hollow_cluster(
    test_env: TestEnv, nodes: int, **settings: Any
) -> AsyncIterator[tuple[str, dict[str, HollowEngine]]]:
    """``nodes`` hollow executors in this process; yields their prefix and engines."""
    prefix = f"{test_env.deployment}-hollow{next(_clusters)}"
    engines: dict[str, HollowEngine] = {}
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_many(
            settings_for(test_env, **settings),
            stop,
            nodes=nodes,
            prefix=prefix,
            engines=engines,
            on_ready=ready.set,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield prefix, engines
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_hollow_nodes_register_start_report_and_stop_fake_instances(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    async with hollow_cluster(test_env, nodes=5) as (prefix, engines):
        names = node_names(prefix, 5)
        assert sorted(engines) == names
        for name in names:
            beat = await seen.wait(m.NodeHeartbeat, node=name, registered=True)
            assert (beat.cores, beat.memory) == (16.0, 64 << 30)

        node = names[3]
        start = start_msg(
            prefix,
            ports=[m.PortRequest(name="ui", port_number=8888, url_template="http://{ip_port}/")],
        )
        await bus.publish(start, node=node)
        started = await seen.wait(m.InstanceStarted, execution_id=start.execution_id)
        assert (started.node, started.container_name) == (node, start.container_name)
        assert started.endpoints["ui"].startswith("http://127.0.0.1:")
        assert engines[node].running == [start.container_name]
        assert all(not engines[n].running for n in names if n != node)

        await bus.publish(start, node=node)  # redelivered: the same fake container
        again = await seen.wait(m.InstanceStarted, 2, execution_id=start.execution_id)
        assert again.container_id == started.container_id

        # heartbeats list it, with (made-up) usage
        beat = await wait_for(
            lambda: next(
                (
                    b
                    for b in reversed(seen.all(m.NodeHeartbeat, node=node))
                    if b.usage and start.instance_id in b.instances
                ),
                None,
            ),
            what="a heartbeat with the instance and its usage",
        )
        assert beat.usage[0].instance_id == start.instance_id

        await bus.publish(stop_msg(start), node=node)
        removed = await seen.wait(m.InstanceRemoved, execution_id=start.execution_id)
        assert (removed.exit_code, removed.node) == (0, node)
        assert "started on" in removed.log
        assert engines[node].running == []


async def test_a_hollow_container_death_is_reported_like_a_real_one(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    async with hollow_cluster(test_env, nodes=2) as (prefix, engines):
        node = node_names(prefix, 2)[1]
        start = start_msg(prefix)
        await bus.publish(start, node=node)
        started = await seen.wait(m.InstanceStarted, execution_id=start.execution_id)

        engines[node].kill(start.container_name, exit_code=137, oom_killed=True)
        exited = await seen.wait(m.InstanceExited, execution_id=start.execution_id)
        assert (exited.container_id, exited.exit_code, exited.oom_killed) == (
            started.container_id,
            137,
            True,
        )
        await bus.publish(stop_msg(start), node=node)
        removed = await seen.wait(m.InstanceRemoved, execution_id=start.execution_id)
        assert removed.exit_code == 137

        other = start_msg(prefix)
        await bus.publish(other, node=node)
        await seen.wait(m.InstanceStarted, execution_id=other.execution_id)
        engines[node].remove_behind_back(other.container_name)
        gone = await seen.wait(m.InstanceRemoved, execution_id=other.execution_id)
        assert gone.container_name == other.container_name


async def test_an_oom_kill_the_engine_hears_of_late_is_reported_as_one(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    """Docker may hear of an OOM kill only after the container's death (its ``die`` says
    not OOM-killed, an ``oom`` event follows): the executor waits ``oom_grace`` for it
    before calling a SIGKILL it did not send a crash."""
    exited = await _death_told(test_env, bus, seen, 30.0, oom_told_after=0.3)
    assert (exited.exit_code, exited.oom_killed) == (137, True)
    # no oom event: a crash once the grace is over
    exited = await _death_told(test_env, bus, seen, 0.3)
    assert (exited.exit_code, exited.oom_killed) == (137, False)
    # a SIGKILL the engine sent (a kill event first) is a crash at once, not after 60 s
    exited = await _death_told(test_env, bus, seen, 60.0, by_engine=True)
    assert (exited.exit_code, exited.oom_killed) == (137, False)


async def _death_told(
    test_env: TestEnv, bus: Bus, seen: Facts, oom_grace: float, **death: Any
) -> m.InstanceExited:
    """The exited fact of a hollow instance that died by SIGKILL (``death``: how, as
    `HollowEngine.kill` takes it), told within 20 s, its executor waiting ``oom_grace``."""
    async with hollow_cluster(test_env, nodes=1, oom_grace=oom_grace) as (prefix, engines):
        (node,) = node_names(prefix, 1)
        start = start_msg(prefix)
        await bus.publish(start, node=node)
        await seen.wait(m.InstanceStarted, execution_id=start.execution_id)
        engines[node].kill(start.container_name, **death)
        exited: m.InstanceExited = await seen.wait(
            m.InstanceExited, execution_id=start.execution_id, timeout=20
        )
        return exited


async def test_a_hollow_log_can_be_followed(test_env: TestEnv, bus: Bus, seen: Facts) -> None:
    async with hollow_cluster(test_env, nodes=1) as (prefix, engines):
        node = node_names(prefix, 1)[0]
        start = start_msg(prefix)
        await bus.publish(start, node=node)
        await seen.wait(m.InstanceStarted, execution_id=start.execution_id)
        decoder = m.decoder(m.LogsReply)

        async def read(cursor: str) -> m.LogsReply:
            ask = m.LogsRequest(container_name=start.container_name, follow=True, cursor=cursor)
            return decoder.decode(await bus.request(node, ask, timeout=5))

        first = await read("")
        assert first.running and "started on" in first.log
        engines[node].print(start.container_name, "more\n")
        second = await read(first.cursor)
        assert (second.log, second.running) == ("more\n", True)
        engines[node].kill(start.container_name, exit_code=0)
        last = await read(second.cursor)
        assert not last.running and "exit code 0" in last.log


async def test_zoe_engine_hollow_selects_it_for_one_executor(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    node = f"{test_env.deployment}-hollow-single"
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings_for(test_env, node), stop))
    try:
        await seen.wait(m.NodeHeartbeat, node=node, registered=True)
        start = start_msg(node)
        await bus.publish(start, node=node)
        await seen.wait(m.InstanceStarted, execution_id=start.execution_id)
        await bus.publish(stop_msg(start), node=node)
        await seen.wait(m.InstanceRemoved, execution_id=start.execution_id)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def spawn(args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


async def test_the_hollow_process_runs_many_nodes_and_stops_on_sigterm(
    test_env: TestEnv, seen: Facts, tmp_path: Path
) -> None:
    prefix = f"{test_env.deployment}-hollowproc"
    env = test_env.env(ZOE_HEARTBEAT_INTERVAL="1", ZOE_LOG_LEVEL="warning")
    log_file = tmp_path / "hollow.log"
    proc = spawn(
        [sys.executable, "-m", "services.executor.hollow", "--nodes", "40", "--prefix", prefix],
        env,
        log_file,
    )
    try:
        for name in node_names(prefix, 40):
            await seen.wait(m.NodeHeartbeat, node=name, registered=True)
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, timeout=30, what="the process to end")
        assert proc.returncode == 0, log_file.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_starts_sent_together_run_and_one_that_fails_is_retried_alone(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    async with hollow_cluster(test_env, nodes=1) as (prefix, engines):
        (node,) = node_names(prefix, 1)
        engine = engines[node]
        good, bad = start_msg(prefix), start_msg(prefix)
        attempts: list[str] = []
        create = engine.create_and_start

        async def failing_once(spec: Any) -> Any:  # the engine fails once on ``bad``
            attempts.append(spec.name)
            if spec.name == bad.container_name and attempts.count(spec.name) == 1:
                raise RuntimeError("the engine hiccuped")
            return await create(spec)

        engine.create_and_start = failing_once  # type: ignore[method-assign]
        await bus.publish(m.StartInstances(starts=[good, bad]), node=node)
        for start in (good, bad):
            await seen.wait(m.InstanceStarted, execution_id=start.execution_id)
        assert sorted(engine.running) == sorted([good.container_name, bad.container_name])
        # the failed one was sent again alone: the good one was not started twice
        assert attempts.count(bad.container_name) == 2
        assert attempts.count(good.container_name) == 1
        assert len(seen.all(m.InstanceStarted, execution_id=good.execution_id)) == 1


async def test_the_containers_one_command_starts_are_reported_by_one_fact(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    async with hollow_cluster(test_env, nodes=1) as (prefix, engines):
        (node,) = node_names(prefix, 1)
        starts = [start_msg(prefix) for _ in range(5)]
        await bus.publish(m.StartInstances(starts=starts), node=node)
        for start in starts:
            await seen.wait(m.InstanceStarted, container_name=start.container_name)
        together = [
            x
            for x in seen.together
            if {s.container_name for s in x.started} & {s.container_name for s in starts}
        ]
        assert len(together) == 1 and together[0].node == node
        assert sorted(s.container_name for s in together[0].started) == sorted(
            s.container_name for s in starts
        )
        assert sorted(engines[node].running) == sorted(s.container_name for s in starts)


async def test_an_ended_container_is_reported_again_until_it_is_removed(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    """A fact lost for good must not leave an instance running for ever: the executor
    reports ended containers again, every ``report_ended_interval``, while they exist."""
    async with hollow_cluster(test_env, nodes=1, report_ended_interval=0.3) as (prefix, engines):
        (node,) = node_names(prefix, 1)
        start = start_msg(prefix)
        await bus.publish(start, node=node)
        await seen.wait(m.InstanceStarted, container_name=start.container_name)
        engines[node].kill(start.container_name, exit_code=3)
        await wait_for(
            lambda: len(seen.all(m.InstanceExited, container_name=start.container_name)) >= 3,
            what="the exit reported again and again",
        )
        exits = seen.all(m.InstanceExited, container_name=start.container_name)
        assert {(e.exit_code, e.instance_id) for e in exits} == {(3, start.instance_id)}
        await bus.publish(stop_msg(start), node=node)
        await seen.wait(m.InstanceRemoved, container_name=start.container_name)
        after = len(seen.all(m.InstanceExited, container_name=start.container_name))
        await asyncio.sleep(1.0)  # three rounds: a removed container is not reported
        assert len(seen.all(m.InstanceExited, container_name=start.container_name)) == after


async def test_an_executor_that_stops_cleanly_says_so_in_a_last_heartbeat(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    async with hollow_cluster(test_env, nodes=1) as (prefix, _):
        (node,) = node_names(prefix, 1)
        await seen.wait(m.NodeHeartbeat, node=node, registered=True)
        assert not seen.all(m.NodeHeartbeat, node=node, stopping=True)
    last = await seen.wait(m.NodeHeartbeat, node=node, stopping=True)
    assert not last.registered


async def test_an_unchanged_node_beats_small_and_a_change_sends_its_inventory(
    test_env: TestEnv, bus: Bus, seen: Facts
) -> None:
    """Between full heartbeats a node says only that it is alive (`NodeAlive`, for the
    monitor); a change of what it holds goes out in a full heartbeat at once, not after
    ``inventory_interval`` (here an hour)."""
    cluster = hollow_cluster(test_env, nodes=1, usage_interval=0.0, inventory_interval=3600.0)
    async with cluster as (prefix, _):
        (node,) = node_names(prefix, 1)
        await seen.wait(m.NodeHeartbeat, node=node, registered=True)
        await seen.wait(m.NodeAlive, 3, node=node)
        start = start_msg(prefix)
        await bus.publish(start, node=node)
        await seen.wait(m.InstanceStarted, container_name=start.container_name)
        await wait_for(
            lambda: any(
                start.instance_id in b.instances for b in seen.all(m.NodeHeartbeat, node=node)
            ),
            what="a full heartbeat with the new instance",
        )

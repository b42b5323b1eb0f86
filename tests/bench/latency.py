"""Latency on the real Docker engine: not a test, prints figures.

    python tests/bench/latency.py --json

One run, one platform of its own (api, scheduler, monitor and one Docker executor as
processes, in a vhost, database and deployment of their own):

- ``raw``: aiodocker create+start of a ``zoe/busybox:1`` container (``sleep``) on the
  default bridge, then removed. ``raw_like_zoe``: the same with what Zoe asks of Docker
  for one instance (a network of its own, a published port, the workspace volume,
  limits), to tell Docker's own cost from Zoe's.
- ``zoe``: submit over HTTP of a one-service ZApp → the execution's ``running`` state
  event received on the bus (after the scheduler commits it and the relay publishes it).
  Each sample is then terminated, and waited for, outside the timing. Samples of the
  three kinds alternate, so background load on the machine weighs on all alike.
- ``kill``: one execution with essential instances and ``--samples`` elastic ones;
  each elastic instance's container is SIGKILLed in turn (Docker ``kill``), timed to
  the ``InstanceStarted`` fact of its replacement (a new container) on the bus.
  Each elastic instance dies once: its restart is its first, which is placed again at
  once (``ZOE_RESTART_BACKOFF`` delays the second and later restarts only). Its stages,
  by the arrival of each message on the bus (``kill_stages``): the kill to the
  executor's ``InstanceExited`` fact (Docker's kill and ``die`` event, the executor's
  inspect), to the monitor's ``InstanceEnded`` verdict, to the scheduler's start
  command for the replacement (its pass and the outbox relay), to the replacement's
  ``InstanceStarted`` fact (the executor's create and start on Docker).

``ZOE_PASS_INTERVAL`` and ``ZOE_RESTART_BACKOFF`` of the scheduler are reported: its
defaults unless given (``--restart-backoff``, ``--pass-interval``) or set in the
environment of this script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiodocker
import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import messages as m
from common.bus import COMMANDS, EVENTS
from common.settings import SchedulerSettings
from services.executor.images import ensure_image
from tests.bench._platform import ROOT, BenchPlatform, busybox_service, machine, percentile

IMAGE = "zoe/busybox:1"
# ends promptly on SIGTERM (sh as PID 1 ignores it without a trap)
SERVE = "trap 'exit 0' TERM; while :; do sleep 1; done"


def _service(name: str, *, monitor: bool, essential: int, total: int) -> dict[str, Any]:
    return busybox_service(
        name,
        command=SERVE,
        monitor=monitor,
        essential=essential,
        total=total,
        min_cores=0.05,
        min_memory=16 << 20,
    )


def application(elastic: int = 0) -> dict[str, Any]:
    """A long-running ZApp: one essential (monitor) instance, and workers: one essential, ``elastic`` elastic."""
    services = [_service("main", monitor=True, essential=1, total=1)]
    if elastic:
        services.append(_service("worker", monitor=False, essential=1, total=1 + elastic))
    return {"name": "latency", "version": 3, "will_end": False, "size": 1, "services": services}


class Events:
    """State events, facts, verdicts and start commands of the bench's vhost, as they
    arrive."""

    def __init__(self) -> None:
        self.waiters: list[tuple[Callable[[Any], bool], asyncio.Future[float]]] = []
        self.decoder = m.decoder(
            m.ExecutionStatesChanged
            | m.InstanceStarted
            | m.InstancesStarted
            | m.InstanceExited
            | m.InstanceEnded
            | m.StartInstance
            | m.StartInstances
        )

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        decoded = self.decoder.decode(message.body)
        # the facts (or starts) of one StartInstances command come together: each counts
        if isinstance(decoded, m.InstancesStarted):
            each: list[Any] = list(decoded.started)
        elif isinstance(decoded, m.StartInstances):
            each = list(decoded.starts)
        elif isinstance(decoded, m.ExecutionStatesChanged):
            each = list(decoded.changes)
        else:
            each = [decoded]
        for msg in each:
            for match, future in list(self.waiters):
                if not future.done() and match(msg):
                    future.set_result(now)

    def expect(self, match: Callable[[Any], bool]) -> asyncio.Future[float]:
        """A future set to the arrival time of the first message ``match`` accepts."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.append((match, future))
        future.add_done_callback(lambda f: self.waiters.remove((match, f)))
        return future


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 50), 1),
        "p99_ms": round(percentile(samples, 99), 1),
        "min_ms": round(min(samples), 1),
        "max_ms": round(max(samples), 1),
        "n": len(samples),
    }


async def raw_sample(docker: aiodocker.Docker, deployment: str, like_zoe: bool) -> float:
    """One create+start (timed), then remove it (not timed)."""
    name = f"{deployment}-raw-{uuid.uuid4().hex[:8]}"
    labels = {"zoe.deployment": deployment}
    config: dict[str, Any] = {"Image": IMAGE, "Cmd": ["sleep", "3600"], "Labels": labels}
    network = None
    if like_zoe:
        network = name + "-net"
        config["ExposedPorts"] = {"8080/tcp": {}}
        config["HostConfig"] = {
            "NetworkMode": network,
            "Memory": 64 << 20,
            "MemorySwap": 64 << 20,
            "NanoCpus": 500_000_000,
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "Binds": [f"{deployment}-workspace-raw:/mnt/workspace"],
        }
        config["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": ["svc0"]}}}
    start = time.perf_counter()
    if network is not None:
        await docker.networks.create({"Name": network, "Driver": "bridge", "Labels": labels})
    container = await docker.containers.create(config, name=name)
    await container.start()
    elapsed = (time.perf_counter() - start) * 1000
    await container.delete(force=True)
    if network is not None:
        await aiodocker.networks.DockerNetwork(docker, network).delete()
    return elapsed


async def zoe_sample(session: aiohttp.ClientSession, api: str, events: Events) -> float:
    """Submit → running event (timed); then terminate and wait for the end (not timed)."""
    ids: dict[str, int] = {}
    running = events.expect(
        lambda x: (
            isinstance(x, m.StateChange)
            and x.state == "running"
            and x.execution_id == ids.get("id")
        )
    )
    start = time.perf_counter()
    async with session.post(
        f"{api}/executions", json={"name": "latency", "application": application()}
    ) as r:
        body = await r.json()
        assert r.status == 201, body
    ids["id"] = body["id"]
    # the event may have come before the reply: look at what arrived meanwhile too
    end = await asyncio.wait_for(running, 60)
    elapsed = (end - start) * 1000
    ended = events.expect(
        lambda x: (
            isinstance(x, m.StateChange)
            and x.execution_id == ids["id"]
            and x.state in ("terminated", "failed", "finished")
        )
    )
    async with session.post(f"{api}/executions/{ids['id']}/terminate") as r:
        assert r.status == 202, await r.text()
    await asyncio.wait_for(ended, 60)
    return elapsed


def _about(kind: type, instance_id: int, old: str, same: bool) -> Callable[[Any], bool]:
    """Matches a ``kind`` message of the instance, of its container ``old`` (``same``)
    or of another."""

    def match(x: Any) -> bool:
        return (
            isinstance(x, kind)
            and x.instance_id == instance_id
            and (x.container_name == old) == same
        )

    return match


# the stages of a kill's replacement: the message that ends each (see the module's doc)
KILL_STAGES = ("to_exited_fact", "to_verdict", "to_start_command", "to_started_fact")


async def kill_samples(
    session: aiohttp.ClientSession,
    api: str,
    docker: aiodocker.Docker,
    events: Events,
    count: int,
    stages: dict[str, list[float]],
) -> list[float]:
    """Kill each elastic instance's container once; time to its replacement's start,
    and each stage's share in ``stages``."""
    async with session.post(
        f"{api}/executions", json={"name": "kill", "application": application(elastic=count)}
    ) as r:
        execution = await r.json()
        assert r.status == 201, execution
    execution_id = execution["id"]
    deadline = time.monotonic() + 120
    while True:
        async with session.get(f"{api}/executions/{execution_id}") as r:
            execution = await r.json()
        if all(s["state"] == "running" for s in execution["services"]):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all instances run: {execution}")
        await asyncio.sleep(0.2)
    out = []
    for s in execution["services"]:
        if s["essential"]:
            continue
        old, iid = s["container_name"], s["id"]
        waits = [
            events.expect(_about(kind, iid, old, same))
            for kind, same in (
                (m.InstanceExited, True),
                (m.InstanceEnded, True),
                (m.StartInstance, False),
                (m.InstanceStarted, False),
            )
        ]
        await asyncio.sleep(0.3)  # let the previous replacement's tail settle
        start = time.perf_counter()
        await docker.containers.container(old).kill(signal="SIGKILL")
        arrived = [await asyncio.wait_for(w, 60) for w in waits]
        out.append((arrived[-1] - start) * 1000)
        for stage, before, after in zip(KILL_STAGES, [start, *arrived[:-1]], arrived, strict=True):
            stages.setdefault(stage, []).append((after - before) * 1000)
    async with session.post(f"{api}/executions/{execution_id}/terminate") as r:
        assert r.status == 202
    return out


async def alternate(count: int, kinds: dict[str, Callable[[], Awaitable[float]]]) -> dict:
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(count):
        for kind, sample in kinds.items():
            samples[kind].append(await sample())
    return samples


async def run(args: argparse.Namespace) -> dict[str, Any]:
    info = machine()
    overrides = {}
    if args.restart_backoff is not None:
        overrides["ZOE_RESTART_BACKOFF"] = str(args.restart_backoff)
    if args.pass_interval is not None:
        overrides["ZOE_PASS_INTERVAL"] = str(args.pass_interval)
    sched = SchedulerSettings.from_env({**os.environ, **overrides})
    plat = BenchPlatform("latency")
    stages: dict[str, list[float]] = {}
    try:
        await plat.create()
        async with aiodocker.Docker() as docker:
            await ensure_image(docker, IMAGE, zapps_root=ROOT / "zapps")
            plat.start_core({"scheduler": overrides})
            node = f"{plat.deployment}-n1"
            plat.spawn(
                "executor",
                ["services.executor"],
                ZOE_NODE_NAME=node,
                ZOE_CORES="8",
                ZOE_MEMORY=str(8 << 30),
                ZOE_STOP_TIMEOUT="2",
            )
            events = Events()
            connection = await aio_pika.connect(plat.amqp_url)
            async with connection, aiohttp.ClientSession(headers=plat.headers) as session:
                channel = await connection.channel()
                await plat.wait_api(session)
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
                for key in (
                    "state.executions",
                    "fact.started.#",
                    "fact.started_many.#",
                    "fact.exited.#",
                    "verdict.instance_ended",
                ):
                    await queue.bind(EVENTS, routing_key=key)
                # a copy of the node's commands (a direct exchange: bound by its name)
                await queue.bind(COMMANDS, routing_key=node)
                await queue.consume(events.on_message, no_ack=True)
                while True:  # the executor registered
                    async with session.get(f"{plat.api}/nodes") as r:
                        if any(n["state"] == "up" for n in await r.json()):
                            break
                    plat.check_alive()
                    await asyncio.sleep(0.2)
                # labelled, so that the end of the bench removes it with the deployment
                await docker.volumes.create(
                    {
                        "Name": f"{plat.deployment}-workspace-raw",
                        "Labels": {"zoe.deployment": plat.deployment},
                    }
                )
                # warm-up: first use of the image, the volume, the code paths
                await zoe_sample(session, plat.api, events)
                await raw_sample(docker, plat.deployment, like_zoe=True)
                samples = await alternate(
                    args.samples,
                    {
                        "raw": lambda: raw_sample(docker, plat.deployment, like_zoe=False),
                        "raw_like_zoe": lambda: raw_sample(docker, plat.deployment, True),
                        "zoe": lambda: zoe_sample(session, plat.api, events),
                    },
                )
                samples["kill"] = await kill_samples(
                    session, plat.api, docker, events, args.samples, stages
                )
    finally:
        await plat.destroy()
    figures = {kind: summary(values) for kind, values in samples.items()}
    raw, zoe = figures["raw"], figures["zoe"]
    return {
        "raw_create_start_p50_ms": raw["p50_ms"],
        "raw_create_start_p99_ms": raw["p99_ms"],
        "zoe_submit_to_running_p50_ms": zoe["p50_ms"],
        "zoe_submit_to_running_p99_ms": zoe["p99_ms"],
        "ratio_p50": round(zoe["p50_ms"] / raw["p50_ms"], 2),
        "ratio_p99": round(zoe["p99_ms"] / raw["p99_ms"], 2),
        "kill_to_replacement_p50_ms": figures["kill"]["p50_ms"],
        "kill_to_replacement_p99_ms": figures["kill"]["p99_ms"],
        "kill_stages_p50_ms": {k: round(percentile(stages[k], 50), 1) for k in KILL_STAGES},
        "detail": figures,
        "settings": {
            "ZOE_PASS_INTERVAL": sched.pass_interval,
            "ZOE_RESTART_BACKOFF": sched.restart_backoff,
            "samples": args.samples,
        },
        "machine": info,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="samples of each kind")
    parser.add_argument(
        "--restart-backoff",
        type=float,
        help="ZOE_RESTART_BACKOFF of the scheduler (default: its own, 0.5 s; the first"
        " restart of an instance does not wait)",
    )
    parser.add_argument(
        "--pass-interval", type=float, help="ZOE_PASS_INTERVAL of the scheduler (default: 1 s)"
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args()
    figures = asyncio.run(run(args))
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Latency on the test cluster (deploy/testcluster.sh, three hosts): not a test, prints JSON.

    python tests/bench/cluster_latency.py [--runs 20] [--keep] [--json]

Uses this checkout's test cluster when it is up (var/testcluster/env), else makes one
(``up 3``, waiting while another checkout's runs) and takes it down at the end (unless
``--keep``). Figures:

- ``spread``: submit over HTTP of a long-running ZApp of three essential busybox
  instances, one per host (labels ``host1``, ``host2``, ``host3``), to the execution's
  ``running`` state seen by polling the api every 10 ms; ``single``: the same ZApp with
  all three on host1. Samples of the two alternate; each execution is terminated, and
  its end waited for, outside the timing. Every host holds the image first, so no pull
  is timed. ``ratio``: spread ÷ single at p50 and p99.
- ``network_create``: the engine's cost of creating an execution's network on host1's engine
  (the swarm manager; what the manager's executor asks of it): an attachable overlay
  against a plain local bridge, each then removed (outside the timing).
- ``network_and_first_container``: the network made and a first container created
  and started on it, on host1 (the manager) and on host2 (a worker), overlay against
  bridge: the overlay's real set-up happens on each host when a container first joins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiodocker

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench._platform import machine, percentile
from tests.e2e.cluster import ENV_FILE, ROOT, Cluster, down, machine_owner, read_env, up

IMAGE = "zoe/busybox:1"
SERVE = "trap 'exit 0' TERM; while :; do sleep 1; done"
ENDED = ("finished", "failed", "terminated", "error")


def application(hosts: list[int]) -> dict[str, Any]:
    """A long-running ZApp of one essential instance per entry, on host ``hosts[k]``."""
    services = []
    for k, host in enumerate(hosts):
        services.append(
            {
                "name": f"part{k}",
                "image": IMAGE,
                "monitor": k == 0,
                "essential_count": 1,
                "total_count": 1,
                "startup_order": 0,
                "command": SERVE,
                "environment": [],
                "ports": [],
                "volumes": [],
                "labels": [f"host{host}"],
                "resources": {
                    "cores": {"min": 0.05, "max": 0.5},
                    "memory": {"min": 16 << 20, "max": 16 << 20},
                },
            }
        )
    return {"name": "latency", "version": 3, "will_end": False, "size": 1, "services": services}


async def state(cluster: Cluster, eid: int) -> str:
    status, body = await cluster.acall("GET", f"/executions/{eid}")
    assert status == 200, body
    return str(body["state"])


async def wait_state(cluster: Cluster, eid: int, states: tuple[str, ...], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (now := await state(cluster, eid)) not in states:
        if time.monotonic() > deadline:
            raise RuntimeError(f"execution {eid} still {now} after {timeout}s")
        await asyncio.sleep(0.01)
    return now


async def submit_to_running(cluster: Cluster, app: dict[str, Any]) -> float:
    """Seconds from the submission to the execution's running (then terminated)."""
    t0 = time.perf_counter()
    status, body = await cluster.acall(
        "POST", "/executions", {"name": "latency", "application": app}
    )
    assert status == 201, body
    eid = int(body["id"])
    try:
        reached = await wait_state(cluster, eid, ("running", *ENDED), timeout=120)
        elapsed = time.perf_counter() - t0
        if reached != "running":
            raise RuntimeError(f"execution {eid} ended {reached} before it ran")
        return elapsed
    finally:
        await cluster.acall("POST", f"/executions/{eid}/terminate")
        await wait_state(cluster, eid, ENDED, timeout=120)


async def network_cost(cluster: Cluster, runs: int) -> dict[str, Any]:
    """Create (timed) and remove (untimed) overlay and bridge networks on host1."""
    out: dict[str, list[float]] = {"overlay": [], "bridge": []}
    async with cluster.docker(1) as engine:
        for _ in range(runs):
            for driver in ("overlay", "bridge"):
                config: dict[str, Any] = {
                    "Name": f"{cluster.deployment}-bench-{uuid.uuid4().hex[:8]}",
                    "Driver": driver,
                    "CheckDuplicate": True,
                    "Labels": {"zoe.bench": cluster.deployment},
                }
                if driver == "overlay":
                    config["Attachable"] = True
                t0 = time.perf_counter()
                network = await engine.networks.create(config)
                out[driver].append(time.perf_counter() - t0)
                await network.delete()
    return {
        driver: {
            "p50_ms": round(percentile(xs, 50) * 1000, 1),
            "p99_ms": round(percentile(xs, 99) * 1000, 1),
            "n": len(xs),
        }
        for driver, xs in out.items()
    } | {
        "overlay_over_bridge_p50": round(
            percentile(out["overlay"], 50) / percentile(out["bridge"], 50), 2
        )
    }


async def attach_cost(cluster: Cluster, runs: int) -> dict[str, Any]:
    """A network made (overlay on host1, the manager; bridge on the host itself) and a
    first container created and started on it, on host1 and on host2 (a worker: its
    engine sets the overlay up when the container joins), timed to the container
    running; both removed after (untimed)."""
    out: dict[str, list[float]] = {}
    async with cluster.docker(1) as manager, cluster.docker(2) as worker:
        for _ in range(runs):
            for host, engine in ((1, manager), (2, worker)):
                for driver in ("overlay", "bridge"):
                    maker = manager if driver == "overlay" else engine
                    name = f"{cluster.deployment}-bench-{uuid.uuid4().hex[:8]}"
                    config: dict[str, Any] = {
                        "Name": name,
                        "Driver": driver,
                        "CheckDuplicate": True,
                        "Labels": {"zoe.bench": cluster.deployment},
                    }
                    if driver == "overlay":
                        config["Attachable"] = True
                    t0 = time.perf_counter()
                    network = await maker.networks.create(config)
                    container = await engine.containers.create(
                        {
                            "Image": IMAGE,
                            "Cmd": ["sh", "-c", SERVE],
                            "Labels": {"zoe.bench": cluster.deployment},
                            "HostConfig": {"NetworkMode": name},
                        },
                        name=f"{name}-c",
                    )
                    await container.start()
                    out.setdefault(f"{driver}_host{host}", []).append(time.perf_counter() - t0)
                    await container.delete(force=True)
                    await _delete_when_detached(network)
    return {key: summary(xs) for key, xs in out.items()}


async def _delete_when_detached(network: Any) -> None:
    """A worker's container just removed may still count as attached for a moment."""
    for _ in range(50):
        try:
            await network.delete()
            return
        except aiodocker.DockerError:
            await asyncio.sleep(0.1)
    await network.delete()


def summary(xs: list[float]) -> dict[str, Any]:
    return {
        "p50_ms": round(percentile(xs, 50) * 1000, 1),
        "p99_ms": round(percentile(xs, 99) * 1000, 1),
        "n": len(xs),
    }


async def prepare(cluster: Cluster) -> None:
    """Every host holds the image (from the registry) before anything is timed."""
    for i in range(1, cluster.hosts + 1):
        async with cluster.docker(i) as engine:
            await engine.images.pull(f"{cluster.registry}/{IMAGE}")
            repo, tag = IMAGE.split(":")
            await engine.images.tag(f"{cluster.registry}/{IMAGE}", repo, tag=tag)


async def measure(cluster: Cluster, runs: int) -> dict[str, Any]:
    await prepare(cluster)
    spread_app = application([1, 2, 3])
    single_app = application([1, 1, 1])
    # one of each first, untimed: the first overlay of a worker host costs more
    await submit_to_running(cluster, spread_app)
    await submit_to_running(cluster, single_app)
    spread: list[float] = []
    single: list[float] = []
    for _ in range(runs):
        spread.append(await submit_to_running(cluster, spread_app))
        single.append(await submit_to_running(cluster, single_app))
    s, o = summary(spread), summary(single)
    return {
        "runs": runs,
        "submit_to_running": {
            "spread_3_hosts": s,
            "single_host": o,
            "ratio_p50": round(s["p50_ms"] / o["p50_ms"], 2),
            "ratio_p99": round(s["p99_ms"] / o["p99_ms"], 2),
        },
        "network_create": await network_cost(cluster, runs),
        "network_and_first_container": await attach_cost(cluster, runs),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave a cluster made here up")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args()
    info = machine()
    ours = machine_owner() == str(ROOT) and ENV_FILE.exists()
    cluster = Cluster(read_env()) if ours else await asyncio.to_thread(up)
    try:
        figures = await measure(cluster, args.runs)
    finally:
        if not ours and not args.keep:
            with contextlib.suppress(AssertionError):
                await asyncio.to_thread(down)
    out = {"machine": info, "cluster_hosts": cluster.hosts, **figures}
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

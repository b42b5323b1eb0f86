"""Seeded synthetic workloads for the simulator (the set-up of the original Zoe paper).

``default``: 25 nodes x 32 cores x 128 GiB and 4,000 applications arriving as a Poisson
process at an offered load (0.9 of capacity unless told otherwise). 80 % are elastic
batch applications (an essential master of 1 core and 4 GiB, one essential worker and
elastic workers up to a total drawn log-uniformly from 1 to 64, each worker 1-4 cores and
2-16 GiB); 20 % are rigid MPI-like applications (2-32 essential instances of 1-4 cores and
2-8 GiB). Nominal runtimes are log-normal (median 10 minutes, sigma 1.5, capped at 24 h);
the size hint is the true work (core-seconds) times a log-normal error (sigma 0.5).

``small``: the same mix on 5 nodes of 16 cores and 64 GiB, 200 applications, at most 16
workers: quick enough for tests.

``multiuser``: the default cluster and mix shared by users: one heavy user submits 80 %
of the applications, in bursts of 20 submitted at once (a script), and five light users
4 % each, one at a time (Poisson arrivals); the offered load is the whole's.
``multiuser-small``: the same on the small cluster.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from .model import InstanceReq, NodeState

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class App:
    """One application of a workload: when it arrives, how long it runs, what it needs."""

    id: int
    arrival: float
    runtime: float
    size: float
    elastic: bool
    instances: tuple[InstanceReq, ...]
    priority: int = 0
    user: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    """A cluster and the applications submitted to it."""

    name: str
    nodes: tuple[NodeState, ...]
    apps: tuple[App, ...]
    load: float


@dataclass(frozen=True, slots=True)
class Shape:
    """The parameters that tell the named workloads apart."""

    nodes: int
    node_cores: int
    node_memory_gib: int
    apps: int
    max_workers: int
    max_rigid: int
    light_users: int = 0  # with light users, a heavy one submits HEAVY_SHARE in bursts


SHAPES: dict[str, Shape] = {
    "default": Shape(
        nodes=25, node_cores=32, node_memory_gib=128, apps=4000, max_workers=64, max_rigid=32
    ),
    "small": Shape(
        nodes=5, node_cores=16, node_memory_gib=64, apps=200, max_workers=16, max_rigid=12
    ),
    "multiuser": Shape(
        nodes=25,
        node_cores=32,
        node_memory_gib=128,
        apps=4000,
        max_workers=64,
        max_rigid=32,
        light_users=5,
    ),
    "multiuser-small": Shape(
        nodes=5,
        node_cores=16,
        node_memory_gib=64,
        apps=300,
        max_workers=16,
        max_rigid=12,
        light_users=3,
    ),
}
HEAVY = "heavy"
HEAVY_SHARE = 0.8
BURST = 20

MEDIAN_RUNTIME = 600.0
RUNTIME_SIGMA = 1.5
MAX_RUNTIME = 24 * 3600.0
SIZE_ERROR_SIGMA = 0.5
ELASTIC_SHARE = 0.8


def make_workload(name: str, seed: int, load: float = 0.9, apps: int | None = None) -> Workload:
    """Build the named workload; the same name, seed, load and count give the same apps."""
    if name not in SHAPES:
        raise ValueError(f"unknown workload {name!r}; expected one of {sorted(SHAPES)}")
    if load <= 0:
        raise ValueError("load must be positive")
    shape = SHAPES[name]
    count = shape.apps if apps is None else apps
    rng = random.Random(seed)
    nodes = tuple(
        NodeState(
            name=f"node{i:03d}",
            cores=float(shape.node_cores),
            memory=shape.node_memory_gib * GIB,
            labels=frozenset(),
        )
        for i in range(shape.nodes)
    )
    drafts: list[App] = []
    next_instance = 1
    for app_id in range(1, count + 1):
        app = _draw_app(rng, shape, app_id, next_instance)
        next_instance += len(app.instances)
        drafts.append(app)
    cap_c = float(shape.nodes * shape.node_cores)
    cap_m = float(shape.nodes * shape.node_memory_gib * GIB)
    demand_c = sum(a.runtime * sum(i.cores for i in a.instances) for a in drafts) / cap_c
    demand_m = sum(a.runtime * sum(i.memory for i in a.instances) for a in drafts) / cap_m
    # Seconds of whole-cluster time one application brings, on its dominant resource.
    per_app = max(demand_c, demand_m) / max(1, count)
    rate = load / per_app
    clock = 0.0
    timed: list[App] = []
    for app in drafts:
        clock += rng.expovariate(rate)
        timed.append(replace(app, arrival=clock))
    if shape.light_users:
        timed = _share_out(timed, shape.light_users, random.Random(f"users-{seed}"))
    return Workload(name=name, nodes=nodes, apps=tuple(timed), load=load)


def _share_out(apps: list[App], light: int, rng: random.Random) -> list[App]:
    """Give each application a user: the heavy one's come in bursts of `BURST`, each
    submitted at once when its first one would have been (the mean rate is unchanged)."""
    out: list[App] = []
    burst_at: float | None = None
    in_burst = 0
    for app in apps:
        if rng.random() < HEAVY_SHARE:
            if burst_at is None or in_burst == BURST:
                burst_at, in_burst = app.arrival, 0
            in_burst += 1
            out.append(replace(app, user=HEAVY, arrival=burst_at))
        else:
            out.append(replace(app, user=f"light{rng.randrange(light) + 1}"))
    out.sort(key=lambda a: (a.arrival, a.id))
    return out


def _draw_app(rng: random.Random, shape: Shape, app_id: int, first_id: int) -> App:
    runtime = min(MAX_RUNTIME, rng.lognormvariate(math.log(MEDIAN_RUNTIME), RUNTIME_SIGMA))
    specs: list[tuple[float, int, bool]] = []
    elastic = rng.random() < ELASTIC_SHARE
    if elastic:
        workers = round(math.exp(rng.uniform(0.0, math.log(shape.max_workers))))
        cores = rng.randint(1, 4)
        memory = rng.randint(2, 16) * GIB
        specs.append((1.0, 4 * GIB, True))
        specs.extend((float(cores), memory, n == 0) for n in range(workers))
    else:
        count = rng.randint(2, shape.max_rigid)
        cores = rng.randint(1, 4)
        memory = rng.randint(2, 8) * GIB
        specs.extend((float(cores), memory, True) for _ in range(count))
    instances = tuple(
        InstanceReq(
            id=first_id + n,
            execution_id=app_id,
            cores=c,
            memory=m,
            labels=frozenset(),
            essential=essential,
        )
        for n, (c, m, essential) in enumerate(specs)
    )
    work = runtime * sum(i.cores for i in instances)
    size = work * rng.lognormvariate(0.0, SIZE_ERROR_SIGMA)
    return App(
        id=app_id,
        arrival=0.0,
        runtime=runtime,
        size=size,
        elastic=elastic,
        instances=instances,
    )


def rigid(workload: Workload) -> Workload:
    """The same workload with every instance essential (the rigid baseline)."""
    apps = tuple(
        replace(a, elastic=False, instances=tuple(replace(i, essential=True) for i in a.instances))
        for a in workload.apps
    )
    return replace(workload, apps=apps)

"""Speed of a scheduling pass: the core alone, and the service's pass on PostgreSQL.

    python tests/bench/scheduler_perf.py --nodes 1000 --queued 10000 --json
    python tests/bench/scheduler_perf.py --grid     # 100/1k/10k nodes x 100/1k/10k queued

Cluster: nodes of 32 cores and 128 GiB, a tenth labelled ``ssd``; applications drawn from
the simulator's default mix, a twentieth of them needing ``ssd``.

The core (`schedule()` alone: no database, no broker), the bench applying its decisions
as the service would (stops put the instances back among their execution's pending
ones; an execution they do not touch stays the same object) and keeping what the core
derives from the snapshot between passes (a `core.Kept`), as the service does:

- *cold*: `--queued` executions submitted to an empty cluster, one pass:
  ``placements_per_s`` is the instances it placed divided by its time.
- *steady*: a full cluster with `--queued` executions waiting; then, before each pass,
  1 % as many running executions as there are nodes finish and as many new ones arrive.
  ``p50_pass_ms`` and ``p99_pass_ms`` come from these passes (wall-clock time), and
  ``cpu_p50_pass_ms`` and ``cpu_p99_pass_ms`` from the CPU time the passes used, which
  other work on a shared machine disturbs less.
- *overload*: the same, except that arrivals also top the queue back up to `--queued`
  (up to 4x the departures per pass): executions pile up, most shrunk to their essential
  instances by reclaiming. The worst case for a pass; reported beside.

The service (``service``, ``service_*``; skipped with ``--core-only``): the steady
measure again, but each pass is the scheduler service's own
(``passes.ClusterView.run_pass``: admit the new executions, dispatch the placed ones
that waited, bring the view up to date, the core, the guarded writes, the pending
reasons) on a PostgreSQL database made for the run (``ZOE_BENCH_PG_BASE``), for
`--service-passes` passes, after 10 passes that let the fill settle (the reclaimed
instances' ends, the waves of reclaims by executions that aged while the cluster
filled; their p50 and p99 are reported as ``settling_p50_p99_pass_ms``). Executions
arrive as the api stores them (one statement) and ``ExecutionSubmitted`` says; they end
as in the service: a termination (``on_terminate``), then the verdicts that their
containers are gone; reclaimed instances stop (their verdicts) before the next pass. ``in_memory`` keeps the view
between passes (``services/scheduler/view.py``); ``read_every_pass`` reads it from the
database at each pass, as the scheduler did before, for the ratio. Times are the
scheduler process's (the database's CPU is not counted in ``cpu_*``).

Every core measure is repeated with 1,000 queued executions when `--queued` is another
number. ``fair`` reports steady passes of the fair policy (``dynsize+fair``, Dominant
Resource Fairness between users) on `--nodes` nodes with 1,000 queued executions
submitted by 100 users (``--users`` spreads the main measures' executions over that many
users too). ``--scaling`` measures the core on a grid of node counts and queue lengths;
``--grid`` measures the core and the service on 100/1k/10k nodes x 100/1k/10k queued
and writes a plot (``--plot``, default docs/img/scheduler_cost.png).
The pool of applications is frozen out of the garbage collector's reach (`gc.freeze()`),
as a long-running service would do after loading its state.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import structlog  # noqa: E402

from common import db  # noqa: E402
from common import messages as m  # noqa: E402
from common import states as st  # noqa: E402
from services.scheduler import collector, ends, handlers, passes  # noqa: E402
from services.scheduler.core import (  # noqa: E402
    ExecutionState,
    InstanceReq,
    Kept,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.view import Changes  # noqa: E402
from services.scheduler.workload import GIB, App, make_workload  # noqa: E402

SSD = frozenset({"ssd"})

Figures = dict[str, float | int]
ServiceFigures = dict[str, Any]


class Bench:
    """A cluster and its executions, kept the way the service keeps them between passes."""

    def __init__(
        self, nodes: int, seed: int, policy: Policy, supply: int, users: int = 1, keep: bool = True
    ) -> None:
        self.rng = random.Random(seed)
        self.policy = policy
        self.users = users
        self.nodes = [
            NodeState(
                name=f"n{i:05d}",
                cores=32.0,
                memory=128 * GIB,
                labels=SSD if i % 10 == 0 else frozenset(),
            )
            for i in range(nodes)
        ]
        self.pool = self.supply(seed, supply)
        self.states: dict[int, ExecutionState] = {}
        self.owner: dict[int, int] = {}
        self.now = 0.0
        self.cpu: list[float] = []
        # what a pass derives from the snapshot, kept between passes as the service does
        self.kept: Kept | None = Kept() if keep else None

    def _apps(
        self, seed: int, count: int, skip: int = 0, rng: random.Random | None = None
    ) -> list[App]:
        rng = rng or self.rng
        out = []
        for app in make_workload("default", seed, apps=count).apps[skip:]:
            if rng.random() < 0.05:
                app = replace(app, instances=tuple(replace(i, labels=SSD) for i in app.instances))
            out.append(app)
        return out

    def supply(self, seed: int, count: int) -> Iterator[App]:
        """`count` applications (made now), then as many more as asked for (a queue that
        keeps growing under overload on a large cluster outlasts any count set
        beforehand): the workload drawn again twice as long, its first ones skipped."""
        return itertools.chain(self._apps(seed, count), self._more(seed, count))

    def _more(self, seed: int, count: int) -> Iterator[App]:
        more = random.Random(f"more-{seed}")
        while True:
            yield from self._apps(seed, count * 2, skip=count, rng=more)
            count *= 2

    def submit(self, count: int) -> None:
        """Submit `count` new executions."""
        for _ in range(count):
            app = next(self.pool)
            self.now += 0.01
            self.states[app.id] = ExecutionState(
                id=app.id,
                submitted_at=self.now,
                size=app.size,
                pending=app.instances,
                user=f"u{app.id % self.users}" if self.users > 1 else "",
            )
            for inst in app.instances:
                self.owner[inst.id] = app.id

    def step(self) -> tuple[float, int]:
        """Run one pass and apply it; return its duration and the instances it started.
        The CPU time the pass used is added to `cpu`."""
        execs = list(self.states.values())
        self.now += 1.0
        began, began_cpu = time.perf_counter(), time.process_time()
        decisions = schedule(self.nodes, execs, now=self.now, policy=self.policy, kept=self.kept)
        elapsed = time.perf_counter() - began
        self.cpu.append(time.process_time() - began_cpu)
        self._apply(decisions.starts, decisions.stops)
        return elapsed, len(decisions.starts)

    def _apply(self, starts: list[tuple[int, str]], stops: list[int]) -> None:
        touched: dict[int, tuple[dict[int, InstanceReq], dict[int, tuple[InstanceReq, str]]]] = {}
        for inst_id in stops:
            pending, placed = self._entry(touched, self.owner[inst_id])
            inst, _ = placed.pop(inst_id)
            pending[inst_id] = inst
        for inst_id, node in starts:
            pending, placed = self._entry(touched, self.owner[inst_id])
            placed[inst_id] = (pending.pop(inst_id), node)
        for ex_id, (pending, placed) in touched.items():
            self.states[ex_id] = replace(
                self.states[ex_id], pending=tuple(pending.values()), placed=tuple(placed.values())
            )

    def _entry(
        self,
        touched: dict[int, tuple[dict[int, InstanceReq], dict[int, tuple[InstanceReq, str]]]],
        ex_id: int,
    ) -> tuple[dict[int, InstanceReq], dict[int, tuple[InstanceReq, str]]]:
        if ex_id not in touched:
            st = self.states[ex_id]
            touched[ex_id] = ({i.id: i for i in st.pending}, {p[0].id: p for p in st.placed})
        return touched[ex_id]

    def finish(self, count: int) -> None:
        """End `count` running executions picked at random."""
        running = [s.id for s in self.states.values() if not _waiting(s)]
        for ex_id in self.rng.sample(running, min(count, len(running))):
            del self.states[ex_id]

    def waiting(self) -> int:
        """How many executions wait for their essential set."""
        return sum(1 for s in self.states.values() if _waiting(s))


def _waiting(state: ExecutionState) -> bool:
    return any(i.essential for i in state.pending)


def _pcts(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return round(1000 * statistics.median(ordered), 2), round(1000 * p99, 2)


def cold(nodes: int, queued: int, seed: int, policy: Policy, users: int = 1) -> Figures:
    """One pass over `queued` executions on an empty cluster."""
    bench = Bench(nodes, seed, policy, queued, users)
    bench.submit(queued)
    gc.collect()
    gc.freeze()
    elapsed, placed = bench.step()
    gc.unfreeze()
    return {
        "cold_pass_ms": round(elapsed * 1000, 1),
        "cold_placements": placed,
        "placements_per_s": round(placed / elapsed),
    }


def churn(
    nodes: int,
    queued: int,
    passes: int,
    seed: int,
    policy: Policy,
    top_up: bool,
    users: int = 1,
) -> Figures:
    """Passes over a full cluster with `queued` executions waiting, under churn."""
    departures = max(1, nodes // 100)
    bench = Bench(nodes, seed, policy, queued * 3 + 4000 + passes * departures * 5, users)
    bench.submit(queued)
    bench.step()
    while bench.waiting() < queued:  # fill the cluster until the queue is as long as asked
        bench.submit(queued - bench.waiting())
        bench.step()
    gc.collect()
    gc.freeze()
    bench.cpu.clear()
    times: list[float] = []
    placed = waiting = active = 0
    for _ in range(passes):
        bench.finish(departures)
        extra = min(4 * departures, max(0, queued - bench.waiting())) if top_up else 0
        bench.submit(departures + extra)
        waiting += bench.waiting()
        active += len(bench.states)
        elapsed, started = bench.step()
        times.append(elapsed)
        placed += started
    gc.unfreeze()
    p50, p99 = _pcts(times)
    cpu_p50, cpu_p99 = _pcts(bench.cpu)
    return {
        "passes": passes,
        "mean_waiting": round(waiting / passes),
        "mean_executions": round(active / passes),
        "instances_held": sum(len(s.placed) for s in bench.states.values()),
        "p50_pass_ms": p50,
        "p99_pass_ms": p99,
        "cpu_p50_pass_ms": cpu_p50,
        "cpu_p99_pass_ms": cpu_p99,
        "placements_per_s": round(placed / sum(times)),
    }


# ---- the service's pass, on the real PostgreSQL ----------------------------------------

PG_BASE = os.environ.get("ZOE_BENCH_PG_BASE", "postgresql://postgres@127.0.0.1:5432/")
_SPEC = {
    "image": "zoe/bench:1",
    "cores_limit": 1.0,
    "memory_limit": GIB,
    "cores_reserved": 1.0,
    "memory_reserved": GIB,
}


class ServiceBench:
    """The scheduler service's pass (``passes.ClusterView.run_pass``: admit, dispatch,
    the view, the core, the guarded writes, the reasons) on a database of its own.

    ``reread``: the view is read from PostgreSQL at every pass (as before the view was
    kept in memory); else it is kept between passes and learns of the churn by the
    handlers' deltas. Executions end as in the service: a termination (``on_terminate``),
    then the monitor's verdicts that their containers are gone (``ends.apply_ends``)."""

    def __init__(
        self, pool: asyncpg.Pool, nodes: int, seed: int, policy: Policy, supply: int, reread: bool
    ) -> None:
        self.pool = pool
        self.nodes = nodes
        self.rng = random.Random(seed)
        self.apps = Bench(0, seed, policy, supply).supply(seed, supply)
        self.changes = Changes()
        self.deps = handlers.Deps(
            pool=pool, deployment="bench", request_pass=lambda: None, view=self.changes
        )
        self.view = passes.ClusterView(pool, "bench", policy, None if reread else self.changes)
        self.cpu: list[float] = []

    async def setup(self) -> None:
        await self.pool.execute("TRUNCATE executions, nodes, outbox, orphans CASCADE")
        await self.pool.execute(
            "INSERT INTO nodes (name, cores, memory, labels)"
            " SELECT 'n' || lpad(i::text, 5, '0'), 32, $2,"
            "  CASE WHEN i % 10 = 0 THEN ARRAY['ssd'] ELSE '{}'::text[] END"
            " FROM generate_series(0, $1 - 1) AS i",
            self.nodes,
            128 * GIB,
        )

    async def submit(self, count: int) -> None:
        """Store `count` executions as the api does, and tell the scheduler."""
        apps = [next(self.apps) for _ in range(count)]
        if not apps:
            return
        ids = [a.id for a in apps]
        await self.pool.execute(
            "INSERT INTO executions (id, name, description, will_end, size)"
            " SELECT id, 'bench', '{}', true, size FROM unnest($1::bigint[], $2::float8[])"
            " AS a(id, size)",
            ids,
            [a.size for a in apps],
        )
        rows = [
            (a.id, f"w{k}", k, i.essential, k == 0, i.cores, i.memory, ",".join(sorted(i.labels)))
            for a in apps
            for k, i in enumerate(a.instances)
        ]
        await self.pool.execute(
            "INSERT INTO instances (execution_id, name, service, idx, essential, monitor,"
            " cores, memory, labels, spec)"
            " SELECT e, n, 'w', k, es, mo, c, m, string_to_array(l, ','), $9::jsonb"
            " FROM unnest($1::bigint[], $2::text[], $3::int[], $4::bool[], $5::bool[],"
            "  $6::float8[], $7::bigint[], $8::text[]) AS r(e, n, k, es, mo, c, m, l)",
            *[list(col) for col in zip(*rows, strict=True)][:7],
            [r[7] for r in rows],
            _SPEC,
        )
        for a in apps:
            await handlers.on_submitted(m.ExecutionSubmitted(execution_id=a.id), self.deps)

    async def finish(self, count: int) -> None:
        """End `count` running executions picked at random, as the service would, and
        tell the ends of every instance being stopped (theirs, and those the last pass
        reclaimed): the executor stops them and the monitor says so between passes."""
        rows = await self.pool.fetch(
            "SELECT id FROM executions WHERE state IN ('starting', 'running')"
        )
        picked = self.rng.sample([r["id"] for r in rows], min(count, len(rows)))
        for ex_id in picked:
            await handlers.on_terminate(
                m.ExecutionTerminateRequested(execution_id=ex_id), self.deps
            )
        ended = await self.pool.fetch(
            "SELECT id, container_name FROM instances WHERE state = 'stopping'"
        )
        touched: set[int] = set()
        async with self.pool.acquire() as conn, conn.transaction():
            await ends.apply_ends(
                conn,
                self.deps.rules,
                [(r["id"], st.End("exited", 0, r["container_name"], gone=True)) for r in ended],
                touched,
            )
        self.changes.executions_changed(touched)
        await self.pool.execute("TRUNCATE outbox")

    async def waiting(self) -> int:
        return int(
            await self.pool.fetchval("SELECT count(*) FROM executions WHERE state = 'queued'")
        )

    async def turn(self, departures: int) -> tuple[float, int]:
        """`departures` executions end, as many arrive, and a pass runs (`step`)."""
        await self.finish(departures)
        await self.submit(departures)
        return await self.step()

    async def step(self) -> tuple[float, int]:
        began, began_cpu = time.perf_counter(), time.process_time()
        decisions, _ = await self.view.run_pass()
        elapsed = time.perf_counter() - began
        self.cpu.append(time.process_time() - began_cpu)
        return elapsed, len(decisions.starts)


SETTLE = 10  # passes of the service run before those measured (`_service_churn`)


async def _service_churn(
    url: str, nodes: int, queued: int, passes_: int, seed: int, policy: Policy, reread: bool
) -> ServiceFigures:
    departures = max(1, nodes // 100)
    thresholds = gc.get_threshold()
    async with db.pool(url, max_size=4) as pool:
        bench = ServiceBench(
            pool, nodes, seed, policy, queued * 3 + 4000 + nodes * 3 + passes_ * departures, reread
        )
        # The garbage collector as the scheduler process has it (collector.py): what
        # was made to start frozen out of its reach (here the bench's supply of
        # applications too, which is not the scheduler's), full collections between passes.
        collector.install()
        try:
            await bench.setup()
            await bench.submit(queued)
            await bench.step()
            while (waiting := await bench.waiting()) < queued:
                await bench.submit(queued - waiting)
                await bench.step()
                await pool.execute("TRUNCATE outbox")
            # The first passes after the fill are not steady: the stops of the fill's
            # reclaims end, the instances placed in their room start, and the waiting
            # executions aged during the fill reclaim in waves. Timed apart.
            settling: list[float] = []
            for _ in range(SETTLE):
                settling.append((await bench.turn(departures))[0])
            full = collector.FullCollections()
            collections: list[float] = []
            bench.cpu.clear()
            times: list[float] = []
            placed = 0
            for _ in range(passes_):
                elapsed, started = await bench.turn(departures)
                times.append(elapsed)
                placed += started
                spent = full.after_pass(busy=False)
                if spent is not None:
                    collections.append(spent * 1000)
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
        held = await pool.fetchval(
            "SELECT count(*) FROM instances WHERE state IN ('placed', 'starting', 'running')"
        )
        reloads = bench.changes.full
    p50, p99 = _pcts(times)
    cpu_p50, cpu_p99 = _pcts(bench.cpu)
    return {
        "view": "read every pass" if reread else "in memory",
        "passes": passes_,
        "instances_held": int(held),
        "p50_pass_ms": p50,
        "p99_pass_ms": p99,
        "cpu_p50_pass_ms": cpu_p50,
        "cpu_p99_pass_ms": cpu_p99,
        "cpu_ms_per_placement": round(1000 * sum(bench.cpu) / max(1, placed), 3),
        "placements": placed,
        "pending_full_reload": reloads,
        # between passes (not in their times): how many, and the CPU of the longest
        "full_collections": len(collections),
        "full_collection_cpu_max_ms": round(max(collections, default=0.0), 2),
        # the passes before the measured ones (wall-clock): the settling after the fill
        "settling_passes": SETTLE,
        "settling_p50_p99_pass_ms": list(_pcts(settling)),
    }


def service(
    nodes: int, queued: int, passes_: int, seed: int, policy: Policy, reread: bool
) -> ServiceFigures:
    """Steady passes of the service (`ServiceBench`) on a database made for the run."""
    # the service's logs (a line per pass applied) to stderr, warnings and worse only
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    name = f"zoe_bench_sched_{os.getpid()}"
    url = PG_BASE.rstrip("/") + "/" + name

    async def run() -> ServiceFigures:
        await db.migrate(url)
        try:
            return await _service_churn(url, nodes, queued, passes_, seed, policy, reread)
        finally:
            conn = await asyncpg.connect(PG_BASE)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

    return asyncio.run(run())


def measure(
    nodes: int, queued: int, passes: int, seed: int, policy: Policy, users: int = 1
) -> dict[str, object]:
    """All three measures for one queue length."""
    figures: dict[str, object] = {"nodes": nodes, "queued": queued}
    figures.update(cold(nodes, queued, seed, policy, users))
    steady = churn(nodes, queued, passes, seed, policy, top_up=False, users=users)
    figures["p50_pass_ms"] = steady["p50_pass_ms"]
    figures["p99_pass_ms"] = steady["p99_pass_ms"]
    figures["cpu_p99_pass_ms"] = steady["cpu_p99_pass_ms"]
    figures["steady"] = steady
    figures["overload"] = churn(
        nodes, queued, max(1, passes // 2), seed, policy, top_up=True, users=users
    )
    return figures


def scaling(passes: int, seed: int, policy: Policy) -> list[dict[str, object]]:
    """How the cost of a pass grows with the node count and the queue length."""
    rows: list[dict[str, object]] = []
    for nodes in (100, 300, 1000):
        for queued in (100, 1000, 10000):
            steady = churn(nodes, queued, passes, seed, policy, top_up=False)
            rows.append(
                {
                    "nodes": nodes,
                    "queued": queued,
                    "executions": steady["mean_executions"],
                    "instances_held": steady["instances_held"],
                    **cold(nodes, queued, seed, policy),
                    "p50_pass_ms": steady["p50_pass_ms"],
                    "p99_pass_ms": steady["p99_pass_ms"],
                }
            )
    return rows


GRID = (100, 1000, 10000)


def grid(passes_: int, service_passes: int, seed: int, policy: Policy) -> list[dict[str, object]]:
    """How a pass's cost grows: the core alone and the service's pass (view in memory),
    for every node count and queue length of `GRID`."""
    rows: list[dict[str, object]] = []
    for nodes in GRID:
        for queued in GRID:
            core = churn(nodes, queued, passes_, seed, policy, top_up=False)
            svc = service(nodes, queued, service_passes, seed, policy, False)
            rows.append(
                {
                    "nodes": nodes,
                    "queued": queued,
                    "executions": core["mean_executions"],
                    "instances_held": svc["instances_held"],
                    "core_p50_pass_ms": core["p50_pass_ms"],
                    "core_p99_pass_ms": core["p99_pass_ms"],
                    "core_cpu_p99_pass_ms": core["cpu_p99_pass_ms"],
                    "p50_pass_ms": svc["p50_pass_ms"],
                    "p99_pass_ms": svc["p99_pass_ms"],
                    "cpu_p99_pass_ms": svc["cpu_p99_pass_ms"],
                    "cpu_ms_per_placement": svc["cpu_ms_per_placement"],
                    "full_collections": svc["full_collections"],
                    "full_collection_cpu_max_ms": svc["full_collection_cpu_max_ms"],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def plot(rows: list[dict[str, object]], path: Path) -> None:
    """CPU time of a pass (p99) and CPU per placed instance against the queue length, a
    line per node count, on log scales (CPU time: wall-clock time on a shared machine
    measures the others' load as much)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for nodes in GRID:
        mine = [r for r in rows if r["nodes"] == nodes]
        queued = [r["queued"] for r in mine]
        (line,) = left.plot(
            queued, [r["cpu_p99_pass_ms"] for r in mine], "o-", label=f"{nodes} nodes"
        )
        left.plot(
            queued,
            [r["core_cpu_p99_pass_ms"] for r in mine],
            "x--",
            color=line.get_color(),
            alpha=0.6,
        )
        right.plot(queued, [r["cpu_ms_per_placement"] for r in mine], "o-", label=f"{nodes} nodes")
    left.set_title("CPU p99 of a pass (solid: service, view in memory; dashed: core)", fontsize=10)
    left.set_ylabel("ms of CPU")
    right.set_title("scheduler CPU per instance placed (service)", fontsize=10)
    right.set_ylabel("ms of CPU")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("executions queued")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print the figures as text or JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=10000)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", default="dynsize")
    parser.add_argument("--users", type=int, default=1, help="users submitting (default 1)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-fair", action="store_true", help="skip the fair policy's measure")
    parser.add_argument(
        "--scaling", action="store_true", help="a grid of node counts and queue lengths"
    )
    parser.add_argument(
        "--core-only", action="store_true", help="skip the service's pass on PostgreSQL"
    )
    parser.add_argument(
        "--service-passes", type=int, default=50, help="passes of the service measured (50)"
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="100/1k/10k nodes x 100/1k/10k queued: JSON, and a plot (--plot)",
    )
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "scheduler_cost.png"))
    args = parser.parse_args(argv)
    policy = Policy.from_name(args.policy)
    if args.grid:
        rows = grid(args.passes, args.service_passes, args.seed, policy)
        plot(rows, Path(args.plot))
        print(json.dumps({"policy": str(policy), "plot": args.plot, "grid": rows}, indent=2))
        return 0
    if args.scaling:
        rows = scaling(args.passes, args.seed, policy)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print("  ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    figures: dict[str, object] = {"policy": str(policy)}
    figures.update(measure(args.nodes, args.queued, args.passes, args.seed, policy, args.users))
    if args.queued != 1000:
        small = measure(args.nodes, 1000, args.passes, args.seed, policy, args.users)
        figures["p99_pass_ms_1000_queued"] = small["p99_pass_ms"]
        figures["cpu_p99_pass_ms_1000_queued"] = small["cpu_p99_pass_ms"]
        figures["queued_1000"] = small
    if not args.core_only:
        kept = service(args.nodes, args.queued, args.service_passes, args.seed, policy, False)
        reread = service(args.nodes, args.queued, args.service_passes, args.seed, policy, True)
        figures["service_p99_pass_ms"] = kept["p99_pass_ms"]
        figures["service_cpu_p99_pass_ms"] = kept["cpu_p99_pass_ms"]
        figures["service_read_every_pass_p99_pass_ms"] = reread["p99_pass_ms"]
        figures["service_read_every_pass_cpu_p99_pass_ms"] = reread["cpu_p99_pass_ms"]
        figures["service_p99_ratio"] = round(reread["p99_pass_ms"] / kept["p99_pass_ms"], 2)
        figures["service"] = {"in_memory": kept, "read_every_pass": reread}
    if not args.no_fair:
        fair = Policy.from_name("fair")
        steady = churn(args.nodes, 1000, args.passes, args.seed, fair, top_up=False, users=100)
        figures["fair_p99_pass_ms_1000_queued_100_users"] = steady["p99_pass_ms"]
        figures["fair"] = {"policy": str(fair), "users": 100, "queued": 1000, **steady}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

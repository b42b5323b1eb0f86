"""Speed of the scheduling core alone (no database, no broker): not a test, prints figures.

    python tests/bench/scheduler_perf.py --nodes 1000 --queued 10000 --json

Cluster: nodes of 32 cores and 128 GiB, a tenth labelled ``ssd``; applications drawn from
the simulator's default mix, a twentieth of them needing ``ssd``. Only `schedule()` is
timed; the bench applies its decisions as the service would (stops put the instances
back among their execution's pending ones).

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

Every measure is repeated with 1,000 queued executions when `--queued` is another number.
``fair`` reports steady passes of the fair policy (``dynsize+fair``, Dominant Resource
Fairness between users) on `--nodes` nodes with 1,000 queued executions submitted by 100
users (``--users`` spreads the main measures' executions over that many users too).
``--scaling`` instead measures a grid of node counts and queue lengths.
The pool of applications is frozen out of the garbage collector's reach (`gc.freeze()`),
as a long-running service would do after loading its state.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.scheduler.core import (
    ExecutionState,
    InstanceReq,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.workload import GIB, App, make_workload

SSD = frozenset({"ssd"})

Figures = dict[str, float | int]


class Bench:
    """A cluster and its executions, kept the way the service keeps them between passes."""

    def __init__(self, nodes: int, seed: int, policy: Policy, supply: int, users: int = 1) -> None:
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
        self.pool = iter(self._apps(seed, supply))
        self.states: dict[int, ExecutionState] = {}
        self.owner: dict[int, int] = {}
        self.now = 0.0
        self.cpu: list[float] = []

    def _apps(self, seed: int, count: int) -> list[App]:
        out = []
        for app in make_workload("default", seed, apps=count).apps:
            if self.rng.random() < 0.05:
                app = replace(app, instances=tuple(replace(i, labels=SSD) for i in app.instances))
            out.append(app)
        return out

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
        decisions = schedule(self.nodes, execs, now=self.now, policy=self.policy)
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
    args = parser.parse_args(argv)
    policy = Policy.from_name(args.policy)
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

"""Discrete-event simulation of a workload driven by the real `schedule()` function.

Every arrival and every completion triggers one pass at that simulated time; the
decisions are applied as the service would apply them (stops first, stopped elastic
instances become pending again, then starts). An elastic application with k of its n
instances up progresses at k/n of its nominal speed; a rigid one runs only complete.

Run ``python -m services.scheduler.simulator --policy all`` (or ``zoe simulate``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .core import ExecutionState, InstanceReq, Policy, schedule
from .invariants import check_decisions
from .model import Decisions
from .placement import millicores
from .policies import InvalidPolicy
from .workload import SHAPES, App, Workload, make_workload, rigid

ALL_POLICIES = (
    "rigid-fifo",
    "rigid-backfill",
    "flexible",
    "flexible+size",
    "fifo",
    "size",
    "dynsize+noreclaim",
    "dynsize+spread",
    "dynsize",
)

EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Variant:
    """A simulator policy label: a core policy, on the workload as is or made rigid."""

    label: str
    policy: Policy
    rigid: bool

    @classmethod
    def parse(cls, label: str) -> Variant:
        """``rigid-fifo`` is strict FIFO with every instance essential (the paper's
        baseline); ``rigid-backfill`` is the same with backfilling; ``rigid-P`` runs any
        policy P on the rigid workload; anything else is a core policy string."""
        if label == "rigid-fifo":
            return cls(label, Policy.from_name("flexible"), True)
        if label == "rigid-backfill":
            return cls(label, Policy.from_name("fifo"), True)
        if label.startswith("rigid-"):
            return cls(label, Policy.from_name(label.removeprefix("rigid-")), True)
        return cls(label, Policy.from_name(label), False)


@dataclass(slots=True)
class _Run:
    """Mutable simulation state of one application."""

    app: App
    pending: dict[int, InstanceReq]
    placed: dict[int, tuple[InstanceReq, str]] = field(default_factory=dict)
    remaining: float = 0.0
    rate: float = 0.0
    last: float = 0.0
    version: int = 0
    started: float | None = None
    finished: float | None = None
    state: ExecutionState | None = None

    def snapshot(self) -> ExecutionState:
        if self.state is None:
            self.state = ExecutionState(
                id=self.app.id,
                submitted_at=self.app.arrival,
                size=self.app.size,
                priority=self.app.priority,
                pending=tuple(self.pending.values()),
                placed=tuple(self.placed.values()),
            )
        return self.state

    def current_rate(self) -> float:
        if any(i.essential for i in self.pending.values()):
            return 0.0
        return len(self.placed) / len(self.app.instances)


@dataclass(frozen=True, slots=True)
class Result:
    """Figures of one simulated run."""

    policy: str
    apps: int
    finished: int
    mean_turnaround: float
    median_turnaround: float
    p95_turnaround: float
    mean_slowdown: float
    mean_queue_time: float
    utilisation: float
    reclaimed: int
    makespan: float
    passes: int
    mean_pass_ms: float
    turnarounds: tuple[float, ...] = field(repr=False, default=())

    def figures(self) -> dict[str, float | int | str]:
        """The summary as a JSON-ready mapping (without the per-app turnarounds)."""
        return {
            "policy": self.policy,
            "apps": self.apps,
            "finished": self.finished,
            "mean_turnaround_s": round(self.mean_turnaround, 1),
            "median_turnaround_s": round(self.median_turnaround, 1),
            "p95_turnaround_s": round(self.p95_turnaround, 1),
            "mean_slowdown": round(self.mean_slowdown, 2),
            "mean_queue_time_s": round(self.mean_queue_time, 1),
            "utilisation": round(self.utilisation, 4),
            "reclaimed": self.reclaimed,
            "makespan_s": round(self.makespan, 1),
            "passes": self.passes,
            "mean_pass_ms": round(self.mean_pass_ms, 3),
        }


class InvariantBroken(AssertionError):
    """A decision broke a scheduling rule (only checked when asked)."""


class Simulation:
    """One workload under one policy; `run()` plays it to the end."""

    def __init__(self, workload: Workload, variant: Variant, *, check: bool = False) -> None:
        self.workload = rigid(workload) if variant.rigid else workload
        self.variant = variant
        self.check = check
        self.nodes = self.workload.nodes
        self.cap_c = {n.name: millicores(n.cores) for n in self.nodes}
        self.cap_m = {n.name: n.memory for n in self.nodes}
        self.owner = {i.id: a.id for a in self.workload.apps for i in a.instances}
        self.runs: dict[int, _Run] = {}
        self.active: dict[int, _Run] = {}
        self.finishes: list[tuple[float, int, int]] = []
        self.used_c = 0
        self.busy_integral = 0.0
        self.clock = 0.0
        self.reclaimed = 0
        self.passes = 0
        self.pass_time = 0.0

    def run(self) -> Result:
        """Play every arrival and completion; return the figures."""
        apps = sorted(self.workload.apps, key=lambda a: (a.arrival, a.id))
        nxt = 0
        while nxt < len(apps) or self.finishes:
            t_arr = apps[nxt].arrival if nxt < len(apps) else math.inf
            t_fin = self.finishes[0][0] if self.finishes else math.inf
            now = min(t_arr, t_fin)
            changed = False
            while self.finishes and self.finishes[0][0] <= now:
                _, app_id, version = heapq.heappop(self.finishes)
                run = self.runs[app_id]
                if run.version == version and run.finished is None:
                    self._advance(now)
                    self._finish(run, now)
                    changed = True
            while nxt < len(apps) and apps[nxt].arrival <= now:
                self._advance(now)
                self._arrive(apps[nxt], now)
                nxt += 1
                changed = True
            if changed:
                self._pass(now)
        return self._result()

    # -- events --------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        self.busy_integral += self.used_c * (now - self.clock)
        self.clock = now

    def _arrive(self, app: App, now: float) -> None:
        run = _Run(app=app, pending={i.id: i for i in app.instances}, remaining=app.runtime)
        run.last = now
        self.runs[app.id] = run
        self.active[app.id] = run

    def _finish(self, run: _Run, now: float) -> None:
        run.finished = now
        for inst, _ in run.placed.values():
            self.used_c -= millicores(inst.cores)
        run.placed.clear()
        del self.active[run.app.id]

    def _pass(self, now: float) -> None:
        if not self.active:
            return
        states = [r.snapshot() for r in self.active.values()]
        began = time.perf_counter()
        decisions = schedule(self.nodes, states, now=now, policy=self.variant.policy)
        self.pass_time += time.perf_counter() - began
        self.passes += 1
        if self.check:
            self._verify(states, decisions, now)
        touched: dict[int, _Run] = {}
        for inst_id in decisions.stops:
            run = self.active[self.owner[inst_id]]
            inst, _ = run.placed.pop(inst_id)
            run.pending[inst_id] = inst
            self.used_c -= millicores(inst.cores)
            self.reclaimed += 1
            touched[run.app.id] = run
        for inst_id, node in decisions.starts:
            run = self.active[self.owner[inst_id]]
            inst = run.pending.pop(inst_id)
            run.placed[inst_id] = (inst, node)
            self.used_c += millicores(inst.cores)
            touched[run.app.id] = run
        for run in touched.values():
            run.state = None
            self._reschedule(run, now)

    def _reschedule(self, run: _Run, now: float) -> None:
        run.remaining -= run.rate * (now - run.last)
        run.last = now
        run.rate = run.current_rate()
        if run.rate > 0 and run.started is None:
            run.started = now
        run.version += 1
        if run.rate > 0:
            done = now + max(0.0, run.remaining) / run.rate
            heapq.heappush(self.finishes, (done, run.app.id, run.version))

    # -- checks and figures ----------------------------------------------------------

    def _verify(self, states: list[ExecutionState], decisions: Decisions, now: float) -> None:
        problems = check_decisions(self.nodes, states, decisions, now)
        if problems:
            raise InvariantBroken(f"t={now:.1f}: " + "; ".join(problems[:5]))

    def _result(self) -> Result:
        done = [r for r in self.runs.values() if r.finished is not None]
        turn = sorted(r.finished - r.app.arrival for r in done if r.finished is not None)
        slow = [
            (r.finished - r.app.arrival) / r.app.runtime for r in done if r.finished is not None
        ]
        queue = [r.started - r.app.arrival for r in done if r.started is not None]
        first = min((a.arrival for a in self.workload.apps), default=0.0)
        span = max(EPSILON, self.clock - first)
        capacity = sum(self.cap_c.values())
        return Result(
            policy=self.variant.label,
            apps=len(self.workload.apps),
            finished=len(done),
            mean_turnaround=_mean(turn),
            median_turnaround=statistics.median(turn) if turn else 0.0,
            p95_turnaround=_quantile(turn, 0.95),
            mean_slowdown=_mean(slow),
            mean_queue_time=_mean(queue),
            utilisation=self.busy_integral / (capacity * span) if capacity else 0.0,
            reclaimed=self.reclaimed,
            makespan=span,
            passes=self.passes,
            mean_pass_ms=1000.0 * self.pass_time / max(1, self.passes),
            turnarounds=tuple(turn),
        )


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(workload: Workload, labels: Iterable[str], *, check: bool = False) -> list[Result]:
    """Run `workload` under each policy label, in order."""
    return [Simulation(workload, Variant.parse(label), check=check).run() for label in labels]


# -- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoe simulate", description="Simulate a workload under scheduling policies."
    )
    parser.add_argument("--workload", default="default", choices=sorted(SHAPES))
    parser.add_argument(
        "--policy",
        default="all",
        help="a policy (e.g. dynsize, dynsize+pack, flexible, rigid-fifo), a comma-separated "
        "list, or 'all'",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--apps", type=int, default=None, help="number of applications")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="also draw the turnaround CDF here")
    parser.add_argument("--check", action="store_true", help="verify every decision")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``zoe simulate``: run, then print a table or JSON."""
    from .report import plot_turnarounds, render_table

    args = _parser().parse_args(argv)
    labels = list(ALL_POLICIES) if args.policy == "all" else args.policy.split(",")
    try:
        for label in labels:
            Variant.parse(label)
        workload = make_workload(args.workload, args.seed, args.load, args.apps)
    except (InvalidPolicy, ValueError) as exc:
        print(f"zoe simulate: {exc}", file=sys.stderr)
        return 2
    results = simulate(workload, labels, check=args.check)
    if args.json:
        doc = {
            "workload": args.workload,
            "seed": args.seed,
            "load": args.load,
            "apps": len(workload.apps),
            "results": [r.figures() for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(workload, args.seed, results))
    if args.plot:
        floor = [a.runtime for a in workload.apps]
        plot_turnarounds(results, args.plot, title=_title(workload, args.seed), floor=floor)
    return 0


def _title(workload: Workload, seed: int) -> str:
    return (
        f"{workload.name} workload: {len(workload.apps)} apps, load {workload.load:g}, seed {seed}"
    )


if __name__ == "__main__":
    sys.exit(main())

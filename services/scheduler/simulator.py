"""Discrete-event simulation of a workload driven by the real `schedule()` function.

Every arrival and every completion triggers one pass at that simulated time; the
decisions are applied as the service would apply them (stops first, stopped elastic
instances become pending again, then starts). An elastic application with k of its n
instances up progresses at k/n of its nominal speed; a rigid one runs only complete.

Run ``python -m services.scheduler.simulator --policy all`` (or ``zoe simulate``).
"""

from __future__ import annotations

import heapq
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .core import ExecutionState, InstanceReq, Kept, Policy, schedule
from .fairness import heaviest, jain_index, per_user_slowdown, worst_ratio
from .invariants import check_decisions
from .model import Decisions
from .placement import millicores
from .workload import App, Workload, rigid

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
    "fair",
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
                user=self.app.user,
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
    per_user: dict[str, float] = field(default_factory=dict)
    # each user's mean slowdown with its applications alone on the cluster (multi-user runs)
    per_user_alone: dict[str, float] = field(default_factory=dict)

    @property
    def worst_user_mean_slowdown(self) -> float:
        return max(self.per_user.values(), default=0.0)

    @property
    def jain_index(self) -> float:
        return jain_index(self.per_user.values())

    @property
    def worst_light_user_vs_alone(self) -> float:
        """The largest ratio, over users but the heaviest, of its mean slowdown to the
        one it gets alone."""
        return worst_ratio(self.per_user, self.per_user_alone, self.heavy_user)

    heavy_user: str | None = None

    def figures(self) -> dict[str, Any]:
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
            "per_user": {u: round(v, 3) for u, v in self.per_user.items()},
            "worst_user_mean_slowdown": round(self.worst_user_mean_slowdown, 3),
            "jain_index": round(self.jain_index, 4),
        } | (
            {
                "per_user_alone": {u: round(v, 3) for u, v in self.per_user_alone.items()},
                "worst_light_user_vs_alone": round(self.worst_light_user_vs_alone, 3),
            }
            if self.per_user_alone
            else {}
        )


class InvariantBroken(AssertionError):
    """A decision broke a scheduling rule (only checked when asked)."""


class Simulation:
    """One workload under one policy; `run()` plays it to the end."""

    def __init__(
        self,
        workload: Workload,
        variant: Variant,
        *,
        check: bool = False,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self.workload = rigid(workload) if variant.rigid else workload
        self.variant = variant
        self.check = check
        self.weights = weights or {}
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
        self.kept = Kept()  # what the core derives from the snapshot, as the service keeps it

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
        decisions = schedule(
            self.nodes,
            states,
            now=now,
            policy=self.variant.policy,
            weights=self.weights,
            kept=self.kept,
        )
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
        per_user = per_user_slowdown(
            (r.app.user, (r.finished - r.app.arrival) / r.app.runtime)
            for r in done
            if r.finished is not None
        )
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
            per_user=per_user,
        )


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(
    workload: Workload,
    labels: Iterable[str],
    *,
    check: bool = False,
    weights: Mapping[str, float] | None = None,
) -> list[Result]:
    """Run `workload` under each policy label, in order. With several users, each user
    but the heaviest is also run alone (its applications only, same policy): what it
    would get on a cluster of its own."""
    counts = Counter(a.user for a in workload.apps)
    results = []
    for label in labels:
        variant = Variant.parse(label)
        result = Simulation(workload, variant, check=check, weights=weights).run()
        if len(counts) > 1:
            heavy = heaviest(counts)
            alone = {}
            for user in counts:
                if user == heavy:
                    continue
                own = replace(workload, apps=tuple(a for a in workload.apps if a.user == user))
                alone[user] = Simulation(own, variant, weights=weights).run().per_user[user]
            result = replace(result, per_user_alone=alone, heavy_user=heavy)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``zoe simulate`` (services/scheduler/simulate_cli.py)."""
    from .simulate_cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())

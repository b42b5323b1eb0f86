"""The original Zoe "flexible" heuristic (Pace et al., CCGrid 2017), kept as a baseline.

On a simulated copy of the cluster, for each queued execution in order: take back the
elastic instances tentatively placed in this pass, place the execution's essential
instances all or nothing, then place elastic instances again for every selected execution
in order. When total free memory did not shrink, that step is undone and the pass stops.
Placement is by container count (spread: fewest, pack: most) among the nodes that fit;
nothing is ever reclaimed. An execution the cluster could not hold even emptied is passed
over (the original stopped at it, and so at everything after it, for ever).
"""

from __future__ import annotations

from collections.abc import Sequence

from . import reasons as R
from .fit import Emptied
from .model import Decisions, ExecutionState, InstanceReq, NodeState, Reason
from .placement import Cluster, millicores
from .policies import Policy, rank_key

Placed = list[tuple[InstanceReq, int]]


class OriginalPass:
    """One pass of the original heuristic over a snapshot of the cluster."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        executions: Sequence[ExecutionState],
        now: float,
        policy: Policy,
    ) -> None:
        self.now = now
        self.most = policy.placement == "pack"
        self.cluster = cluster = Cluster(nodes)
        self.emptied = Emptied(nodes)
        for ex in executions:
            for inst, node in ex.placed:
                idx = cluster.index.get(node, -1)
                if idx >= 0:
                    cluster.hold(idx, millicores(inst.cores), inst.memory)
        cluster.build_index()
        self.free_m = sum(
            max(0, cluster.free_m[i])
            for i in range(len(cluster.names))
            if cluster.node_bucket[i] is not None
        )
        queue = [ex for ex in executions if ex.pending]
        keyed = [
            (rank_key(ex, now, policy, any(i.essential for i in ex.pending)), ex) for ex in queue
        ]
        keyed.sort(key=lambda pair: pair[0])
        self.queue = [ex for _, ex in keyed]

    def run(self) -> Decisions:
        """Serve the queue in order until an execution brings no progress."""
        selected: list[ExecutionState] = []
        essentials: Placed = []
        elastic: Placed = []
        reasons: dict[int, Reason] = {}
        stopped_at: ExecutionState | None = None
        for ex in self.queue:
            gang = [i for i in ex.pending if i.essential]
            if stopped_at is not None:
                if gang:
                    why = self.emptied.never(gang)
                    reasons[ex.id] = (
                        R.words(R.IN_ORDER.format(stopped_at.id))
                        if why is None
                        else R.unschedulable(why)
                    )
                continue
            if not gang and ex.not_before > self.now:
                continue  # only elastic instances in backoff: nothing to do for it now
            why = self.emptied.never(gang)
            if why is not None:
                reasons[ex.id] = R.unschedulable(why)
                continue  # it can never start on this cluster: it stops nothing either
            before = self.free_m
            self._release(elastic)
            placed_gang = self._place_all(gang) if gang else []
            if placed_gang is None:
                reasons[ex.id] = R.blocked(self.cluster, gang, {})
            trial = [*selected, ex] if placed_gang is not None else selected
            trial_elastic = self._grow(trial)
            if self.free_m >= before:
                self._release(trial_elastic)
                self._release(placed_gang or [])
                self._hold(elastic)
                if gang and ex.id not in reasons:
                    reasons[ex.id] = R.blocked(self.cluster, gang, {})
                stopped_at = ex
                continue
            selected = trial
            elastic = trial_elastic
            essentials.extend(placed_gang or [])
        names = self.cluster.names
        starts = [(inst.id, names[idx]) for inst, idx in essentials]
        starts.extend((inst.id, names[idx]) for inst, idx in elastic)
        return Decisions(starts=starts, stops=[], reasons=reasons)

    def _grow(self, selected: list[ExecutionState]) -> Placed:
        placed: Placed = []
        for ex in selected:
            if ex.not_before > self.now:
                continue
            for inst in ex.pending:
                if not inst.essential:
                    idx = self._place(inst)
                    if idx >= 0:
                        placed.append((inst, idx))
        return placed

    def _place_all(self, gang: list[InstanceReq]) -> Placed | None:
        placed: Placed = []
        for inst in gang:
            idx = self._place(inst)
            if idx < 0:
                self._release(placed)
                return None
            placed.append((inst, idx))
        return placed

    def _place(self, inst: InstanceReq) -> int:
        c = millicores(inst.cores)
        idx = self.cluster.by_count(c, inst.memory, inst.labels, self.most)
        if inst.image:  # a node holding the image first (not in the paper: no registry)
            idx = self.cluster.prefer_image(
                idx, c, inst.memory, inst.labels, inst.image, not self.most
            )
        if idx >= 0:
            self.cluster.change(idx, c, inst.memory, 1)
            self.free_m -= inst.memory
        return idx

    def _release(self, placed: Placed) -> None:
        for inst, idx in placed:
            self.cluster.change(idx, -millicores(inst.cores), -inst.memory, -1)
            self.free_m += inst.memory

    def _hold(self, placed: Placed) -> None:
        for inst, idx in placed:
            self.cluster.change(idx, millicores(inst.cores), inst.memory, 1)
            self.free_m -= inst.memory

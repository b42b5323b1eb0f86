"""The scheduling pass of the fifo, size and dynsize policies.

A pass ranks every active execution (priority class, then the policy's order), then:

1. *Essential sets*: for each execution still waiting for its gang, in rank order, place
   all its pending essential instances or none. When they do not fit and reclaiming is
   on, stop elastic instances of executions ranked lower if, and only if, that makes the
   whole set fit. A blocked execution does not stop the pass: executions behind it may
   start (backfilling) until `lookahead` more have been found blocked, unless it has
   waited `reserve_after` seconds, in which case nothing behind it may start.
2. *Elastic growth*: for each running execution in rank order (past its death backoff),
   place pending elastic instances while they fit.

Essential instances are never stopped; a node never holds more than its capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from .model import Decisions, ExecutionState, InstanceReq, NodeState
from .placement import Cluster, millicores
from .policies import Policy, rank_keys

# One elastic instance a pass may reclaim: [rank position, millicores, bytes, instance id].
Victim = tuple[int, int, int, int]


class _Misses:
    """Requests known not to fit in this pass; any larger request with the same labels
    fails too, as long as free capacity only shrinks."""

    __slots__ = ("_by_labels",)

    def __init__(self) -> None:
        self._by_labels: dict[frozenset[str], list[tuple[int, int]]] = {}

    def blocked(self, cores: int, memory: int, labels: frozenset[str]) -> bool:
        for c, m in self._by_labels.get(labels, ()):
            if cores >= c and memory >= m:
                return True
        return False

    def add(self, cores: int, memory: int, labels: frozenset[str]) -> None:
        self._by_labels.setdefault(labels, []).append((cores, memory))


class Pass:
    """One scheduling pass over a snapshot of the cluster and the active executions."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        executions: Sequence[ExecutionState],
        now: float,
        policy: Policy,
    ) -> None:
        self.now = now
        self.policy = policy
        self.cluster = cluster = Cluster(nodes)
        n = len(cluster.names)
        essential = attrgetter("essential")
        waiting = [any(map(essential, ex.pending)) for ex in executions]
        keys = rank_keys(executions, waiting, now, policy)
        order = sorted(range(len(executions)), key=keys.__getitem__)
        self.execs = [executions[i] for i in order]
        self.waiting = [waiting[i] for i in order]
        self.ess_c = [0] * n
        self.ess_m = [0] * n
        self.elastic: list[list[Victim]] = [[] for _ in range(n)]
        self.elastic_c = [0] * n
        self.elastic_m = [0] * n
        self.elastic_by_pos: list[tuple[int, int]] = []
        index = cluster.index
        available = cluster.available
        for pos, ex in enumerate(self.execs):
            held_c = held_m = 0
            for inst, node in ex.placed:
                idx = index.get(node, -1)
                if idx < 0:
                    continue
                c = millicores(inst.cores)
                m = inst.memory
                cluster.hold(idx, c, m)
                if inst.essential:
                    self.ess_c[idx] += c
                    self.ess_m[idx] += m
                elif available[idx]:
                    self.elastic[idx].append((pos, c, m, inst.id))
                    self.elastic_c[idx] += c
                    self.elastic_m[idx] += m
                    held_c += c
                    held_m += m
            self.elastic_by_pos.append((held_c, held_m))
        cluster.build_index()
        live = [i for i in range(n) if cluster.node_bucket[i] is not None]
        self.free_c = sum(max(0, cluster.free_c[i]) for i in live)
        self.free_m = sum(max(0, cluster.free_m[i]) for i in live)
        self.misses = _Misses()
        self.reclaim_misses = _Misses()
        self.sorted_nodes: set[int] = set()
        self.reclaimed: set[int] = set()
        self._suffix: list[tuple[int, int]] | None = None

    # -- the pass ------------------------------------------------------------------

    def run(self) -> Decisions:
        """Place essential sets, then grow elastic executions; return the decisions."""
        running = [not w for w in self.waiting]
        essential_starts: list[tuple[int, int]] = []
        stops: list[int] = []
        reserved = self._essential_sets(running, essential_starts, stops)
        elastic_starts = self._grow(running, reserved)
        names = self.cluster.names
        starts = [(i, names[idx]) for i, idx in essential_starts]
        starts.extend((i, names[idx]) for i, idx in elastic_starts)
        return Decisions(starts=starts, stops=stops)

    def _essential_sets(
        self, running: list[bool], starts: list[tuple[int, int]], stops: list[int]
    ) -> int:
        """Phase 1; returns the rank of an execution holding a reservation, or -1."""
        policy = self.policy
        blocked = 0
        for pos, ex in enumerate(self.execs):
            if running[pos]:
                continue
            gang = sorted(
                (i for i in ex.pending if i.essential),
                key=lambda i: (-i.cores, -i.memory, i.id),
            )
            placed = self._place_gang(gang)
            if placed is None and policy.reclaim:
                found = self._reclaim_for(pos, gang)
                if found is not None:
                    placed, victims = found
                    stops.extend(victims)
                    # Stopping may leave a little more room than before: forget the misses.
                    self.misses = _Misses()
            if placed is None:
                if self.now - ex.submitted_at >= policy.reserve_after:
                    return pos
                blocked += 1
                if blocked > policy.lookahead:
                    return -1
                continue
            running[pos] = True
            starts.extend(placed)
        return -1

    def _grow(self, running: list[bool], reserved: int) -> list[tuple[int, int]]:
        """Phase 2: place pending elastic instances of running executions, in rank order."""
        starts: list[tuple[int, int]] = []
        now = self.now
        limit = reserved if reserved >= 0 and not self.policy.reclaim else len(self.execs)
        for pos in range(limit):
            if self.free_c <= 0 or self.free_m <= 0:
                break
            ex = self.execs[pos]
            if not running[pos] or ex.not_before > now:
                continue
            for inst in ex.pending:
                if inst.essential:
                    continue
                idx = self._place_one(inst, first=True)
                if idx >= 0:
                    starts.append((inst.id, idx))
        return starts

    # -- placing -------------------------------------------------------------------

    def _choose(self, c: int, m: int, labels: frozenset[str]) -> int:
        if self.policy.placement == "spread":
            return self.cluster.worst_fit(c, m, labels)
        return self.cluster.best_fit(c, m, labels)

    def _place_one(self, inst: InstanceReq, first: bool) -> int:
        """Place one instance on free room; -1 when it fits nowhere."""
        c, m, labels = millicores(inst.cores), inst.memory, inst.labels
        if c > self.free_c or m > self.free_m or self.misses.blocked(c, m, labels):
            return -1
        idx = self._choose(c, m, labels)
        if idx < 0:
            if first:
                self.misses.add(c, m, labels)
            return -1
        self._take(idx, c, m, inst.essential)
        return idx

    def _take(self, idx: int, c: int, m: int, essential: bool) -> None:
        self.cluster.change(idx, c, m, 1)
        self.free_c -= c
        self.free_m -= m
        if essential:
            self.ess_c[idx] += c
            self.ess_m[idx] += m

    def _give(self, idx: int, c: int, m: int, essential: bool) -> None:
        self.cluster.change(idx, -c, -m, -1)
        self.free_c += c
        self.free_m += m
        if essential:
            self.ess_c[idx] -= c
            self.ess_m[idx] -= m

    def _place_gang(self, gang: list[InstanceReq]) -> list[tuple[int, int]] | None:
        """Place every instance of `gang` on free room, or nothing."""
        need_c = sum(millicores(i.cores) for i in gang)
        need_m = sum(i.memory for i in gang)
        if need_c > self.free_c or need_m > self.free_m:
            return None
        placed: list[tuple[int, int]] = []
        for n, inst in enumerate(gang):
            idx = self._place_one(inst, first=n == 0)
            if idx < 0:
                self._undo(gang, placed)
                return None
            placed.append((inst.id, idx))
        return placed

    def _undo(self, gang: list[InstanceReq], placed: list[tuple[int, int]]) -> None:
        for inst, (_, idx) in zip(gang, placed, strict=False):
            self._give(idx, millicores(inst.cores), inst.memory, True)

    # -- reclaiming ----------------------------------------------------------------

    def _elastic_after(self, pos: int) -> tuple[int, int]:
        """Elastic room held by executions ranked after `pos` (an upper bound)."""
        if self._suffix is None:
            suffix = [(0, 0)] * (len(self.elastic_by_pos) + 1)
            acc_c = acc_m = 0
            for p in range(len(self.elastic_by_pos) - 1, -1, -1):
                c, m = self.elastic_by_pos[p]
                acc_c += c
                acc_m += m
                suffix[p] = (acc_c, acc_m)
            self._suffix = suffix
        return self._suffix[pos + 1]

    def _reclaim_for(
        self, pos: int, gang: list[InstanceReq]
    ) -> tuple[list[tuple[int, int]], list[int]] | None:
        """Place `gang`, stopping elastic instances ranked after `pos` where needed."""
        need_c = sum(millicores(i.cores) for i in gang)
        need_m = sum(i.memory for i in gang)
        more_c, more_m = self._elastic_after(pos)
        if need_c > self.free_c + more_c or need_m > self.free_m + more_m:
            return None
        placed: list[tuple[int, int]] = []
        taken: list[tuple[int, Victim]] = []
        for n, inst in enumerate(gang):
            idx = self._place_one(inst, first=False)
            if idx < 0:
                idx = self._reclaim_node(pos, inst, taken, first=n == 0)
            if idx < 0:
                self._undo(gang, placed)
                for node, victim in taken:
                    self._unfree(node, victim)
                return None
            placed.append((inst.id, idx))
        return placed, [victim[3] for _, victim in taken]

    def _reclaim_node(
        self, pos: int, inst: InstanceReq, taken: list[tuple[int, Victim]], first: bool
    ) -> int:
        """Free room for `inst` on the node that needs the fewest stops; -1 if none."""
        c, m, labels = millicores(inst.cores), inst.memory, inst.labels
        if self.reclaim_misses.blocked(c, m, labels):
            return -1
        cluster = self.cluster
        free_c, free_m = cluster.free_c, cluster.free_m
        el_c, el_m = self.elastic_c, self.elastic_m
        wc, wm = cluster.weights()
        best, best_cost, best_victims = -1, (0, 0.0), []
        for bucket in cluster.eligible(labels):
            for _, _, idx in bucket.by_cores:
                if free_c[idx] + el_c[idx] < c or free_m[idx] + el_m[idx] < m:
                    continue
                victims = self._victims_on(idx, pos, c, m)
                if victims is None:
                    continue
                surplus_c = free_c[idx] + sum(v[1] for v in victims) - c
                surplus_m = free_m[idx] + sum(v[2] for v in victims) - m
                cost = (len(victims), surplus_c * wc + surplus_m * wm)
                if best < 0 or cost < best_cost:
                    best, best_cost, best_victims = idx, cost, victims
        if best < 0:
            if first:
                self.reclaim_misses.add(c, m, labels)
            return -1
        for victim in best_victims:
            self._free(best, victim)
            taken.append((best, victim))
        self._take(best, c, m, True)
        return best

    def _victims_on(self, idx: int, pos: int, c: int, m: int) -> list[Victim] | None:
        """The fewest elastic instances ranked after `pos` on node `idx` to stop so that
        (c, m) fits there, lowest-ranked first; None when stopping them all is not enough."""
        entries = self.elastic[idx]
        if idx not in self.sorted_nodes:
            entries.sort(key=lambda v: (-v[0], -v[1], -v[2], v[3]))
            self.sorted_nodes.add(idx)
        lack_c = c - self.cluster.free_c[idx]
        lack_m = m - self.cluster.free_m[idx]
        chosen: list[Victim] = []
        for victim in entries:
            if lack_c <= 0 and lack_m <= 0:
                break
            if victim[0] <= pos:
                break
            if victim[3] in self.reclaimed:
                continue
            chosen.append(victim)
            lack_c -= victim[1]
            lack_m -= victim[2]
        if lack_c > 0 or lack_m > 0:
            return None
        # Drop the stops that turned out unnecessary, latest chosen (highest ranked) first.
        for victim in reversed(list(chosen)):
            if lack_c + victim[1] <= 0 and lack_m + victim[2] <= 0:
                chosen.remove(victim)
                lack_c += victim[1]
                lack_m += victim[2]
        return chosen

    def _free(self, idx: int, victim: Victim) -> None:
        self.reclaimed.add(victim[3])
        self._give(idx, victim[1], victim[2], False)
        self.elastic_c[idx] -= victim[1]
        self.elastic_m[idx] -= victim[2]

    def _unfree(self, idx: int, victim: Victim) -> None:
        self.reclaimed.discard(victim[3])
        self._take(idx, victim[1], victim[2], False)
        self.elastic_c[idx] += victim[1]
        self.elastic_m[idx] += victim[2]

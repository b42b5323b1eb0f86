"""The scheduling pass of the fifo, size and dynsize policies.

A pass ranks every active execution (priority class, then the policy's order), then:

1. *Essential sets*: for each execution still waiting for its gang, in rank order, place
   all its pending essential instances or none. When they do not fit and reclaiming is
   on, stop elastic instances of executions ranked lower if, and only if, that makes the
   whole set fit. A blocked execution does not stop the pass: executions behind it may
   still start (backfilling), until `lookahead` more have been found blocked after a real
   search or `scan` more have been examined. One that has waited `reserve_after` seconds
   holds the nodes it could use: nothing ranked after it may start there. One that the
   cluster could not hold even emptied (services/scheduler/fit.py) is skipped: it never
   holds anything, nor counts against those bounds.
2. *Elastic growth*: for each running execution in rank order (past its death backoff),
   place pending elastic instances while they fit.

Essential instances are never stopped; a node never holds more than its capacity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter

from . import reasons as R
from .fair import drf_order
from .kept import UNKNOWN, Kept
from .model import Decisions, ExecutionState, InstanceReq, NodeState, Reason
from .placement import millicores
from .policies import Policy
from .reclaim import ElasticIndex, Victim

Placed = list[tuple[int, int]]  # (instance id, node index)
_ex = attrgetter("ex")
_waiting = attrgetter("waiting")
Holds = list[tuple[int, set[frozenset[str]]]]  # (rank position, label sets)

NO_LABELS: frozenset[str] = frozenset()


class _Misses:
    """Requests known not to fit in this pass; any larger request with the same labels
    fails too, as long as free capacity only shrinks."""

    __slots__ = ("_by_labels",)

    def __init__(self) -> None:
        self._by_labels: dict[frozenset[str], list[tuple[int, int]]] = {}

    def blocked(self, cores: int, memory: int, labels: frozenset[str]) -> bool:
        """Whether the request is known to fit nowhere. A miss without labels counts
        for every label set: a labelled request has fewer nodes to choose from."""
        for c, m in self._by_labels.get(labels, ()):
            if cores >= c and memory >= m:
                return True
        if labels:
            for c, m in self._by_labels.get(NO_LABELS, ()):
                if cores >= c and memory >= m:
                    return True
        return False

    def add(self, cores: int, memory: int, labels: frozenset[str]) -> None:
        known = self._by_labels.get(labels, [])
        # Keep only the smallest misses: one that a new, smaller miss covers is redundant.
        kept = [(c, m) for c, m in known if c < cores or m < memory]
        kept.append((cores, memory))
        self._by_labels[labels] = kept


class Pass:
    """One scheduling pass over a snapshot of the cluster and the active executions."""

    def __init__(
        self,
        nodes: Sequence[NodeState],
        executions: Sequence[ExecutionState],
        now: float,
        policy: Policy,
        weights: Mapping[str, float] | None = None,
        kept: Kept | None = None,
    ) -> None:
        self.now = now
        self.policy = policy
        kept = kept if kept is not None else Kept()
        kept.update(nodes, executions, policy)
        assert kept.base is not None and kept.emptied is not None
        self.cluster = cluster = kept.base.copy()
        self.emptied = kept.emptied
        ranked = kept.ranked(now, policy)
        if policy.fair:
            entries = kept.in_order()
            order = drf_order(
                executions,
                [e.rank for e in entries],
                [e.waiting for e in entries],
                weights or {},
                self.emptied.total,
                self.emptied.never,
            )
            ranked = [entries[i] for i in order]
        for pos, entry in enumerate(ranked):
            entry.pos = pos
        self.entries = ranked
        self.execs = list(map(_ex, ranked))
        self.waiting = list(map(_waiting, ranked))
        self.elastic = ElasticIndex(ranked, list(kept.room_c), list(kept.room_m), kept.members)
        self.free_c = kept.free_c
        self.free_m = kept.free_m
        self.misses = _Misses()
        self.reclaim_misses = _Misses()
        self.reasons: dict[int, Reason] = {}
        self.holder: dict[int, int] = {}  # id of a closed bucket -> the execution holding it
        self.describe = R.Describer(cluster, self.holder)
        self.milli: dict[float, int] = {}
        self.work = 0  # searches and reclaim probes done: what `lookahead` bounds
        # the state of the free room, the stops and the closed nodes (`_moved`), for
        # the reclaim searches' memory of those that found nothing
        self.version = 0
        self._versions = 0

    def never(self, pos: int) -> str | None:
        """`Emptied.never` of the essential set the execution at `pos` waits for."""
        entry = self.entries[pos]
        found = entry.never
        if found is UNKNOWN:
            found = entry.never = self.emptied.never(entry.gang)
        return found  # type: ignore[return-value]

    def mc(self, cores: float) -> int:
        """`millicores`, memoised for the pass (instances share a handful of sizes)."""
        found = self.milli.get(cores)
        if found is None:
            found = self.milli[cores] = millicores(cores)
        return found

    # -- the pass ------------------------------------------------------------------

    def run(self) -> Decisions:
        """Place essential sets, then grow elastic executions; return the decisions."""
        running = [not w for w in self.waiting]
        essential_starts: Placed = []
        stops: list[int] = []
        holds = self._essential_sets(running, essential_starts, stops)
        elastic_starts = self._grow(running, holds)
        names = self.cluster.names
        starts = [(i, names[idx]) for i, idx in essential_starts]
        starts.extend((i, names[idx]) for i, idx in elastic_starts)
        return Decisions(starts=starts, stops=stops, reasons=self.reasons)

    def _essential_sets(self, running: list[bool], starts: Placed, stops: list[int]) -> Holds:
        """Phase 1. Returns the holds taken: (rank, label sets) of each blocked execution
        that waited `reserve_after`, whose nodes nothing ranked after it may take. Says
        in `self.reasons` why each waiting execution it did not start waits."""
        policy = self.policy
        blocked = 0
        examined = -1  # waiting executions examined since the first blocked one
        holds: Holds = []
        never = self.never
        entries = self.entries
        reasons = self.reasons
        holder = self.holder
        describe = self.describe
        cut: Reason | None = None  # why the executions after the last one examined wait
        end = len(self.execs)
        execs = self.execs
        for pos in [p for p, r in enumerate(running) if not r]:
            ex = execs[pos]
            gang = entries[pos].gang
            why = never(pos)
            if why is not None:
                reasons[ex.id] = R.unschedulable(why)
                continue  # it can never start here: it costs, holds and delays nothing
            if examined >= 0:
                examined += 1
                if examined > policy.scan:
                    cut, end = R.words(R.AHEAD, f"{examined - 1} examined ahead"), pos
                    break
            work = self.work
            placed = self._start_gang(pos, gang, stops)
            if placed is not None:
                running[pos] = True
                starts.extend(placed)
                continue
            examined = max(examined, 0)
            reasons[ex.id] = describe.blocked(gang)
            if self.now - ex.submitted_at >= policy.reserve_after:
                label_sets = {i.labels for i in gang}
                holds.append((pos, label_sets))
                closed_all = False
                for labels in label_sets:
                    for bucket in self.cluster.eligible(labels):
                        holder.setdefault(id(bucket), ex.id)
                    closed_all = self.cluster.close(labels) or closed_all
                self._moved()
                if closed_all:
                    # every node is held: nothing further down may start
                    cut, end = R.words(R.HOLDS_ALL.format(ex.id)), pos + 1
                    break
            elif self.work > work:  # a miss known without searching costs nothing
                blocked += 1
                if blocked > policy.lookahead:
                    cut, end = R.words(R.AHEAD, f"{blocked} blocked ahead"), pos + 1
                    break
        if cut is not None:
            for pos in range(end, len(self.execs)):
                if not running[pos]:
                    why = never(pos)
                    reasons[self.execs[pos].id] = cut if why is None else R.unschedulable(why)
        return holds

    def _start_gang(self, pos: int, gang: list[InstanceReq], stops: list[int]) -> Placed | None:
        """Place the pending essential set `gang` (reclaiming if allowed), or nothing.
        `gang` comes in the order it is tried (`kept.gang_order`)."""
        reclaim = self.policy.reclaim
        entry = self.entries[pos]
        c, m, labels = entry.lead
        if self.misses.blocked(c, m, labels) and (
            not reclaim or self.reclaim_misses.blocked(c, m, labels)
        ):
            return None  # its largest instance is already known to fit nowhere
        need_c, need_m = entry.need
        fits_free = need_c <= self.free_c and need_m <= self.free_m
        if not fits_free:
            if not reclaim:
                return None
            more_c, more_m = self.elastic.room_after(pos)
            if need_c > self.free_c + more_c or need_m > self.free_m + more_m:
                return None
        version = self.version
        placed = self._place_gang(gang) if fits_free else None
        if placed is None and reclaim:
            placed = self._reclaim_for(pos, gang, stops)
        if placed is None:
            self.version = version  # all it took was given back: the state it found
        return placed

    def _grow(self, running: list[bool], holds: Holds) -> Placed:
        """Phase 2: place pending elastic instances of running executions, in rank order.

        With reclaiming on, elastic instances may go anywhere (a held execution can stop
        them when it fits); without, the nodes it holds stay closed to those ranked after.
        """
        starts: Placed = []
        now = self.now
        self.cluster.reopen()
        self._moved()
        self.misses = _Misses()
        pending_holds = [] if self.policy.reclaim else list(reversed(holds))
        entries = self.entries
        for pos in range(len(entries)):
            if self.free_c <= 0 or self.free_m <= 0:
                break
            while pending_holds and pending_holds[-1][0] < pos:
                for labels in pending_holds.pop()[1]:
                    self.cluster.close(labels)
            if not running[pos]:
                continue
            entry = entries[pos]
            ex = entry.ex
            if not ex.pending or ex.not_before > now:
                continue
            # Skip at once an execution whose smallest request is known to fit nowhere.
            least = entry.least
            assert least is not None
            least_c, least_m = least
            if (
                least_c > self.free_c
                or least_m > self.free_m
                or self.misses.blocked(least_c, least_m, NO_LABELS)
            ):
                continue
            pending = ex.pending
            failed: InstanceReq | None = None
            for inst in pending:
                if inst.essential or (
                    failed is not None
                    and inst.cores == failed.cores
                    and inst.memory == failed.memory
                    and inst.labels == failed.labels
                ):
                    continue  # instances of one service are alike: no use trying again
                idx = self._place_one(inst, first=True)
                if idx >= 0:
                    starts.append((inst.id, idx))
                else:
                    failed = inst
        return starts

    # -- placing -------------------------------------------------------------------

    def _place_one(self, inst: InstanceReq, first: bool) -> int:
        """Place one instance on free room; -1 when it fits nowhere. A failure of the
        `first` instance tried is remembered (later ones depend on tentative state)."""
        c, m, labels = self.mc(inst.cores), inst.memory, inst.labels
        if c > self.free_c or m > self.free_m or self.misses.blocked(c, m, labels):
            return -1
        self.work += 1
        spread = self.policy.placement == "spread"
        if spread:
            idx = self.cluster.worst_fit(c, m, labels)
        else:
            idx = self.cluster.best_fit(c, m, labels)
        if inst.image:
            idx = self.cluster.prefer_image(idx, c, m, labels, inst.image, spread)
        if idx < 0:
            if first:
                self.misses.add(c, m, labels)
            return -1
        self._take(idx, c, m)
        return idx

    def _take(self, idx: int, c: int, m: int) -> None:
        self._moved()
        self.cluster.change(idx, c, m, 1)
        self.free_c -= c
        self.free_m -= m

    def _give(self, idx: int, c: int, m: int) -> None:
        self._moved()
        self.cluster.change(idx, -c, -m, -1)
        self.free_c += c
        self.free_m += m

    def _moved(self) -> None:
        """The free room, the stops or the closed nodes change: a new state."""
        self._versions += 1
        self.version = self._versions
        self.describe.moved()

    def _place_gang(self, gang: list[InstanceReq]) -> Placed | None:
        """Place every instance of `gang` on free room, or nothing."""
        placed: Placed = []
        for n, inst in enumerate(gang):
            idx = self._place_one(inst, first=n == 0)
            if idx < 0:
                self._undo(gang, placed, [])
                return None
            placed.append((inst.id, idx))
        return placed

    def _undo(self, gang: list[InstanceReq], placed: Placed, taken: list[Victim]) -> None:
        """Give back what a failed gang took, then take back the room of its stops."""
        for inst, (_, idx) in zip(gang, placed, strict=False):
            self._give(idx, self.mc(inst.cores), inst.memory)
        for victim in taken:
            self.elastic.restore(victim)
            self._take(victim[1], victim[2], victim[3])

    # -- reclaiming ----------------------------------------------------------------

    def _reclaim_for(self, pos: int, gang: list[InstanceReq], stops: list[int]) -> Placed | None:
        """Place `gang`, stopping elastic instances ranked after `pos` where needed."""
        placed: Placed = []
        taken: list[Victim] = []
        for n, inst in enumerate(gang):
            idx = self._place_one(inst, first=False)
            if idx < 0:
                idx = self._reclaim_node(pos, inst, taken, first=n == 0)
            if idx < 0:
                self._undo(gang, placed, taken)
                return None
            placed.append((inst.id, idx))
        if taken:
            stops.extend(victim[4] for victim in taken)
            # Stopping may leave a little more room than before: forget the misses.
            self.misses = _Misses()
        return placed

    def _reclaim_node(self, pos: int, inst: InstanceReq, taken: list[Victim], first: bool) -> int:
        """Place `inst` where stopping elastic instances ranked after `pos` makes room."""
        c, m, labels = self.mc(inst.cores), inst.memory, inst.labels
        if self.reclaim_misses.blocked(c, m, labels):
            return -1
        found = self.elastic.find(self.cluster, pos, c, m, labels, self.version)
        self.work += found.probes
        if found.node < 0:
            # Room that later (lower-ranked) executions could free only shrinks in a pass,
            # so a search that ran to the end proves the same request fails for them too.
            if first and found.exhaustive:
                self.reclaim_misses.add(c, m, labels)
            return -1
        for victim in found.victims:
            self.elastic.stop(victim)
            self._give(found.node, victim[2], victim[3])
            taken.append(victim)
        self._take(found.node, c, m)
        return found.node

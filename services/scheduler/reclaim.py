"""The elastic instances a pass may reclaim, and the choice of which ones to stop.

Built once per pass while the placed instances are taken from the free capacity. An
essential instance that fits nowhere may take a node after the elastic instances of
executions ranked after its own are stopped there; this module finds such a node, the
fewest stops it needs, and stops the lowest-ranked instances first.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import ExecutionState
from .placement import Cluster, millicores

# An elastic instance that may be stopped:
# (rank position of its execution, node index, millicores, bytes, instance id).
Victim = tuple[int, int, int, int, int]

# Bounds on one search: nodes examined closely, and instances looked at to find them.
PROBES = 32
VISITS = 512


@dataclass(slots=True)
class Found:
    """The outcome of one search: a node and its stops (node -1 when none was found),
    how many nodes were probed, and whether the search ran to the end (not cut short)."""

    node: int
    victims: list[Victim]
    probes: int
    exhaustive: bool


class ElasticIndex:
    """Elastic instances on available nodes, by node (in rank order) and by rank."""

    __slots__ = (
        "_ranks",
        "_suffix",
        "of_rank",
        "on_node",
        "rank_room",
        "room_c",
        "room_m",
        "stopped",
    )

    def __init__(self, nodes: int) -> None:
        self.on_node: list[list[Victim]] = [[] for _ in range(nodes)]
        self.room_c = [-1] * nodes  # elastic room per node, summed when first needed
        self.room_m = [0] * nodes
        self.of_rank: list[list[Victim]] = []
        self.rank_room: list[tuple[int, int]] = []
        self.stopped: set[int] = set()
        self._suffix: list[tuple[int, int]] = []
        self._ranks: list[int] = []

    def room_after(self, pos: int) -> tuple[int, int]:
        """Elastic cores and memory held by executions ranked after `pos` (an upper
        bound of what stopping could free for it: stops made since are not deducted)."""
        if not self._suffix:
            suffix = [(0, 0)] * (len(self.rank_room) + 1)
            acc_c = acc_m = 0
            for p in range(len(self.rank_room) - 1, -1, -1):
                c, m = self.rank_room[p]
                acc_c += c
                acc_m += m
                suffix[p] = (acc_c, acc_m)
            self._suffix = suffix
            self._ranks = [p for p in range(len(self.of_rank) - 1, -1, -1) if self.of_rank[p]]
        return self._suffix[pos + 1]

    def find(self, cluster: Cluster, pos: int, c: int, m: int, labels: frozenset[str]) -> Found:
        """A node where (c, m) fits once some elastic instances ranked after `pos` stop.

        Nodes are probed in the order of the lowest-ranked executions' instances, so the
        stops fall on the executions ranked last; a node needing a single stop is taken
        at once, otherwise the one needing the fewest among at most `PROBES` nodes.
        """
        free_c, free_m, node_labels = cluster.free_c, cluster.free_m, cluster.labels
        room_c, room_m = self.room_c, self.room_m
        wc, wm = cluster.weights()
        best = Found(-1, [], 0, True)
        best_cost = (0, 0.0)
        seen: set[int] = set()
        visits = 0
        self.room_after(pos)
        for vpos in self._ranks:
            if vpos <= pos:
                break
            for _, idx, _, _, _ in self.of_rank[vpos]:
                visits += 1
                if idx in seen:
                    continue
                seen.add(idx)
                if room_c[idx] < 0:
                    self._sum_room(idx)
                if free_c[idx] + room_c[idx] < c or free_m[idx] + room_m[idx] < m:
                    continue
                if not labels <= node_labels[idx] or not cluster.open_to(idx):
                    continue
                best.probes += 1
                chosen = self._victims_on(cluster, idx, pos, c, m)
                if chosen is not None:
                    victims, surplus_c, surplus_m = chosen
                    cost = (len(victims), surplus_c * wc + surplus_m * wm)
                    if best.node < 0 or cost < best_cost:
                        best.node, best.victims, best_cost = idx, victims, cost
                        if len(victims) <= 1:
                            return best
            if best.probes >= PROBES or visits >= VISITS:
                best.exhaustive = False
                break
        return best

    def _sum_room(self, idx: int) -> None:
        entries = [v for v in self.on_node[idx] if v[4] not in self.stopped]
        self.room_c[idx] = sum(v[2] for v in entries)
        self.room_m[idx] = sum(v[3] for v in entries)

    def _victims_on(
        self, cluster: Cluster, idx: int, pos: int, c: int, m: int
    ) -> tuple[list[Victim], int, int] | None:
        """The instances ranked after `pos` to stop on node `idx` so that (c, m) fits,
        lowest-ranked first, and the room left over; None when all of them are not
        enough."""
        lack_c = c - cluster.free_c[idx]
        lack_m = m - cluster.free_m[idx]
        chosen: list[Victim] = []
        for victim in reversed(self.on_node[idx]):
            if lack_c <= 0 and lack_m <= 0:
                break
            if victim[0] <= pos:
                break
            if victim[4] in self.stopped:
                continue
            chosen.append(victim)
            lack_c -= victim[2]
            lack_m -= victim[3]
        if lack_c > 0 or lack_m > 0:
            return None
        # Keep only the stops still needed, dropping the highest ranked first.
        for victim in reversed(list(chosen)):
            if lack_c + victim[2] <= 0 and lack_m + victim[3] <= 0:
                chosen.remove(victim)
                lack_c += victim[2]
                lack_m += victim[3]
        return chosen, -lack_c, -lack_m

    def stop(self, victim: Victim) -> None:
        """Mark `victim` as stopped (the caller gives its room back)."""
        self.stopped.add(victim[4])
        if self.room_c[victim[1]] >= 0:
            self.room_c[victim[1]] -= victim[2]
            self.room_m[victim[1]] -= victim[3]

    def restore(self, victim: Victim) -> None:
        """Undo `stop` (the caller takes its room again)."""
        self.stopped.discard(victim[4])
        if self.room_c[victim[1]] >= 0:
            self.room_c[victim[1]] += victim[2]
            self.room_m[victim[1]] += victim[3]


def hold_placed(cluster: Cluster, execs: list[ExecutionState], index: bool) -> ElasticIndex:
    """Take the room of every placed instance from the free capacity (execs in rank
    order); when `index` is set, also index the elastic ones on available nodes."""
    node_of = cluster.index.get
    available = cluster.available
    free_c, free_m = cluster.free_c, cluster.free_m
    elastic = ElasticIndex(len(cluster.names) if index else 0)
    unknown = len(cluster.names)  # a slot past the end takes what unknown nodes hold
    free_c.append(0)
    free_m.append(0)
    on_node = elastic.on_node
    of_rank, rank_room = elastic.of_rank, elastic.rank_room
    milli: dict[float, int] = {}
    empty: list[Victim] = []
    for pos, ex in enumerate(execs):
        mine = empty
        held_c = held_m = 0
        for inst, node in ex.placed:
            idx = node_of(node, unknown)
            c = milli.get(inst.cores)
            if c is None:
                c = milli[inst.cores] = millicores(inst.cores)
            m = inst.memory
            free_c[idx] -= c
            free_m[idx] -= m
            if index and not inst.essential and idx < unknown and available[idx]:
                if mine is empty:
                    mine = []
                victim = (pos, idx, c, m, inst.id)
                mine.append(victim)
                on_node[idx].append(victim)
                held_c += c
                held_m += m
        of_rank.append(mine)
        rank_room.append((held_c, held_m))
    free_c.pop()
    free_m.pop()
    return elastic

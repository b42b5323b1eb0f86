"""The elastic instances a pass may reclaim, and the choice of which ones to stop.

Made for each pass from what `kept.Kept` holds (the elastic instances of each execution
and the room they hold per node). An essential instance that fits nowhere may take a
node after the elastic instances of executions ranked after its own are stopped there;
this module finds such a node, the fewest stops it needs, and stops the lowest-ranked
instances first.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, compress
from operator import attrgetter, itemgetter

from .kept import Entry
from .placement import Cluster

# An elastic instance that may be stopped:
# (rank position of its execution, node index, millicores, bytes, instance id).
Victim = tuple[int, int, int, int, int]

_first = itemgetter(0)
_second = itemgetter(1)
_room = attrgetter("room")
_elastic = attrgetter("elastic")

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
    """Elastic instances on available nodes, by rank and (looked up when first needed)
    by node, in rank order; and the room they hold per node."""

    __slots__ = (
        "_members",
        "_on_node",
        "_ranks",
        "_suffix",
        "entries",
        "room_c",
        "room_m",
        "stopped",
    )

    def __init__(
        self,
        entries: list[Entry],
        room_c: list[int],
        room_m: list[int],
        members: list[dict[tuple[int, int], tuple[Entry, int]]],
    ) -> None:
        self.entries = entries  # in rank order: each with its elastic instances and room
        self.room_c = room_c  # per node: the elastic room on it, less what was stopped
        self.room_m = room_m
        self.stopped: set[int] = set()
        self._members = members  # per node: its entries' elastic instances (kept.Kept)
        self._on_node: dict[int, list[Victim]] = {}
        self._suffix: list[tuple[int, int]] = []
        self._ranks: list[int] = []

    def on_node(self, idx: int) -> list[Victim]:
        """The elastic instances on node `idx`, in rank order (an execution's own in
        the order it lists them)."""
        found = self._on_node.get(idx)
        if found is None:
            rows = sorted(self._members[idx].values(), key=_by_rank)
            found = self._on_node[idx] = [
                (entry.pos, idx, entry.elastic[n][1], entry.elastic[n][2], entry.elastic[n][3])
                for entry, n in rows
            ]
        return found

    def room_after(self, pos: int) -> tuple[int, int]:
        """Elastic cores and memory held by executions ranked after `pos` (an upper
        bound of what stopping could free for it: stops made since are not deducted)."""
        if not self._suffix:
            entries = self.entries
            rooms = list(map(_room, entries))
            rooms.reverse()
            self._suffix = list(
                zip(
                    accumulate(map(_first, rooms), initial=0),
                    accumulate(map(_second, rooms), initial=0),
                    strict=True,
                )
            )
            self._suffix.reverse()
            self._ranks = list(compress(range(len(entries)), map(_elastic, entries)))
            self._ranks.reverse()
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
        entries = self.entries
        for vpos in self._ranks:
            if vpos <= pos:
                break
            entry = entries[vpos]
            # each of its instances is a visit; a node it has several on is looked at once
            visits += len(entry.elastic)
            for idx in entry.spots:
                if idx in seen:
                    continue
                seen.add(idx)
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

    def _victims_on(
        self, cluster: Cluster, idx: int, pos: int, c: int, m: int
    ) -> tuple[list[Victim], int, int] | None:
        """The instances ranked after `pos` to stop on node `idx` so that (c, m) fits,
        lowest-ranked first, and the room left over; None when all of them are not
        enough."""
        lack_c = c - cluster.free_c[idx]
        lack_m = m - cluster.free_m[idx]
        chosen: list[Victim] = []
        for victim in reversed(self.on_node(idx)):
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
        self.room_c[victim[1]] -= victim[2]
        self.room_m[victim[1]] -= victim[3]

    def restore(self, victim: Victim) -> None:
        """Undo `stop` (the caller takes its room again)."""
        self.stopped.discard(victim[4])
        self.room_c[victim[1]] += victim[2]
        self.room_m[victim[1]] += victim[3]


def _by_rank(row: tuple[Entry, int]) -> tuple[int, int]:
    return (row[0].pos, row[1])

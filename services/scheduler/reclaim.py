"""The elastic instances a pass may reclaim, and the choice of which ones to stop.

Made for each pass from what `kept.Kept` holds (the elastic instances of each execution
and the room they hold per node). An essential instance that fits nowhere may take a
node after the elastic instances of executions ranked after its own are stopped there;
this module finds such a node, the fewest stops it needs, and stops the lowest-ranked
instances first.
"""

from __future__ import annotations

from bisect import bisect_left
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


@dataclass(slots=True)
class _Failed:
    """A search that found nothing: the state it saw (`version`), the rank position it
    searched for, the rank positions of the executions whose nodes it probed (one per
    probe, lowest-ranked first) and that of the one after which it was cut short (-1:
    it ran to the end)."""

    version: int
    pos: int
    probed: list[int]
    cut: int


class ElasticIndex:
    """Elastic instances on available nodes, by rank and (looked up when first needed)
    by node, in rank order; and the room they hold per node."""

    __slots__ = (
        "_failed",
        "_held",
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
        # made when first needed: the entries holding elastic instances, lowest-ranked
        # first; their rank positions negated (ascending, for bisect); and the room
        # held by the first k of them
        self._held: list[Entry] = []
        self._ranks: list[int] = []
        self._suffix: list[tuple[int, int]] = []
        self._failed: dict[tuple[int, int, frozenset[str]], _Failed] = {}

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
            self._index()
        # the entries ranked after `pos` are the first k of `_held`
        k = bisect_left(self._ranks, -pos)
        return self._suffix[k]

    def _index(self) -> None:
        held = list(compress(self.entries, map(_elastic, self.entries)))
        held.reverse()
        self._held = held
        self._ranks = [-e.pos for e in held]
        rooms = list(map(_room, held))
        self._suffix = list(
            zip(
                accumulate(map(_first, rooms), initial=0),
                accumulate(map(_second, rooms), initial=0),
                strict=True,
            )
        )

    def find(
        self, cluster: Cluster, pos: int, c: int, m: int, labels: frozenset[str], version: int
    ) -> Found:
        """A node where (c, m) fits once some elastic instances ranked after `pos` stop.

        Nodes are probed in the order of the lowest-ranked executions' instances, so the
        stops fall on the executions ranked last; a node needing a single stop is taken
        at once, otherwise the one needing the fewest among at most `PROBES` nodes.

        `version` names the state of the free room, the stops and the closed nodes:
        the caller gives a new one whenever they change. Searching again for the same
        request in the same state, for `pos` or an execution ranked after it, after a
        search that found nothing is answered from that search (`_again`).
        """
        if not self._suffix:
            self._index()
        key = (c, m, labels)
        failed = self._failed.get(key)
        if failed is not None and failed.version == version and failed.pos <= pos:
            return _again(failed, pos)
        free_c, free_m, node_labels = cluster.free_c, cluster.free_m, cluster.labels
        room_c, room_m = self.room_c, self.room_m
        wc, wm = cluster.weights()
        best = Found(-1, [], 0, True)
        best_cost = (0, 0.0)
        probed: list[int] = []
        seen: set[int] = set()
        visits = 0
        cut = -1
        for entry in self._held:
            vpos = entry.pos
            if vpos <= pos:
                break
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
                probed.append(vpos)
                chosen = self._victims_on(cluster, idx, pos, c, m)
                if chosen is not None:
                    victims, surplus_c, surplus_m = chosen
                    cost = (len(victims), surplus_c * wc + surplus_m * wm)
                    if best.node < 0 or cost < best_cost:
                        best.node, best.victims, best_cost = idx, victims, cost
                        if len(victims) <= 1:
                            best.probes = len(probed)
                            return best
            if len(probed) >= PROBES or visits >= VISITS:
                best.exhaustive = False
                cut = vpos
                break
        best.probes = len(probed)
        if best.node < 0:
            self._failed[key] = _Failed(version, pos, probed, cut)
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


def _again(failed: _Failed, pos: int) -> Found:
    """What searching for `pos` would find in the state `failed` searched (for a rank
    position at or before `pos`): nothing either. Its walk is a prefix of the one
    `failed` made (the executions ranked after `pos`, in the same order), over the same
    nodes, each offering fewer instances to stop, so none is enough where none was; it
    probes the nodes `failed` probed for executions ranked after `pos`, and is cut
    short where `failed` was if it gets that far."""
    probes = 0
    for vpos in failed.probed:
        if vpos <= pos:
            break
        probes += 1
    return Found(-1, [], probes, failed.cut < 0 or failed.cut <= pos)


def _by_rank(row: tuple[Entry, int]) -> tuple[int, int]:
    return (row[0].pos, row[1])

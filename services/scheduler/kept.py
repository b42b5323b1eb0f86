"""What a pass derives from its snapshot before placing anything, kept for the next pass.

Before it places anything a pass needs the free room of every node once every placed
instance is taken from it (bucketed by label set and sorted: `placement.Cluster`), the
elastic instances it may reclaim and the room they hold per node (`reclaim.ElasticIndex`),
and the ranked queue. Built from the snapshot, that costs O(instances held) at every
pass: most of a pass on a full cluster with a short queue.

`Kept` holds them between passes and brings them up to date from what differs. The
snapshot's executions are immutable values, and a caller that keeps its view between
passes (services/scheduler/view.py, the simulator, the benchmark) hands the very same
object for an execution that did not change; so a pass looks closely only at the objects
it did not see last time (their instances are added) and at those gone since (theirs are
taken away). An execution is known by its object, held here so that its `id()` is not
reused while it is. Anything else that differs (a node, the policy) makes it start over.

It is a cache and nothing more: the decisions are the same with it or without it
(`schedule()` without one uses a fresh one), which tests/unit/test_sched_kept.py checks
against state rebuilt from scratch after random changes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from operator import attrgetter

from .fit import Emptied
from .model import ExecutionState, InstanceReq, NodeState
from .placement import Cluster, millicores
from .policies import Policy, RankKey, rank_keys

# An elastic instance as an execution holds it: (node index, millicores, bytes, id).
Held = tuple[int, int, int, int]

_rank = attrgetter("rank")
_cores = attrgetter("cores")
_memory = attrgetter("memory")
UNKNOWN = object()  # not computed yet


def gang_order(inst: InstanceReq) -> tuple[int, float, int]:
    """How an essential set is tried: the most constrained first (more labels: fewer
    nodes to go to; a labelled instance placed after unlabelled ones could find its
    nodes' room taken by them), then the largest: the hardest to fit (sorted reversed)."""
    return (len(inst.labels), inst.cores, inst.memory)


class Entry:
    """One execution of the snapshot, with what a pass derives from it alone."""

    __slots__ = (
        "_least",
        "elastic",
        "ex",
        "gang",
        "lead",
        "need",
        "never",
        "pos",
        "rank",
        "room",
        "spots",
        "stable",
        "waiting",
    )

    def __init__(
        self,
        ex: ExecutionState,
        index: dict[str, int],
        available: list[bool],
        milli: dict[float, int],
    ) -> None:
        self.ex = ex
        gang = [i for i in ex.pending if i.essential]
        self.waiting = bool(gang)
        if len(gang) > 1:
            gang.sort(key=gang_order, reverse=True)
        self.gang = gang  # its pending essential set, in the order it is tried
        # the first tried (millicores, bytes, labels), and the whole set's room
        if gang:
            lead = gang[0]
            self.lead = (_milli(milli, lead.cores), lead.memory, lead.labels)
            self.need = (
                sum(_milli(milli, i.cores) for i in gang),
                sum(map(_memory, gang)),
            )
        else:
            self.lead = (0, 0, frozenset[str]())
            self.need = (0, 0)
        self.never: object = UNKNOWN  # `Emptied.never(gang)`, once asked
        # the smallest millicores and bytes among its pending instances (None: it has
        # none), once asked
        self._least: object = UNKNOWN
        elastic: list[Held] = []
        room_c = room_m = 0
        get = index.get
        for inst, node in ex.placed:
            if inst.essential:
                continue
            idx = get(node, -1)
            if idx >= 0 and available[idx]:
                c = _milli(milli, inst.cores)
                elastic.append((idx, c, inst.memory, inst.id))
                room_c += c
                room_m += inst.memory
        self.elastic = elastic  # its elastic instances on available nodes
        self.room = (room_c, room_m)  # the room they hold
        self.spots = tuple(dict.fromkeys([e[0] for e in elastic]))  # their nodes, once each
        self.rank: RankKey = (0.0, 0.0, 0.0, 0)
        self.stable = False  # `rank` does not depend on the time
        self.pos = 0  # its rank position in the current pass

    @property
    def least(self) -> tuple[int, int] | None:
        """The smallest millicores and bytes among its pending instances, if any."""
        found = self._least
        if found is UNKNOWN:
            pending = self.ex.pending
            found = self._least = (
                (millicores(min(map(_cores, pending))), min(map(_memory, pending)))
                if pending
                else None
            )
        return found  # type: ignore[return-value]


def _milli(memo: dict[float, int], cores: float) -> int:
    found = memo.get(cores)
    if found is None:
        found = memo[cores] = millicores(cores)
    return found


class Kept:
    """The free room, the reclaimable instances and the ranked queue of the last pass,
    brought up to date for the next one (see the module's docstring)."""

    def __init__(self) -> None:
        self._nodes: Sequence[NodeState] | None = None
        self._policy: Policy | None = None
        self._reset()

    def _reset(self) -> None:
        self.base: Cluster | None = None  # free room after every placed instance, indexed
        self.emptied: Emptied | None = None
        self.room_c: list[int] = []  # elastic room per node (available nodes)
        self.room_m: list[int] = []
        # per node, the elastic instances on it: (id(entry), n) -> (entry, n), n being
        # its place among the entry's own
        self.members: list[dict[tuple[int, int], tuple[Entry, int]]] = []
        self.free_c = 0  # free room of the available nodes, in all (negatives as 0)
        self.free_m = 0
        self._entries: dict[int, Entry] = {}
        self._extra: list[Entry] = []  # an object given twice in one snapshot
        self._stable: list[Entry] = []  # entries of a time-independent rank, ranked
        self._moving: dict[int, Entry] = {}  # the others (waiting, under dynsize)
        # the moving entries in the order of the last ranking, then those added since,
        # and those removed since until the next ranking drops them: sorted again, they
        # are nearly in order
        self._moving_ranked: list[Entry] = []
        self._order: list[int] = []  # id() of the snapshot's executions, in its order
        self._ids: dict[int, int] = {}  # execution id -> how many entries have it
        self._twins = 0  # execution ids given more than once
        self._dirty: dict[int, tuple[int, int]] = {}  # node -> its free room before update
        self._milli: dict[float, int] = {}  # cores -> millicores, memoised

    # ---- bringing it up to date ----------------------------------------------------

    def update(
        self, nodes: Sequence[NodeState], executions: Sequence[ExecutionState], policy: Policy
    ) -> None:
        """Take this snapshot in."""
        if (
            self._policy != policy
            or self._nodes is None
            or (nodes is not self._nodes and not _same_nodes(nodes, self._nodes))
        ):
            self._start(nodes, policy)
        self._nodes = nodes
        base = self.base
        assert base is not None
        free_c, free_m = base.free_c, base.free_m
        self._dirty = {}
        for entry in self._extra:
            self._remove(entry)
        self._extra = []
        self._order = ids = list(map(id, executions))
        given = dict(zip(ids, executions, strict=True))
        old = self._entries
        for key in old.keys() - given.keys():
            self._remove(old.pop(key))
        index, available, milli = base.index, base.available, self._milli
        fresh = [Entry(given[key], index, available, milli) for key in given.keys() - old.keys()]
        for entry in fresh:
            old[id(entry.ex)] = entry
        if len(given) < len(ids):  # an object given more than once: an entry each time
            seen: set[int] = set()
            for key, ex in zip(ids, executions, strict=True):
                if key in seen:
                    self._extra.append(Entry(ex, index, available, milli))
                seen.add(key)
            fresh.extend(self._extra)
        for entry in fresh:
            self._add(entry)
        self._rekey(fresh, policy)
        if not base.buckets:
            # built from nothing: index the free room once every instance is in
            base.build_index()
            live = [i for i in range(len(base.names)) if base.node_bucket[i] is not None]
            self.free_c = sum(max(0, free_c[i]) for i in live)
            self.free_m = sum(max(0, free_m[i]) for i in live)
        else:
            for idx, (old_c, old_m) in self._dirty.items():
                base.refit(idx, old_c, old_m)
                if base.node_bucket[idx] is not None:
                    self.free_c += max(0, free_c[idx]) - max(0, old_c)
                    self.free_m += max(0, free_m[idx]) - max(0, old_m)
        self._dirty = {}

    def in_order(self) -> list[Entry]:
        """The entries of the last snapshot taken in, in its order."""
        entries = self._entries
        if not self._extra:
            return [entries[key] for key in self._order]
        extras = iter(self._extra)
        seen: set[int] = set()
        out = []
        for key in self._order:
            out.append(next(extras) if key in seen else entries[key])
            seen.add(key)
        return out

    def _start(self, nodes: Sequence[NodeState], policy: Policy) -> None:
        self._reset()
        self._policy = policy
        base = self.base = Cluster(nodes)  # indexed once the placed instances are in
        self.emptied = Emptied(nodes)
        n = len(base.names)
        self.room_c = [0] * n
        self.room_m = [0] * n
        self.members = [{} for _ in range(n)]

    def _add(self, entry: Entry) -> None:
        self._count(entry.ex.id, 1)
        self._hold(entry, 1)
        members = self.members
        for n, (idx, c, m, _) in enumerate(entry.elastic):
            self.room_c[idx] += c
            self.room_m[idx] += m
            members[idx][(id(entry), n)] = (entry, n)

    def _remove(self, entry: Entry) -> None:
        if entry.stable:
            ranked = self._stable
            at = bisect_left(ranked, entry.rank, key=_rank)
            while ranked[at] is not entry:  # (alike keys: an id given twice)
                at += 1
            del ranked[at]
        else:
            del self._moving[id(entry)]
        self._count(entry.ex.id, -1)
        self._hold(entry, -1)
        members = self.members
        for n, (idx, c, m, _) in enumerate(entry.elastic):
            self.room_c[idx] -= c
            self.room_m[idx] -= m
            del members[idx][(id(entry), n)]

    def _hold(self, entry: Entry, sign: int) -> None:
        """Take the room of the entry's placed instances from their nodes (sign 1), or
        give it back (-1). The node index is the one the entry was made with: only
        `_start` changes it, and it drops every entry."""
        base = self.base
        assert base is not None
        free_c, free_m, dirty, milli = base.free_c, base.free_m, self._dirty, self._milli
        get = base.index.get
        track = bool(base.buckets)  # else the index is built once everything is in
        for inst, node in entry.ex.placed:
            idx = get(node, -1)
            if idx < 0:
                continue  # on a node the snapshot does not have: it holds nothing known
            c = _milli(milli, inst.cores)
            if track and idx not in dirty:
                dirty[idx] = (free_c[idx], free_m[idx])
            free_c[idx] -= sign * c
            free_m[idx] -= sign * inst.memory

    def _count(self, ex_id: int, delta: int) -> None:
        ids = self._ids
        before = ids.get(ex_id, 0)
        after = before + delta
        if after:
            ids[ex_id] = after
        else:
            del ids[ex_id]
        self._twins += (after > 1) - (before > 1)

    # ---- the queue's order ---------------------------------------------------------

    def _rekey(self, fresh: list[Entry], policy: Policy) -> None:
        """Rank the new entries whose key does not move with time (all of them under fifo
        and size; the running ones under dynsize) among those kept ranked; the others
        are ranked at every pass."""
        timeless = policy.queue_order != "dynsize"
        stable = []
        for entry in fresh:
            if timeless or not entry.waiting:
                stable.append(entry)
            else:
                self._moving[id(entry)] = entry
                self._moving_ranked.append(entry)
        keys = rank_keys([e.ex for e in stable], [e.waiting for e in stable], 0.0, policy)
        ranked = self._stable
        for entry, key in zip(stable, keys, strict=True):
            entry.rank = key
            entry.stable = True
        if len(stable) * 8 > len(ranked):  # many (a start): one sort, as insort would order
            ranked.extend(stable)
            ranked.sort(key=_rank)
        else:
            for entry in stable:
                insort(ranked, entry, key=_rank)

    def ranked(self, now: float, policy: Policy) -> list[Entry]:
        """The entries in rank order, as `sorted(..., key=rank_keys(...))` would give."""
        moving = self._moving_ranked
        live = self._moving
        if len(moving) != len(live):  # some were removed
            moving = self._moving_ranked = [e for e in moving if live.get(id(e)) is e]
        keys = rank_keys([e.ex for e in moving], [True] * len(moving), now, policy)
        for entry, key in zip(moving, keys, strict=True):
            entry.rank = key
        if self._twins or self._extra:
            # keys alike (an id given twice): ties go by the snapshot's order, as before
            entries = self.in_order()
            order = sorted(range(len(entries)), key=lambda i: entries[i].rank)
            return [entries[i] for i in order]
        moving.sort(key=_rank)
        ranked = self._stable + moving
        ranked.sort(key=_rank)  # two ranked runs: a merge
        return ranked


def _same_nodes(a: Sequence[NodeState], b: Sequence[NodeState]) -> bool:
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))

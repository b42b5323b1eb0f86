"""What the cluster as it is could ever hold: its available nodes, emptied.

An execution whose essential set does not fit the emptied cluster can never start until
the cluster changes (a larger or differently labelled node joins): a pass skips it (it
takes no hold and costs the executions behind it nothing) and reports it unschedulable.

The test is a bounded search on the emptied nodes (most constrained instances first,
with backtracking), after quick ones (every instance needs a node holding it alone; the
instances needing a label set need no more than the nodes having it hold in all) and a
quick acceptance (enough slots of the set's largest instance). First fit decreasing
alone called a set with a small labelled instance and larger unlabelled ones
unschedulable when the large ones took the labelled node's room first. A search that
runs out of budget still calls the set unschedulable; it is still tried at every pass
like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter

from .model import InstanceReq, NodeState
from .placement import millicores

GIB = 1 << 30
# Placements the search of `Emptied._together` tries before it gives up deciding.
_SEARCH_BUDGET = 20_000

# (millicores, bytes, labels) of every essential instance of a set, largest first
Signature = tuple[tuple[int, int, frozenset[str]], ...]
# (cores, bytes, labels) of every essential instance of a set, as they come
Shape = tuple[tuple[float, int, frozenset[str]], ...]


def cores_text(mc: int) -> str:
    """Millicores as people say them: "1 core", "2.5 cores"."""
    cores = mc / 1000
    return f"{cores:g} core" + ("" if cores == 1 else "s")


def memory_text(nbytes: int) -> str:
    """Bytes in GiB (or MiB below one GiB)."""
    if nbytes >= GIB or nbytes == 0:
        return f"{nbytes / GIB:.4g} GiB"
    return f"{nbytes / (1 << 20):.4g} MiB"


def labels_text(labels: frozenset[str]) -> str:
    return ",".join(sorted(labels))


def shape_of(gang: Sequence[InstanceReq]) -> Shape:
    """What an essential set's feasibility and description depend on: (cores, bytes,
    labels) of each instance, in its order."""
    return tuple([(i.cores, i.memory, i.labels) for i in gang])


_UNKNOWN = object()
_cores = attrgetter("cores")
_memory = attrgetter("memory")
_labels = attrgetter("labels")


class Emptied:
    """The available nodes of a snapshot at full capacity, grouped by shape."""

    __slots__ = ("_cache", "_eligible", "_slots", "classes", "total")

    def __init__(self, nodes: Sequence[NodeState]) -> None:
        seen: set[str] = set()
        shapes: Counter[tuple[int, int, frozenset[str]]] = Counter()
        for node in nodes:
            if node.name in seen:
                continue  # the first of duplicate names counts, as in a pass
            seen.add(node.name)
            if node.available:
                shapes[(millicores(node.cores), node.memory, node.labels)] += 1
        # (cores, memory, labels, how many nodes), largest first
        self.classes = sorted(
            ((c, m, labels, n) for (c, m, labels), n in shapes.items()),
            key=lambda k: (k[0], k[1]),
            reverse=True,
        )
        # cores and bytes of all of them (the whole of what fair shares divide)
        self.total = (
            sum(c * n for c, _, _, n in self.classes) / 1000,
            float(sum(m * n for _, m, _, n in self.classes)),
        )
        self._eligible: dict[frozenset[str], list[tuple[int, int, frozenset[str], int]]] = {}
        self._cache: dict[Signature, object] = {}
        self._slots: dict[tuple[float, int, frozenset[str], int], bool] = {}

    def eligible(self, labels: frozenset[str]) -> list[tuple[int, int, frozenset[str], int]]:
        found = self._eligible.get(labels)
        if found is None:
            found = self._eligible[labels] = [k for k in self.classes if labels <= k[2]]
        return found

    def never(self, gang: Sequence[InstanceReq]) -> str | None:
        """Why this essential set can never start on this cluster ("unschedulable: ..."),
        or None when the emptied cluster holds it. Cheap when many sets are alike: the
        quick acceptance is memoised per envelope (largest cores, largest memory, labels,
        count), the full answer per shape."""
        if not gang:
            return None
        c = max(map(_cores, gang))
        m = max(map(_memory, gang))
        labels = frozenset().union(*map(_labels, gang))
        envelope = (c, m, labels, len(gang))
        fits = self._slots.get(envelope)
        if fits is None:
            fits = self._slots[envelope] = self._enough_slots(millicores(c), m, labels, len(gang))
        if fits:
            return None
        sig: Signature = tuple(
            sorted(
                ((millicores(i.cores), i.memory, i.labels) for i in gang),
                key=lambda k: (k[0], k[1]),
                reverse=True,
            )
        )
        found = self._cache.get(sig, _UNKNOWN)
        if found is _UNKNOWN:
            found = self._cache[sig] = self._why(sig)
        return found  # type: ignore[return-value]

    def _why(self, sig: Signature) -> str | None:
        for c, m, labels in dict.fromkeys(sig):
            why = self._alone(c, m, labels)
            if why is not None:
                return "unschedulable: " + why
        return self._together(sig)

    def _enough_slots(self, c: int, m: int, labels: frozenset[str], need: int) -> bool:
        """Quick acceptance: the nodes having every label of the set hold `need` copies
        of its largest cores and largest memory."""
        for cap_c, cap_m, _, count in self.eligible(labels):
            per = min(cap_c // c if c else need, cap_m // m if m else need)
            need -= per * count
            if need <= 0:
                return True
        return False

    def _alone(self, c: int, m: int, labels: frozenset[str]) -> str | None:
        """Why no node could hold this one instance, or None if one could."""
        eligible = self.eligible(labels)
        where = f"node labelled {labels_text(labels)}" if labels else "node"
        if not eligible:
            return f"no {where}" + (" is available" if not labels else "")
        if any(cap_c >= c and cap_m >= m for cap_c, cap_m, _, _ in eligible):
            return None
        if all(cap_c < c for cap_c, _, _, _ in eligible):
            return f"no {where} has {cores_text(c)}"
        if all(cap_m < m for _, cap_m, _, _ in eligible):
            return f"no {where} has {memory_text(m)}"
        return f"no {where} has both {cores_text(c)} and {memory_text(m)}"

    def _over_capacity(self, sig: Signature) -> bool:
        """Whether the instances needing some label set ask more, in all, than the nodes
        having those labels hold (a quick proof that the set cannot fit)."""
        for wanted in {labels for _, _, labels in sig}:
            need_c = sum(c for c, _, labels in sig if wanted <= labels)
            need_m = sum(m for _, m, labels in sig if wanted <= labels)
            have = self.eligible(wanted)
            if need_c > sum(c * n for c, _, _, n in have) or need_m > sum(
                m * n for _, m, _, n in have
            ):
                return True
        return False

    def _together(self, sig: Signature) -> str | None:
        """Whether the whole set fits the emptied nodes, by a search that places the
        most constrained instances first (fewest eligible nodes, then largest) and
        backtracks, after a quick check of the total room per label set. A search that
        runs out of its budget (`_SEARCH_BUDGET` steps) calls the set unschedulable, as
        first fit decreasing would have."""
        free: list[list[int]] = []
        labels_of: list[frozenset[str]] = []
        for cap_c, cap_m, labels, count in self.classes:
            for _ in range(min(count, len(sig))):  # more nodes of a shape than instances: idle
                free.append([cap_c, cap_m])
                labels_of.append(labels)
        options = [[k for k in range(len(free)) if labels <= labels_of[k]] for _, _, labels in sig]
        order = sorted(range(len(sig)), key=lambda j: (len(options[j]), -sig[j][0], -sig[j][1]))
        steps = 0

        def place(at: int) -> bool | None:  # True: fits; False: cannot; None: out of budget
            nonlocal steps
            if at == len(order):
                return True
            j = order[at]
            c, m, _ = sig[j]
            tried: set[tuple[int, int, frozenset[str]]] = set()  # nodes left alike: one choice
            for k in options[j]:
                room = free[k]
                if room[0] < c or room[1] < m or (room[0], room[1], labels_of[k]) in tried:
                    continue
                steps += 1
                if steps > _SEARCH_BUDGET:
                    return None
                tried.add((room[0], room[1], labels_of[k]))
                room[0] -= c
                room[1] -= m
                found = place(at + 1)
                room[0] += c
                room[1] += m
                if found is not False:
                    return found
            return False

        # Out of budget (a large set, nearly fitting) counts as not fitting, as first fit
        # decreasing did: the search has tried the likeliest placements first.
        if self._over_capacity(sig) or not place(0):
            total_c = sum(s[0] for s in sig)
            total_m = sum(s[1] for s in sig)
            return (
                f"unschedulable: its {len(sig)} essential instances"
                f" ({cores_text(total_c)}, {memory_text(total_m)} in all) do not fit"
                " together on the whole cluster, even empty"
            )
        return None

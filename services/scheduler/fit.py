"""What the cluster as it is could ever hold: its available nodes, emptied.

An execution whose essential set does not fit the emptied cluster can never start until
the cluster changes (a larger or differently labelled node joins): a pass skips it (it
takes no hold and costs the executions behind it nothing) and reports it unschedulable.

The test is first-fit decreasing on the emptied nodes, after two quick ones (every
instance needs a node holding it alone; the set needs no more than the eligible nodes
have in all) and a quick acceptance (enough slots of the set's largest instance). First
fit decreasing may fail where a cleverer packing exists; then the execution is only
called unschedulable, it is still tried at every pass like any other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter

from .model import InstanceReq, NodeState
from .placement import millicores

GIB = 1 << 30

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

    def _together(self, sig: Signature) -> str | None:
        """First-fit decreasing of the whole set on the emptied nodes."""
        free: list[list[int]] = []
        labels_of: list[frozenset[str]] = []
        for cap_c, cap_m, labels, count in self.classes:
            for _ in range(min(count, len(sig))):  # more nodes of a shape than instances: idle
                free.append([cap_c, cap_m])
                labels_of.append(labels)
        for c, m, labels in sig:
            for k, room in enumerate(free):
                if room[0] >= c and room[1] >= m and labels <= labels_of[k]:
                    room[0] -= c
                    room[1] -= m
                    break
            else:
                total_c = sum(s[0] for s in sig)
                total_m = sum(s[1] for s in sig)
                return (
                    f"unschedulable: its {len(sig)} essential instances"
                    f" ({cores_text(total_c)}, {memory_text(total_m)} in all) do not fit"
                    " together on the whole cluster, even empty"
                )
        return None

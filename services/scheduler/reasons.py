"""The words of a pass for an execution it did not start (`Reason`).

A reason is built as plain values (`words`, a set's shape, the room left) and put in
words by `render` only when read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

from .fit import Shape, cores_text, labels_text, memory_text, shape_of
from .model import InstanceReq, Reason
from .placement import Cluster, millicores

_size = attrgetter("cores", "memory")

HOLDS_ALL = "behind execution {}, which holds every node"
HOLDS = "behind execution {}, which holds the nodes it needs"
AHEAD = "waiting its turn: executions ranked ahead of it wait for room too"
IN_ORDER = "waiting its turn: the queue is served in order, behind execution {}"


def words(text: str, detail: str = "") -> Reason:
    """A reason already in words."""
    return Reason(("words", text), ("words", detail) if detail else ())


def unschedulable(why: str) -> Reason:
    return Reason(("words", why), schedulable=False)


def render(value: tuple[Any, ...]) -> str:
    """The words of a `Reason`'s cause or detail."""
    kind = value[0]
    if kind == "words":
        return str(value[1])
    if kind == "needs":
        return needs(shape_of(value[1]))
    if kind == "room":
        _, labelled, fc, fm = value
        where = "such a node" if labelled else "a node"
        if fc is None:
            return f"no {where} is open"
        return f"the largest free room on {where} is {cores_text(fc)} and {memory_text(fm)}"
    raise ValueError(f"no words for {value!r}")


def needs(shape: Shape) -> str:
    """ "needs 3 instances of 2 cores and 4 GiB on nodes labelled gpu" (largest first)."""
    shapes = Counter((millicores(c), m, labels) for c, m, labels in shape)
    parts = []
    for (c, m, labels), n in sorted(shapes.items(), key=lambda kv: kv[0][:2], reverse=True):
        where = f" on nodes labelled {labels_text(labels)}" if labels else ""
        noun = "instance" if n == 1 else "instances"
        parts.append(f"{n} {noun} of {cores_text(c)} and {memory_text(m)}{where}")
    return "needs " + " and ".join(parts)


def room(cluster: Cluster, labels: frozenset[str]) -> tuple[Any, ...]:
    """The most free cores on one node a request with `labels` may use, and its memory:
    a `Reason` detail."""
    best: tuple[int, int] | None = None
    for bucket in cluster.eligible(labels):
        if bucket.by_cores and not bucket.closed:
            fc, fm, _ = bucket.by_cores[-1]
            if best is None or (fc, fm) > best:
                best = (fc, fm)
    if best is None:
        return ("room", bool(labels), None, None)
    return ("room", bool(labels), max(0, best[0]), max(0, best[1]))


class Describer:
    """The reasons of one pass: the room of a label set is looked up once for as long as
    the free room does not move (`moved()` says it did)."""

    __slots__ = ("_room", "cluster", "holder")

    def __init__(self, cluster: Cluster, holder: dict[int, int]) -> None:
        self.cluster = cluster
        self.holder = holder
        self._room: dict[frozenset[str], tuple[Any, ...]] = {}

    def moved(self) -> None:
        self._room.clear()

    def blocked(self, gang: Sequence[InstanceReq]) -> Reason:
        """Why `gang` did not fit: a hold on the nodes it needs, or what it needs (in
        words when read) and the room left."""
        cluster, holder = self.cluster, self.holder
        if holder:
            for labels in {i.labels for i in gang}:
                for bucket in cluster.eligible(labels):
                    if bucket.closed and id(bucket) in holder:
                        return words(HOLDS.format(holder[id(bucket)]))
        labels = max(gang, key=_size).labels
        where = self._room.get(labels)
        if where is None:
            where = self._room[labels] = room(cluster, labels)
        return Reason(("needs", tuple(gang)), where)


def blocked(cluster: Cluster, gang: Sequence[InstanceReq], holder: dict[int, int]) -> Reason:
    """Why `gang` did not fit (`Describer.blocked` for one set)."""
    return Describer(cluster, holder).blocked(gang)

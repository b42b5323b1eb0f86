"""The words of a pass for an execution it did not start (`Reason`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .fit import cores_text, labels_text, memory_text
from .model import InstanceReq, Reason
from .placement import Cluster, millicores

HOLDS_ALL = "behind execution {}, which holds every node"
HOLDS = "behind execution {}, which holds the nodes it needs"
AHEAD = "waiting its turn: executions ranked ahead of it wait for room too"
IN_ORDER = "waiting its turn: the queue is served in order, behind execution {}"


def unschedulable(why: str) -> Reason:
    return Reason(why, schedulable=False)


def needs(gang: Sequence[InstanceReq]) -> str:
    """ "needs 3 instances of 2 cores and 4 GiB on nodes labelled gpu" (largest first)."""
    shapes = Counter((millicores(i.cores), i.memory, i.labels) for i in gang)
    parts = []
    for (c, m, labels), n in sorted(shapes.items(), key=lambda kv: kv[0][:2], reverse=True):
        where = f" on nodes labelled {labels_text(labels)}" if labels else ""
        noun = "instance" if n == 1 else "instances"
        parts.append(f"{n} {noun} of {cores_text(c)} and {memory_text(m)}{where}")
    return "needs " + " and ".join(parts)


def room(cluster: Cluster, labels: frozenset[str]) -> str:
    """The most free cores on one node a request with `labels` may use, and its memory."""
    best: tuple[int, int] | None = None
    for bucket in cluster.eligible(labels):
        if bucket.by_cores and not bucket.closed:
            fc, fm, _ = bucket.by_cores[-1]
            if best is None or (fc, fm) > best:
                best = (fc, fm)
    where = "such a node" if labels else "a node"
    if best is None:
        return f"no {where} is open"
    fc, fm = max(0, best[0]), max(0, best[1])
    return f"the largest free room on {where} is {cores_text(fc)} and {memory_text(fm)}"


def blocked(cluster: Cluster, gang: Sequence[InstanceReq], holder: dict[int, int]) -> Reason:
    """Why `gang` did not fit: a hold on the nodes it needs, or the room left."""
    for labels in {i.labels for i in gang}:
        for bucket in cluster.eligible(labels):
            if bucket.closed and id(bucket) in holder:
                return Reason(HOLDS.format(holder[id(bucket)]))
    lead = max(gang, key=lambda i: (i.cores, i.memory))
    return Reason(needs(gang), room(cluster, lead.labels))

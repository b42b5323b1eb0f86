"""Fair share between users: Dominant Resource Fairness as an ordering layer.

Dominant Resource Fairness (Ghodsi et al., NSDI 2011) gives the next resources to the
user whose *dominant share* (the largest, over cores and memory, of the fraction of the
cluster it holds) is the smallest, weighted: a user of weight 2 is entitled to twice
the share of one of weight 1.

Here it orders the queue. Each user's share starts at what its executions hold now;
then, inside each priority class, the users take turns, each turn going to the user with
the smallest weighted share so far, who puts forward its next execution in the policy's
own order (dynsize, size or fifo); the essential set that execution waits for is added
to the user's share. So a user holding much of the cluster ranks its executions, running
or waiting, after those of users holding less: the others' essential sets start first,
and may reclaim its elastic instances. An execution that can never fit counts for
nothing.

With one user this is exactly the policy's own order. The cost is O(E log U) per pass.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter, itemgetter

from .model import ExecutionState, InstanceReq

RankKey = tuple[float, float, float, int]

_first = itemgetter(0)
_cores = attrgetter("cores")
_memory = attrgetter("memory")
_priority = attrgetter("priority")


def drf_order(
    executions: Sequence[ExecutionState],
    keys: Sequence[RankKey],
    waiting: Sequence[bool],
    weights: Mapping[str, float],
    capacity: tuple[float, float],
    never: Callable[[list[InstanceReq]], str | None],
) -> list[int]:
    """Indices of `executions` in fair order (priority class first, from `keys`)."""
    cap_c = capacity[0] if capacity[0] > 0 else 1.0
    cap_m = capacity[1] if capacity[1] > 0 else 1.0

    def dominant(user: str, cores: float, memory: float) -> float:
        weight = weights.get(user, 1.0)
        return max(cores / cap_c, memory / cap_m) / (weight if weight > 0 else 1.0)

    # What each user holds now is where its share starts.
    held: dict[str, list[float]] = {}
    for ex in executions:
        if ex.placed:
            acc = held.setdefault(ex.user, [0.0, 0.0])
            insts = list(map(_first, ex.placed))
            acc[0] += sum(map(_cores, insts))
            acc[1] += sum(map(_memory, insts))
    share = {user: dominant(user, c, m) for user, (c, m) in held.items()}
    by_class: dict[float, dict[str, list[int]]] = {}
    for i in sorted(range(len(executions)), key=keys.__getitem__):
        queues = by_class.setdefault(keys[i][0], {})
        queues.setdefault(executions[i].user, []).append(i)
    order: list[int] = []
    for cls in sorted(by_class):
        queues = by_class[cls]
        if len(queues) == 1:  # one user in the class: its own order, nothing to share
            ((user, queue),) = queues.items()
            order.extend(queue)
            for i in queue:
                if waiting[i]:
                    gang = [r for r in executions[i].pending if r.essential]
                    if never(gang) is None:
                        share[user] = share.get(user, 0.0) + dominant(
                            user, sum(map(_cores, gang)), sum(map(_memory, gang))
                        )
            continue
        heads = dict.fromkeys(queues, 0)
        heap = [(share.get(user, 0.0), keys[queue[0]], user) for user, queue in queues.items()]
        heapq.heapify(heap)
        while heap:
            _, _, user = heapq.heappop(heap)
            queue = queues[user]
            i = queue[heads[user]]
            order.append(i)
            if waiting[i]:  # the essential set it waits for joins its user's share
                gang = [r for r in executions[i].pending if r.essential]
                if never(gang) is None:
                    cores = sum(map(_cores, gang))
                    memory = sum(map(_memory, gang))
                    share[user] = share.get(user, 0.0) + dominant(user, cores, memory)
            heads[user] += 1
            if heads[user] < len(queue):
                heapq.heappush(heap, (share.get(user, 0.0), keys[queue[heads[user]]], user))
    return order


def clamp_priorities(
    executions: Sequence[ExecutionState], bounds: Mapping[str, int]
) -> Sequence[ExecutionState]:
    """Executions whose priority exceeds their user's bound (the role's `max_priority`)
    brought down to it; the others as they are (no copy when none exceeds)."""
    from dataclasses import replace

    if not bounds or not executions:
        return executions
    if max(map(_priority, executions)) <= min(bounds.values()):
        return executions  # none exceeds any bound (most passes: one look, in C)
    out: list[ExecutionState] | None = None
    for n, ex in enumerate(executions):
        bound = bounds.get(ex.user)
        if bound is not None and ex.priority > bound:
            if out is None:
                out = list(executions)
            out[n] = replace(ex, priority=bound)
    return executions if out is None else out

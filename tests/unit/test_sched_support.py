"""Builders shared by the scheduling core tests (this module holds no tests)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from itertools import count

from services.scheduler.core import Decisions, ExecutionState, InstanceReq, NodeState

GIB = 1 << 30

_ids = count(1000)


def node(
    name: str, cores: float = 8, memory_gib: int = 32, *labels: str, up: bool = True
) -> NodeState:
    """A node with `cores` and `memory_gib` GiB."""
    return NodeState(
        name=name,
        cores=float(cores),
        memory=memory_gib * GIB,
        labels=frozenset(labels),
        available=up,
    )


def inst(
    ex: int,
    cores: float = 1,
    memory_gib: float = 1,
    *,
    essential: bool = True,
    labels: Iterable[str] = (),
    id: int | None = None,
) -> InstanceReq:
    """An instance request of execution `ex`."""
    return InstanceReq(
        id=next(_ids) if id is None else id,
        execution_id=ex,
        cores=float(cores),
        memory=int(memory_gib * GIB),
        labels=frozenset(labels),
        essential=essential,
    )


def execution(
    id: int,
    pending: Iterable[InstanceReq] = (),
    placed: Iterable[tuple[InstanceReq, str]] = (),
    *,
    at: float = 0.0,
    size: float = 1.0,
    priority: int = 0,
    not_before: float = 0.0,
) -> ExecutionState:
    """An execution submitted at `at`."""
    return ExecutionState(
        id=id,
        submitted_at=at,
        size=size,
        priority=priority,
        pending=tuple(pending),
        placed=tuple(placed),
        not_before=not_before,
    )


def apply(executions: list[ExecutionState], decisions: Decisions) -> list[ExecutionState]:
    """The executions after `decisions`, as the service applies them (stops first)."""
    stops = set(decisions.stops)
    starts = dict(decisions.starts)
    out = []
    for ex in executions:
        pending = [i for i in ex.pending if i.id not in starts]
        placed = [(i, n) for i, n in ex.placed if i.id not in stops]
        pending += [i for i, _ in ex.placed if i.id in stops]
        placed += [(i, starts[i.id]) for i in ex.pending if i.id in starts]
        out.append(replace(ex, pending=tuple(pending), placed=tuple(placed)))
    return out


def started_on(decisions: Decisions) -> dict[int, str]:
    """Instance id -> node of every start."""
    return dict(decisions.starts)

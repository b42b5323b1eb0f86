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


def test_start_commands_for_one_node_are_split_by_size() -> None:
    from common import messages as msgs
    from services.scheduler.store import split_commands

    def start(i: int, pad: int) -> msgs.StartInstance:
        return msgs.StartInstance(
            execution_id=1,
            instance_id=i,
            instance=f"w{i}",
            container_name=f"c{i}",
            network="n",
            image="zoe/busybox:1",
            command="x" * pad,
            cores_limit=1.0,
            memory_limit=1 << 20,
        )

    starts = [start(i, 300) for i in range(10)]
    size = len(msgs.encode(starts[0]))
    groups = split_commands(starts, 3 * size)
    assert [len(g) for g in groups] == [3, 3, 3, 1]
    assert [s for g in groups for s in g] == starts  # all of them, in order
    big = start(0, 5000)
    assert split_commands([big], 100) == [[big]]  # alone if too large
    assert split_commands(starts, 10**9) == [starts]


def test_state_changes_go_out_a_thousand_to_a_message_in_order() -> None:
    from common import messages as msgs
    from services.scheduler.store import state_events

    moved = [(i, f"user{i % 3}") for i in range(2 * msgs.STATE_CHANGES_PER_MESSAGE + 5)]
    events = [o.message for o in state_events(moved, "running")]
    assert all(isinstance(e, msgs.ExecutionStatesChanged) for e in events)
    assert [len(e.changes) for e in events] == [1000, 1000, 5]  # type: ignore[attr-defined]
    changes = [c for e in events for c in e.changes]  # type: ignore[attr-defined]
    assert [(c.execution_id, c.user, c.state) for c in changes] == [
        (i, u, "running") for i, u in moved
    ]
    assert state_events([], "running") == []
    assert all(len(msgs.encode(e)) < 200_000 for e in events)

"""What a pass keeps for the next one (services/scheduler/kept.py) equals what it would
build afresh, and the decisions are the same with it or without it (hypothesis)."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler.core import (
    Decisions,
    ExecutionState,
    InstanceReq,
    Kept,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.placement import millicores
from tests.unit.test_sched_invariants import clusters

POLICIES = [
    "fifo",
    "size",
    "dynsize",
    "dynsize+spread",
    "size+noreclaim",
    "fifo+lookahead=1+reserve_after=50",
    "dynsize+nopriority+scan=2",
    "fair",
]


def _apply(executions: list[ExecutionState], decisions: Decisions) -> list[ExecutionState]:
    """The executions after `decisions`; an execution they do not touch stays the same
    object, as in the service's view."""
    stops = set(decisions.stops)
    starts = dict(decisions.starts)
    out = []
    for ex in executions:
        if not any(i.id in starts for i in ex.pending) and not any(
            i.id in stops for i, _ in ex.placed
        ):
            out.append(ex)
            continue
        pending = [i for i in ex.pending if i.id not in starts]
        placed = [(i, n) for i, n in ex.placed if i.id not in stops]
        pending += [i for i, _ in ex.placed if i.id in stops]
        placed += [(i, starts[i.id]) for i in ex.pending if i.id in starts]
        out.append(replace(ex, pending=tuple(pending), placed=tuple(placed)))
    return out


def _copy(ex: ExecutionState, ex_id: int, first: int) -> ExecutionState:
    """A new execution like `ex` (waiting for all its instances), with fresh ids."""
    reqs = [*ex.pending, *(i for i, _ in ex.placed)]
    return replace(
        ex,
        id=ex_id,
        pending=tuple(replace(i, id=first + n, execution_id=ex_id) for n, i in enumerate(reqs)),
        placed=(),
    )


def _expected(nodes: list[NodeState], executions: list[ExecutionState]) -> tuple[object, ...]:
    """The free room and elastic room per node, summed from the snapshot."""
    names = list(dict.fromkeys(n.name for n in nodes))
    first = {n.name: n for n in reversed(nodes)}
    free_c = {name: millicores(first[name].cores) for name in names}
    free_m = {name: first[name].memory for name in names}
    room_c = dict.fromkeys(names, 0)
    room_m = dict.fromkeys(names, 0)
    for ex in executions:
        for inst, node in ex.placed:
            if node in free_c:
                free_c[node] -= millicores(inst.cores)
                free_m[node] -= inst.memory
                if not inst.essential and first[node].available:
                    room_c[node] += millicores(inst.cores)
                    room_m[node] += inst.memory
    return (
        [free_c[n] for n in names],
        [free_m[n] for n in names],
        [room_c[n] for n in names],
        [room_m[n] for n in names],
    )


def _state(kept: Kept) -> tuple[object, ...]:
    base = kept.base
    assert base is not None
    return (
        base.free_c,
        base.free_m,
        [(b.labels, b.by_cores, b.by_memory) for b in base.buckets],
        [None if b is None else b.labels for b in base.node_bucket],
        kept.free_c,
        kept.free_m,
        kept.room_c,
        kept.room_m,
        sorted((idx, e.ex.id, n) for idx, m in enumerate(kept.members) for e, n in m.values()),
    )


def _change(
    rng: random.Random,
    nodes: list[NodeState],
    executions: list[ExecutionState],
    next_id: list[int],
) -> tuple[list[NodeState], list[ExecutionState]]:
    """Random deltas between two passes: ends, arrivals, equal copies, a node changed."""
    executions = list(executions)
    for _ in range(rng.randint(0, 2)):
        if executions:
            executions.pop(rng.randrange(len(executions)))
    for _ in range(rng.randint(0, 2)):
        if executions:
            like = rng.choice(executions)
            next_id[0] += 1
            executions.append(_copy(like, 100_000 + next_id[0], 1_000_000 + 100 * next_id[0]))
    if executions and rng.random() < 0.3:  # the same values, another object
        k = rng.randrange(len(executions))
        executions[k] = replace(executions[k])
    if executions and rng.random() < 0.1:  # the same object twice
        executions.append(rng.choice(executions))
    if rng.random() < 0.2:
        k = rng.randrange(len(nodes))
        nodes = list(nodes)
        nodes[k] = replace(nodes[k], available=not nodes[k].available)
    rng.shuffle(executions)
    return nodes, executions


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(POLICIES), st.randoms(use_true_random=False))
def test_kept_equals_rebuilt_and_decides_the_same(cluster, name, rng):
    nodes, executions, now = cluster
    policy = Policy.from_name(name)
    kept = Kept()
    next_id = [0]
    weights = {"": 2.0}
    for _ in range(8):
        with_kept = schedule(nodes, executions, now=now, policy=policy, weights=weights, kept=kept)
        fresh = Kept()  # built from this snapshot alone
        alone = schedule(nodes, executions, now=now, policy=policy, weights=weights, kept=fresh)
        assert with_kept == alone
        assert _state(kept) == _state(fresh)
        assert kept.base is not None
        for bucket in kept.base.buckets:  # each bucket's order is the order of its nodes now
            members = [i for i, b in enumerate(kept.base.node_bucket) if b is bucket]
            assert bucket.by_cores == sorted(
                (kept.base.free_c[i], kept.base.free_m[i], i) for i in members
            )
            assert bucket.by_memory == sorted((kept.base.free_m[i], i) for i in members)
        assert (kept.base.free_c, kept.base.free_m, kept.room_c, kept.room_m) == _expected(
            nodes, executions
        )
        executions = _apply(executions, with_kept)
        nodes, executions = _change(rng, nodes, executions, next_id)
        now += rng.choice([0.0, 1.0, 500.0])


def test_a_kept_placement_survives_a_node_list_equal_but_new() -> None:
    gib = 1 << 30
    nodes = [
        NodeState(name=f"n{i}", cores=4.0, memory=8 * gib, labels=frozenset()) for i in range(2)
    ]
    inst = InstanceReq(
        id=1, execution_id=1, cores=4.0, memory=gib, labels=frozenset(), essential=True
    )
    running = ExecutionState(id=1, submitted_at=0.0, size=1.0, placed=((inst, "n0"),))
    waiting = ExecutionState(
        id=2,
        submitted_at=1.0,
        size=1.0,
        pending=(replace(inst, id=2, execution_id=2),),
    )
    kept = Kept()
    policy = Policy.from_name("dynsize")
    first = schedule(nodes, [running, waiting], now=2.0, policy=policy, kept=kept)
    assert first.starts == [(2, "n1")]
    again = schedule(list(nodes), [running, waiting], now=3.0, policy=policy, kept=kept)
    assert again == first

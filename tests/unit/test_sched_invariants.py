"""Rules every pass keeps, on random clusters and queues (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler.core import (
    Decisions,
    ExecutionState,
    InstanceReq,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.invariants import check_decisions
from services.scheduler.placement import millicores
from services.scheduler.policies import rank_key, rank_keys
from services.scheduler.simulator import Simulation, Variant
from services.scheduler.workload import App, Workload
from tests.unit.test_sched_support import GIB, apply

POLICIES = [
    "fifo",
    "size",
    "dynsize",
    "flexible",
    "flexible+size+pack",
    "dynsize+spread",
    "size+noreclaim",
    "fifo+lookahead=1+reserve_after=50",
    "dynsize+nopriority+scan=2",
]
LABELS = st.frozensets(st.sampled_from(["gpu", "ssd"]), max_size=2)
CORES = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 4.0])


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeState], list[ExecutionState], float]:
    """Nodes, and executions waiting or running on them without over-committing."""
    nodes = [
        NodeState(
            name=f"n{i}",
            cores=float(draw(st.integers(1, 12))),
            memory=draw(st.integers(1, 24)) * GIB,
            labels=draw(LABELS),
            available=draw(st.booleans().map(lambda b: b or draw(st.booleans()))),
        )
        for i in range(draw(st.integers(1, 6)))
    ]
    free = {n.name: [millicores(n.cores), n.memory] for n in nodes}
    next_id = iter(range(1, 10_000))
    executions = []
    for ex_id in range(1, draw(st.integers(0, 8)) + 1):
        reqs = [
            InstanceReq(
                id=next(next_id),
                execution_id=ex_id,
                cores=draw(CORES),
                memory=draw(st.integers(1, 6)) * GIB,
                labels=draw(LABELS),
                essential=essential,
            )
            for essential in [True] * draw(st.integers(1, 3)) + [False] * draw(st.integers(0, 5))
        ]
        placed: list[tuple[InstanceReq, str]] = []
        if draw(st.booleans()):  # try to make it a running execution
            placed = _fit(nodes, free, reqs, draw)
        held = {i.id for i, _ in placed}
        if not all(i.id in held for i in reqs if i.essential):
            for inst, node in placed:  # its gang did not fit: it waits with nothing held
                free[node][0] += millicores(inst.cores)
                free[node][1] += inst.memory
            placed = []
            held = set()
        executions.append(
            ExecutionState(
                id=ex_id,
                submitted_at=draw(st.floats(0, 500)),
                size=draw(st.floats(1, 1000)),
                priority=draw(st.integers(0, 2)),
                pending=tuple(i for i in reqs if i.id not in held),
                placed=tuple(placed),
                not_before=draw(st.sampled_from([0.0, 0.0, 10_000.0])),
            )
        )
    return nodes, executions, draw(st.floats(0, 20_000))


def _fit(
    nodes: list[NodeState], free: dict[str, list[int]], reqs: list[InstanceReq], draw: st.DrawFn
) -> list[tuple[InstanceReq, str]]:
    placed = []
    for inst in reqs:
        if not draw(st.booleans()) and not inst.essential:
            continue
        for n in nodes:
            room = free[n.name]
            c = millicores(inst.cores)
            if inst.labels <= n.labels and room[0] >= c and room[1] >= inst.memory:
                room[0] -= c
                room[1] -= inst.memory
                placed.append((inst, n.name))
                break
    return placed


def _check(nodes, executions, now, policy: Policy) -> Decisions:
    decisions = schedule(nodes, executions, now=now, policy=policy)
    assert check_decisions(nodes, executions, decisions, now) == []
    return decisions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(POLICIES))
def test_a_pass_keeps_every_rule(cluster, name):
    nodes, executions, now = cluster
    policy = Policy.from_name(name)
    decisions = _check(nodes, executions, now, policy)
    if decisions.stops:
        assert policy.reclaim
        # Reclaiming happens only to let an essential set start, on the nodes it uses.
        essential_nodes = {
            node
            for inst_id, node in decisions.starts
            for ex in executions
            for i in ex.pending
            if i.id == inst_id and i.essential
        }
        stopped_nodes = {n for ex in executions for i, n in ex.placed if i.id in decisions.stops}
        assert stopped_nodes <= essential_nodes


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(POLICIES), st.randoms(use_true_random=False))
def test_rules_hold_over_successive_passes(cluster, name, rng):
    nodes, executions, now = cluster
    policy = Policy.from_name(name)
    for step in range(4):
        decisions = _check(nodes, executions, now + step, policy)
        executions = apply(executions, decisions)
        # Some executions end, others lose a node.
        executions = [ex for ex in executions if rng.random() > 0.2]
        if nodes and rng.random() < 0.3:
            k = rng.randrange(len(nodes))
            nodes = [*nodes[:k], replace(nodes[k], available=False), *nodes[k + 1 :]]


@settings(max_examples=200, deadline=None)
@given(clusters(), st.sampled_from(POLICIES))
def test_bulk_rank_keys_equal_the_reference(cluster, name):
    _, executions, now = cluster
    policy = Policy.from_name(name)
    waiting = [any(i.essential for i in ex.pending) for ex in executions]
    expected = [rank_key(ex, now, policy, w) for ex, w in zip(executions, waiting, strict=True)]
    assert rank_keys(executions, waiting, now, policy) == expected


def _starvation_workload() -> Workload:
    """One large rigid application among a steady stream of small ones: on a 2-node
    cluster the small ones alone keep some cores busy at any time."""
    nodes = tuple(NodeState(f"n{i}", 4.0, 16 * GIB, frozenset()) for i in range(2))
    apps = []
    next_id = 1
    for k in range(400):
        big = k == 5
        count = 8 if big else 1
        instances = tuple(
            InstanceReq(next_id + j, k + 1, 1.0, GIB, frozenset(), True) for j in range(count)
        )
        next_id += count
        apps.append(
            App(
                id=k + 1,
                arrival=30.0 * k,
                runtime=300.0 if big else 100.0,
                size=2400.0 if big else 1.0,
                elastic=False,
                instances=instances,
            )
        )
    return Workload(name="starve", nodes=nodes, apps=tuple(apps), load=0.0)


def test_dynsize_starves_nothing_while_size_alone_would():
    workload = _starvation_workload()
    last_arrival = workload.apps[-1].arrival
    for label, starts_early in [
        ("dynsize", True),
        ("size+reserve_after=1000000000", False),
    ]:
        sim = Simulation(workload, Variant.parse(label), check=True)
        result = sim.run()
        assert result.finished == len(workload.apps)
        big = sim.runs[6]
        assert big.started is not None
        assert (big.started < last_arrival) is starts_early, label

"""Executions that can never fit: they take no hold and delay nothing (fit.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler.core import ExecutionState, InstanceReq, Policy, schedule
from services.scheduler.fit import Emptied
from tests.unit.test_sched_invariants import POLICIES, clusters
from tests.unit.test_sched_support import GIB, execution, inst, node

ALL = ["fifo", "size", "dynsize", "flexible", "flexible+size", "dynsize+spread", "size+noreclaim"]


def _starts(policy: str, nodes, executions, now: float) -> dict[int, str]:
    return dict(schedule(nodes, executions, now=now, policy=Policy.from_name(policy)).starts)


def test_a_request_larger_than_any_node_does_not_block_the_queue():
    # The reproduction: three nodes of 32 cores, a 64-core request, then a 1-core job.
    nodes = [node(f"n{i}", 32, 128) for i in range(3)]
    huge = execution(1, [inst(1, 64, 4)], at=0.0)
    small = execution(2, [inst(2, 1, 1)], at=1.0)
    for policy in ALL:
        for now in (100.0, 7_201.0, 100_000.0):
            assert set(_starts(policy, nodes, [huge, small], now)) == {small.pending[0].id}, (
                policy,
                now,
            )


def test_a_set_larger_than_the_whole_cluster_does_not_block_the_queue():
    nodes = [node(f"n{i}", 32, 128) for i in range(3)]
    gang = execution(1, [inst(1, 20, 4) for _ in range(5)], at=0.0)  # 100 cores on 96
    tight = execution(3, [inst(3, 20, 4) for _ in range(4)], at=0.5)  # 80 cores fit no 3x32
    small = execution(2, [inst(2, 1, 1)], at=1.0)
    for policy in ALL:
        started = _starts(policy, nodes, [gang, tight, small], 100_000.0)
        assert set(started) == {small.pending[0].id}, policy


def test_what_an_emptied_cluster_could_hold_and_why_not():
    nodes = [node("a", 32, 128), node("b", 8, 256, "gpu"), node("gone", 128, 512, up=False)]
    emptied = Emptied(nodes)
    assert emptied.never([inst(1, 32, 128)]) is None
    assert emptied.never([inst(1, 64, 4)]) == "unschedulable: no node has 64 cores"
    assert emptied.never([inst(1, 1, 300)]) == "unschedulable: no node has 300 GiB"
    assert emptied.never([inst(1, 16, 200)]) == (
        "unschedulable: no node has both 16 cores and 200 GiB"
    )
    assert emptied.never([inst(1, 16, labels={"gpu"})]) == (
        "unschedulable: no node labelled gpu has 16 cores"
    )
    assert emptied.never([inst(1, 1, labels={"fpga"})]) == ("unschedulable: no node labelled fpga")
    assert emptied.never([inst(1, 20, 4), inst(1, 20, 4)]) == (
        "unschedulable: its 2 essential instances (40 cores, 8 GiB in all) do not fit"
        " together on the whole cluster, even empty"
    )
    assert emptied.never([inst(1, 20, 4), inst(1, 8, 4)]) is None  # 20 on a, 8 on a or b
    assert Emptied([]).never([inst(1, 1)]) == "unschedulable: no node is available"


@st.composite
def never_fitting(draw: st.DrawFn, nodes) -> list[ExecutionState]:
    """Executions no available node set of `nodes` could hold, even emptied."""
    up = [n for n in nodes if n.available]
    top_c = max((n.cores for n in up), default=0.0)
    top_m = max((n.memory for n in up), default=0)
    total_c = sum(n.cores for n in up)
    out = []
    for k in range(draw(st.integers(1, 3))):
        ex_id = 500 + k
        ids = iter(range(50_000 + 100 * k, 50_000 + 100 * (k + 1)))
        kind = draw(st.sampled_from(["cores", "memory", "labels", "whole"]))

        def req(cores: float, memory: int, labels: frozenset[str] = frozenset()) -> InstanceReq:
            return InstanceReq(next(ids), ex_id, cores, memory, labels, True)  # noqa: B023

        if kind == "cores":
            gang = [req(top_c + draw(st.sampled_from([0.5, 1.0, 8.0])), GIB)]
        elif kind == "memory":
            gang = [req(0.5, top_m + GIB)]
        elif kind == "labels":
            gang = [req(0.5, GIB, frozenset({"fpga"}))]
        else:  # more cores in all than the cluster has
            count = int(total_c) + 1
            gang = [req(1.0, GIB) for _ in range(count)]
        elastic = [
            InstanceReq(next(ids), ex_id, 1.0, GIB, frozenset(), False)
            for _ in range(draw(st.integers(0, 2)))
        ]
        out.append(
            ExecutionState(
                id=ex_id,
                submitted_at=draw(st.floats(-100_000, 500)),  # often waited past any hold delay
                size=draw(st.floats(0.001, 1000)),
                priority=draw(st.integers(0, 3)),
                pending=tuple(gang + elastic),
            )
        )
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), clusters(), st.sampled_from(POLICIES))
def test_nothing_that_can_never_fit_delays_anything_else(data, cluster, name):
    nodes, executions, now = cluster
    unfit = data.draw(never_fitting(nodes))
    policy = Policy.from_name(name)
    alone = schedule(nodes, executions, now=now, policy=policy)
    mixed = schedule(nodes, [*unfit, *executions], now=now, policy=policy)
    assert mixed.starts == alone.starts
    assert mixed.stops == alone.stops


def test_a_labelled_instance_beside_larger_unlabelled_ones_is_placed_and_called_schedulable():
    """An MPI launcher bound to host1 (0.9 core) and two 1.2-core ranks on three 2-core
    hosts: placing the large ranks first would leave host1 too little room for the
    launcher; the labelled one goes first, and the set is never called unschedulable."""
    nodes = [node(f"host{i}", 2, 24, f"host{i}") for i in (1, 2, 3)]
    launcher = inst(1, 0.9, labels=["host1"])
    ranks = [inst(1, 1.2), inst(1, 1.2)]
    assert Emptied(nodes).never([launcher, *ranks]) is None
    assert Emptied(nodes).never([*ranks, launcher]) is None
    for policy in POLICIES:
        if policy.startswith("flexible"):
            continue  # the original Zoe's placement, kept as it was (instance by instance)
        decided = schedule(
            nodes, [execution(1, [*ranks, launcher])], now=1.0, policy=Policy.from_name(policy)
        )
        where = dict(decided.starts)
        assert where.get(launcher.id) == "host1", policy
        assert {where.get(r.id) for r in ranks} == {"host2", "host3"}, policy
    # a set that really cannot fit is still told apart
    assert Emptied(nodes).never([inst(1, 1.5, labels=["host1"]), inst(1, 1.5, labels=["host1"])])

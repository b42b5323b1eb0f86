"""The reclaim searches' memory (services/scheduler/reclaim.py): a search answered from
an earlier one that found nothing in the same state gives what searching would give,
and a pass decides the same with that memory or without it (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler import reclaim
from services.scheduler.core import (
    Decisions,
    ExecutionState,
    InstanceReq,
    Kept,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.reclaim import ElasticIndex, Found
from services.scheduler.workload import GIB, make_workload
from tests.unit.test_sched_invariants import clusters
from tests.unit.test_sched_kept import _apply

RECLAIMING = ["fifo", "size", "dynsize", "dynsize+spread", "fifo+lookahead=1+reserve_after=50"]
# (PROBES, VISITS): the real bounds, and tight ones so that small clusters cut searches
BOUNDS = [(reclaim.PROBES, reclaim.VISITS), (1, 2), (2, 3), (3, 8)]

Answer = tuple[int, int, bool]  # (node, probes, exhaustive)


def _answer(found: Found) -> Answer:
    return (found.node, found.probes, found.exhaustive)


@contextmanager
def searches(remember: bool, probes: int, visits: int) -> Iterator[list[Answer]]:
    """Run passes with the given bounds. With `remember`, each search answered from
    memory is searched again for real and both answers must agree (the answers are
    yielded); without, nothing is remembered."""
    find: Callable[..., Found] = ElasticIndex.find
    remembered: list[Answer] = []

    def checked(self: ElasticIndex, cluster: Any, pos: int, c: int, m: int, labels: Any, v: int):
        key = (c, m, labels)
        if not remember:
            self._failed.clear()
            return find(self, cluster, pos, c, m, labels, v)
        failed = self._failed.get(key)
        found = find(self, cluster, pos, c, m, labels, v)
        if failed is not None and failed.version == v and failed.pos <= pos:
            del self._failed[key]  # search for real, as if nothing had been remembered
            searched = find(self, cluster, pos, c, m, labels, v)
            self._failed[key] = failed
            assert _answer(found) == _answer(searched), (pos, failed)
            remembered.append(_answer(found))
        return found

    saved = (ElasticIndex.find, reclaim.PROBES, reclaim.VISITS)
    ElasticIndex.find = checked  # type: ignore[method-assign]
    reclaim.PROBES, reclaim.VISITS = probes, visits
    try:
        yield remembered
    finally:
        ElasticIndex.find, reclaim.PROBES, reclaim.VISITS = saved  # type: ignore[method-assign]


def _passes(
    nodes: list[NodeState], executions: list[ExecutionState], now: float, policy: Policy, n: int
) -> list[Decisions]:
    kept = Kept()
    out = []
    for k in range(n):
        decisions = schedule(nodes, executions, now=now + k, policy=policy, kept=kept)
        out.append(decisions)
        executions = _apply(executions, decisions)
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(RECLAIMING), st.sampled_from(BOUNDS))
def test_a_pass_decides_the_same_with_the_searches_memory_or_without(cluster, name, bounds):
    nodes, executions, now = cluster
    policy = Policy.from_name(name)
    with searches(True, *bounds):
        remembered = _passes(nodes, executions, now, policy, 3)
    with searches(False, *bounds):
        searched = _passes(nodes, executions, now, policy, 3)
    assert remembered == searched


def _churn(policy: Policy, passes: int) -> list[Decisions]:
    """60 nodes kept full by a queue of about 100 executions; before each pass, 2
    running executions end and 2 new ones arrive."""
    nodes = [
        NodeState(name=f"n{i}", cores=32.0, memory=128 * GIB, labels=frozenset()) for i in range(60)
    ]
    supply = iter(make_workload("default", 7, apps=1000).apps)
    executions: list[ExecutionState] = []
    clock = [0.0]

    def submit(count: int) -> None:
        for app in (next(supply) for _ in range(count)):
            clock[0] += 0.01
            executions.append(
                ExecutionState(
                    id=app.id, submitted_at=clock[0], size=app.size, pending=app.instances
                )
            )

    kept = Kept()
    out = []
    submit(100)
    for k in range(passes + 6):
        clock[0] += 1.0
        decisions = schedule(nodes, executions, now=clock[0], policy=policy, kept=kept)
        executions = _apply(executions, decisions)
        waiting = sum(1 for e in executions if any(i.essential for i in e.pending))
        if k < 6:  # fill the cluster until about 100 wait
            submit(max(0, 100 - waiting))
            continue
        out.append(decisions)
        running = [e for e in executions if not any(i.essential for i in e.pending)]
        ended = {e.id for e in running[k % 7 :: 13][:2]}
        executions = [e for e in executions if e.id not in ended]
        submit(2)
    return out


def test_searches_answered_from_memory_agree_with_searching_on_a_full_cluster() -> None:
    policy = Policy.from_name("dynsize")
    # bounds that a cluster this small reaches (the real ones need hundreds of instances)
    for bounds in [(1, 2), (4, 24)]:
        with searches(True, *bounds) as remembered:
            decided = _churn(policy, 12)
        with searches(False, *bounds):
            assert _churn(policy, 12) == decided
        assert remembered, bounds  # the memory answered some searches, each checked
        assert all(node == -1 for node, _, _ in remembered)
        # answers that probed nodes, and answers both cut short and not
        assert any(probes for _, probes, _ in remembered), remembered
        assert {exhaustive for _, _, exhaustive in remembered} == {True, False}


def _four_nodes() -> list[NodeState]:
    return [
        NodeState(name=name, cores=cores, memory=64 * GIB, labels=frozenset())
        for name, cores in (("a", 4.0), ("b", 1.0), ("c", 4.0), ("d", 4.0))
    ]


class _Executions:
    """Executions of 1 GiB instances, numbered in order."""

    def __init__(self) -> None:
        self.ids = iter(range(1, 100))

    def inst(self, ex_id: int, cores: float, essential: bool) -> InstanceReq:
        return InstanceReq(
            id=next(self.ids),
            execution_id=ex_id,
            cores=cores,
            memory=GIB,
            labels=frozenset(),
            essential=essential,
        )

    def make(
        self, ex_id: int, size: float, pending: tuple[float, ...], *placed: tuple[float, bool, str]
    ) -> ExecutionState:
        return ExecutionState(
            id=ex_id,
            submitted_at=0.0,
            size=size,
            pending=tuple(self.inst(ex_id, c, True) for c in pending),
            placed=tuple((self.inst(ex_id, c, e), node) for c, e, node in placed),
        )


def test_a_later_search_in_the_same_state_is_answered_from_the_first() -> None:
    """w2 and w3 wait for 4 cores (ranked 1 and 2 of 4, by size); on node a, stopping
    the elastic instance of r4, ranked last, frees 1 core of the 3 missing, and the
    search, bounded to one probe, stops there. w3's search, the same request in the same
    state, is answered from w2's: one probe, cut short, nothing found."""
    ex = _Executions()
    executions = [
        ex.make(1, 1.0, (), (2.0, True, "c"), (2.0, False, "a"), (2.0, False, "d")),
        ex.make(2, 10.0, (4.0,)),
        ex.make(3, 20.0, (4.0,)),
        ex.make(4, 1000.0, (), (1.0, True, "b"), (1.0, False, "a"), (2.0, False, "c")),
    ]
    with searches(True, 1, reclaim.VISITS) as remembered:
        decisions = schedule(_four_nodes(), executions, now=1.0, policy=Policy.from_name("size"))
    assert decisions.starts == [] and decisions.stops == []
    assert remembered == [(-1, 1, False)]


def test_a_search_cut_at_the_execution_searched_for_later_ran_to_its_end_for_it() -> None:
    """As above, but w3 holds an elastic instance on node d, and the search for w2,
    bounded to two probes, probes a (for r4) then d (for w3) and stops after w3. For
    w3 itself the walk ends before w3's own instances: one probe, run to the end."""
    ex = _Executions()
    executions = [
        ex.make(1, 1.0, (), (2.0, True, "c"), (2.0, False, "a"), (2.0, False, "d")),
        ex.make(2, 10.0, (4.0,)),
        ex.make(3, 20.0, (4.0,), (1.0, False, "d")),
        ex.make(4, 1000.0, (), (1.0, True, "b"), (1.0, False, "a"), (2.0, False, "c")),
    ]
    with searches(True, 2, reclaim.VISITS) as remembered:
        decisions = schedule(_four_nodes(), executions, now=1.0, policy=Policy.from_name("size"))
    assert decisions.starts == [] and decisions.stops == []
    assert remembered == [(-1, 1, True)]

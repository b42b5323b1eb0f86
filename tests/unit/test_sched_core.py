"""The scheduling core, one rule at a time, on tiny clusters."""

from __future__ import annotations

import pytest

from services.scheduler.core import Policy, schedule
from services.scheduler.invariants import check_decisions
from tests.unit.test_sched_support import GIB, apply, execution, inst, node, started_on

ALL = ["fifo", "size", "dynsize", "flexible", "dynsize+spread", "size+noreclaim"]


def run(nodes, executions, policy="dynsize", now=100.0):
    pol = Policy.from_name(policy)
    decisions = schedule(nodes, executions, now=now, policy=pol)
    assert check_decisions(nodes, executions, decisions, now) == []
    return decisions


@pytest.mark.parametrize("policy", ALL)
def test_an_essential_set_starts_whole_or_not_at_all(policy):
    nodes = [node("a", 4), node("b", 4)]
    big = execution(1, [inst(1, 3), inst(1, 3), inst(1, 3)])  # 9 cores on 8
    assert run(nodes, [big], policy).starts == []
    fits = execution(1, [inst(1, 3), inst(1, 3)])
    assert len(run(nodes, [fits], policy).starts) == 2


@pytest.mark.parametrize("policy", ALL)
def test_elastic_instances_follow_their_gang_and_stop_at_capacity(policy):
    nodes = [node("a", 4, 64)]
    gang = [inst(1, 1)]
    elastic = [inst(1, 1, essential=False) for _ in range(5)]
    decisions = run(nodes, [execution(1, gang + elastic)], policy)
    assert decisions.starts[0][0] == gang[0].id  # essential sets come first
    assert len(decisions.starts) == 4  # 1 essential + 3 elastic fill the 4 cores


def test_fifo_serves_the_earliest_and_size_the_smallest():
    nodes = [node("a", 4)]
    early_big = execution(1, [inst(1, 3)], at=1.0, size=100.0)
    late_small = execution(2, [inst(2, 2)], at=2.0, size=1.0)
    fifo = started_on(run(nodes, [early_big, late_small], "fifo"))
    assert set(fifo) == {early_big.pending[0].id}
    size = started_on(run(nodes, [early_big, late_small], "size"))
    assert set(size) == {late_small.pending[0].id}


def test_dynsize_ages_a_waiting_execution_past_newer_smaller_ones():
    nodes = [node("a", 4)]
    old_big = execution(1, [inst(1, 3)], at=0.0, size=100.0)
    new_small = execution(2, [inst(2, 2)], at=9990.0, size=10.0)
    fresh = started_on(run(nodes, [old_big, new_small], "dynsize", now=10.0))
    assert set(fresh) == {new_small.pending[0].id}  # 100 / (1 + 10/1800) > 10
    later = started_on(run(nodes, [old_big, new_small], "dynsize", now=10000.0))
    assert set(later) == {old_big.pending[0].id}  # 100 / (1 + 10000/1800) < 10


@pytest.mark.parametrize("policy", ["fifo", "size", "dynsize", "flexible"])
def test_higher_priority_goes_first(policy):
    nodes = [node("a", 4)]
    low = execution(1, [inst(1, 3)], at=0.0, size=1.0)
    high = execution(2, [inst(2, 3)], at=5.0, size=50.0, priority=1)
    assert set(started_on(run(nodes, [low, high], policy))) == {high.pending[0].id}
    blind = run(nodes, [low, high], f"{policy}+nopriority")
    assert set(started_on(blind)) == {low.pending[0].id}


def test_pack_fills_the_tightest_node_and_spread_the_emptiest():
    nodes = [node("a", 8, 32), node("b", 8, 32)]
    running = execution(1, [], [(inst(1, 4, 4), "a")])
    new = execution(2, [inst(2, 2, 2)], at=1.0)
    assert started_on(run(nodes, [running, new], "dynsize+pack")) == {new.pending[0].id: "a"}
    assert started_on(run(nodes, [running, new], "dynsize+spread")) == {new.pending[0].id: "b"}


def test_pack_counts_memory_as_well_as_cores():
    nodes = [node("a", 8, 64), node("b", 8, 64)]
    held = execution(1, [], [(inst(1, 1, 60), "a"), (inst(1, 2, 1), "b")])
    new = execution(2, [inst(2, 1, 2)], at=1.0)
    # a has 7 cores but only 4 GiB left: the tighter fit overall
    assert started_on(run(nodes, [held, new], "dynsize+pack")) == {new.pending[0].id: "a"}


@pytest.mark.parametrize("policy", ALL)
def test_labels_restrict_nodes_and_unavailable_nodes_get_nothing(policy):
    nodes = [node("plain", 16), node("gpu", 16, 32, "gpu"), node("gone", 64, 256, "gpu", up=False)]
    needs_gpu = [inst(1, 2, labels={"gpu"}) for _ in range(3)]
    decisions = run(nodes, [execution(1, needs_gpu)], policy)
    assert set(started_on(decisions).values()) == {"gpu"}
    too_many = [inst(2, 6, labels={"gpu"}) for _ in range(3)]  # 18 cores, only 16 usable
    assert run(nodes, [execution(2, too_many)], policy).starts == []


def test_a_node_already_over_committed_gets_nothing_more():
    nodes = [node("a", 4)]
    held = execution(1, [], [(inst(1, 5), "a")])  # capacity shrank under it
    assert run(nodes, [held, execution(2, [inst(2, 0.5)], at=1.0)]).starts == []


def test_unknown_nodes_and_duplicate_names_are_harmless():
    nodes = [node("a", 4), node("a", 64)]
    held = execution(1, [], [(inst(1, 2), "vanished")])
    decisions = run(nodes, [held, execution(2, [inst(2, 4)], at=1.0)])
    assert list(started_on(decisions).values()) == ["a"]


# -- reclaiming ------------------------------------------------------------------------


def _busy_cluster():
    """One 8-core node: a running execution holds 2 essential and 6 elastic cores."""
    nodes = [node("a", 8, 64)]
    essentials = [inst(1, 1), inst(1, 1)]
    elastic = [inst(1, 1, essential=False) for _ in range(6)]
    running = execution(1, [], [(i, "a") for i in essentials + elastic], at=0.0, size=500.0)
    return nodes, running, essentials, elastic


def test_reclaims_just_enough_elastic_instances_of_a_lower_ranked_execution():
    nodes, running, _, elastic = _busy_cluster()
    waiting = execution(2, [inst(2, 2), inst(2, 1)], at=10.0, size=5.0)
    decisions = run(nodes, [running, waiting], "size")
    assert len(decisions.stops) == 3
    assert set(decisions.stops) <= {i.id for i in elastic}
    assert {i for i, _ in decisions.starts} == {i.id for i in waiting.pending}
    after = apply([running, waiting], decisions)
    assert run(nodes, after, "size").stops == []  # nothing more to take


def test_never_reclaims_from_a_higher_ranked_execution_nor_when_it_would_not_suffice():
    nodes, running, _, _ = _busy_cluster()
    larger = execution(2, [inst(2, 2)], at=10.0, size=5000.0)  # ranks after the running one
    assert run(nodes, [running, larger], "size").stops == []
    too_big = execution(3, [inst(3, 7)], at=10.0, size=5.0)  # 6 elastic cores are not 7
    assert run(nodes, [running, too_big], "size").stops == []


@pytest.mark.parametrize("policy", ["size+noreclaim", "flexible", "flexible+size"])
def test_no_reclaiming_when_the_policy_says_so(policy):
    nodes, running, _, _ = _busy_cluster()
    waiting = execution(2, [inst(2, 2)], at=10.0, size=5.0)
    assert run(nodes, [running, waiting], policy).stops == []


def test_fifo_reclaims_only_from_later_executions():
    nodes, running, _, _ = _busy_cluster()
    earlier = execution(2, [inst(2, 2)], at=-5.0, size=5000.0)
    later = execution(3, [inst(3, 2)], at=5.0, size=1.0)
    assert len(run(nodes, [running, earlier], "fifo").stops) == 2
    assert run(nodes, [running, later], "fifo").stops == []


def test_reclaim_prefers_the_lowest_ranked_execution():
    nodes = [node("a", 8, 64), node("b", 8, 64)]
    mid = execution(
        1,
        [],
        [(inst(1, 1), "a")] + [(inst(1, 1, essential=False), "a") for _ in range(7)],
        size=50.0,
    )
    low = execution(
        2,
        [],
        [(inst(2, 1), "b")] + [(inst(2, 1, essential=False), "b") for _ in range(7)],
        size=500.0,
    )
    new = execution(3, [inst(3, 1)], at=5.0, size=1.0)
    decisions = run(nodes, [mid, low, new], "size")
    stopped = set(decisions.stops)
    assert len(stopped) == 1 and stopped <= {i.id for i, _ in low.placed}


# -- time ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["dynsize", "flexible"])
def test_elastic_instances_wait_for_their_backoff(policy):
    nodes = [node("a", 8)]
    running = execution(1, [inst(1, 1, essential=False)], [(inst(1, 1), "a")], not_before=200.0)
    assert run(nodes, [running], policy, now=100.0).starts == []
    assert len(run(nodes, [running], policy, now=200.0).starts) == 1


def test_flexible_stops_at_the_first_execution_it_cannot_serve_and_fifo_backfills():
    nodes = [node("a", 4)]
    held = execution(9, [], [(inst(9, 2), "a")])
    blocked = execution(1, [inst(1, 3)], at=0.0)  # fits once the node is empty
    small = execution(2, [inst(2, 1)], at=1.0)
    assert run(nodes, [held, blocked, small], "flexible").starts == []
    assert len(run(nodes, [held, blocked, small], "fifo").starts) == 1


def test_an_execution_that_waited_too_long_holds_its_nodes():
    nodes = [node("a", 4), node("b", 4, 32, "ssd")]
    held = execution(9, [], [(inst(9, 2), "a"), (inst(9, 1), "b")])
    blocked = execution(1, [inst(1, 3), inst(1, 3)], at=0.0)  # fits only an emptied cluster
    small = execution(2, [inst(2, 1)], at=1.0)
    assert len(run(nodes, [held, blocked, small], "fifo", now=100.0).starts) == 1  # backfill
    assert run(nodes, [held, blocked, small], "fifo", now=10_000.0).starts == []  # held
    labelled = execution(3, [inst(3, 4, labels={"ssd"})], at=0.0)
    decisions = run(nodes, [held, labelled, small], "fifo", now=10_000.0)
    assert started_on(decisions) == {small.pending[0].id: "a"}  # it holds only the ssd node


def test_lookahead_and_scan_bound_the_waiting_executions_examined():
    nodes = [node("a", 8), node("b", 8)]
    held = execution(98, [], [(inst(98, 5), "a"), (inst(98, 5), "b")], at=-1.0)
    # Each needs more room than any node has left, each in a way no earlier miss covers.
    blocked = [execution(i, [inst(i, 4.0 - 0.1 * i, float(i))], at=float(i)) for i in range(1, 6)]
    small = execution(99, [inst(99, 1)], at=50.0)
    queue = [held, *blocked, small]
    assert run(nodes, queue, "fifo+lookahead=2").starts == []
    assert len(run(nodes, queue, "fifo+lookahead=5").starts) == 1
    assert len(run(nodes, queue, "fifo+scan=5").starts) == 1
    assert run(nodes, queue, "fifo+scan=4").starts == []


def test_memory_is_a_hard_limit_too():
    nodes = [node("a", 64, 4)]
    assert run(nodes, [execution(1, [inst(1, 1, 5)])]).starts == []
    assert len(run(nodes, [execution(1, [inst(1, 1, 4)])]).starts) == 1
    assert GIB == 1 << 30

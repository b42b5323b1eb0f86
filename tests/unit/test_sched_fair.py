"""Fair share between users (Dominant Resource Fairness as an ordering layer)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.scheduler.core import Policy, schedule
from services.scheduler.fair import drf_order
from services.scheduler.invariants import check_decisions
from services.scheduler.policies import rank_keys
from tests.unit.test_sched_fit import never_fitting
from tests.unit.test_sched_invariants import clusters
from tests.unit.test_sched_support import execution, inst, node, started_on

FAIR = ["fair", "fair+spread", "size+fair", "fifo+fair", "fair+noreclaim", "fair+nopriority"]


def of(user, ex):
    return replace(ex, user=user)


def run(nodes, executions, policy="fair", now=100.0, **kw):
    decisions = schedule(nodes, executions, now=now, policy=Policy.from_name(policy), **kw)
    assert check_decisions(nodes, executions, decisions, now) == []
    return decisions


def test_the_fair_policy_is_dynsize_with_a_fair_order():
    assert str(Policy.from_name("fair")) == "dynsize+fair"
    assert Policy.from_name("fair+spread") == Policy.from_name("dynsize+spread+fair")


def test_one_user_s_thousand_submissions_do_not_starve_another_s_one():
    nodes = [node("a", 4, 64)]
    heavy = [of("heavy", execution(i, [inst(i, 1)], at=float(i), size=1.0)) for i in range(1, 1001)]
    light = of("light", execution(5000, [inst(5000, 1)], at=2000.0, size=50.0))
    dyn = started_on(run(nodes, [*heavy, light], "dynsize"))
    assert light.pending[0].id not in dyn  # smaller sizes of the heavy user go first
    fair = started_on(run(nodes, [*heavy, light], "fair"))
    assert light.pending[0].id in fair and len(fair) == 4


def test_a_user_holding_the_cluster_gives_back_elastic_room_to_another():
    nodes = [node("a", 8, 64)]
    held = [(inst(1, 1), "a")] + [(inst(1, 1, essential=False), "a") for _ in range(7)]
    heavy = of("heavy", execution(1, [], held, at=0.0, size=1.0))
    light = of("light", execution(2, [inst(2, 2)], at=10.0, size=500.0))
    assert run(nodes, [heavy, light], "dynsize").stops == []  # it ranks after the heavy one
    decisions = run(nodes, [heavy, light], "fair")
    assert len(decisions.stops) == 2
    assert set(started_on(decisions)) == {light.pending[0].id}


def test_weights_share_turns_in_proportion():
    execs = [of("one", execution(i, [inst(i, 10, 1)], at=float(i))) for i in range(1, 7)]
    execs += [of("two", execution(i, [inst(i, 10, 1)], at=float(i))) for i in range(11, 17)]
    policy = Policy.from_name("fair")
    waiting = [True] * len(execs)
    keys = rank_keys(execs, waiting, 0.0, policy)
    order = drf_order(execs, keys, waiting, {"two": 2.0}, (100.0, 1000.0), lambda g: None)
    users = [execs[i].user for i in order]
    # "two" weighs twice as much: two turns for each of "one"'s, while both wait
    assert users[:9] == ["one", "two", "two", "one", "two", "two", "one", "two", "two"]


def test_priorities_order_first_within_the_bound_of_the_user_s_role():
    nodes = [node("a", 2, 64)]
    boss = of("boss", execution(1, [inst(1, 2)], at=5.0, priority=50))
    other = of("other", execution(2, [inst(2, 2)], at=1.0, priority=10))
    assert set(started_on(run(nodes, [boss, other], "fair"))) == {boss.pending[0].id}
    bounded = run(nodes, [boss, other], "fair", max_priority={"boss": 10, "other": 10})
    # both at 10 now: the fair order decides; with no share yet, the earlier key goes first
    assert set(started_on(bounded)) == {other.pending[0].id}


@st.composite
def with_users(draw: st.DrawFn):
    nodes, executions, now = draw(clusters())
    users = st.sampled_from(["ann", "bob", "cy"])
    return nodes, [replace(ex, user=draw(users)) for ex in executions], now


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_users(), st.sampled_from(FAIR))
def test_fair_passes_keep_every_rule(cluster, name):
    nodes, executions, now = cluster
    run(nodes, executions, name, now, weights={"ann": 2.0, "cy": 0.5})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_users(), st.sampled_from(FAIR))
def test_with_one_user_fair_is_the_policy_s_own_order(cluster, name):
    nodes, executions, now = cluster
    executions = [replace(ex, user="solo") for ex in executions]
    policy = Policy.from_name(name)
    plain = replace(policy, fair=False)
    assert schedule(nodes, executions, now=now, policy=policy) == schedule(
        nodes, executions, now=now, policy=plain
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), with_users(), st.sampled_from(FAIR))
def test_under_fair_share_what_can_never_fit_delays_nothing_either(data, cluster, name):
    nodes, executions, now = cluster
    unfit = [replace(ex, user="ann") for ex in data.draw(never_fitting(nodes))]
    policy = Policy.from_name(name)
    alone = schedule(nodes, executions, now=now, policy=policy)
    mixed = schedule(nodes, [*unfit, *executions], now=now, policy=policy)
    assert (mixed.starts, mixed.stops) == (alone.starts, alone.stops)

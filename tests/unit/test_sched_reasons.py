"""Why a pass did not start an execution (Decisions.reasons)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.core import Policy, schedule
from services.scheduler.invariants import check_decisions
from tests.unit.test_sched_support import execution, inst, node


def reasons(nodes, executions, policy="dynsize", now=100.0):
    decisions = schedule(nodes, executions, now=now, policy=Policy.from_name(policy))
    assert check_decisions(nodes, executions, decisions, now) == []
    return {k: str(v) for k, v in decisions.reasons.items()}, decisions.reasons


def test_a_set_that_does_not_fit_says_what_it_needs_and_the_room_left():
    nodes = [node("plain", 16, 64), node("gpu", 8, 32, "gpu")]
    held = execution(9, [], [(inst(9, 7, 20, labels={"gpu"}), "gpu")])
    waiting = execution(1, [inst(1, 2, 4, labels={"gpu"}) for _ in range(3)], at=1.0)
    texts, raw = reasons(nodes, [held, waiting])
    assert texts == {
        1: "needs 3 instances of 2 cores and 4 GiB on nodes labelled gpu;"
        " the largest free room on such a node is 1 core and 12 GiB"
    }
    assert raw[1].schedulable
    assert raw[1].text.startswith("needs 3 instances")  # the part that stays the same


def test_mixed_sets_list_each_shape_largest_first():
    nodes = [node("a", 8, 64)]
    held = execution(9, [], [(inst(9, 7, 1), "a")])
    waiting = execution(1, [inst(1, 1, 4), inst(1, 2, 8), inst(1, 2, 8)], at=1.0)
    texts, _ = reasons(nodes, [held, waiting])
    assert texts[1] == (
        "needs 2 instances of 2 cores and 8 GiB and 1 instance of 1 core and 4 GiB;"
        " the largest free room on a node is 1 core and 63 GiB"
    )


@pytest.mark.parametrize("policy", ["dynsize", "fifo", "flexible", "size+noreclaim"])
def test_what_can_never_fit_is_unschedulable_until_a_node_makes_it_fit(policy):
    nodes = [node(f"n{i}", 32, 128) for i in range(3)]
    huge = execution(1, [inst(1, 64, 4)], at=0.0)
    texts, raw = reasons(nodes, [huge], policy)
    assert texts == {1: "unschedulable: no node has 64 cores"}
    assert raw[1].schedulable is False
    bigger = [*nodes, node("big", 64, 256)]
    texts, _ = reasons(bigger, [huge], policy)
    assert texts == {}  # it starts: no reason any more


def test_executions_behind_a_hold_say_who_holds_the_nodes():
    nodes = [node("a", 4)]
    held = execution(9, [], [(inst(9, 2), "a")])
    old = execution(1, [inst(1, 3)], at=0.0)  # waited past reserve_after (2 h)
    small = execution(2, [inst(2, 1)], at=1.0)
    texts, _ = reasons(nodes, [held, old, small], "fifo", now=10_000.0)
    assert texts[1].startswith("needs 1 instance of 3 cores and 1 GiB;")
    assert texts[2] == "behind execution 1, which holds every node"


def test_a_labelled_hold_names_its_holder_to_those_needing_the_same_nodes():
    nodes = [node("a", 4), node("b", 4, 32, "ssd")]
    held = execution(9, [], [(inst(9, 2, labels={"ssd"}), "b")])
    old = execution(1, [inst(1, 3, labels={"ssd"})], at=0.0)
    also_ssd = execution(2, [inst(2, 1, labels={"ssd"})], at=1.0)
    plain = execution(3, [inst(3, 1)], at=2.0)
    texts, _ = reasons(nodes, [held, old, also_ssd, plain], "fifo", now=10_000.0)
    assert texts[2] == "behind execution 1, which holds the nodes it needs"
    assert 3 not in texts  # it started on the node nobody holds


def test_executions_past_the_lookahead_wait_their_turn():
    nodes = [node("a", 8), node("b", 8)]
    held = execution(98, [], [(inst(98, 5), "a"), (inst(98, 5), "b")], at=-1.0)
    blocked = [execution(i, [inst(i, 4.0 - 0.1 * i, float(i))], at=float(i)) for i in range(1, 6)]
    last = execution(99, [inst(99, 1, 31)], at=50.0)
    texts, raw = reasons(nodes, [held, *blocked, last], "fifo+lookahead=2")
    assert texts[99] == (
        "waiting its turn: executions ranked ahead of it wait for room too; 3 blocked ahead"
    )
    assert raw[99].schedulable


def test_the_flexible_policy_serves_in_order():
    nodes = [node("a", 4)]
    held = execution(9, [], [(inst(9, 2), "a")])
    first = execution(1, [inst(1, 3)], at=0.0)
    second = execution(2, [inst(2, 1)], at=1.0)
    texts, _ = reasons(nodes, [held, first, second], "flexible")
    assert texts[1].startswith("needs 1 instance of 3 cores")
    assert texts[2] == "waiting its turn: the queue is served in order, behind execution 1"


def test_only_changed_reasons_are_written_and_a_moving_detail_at_most_every_refresh():
    from services.scheduler import reasons as R
    from services.scheduler.pending import REFRESH, PendingReasons

    rows = PendingReasons()
    rows.load([{"id": 1, "pending_reason": None, "schedulable": True}])
    room = R.words("needs 1 instance of 2 cores and 1 GiB", "the room is 1 core")
    assert rows.changes({1: room}, 0.0) == [(1, str(room), True)]
    assert rows.changes({1: room}, 1.0) == []  # unchanged: nothing to write
    moved = R.words("needs 1 instance of 2 cores and 1 GiB", "the room is 0 cores")
    assert rows.changes({1: moved}, 2.0) == []  # only the detail moved, just written
    assert rows.changes({1: moved}, REFRESH + 1) == [(1, str(moved), True)]
    never = R.unschedulable("unschedulable: no node has 64 cores")
    assert rows.changes({1: never}, REFRESH + 2) == [(1, str(never), False)]
    assert rows.changes({}, REFRESH + 3) == [(1, None, True)]  # it started (or ended)
    assert rows.changes({2: never}, REFRESH + 4) == [(2, str(never), False)]
    assert rows.changes({}, REFRESH + 5) == [(2, None, True)]  # it ended


def test_after_a_takeover_what_the_rows_say_is_not_written_again():
    from services.scheduler import reasons as R
    from services.scheduler.pending import PendingReasons

    never = R.unschedulable("unschedulable: no node has 64 cores")
    rows = PendingReasons()
    rows.load([{"id": 1, "pending_reason": str(never), "schedulable": False}])
    assert rows.changes({1: never}, 0.0) == []


@settings(max_examples=200, deadline=None)
@given(
    passes=st.lists(
        st.dictionaries(
            st.integers(1, 6),
            st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 2), st.booleans()),
            max_size=6,
        ),
        min_size=1,
        max_size=12,
    ),
    rows=st.dictionaries(st.integers(1, 8), st.sampled_from([None, "a", "x"]), max_size=5),
)
def test_the_rows_written_say_what_the_last_pass_said(passes, rows):
    """Whatever the passes (executions waiting, starting, ending, their causes and
    details moving) and what the rows held at a takeover, the rows as the writes leave
    them hold a reason exactly for the executions the last pass gave one, with its
    cause and schedulability: only what changed is written, nothing is missed."""
    from services.scheduler import reasons as R
    from services.scheduler.pending import REFRESH, PendingReasons

    pending = PendingReasons()
    db = {i: (text, True) for i, text in rows.items()}
    pending.load([{"id": i, "pending_reason": t, "schedulable": ok} for i, (t, ok) in db.items()])
    reasons: dict = {}
    for n, said in enumerate(passes):
        reasons = {
            i: R.words(cause, f"room {detail}") if ok else R.unschedulable(cause)
            for i, (cause, detail, ok) in said.items()
        }
        for i, text, ok in pending.changes(reasons, n * REFRESH / 4):
            db[i] = (text, ok)
    held = {i: v for i, v in db.items() if v != (None, True)}
    assert held.keys() == reasons.keys()
    for i, reason in reasons.items():
        text, ok = held[i]
        assert ok == reason.schedulable
        assert text is not None and text.startswith(reason.text)

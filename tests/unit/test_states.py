"""The lifecycle's pure decisions: what an end means, and what may start next.

Properties over random instances, executions and orders of verdicts (hypothesis): a
redelivered or late verdict never changes an outcome twice, every move is one the
transition table allows, and an execution ends at most once.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as hs

from common import states as st
from common.states import End, ExecutionState, ExecutionView, InstanceState, InstanceView

E, I = ExecutionState, InstanceState  # noqa: E741


def _inst(state: InstanceState = I.RUNNING, **kw: object) -> InstanceView:
    base = dict(
        name="w0",
        state=state,
        essential=True,
        monitor=False,
        restart_count=0,
        container_name="c",
        container_id="id",
    )
    base.update(kw)
    return InstanceView(**base)  # type: ignore[arg-type]


RUNNING_LONG = ExecutionView(E.RUNNING, will_end=False)
RUNNING_EPHEMERAL = ExecutionView(E.RUNNING, will_end=True)


def test_a_stop_zoe_asked_for_is_stopped_whatever_the_code() -> None:
    d = st.decide_end(
        _inst(I.STOPPING, essential=False), RUNNING_LONG, End("crashed", exit_code=143)
    )
    assert (d.action, d.state, d.reason) == ("requeue", I.STOPPED, "stopped")


def test_ends_of_each_kind_of_instance() -> None:
    elastic = _inst(essential=False)
    assert st.decide_end(elastic, RUNNING_LONG, End("crashed", 1)).action == "restart"
    assert st.decide_end(elastic, RUNNING_LONG, End("exited", 0)).action == "remove"
    essential = _inst()
    fail = st.decide_end(essential, RUNNING_LONG, End("oom", 137))
    assert (fail.action, fail.outcome) == ("fail", "failed")
    assert fail.error == "essential instance w0 ended: oom (exit code 137)"
    budget = st.decide_end(essential, RUNNING_LONG, End("oom", 137), essential_restarts=1)
    assert budget.action == "restart"
    # an ephemeral execution: no essential restart; a clean exit only finishes its part
    assert (
        st.decide_end(essential, RUNNING_EPHEMERAL, End("oom"), essential_restarts=5).action
        == "fail"
    )
    assert st.decide_end(essential, RUNNING_EPHEMERAL, End("exited", 0)).action == "record"
    monitor = _inst(monitor=True)
    done = st.decide_end(monitor, RUNNING_EPHEMERAL, End("exited", 0))
    assert (done.action, done.outcome, done.error) == ("finish", "finished", None)
    failed = st.decide_end(monitor, RUNNING_EPHEMERAL, End("crashed", 2))
    assert (failed.action, failed.outcome) == ("fail", "failed")
    # a long-running execution's monitor service exiting cleanly finishes it
    assert st.decide_end(monitor, RUNNING_LONG, End("exited", 0)).action == "finish"


def test_what_is_not_about_the_current_container_is_ignored() -> None:
    inst = _inst()
    assert st.decide_end(inst, RUNNING_LONG, End("crashed", container_name="old")) == st.IGNORE
    assert st.decide_end(inst, RUNNING_LONG, End("crashed", container_id="old")) == st.IGNORE
    assert st.decide_end(_inst(I.DIED), RUNNING_LONG, End("crashed")) == st.IGNORE
    # a start failure counts only before the container ran
    assert st.decide_end(inst, RUNNING_LONG, End("start-failed")) == st.IGNORE
    starting = st.decide_end(_inst(I.STARTING), RUNNING_LONG, End("start-failed", detail="x"))
    assert (starting.action, starting.reason) == ("fail", "start-failed")


def test_an_execution_ending_already_only_records() -> None:
    cleaning = ExecutionView(E.CLEANING_UP, will_end=True)
    d = st.decide_end(_inst(monitor=True), cleaning, End("crashed", 1))
    assert (d.action, d.state, d.reason) == ("record", I.DIED, "crashed")


def test_transition_tables_name_every_state_and_guards_follow_them() -> None:
    assert set(st.EXECUTION_TRANSITIONS) == set(E)
    assert set(st.INSTANCE_TRANSITIONS) == set(I)
    assert st.moving_to(st.INSTANCE_TRANSITIONS, I.STOPPING) == ["placed", "running", "starting"]
    assert st.moving_to(st.INSTANCE_TRANSITIONS, I.RUNNING) == ["placed", "starting"]
    assert not (st.EXECUTION_ACTIVE & st.EXECUTION_FINAL)
    for final in st.EXECUTION_FINAL:
        assert not st.EXECUTION_TRANSITIONS[final]


# ---- properties over random orders of verdicts ----------------------------------------

reasons = hs.sampled_from(["exited", "crashed", "oom", "node-lost", "start-failed"])


@dataclasses.dataclass
class Model:
    """A pure stand-in for the rows: the instances of one execution, and its end."""

    execution: ExecutionView
    instances: dict[int, InstanceView]
    generation: dict[int, int]
    outcomes: list[str] = dataclasses.field(default_factory=list)

    def name(self, i: int) -> str:
        return f"c{i}-r{self.generation[i]}"

    def apply(self, i: int, end: End, restarts: int) -> st.EndDecision:
        inst = self.instances[i]
        d = st.decide_end(inst, self.execution, end, essential_restarts=restarts)
        if d.action == "ignore":
            return d
        assert d.state is not None
        assert st.may_move(st.INSTANCE_TRANSITIONS, inst.state, d.state)
        inst = dataclasses.replace(inst, state=d.state)
        if d.action in ("restart", "requeue"):
            self.generation[i] += 1
            inst = dataclasses.replace(
                inst,
                state=I.CREATED,
                container_name=self.name(i),
                restart_count=inst.restart_count + (d.action == "restart"),
            )
        self.instances[i] = inst
        if d.action in ("finish", "fail"):
            assert d.outcome is not None
            assert st.may_move(st.EXECUTION_TRANSITIONS, self.execution.state, E.CLEANING_UP)
            self.outcomes.append(d.outcome)
            self.execution = dataclasses.replace(self.execution, state=E.CLEANING_UP)
        return d


@hs.composite
def scenarios(draw: hs.DrawFn) -> tuple[Model, list[tuple[int, End]], int]:
    n = draw(hs.integers(1, 4))
    will_end = draw(hs.booleans())
    instances = {
        i: InstanceView(
            name=f"s{i}",
            state=draw(hs.sampled_from([I.STARTING, I.RUNNING, I.STOPPING])),
            essential=draw(hs.booleans()),
            monitor=i == 0,
            restart_count=0,
            container_name=f"c{i}-r0",
        )
        for i in range(n)
    }
    model = Model(ExecutionView(E.RUNNING, will_end), instances, dict.fromkeys(range(n), 0))
    ends = draw(
        hs.lists(
            hs.tuples(
                hs.integers(0, n - 1),
                reasons,
                hs.sampled_from([0, 1, 137]),
                hs.integers(0, 2),  # which generation the verdict is about
            ),
            max_size=12,
        )
    )
    verdicts = [(i, End(r, code, container_name=f"c{i}-r{g}")) for i, r, code, g in ends]
    return model, verdicts, draw(hs.integers(0, 2))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_a_redelivered_or_late_verdict_never_changes_an_outcome_twice(
    scenario: tuple[Model, list[tuple[int, End]], int],
) -> None:
    model, verdicts, restarts = scenario
    for i, end in verdicts:
        before = model.generation[i]
        first = model.apply(i, end, restarts)
        # delivered again right away: nothing more happens
        assert model.apply(i, end, restarts) == st.IGNORE
        if end.container_name != f"c{i}-r{before}":
            assert first == st.IGNORE  # about another generation
    assert len(model.outcomes) <= 1  # an execution ends once
    for inst in model.instances.values():
        assert inst.restart_count <= max(restarts, len(verdicts))


# ---- startup order ---------------------------------------------------------------------


def test_a_group_starts_once_every_essential_instance_of_the_earlier_ones_runs() -> None:
    def cand(i: int, order: int, state: InstanceState, essential: bool = True) -> st.StartCandidate:
        return st.StartCandidate(i, 1, essential, order, state)

    rows = [cand(1, 0, I.STARTING), cand(2, 1, I.PLACED), cand(3, 0, I.PLACED, False)]
    assert st.ready_starts(rows) == [3]
    rows[0] = cand(1, 0, I.RUNNING)
    assert st.ready_starts(rows) == [2, 3]


@given(
    hs.lists(
        hs.tuples(
            hs.integers(0, 3), hs.booleans(), hs.sampled_from([I.PLACED, I.STARTING, I.RUNNING])
        ),
        max_size=10,
    )
)
def test_ready_starts_property(rows: list[tuple[int, bool, InstanceState]]) -> None:
    cands = [st.StartCandidate(i, 7, e, order, s) for i, (order, e, s) in enumerate(rows)]
    ready = set(st.ready_starts(cands))
    for c in cands:
        earlier_run = all(
            o.state == I.RUNNING for o in cands if o.essential and o.startup_order < c.startup_order
        )
        assert (c.id in ready) == (c.state == I.PLACED and earlier_run)

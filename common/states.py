"""Lifecycle of executions and instances: the states, their named sets, the transitions,
and the pure decisions the scheduler takes when an instance ends or may start.

Nothing here does I/O. The scheduler's handlers lock the rows, load them into the views
below, call ``decide_end`` or ``ready_starts``, and apply what they return; every other
module names states through the sets defined here (once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeVar


class ExecutionState(StrEnum):
    """Where an execution is in its life."""

    SUBMITTED = "submitted"  # stored by the api, not yet seen by the scheduler
    QUEUED = "queued"  # waiting for room for its essential instances
    STARTING = "starting"  # placed: its instances are being started
    RUNNING = "running"  # every essential instance runs
    CLEANING_UP = "cleaning_up"  # ending: its containers are being removed
    FINISHED = "finished"
    FAILED = "failed"
    TERMINATED = "terminated"
    ERROR = "error"  # a description that cannot run


class InstanceState(StrEnum):
    """Where one service instance (one container at a time) is in its life."""

    CREATED = "created"  # in the queue (again, after a restart or a reclaim)
    PLACED = "placed"  # given a node; its start command is not sent yet
    STARTING = "starting"  # its start command is sent
    RUNNING = "running"
    STOPPING = "stopping"  # Zoe asked its executor to stop it
    STOPPED = "stopped"  # ended cleanly, or as asked
    DIED = "died"  # crashed, OOM-killed, lost with its node, or could not start


E, I = ExecutionState, InstanceState  # noqa: E741 (short names for the tables below)

# Executions the scheduler still schedules (may place, restart or grow).
EXECUTION_ACTIVE = frozenset({E.SUBMITTED, E.QUEUED, E.STARTING, E.RUNNING})
# Executions whose instances' starts count (they make it run, or start the next group).
EXECUTION_UNDERWAY = frozenset({E.STARTING, E.RUNNING})
# Executions whose instances the scheduling pass looks at.
EXECUTION_SCHEDULED = frozenset({E.QUEUED, E.STARTING, E.RUNNING, E.CLEANING_UP})
EXECUTION_FINAL = frozenset({E.FINISHED, E.FAILED, E.TERMINATED, E.ERROR})
# Outcomes an execution may end with once its cleanup is over.
Outcome = Literal["finished", "failed", "terminated"]

# Instances that hold resources on their node (placed or with a container); also the
# ones a container fact or a lost node can end.
INSTANCE_HOLDING = frozenset({I.PLACED, I.STARTING, I.RUNNING, I.STOPPING})
# Instances whose container may exist on its node (start sent, not ended yet).
INSTANCE_ON_NODE = frozenset({I.STARTING, I.RUNNING, I.STOPPING})
# Instances the scheduling pass sees: queued ones and those holding resources.
INSTANCE_SCHEDULED = frozenset({I.CREATED}) | INSTANCE_HOLDING
INSTANCE_ENDED = frozenset({I.STOPPED, I.DIED})

EXECUTION_TRANSITIONS: Mapping[ExecutionState, frozenset[ExecutionState]] = {
    E.SUBMITTED: frozenset({E.QUEUED, E.CLEANING_UP, E.ERROR}),
    E.QUEUED: frozenset({E.STARTING, E.CLEANING_UP}),
    E.STARTING: frozenset({E.RUNNING, E.CLEANING_UP}),
    E.RUNNING: frozenset({E.CLEANING_UP}),
    E.CLEANING_UP: frozenset({E.FINISHED, E.FAILED, E.TERMINATED}),
    E.FINISHED: frozenset(),
    E.FAILED: frozenset(),
    E.TERMINATED: frozenset(),
    E.ERROR: frozenset(),
}
INSTANCE_TRANSITIONS: Mapping[InstanceState, frozenset[InstanceState]] = {
    I.CREATED: frozenset({I.PLACED, I.STARTING, I.STOPPED}),  # starting: placed and started at once
    I.PLACED: frozenset({I.CREATED, I.STARTING, I.RUNNING, I.STOPPING, I.DIED}),
    I.STARTING: frozenset({I.RUNNING, I.STOPPING, I.STOPPED, I.DIED}),
    I.RUNNING: frozenset({I.STOPPING, I.STOPPED, I.DIED}),
    I.STOPPING: frozenset({I.STOPPED, I.DIED}),
    I.STOPPED: frozenset({I.CREATED}),
    I.DIED: frozenset({I.CREATED}),
}


S = TypeVar("S", ExecutionState, InstanceState)


def may_move(table: Mapping[S, frozenset[S]], old: S, new: S) -> bool:
    """Whether the transition table allows ``old`` -> ``new``."""
    return new in table[old]


def moving_to(table: Mapping[S, frozenset[S]], new: S) -> list[str]:
    """The states that may move to ``new`` (the guard of its ``UPDATE``), sorted."""
    return sorted(str(frm) for frm, targets in table.items() if new in targets)


def sql_list(states: Iterable[str]) -> str:
    """A set of states as an SQL list of constants, ``('a', 'b')``: in the text of a
    query (rather than a parameter) so that the planner can match partial indexes."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"


# ---- what an instance's end means ------------------------------------------------------

# What a container's end was, as the monitor tells it (``stopped`` is the scheduler's
# own reading of an end it asked for).
EndReason = Literal["stopped", "exited", "crashed", "oom", "node-lost", "start-failed"]
# Ends after which an essential instance of a long-running execution may be restarted.
DEATHS = frozenset({"crashed", "oom", "node-lost"})


@dataclass(frozen=True, slots=True)
class InstanceView:
    """What the decisions read of one instance row."""

    name: str
    state: InstanceState
    essential: bool
    monitor: bool
    restart_count: int
    container_name: str | None = None
    container_id: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """What the decisions read of one execution row."""

    state: ExecutionState
    will_end: bool  # ephemeral: it ends when its monitor service ends


@dataclass(frozen=True, slots=True)
class End:
    """A verdict about one container: it ended (``reason``), and maybe it is gone too."""

    reason: EndReason
    exit_code: int | None = None
    container_name: str = ""  # "" : whichever container the instance has now
    container_id: str = ""  # "" : not known
    gone: bool = False  # the container no longer exists (removed, or its node lost)
    detail: str = ""


Action = Literal["ignore", "record", "requeue", "restart", "remove", "finish", "fail"]


@dataclass(frozen=True, slots=True)
class EndDecision:
    """What to do about an end: record it on the instance (``state``, ``reason``), then
    ``action``: nothing more (record), back to the queue as reclaimed (requeue), remove
    the container and queue it again (restart), remove the container (remove), or end
    the execution (finish, fail) with ``outcome`` and ``error``. ``ignore``: the verdict
    is about another container, or said already; only ``gone`` may still be noted."""

    action: Action
    state: InstanceState | None = None
    reason: EndReason | None = None
    outcome: Outcome | None = None
    error: str | None = None


IGNORE = EndDecision("ignore")


def is_current(instance: InstanceView, end: End) -> bool:
    """Whether a verdict is about the instance's current container: a fact about an
    older generation names another container, or carries another container id."""
    if end.container_name and instance.container_name != end.container_name:
        return False
    if end.container_id and instance.container_id and instance.container_id != end.container_id:
        return False
    return True


def decide_end(
    instance: InstanceView, execution: ExecutionView, end: End, *, essential_restarts: int = 0
) -> EndDecision:
    """What an instance's end means for it and its execution.

    Only an instance holding resources can end; an end Zoe asked for (the instance was
    stopping) is ``stopped`` whatever the exit code; a start failure counts only before
    the container ran. Then:

    - an execution ending already: the end is recorded, nothing more;
    - the monitor service of an ephemeral execution: the execution finishes (exit 0) or
      fails; so does a long-running one's monitor service exiting cleanly;
    - another essential instance: a clean exit of an ephemeral execution's part is only
      recorded; a death of a long-running one's is restarted within the budget of
      ``essential_restarts``; anything else fails the execution, with the reason;
    - an elastic instance: reclaimed -> back to the queue; exited cleanly -> its
      container is removed; died -> restarted.
    """
    if instance.state not in INSTANCE_HOLDING or not is_current(instance, end):
        return IGNORE
    if end.reason == "start-failed" and instance.state not in (I.PLACED, I.STARTING):
        return IGNORE
    reason: EndReason = "stopped" if instance.state == I.STOPPING else end.reason
    state = I.STOPPED if reason in ("stopped", "exited") else I.DIED

    def then(
        action: Action, outcome: Outcome | None = None, error: str | None = None
    ) -> EndDecision:
        return EndDecision(action, state, reason, outcome, error)

    if execution.state not in EXECUTION_ACTIVE:
        return then("record")
    failure = ended_text(instance.name, reason, end.exit_code, end.detail)
    if (
        instance.monitor
        and execution.will_end
        and reason != "stopped"
        and execution.state in EXECUTION_UNDERWAY
    ):
        if end.exit_code == 0 and reason == "exited":
            return then("finish", "finished")
        return then("fail", "failed", failure if instance.essential else None)
    if instance.essential:
        if reason == "exited" and (execution.will_end or instance.monitor):
            return then("record" if execution.will_end else "finish", "finished")
        if (
            not execution.will_end
            and reason in DEATHS
            and instance.restart_count < essential_restarts
        ):
            return then("restart")
        return then("fail", "failed", failure)
    if reason == "stopped":
        return then("requeue")
    if reason == "exited":
        return then("remove")
    return then("restart")


def ended_text(name: str, reason: str, exit_code: int | None, detail: str = "") -> str:
    """Why an execution fails, said of the essential instance that ended it."""
    code = f" (exit code {exit_code})" if exit_code is not None else ""
    code += f": {detail}" if detail else ""
    return f"essential instance {name} ended: {reason}{code}"


def end_reason(*, exit_code: int | None, oom_killed: bool) -> EndReason:
    """How a container ended by itself: an OOM kill, a clean exit (code 0) or a crash."""
    if oom_killed:
        return "oom"
    if exit_code == 0:
        return "exited"
    return "crashed"


def restart_backoff(restarts: int, first: float, cap: float) -> float:
    """Seconds the ``restarts``-th restart waits: none for the first (a single death is
    replaced at once), then ``first``, doubled per restart, capped (a crash loop)."""
    if restarts <= 1:
        return 0.0
    return float(min(first * 2 ** (restarts - 2), cap))


# ---- what may start now ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartCandidate:
    """What startup order reads of one instance of an execution."""

    id: int
    execution_id: int
    essential: bool
    startup_order: int
    state: InstanceState


def ready_starts(instances: Iterable[StartCandidate]) -> list[int]:
    """The placed instances whose startup group may start now, in the order given.

    Services start in ascending ``startup_order``: a group starts once every essential
    instance of the earlier groups runs (an execution's earliest group whose essential
    instances do not all run yet is its barrier; groups up to it may start).
    """
    rows = list(instances)
    barrier: dict[int, int] = {}
    for r in rows:
        if r.essential and r.state != I.RUNNING:
            barrier[r.execution_id] = min(
                barrier.get(r.execution_id, r.startup_order), r.startup_order
            )
    return [
        r.id
        for r in rows
        if r.state == I.PLACED
        and (r.execution_id not in barrier or r.startup_order <= barrier[r.execution_id])
    ]

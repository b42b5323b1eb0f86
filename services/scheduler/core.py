"""The pure scheduling core: one synchronous pass from a snapshot to decisions.

No I/O, no asyncio, no clock reads: the caller passes the nodes, the active executions
and the time, and applies the returned `Decisions` (stops first, then starts). The async
service and the simulator call the same `schedule()`, so they make the same decisions.
A caller that keeps its snapshot between passes may also keep a `Kept` and pass it every
time: what a pass derives from the snapshot is then brought up to date instead of built
again (services/scheduler/kept.py); the decisions are the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .fair import clamp_priorities
from .kept import Kept
from .model import Decisions, ExecutionState, InstanceReq, NodeState, Reason
from .original import OriginalPass
from .planner import Pass
from .policies import InvalidPolicy, Policy

__all__ = [
    "Decisions",
    "ExecutionState",
    "InstanceReq",
    "InvalidPolicy",
    "Kept",
    "NodeState",
    "Policy",
    "Reason",
    "schedule",
]


def schedule(
    nodes: Sequence[NodeState],
    executions: Sequence[ExecutionState],
    *,
    now: float,
    policy: Policy,
    weights: Mapping[str, float] | None = None,
    max_priority: Mapping[str, int] | None = None,
    kept: Kept | None = None,
) -> Decisions:
    """Decide which pending instances start where, and which elastic ones to reclaim.

    `executions` are all active executions (waiting or running, whatever they hold):
    running ones matter for the room they hold and as reclaim candidates. `weights`
    gives each user's fair-share weight (a user not in it weighs 1; only fair policies
    use it); `max_priority` each user's bound on priorities (the role's): a higher
    priority counts as that bound. `kept`: what the last pass derived from its snapshot,
    updated in place (give the same one to every pass; the flexible policy ignores it).
    """
    if max_priority:
        executions = clamp_priorities(executions, max_priority)
    if policy.name == "flexible":
        return OriginalPass(nodes, executions, now, policy).run()
    return Pass(nodes, executions, now, policy, weights or {}, kept).run()

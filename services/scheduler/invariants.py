"""The rules every pass must keep, written once and checked by tests and the simulator."""

from __future__ import annotations

from collections.abc import Sequence

from .fit import Emptied
from .model import Decisions, ExecutionState, InstanceReq, NodeState
from .placement import millicores


def check_decisions(
    nodes: Sequence[NodeState],
    executions: Sequence[ExecutionState],
    decisions: Decisions,
    now: float,
) -> list[str]:
    """Every rule `decisions` breaks when applied to `executions`; empty when all hold.

    Rules: a start names a pending instance, a stop a placed elastic one, each at most
    once; starts go to known available nodes whose labels include the instance's; a node
    that receives a start ends within its capacity; an execution's pending essential
    instances start all together or not at all; elastic instances start only once the
    execution's essential set is placed and its backoff has passed; every execution
    waiting for its essential set and not started has a reason, and no other; it is
    called unschedulable exactly when the emptied cluster could not hold that set.
    """
    problems: list[str] = []
    by_node: dict[str, NodeState] = {}
    for n in nodes:
        by_node.setdefault(n.name, n)  # the first of duplicate names counts, as in a pass
    pending: dict[int, tuple[InstanceReq, ExecutionState]] = {}
    placed: dict[int, tuple[InstanceReq, str]] = {}
    for ex in executions:
        for inst in ex.pending:
            pending[inst.id] = (inst, ex)
        for inst, node in ex.placed:
            placed[inst.id] = (inst, node)
    started: dict[int, str] = {}
    for inst_id, node in decisions.starts:
        if inst_id in started:
            problems.append(f"instance {inst_id} started twice")
        started[inst_id] = node
        if inst_id not in pending:
            problems.append(f"instance {inst_id} started but not pending")
            continue
        inst, _ = pending[inst_id]
        target = by_node.get(node)
        if target is None or not target.available:
            problems.append(f"instance {inst_id} started on unknown or unavailable {node}")
        elif not inst.labels <= target.labels:
            problems.append(f"instance {inst_id} labels not on {node}")
    stopped: set[int] = set()
    for inst_id in decisions.stops:
        if inst_id in stopped:
            problems.append(f"instance {inst_id} stopped twice")
        stopped.add(inst_id)
        if inst_id not in placed:
            problems.append(f"instance {inst_id} stopped but not placed")
        elif placed[inst_id][0].essential:
            problems.append(f"essential instance {inst_id} reclaimed")
    problems.extend(_capacity(by_node, placed, pending, started, stopped))
    problems.extend(_gangs(executions, started, now))
    problems.extend(_reasons(nodes, executions, decisions, started))
    return problems


def _capacity(
    by_node: dict[str, NodeState],
    placed: dict[int, tuple[InstanceReq, str]],
    pending: dict[int, tuple[InstanceReq, ExecutionState]],
    started: dict[int, str],
    stopped: set[int],
) -> list[str]:
    used: dict[str, list[int]] = {}
    for inst_id, (inst, node) in placed.items():
        if inst_id not in stopped:
            acc = used.setdefault(node, [0, 0])
            acc[0] += millicores(inst.cores)
            acc[1] += inst.memory
    for inst_id, node in started.items():
        if inst_id in pending:
            inst = pending[inst_id][0]
            acc = used.setdefault(node, [0, 0])
            acc[0] += millicores(inst.cores)
            acc[1] += inst.memory
    problems = []
    for node in set(started.values()):
        spec = by_node.get(node)
        if spec is None:
            continue
        c, m = used[node]
        if c > millicores(spec.cores) or m > spec.memory:
            problems.append(f"node {node} over-committed: {c} mcores, {m} bytes")
    return problems


def _gangs(executions: Sequence[ExecutionState], started: dict[int, str], now: float) -> list[str]:
    problems = []
    for ex in executions:
        essential = [i.id for i in ex.pending if i.essential]
        done = sum(1 for i in essential if i in started)
        if 0 < done < len(essential):
            problems.append(f"execution {ex.id}: {done} of {len(essential)} essential started")
        gang_up = done == len(essential)
        for inst in ex.pending:
            if inst.essential or inst.id not in started:
                continue
            if not gang_up:
                problems.append(f"execution {ex.id}: elastic {inst.id} before its gang")
            if ex.not_before > now:
                problems.append(f"execution {ex.id}: elastic {inst.id} during backoff")
    return problems


def _reasons(
    nodes: Sequence[NodeState],
    executions: Sequence[ExecutionState],
    decisions: Decisions,
    started: dict[int, str],
) -> list[str]:
    problems = []
    emptied = Emptied(nodes)
    for ex in executions:
        gang = [i for i in ex.pending if i.essential]
        reason = decisions.reasons.get(ex.id)
        waits = bool(gang) and not all(i.id in started for i in gang)
        if waits and reason is None:
            problems.append(f"execution {ex.id} waits without a reason")
        elif not waits and reason is not None:
            problems.append(f"execution {ex.id} has a reason ({reason}) but does not wait")
        elif reason is not None and reason.schedulable != (emptied.never(gang) is None):
            problems.append(f"execution {ex.id}: schedulable {reason.schedulable} is wrong")
    return problems

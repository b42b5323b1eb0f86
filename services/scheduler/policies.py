"""Scheduling policies: which execution goes first, where instances go, what is reclaimed.

A policy is a small frozen value parsed from a settings string such as ``"dynsize"``,
``"dynsize+pack"``, ``"size+spread+noreclaim"`` or ``"flexible+size"``: the first token
names the policy, the following ones modify it (placement, reclaiming, priorities and a few
tunables written ``key=value``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from common.errors import ZoeError

from .model import ExecutionState

PolicyName = Literal["fifo", "size", "dynsize", "flexible"]
Order = Literal["fifo", "size", "dynsize"]
Placement = Literal["spread", "pack"]

POLICY_NAMES: tuple[PolicyName, ...] = ("fifo", "size", "dynsize", "flexible")
ORDERS: tuple[Order, ...] = ("fifo", "size", "dynsize")
PLACEMENTS: tuple[Placement, ...] = ("spread", "pack")

RankKey = tuple[float, float, float, int]


class InvalidPolicy(ZoeError, ValueError):
    """A policy settings string that does not parse or names an unknown option."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How a pass orders the queue, places instances and reclaims elastic ones.

    - ``name``: ``fifo`` (arrival), ``size`` (size hint, smallest first), ``dynsize``
      (size hint shrinking while the execution waits, so nothing starves), or
      ``flexible``: the original Zoe heuristic (count-based placement, no reclaiming, the
      pass stops at the first execution it cannot serve), queue sorted by ``order``.
    - ``placement``: ``spread`` (the node left with the most room) or ``pack`` (best fit:
      the node left with the least room, cores and memory counted together). Under
      ``flexible`` both choose by container count instead, as the original did.
    - ``reclaim``: stop elastic instances of executions ranked lower when that lets a
      waiting execution's essential set start.
    - ``priorities``: a higher ``priority`` always ranks first; under dynsize a waiting
      execution gains one class per ``priority_aging`` seconds.
    - ``aging``: under dynsize a waiting execution's size is divided by
      ``1 + wait / aging``.
    - ``lookahead``: how many blocked executions (whose essential set does not fit) a pass
      examines before it stops looking further down the queue: executions behind a
      blocked one may still start (backfilling), and the cap bounds the wasted work.
    - ``scan``: how many waiting executions a pass examines at most after the first
      blocked one, whatever they cost: the bound on a pass over a very long queue.
    - ``reserve_after``: a blocked execution that has waited this long holds the nodes
      its essential set could use: nothing ranked after it may start there (nor, without
      reclaiming, grow there), so it cannot starve.
    - ``fair``: inside each priority class, users take turns by weighted Dominant
      Resource Fairness (services/scheduler/fair.py), each in the policy's own order.
      The policy ``fair`` is ``dynsize+fair``.
    """

    name: PolicyName = "dynsize"
    placement: Placement = "pack"
    reclaim: bool = True
    priorities: bool = True
    order: Order = "fifo"
    aging: float = 1800.0
    priority_aging: float = 3600.0
    lookahead: int = 64
    scan: int = 1000
    reserve_after: float = 7200.0
    fair: bool = False

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise InvalidPolicy(f"unknown policy {self.name!r}")
        if self.placement not in PLACEMENTS:
            raise InvalidPolicy(f"unknown placement {self.placement!r}")
        if self.order not in ORDERS:
            raise InvalidPolicy(f"unknown queue order {self.order!r}")
        if self.aging <= 0 or self.priority_aging <= 0:
            raise InvalidPolicy("aging periods must be positive")
        if self.lookahead < 0 or self.scan < 0 or self.reserve_after < 0:
            raise InvalidPolicy("lookahead, scan and reserve_after must not be negative")

    @property
    def queue_order(self) -> Order:
        """The order the queue is sorted by (the flexible heuristic takes it from `order`)."""
        return self.order if self.name == "flexible" else self.name

    @classmethod
    def from_name(cls, text: str) -> Policy:
        """Parse a settings string like ``"dynsize+pack"`` or ``"flexible+size"``."""
        tokens = [t.strip().lower() for t in text.split("+")]
        if not tokens or not tokens[0]:
            raise InvalidPolicy("empty policy")
        head = tokens[0]
        if head == "fair":
            return cls.from_name("+".join(["dynsize", "fair", *tokens[1:]]))
        if head not in POLICY_NAMES:
            raise InvalidPolicy(f"unknown policy {head!r}; expected one of {POLICY_NAMES}")
        name: PolicyName = head
        policy = (
            cls(name=name, placement="spread", reclaim=False)
            if name == "flexible"
            else (cls(name=name))
        )
        for token in tokens[1:]:
            policy = _apply_token(policy, token)
        return policy

    def __str__(self) -> str:
        parts: list[str] = [self.name]
        if self.name == "flexible":
            if self.order != "fifo":
                parts.append(self.order)
            if self.placement != "spread":
                parts.append(self.placement)
            return "+".join(parts)
        default = Policy(name=self.name)
        if self.placement != default.placement:
            parts.append(self.placement)
        if self.reclaim != default.reclaim:
            parts.append("reclaim" if self.reclaim else "noreclaim")
        if not self.priorities:
            parts.append("nopriority")
        if self.fair:
            parts.append("fair")
        for key in ("aging", "priority_aging", "lookahead", "scan", "reserve_after"):
            value = getattr(self, key)
            if value != getattr(default, key):
                parts.append(f"{key}={value:g}")
        return "+".join(parts)


_FLAGS: dict[str, tuple[str, bool]] = {
    "reclaim": ("reclaim", True),
    "noreclaim": ("reclaim", False),
    "priority": ("priorities", True),
    "nopriority": ("priorities", False),
}
_NUMBERS: dict[str, type] = {
    "aging": float,
    "priority_aging": float,
    "lookahead": int,
    "scan": int,
    "reserve_after": float,
}


def _apply_token(policy: Policy, token: str) -> Policy:
    if token in PLACEMENTS:
        return replace(policy, placement=token)
    if token == "fair":
        if policy.name == "flexible":
            raise InvalidPolicy("the flexible heuristic keeps its own order: no 'fair'")
        return replace(policy, fair=True)
    if token in _FLAGS:
        attr, value = _FLAGS[token]
        if attr == "priorities":
            return replace(policy, priorities=value)
        if policy.name == "flexible" and value:
            raise InvalidPolicy("the flexible heuristic never reclaims")
        return replace(policy, reclaim=value)
    if token in ORDERS:
        if policy.name != "flexible":
            raise InvalidPolicy(f"{token!r} is a policy of its own, not a modifier")
        return replace(policy, order=token)
    key, sep, raw = token.partition("=")
    if sep and key in _NUMBERS:
        try:
            number = _NUMBERS[key](raw)
        except ValueError as exc:
            raise InvalidPolicy(f"bad value for {key}: {raw!r}") from exc
        return replace(policy, **{key: number})
    raise InvalidPolicy(f"unknown policy option {token!r}")


def rank_key(execution: ExecutionState, now: float, policy: Policy, waiting: bool) -> RankKey:
    """Sort key of an execution in a pass: smaller ranks first.

    Priority classes come first, then the queue order, then arrival and id so the order is
    total and reproducible. Dynsize ages only executions still waiting for their essential
    set: a running one keeps its size, so small newcomers can still reclaim from it.
    """
    priority = float(execution.priority) if policy.priorities else 0.0
    order = policy.queue_order
    if order == "fifo":
        key = execution.submitted_at
    elif order == "size":
        key = execution.size
    else:
        key = execution.size
        if waiting:
            wait = max(0.0, now - execution.submitted_at)
            key = execution.size / (1.0 + wait / policy.aging)
            if policy.priorities:
                priority += wait // policy.priority_aging
    return (-priority, key, execution.submitted_at, execution.id)


def rank_keys(
    executions: Sequence[ExecutionState], waiting: Sequence[bool], now: float, policy: Policy
) -> list[RankKey]:
    """`rank_key` of every execution (the same keys, computed in bulk)."""
    order = policy.queue_order
    prio = policy.priorities
    if order == "fifo":
        return [
            (-float(ex.priority) if prio else 0.0, ex.submitted_at, ex.submitted_at, ex.id)
            for ex in executions
        ]
    if order == "size":
        return [
            (-float(ex.priority) if prio else 0.0, ex.size, ex.submitted_at, ex.id)
            for ex in executions
        ]
    keys: list[RankKey] = []
    aging, priority_aging = policy.aging, policy.priority_aging
    for ex, w in zip(executions, waiting, strict=True):
        priority = float(ex.priority) if prio else 0.0
        key = ex.size
        if w:
            wait = now - ex.submitted_at if now > ex.submitted_at else 0.0
            key = key / (1.0 + wait / aging)
            if prio:
                priority += wait // priority_aging
        keys.append((-priority, key, ex.submitted_at, ex.id))
    return keys

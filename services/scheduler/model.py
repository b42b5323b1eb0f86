"""Plain data the scheduling core works on: nodes, instances, executions, decisions.

Everything here is immutable input or output of `schedule()`; the core's decisions
depend on nothing else (what it may keep between passes, `kept.Kept`, is a cache), so
the async service and the simulator can feed it whatever they hold (rows from
PostgreSQL, or the simulator's own bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class InstanceReq:
    """One service instance to place: its reservation (the `min` resources) and labels.

    `essential` instances of an execution start all together or not at all (a gang);
    elastic ones are added one by one when resources allow and may be reclaimed.
    """

    id: int
    execution_id: int
    cores: float
    memory: int
    labels: frozenset[str]
    essential: bool
    image: str = ""  # placement prefers a node already holding it ("": no preference)


@dataclass(frozen=True, slots=True)
class NodeState:
    """A Docker host as the scheduler sees it: total capacity (not free) and labels.

    An unavailable node (lost, draining) keeps what it holds but gets nothing new.
    """

    name: str
    cores: float
    memory: int
    labels: frozenset[str]
    available: bool = True
    images: frozenset[str] = frozenset()  # the images it holds (its heartbeats say)


@dataclass(frozen=True, slots=True)
class ExecutionState:
    """An active execution: what it still waits for and what it currently holds.

    `pending` lists the instances not placed yet: while essential ones are among them the
    execution waits for its gang. `placed` lists the instances holding resources, with
    their node name. `size` is the size hint (smaller runs first under SIZE policies);
    `not_before` delays elastic instances after a death (backoff). `user` is who
    submitted it (fair-share policies share the cluster between users).
    """

    id: int
    submitted_at: float
    size: float
    priority: int = 0
    pending: tuple[InstanceReq, ...] = ()
    placed: tuple[tuple[InstanceReq, str], ...] = ()
    not_before: float = 0.0
    user: str = ""


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a waiting execution did not start in a pass.

    `cause` says what stays the same while the cause does, `detail` what may change at
    every pass (the room left, how many wait ahead); both are plain values, put in words
    only when read (`text`, `detail_text`, `str()`), so a pass pays nothing for words
    nobody reads, and equal values read the same. `schedulable` is False when the
    cluster as it is could never hold the execution's essential set.
    """

    cause: tuple[Any, ...]
    detail: tuple[Any, ...] = ()
    schedulable: bool = True

    @property
    def text(self) -> str:
        from .reasons import render

        return render(self.cause)

    @property
    def detail_text(self) -> str:
        from .reasons import render

        return render(self.detail) if self.detail else ""

    def __str__(self) -> str:
        detail = self.detail_text
        return f"{self.text}; {detail}" if detail else self.text


@dataclass(frozen=True, slots=True)
class Decisions:
    """What one pass decided.

    `starts` are (instance id, node name) pairs: essential sets first, then elastic
    instances. `stops` are elastic instances to reclaim; they free room that some of the
    `starts` rely on, so the caller applies the stops before the starts, and puts the
    stopped instances back among their execution's pending ones. `reasons` says, for
    every execution waiting for its essential set and not started, why.
    """

    starts: list[tuple[int, str]] = field(default_factory=list)
    stops: list[int] = field(default_factory=list)
    reasons: dict[int, Reason] = field(default_factory=dict)

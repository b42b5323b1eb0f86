"""The scheduler's view of the cluster and its queue, kept in memory between passes.

PostgreSQL stays the source of truth, and every write stays a guarded update there;
the view is what a pass decides from, so that a pass need not read the nodes and the
active executions back each time. It is read whole at the start of a term of leadership
(a start or a takeover) and then kept up to date by deltas:

- the handlers, after their commit, say what they changed (`Changes`): a node's new
  heartbeat, loss or drain as values (nodes change only in handlers, one at a time per
  node); the executions whose rows they moved (a submission, a termination, an end, a
  node's loss, a drain) as ids, whose rows the next pass reads again, those rows only;
- the pass applies its own placements to the view after their commit.

Started facts change nothing the view holds (an instance placed, starting or running
holds the same room on the same node). Whatever cannot be applied as a delta for sure
(a write that failed, so whether it committed is unknown; a reason write that failed)
asks for a full reload instead (counted in ``zoe_scheduler_view_reloads_total``).

Why it is right: a handler says what it changed only after its commit; the pass takes
the changes first, then reads the changed rows. A change said before the take committed
before the read, so the read sees it; one said after is taken by the next pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from common import metrics
from common import states as st
from services.scheduler.core import ExecutionState, InstanceReq, NodeState
from services.scheduler.pending import PendingReasons

_EXECUTIONS = st.sql_list(st.EXECUTION_SCHEDULED)
_INSTANCES = st.sql_list(st.INSTANCE_SCHEDULED)
_INF = float("inf")

_EXECUTION_COLUMNS = (
    "SELECT id, extract(epoch FROM submitted_at) AS submitted, size, priority, state,"
    " user_name, pending_reason, schedulable FROM executions"
)
_INSTANCE_COLUMNS = (
    "SELECT i.id, i.execution_id, i.cores, i.memory, i.labels, i.essential, i.state,"
    " i.node, extract(epoch FROM i.not_before) AS not_before, i.spec->>'image' AS image"
    " FROM instances i"
)


_LABEL_SETS: dict[tuple[str, ...], frozenset[str]] = {}
_LABEL_SETS_KEPT = 10_000  # distinct label sets remembered (then it starts over)


def label_set(labels: list[str]) -> frozenset[str]:
    """One frozenset for all the instances of alike labels: fewer objects for the
    garbage collector to visit (services/scheduler/collector.py), and less memory."""
    key = tuple(labels)
    found = _LABEL_SETS.get(key)
    if found is None:
        if len(_LABEL_SETS) >= _LABEL_SETS_KEPT:
            _LABEL_SETS.clear()
        found = _LABEL_SETS[key] = frozenset(key)
    return found


def instance_req(r: asyncpg.Record) -> InstanceReq:
    """An instance row (with its image) as what the core places."""
    return InstanceReq(
        id=r["id"],
        execution_id=r["execution_id"],
        cores=r["cores"],
        memory=r["memory"],
        labels=label_set(r["labels"]),
        essential=r["essential"],
        image=r["image"] or "",
    )


class Changes:
    """What the handlers changed since the pass last looked (said after each commit)."""

    def __init__(self) -> None:
        self.executions: set[int] = set()
        self.nodes: list[tuple[str, dict[str, Any]]] = []
        self.full: str | None = None  # why the whole view must be read again, if it must

    def executions_changed(self, ids: Iterable[int]) -> None:
        """These executions' rows (or their instances' rows) moved: read them again."""
        self.executions.update(ids)

    def node_changed(self, name: str, **values: Any) -> None:
        """A node's row now holds these values (``cores``, ``memory``, ``labels``,
        ``images``, ``up``, ``drained``)."""
        self.nodes.append((name, values))

    def reload(self, reason: str) -> None:
        """Read the whole view again before the next pass."""
        if self.full is None:
            self.full = reason

    @contextlib.contextmanager
    def unsure(self) -> Iterator[None]:
        """Around a write the view learns of: if it fails, whether it committed is not
        known, so the next pass reads everything again."""
        try:
            yield
        except BaseException:
            self.reload("failed")
            raise

    def take(self) -> tuple[str | None, set[int], list[tuple[str, dict[str, Any]]]]:
        taken = (self.full, self.executions, self.nodes)
        self.full, self.executions, self.nodes = None, set(), []
        return taken


@dataclass(slots=True)
class _Node:
    cores: float
    memory: int
    labels: frozenset[str]
    up: bool
    drained: bool
    images: frozenset[str] = frozenset()

    def state(self, name: str) -> NodeState:
        return NodeState(
            name, self.cores, self.memory, self.labels, self.up and not self.drained, self.images
        )


@dataclass(slots=True)
class _Instance:
    req: InstanceReq
    node: str | None  # None: waiting to be placed ("created")
    not_before: float | None


@dataclass(slots=True)
class _Execution:
    id: int
    submitted: float
    size: float
    priority: int
    cleaning: bool  # cleaning up: nothing more is placed for it
    user: str
    instances: dict[int, _Instance] = field(default_factory=dict)
    built: ExecutionState | None = None  # what the core gets, until it changes
    valid_until: float = _INF  # when a backoff of one of its instances expires

    def state(self, now: float) -> ExecutionState:
        if self.built is not None and now < self.valid_until:
            return self.built
        pending: list[InstanceReq] = []
        placed: list[tuple[InstanceReq, str]] = []
        until = _INF
        for i in self.instances.values():
            if i.node is not None:
                placed.append((i.req, i.node))
            elif i.not_before is not None and i.not_before > now:
                until = min(until, i.not_before)
            elif not self.cleaning:
                pending.append(i.req)
        self.built = ExecutionState(
            id=self.id,
            submitted_at=self.submitted,
            size=self.size,
            priority=self.priority,
            pending=tuple(pending),
            placed=tuple(placed),
            user=self.user,
        )
        self.valid_until = until
        return self.built


class View:
    """The nodes and active executions, as a fresh read of PostgreSQL would find them."""

    def __init__(self, reasons: PendingReasons | None = None) -> None:
        self.nodes: dict[str, _Node] = {}
        self.executions: dict[int, _Execution] = {}
        self.owner: dict[int, int] = {}  # instance id -> execution id
        self.reasons = reasons if reasons is not None else PendingReasons()
        self.loaded = False
        self._node_list: list[NodeState] | None = None

    # ---- reading from PostgreSQL -----------------------------------------------------

    async def load(self, conn: asyncpg.Connection, reason: str) -> None:
        """Read everything (a term's start, or a fallback)."""
        metrics.VIEW_RELOADS.labels(reason).inc()
        nodes = await conn.fetch(
            "SELECT name, cores, memory, labels, images, state, drained_at FROM nodes ORDER BY name"
        )
        execs = await conn.fetch(f"{_EXECUTION_COLUMNS} WHERE state IN {_EXECUTIONS}")
        rows = await conn.fetch(
            f"{_INSTANCE_COLUMNS} JOIN executions e ON e.id = i.execution_id"
            f" WHERE e.state IN {_EXECUTIONS} AND i.state IN {_INSTANCES} ORDER BY i.id"
        )
        self.nodes = {
            r["name"]: _Node(
                r["cores"],
                r["memory"],
                frozenset(r["labels"]),
                r["state"] == "up",
                r["drained_at"] is not None,
                frozenset(r["images"]),
            )
            for r in nodes
        }
        self._node_list = None
        self.executions = {}
        self.owner = {}
        self._put(execs, rows)
        self.loaded = True

    async def refresh(self, conn: asyncpg.Connection, ids: set[int]) -> None:
        """Read again the rows of these executions and of their instances."""
        wanted = sorted(ids)
        execs = await conn.fetch(
            f"{_EXECUTION_COLUMNS} WHERE id = ANY($1::bigint[]) AND state IN {_EXECUTIONS}",
            wanted,
        )
        rows = await conn.fetch(
            f"{_INSTANCE_COLUMNS} WHERE i.execution_id = ANY($1::bigint[])"
            f" AND i.state IN {_INSTANCES} ORDER BY i.id",
            [r["id"] for r in execs],
        )
        for ex_id in wanted:
            self._drop(ex_id)
        self._put(execs, rows)

    def _drop(self, ex_id: int) -> None:
        old = self.executions.pop(ex_id, None)
        if old is not None:
            for i in old.instances:
                self.owner.pop(i, None)

    def _put(self, execs: list[asyncpg.Record], rows: list[asyncpg.Record]) -> None:
        self.reasons.load(execs)
        for e in execs:
            self.executions[e["id"]] = _Execution(
                id=e["id"],
                submitted=float(e["submitted"]),
                size=float(e["size"]),
                priority=e["priority"],
                cleaning=e["state"] == "cleaning_up",
                user=e["user_name"],
            )
        for r in rows:
            ex = self.executions.get(r["execution_id"])
            if ex is None:
                continue
            req = instance_req(r)
            nb = r["not_before"]
            node = None if r["state"] == "created" else r["node"]
            ex.instances[r["id"]] = _Instance(req, node, None if nb is None else float(nb))
            self.owner[r["id"]] = r["execution_id"]

    # ---- deltas ---------------------------------------------------------------------

    def apply_node(self, name: str, values: dict[str, Any]) -> None:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = _Node(0.0, 0, frozenset(), True, False)
            self._node_list = None
        for key, value in values.items():
            value = frozenset(value) if key in ("labels", "images") else value
            if getattr(node, key) != value:
                setattr(node, key, value)
                # a heartbeat saying nothing new leaves the list (and what the core
                # derived from it) as it was
                self._node_list = None

    def placed(self, starts: Iterable[tuple[int, str]]) -> None:
        """A pass's placements, committed."""
        for inst_id, node in starts:
            ex = self.executions.get(self.owner.get(inst_id, -1))
            if ex is None:
                continue
            inst = ex.instances[inst_id]
            inst.node = node  # (its not_before stays, as in its row: a placed one ignores it)
            ex.built = None

    # ---- what a pass decides from ----------------------------------------------------

    def snapshot(self, now: float) -> tuple[list[NodeState], list[ExecutionState], float | None]:
        """Nodes, active executions, and the next time a backoff expires (if any): what
        ``passes.load_snapshot`` would read."""
        if self._node_list is None:
            self._node_list = [n.state(name) for name, n in sorted(self.nodes.items())]
        executions = []
        next_wake = _INF
        for ex in self.executions.values():
            executions.append(ex.state(now))
            if ex.valid_until < next_wake:
                next_wake = ex.valid_until
        return self._node_list, executions, None if next_wake == _INF else next_wake

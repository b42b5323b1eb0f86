"""One scheduling pass: bring the view of the cluster up to date, ask the core, apply its
decisions.

The core (``services.scheduler.core.schedule``) is pure; this module is the thin shell
around it. The service's view lives in memory between passes (``view.py``); read afresh
from PostgreSQL it is ``load_snapshot``. Placements are applied with guarded updates, so
an execution's essential set is stored all together or not at all even when a message
handler changed a row since the view was read.
"""

from __future__ import annotations

import time
from collections import defaultdict

import asyncpg
import structlog

from common import metrics
from common import states as st
from services.scheduler import store
from services.scheduler.core import (
    Decisions,
    ExecutionState,
    InstanceReq,
    Kept,
    NodeState,
    Policy,
    schedule,
)
from services.scheduler.pending import PendingReasons
from services.scheduler.pending import write as write_reasons
from services.scheduler.view import Changes, View, instance_req

log = structlog.get_logger("scheduler.pass")

_EXECUTIONS = st.sql_list(st.EXECUTION_SCHEDULED)
_INSTANCES = st.sql_list(st.INSTANCE_SCHEDULED)
_ON_NODE = st.sql_list(st.INSTANCE_ON_NODE)


async def load_snapshot(
    conn: asyncpg.Connection, now: float, reasons: PendingReasons | None = None
) -> tuple[list[NodeState], list[ExecutionState], float | None]:
    """Nodes, active executions, and the next time a backoff expires (if any); tells
    `reasons` what the rows hold. A drained node is not available: it takes nothing new."""
    nodes = [
        NodeState(
            name=r["name"],
            cores=r["cores"],
            memory=r["memory"],
            labels=frozenset(r["labels"]),
            available=r["state"] == "up" and r["drained_at"] is None,
            images=frozenset(r["images"]),
        )
        for r in await conn.fetch(
            "SELECT name, cores, memory, labels, images, state, drained_at FROM nodes"
        )
    ]
    execs = await conn.fetch(
        "SELECT id, extract(epoch FROM submitted_at) AS submitted, size, priority, state,"
        " user_name, pending_reason, schedulable"
        f" FROM executions WHERE state IN {_EXECUTIONS}"
    )
    if reasons is not None:
        reasons.load(execs)
    rows = await conn.fetch(
        "SELECT i.id, i.execution_id, i.cores, i.memory, i.labels, i.essential, i.state,"
        " i.node, extract(epoch FROM i.not_before) AS not_before, i.spec->>'image' AS image"
        " FROM instances i JOIN executions e ON e.id = i.execution_id"
        f" WHERE e.state IN {_EXECUTIONS} AND i.state IN {_INSTANCES}"
        " ORDER BY i.id"
    )
    pending: dict[int, list[InstanceReq]] = defaultdict(list)
    placed: dict[int, list[tuple[InstanceReq, str]]] = defaultdict(list)
    next_wake: float | None = None
    for r in rows:
        req = instance_req(r)
        if r["state"] == "created":
            nb = r["not_before"]
            if nb is not None and float(nb) > now:
                next_wake = float(nb) if next_wake is None else min(next_wake, float(nb))
                continue
            pending[r["execution_id"]].append(req)
        else:
            placed[r["execution_id"]].append((req, r["node"]))
    executions = [
        ExecutionState(
            id=e["id"],
            submitted_at=float(e["submitted"]),
            size=float(e["size"]),
            priority=e["priority"],
            pending=tuple(pending[e["id"]]) if e["state"] != "cleaning_up" else (),
            placed=tuple(placed[e["id"]]),
            user=e["user_name"],
        )
        for e in execs
    ]
    return nodes, executions, next_wake


class ClusterView:
    """The scheduler's view of the cluster, from which each pass decides.

    With ``changes`` (the service's), the view lives in memory between passes
    (``services/scheduler/view.py``): read whole on the first pass of a term, then
    brought up to date by what the handlers say they changed and by the pass's own
    placements; what the core derives from it (``core.Kept``) is kept with it. Without,
    each pass reads it afresh from PostgreSQL (``load_snapshot``), as ``run_pass``
    does. The core and ``apply`` are the same either way.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        deployment: str,
        policy: Policy,
        changes: Changes | None = None,
    ) -> None:
        self.pool = pool
        self.deployment = deployment
        self.policy = policy
        self.reasons = PendingReasons()
        self.users = Users()
        self.changes = changes
        self.view = View(self.reasons)
        # what the core derives from the view, kept between passes with it
        self.kept: Kept | None = None
        # whether placed instances may wait for their start (room being freed, their
        # startup group): only a pass's writes leave some; unknown at a term's start
        self.placed_waiting = True

    async def snapshot(
        self, now: float
    ) -> tuple[list[NodeState], list[ExecutionState], float | None]:
        """Nodes, active executions, and the next time a backoff expires (if any)."""
        if self.changes is None:
            async with self.pool.acquire() as conn:
                return await load_snapshot(conn, now, self.reasons)
        await self.sync()
        return self.view.snapshot(now)

    async def sync(self) -> None:
        """Bring the in-memory view up to date with what the handlers said they changed."""
        assert self.changes is not None
        full, executions, nodes = self.changes.take()
        try:
            if full is not None or not self.view.loaded:
                self.kept = None  # every execution read again is a new object
                self.placed_waiting = True
                async with self.pool.acquire() as conn:
                    await self.view.load(conn, full or "start")
                self.kept = Kept()
                return
            for name, values in nodes:
                self.view.apply_node(name, values)
            if executions:
                async with self.pool.acquire() as conn:
                    await self.view.refresh(conn, executions)
        except BaseException:
            self.changes.reload("failed")
            raise

    async def run_pass(self) -> tuple[Decisions, float | None]:
        """Run one pass; returns what was decided and when a backoff next expires."""
        with metrics.PASS_DURATION.time():
            return await self._run_pass()

    async def _run_pass(self) -> tuple[Decisions, float | None]:
        now = time.time()
        admitted = await _admit(self.pool)
        if self.changes is not None:
            self.changes.executions_changed(admitted)
        if self.placed_waiting:
            _, self.placed_waiting = await _dispatch_waiting(self.pool, self.deployment)
        nodes, executions, next_wake = await self.snapshot(now)
        if not any(e.pending for e in executions):
            decisions = Decisions()
        else:
            weights, bounds = await self.users.get(self.pool)
            decisions = schedule(
                nodes,
                executions,
                now=now,
                policy=self.policy,
                weights=weights,
                max_priority=bounds,
                kept=self.kept if self.changes is not None else None,
            )
        if decisions.starts or decisions.stops:
            waiting, self.placed_waiting = self.placed_waiting, True  # until committed
            if self.changes is None:
                *_, left = await apply(self.pool, self.deployment, decisions)
            else:
                with self.changes.unsure():
                    kept, conflicts, left = await apply(self.pool, self.deployment, decisions)
                self.view.placed(kept)
                self.changes.executions_changed(conflicts)
            self.placed_waiting = waiting or left
            log.info(
                "pass.applied",
                starts=len(decisions.starts),
                stops=len(decisions.stops),
                ms=round(1000 * (time.time() - now), 1),
            )
        changed = self.reasons.changes(decisions.reasons, time.monotonic())
        try:
            await write_reasons(self.pool, changed)
        except BaseException:
            self.reasons.forget()  # read the rows again next pass
            if self.changes is not None:
                self.changes.reload("reasons")
            raise
        return decisions, next_wake


class Users:
    """Each user's fair-share weight (its own, else its role's) and priority bound (its
    role's `max_priority`), read again at most every `REFRESH` seconds."""

    REFRESH = 5.0

    def __init__(self) -> None:
        self.weights: dict[str, float] = {}
        self.bounds: dict[str, int] = {}
        self.read_at = float("-inf")

    async def get(self, pool: asyncpg.Pool) -> tuple[dict[str, float], dict[str, int]]:
        if time.monotonic() - self.read_at >= self.REFRESH:
            rows = await pool.fetch(
                "SELECT u.name, coalesce(u.weight, r.weight) AS weight, r.max_priority"
                " FROM users u JOIN roles r ON r.name = u.role"
            )
            self.weights = {r["name"]: r["weight"] for r in rows}
            self.bounds = {r["name"]: r["max_priority"] for r in rows}
            self.read_at = time.monotonic()
        return self.weights, self.bounds


async def run_pass(
    pool: asyncpg.Pool, deployment: str, policy: Policy
) -> tuple[Decisions, float | None]:
    """Run one pass over a view read afresh; returns what was decided and when a backoff
    next expires."""
    return await ClusterView(pool, deployment, policy).run_pass()


async def admit_submitted(pool: asyncpg.Pool) -> int:
    """Take every new execution into the queue, in one statement; returns how many."""
    return len(await _admit(pool))


async def _admit(pool: asyncpg.Pool) -> list[int]:
    """``admit_submitted``, returning the executions moved."""
    async with pool.acquire() as conn, conn.transaction():
        return await store.admit_submitted(conn)


async def dispatch_waiting(pool: asyncpg.Pool, deployment: str) -> int:
    """Start placed instances that waited for room on their node (a reclaimed instance
    still stopping) or for their startup group; returns how many were started.

    Only executions with a placed instance that fits its node's room now are looked at
    (and locked): on a busy cluster hundreds of executions wait for room being freed,
    and reading them all again at every pass would cost more than the pass itself. An
    instance that does not fit alone cannot start; room freed after this look is seen by
    the next pass (every end asks for one)."""
    return (await _dispatch_waiting(pool, deployment))[0]


async def _dispatch_waiting(pool: asyncpg.Pool, deployment: str) -> tuple[int, bool]:
    """`dispatch_waiting`; also says whether there were placed instances to look at."""
    # most passes find none: one look at an index that holds only the placed instances
    rows = await pool.fetch("SELECT DISTINCT node FROM instances WHERE state = 'placed'")
    if not rows:
        return 0, False
    nodes = [r["node"] for r in rows]
    async with pool.acquire() as conn, conn.transaction():
        # locked as the handlers lock them: executions first, in id order
        rows = await conn.fetch(
            "WITH room AS (SELECT n.name, n.cores - coalesce(sum(j.cores), 0) AS cores,"
            "  n.memory - coalesce(sum(j.memory), 0) AS memory"
            "  FROM nodes n LEFT JOIN instances j ON j.node = n.name"
            f"   AND j.state IN {_ON_NODE}"
            "  WHERE n.name = ANY($1::text[])"
            "  GROUP BY n.name)"
            " SELECT id FROM executions WHERE id IN"
            " (SELECT i.execution_id FROM instances i JOIN room r ON r.name = i.node"
            "  WHERE i.state = 'placed' AND i.cores <= r.cores + 1e-9 AND i.memory <= r.memory)"
            " ORDER BY id FOR NO KEY UPDATE",
            nodes,
        )
        return await store.dispatch_ready(conn, deployment, [r["id"] for r in rows]), True


async def apply(
    pool: asyncpg.Pool, deployment: str, decisions: Decisions
) -> tuple[list[tuple[int, str]], set[int], bool]:
    """Store placements and reclaims, and queue their commands, in one transaction.
    Returns the placements stored, the executions put back (conflicts), and whether
    some placed instance was left to wait (for room being freed or its startup group).

    An execution's placements are stored all together or not at all: when a message
    handler moved one of its instances since the snapshot was read, or its node was
    drained since, the others are put back too, and the next pass decides again. An
    instance whose startup group may start, on a node with room for it now, is stored
    as starting with its command queued; the others wait as placed (`dispatch_waiting`
    starts them). Set-based: the statements are the same few for one execution or a
    thousand.
    """
    ids = [i for i, _ in decisions.starts]
    async with pool.acquire() as conn, conn.transaction():
        owners: dict[int, int] = dict(
            await conn.fetch(
                "SELECT id, execution_id FROM instances WHERE id = ANY($1::bigint[])",
                ids + list(decisions.stops),
            )
        )
        # executions before their instances, in id order, as the handlers lock them
        await conn.execute(
            "SELECT 1 FROM executions WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
            sorted(set(owners.values())),
        )
        if decisions.stops:
            await store.stop_instances(conn, deployment, decisions.stops)
            metrics.RECLAIMS.inc(len(decisions.stops))
        target = {i: node for i, node in decisions.starts if i in owners}
        if not target:
            return [], set(), False
        wanted = sorted({owners[i] for i in target})
        rows = [dict(r) for r in await store.locked_instances(conn, wanted, list(target))]
        room = await store.node_room(
            conn, set(target.values()) | {r["node"] for r in rows if r["state"] == "placed"}
        )
        # an execution is put back whole when one of its instances moved since the view
        # was read, or goes to a node drained since (or unknown): it takes nothing new
        conflicts = {
            r["execution_id"]
            for r in rows
            if r["id"] in target
            and (r["state"] != "created" or room.get(target[r["id"]], (0, 0, True))[2])
        }
        if conflicts:
            log.info("pass.conflict", executions=sorted(conflicts))
        rows = [r for r in rows if r["execution_id"] not in conflicts]
        placing = []
        for r in rows:
            if r["id"] in target:
                r.update(node=target[r["id"]], state="placed")  # as it is to be
                placing.append(r)
        starting = store.fitting(store.ready_rows(rows), room)
        now = {r["id"] for r in starting}
        await store.write_starts(
            conn, deployment, starting, [r for r in placing if r["id"] not in now], target
        )
        metrics.PLACEMENTS.inc(len(placing))
        executions = [e for e in wanted if e not in conflicts]
        await store.set_executions_state(conn, executions, "starting", ["queued"])
    left = any(r["state"] == "placed" and r["id"] not in now for r in rows)
    stored = {r["id"] for r in placing}
    return [(i, n) for i, n in decisions.starts if i in stored], conflicts, left

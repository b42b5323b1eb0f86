"""Draining a node: it takes nothing new, its elastic instances move, its essential
ones stay until their executions end or the drain's deadline passes.

The scheduler is the only writer of node state: the api sends `NodeDrainRequested`,
`on_drain` records it (``nodes.drained_at``, ``drain_deadline``) and stops the node's
elastic instances, which come back pending and are placed elsewhere (a pass counts a
drained node unavailable). `enforce`, run periodically, ends what still holds a node
past its deadline as a node loss would (an essential instance's execution fails, or
restarts it where its ZApp allows), stopping the containers, which are still reachable.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import structlog

from common import messages as m
from common import states as st
from services.scheduler import ends, store
from services.scheduler.handlers import Deps
from services.scheduler.view import Changes

log = structlog.get_logger("scheduler")

_HOLDING = sorted(st.INSTANCE_HOLDING)
# How often `enforce` looks for drains past their deadline (one look at the nodes table).
ENFORCE_INTERVAL = 2.0


async def on_drain(msg: m.NodeDrainRequested, deps: Deps) -> None:
    """Record a drain (or its end) and move the node's elastic instances away."""
    async with deps.node_locks[msg.node]:
        with deps.view.unsure():
            changed, moved = await _drain(msg, deps)
        if changed:
            deps.view.node_changed(msg.node, drained=msg.drain)
            # stopping instances hold their room until they end: the view's rows do not
            # change, but their executions are read again all the same (cheap, and sure)
            deps.view.executions_changed(moved)
    deps.request_pass()


async def _drain(msg: m.NodeDrainRequested, deps: Deps) -> tuple[bool, list[int]]:
    """``on_drain``'s transaction; returns whether the node's row changed, and the
    executions whose instances it stopped."""
    async with deps.pool.acquire() as conn, conn.transaction():
        if not msg.drain:
            done = await conn.fetchval(
                "UPDATE nodes SET drained_at = NULL, drain_deadline = NULL"
                " WHERE name = $1 AND drained_at IS NOT NULL RETURNING name",
                msg.node,
            )
            if done is not None:
                log.info("node.undrained", node=msg.node)
            return done is not None, []
        else:
            row = await conn.fetchrow(
                "UPDATE nodes SET drained_at = coalesce(drained_at, now()),"
                " drain_deadline = CASE WHEN $2::float8 IS NULL THEN NULL"
                "  ELSE now() + $2::float8 * interval '1 second' END"
                " WHERE name = $1 RETURNING name",
                msg.node,
                msg.deadline,
            )
            if row is None:
                return False, []  # no such node (any more): nothing to drain
            elastic = await conn.fetch(
                "SELECT i.id, i.execution_id FROM instances i"
                " JOIN executions e ON e.id = i.execution_id"
                " WHERE i.node = $1 AND NOT i.essential AND i.state = ANY($2::text[])"
                " ORDER BY e.id FOR NO KEY UPDATE OF e",  # executions first, in id order
                msg.node,
                _HOLDING,
            )
            moved = await store.stop_instances(conn, deps.deployment, [r["id"] for r in elastic])
            log.info("node.drained", node=msg.node, deadline=msg.deadline, moved=len(moved))
            return True, [r["execution_id"] for r in elastic]


async def enforce(
    pool: asyncpg.Pool,
    rules: ends.Rules,
    request_pass: Callable[[], None],
    view: Changes | None = None,
) -> int:
    """End what drained nodes past their deadline still hold; returns how many. Says to
    ``view`` (the pass's) what it changed."""
    view = view if view is not None else Changes()
    touched: set[int] = set()
    with view.unsure():
        rows, changed = await _enforce(pool, rules, touched)
    view.executions_changed(touched)
    if not rows:
        return 0
    log.warning("node.drain_deadline", nodes=sorted({r["node"] for r in rows}), instances=len(rows))
    if changed:
        request_pass()
    return len(rows)


async def _enforce(
    pool: asyncpg.Pool, rules: ends.Rules, touched: set[int]
) -> tuple[list[asyncpg.Record], int]:
    async with pool.acquire() as conn, conn.transaction():
        due = await conn.fetch("SELECT name FROM nodes WHERE drain_deadline <= now()")
        if not due:
            return [], 0
        rows = await conn.fetch(
            "SELECT id, node FROM instances WHERE node = ANY($1::text[])"
            " AND state = ANY($2::text[]) ORDER BY id",
            [r["name"] for r in due],
            _HOLDING,
        )
        if not rows:
            return [], 0
        changed = await ends.apply_ends(
            conn,
            rules,
            [(r["id"], st.End("node-lost", detail="drain deadline")) for r in rows],
            touched,
        )
    return rows, changed

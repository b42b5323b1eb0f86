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

log = structlog.get_logger("scheduler")

_HOLDING = sorted(st.INSTANCE_HOLDING)
# How often `enforce` looks for drains past their deadline (one look at the nodes table).
ENFORCE_INTERVAL = 2.0


async def on_drain(msg: m.NodeDrainRequested, deps: Deps) -> None:
    """Record a drain (or its end) and move the node's elastic instances away."""
    async with deps.node_locks[msg.node], deps.pool.acquire() as conn, conn.transaction():
        if not msg.drain:
            done = await conn.fetchval(
                "UPDATE nodes SET drained_at = NULL, drain_deadline = NULL"
                " WHERE name = $1 AND drained_at IS NOT NULL RETURNING name",
                msg.node,
            )
            if done is not None:
                log.info("node.undrained", node=msg.node)
            moved: list[int] = []
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
                return  # no such node (any more): nothing to drain
            elastic = await conn.fetch(
                "SELECT i.id FROM instances i JOIN executions e ON e.id = i.execution_id"
                " WHERE i.node = $1 AND NOT i.essential AND i.state = ANY($2::text[])"
                " ORDER BY e.id FOR NO KEY UPDATE OF e",  # executions first, in id order
                msg.node,
                _HOLDING,
            )
            moved = await store.stop_instances(conn, deps.deployment, [r["id"] for r in elastic])
            log.info("node.drained", node=msg.node, deadline=msg.deadline, moved=len(moved))
    deps.request_pass()


async def enforce(pool: asyncpg.Pool, rules: ends.Rules, request_pass: Callable[[], None]) -> int:
    """End what drained nodes past their deadline still hold; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        due = await conn.fetch("SELECT name FROM nodes WHERE drain_deadline <= now()")
        if not due:
            return 0
        rows = await conn.fetch(
            "SELECT id, node FROM instances WHERE node = ANY($1::text[])"
            " AND state = ANY($2::text[]) ORDER BY id",
            [r["name"] for r in due],
            _HOLDING,
        )
        if not rows:
            return 0
        changed = await ends.apply_ends(
            conn, rules, [(r["id"], st.End("node-lost", detail="drain deadline")) for r in rows]
        )
    log.warning("node.drain_deadline", nodes=sorted({r["node"] for r in rows}), instances=len(rows))
    if changed:
        request_pass()
    return len(rows)

"""The monitor's handlers: record what happened to an instance and say it as a verdict.

The monitor writes the instance's end (state died or stopped, exit code, reason) with a
guarded update, and publishes the verdict through the outbox in the same transaction,
so a redelivered fact finds the row already ended and says nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from common import messages as m
from common.bus import Outgoing
from common.outbox import enqueue
from services.monitor.verdicts import end_reason, execution_outcome

log = structlog.get_logger("monitor")

LIVE = ["placed", "starting", "running", "stopping"]


@dataclass
class Deps:
    """What handlers need: the pool and the heartbeat table of the node watcher."""

    pool: asyncpg.Pool
    last_seen: dict[str, float]
    clock: Callable[[], float]


async def record_end(
    conn: asyncpg.Connection,
    *,
    execution_id: int,
    instance_id: int,
    container_name: str,
    exit_code: int | None,
    oom_killed: bool,
    removed: bool,
) -> bool:
    """End an instance that was live; queue the verdicts. False if it had already ended."""
    row = await conn.fetchrow(
        "SELECT i.state, i.monitor, e.state AS execution_state FROM instances i"
        " JOIN executions e ON e.id = i.execution_id"
        " WHERE i.id = $1 AND ($2 = '' OR i.container_name = $2) FOR UPDATE OF i",
        instance_id,
        container_name,
    )
    if row is None or row["state"] not in LIVE:
        return False
    reason = end_reason(
        requested_stop=row["state"] == "stopping", exit_code=exit_code, oom_killed=oom_killed
    )
    await conn.execute(
        "UPDATE instances SET state = $2, exit_code = $3, reason = $4,"
        " removed = removed OR $5, updated_at = now() WHERE id = $1",
        instance_id,
        "stopped" if reason in ("stopped", "exited") else "died",
        exit_code,
        reason,
        removed,
    )
    out = [
        Outgoing(
            m.InstanceEnded(
                execution_id=execution_id,
                instance_id=instance_id,
                reason=reason,
                exit_code=exit_code,
            )
        )
    ]
    if row["monitor"] and reason != "stopped" and row["execution_state"] in ("starting", "running"):
        outcome = execution_outcome(exit_code)
        out.append(
            Outgoing(
                m.ExecutionEnded(
                    execution_id=execution_id,
                    outcome=outcome,  # type: ignore[arg-type]
                    exit_code=exit_code,
                )
            )
        )
    await enqueue(conn, out)
    log.info("instance.ended", reason=reason, exit_code=exit_code)
    return True


async def on_exited(msg: m.InstanceExited, deps: Deps) -> None:
    """A container stopped running."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await record_end(
            conn,
            execution_id=msg.execution_id,
            instance_id=msg.instance_id,
            container_name=msg.container_name,
            exit_code=msg.exit_code,
            oom_killed=msg.oom_killed,
            removed=False,
        )


async def on_removed(msg: m.InstanceRemoved, deps: Deps) -> None:
    """A container is gone: keep its log, mark it removed, end the instance if needed."""
    async with deps.pool.acquire() as conn, conn.transaction():
        if msg.log:
            await conn.execute(
                "INSERT INTO instance_logs (instance_id, log) SELECT id, $2 FROM instances"
                " WHERE id = $1 ON CONFLICT (instance_id) DO UPDATE SET log = $2, saved_at = now()",
                msg.instance_id,
                msg.log,
            )
        ended = await record_end(
            conn,
            execution_id=msg.execution_id,
            instance_id=msg.instance_id,
            container_name=msg.container_name,
            exit_code=msg.exit_code,
            oom_killed=msg.oom_killed,
            removed=True,
        )
        if ended:
            return
        marked = await conn.fetchval(
            "UPDATE instances SET removed = true, updated_at = now()"
            " WHERE id = $1 AND container_name = $2 AND NOT removed RETURNING id",
            msg.instance_id,
            msg.container_name,
        )
        if marked is not None:
            verdict = m.InstanceEnded(
                execution_id=msg.execution_id,
                instance_id=msg.instance_id,
                reason="removed",
                exit_code=msg.exit_code,
            )
            await enqueue(conn, [Outgoing(verdict)])


async def on_start_failed(msg: m.InstanceStartFailed, deps: Deps) -> None:
    """A container could not start: the instance died of it, with the engine's reason."""
    async with deps.pool.acquire() as conn, conn.transaction():
        updated = await conn.fetchval(
            "UPDATE instances SET state = 'died', reason = 'start-failed', removed = true,"
            " updated_at = now() WHERE id = $1 AND container_name = $2"
            " AND state IN ('placed', 'starting') RETURNING id",
            msg.instance_id,
            msg.container_name,
        )
        if updated is None:
            return
        verdict = m.InstanceEnded(
            execution_id=msg.execution_id,
            instance_id=msg.instance_id,
            reason="start-failed",
            detail=msg.reason,
        )
        await enqueue(conn, [Outgoing(verdict)])
        log.warning("instance.start_failed", reason=msg.reason)


async def on_heartbeat(msg: m.NodeHeartbeat, deps: Deps) -> None:
    """Note that the node is alive."""
    deps.last_seen[msg.node] = deps.clock()


async def declare_lost(pool: asyncpg.Pool, node: str) -> int:
    """A node went silent: it is lost, and every instance it held died (node-lost)."""
    async with pool.acquire() as conn, conn.transaction():
        lost = await conn.fetchval(
            "UPDATE nodes SET state = 'lost' WHERE name = $1 AND state = 'up' RETURNING name",
            node,
        )
        if lost is None:
            return 0
        rows = await conn.fetch(
            "UPDATE instances SET state = 'died', reason = 'node-lost', removed = true,"
            " updated_at = now() WHERE node = $1 AND state = ANY($2::text[])"
            " RETURNING id, execution_id",
            node,
            LIVE,
        )
        out = [Outgoing(m.NodeLost(node=node))]
        out += [
            Outgoing(
                m.InstanceEnded(
                    execution_id=r["execution_id"], instance_id=r["id"], reason="node-lost"
                )
            )
            for r in rows
        ]
        await enqueue(conn, out)
    log.warning("node.lost", node=node, instances=len(rows))
    return len(rows)


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.InstanceExited: on_exited,
    m.InstanceRemoved: on_removed,
    m.InstanceStartFailed: on_start_failed,
    m.NodeHeartbeat: on_heartbeat,
}

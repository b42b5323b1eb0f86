"""The monitor's handlers: record what happened to an instance and say it as a verdict.

The monitor writes the instance's end (state died or stopped, exit code, reason) with a
guarded update, and publishes the verdict through the outbox in the same transaction,
so a redelivered fact finds the row already ended and says nothing twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    # instance id -> its latest usage sample (cpu percent, memory bytes, sampled at),
    # kept until ``store_usage`` writes it
    usage: dict[int, tuple[float, int, float]] = field(default_factory=dict)


async def record_end(
    conn: asyncpg.Connection,
    *,
    execution_id: int,
    instance_id: int,
    container_name: str,
    exit_code: int | None,
    oom_killed: bool,
    removed: bool,
    container_id: str = "",
) -> bool:
    """End an instance that was live; queue the verdicts. False if it had already ended.

    The fact must be about the instance's current container: a fact about an older
    generation (a late or replayed one) names another container, or carries another
    container id than the one that started, and changes nothing.
    """
    row = await conn.fetchrow(
        "SELECT i.state, i.monitor, e.state AS execution_state, e.will_end FROM instances i"
        " JOIN executions e ON e.id = i.execution_id"
        " WHERE i.id = $1 AND ($2 = '' OR i.container_name = $2)"
        " AND ($3 = '' OR i.container_id IS NULL OR i.container_id = $3) FOR NO KEY UPDATE OF i",
        instance_id,
        container_name,
        container_id,
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
    if (
        row["monitor"]
        and row["will_end"]  # a long-running execution's services never end it by exiting
        and reason != "stopped"
        and row["execution_state"] in ("starting", "running")
    ):
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
            container_id=msg.container_id,
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
    """Note that the node is alive, and the usage of its containers."""
    deps.last_seen[msg.node] = deps.clock()
    for u in msg.usage:
        deps.usage[u.instance_id] = (u.cpu_percent, u.memory_bytes, msg.sent_at)


async def store_usage(pool: asyncpg.Pool, deps: Deps) -> int:
    """Write the usage samples received since the last call, in one statement; returns
    how many. Samples of instances that no longer exist are dropped."""
    samples, deps.usage = deps.usage, {}
    if not samples:
        return 0
    ids = sorted(samples)  # rows locked in id order, as everywhere
    await pool.execute(
        "INSERT INTO instance_usage (instance_id, cpu_percent, memory_bytes, sampled_at)"
        " SELECT s.id, s.cpu, s.memory, to_timestamp(s.at)"
        " FROM unnest($1::bigint[], $2::float8[], $3::bigint[], $4::float8[])"
        "  AS s(id, cpu, memory, at) JOIN instances i ON i.id = s.id"
        " ON CONFLICT (instance_id) DO UPDATE SET cpu_percent = excluded.cpu_percent,"
        "  memory_bytes = excluded.memory_bytes, sampled_at = excluded.sampled_at",
        ids,
        [samples[i][0] for i in ids],
        [samples[i][1] for i in ids],
        [samples[i][2] for i in ids],
    )
    return len(ids)


async def declare_lost(pool: asyncpg.Pool, node: str) -> int:
    """A node went silent: it is lost, and every instance it held died (node-lost).

    Its containers may well still run, out of reach: they are given up (counted as
    removed, so cleanups do not wait for them) and recorded as the node's orphans, for
    the scheduler to have them removed if the node comes back. A container that had
    ended but was not removed yet is given up too (a ``removed`` verdict: a cleanup
    waiting for it may finish). Returns how many instances died.
    """
    async with pool.acquire() as conn, conn.transaction():
        lost = await conn.fetchval(
            "UPDATE nodes SET state = 'lost' WHERE name = $1 AND state = 'up' RETURNING name",
            node,
        )
        if lost is None:
            return 0
        rows = await conn.fetch(
            "WITH held AS (SELECT id, state, container_name FROM instances"
            "  WHERE node = $1 AND (state = ANY($2::text[]) OR NOT removed)"
            "  ORDER BY id FOR NO KEY UPDATE)"
            " UPDATE instances i SET removed = true, updated_at = now(),"
            "  state = CASE WHEN held.state = ANY($2::text[]) THEN 'died' ELSE i.state END,"
            "  reason = CASE WHEN held.state = ANY($2::text[]) THEN 'node-lost' ELSE i.reason END"
            " FROM held WHERE i.id = held.id"
            " RETURNING i.id, i.execution_id, held.state, held.container_name",
            node,
            LIVE,
        )
        # "placed": its start command was not sent yet, so no container of it exists
        orphans = [r for r in rows if r["container_name"] and r["state"] != "placed"]
        await conn.executemany(
            "INSERT INTO orphans (node, container_name, execution_id, instance_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            [(node, r["container_name"], r["execution_id"], r["id"]) for r in orphans],
        )
        out = [Outgoing(m.NodeLost(node=node))]
        out += [
            Outgoing(
                m.InstanceEnded(
                    execution_id=r["execution_id"],
                    instance_id=r["id"],
                    reason="node-lost" if r["state"] in LIVE else "removed",
                )
            )
            for r in rows
        ]
        await enqueue(conn, out)
    died = sum(r["state"] in LIVE for r in rows)
    log.warning("node.lost", node=node, instances=died, orphans=len(orphans))
    return died


async def check_nodes(pool: asyncpg.Pool, deps: Deps, timeout: float) -> list[str]:
    """Declare lost every node silent for longer than ``timeout``; returns them."""
    now = deps.clock()
    lost = []
    for node, seen in list(deps.last_seen.items()):
        if now - seen <= timeout:
            continue
        await declare_lost(pool, node)
        if deps.last_seen.get(node) == seen:  # no heartbeat came meanwhile
            del deps.last_seen[node]
        lost.append(node)
    return lost


def grant_grace(deps: Deps) -> None:
    """Count every known node as just seen: after the monitor could not hear heartbeats
    (its broker link was down), silence says nothing about the nodes."""
    now = deps.clock()
    for node in deps.last_seen:
        deps.last_seen[node] = now


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.InstanceExited: on_exited,
    m.InstanceRemoved: on_removed,
    m.InstanceStartFailed: on_start_failed,
    m.NodeHeartbeat: on_heartbeat,
}

"""Instances that ended: lock, load, decide (``common.states.decide_end``), apply.

The monitor says how a container ended; a node lost ends every instance it held. This
module is where the scheduler, the only writer of instance and execution state, records
those ends and acts on them, for one verdict or for all the instances of a lost node in
one transaction. Every write is guarded, so a redelivered or late verdict finds the rows
moved already and changes nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import structlog

from common import metrics
from common import states as st
from services.scheduler import store

log = structlog.get_logger("scheduler")


@dataclass(frozen=True, slots=True)
class Rules:
    """The settings that decisions about ends depend on."""

    deployment: str
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    essential_restarts: int = 0


async def apply_ends(
    conn: asyncpg.Connection,
    rules: Rules,
    ends: Sequence[tuple[int, st.End]],
    touched_out: set[int] | None = None,
) -> int:
    """Record and act on the ends of instances (in the caller's transaction); returns
    how many of them changed anything. Adds to ``touched_out`` the executions changed."""
    if not ends:
        return 0
    ids = sorted({i for i, _ in ends})
    owners = await conn.fetch(
        "SELECT DISTINCT execution_id FROM instances WHERE id = ANY($1::bigint[])", ids
    )
    executions = {
        r["id"]: st.ExecutionView(st.ExecutionState(r["state"]), r["will_end"])
        for r in await conn.fetch(
            "SELECT id, state, will_end FROM executions WHERE id = ANY($1::bigint[])"
            " ORDER BY id FOR NO KEY UPDATE",  # executions first, in id order, as everywhere
            sorted(r["execution_id"] for r in owners),
        )
    }
    rows = {
        r["id"]: r
        for r in await conn.fetch(
            "SELECT id, execution_id, name, state, essential, monitor, restart_count,"
            " container_name, container_id, node, removed FROM instances"
            " WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
            ids,
        )
    }
    decided: list[tuple[asyncpg.Record, st.End, st.EndDecision]] = []
    gone: list[int] = []
    for instance_id, end in ends:
        row = rows.get(instance_id)
        if row is None or row["execution_id"] not in executions:
            continue
        view = _view(row)
        decision = st.decide_end(
            view,
            executions[row["execution_id"]],
            end,
            essential_restarts=rules.essential_restarts,
        )
        if decision.action != "ignore":
            decided.append((row, end, decision))
        elif end.gone and view.state not in st.INSTANCE_HOLDING and st.is_current(view, end):
            gone.append(instance_id)  # ended before: now its container is gone too
    await _record(conn, decided, gone)
    touched = {row["execution_id"] for row, _, _ in decided}
    touched |= {rows[i]["execution_id"] for i in gone}
    if touched_out is not None:
        touched_out |= touched
    for row, end, decision in decided:
        await _act(conn, rules, row, end, decision)
    for execution_id in sorted(touched):
        await store.maybe_finish(conn, execution_id)
    return len(decided) + len(gone)


def _view(row: asyncpg.Record) -> st.InstanceView:
    return st.InstanceView(
        name=row["name"],
        state=st.InstanceState(row["state"]),
        essential=row["essential"],
        monitor=row["monitor"],
        restart_count=row["restart_count"],
        container_name=row["container_name"],
        container_id=row["container_id"],
    )


async def _record(
    conn: asyncpg.Connection,
    decided: list[tuple[asyncpg.Record, st.End, st.EndDecision]],
    gone: list[int],
) -> None:
    """Write every end at once: the instance's state, reason, exit code, and whether its
    container is gone (so a cleanup no longer waits for it)."""
    if decided:
        await conn.execute(
            "UPDATE instances i SET state = d.state, reason = d.reason, exit_code = d.code,"
            " removed = i.removed OR d.gone, updated_at = now()"
            " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::bool[])"
            "  AS d(id, state, reason, code, gone) WHERE i.id = d.id",
            [row["id"] for row, _, _ in decided],
            [str(d.state) for _, _, d in decided],
            [d.reason for _, _, d in decided],
            [e.exit_code for _, e, _ in decided],
            [e.gone for _, e, _ in decided],
        )
        for row, end, d in decided:
            if d.state == st.InstanceState.DIED:
                metrics.DEATHS.labels(str(d.reason)).inc()
            log.info(
                "instance.ended",
                execution_id=row["execution_id"],
                instance=row["name"],
                reason=d.reason,
                exit_code=end.exit_code,
                action=d.action,
            )
    if gone:
        await conn.execute(
            "UPDATE instances SET removed = true, updated_at = now()"
            " WHERE id = ANY($1::bigint[]) AND NOT removed",
            gone,
        )


async def _act(
    conn: asyncpg.Connection,
    rules: Rules,
    row: asyncpg.Record,
    end: st.End,
    decision: st.EndDecision,
) -> None:
    execution_id, instance_id = row["execution_id"], row["id"]
    removed = row["removed"] or end.gone
    match decision.action:
        case "requeue":  # reclaimed: back to pending, given back when capacity frees up
            await store.requeue(conn, instance_id, from_state=st.InstanceState.STOPPED)
        case "remove":  # finished its part: nothing to replace, its container to remove
            if not removed and row["node"]:
                await store.enqueue_stop(conn, rules.deployment, execution_id, instance_id)
        case "restart":
            await _restart(conn, rules, row, removed, decision)
        case "finish" | "fail":
            assert decision.outcome is not None
            await store.begin_cleanup(
                conn,
                rules.deployment,
                execution_id,
                decision.outcome,
                exit_code=end.exit_code,
                error=decision.error,
            )
        case _:  # "record": the end is all there is to write
            pass


async def _restart(
    conn: asyncpg.Connection,
    rules: Rules,
    row: asyncpg.Record,
    removed: bool,
    decision: st.EndDecision,
) -> None:
    """Remove the dead container, and queue the instance again after its backoff."""
    if not removed and row["node"]:
        await store.enqueue_stop(conn, rules.deployment, row["execution_id"], row["id"])
    restarts = row["restart_count"] + 1
    backoff = st.restart_backoff(restarts, rules.restart_backoff, rules.restart_backoff_max)
    moved = await store.requeue(
        conn, row["id"], from_state=st.InstanceState.DIED, restart=True, backoff=backoff
    )
    if moved is not None:
        metrics.RESTARTS.inc()
        log.info(
            "instance.restarting",
            instance=row["name"],
            essential=row["essential"],
            restarts=restarts,
            backoff=backoff,
            reason=decision.reason,
        )


async def lose_node(
    conn: asyncpg.Connection, rules: Rules, node: str, touched: set[int] | None = None
) -> int | None:
    """A node went silent: it is lost, and every instance it held died (node-lost).

    Its containers may well still run, out of reach: they are given up (counted as gone,
    so cleanups do not wait for them) and recorded as the node's orphans, to be removed
    if the node comes back. Returns how many instances it held, or None when the node
    was not up (lost already: a repeated verdict changes nothing). Adds to ``touched``
    the executions changed.
    """
    lost = await conn.fetchval(
        "UPDATE nodes SET state = 'lost' WHERE name = $1 AND state = 'up' RETURNING name", node
    )
    if lost is None:
        return None
    rows = await conn.fetch(
        "SELECT id, execution_id, state, container_name FROM instances"
        " WHERE node = $1 AND (state = ANY($2::text[]) OR NOT removed) ORDER BY id",
        node,
        sorted(st.INSTANCE_HOLDING),
    )
    # "placed": its start command was not sent yet, so no container of it exists
    orphans = [r for r in rows if r["container_name"] and r["state"] != st.InstanceState.PLACED]
    await conn.executemany(
        "INSERT INTO orphans (node, container_name, execution_id, instance_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [(node, r["container_name"], r["execution_id"], r["id"]) for r in orphans],
    )
    await apply_ends(
        conn, rules, [(r["id"], st.End("node-lost", gone=True)) for r in rows], touched
    )
    held = sum(r["state"] in st.INSTANCE_HOLDING for r in rows)
    log.warning("node.lost", node=node, instances=held, orphans=len(orphans))
    return held

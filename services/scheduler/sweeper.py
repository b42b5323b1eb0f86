"""The sweeper: work stuck in a transitional state past a deadline is converged.

A command can be lost for good (dead-lettered after its delivery limit, or parked by the
outbox), and then its instance would wait for ever: ``starting`` for a start nobody
performs, ``stopping`` for a stop nobody performs, a cleanup for a removal nobody
reports. Every ``sweep_interval`` the scheduler (the only writer of these rows) looks for
such rows and acts, logging why:

- an instance ``starting`` or ``stopping`` for longer than ``resend_after`` gets its
  command again (executors are idempotent: a start of an existing container reports it,
  a stop of a missing one reports it gone);
- an execution ``cleaning_up`` for longer than ``give_up_after`` ends: the containers
  still not reported gone are given up (recorded as their node's orphans, removed when
  the node is heard from again) and the execution reaches its outcome;
- an execution running for longer than its runtime limit (its user's quota when it was
  submitted) is terminated, with the error ``runtime-limit: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import structlog

from common.bus import Outgoing
from common.outbox import enqueue
from services.scheduler import store
from services.scheduler.view import Changes

log = structlog.get_logger("scheduler.sweeper")


@dataclass(frozen=True, slots=True)
class SweepRules:
    """The deadlines of the sweep, in seconds."""

    deployment: str
    resend_after: float = 120.0
    give_up_after: float = 900.0


async def sweep(
    pool: asyncpg.Pool, rules: SweepRules, view: Changes | None = None
) -> dict[str, int]:
    """One sweep; returns how many rows of each kind it moved. Says to ``view`` (the
    pass's) which executions it changed."""
    view = view if view is not None else Changes()
    touched: set[int] = set()
    with view.unsure():
        moved = await _converge(pool, rules, touched)
    view.executions_changed(touched)
    touched = set()
    with view.unsure():
        moved["overtime"] = await end_overtime(pool, rules.deployment, touched)
    view.executions_changed(touched)
    return moved


async def end_overtime(pool: asyncpg.Pool, deployment: str, touched: set[int] | None = None) -> int:
    """Terminate the executions running past their runtime limit; returns how many
    (adds them to ``touched``)."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, runtime_limit FROM executions"
            " WHERE state IN ('starting', 'running') AND runtime_limit IS NOT NULL"
            " AND started_at < now() - make_interval(secs => runtime_limit)"
            " ORDER BY id FOR NO KEY UPDATE"
        )
        for r in rows:
            limit = r["runtime_limit"]
            error = f"runtime-limit: ran for longer than its limit of {limit:g} s"
            await store.begin_cleanup(conn, deployment, r["id"], "terminated", error=error)
            log.warning("sweep.runtime_limit", execution_id=r["id"], limit=limit)
    if touched is not None:
        touched.update(r["id"] for r in rows)
    return len(rows)


async def _converge(pool: asyncpg.Pool, rules: SweepRules, touched: set[int]) -> dict[str, int]:
    """Resend stuck commands and give up stuck cleanups, in one transaction (adds the
    executions given up to ``touched``: a resend changes no state)."""
    async with pool.acquire() as conn, conn.transaction():
        stuck = await conn.fetch(
            "SELECT DISTINCT i.execution_id FROM instances i"
            " WHERE i.state IN ('starting', 'stopping')"
            " AND i.updated_at < now() - make_interval(secs => $1)",
            rules.resend_after,
        )
        ending = await conn.fetch(
            "SELECT id FROM executions WHERE state = 'cleaning_up'"
            " AND updated_at < now() - make_interval(secs => $1)",
            rules.give_up_after,
        )
        ids = sorted({r["execution_id"] for r in stuck} | {r["id"] for r in ending})
        if not ids:
            return {"starts": 0, "stops": 0, "given_up": 0}
        # executions first, in id order, as every handler locks them
        await conn.execute(
            "SELECT 1 FROM executions WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
            ids,
        )
        given_up = await _give_up(conn, [r["id"] for r in ending])
        starts, stops = await _resend(conn, rules)
    touched.update(r["id"] for r in ending)
    return {"starts": starts, "stops": stops, "given_up": given_up}


async def _resend(conn: asyncpg.Connection, rules: SweepRules) -> tuple[int, int]:
    rows = await conn.fetch(
        "UPDATE instances SET updated_at = now()"
        " WHERE state IN ('starting', 'stopping') AND node IS NOT NULL"
        " AND updated_at < now() - make_interval(secs => $1)"
        " RETURNING id, execution_id, name, state, node, container_name, spec",
        rules.resend_after,
    )
    out: list[Outgoing] = []
    for r in rows:
        if r["state"] == "starting":
            command = store.start_command(
                rules.deployment, r["execution_id"], r, r["container_name"]
            )
            out.append(Outgoing(command, node=r["node"]))
        else:
            out.append(store.stop_command(rules.deployment, r["execution_id"], r))
        log.warning(
            "sweep.resent",
            execution_id=r["execution_id"],
            instance=r["name"],
            state=r["state"],
            reason=f"no news for more than {rules.resend_after:g} s",
        )
    await enqueue(conn, out)
    starts = sum(r["state"] == "starting" for r in rows)
    return starts, len(rows) - starts


async def _give_up(conn: asyncpg.Connection, execution_ids: list[int]) -> int:
    if not execution_ids:
        return 0
    rows = await conn.fetch(
        "UPDATE instances SET removed = true, updated_at = now(),"
        " state = CASE WHEN state IN ('died', 'stopped') THEN state ELSE 'stopped' END,"
        " reason = CASE WHEN state IN ('died', 'stopped') THEN reason ELSE 'given-up' END"
        " WHERE execution_id = ANY($1::bigint[])"
        " AND (state IN ('placed', 'starting', 'running', 'stopping') OR NOT removed)"
        " RETURNING id, execution_id, node, container_name",
        execution_ids,
    )
    await conn.executemany(
        "INSERT INTO orphans (node, container_name, execution_id, instance_id)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [
            (r["node"], r["container_name"], r["execution_id"], r["id"])
            for r in rows
            if r["node"] and r["container_name"]
        ],
    )
    for execution_id in execution_ids:
        await store.maybe_finish(conn, execution_id)
        log.warning(
            "sweep.gave_up",
            execution_id=execution_id,
            containers=sum(r["execution_id"] == execution_id for r in rows),
            reason="its cleanup waited past the deadline for containers to be reported gone",
        )
    return len(execution_ids)

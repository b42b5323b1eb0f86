"""What the scheduler does with each message it consumes: plain async functions.

Each handler commits its change (with any messages it implies, through the outbox)
before it returns, so the bus acks only what is stored. Handlers that may free or need
capacity ask for a scheduling pass; passes run one at a time in the service loop.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from common import messages as m
from services.scheduler import store

log = structlog.get_logger("scheduler")


@dataclass(frozen=True)
class Deps:
    """What handlers need: the pool, the deployment name, a way to ask for a pass."""

    pool: asyncpg.Pool
    deployment: str
    request_pass: Callable[[], None]
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    # Deaths of essential instances of a long-running execution restarted before it fails.
    essential_restarts: int = 0
    # node -> (what its last stored heartbeat said, when it was stored; monotonic)
    nodes_stored: dict[str, tuple[tuple[Any, ...], float]] = field(default_factory=dict)
    # node -> how many times it was declared lost (a heartbeat stored while that
    # happened must not be remembered as stored)
    nodes_lost: dict[str, int] = field(default_factory=dict)


# An unchanged heartbeat is stored at most this often: liveness is the monitor's, so
# the row only needs the node's capacity, and a recent enough ``last_heartbeat``.
NODE_REFRESH = 30.0


async def on_submitted(msg: m.ExecutionSubmitted, deps: Deps) -> None:
    """A new execution: the next pass takes it into the queue (all new ones at once)."""
    deps.request_pass()


async def on_terminate(msg: m.ExecutionTerminateRequested, deps: Deps) -> None:
    """A user ends an execution: stop everything it runs, then it ends terminated."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await _lock_execution(conn, msg.execution_id)
        await store.begin_cleanup(conn, deps.deployment, msg.execution_id, "terminated")
    deps.request_pass()


async def on_heartbeat(msg: m.NodeHeartbeat, deps: Deps) -> None:
    """Keep the node's capacity and liveness; a new or returning node triggers a pass.

    A node that is back after it was declared lost gets asked to remove the containers
    given up when it was lost (its orphans): their instances were placed again
    elsewhere, or their executions ended. Heartbeats are the most frequent message there
    is: one that says what the stored row says already costs nothing but every
    ``NODE_REFRESH`` seconds, and one statement otherwise.
    """
    said = (msg.cores, msg.memory, tuple(msg.labels), tuple(msg.images))
    stored = deps.nodes_stored.get(msg.node)
    now = time.monotonic()
    if not msg.registered and stored is not None and stored[0] == said:
        if now - stored[1] < NODE_REFRESH:
            return
    losses = deps.nodes_lost.get(msg.node, 0)
    async with deps.pool.acquire() as conn:
        row = await conn.fetchrow(
            "WITH old AS (SELECT state FROM nodes WHERE name = $1),"
            " beat AS (INSERT INTO nodes AS n (name, cores, memory, labels, images,"
            "  last_heartbeat) VALUES ($1, $2, $3, $4, $5, now())"
            "  ON CONFLICT (name) DO UPDATE SET cores = $2, memory = $3, labels = $4,"
            "  images = $5, last_heartbeat = now(), state = 'up' RETURNING 1)"
            " SELECT (SELECT state FROM old) AS before, (SELECT count(*) FROM beat) AS beat,"
            " EXISTS (SELECT 1 FROM orphans WHERE node = $1) AS orphans",
            msg.node,
            msg.cores,
            msg.memory,
            msg.labels,
            msg.images,
        )
        before: str | None = row["before"]
        orphans = 0
        if row["orphans"]:
            async with conn.transaction():
                orphans = await store.stop_orphans(conn, deps.deployment, msg.node)
    if deps.nodes_lost.get(msg.node, 0) == losses:  # not lost meanwhile: the row is current
        deps.nodes_stored[msg.node] = (said, now)
    if before == "lost":
        log.info("node.returned", orphans=orphans)
    elif before is None or msg.registered:
        log.info("node.registered", cores=msg.cores, memory=msg.memory, labels=msg.labels)
    if before != "up" or msg.registered:
        deps.request_pass()


async def on_node_lost(msg: m.NodeLost, deps: Deps) -> None:
    """The monitor declared a node lost (it marked the node, and sent a verdict for each
    instance it held): the pass must not count on that node any more."""
    log.warning("node.lost", node=msg.node)
    deps.nodes_stored.pop(msg.node, None)  # its next heartbeat marks it up again
    deps.nodes_lost[msg.node] = deps.nodes_lost.get(msg.node, 0) + 1
    deps.request_pass()


async def on_started(msg: m.InstanceStarted, deps: Deps) -> None:
    """A container runs: the instance runs; maybe the execution, maybe the next group."""
    await on_started_many([msg], deps)


async def on_started_many(msgs: list[m.InstanceStarted], deps: Deps) -> None:
    """``on_started`` for facts that arrived together: one transaction, set-based.

    A fact counts only for the instance's current container, while it is placed or
    starting (a redelivery finds it running already), and while its execution starts or
    runs. The execution runs once every essential instance does.
    """
    execution_ids = sorted({x.execution_id for x in msgs})
    async with deps.pool.acquire() as conn, conn.transaction():
        states = await _lock_executions(conn, execution_ids)
        rows = await conn.fetch(
            "UPDATE instances i SET state = 'running', container_id = f.container_id,"
            " endpoints = f.endpoints, updated_at = now()"
            " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[])"
            "  AS f(id, container_name, container_id, endpoints)"
            " WHERE i.id = f.id AND i.container_name = f.container_name"
            " AND i.state IN ('placed', 'starting') RETURNING i.execution_id",
            [x.instance_id for x in msgs],
            [x.container_name for x in msgs],
            [x.container_id for x in msgs],
            [x.endpoints for x in msgs],
        )
        changed = sorted(
            {r["execution_id"] for r in rows} & {e for e, s in states.items() if s in LIVE}
        )
        if not changed:
            return
        all_essential_run = await conn.fetch(
            "SELECT e.id FROM executions e WHERE e.id = ANY($1::bigint[])"
            " AND e.state = 'starting' AND NOT EXISTS (SELECT 1 FROM instances i"
            "  WHERE i.execution_id = e.id AND i.essential AND i.state <> 'running')",
            changed,
        )
        await store.set_executions_state(
            conn, [r["id"] for r in all_essential_run], "running", ["starting"]
        )
        await store.dispatch_ready(conn, deps.deployment, changed)


LIVE = ("starting", "running")  # execution states whose instances' starts count


async def on_instance_ended(msg: m.InstanceEnded, deps: Deps) -> None:
    """Act on the monitor's verdict: finish a cleanup, end the execution on an essential
    death, or place a dead or reclaimed instance again."""
    async with deps.pool.acquire() as conn, conn.transaction():
        state = await _lock_execution(conn, msg.execution_id)
        inst = await conn.fetchrow(
            "SELECT i.name, i.essential, i.monitor, i.restart_count, i.node, i.removed, i.state,"
            " e.will_end FROM instances i JOIN executions e ON e.id = i.execution_id"
            " WHERE i.id = $1",
            msg.instance_id,
        )
        if inst is None or state is None:
            return
        if state not in store.ACTIVE:
            # ending already (the monitor's ExecutionEnded came first): keep the reason
            if inst["essential"] and msg.reason not in ("stopped", "exited", "removed"):
                await store.note_error(conn, msg.execution_id, _ended(inst["name"], msg))
            await store.maybe_finish(conn, msg.execution_id)
            return
        # The verdict is current only while the monitor's mark is there: once acted on,
        # the instance was placed again or its execution ends (a redelivery does nothing).
        if inst["state"] not in ("died", "stopped") or msg.reason == "removed":
            return
        if inst["essential"]:
            await _essential_ended(conn, deps, msg, inst)
        else:
            await _elastic_ended(conn, deps, msg, inst)
    deps.request_pass()


DEATHS = ("crashed", "oom", "node-lost")  # ends an essential restart may follow


def _ended(name: str, msg: m.InstanceEnded) -> str:
    code = f" (exit code {msg.exit_code})" if msg.exit_code is not None else ""
    code += f": {msg.detail}" if msg.detail else ""
    return f"essential instance {name} ended: {msg.reason}{code}"


async def _essential_ended(
    conn: asyncpg.Connection, deps: Deps, msg: m.InstanceEnded, inst: Any
) -> None:
    """An essential instance ended by itself.

    Ephemeral executions: a clean exit finished its part; the monitor service's end is
    the monitor's ExecutionEnded verdict (any other death fails the execution, with the
    reason). Long-running ones: a death within the ``essential_restarts`` budget places
    the instance again (its gang is itself alone); the monitor service exiting cleanly
    finishes the execution; anything else fails it.
    """
    will_end = inst["will_end"]
    if msg.reason == "exited" and (will_end or inst["monitor"]):
        if not will_end:
            await store.begin_cleanup(
                conn, deps.deployment, msg.execution_id, "finished", exit_code=msg.exit_code
            )
        return
    if not will_end and msg.reason in DEATHS and inst["restart_count"] < deps.essential_restarts:
        await _restart(conn, deps, msg, inst)
        return
    await store.begin_cleanup(
        conn,
        deps.deployment,
        msg.execution_id,
        "failed",
        exit_code=msg.exit_code,
        error=_ended(inst["name"], msg),
    )


async def _elastic_ended(
    conn: asyncpg.Connection, deps: Deps, msg: m.InstanceEnded, inst: Any
) -> None:
    if msg.reason == "stopped":
        # reclaimed: back to pending, to be given back when capacity frees up
        await store.requeue(conn, msg.instance_id, from_state="stopped")
        return
    if msg.reason == "exited":
        # it finished its part by itself: nothing to replace, only its container to remove
        if not inst["removed"] and inst["node"]:
            await store.enqueue_stop(conn, deps.deployment, msg.execution_id, msg.instance_id)
        return
    await _restart(conn, deps, msg, inst)


async def _restart(conn: asyncpg.Connection, deps: Deps, msg: m.InstanceEnded, inst: Any) -> None:
    """Remove the dead container, and queue the instance again after its backoff."""
    if not inst["removed"] and inst["node"]:
        await store.enqueue_stop(conn, deps.deployment, msg.execution_id, msg.instance_id)
    restarts = inst["restart_count"] + 1
    backoff = store.restart_backoff(restarts, deps.restart_backoff, deps.restart_backoff_max)
    moved = await store.requeue(
        conn, msg.instance_id, from_state="died", restart=True, backoff=backoff
    )
    if moved is not None:
        log.info(
            "instance.restarting",
            instance=inst["name"],
            essential=inst["essential"],
            restarts=restarts,
            backoff=backoff,
            reason=msg.reason,
        )


async def on_execution_ended(msg: m.ExecutionEnded, deps: Deps) -> None:
    """The monitor service ended: clean the execution up and end it with that outcome."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await _lock_execution(conn, msg.execution_id)
        await store.begin_cleanup(
            conn, deps.deployment, msg.execution_id, msg.outcome, exit_code=msg.exit_code
        )
    deps.request_pass()


async def _lock_executions(conn: asyncpg.Connection, execution_ids: list[int]) -> dict[int, str]:
    """``_lock_execution`` for several, in id order (so that two never deadlock).

    NO KEY UPDATE, here as wherever the scheduler locks rows: no key changes, and it
    does not block the key-share locks of inserts that refer to the row (the monitor's
    usage samples, an instance's saved log)."""
    rows = await conn.fetch(
        "SELECT id, state FROM executions WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE",
        execution_ids,
    )
    return {r["id"]: r["state"] for r in rows}


async def _lock_execution(conn: asyncpg.Connection, execution_id: int) -> str | None:
    """Serialise handlers of one execution; returns its state (None if unknown)."""
    return (await _lock_executions(conn, [execution_id])).get(execution_id)


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.ExecutionSubmitted: on_submitted,
    m.ExecutionTerminateRequested: on_terminate,
    m.NodeHeartbeat: on_heartbeat,
    m.NodeLost: on_node_lost,
    m.InstanceStarted: on_started,
    m.InstanceEnded: on_instance_ended,
    m.ExecutionEnded: on_execution_ended,
}

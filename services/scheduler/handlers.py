"""What the scheduler does with each message it consumes: plain async functions.

Each handler commits its change (with any messages it implies, through the outbox)
before it returns, so the bus acks only what is stored. Handlers that may free or need
capacity ask for a scheduling pass; passes run one at a time in the service loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


async def on_submitted(msg: m.ExecutionSubmitted, deps: Deps) -> None:
    """A stored execution enters the queue."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await store.set_execution_state(conn, msg.execution_id, "queued", ["submitted"])
    deps.request_pass()


async def on_terminate(msg: m.ExecutionTerminateRequested, deps: Deps) -> None:
    """A user ends an execution: stop everything it runs, then it ends terminated."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await _lock_execution(conn, msg.execution_id)
        await store.begin_cleanup(conn, deps.deployment, msg.execution_id, "terminated")
    deps.request_pass()


async def on_heartbeat(msg: m.NodeHeartbeat, deps: Deps) -> None:
    """Keep the node's capacity and liveness; a new or returning node triggers a pass."""
    async with deps.pool.acquire() as conn:
        changed = await conn.fetchval(
            "INSERT INTO nodes AS n (name, cores, memory, labels, images, last_heartbeat)"
            " VALUES ($1, $2, $3, $4, $5, now())"
            " ON CONFLICT (name) DO UPDATE SET cores = $2, memory = $3, labels = $4,"
            "  images = $5, last_heartbeat = now(), state = 'up'"
            " RETURNING (xmax = 0) OR $6",  # xmax = 0: the row was inserted
            msg.node,
            msg.cores,
            msg.memory,
            msg.labels,
            msg.images,
            msg.registered,
        )
    if changed:
        log.info("node.registered", cores=msg.cores, memory=msg.memory, labels=msg.labels)
        deps.request_pass()


async def on_node_lost(msg: m.NodeLost, deps: Deps) -> None:
    """A lost node gets no new work until it sends heartbeats again."""
    async with deps.pool.acquire() as conn:
        await conn.execute("UPDATE nodes SET state = 'lost' WHERE name = $1", msg.node)
    deps.request_pass()


async def on_started(msg: m.InstanceStarted, deps: Deps) -> None:
    """A container runs: the instance runs; maybe the execution, maybe the next group."""
    async with deps.pool.acquire() as conn, conn.transaction():
        execution_state = await _lock_execution(conn, msg.execution_id)
        updated = await conn.fetchval(
            "UPDATE instances SET state = 'running', container_id = $3, endpoints = $4,"
            " updated_at = now() WHERE id = $1 AND container_name = $2"
            " AND state IN ('placed', 'starting') RETURNING id",
            msg.instance_id,
            msg.container_name,
            msg.container_id,
            msg.endpoints,
        )
        if updated is None or execution_state not in ("starting", "running"):
            return
        all_essential_run = await conn.fetchval(
            "SELECT bool_and(state = 'running') FROM instances"
            " WHERE execution_id = $1 AND essential",
            msg.execution_id,
        )
        if all_essential_run:
            await store.set_execution_state(conn, msg.execution_id, "running", ["starting"])
        await store.dispatch_ready(conn, deps.deployment, msg.execution_id)


async def on_instance_ended(msg: m.InstanceEnded, deps: Deps) -> None:
    """Act on the monitor's verdict: finish a cleanup, fail on an essential death, or
    place a dead or reclaimed elastic instance again."""
    async with deps.pool.acquire() as conn, conn.transaction():
        state = await _lock_execution(conn, msg.execution_id)
        inst = await conn.fetchrow(
            "SELECT name, essential, monitor, restart_count, node, container_name, removed, state"
            " FROM instances WHERE id = $1",
            msg.instance_id,
        )
        if inst is None or state is None:
            return
        if state == "cleaning_up":
            await store.maybe_finish(conn, msg.execution_id)
            return
        if state not in store.ACTIVE or msg.reason == "removed":
            return
        will_end = await conn.fetchval(
            "SELECT will_end FROM executions WHERE id = $1", msg.execution_id
        )
        if inst["essential"]:
            await _essential_ended(conn, deps, msg, inst, will_end)
        else:
            await _elastic_ended(conn, deps, msg, inst)
    deps.request_pass()


async def _essential_ended(
    conn: asyncpg.Connection, deps: Deps, msg: m.InstanceEnded, inst: Any, will_end: bool
) -> None:
    if inst["monitor"] and msg.reason in ("exited", "crashed"):
        return  # the monitor's ExecutionEnded verdict decides this execution's end
    if will_end and msg.reason == "exited":
        return  # a batch instance that finished its part
    code = f" (exit code {msg.exit_code})" if msg.exit_code is not None else ""
    code += f": {msg.detail}" if msg.detail else ""
    await store.begin_cleanup(
        conn,
        deps.deployment,
        msg.execution_id,
        "failed",
        exit_code=msg.exit_code,
        error=f"essential instance {inst['name']} ended: {msg.reason}{code}",
    )


async def _elastic_ended(
    conn: asyncpg.Connection, deps: Deps, msg: m.InstanceEnded, inst: Any
) -> None:
    if msg.reason == "stopped":
        # reclaimed: back to pending, to be given back when capacity frees up
        await conn.execute(
            "UPDATE instances SET state = 'created', node = NULL, updated_at = now()"
            " WHERE id = $1 AND state = 'stopped'",
            msg.instance_id,
        )
        return
    if not inst["removed"] and inst["node"]:
        # remove the dead container; its replacement gets a new name
        await store.enqueue_stop(conn, deps.deployment, msg.execution_id, msg.instance_id)
    if msg.reason == "exited":
        return  # it finished its part by itself: nothing to replace
    restarts = inst["restart_count"] + 1
    backoff = min(deps.restart_backoff * 2 ** (restarts - 1), deps.restart_backoff_max)
    await conn.execute(
        "UPDATE instances SET state = 'created', node = NULL, restart_count = $2,"
        " not_before = now() + make_interval(secs => $3), updated_at = now()"
        " WHERE id = $1 AND state = 'died'",
        msg.instance_id,
        restarts,
        backoff if restarts > 1 else 0.0,
    )
    log.info("instance.replaced", instance=inst["name"], restarts=restarts, reason=msg.reason)


async def on_execution_ended(msg: m.ExecutionEnded, deps: Deps) -> None:
    """The monitor service ended: clean the execution up and end it with that outcome."""
    async with deps.pool.acquire() as conn, conn.transaction():
        await _lock_execution(conn, msg.execution_id)
        await store.begin_cleanup(
            conn, deps.deployment, msg.execution_id, msg.outcome, exit_code=msg.exit_code
        )
    deps.request_pass()


async def _lock_execution(conn: asyncpg.Connection, execution_id: int) -> str | None:
    """Serialise handlers of one execution; returns its state (None if unknown)."""
    state: str | None = await conn.fetchval(
        "SELECT state FROM executions WHERE id = $1 FOR UPDATE", execution_id
    )
    return state


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.ExecutionSubmitted: on_submitted,
    m.ExecutionTerminateRequested: on_terminate,
    m.NodeHeartbeat: on_heartbeat,
    m.NodeLost: on_node_lost,
    m.InstanceStarted: on_started,
    m.InstanceEnded: on_instance_ended,
    m.ExecutionEnded: on_execution_ended,
}

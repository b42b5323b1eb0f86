"""What the scheduler does with each message it consumes: plain async functions.

Each handler commits its change (with any messages it implies, through the outbox)
before it returns, so the bus acks only what is stored. Handlers that may free or need
capacity ask for a scheduling pass; passes run one at a time in the service loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import structlog

from common import messages as m
from common import states as st
from common.db import storable_text
from services.scheduler import ends, store
from services.scheduler.view import Changes

log = structlog.get_logger("scheduler")
_json = msgspec.json.Encoder()


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
    # One handler at a time per node: a heartbeat and the node's loss never interleave,
    # so what ``nodes_stored`` remembers is what the row says.
    node_locks: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    # What the handlers changed, said after each commit: the pass's view learns of it
    # (services/scheduler/view.py). A handler of a new message that moves execution,
    # instance or node rows must say so here.
    view: Changes = field(default_factory=Changes)

    @property
    def rules(self) -> ends.Rules:
        return ends.Rules(
            self.deployment, self.restart_backoff, self.restart_backoff_max, self.essential_restarts
        )


_TO_RUNNING = st.sql_list(st.moving_to(st.INSTANCE_TRANSITIONS, st.InstanceState.RUNNING))

# An unchanged heartbeat is stored at most this often: liveness is the monitor's, so
# the row only needs the node's capacity, and a recent enough ``last_heartbeat`` (at
# 10,000 nodes, 33 statements a second; a node's full heartbeats come every
# ``inventory_interval``, 60 s, when nothing changes).
NODE_REFRESH = 300.0


async def on_submitted(msg: m.ExecutionSubmitted | m.ExecutionsSubmitted, deps: Deps) -> None:
    """A new execution: the next pass takes it into the queue (all new ones at once)."""
    ids = msg.execution_ids if isinstance(msg, m.ExecutionsSubmitted) else [msg.execution_id]
    deps.view.executions_changed(ids)
    deps.request_pass()


async def on_terminate(msg: m.ExecutionTerminateRequested, deps: Deps) -> None:
    """A user ends an execution: stop everything it runs, then it ends terminated."""
    with deps.view.unsure():
        async with deps.pool.acquire() as conn, conn.transaction():
            await _lock_execution(conn, msg.execution_id)
            await store.begin_cleanup(conn, deps.deployment, msg.execution_id, "terminated")
    deps.view.executions_changed([msg.execution_id])
    deps.request_pass()


async def on_heartbeat(msg: m.NodeHeartbeat, deps: Deps) -> None:
    """Keep the node's capacity and liveness; a new or returning node triggers a pass.

    A node that is back after it was declared lost gets asked to remove the containers
    given up when it was lost (its orphans): their instances were placed again
    elsewhere, or their executions ended. Heartbeats are the most frequent message there
    is: one that says what the stored row says already costs nothing but every
    ``NODE_REFRESH`` seconds, and one statement otherwise (`on_heartbeats`).
    """
    await on_heartbeats([msg], deps)


async def on_heartbeats_together(msg: m.NodeHeartbeats, deps: Deps) -> None:
    """The full heartbeats of several nodes of one process (hollow nodes): stored
    together, as heartbeats that arrive together are (`on_heartbeats`)."""
    await on_heartbeats(msg.beats, deps)


def _due(msg: m.NodeHeartbeat, deps: Deps, now: float) -> bool:
    """Whether a heartbeat must be written: a registration, a change, or a refresh."""
    said = (msg.cores, msg.memory, tuple(msg.labels), tuple(msg.images))
    stored = deps.nodes_stored.get(msg.node)
    return msg.registered or stored is None or stored[0] != said or now - stored[1] >= NODE_REFRESH


async def on_heartbeats(msgs: list[m.NodeHeartbeat], deps: Deps) -> None:
    """``on_heartbeat`` for the heartbeats that arrived together: the rows due a write
    are written by one statement, under their nodes' locks taken in name order (ten
    thousand nodes registering make hundreds of heartbeats a second to store)."""
    latest: dict[str, m.NodeHeartbeat] = {}
    for msg in msgs:
        if msg.node in latest and latest[msg.node].registered and not msg.registered:
            msg = msgspec.structs.replace(msg, registered=True)  # the later one says it all
        latest[msg.node] = msg
    now = time.monotonic()
    due = sorted((x for x in latest.values() if _due(x, deps, now)), key=lambda x: x.node)
    if not due:
        return
    async with contextlib.AsyncExitStack() as held:
        for msg in due:
            await held.enter_async_context(deps.node_locks[msg.node])
        async with deps.pool.acquire() as conn:
            rows = await conn.fetch(
                "WITH f AS (SELECT * FROM unnest($1::text[], $2::float8[], $3::bigint[],"
                "  $4::text[], $5::text[]) AS f(name, cores, memory, labels, images)),"
                " old AS (SELECT n.name, n.state FROM nodes n JOIN f USING (name)),"
                " beat AS (INSERT INTO nodes AS n (name, cores, memory, labels, images,"
                "  last_heartbeat) SELECT name, cores, memory,"
                "  ARRAY(SELECT jsonb_array_elements_text(labels::jsonb)),"
                "  ARRAY(SELECT jsonb_array_elements_text(images::jsonb)), now()"
                "  FROM f ORDER BY name"
                "  ON CONFLICT (name) DO UPDATE SET cores = excluded.cores,"
                "  memory = excluded.memory, labels = excluded.labels,"
                "  images = excluded.images, last_heartbeat = now(), state = 'up')"
                " SELECT f.name, old.state AS before,"
                "  EXISTS (SELECT 1 FROM orphans o WHERE o.node = f.name) AS orphans"
                " FROM f LEFT JOIN old USING (name)",
                [x.node for x in due],
                [x.cores for x in due],
                [x.memory for x in due],
                [_json.encode(x.labels).decode() for x in due],
                [_json.encode(x.images).decode() for x in due],
            )
            before: dict[str, str | None] = {r["name"]: r["before"] for r in rows}
            orphans: dict[str, int] = {}
            for r in rows:
                if r["orphans"]:
                    async with conn.transaction():
                        orphans[r["name"]] = await store.stop_orphans(
                            conn, deps.deployment, r["name"]
                        )
        for msg in due:
            said = (msg.cores, msg.memory, tuple(msg.labels), tuple(msg.images))
            deps.nodes_stored[msg.node] = (said, now)
            deps.view.node_changed(
                msg.node,
                cores=msg.cores,
                memory=msg.memory,
                labels=msg.labels,
                images=msg.images,
                up=True,
            )
    new = False
    for msg in due:
        was = before.get(msg.node)
        if was == "lost":
            log.info("node.returned", node=msg.node, orphans=orphans.get(msg.node, 0))
        elif was is None or msg.registered:
            log.info(
                "node.registered",
                node=msg.node,
                cores=msg.cores,
                memory=msg.memory,
                labels=msg.labels,
            )
        new = new or was != "up" or msg.registered
    if new:
        deps.request_pass()


async def on_node_lost(msg: m.NodeLost, deps: Deps) -> None:
    """The monitor declared a node lost: mark it, end every instance it held (and act on
    each end), keep its containers as orphans; the pass no longer counts on it."""
    touched: set[int] = set()
    async with deps.node_locks[msg.node]:
        with deps.view.unsure():
            async with deps.pool.acquire() as conn, conn.transaction():
                held = await ends.lose_node(conn, deps.rules, msg.node, touched)
        deps.nodes_stored.pop(msg.node, None)  # its next heartbeat marks it up again
        if held is not None:
            deps.view.node_changed(msg.node, up=False)
            deps.view.executions_changed(touched)
    if held is not None:
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
            f" AND i.state IN {_TO_RUNNING} RETURNING i.execution_id",
            [x.instance_id for x in msgs],
            [x.container_name for x in msgs],
            [x.container_id for x in msgs],
            [x.endpoints for x in msgs],
        )
        underway = {e for e, state in states.items() if state in st.EXECUTION_UNDERWAY}
        changed = sorted({r["execution_id"] for r in rows} & underway)
        if not changed:
            return
        # which now run (every essential instance does), and which have placed instances
        # that may start now (their next startup group): most have none
        found = await conn.fetch(
            "SELECT e.id, e.state = 'starting' AND NOT EXISTS (SELECT 1 FROM instances i"
            "  WHERE i.execution_id = e.id AND i.essential AND i.state <> 'running') AS runs,"
            " EXISTS (SELECT 1 FROM instances i WHERE i.execution_id = e.id"
            "  AND i.state = 'placed') AS placed"
            " FROM executions e WHERE e.id = ANY($1::bigint[]) ORDER BY e.id",
            changed,
        )
        await store.set_executions_state(
            conn, [r["id"] for r in found if r["runs"]], "running", ["starting"]
        )
        await store.dispatch_ready(conn, deps.deployment, [r["id"] for r in found if r["placed"]])


async def on_started_together(msg: m.InstancesStarted, deps: Deps) -> None:
    """The facts of one StartInstances command, sent together: ``on_started_many``."""
    await on_started_many(msg.started, deps)


async def on_instance_ended(msg: m.InstanceEnded, deps: Deps) -> None:
    """Act on the monitor's verdict about one container (services/scheduler/ends.py)."""
    end = st.End(
        reason=msg.reason,
        exit_code=msg.exit_code,
        container_name=msg.container_name,
        container_id=msg.container_id,
        gone=msg.gone,
        detail=storable_text(msg.detail),  # the engine's words: stored with the error
    )
    touched: set[int] = set()
    with deps.view.unsure():
        async with deps.pool.acquire() as conn, conn.transaction():
            changed = await ends.apply_ends(conn, deps.rules, [(msg.instance_id, end)], touched)
    deps.view.executions_changed(touched)
    if changed:
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


def _on_drain(msg: m.NodeDrainRequested, deps: Deps) -> Awaitable[None]:
    from services.scheduler.drain import on_drain  # it builds on this module

    return on_drain(msg, deps)


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.NodeDrainRequested: _on_drain,
    m.ExecutionSubmitted: on_submitted,
    m.ExecutionsSubmitted: on_submitted,
    m.ExecutionTerminateRequested: on_terminate,
    m.NodeHeartbeat: on_heartbeat,
    m.NodeHeartbeats: on_heartbeats_together,
    m.NodeLost: on_node_lost,
    m.InstanceStarted: on_started,
    m.InstancesStarted: on_started_together,
    m.InstanceEnded: on_instance_ended,
}

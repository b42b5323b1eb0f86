"""The monitor's handlers: say what happened to a container as a verdict, and watch nodes.

The monitor writes no row of the scheduler's (executions, instances, nodes): it turns
each fact into one self-contained verdict (services/monitor/verdicts.py) and says it
(``Deps.say``: the service publishes it on the bus with a confirm before the fact is
acked; no outbox row, since no row of the monitor's changes with it), and the scheduler
alone decides what it means, with guarded writes, so a redelivered fact (and so a
verdict said twice) changes nothing twice. What the monitor keeps is its own:
the logs of removed containers, the containers' usage samples, and when it last heard
each node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from common import messages as m
from common import metrics
from common.bus import Outgoing
from common.db import storable_text
from common.outbox import enqueue
from services.monitor import verdicts

log = structlog.get_logger("monitor")


@dataclass
class Deps:
    """What handlers need: the pool and the heartbeat table of the node watcher."""

    pool: asyncpg.Pool
    last_seen: dict[str, float]
    clock: Callable[[], float]
    # Where verdicts go: the bus (its confirmed publish). A verdict changes no row, so it
    # needs no outbox: said before its fact is acked, it is said again on a redelivery.
    say: Callable[[Sequence[Outgoing]], Awaitable[None]]
    # instance id -> its latest usage sample (cpu percent, memory bytes, sampled at),
    # kept until ``store_usage`` writes it
    usage: dict[int, tuple[float, int, float]] = field(default_factory=dict)
    # Seconds of silence allowed beyond the node timeout after a node said it stops (a
    # restart of its executor: its containers keep running).
    restart_grace: float = 0.0


async def on_exited(msg: m.InstanceExited, deps: Deps) -> None:
    """A container stopped running: say how."""
    await deps.say([Outgoing(verdicts.exited(msg))])


async def on_removed(msg: m.InstanceRemoved, deps: Deps) -> None:
    """A container is gone: keep its log (stored before the verdict: the scheduler may
    end the execution on it, and its logs are read from then on), and say so."""
    if msg.log:
        await deps.pool.execute(
            "INSERT INTO instance_logs (instance_id, log) SELECT id, $2 FROM instances"
            " WHERE id = $1 ON CONFLICT (instance_id) DO UPDATE SET log = $2, saved_at = now()",
            msg.instance_id,
            storable_text(msg.log),  # a container may print anything, NUL included
        )
    await deps.say([Outgoing(verdicts.removed(msg))])


async def on_start_failed(msg: m.InstanceStartFailed, deps: Deps) -> None:
    """A container could not start: say so, with the engine's reason."""
    log.warning("instance.start_failed", reason=msg.reason)
    await deps.say([Outgoing(verdicts.start_failed(msg))])


async def on_heartbeat(msg: m.NodeHeartbeat, deps: Deps) -> None:
    """Note that the node is alive, and the usage of its containers. A node that says it
    stops (its executor restarts) is counted as seen ``restart_grace`` seconds later."""
    deps.last_seen[msg.node] = deps.clock() + (deps.restart_grace if msg.stopping else 0.0)
    for u in msg.usage:
        deps.usage[u.instance_id] = (u.cpu_percent, u.memory_bytes, msg.sent_at)


async def on_alive(msg: m.NodeAlive, deps: Deps) -> None:
    """Note that the node is alive (a beat between two full heartbeats)."""
    seen = deps.clock()
    if deps.last_seen.get(msg.node, seen) <= seen:  # a restart's grace is kept
        deps.last_seen[msg.node] = seen


async def on_alive_many(msgs: list[m.NodeAlive], deps: Deps) -> None:
    """``on_alive`` for the beats that arrived together (acked together: a monitor of
    thousands of nodes receives hundreds a second)."""
    for msg in msgs:
        await on_alive(msg, deps)


async def on_heartbeats(msg: m.NodeHeartbeats, deps: Deps) -> None:
    """The full heartbeats of several nodes of one process: each as `on_heartbeat`."""
    for beat in msg.beats:
        await on_heartbeat(beat, deps)


async def on_nodes_alive(msg: m.NodesAlive, deps: Deps) -> None:
    """The liveness beats of several nodes of one process: each as `on_alive`."""
    seen = deps.clock()
    last_seen = deps.last_seen
    for node in msg.nodes:
        if last_seen.get(node, seen) <= seen:  # a restart's grace is kept
            last_seen[node] = seen


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


async def declare_lost(pool: asyncpg.Pool, node: str) -> None:
    """A node went silent: say it is lost (the scheduler ends what it held)."""
    async with pool.acquire() as conn:
        await enqueue(conn, [Outgoing(m.NodeLost(node=node))])
    metrics.NODES_LOST.inc()
    log.warning("node.lost", node=node)


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
    for node, seen in deps.last_seen.items():
        deps.last_seen[node] = max(now, seen)  # a restart's grace is kept


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[None]]] = {
    m.InstanceExited: on_exited,
    m.InstanceRemoved: on_removed,
    m.InstanceStartFailed: on_start_failed,
    m.NodeHeartbeat: on_heartbeat,
    m.NodeAlive: on_alive,
    m.NodeHeartbeats: on_heartbeats,
    m.NodesAlive: on_nodes_alive,
}

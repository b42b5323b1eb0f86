"""What-if replay: the deployment's own finished executions as a simulator workload.

`zoe simulate --history [--since DATE]` reads from PostgreSQL every execution that ran
and ended (submission time, its instances' reservations, labels and whether each is
essential, its user, size hint and priority, and its measured run time: end minus the
start of its essential set) and the cluster's nodes as they are registered now, then
replays them under each policy: "what turnaround would our users have seen under X".

The measured run time is taken as the nominal one (all instances up); an elastic
execution that ran with fewer instances than it asked for had a longer run than that
nominal one, so the replay is pessimistic for it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg

from .model import InstanceReq, NodeState
from .workload import App, Workload

_EXECUTIONS = (
    "SELECT id, user_name, size, priority, extract(epoch FROM submitted_at) AS submitted,"
    " extract(epoch FROM finished_at - started_at) AS runtime FROM executions"
    " WHERE state IN ('finished', 'failed', 'terminated') AND started_at IS NOT NULL"
    " AND finished_at > started_at AND ($1::timestamptz IS NULL OR submitted_at >= $1)"
    " ORDER BY submitted_at, id"
)
# One row per instance the execution asked for (its later generations share service, idx).
_INSTANCES = (
    "SELECT DISTINCT ON (execution_id, service, idx) execution_id, cores, memory, labels,"
    " essential FROM instances WHERE execution_id = ANY($1::bigint[])"
    " ORDER BY execution_id, service, idx, id"
)
_NODES = "SELECT name, cores, memory, labels FROM nodes WHERE state = 'up' ORDER BY name"


def parse_since(text: str) -> dt.datetime:
    """``--since``: an ISO date or date and time (UTC unless it says otherwise)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--since: {text!r} is not an ISO date (e.g. 2026-11-30)") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def load_history(conn: asyncpg.Connection, since: dt.datetime | None) -> Workload:
    """The finished executions submitted since `since` (all when None), on the nodes up."""
    nodes = await conn.fetch(_NODES)
    executions = await conn.fetch(_EXECUTIONS, since)
    instances = await conn.fetch(_INSTANCES, [e["id"] for e in executions])
    return history_workload(nodes, executions, instances)


def history_workload(
    nodes: Sequence[Any], executions: Sequence[Any], instances: Sequence[Any]
) -> Workload:
    """A workload of rows read by `load_history` (arrivals from the first submission)."""
    by_execution: dict[int, list[Any]] = defaultdict(list)
    for r in instances:
        by_execution[r["execution_id"]].append(r)
    first = float(executions[0]["submitted"]) if executions else 0.0
    apps: list[App] = []
    next_id = 1
    for e in executions:
        rows = by_execution.get(e["id"], [])
        if not rows:
            continue
        reqs = tuple(
            InstanceReq(
                id=next_id + n,
                execution_id=e["id"],
                cores=float(r["cores"]),
                memory=int(r["memory"]),
                labels=frozenset(r["labels"]),
                essential=bool(r["essential"]),
            )
            for n, r in enumerate(rows)
        )
        next_id += len(reqs)
        apps.append(
            App(
                id=e["id"],
                arrival=float(e["submitted"]) - first,
                runtime=float(e["runtime"]),
                size=float(e["size"]),
                elastic=any(not i.essential for i in reqs),
                instances=reqs,
                priority=int(e["priority"]),
                user=str(e["user_name"]),
            )
        )
    cluster = tuple(
        NodeState(
            name=n["name"],
            cores=float(n["cores"]),
            memory=int(n["memory"]),
            labels=frozenset(n["labels"]),
        )
        for n in nodes
    )
    return Workload(name="history", nodes=cluster, apps=tuple(apps), load=0.0)


async def read_history(url: str, since: dt.datetime | None) -> Workload:
    """`load_history` over a connection of its own to the database at `url`."""
    conn = await asyncpg.connect(url)
    try:
        return await load_history(conn, since)
    finally:
        await conn.close()

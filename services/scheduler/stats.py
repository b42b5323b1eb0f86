"""The cluster's figures, read from the database every few seconds (not per request).

Executions and nodes by state, the queue's length and oldest wait, and the outbox's
backlog: a handful of aggregate statements on one connection, set as gauges
(common/metrics.py) that each scrape reads as they are.
"""

from __future__ import annotations

import asyncpg

from common import metrics, outbox
from common import states as st

# Waiting: not yet placed (the queue the scheduler works through).
_WAITING = [str(st.ExecutionState.SUBMITTED), str(st.ExecutionState.QUEUED)]
_NODE_STATES = ("up", "lost")


async def collect(pool: asyncpg.Pool) -> None:
    """Read the figures and set the gauges."""
    async with pool.acquire() as conn:
        executions = await conn.fetch(
            "SELECT state, count(*) AS n,"
            " extract(epoch FROM now() - min(submitted_at)) AS oldest"
            " FROM executions GROUP BY state"
        )
        nodes = await conn.fetch("SELECT state, count(*) AS n FROM nodes GROUP BY state")
        backlog, oldest_row, parked = await outbox.backlog(conn)
    counts = {r["state"]: int(r["n"]) for r in executions}
    for state in st.ExecutionState:
        metrics.EXECUTIONS.labels(str(state)).set(counts.get(str(state), 0))
    waiting = [r for r in executions if r["state"] in _WAITING]
    metrics.QUEUE_LENGTH.set(sum(int(r["n"]) for r in waiting))
    metrics.QUEUE_OLDEST_WAIT.set(max((float(r["oldest"]) for r in waiting), default=0.0))
    by_state = {r["state"]: int(r["n"]) for r in nodes}
    for state in {*_NODE_STATES, *by_state}:
        metrics.NODES.labels(state).set(by_state.get(state, 0))
    metrics.OUTBOX_BACKLOG.set(backlog)
    metrics.OUTBOX_OLDEST.set(oldest_row)
    metrics.OUTBOX_PARKED_ROWS.set(parked)

"""The sweeper against the real PostgreSQL: work stuck past a deadline converges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common import messages as m
from common.zapp import load_description
from services.api import store as api_store
from services.scheduler import handlers, sweeper
from tests.conftest import TestEnv, own_database
from tests.e2e.conftest import service, zapp

MiB = 1024 * 1024


def _app() -> dict[str, Any]:
    worker = service("wrk", "sleep 1000", total=2, cores=0.1, memory=16 * MiB)
    return zapp("sweep", worker, will_end=False)


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    async with own_database(test_env, "sweep") as p:
        yield p


async def _execution(pool: asyncpg.Pool, state: str, instances: str) -> dict[str, int]:
    """An execution in ``state`` whose instances are all in ``instances`` on node n1,
    their last change ten minutes ago (as if a command had been lost)."""
    description = load_description(_app()).description
    created, _ = await api_store.create_execution(
        pool, name="t", user_name="u", description=description, deployment="zs"
    )
    eid = created["id"]
    await pool.execute(
        "INSERT INTO nodes (name, cores, memory) VALUES ('n1', 4, $1) ON CONFLICT DO NOTHING",
        1 << 30,
    )
    await pool.execute(
        "UPDATE executions SET state = $2, updated_at = now() - interval '10 minutes'"
        " WHERE id = $1",
        eid,
        state,
    )
    await pool.execute(
        "UPDATE instances SET state = $2, node = 'n1', removed = false,"
        " container_name = 'zs-' || execution_id || '-' || name,"
        " updated_at = now() - interval '10 minutes' WHERE execution_id = $1",
        eid,
        instances,
    )
    await pool.execute("DELETE FROM outbox")
    rows = await pool.fetch("SELECT id, name FROM instances WHERE execution_id = $1", eid)
    return {"eid": eid, **{r["name"]: r["id"] for r in rows}}


async def _sent(pool: asyncpg.Pool) -> list[m.Message]:
    dec = m.decoder(m.StartInstance | m.StopInstance | m.ExecutionStatesChanged)
    rows = await pool.fetch("DELETE FROM outbox RETURNING id, body")
    return [dec.decode(r["body"]) for r in sorted(rows, key=lambda r: r["id"])]


async def test_a_lost_start_is_sent_again_once_per_deadline(pool: asyncpg.Pool) -> None:
    ids = await _execution(pool, "starting", "starting")
    rules = sweeper.SweepRules("zs", resend_after=300, give_up_after=3600)
    assert await sweeper.sweep(pool, rules) == {
        "starts": 2,
        "stops": 0,
        "given_up": 0,
        "overtime": 0,
    }
    starts = [x for x in await _sent(pool) if isinstance(x, m.StartInstance)]
    assert sorted(s.container_name for s in starts) == [
        f"zs-{ids['eid']}-wrk0",
        f"zs-{ids['eid']}-wrk1",
    ]
    assert all(s.image == "zoe/busybox:1" for s in starts)
    # sent again: the deadline starts over
    assert await sweeper.sweep(pool, rules) == {
        "starts": 0,
        "stops": 0,
        "given_up": 0,
        "overtime": 0,
    }
    # the started fact that comes of it is taken as any other
    deps = handlers.Deps(pool=pool, deployment="zs", request_pass=lambda: None)
    for s in starts:
        await handlers.on_started(
            m.InstanceStarted(
                node="n1",
                execution_id=s.execution_id,
                instance_id=s.instance_id,
                container_id="c",
                container_name=s.container_name,
            ),
            deps,
        )
    assert (
        await pool.fetchval("SELECT state FROM executions WHERE id = $1", ids["eid"]) == "running"
    )


async def test_a_cleanup_stuck_past_its_deadline_ends_and_leaves_orphans(
    pool: asyncpg.Pool,
) -> None:
    ids = await _execution(pool, "cleaning_up", "stopping")
    await pool.execute("UPDATE executions SET outcome = 'terminated' WHERE id = $1", ids["eid"])
    # first the stops are sent again
    resend = sweeper.SweepRules("zs", resend_after=300, give_up_after=3600)
    assert await sweeper.sweep(pool, resend) == {
        "starts": 0,
        "stops": 2,
        "given_up": 0,
        "overtime": 0,
    }
    stops = [x for x in await _sent(pool) if isinstance(x, m.StopInstance)]
    assert sorted(s.instance_id for s in stops) == sorted([ids["wrk0"], ids["wrk1"]])
    # past the last deadline the execution ends, its containers given up as orphans
    give_up = sweeper.SweepRules("zs", resend_after=300, give_up_after=60)
    assert (await sweeper.sweep(pool, give_up))["given_up"] == 1
    assert (
        await pool.fetchval("SELECT state FROM executions WHERE id = $1", ids["eid"])
        == "terminated"
    )
    rows = await pool.fetch(
        "SELECT state, reason, removed FROM instances WHERE execution_id = $1", ids["eid"]
    )
    assert {(r["state"], r["reason"], r["removed"]) for r in rows} == {
        ("stopped", "given-up", True)
    }
    orphans = await pool.fetch(
        "SELECT node, instance_id FROM orphans WHERE execution_id = $1", ids["eid"]
    )
    assert sorted((o["node"], o["instance_id"]) for o in orphans) == sorted(
        [("n1", ids["wrk0"]), ("n1", ids["wrk1"])]
    )
    assert await sweeper.sweep(pool, give_up) == {
        "starts": 0,
        "stops": 0,
        "given_up": 0,
        "overtime": 0,
    }

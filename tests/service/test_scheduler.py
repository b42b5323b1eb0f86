"""The scheduler's handlers and passes against the real PostgreSQL (no broker needed:
what they publish is read from the outbox they write)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common import messages as m
from common.zapp import load_description
from services.api import store as api_store
from services.scheduler import handlers, passes
from services.scheduler.core import Policy
from services.scheduler.service import acquire_leadership
from tests.conftest import PG_BASE, TestEnv, own_database

MiB = 1024 * 1024


def _app(total: int = 1, cores: float = 1.0) -> dict[str, Any]:
    return {
        "name": "svc-test",
        "version": 3,
        "will_end": False,
        "size": 1,
        "services": [
            {
                "name": "worker",
                "image": "zoe/busybox:1",
                "monitor": True,
                "essential_count": 1,
                "total_count": total,
                "startup_order": 0,
                "command": "sleep 1000",
                "environment": [],
                "ports": [],
                "volumes": [],
                "resources": {
                    "cores": {"min": cores, "max": cores},
                    "memory": {"min": 64 * MiB, "max": 64 * MiB},
                },
            }
        ],
    }


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    """A database of this module's own: no scheduler process touches its rows."""
    async with own_database(test_env, "sched") as p:
        yield p


@pytest.fixture
async def clean(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE executions, nodes, outbox CASCADE")


async def _outbox(pool: asyncpg.Pool) -> list[m.Message]:
    rows = await pool.fetch("DELETE FROM outbox RETURNING body")
    dec = m.decoder(_ANY)
    return [dec.decode(r["body"]) for r in rows]


_ANY = (
    m.ExecutionSubmitted
    | m.ExecutionTerminateRequested
    | m.StartInstance
    | m.StopInstance
    | m.ExecutionStateChanged
    | m.InstanceEnded
    | m.ExecutionEnded
)


def _deps(pool: asyncpg.Pool, env: TestEnv) -> tuple[handlers.Deps, list[int]]:
    passes_asked: list[int] = []
    deps = handlers.Deps(
        pool=pool, deployment=env.deployment, request_pass=lambda: passes_asked.append(1)
    )
    return deps, passes_asked


async def _submit(pool: asyncpg.Pool, env: TestEnv, app: dict[str, Any]) -> int:
    loaded = load_description(app)
    execution_id, _ = await api_store.create_execution(
        pool, name="t", user_name="u", description=loaded.description, deployment=env.deployment
    )
    return execution_id


async def _state(pool: asyncpg.Pool, execution_id: int) -> str:
    return str(await pool.fetchval("SELECT state FROM executions WHERE id = $1", execution_id))


async def test_gang_placement_dispatch_and_idempotent_facts(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    policy = Policy.from_name("dynsize+pack")
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=2, memory=1 << 30, registered=True), deps
    )
    eid = await _submit(pool, test_env, _app(total=3))
    await _outbox(pool)
    await handlers.on_submitted(m.ExecutionSubmitted(execution_id=eid), deps)
    await handlers.on_submitted(m.ExecutionSubmitted(execution_id=eid), deps)  # duplicate
    assert await _state(pool, eid) == "queued"
    assert [type(x) for x in await _outbox(pool)] == [m.ExecutionStateChanged]

    decisions, _ = await passes.run_pass(pool, test_env.deployment, policy)
    # 2 cores: the essential worker0 and one elastic worker fit, the third does not
    assert len(decisions.starts) == 2
    sent = [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)]
    assert sorted(s.instance for s in sent) == ["worker0", "worker1"]
    assert all(s.container_name == f"{test_env.deployment}-{eid}-{s.instance}" for s in sent)
    assert await _state(pool, eid) == "starting"
    # a second pass finds nothing more to do: no double placement
    decisions, _ = await passes.run_pass(pool, test_env.deployment, policy)
    assert decisions.starts == []

    for s in sent:
        fact = m.InstanceStarted(
            node="n1",
            execution_id=eid,
            instance_id=s.instance_id,
            container_id=f"c-{s.instance}",
            container_name=s.container_name,
        )
        await handlers.on_started(fact, deps)
        await handlers.on_started(fact, deps)  # redelivered
    assert await _state(pool, eid) == "running"
    events = [x for x in await _outbox(pool) if isinstance(x, m.ExecutionStateChanged)]
    assert [e.state for e in events] == ["running"]

    await handlers.on_terminate(m.ExecutionTerminateRequested(execution_id=eid), deps)
    await handlers.on_terminate(m.ExecutionTerminateRequested(execution_id=eid), deps)
    stops = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert sorted(s.instance_id for s in stops) == sorted(s.instance_id for s in sent)
    assert await _state(pool, eid) == "cleaning_up"


async def test_elastic_death_is_replaced_and_essential_death_fails(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    policy = Policy.from_name("dynsize+pack")
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    eid = await _submit(pool, test_env, _app(total=2))
    await handlers.on_submitted(m.ExecutionSubmitted(execution_id=eid), deps)
    await passes.run_pass(pool, test_env.deployment, policy)
    starts = {s.instance: s for s in await _outbox(pool) if isinstance(s, m.StartInstance)}
    for s in starts.values():
        await handlers.on_started(
            m.InstanceStarted(
                node="n1",
                execution_id=eid,
                instance_id=s.instance_id,
                container_id="x",
                container_name=s.container_name,
            ),
            deps,
        )
    elastic = starts["worker1"]
    # the monitor recorded the death; the scheduler acts on the verdict (twice: redelivery)
    await pool.execute("UPDATE instances SET state = 'died' WHERE id = $1", elastic.instance_id)
    verdict = m.InstanceEnded(
        execution_id=eid, instance_id=elastic.instance_id, reason="crashed", exit_code=1
    )
    await handlers.on_instance_ended(verdict, deps)
    await handlers.on_instance_ended(verdict, deps)
    row = await pool.fetchrow(
        "SELECT state, restart_count FROM instances WHERE id = $1", elastic.instance_id
    )
    assert (row["state"], row["restart_count"]) == ("created", 1)
    await _outbox(pool)
    await passes.run_pass(pool, test_env.deployment, policy)
    (again,) = [s for s in await _outbox(pool) if isinstance(s, m.StartInstance)]
    assert again.instance == "worker1"
    assert again.container_name.endswith("-r1")
    assert await _state(pool, eid) == "running"

    essential = starts["worker0"]
    await pool.execute("UPDATE instances SET state = 'died' WHERE id = $1", essential.instance_id)
    await handlers.on_instance_ended(
        m.InstanceEnded(execution_id=eid, instance_id=essential.instance_id, reason="oom"), deps
    )
    row = await pool.fetchrow("SELECT state, outcome, error FROM executions WHERE id = $1", eid)
    assert row["state"] == "cleaning_up" and row["outcome"] == "failed"
    assert "worker0" in row["error"] and "oom" in row["error"]


async def test_only_one_scheduler_is_active(test_env: TestEnv, pool: asyncpg.Pool) -> None:
    # the database of this module: the platform's scheduler holds the session database's lock
    url = f"{PG_BASE.rstrip('/')}/{test_env.database}_sched"
    stop = asyncio.Event()
    first = await acquire_leadership(url, stop)
    assert first is not None
    second = asyncio.create_task(acquire_leadership(url, stop))
    await asyncio.sleep(0.3)
    assert not second.done()
    await first.close()  # the active one dies: the standby takes over
    conn = await asyncio.wait_for(second, 10)
    assert conn is not None
    await conn.close()

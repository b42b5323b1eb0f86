"""The scheduler's handlers and passes against the real PostgreSQL (no broker needed:
what they publish is read from the outbox they write)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common import messages as m
from common.zapp import load_description
from services.api import store as api_store
from services.scheduler import handlers, passes, store
from services.scheduler.core import Decisions, Policy
from services.scheduler.service import acquire_leadership
from services.scheduler.view import Changes
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
    """What the scheduler sent (taken away), the starts sent together one by one."""
    out: list[m.Message] = []
    for msg in await _sent(pool):
        out.extend(msg.starts if isinstance(msg, m.StartInstances) else [msg])
    return out


async def _sent(pool: asyncpg.Pool) -> list[m.Message]:
    """The messages in the outbox, as they are (taken away)."""
    rows = await pool.fetch("DELETE FROM outbox RETURNING id, body")
    dec = m.decoder(_ANY)
    return [dec.decode(r["body"]) for r in sorted(rows, key=lambda r: r["id"])]


_ANY = (
    m.ExecutionSubmitted
    | m.ExecutionTerminateRequested
    | m.StartInstance
    | m.StartInstances
    | m.StopInstance
    | m.ExecutionStatesChanged
    | m.InstanceEnded
    | m.NodeLost
)


def _deps(pool: asyncpg.Pool, env: TestEnv, **settings: Any) -> tuple[handlers.Deps, list[int]]:
    passes_asked: list[int] = []
    deps = handlers.Deps(
        pool=pool,
        deployment=env.deployment,
        request_pass=lambda: passes_asked.append(1),
        **settings,
    )
    return deps, passes_asked


async def _expire_backoffs(pool: asyncpg.Pool) -> None:
    """Let the time of every restart backoff pass (the pass reads the clock)."""
    await pool.execute("UPDATE instances SET not_before = now() - interval '1 second'")


async def _submit(pool: asyncpg.Pool, env: TestEnv, app: dict[str, Any], user: str = "u") -> int:
    loaded = load_description(app)
    created, _ = await api_store.create_execution(
        pool, name="t", user_name=user, description=loaded.description, deployment=env.deployment
    )
    return int(created["id"])


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
    assert await _state(pool, eid) == "submitted"  # until the pass takes it
    assert await passes.admit_submitted(pool) == 1
    assert await passes.admit_submitted(pool) == 0
    assert await _state(pool, eid) == "queued"
    assert [type(x) for x in await _outbox(pool)] == [m.ExecutionStatesChanged]

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
    events = [x for x in await _outbox(pool) if isinstance(x, m.ExecutionStatesChanged)]
    assert [(c.execution_id, c.state) for e in events for c in e.changes] == [(eid, "running")]

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
    # the scheduler records the death and acts on it (the verdict twice: redelivery)
    verdict = _verdict(elastic, "crashed", 1)
    await handlers.on_instance_ended(verdict, deps)
    await handlers.on_instance_ended(verdict, deps)
    row = await pool.fetchrow(
        "SELECT state, restart_count, backoff FROM instances WHERE id = $1", elastic.instance_id
    )
    # a first death is placed again at once
    assert (row["state"], row["restart_count"], row["backoff"]) == ("created", 1, 0.0)
    # the dead container is removed, once
    (stop,) = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert isinstance(stop, m.StopInstance) and stop.container_name == elastic.container_name
    await passes.run_pass(pool, test_env.deployment, policy)
    (again,) = [s for s in await _outbox(pool) if isinstance(s, m.StartInstance)]
    assert again.instance == "worker1"
    assert again.container_name.endswith("-r1")
    assert await _state(pool, eid) == "running"

    essential = starts["worker0"]
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


# ---- failures -------------------------------------------------------------------------


async def _run(
    pool: asyncpg.Pool, env: TestEnv, deps: handlers.Deps, app: dict[str, Any], node: str = "n1"
) -> tuple[int, dict[str, m.StartInstance]]:
    """Submit ``app``, place it, and report every container started: it runs."""
    eid = await _submit(pool, env, app)
    await handlers.on_submitted(m.ExecutionSubmitted(execution_id=eid), deps)
    await passes.run_pass(pool, env.deployment, Policy.from_name("dynsize+pack"))
    starts = {s.instance: s for s in await _outbox(pool) if isinstance(s, m.StartInstance)}
    for s in starts.values():
        await _started(deps, s, node)
    assert await _state(pool, eid) == "running"
    await _outbox(pool)
    return eid, starts


async def _started(deps: handlers.Deps, s: m.StartInstance, node: str = "n1") -> None:
    fact = m.InstanceStarted(
        node=node,
        execution_id=s.execution_id,
        instance_id=s.instance_id,
        container_id=f"c-{s.container_name}",
        container_name=s.container_name,
    )
    await handlers.on_started(fact, deps)


def _verdict(s: m.StartInstance, reason: str, exit_code: int | None = None) -> m.InstanceEnded:
    """The monitor's verdict about the container a start command named."""
    return m.InstanceEnded(
        execution_id=s.execution_id,
        instance_id=s.instance_id,
        reason=reason,  # type: ignore[arg-type]
        exit_code=exit_code,
        container_name=s.container_name,
    )


async def _dies(
    pool: asyncpg.Pool, deps: handlers.Deps, s: m.StartInstance, reason: str = "crashed"
) -> None:
    """The monitor's verdict about the instance's container, delivered twice."""
    verdict = _verdict(s, reason, 137)
    await handlers.on_instance_ended(verdict, deps)
    await handlers.on_instance_ended(verdict, deps)


async def _replace(pool: asyncpg.Pool, env: TestEnv, deps: handlers.Deps) -> m.StartInstance:
    """Once the backoff is over, the pass starts the instance again: its start command."""
    await _expire_backoffs(pool)
    await passes.run_pass(pool, env.deployment, Policy.from_name("dynsize+pack"))
    (again,) = [s for s in await _outbox(pool) if isinstance(s, m.StartInstance)]
    await _started(deps, again)
    await _outbox(pool)
    return again


async def test_restart_backoff_doubles_up_to_its_cap_and_is_recorded(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env, restart_backoff=0.5, restart_backoff_max=1.5)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=2))
    current = starts["worker1"]
    seen = []
    for restart in (1, 2, 3, 4):
        await _dies(pool, deps, current)
        row = await pool.fetchrow(
            "SELECT restart_count, backoff, generation, extract(epoch FROM not_before - now())"
            " AS wait FROM instances WHERE id = $1",
            current.instance_id,
        )
        seen.append((row["restart_count"], row["backoff"], row["generation"]))
        if restart == 1:  # placed again by the very next pass
            decisions, _ = await passes.run_pass(
                pool, test_env.deployment, Policy.from_name("dynsize+pack")
            )
            assert [i for i, _ in decisions.starts] == [current.instance_id]
        else:
            assert 0 < row["wait"] <= row["backoff"]
            # not before the backoff is over
            decisions, wake = await passes.run_pass(
                pool, test_env.deployment, Policy.from_name("dynsize+pack")
            )
            assert decisions.starts == [] and wake is not None
        current = await _replace(pool, test_env, deps)
        assert current.container_name == f"{test_env.deployment}-{eid}-worker1-r{restart}"
    # the first death is replaced at once; a crash loop backs off
    assert seen == [(1, 0.0, 1), (2, 0.5, 2), (3, 1.0, 3), (4, 1.5, 4)]
    assert await _state(pool, eid) == "running"


async def test_stale_verdict_does_not_touch_the_next_generation(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    _, starts = await _run(pool, test_env, deps, _app(total=2))
    old = starts["worker1"]
    await _dies(pool, deps, old)
    await _outbox(pool)
    await _replace(pool, test_env, deps)
    # the old verdict is delivered once more, after the replacement runs
    late = _verdict(old, "crashed")
    await handlers.on_instance_ended(late, deps)
    assert await _outbox(pool) == []
    row = await pool.fetchrow(
        "SELECT state, restart_count FROM instances WHERE id = $1", old.instance_id
    )
    assert (row["state"], row["restart_count"]) == ("running", 1)


async def test_reclaimed_instance_comes_back_under_a_new_name(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    """An executor refuses to start a name it stopped: given back, a reclaimed elastic
    instance is a new generation (not a restart)."""
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    _, starts = await _run(pool, test_env, deps, _app(total=2))
    s = starts["worker1"]
    async with pool.acquire() as conn:  # a pass reclaims it: its container is stopped
        await store.stop_instances(conn, test_env.deployment, [s.instance_id])
    verdict = _verdict(s, "crashed", 143)
    await handlers.on_instance_ended(verdict, deps)
    again = await _replace(pool, test_env, deps)
    assert again.container_name == s.container_name + "-r1"
    row = await pool.fetchrow(
        "SELECT restart_count, generation FROM instances WHERE id = $1", s.instance_id
    )
    assert (row["restart_count"], row["generation"]) == (0, 1)


async def test_an_instance_placed_in_reclaimed_room_starts_once_that_room_is_free(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    """A pass reclaims an elastic instance for a waiting execution's essential one: that
    one stays placed while the container stopped for it still runs, and the first pass
    after its end starts it, once. The scheduler looks for placed instances that wait
    only while some may (a term's start, a pass that left some)."""
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=2, memory=1 << 30), deps)
    _, starts = await _run(pool, test_env, deps, _app(total=2))  # the node is full
    changes = Changes()
    deps = handlers.Deps(
        pool=pool, deployment=test_env.deployment, request_pass=lambda: None, view=changes
    )
    view = passes.ClusterView(pool, test_env.deployment, Policy.from_name("dynsize"), changes)
    assert view.placed_waiting  # a term's start: not known
    await view.run_pass()
    await view.run_pass()
    assert not view.placed_waiting  # it looked, and found none
    waiting = await _submit(pool, test_env, _app(total=1))
    await handlers.on_submitted(m.ExecutionSubmitted(execution_id=waiting), deps)
    # it waited: ranked before the running one under dynsize, it may reclaim from it
    await pool.execute(
        "UPDATE executions SET submitted_at = now() - interval '1 minute' WHERE id = $1", waiting
    )
    decisions, _ = await view.run_pass()
    assert decisions.stops == [starts["worker1"].instance_id]
    assert [x.container_name for x in await _outbox(pool) if isinstance(x, m.StopInstance)] == [
        starts["worker1"].container_name
    ]
    placed = await pool.fetchrow("SELECT id, state FROM instances WHERE execution_id = $1", waiting)
    assert placed["state"] == "placed" and view.placed_waiting
    await view.run_pass()  # the stopped container still holds its room
    assert [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)] == []
    await handlers.on_instance_ended(_verdict(starts["worker1"], "crashed", 143), deps)
    await _outbox(pool)
    await view.run_pass()
    (start,) = [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)]
    assert (start.execution_id, start.instance_id) == (waiting, placed["id"])
    await view.run_pass()  # it found none waiting: the next passes do not look
    assert not view.placed_waiting
    assert [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)] == []
    assert await passes.dispatch_waiting(pool, test_env.deployment) == 0


async def test_essential_restarts_within_the_budget_of_a_long_running_execution(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env, essential_restarts=1)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=2))
    await _dies(pool, deps, starts["worker0"], reason="oom")
    assert await _state(pool, eid) == "running"
    # placed again alone (its gang is itself): the elastic instance kept running
    again = await _replace(pool, test_env, deps)
    assert again.instance == "worker0" and again.container_name.endswith("-r1")
    assert await _state(pool, eid) == "running"
    # the budget is spent: the next death fails the execution, with the reason
    await _dies(pool, deps, again, reason="crashed")
    row = await pool.fetchrow("SELECT state, outcome, error FROM executions WHERE id = $1", eid)
    assert (row["state"], row["outcome"]) == ("cleaning_up", "failed")
    assert row["error"] == "essential instance worker0 ended: crashed (exit code 137)"
    stops = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert sorted(x.container_name for x in stops) == sorted(
        [again.container_name, starts["worker1"].container_name]
    )


async def test_an_ephemeral_execution_gets_no_essential_restart(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env, essential_restarts=3)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    app = _app(total=2)
    app["will_end"] = True
    app["services"][0]["monitor"] = False
    app["services"].append({**app["services"][0], "name": "job", "monitor": True, "total_count": 1})
    eid, starts = await _run(pool, test_env, deps, app)
    await _dies(pool, deps, starts["worker0"])
    row = await pool.fetchrow("SELECT state, error FROM executions WHERE id = $1", eid)
    assert row["state"] == "cleaning_up" and "worker0 ended: crashed" in row["error"]


async def test_monitor_service_death_ends_its_execution_once_with_the_reason(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    app = _app(total=1)
    app["will_end"] = True
    eid, starts = await _run(pool, test_env, deps, app)
    s = starts["worker0"]
    verdict = _verdict(s, "oom", 137)
    await handlers.on_instance_ended(verdict, deps)
    await handlers.on_instance_ended(verdict, deps)  # redelivered: decided once
    row = await pool.fetchrow("SELECT state, exit_code, error FROM executions WHERE id = $1", eid)
    assert (row["state"], row["exit_code"]) == ("cleaning_up", 137)
    assert row["error"] == "essential instance worker0 ended: oom (exit code 137)"


async def test_returning_node_removes_its_orphans_and_takes_work_again(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, asked = _deps(pool, test_env)
    beat = m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30)
    await handlers.on_heartbeat(beat, deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=2), node="n2")
    # the monitor declared n2 lost: its containers are orphans, its node is lost
    await handlers.on_node_lost(m.NodeLost(node="n2"), deps)
    await handlers.on_node_lost(m.NodeLost(node="n2"), deps)  # said again: nothing more
    assert await pool.fetchval("SELECT count(*) FROM orphans") == 2
    await _outbox(pool)
    asked.clear()
    await handlers.on_heartbeat(beat, deps)  # it is back
    assert asked  # a pass: it takes work again
    assert await pool.fetchval("SELECT state FROM nodes WHERE name = 'n2'") == "up"
    stops = await _outbox(pool)
    assert sorted((x.container_name, x.execution_id) for x in stops) == sorted(  # type: ignore[attr-defined]
        (s.container_name, eid) for s in starts.values()
    )
    assert all(isinstance(x, m.StopInstance) for x in stops)
    assert await pool.fetchval("SELECT count(*) FROM orphans") == 0
    asked.clear()
    await handlers.on_heartbeat(beat, deps)  # once only
    assert await _outbox(pool) == [] and not asked


async def test_unchanged_heartbeats_are_stored_once_and_a_lost_node_comes_back(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, passes_asked = _deps(pool, test_env)

    async def node() -> asyncpg.Record:
        return await pool.fetchrow("SELECT cores, state, last_heartbeat FROM nodes")

    beat = m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30)
    await handlers.on_heartbeat(beat, deps)
    first = await node()
    await handlers.on_heartbeat(beat, deps)
    assert await node() == first  # the same news again: nothing written
    assert len(passes_asked) == 1  # the new node only
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=8, memory=1 << 30), deps)
    changed = await node()
    assert changed["cores"] == 8 and changed["last_heartbeat"] > first["last_heartbeat"]
    # the monitor declared it lost; its next heartbeat marks it up again
    await handlers.on_node_lost(m.NodeLost(node="n1"), deps)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=8, memory=1 << 30), deps)
    assert (await node())["state"] == "up"
    assert len(passes_asked) == 3  # and the pass counts on it again


async def test_heartbeats_that_arrive_together_are_stored_together(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    """Many nodes registering at once, one of them twice in the batch, and a lost node
    coming back among them: every row as single heartbeats would leave it."""
    deps, asked = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30), deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=2), node="n2")
    await handlers.on_node_lost(m.NodeLost(node="n2"), deps)
    await _outbox(pool)
    asked.clear()
    beats = [
        m.NodeHeartbeat(
            node=f"b{i:03d}", cores=2, memory=1 << 30, labels=[f"l{i}"], registered=True
        )
        for i in range(200)
    ]
    beats.append(m.NodeHeartbeat(node="b007", cores=3, memory=1 << 30, images=["zoe/x:1"]))
    beats.append(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30))
    await handlers.on_heartbeats(beats, deps)
    rows = {
        r["name"]: r
        for r in await pool.fetch("SELECT name, cores, labels, images, state FROM nodes")
    }
    assert len(rows) == 201 and all(r["state"] == "up" for r in rows.values())
    assert (rows["b007"]["cores"], rows["b007"]["images"], rows["b007"]["labels"]) == (
        3,
        ["zoe/x:1"],
        [],
    )
    assert rows["b123"]["labels"] == ["l123"]
    assert asked  # new nodes and a returning one: a pass
    stops = await _outbox(pool)  # the returning node's orphans are asked to go
    assert sorted(x.container_name for x in stops) == sorted(  # type: ignore[attr-defined]
        s.container_name for s in starts.values()
    )
    assert eid
    asked.clear()
    await handlers.on_heartbeats([b for b in beats if not b.registered], deps)
    assert not asked and await _outbox(pool) == []  # the same news: nothing to do


async def test_a_placement_that_lost_a_race_is_stored_for_none_of_its_instances(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=8, memory=1 << 30), deps)
    raced = await _submit(pool, test_env, _app(total=3))
    fine = await _submit(pool, test_env, _app(total=2))
    await passes.admit_submitted(pool)
    ids = {
        r["id"]: r["execution_id"]
        for r in await pool.fetch("SELECT id, execution_id FROM instances ORDER BY id")
    }
    decisions = Decisions(starts=[(i, "n1") for i in ids])
    # between the snapshot and the apply, one instance of `raced` moved on (terminated)
    moved = min(i for i, e in ids.items() if e == raced)
    await pool.execute("UPDATE instances SET state = 'stopped' WHERE id = $1", moved)
    await _outbox(pool)
    await passes.apply(pool, test_env.deployment, decisions)

    rows = await pool.fetch("SELECT id, execution_id, state, node FROM instances ORDER BY id")
    raced_rows = {(r["state"], r["node"]) for r in rows if r["execution_id"] == raced}
    assert raced_rows == {("stopped", None), ("created", None)}  # none of it placed
    assert {r["state"] for r in rows if r["execution_id"] == fine} == {"starting"}
    assert await _state(pool, raced) == "queued"
    assert await _state(pool, fine) == "starting"
    sent = [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)]
    assert sorted(s.execution_id for s in sent) == [fine, fine]


async def test_starts_placed_on_one_node_by_a_pass_go_in_one_command(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    for node in ("n1", "n2"):
        await handlers.on_heartbeat(m.NodeHeartbeat(node=node, cores=3, memory=1 << 30), deps)
    eids = [await _submit(pool, test_env, _app(total=2)) for _ in range(3)]
    await _sent(pool)
    decisions, _ = await passes.run_pass(
        pool, test_env.deployment, Policy.from_name("dynsize+pack")
    )
    assert len(decisions.starts) == 6
    commands = [x for x in await _sent(pool) if isinstance(x, m.StartInstance | m.StartInstances)]
    # 6 instances of 1 core on two nodes of 3 cores: one command for each node
    assert [type(c) for c in commands] == [m.StartInstances, m.StartInstances]
    starts = [s for c in commands if isinstance(c, m.StartInstances) for s in c.starts]
    assert sorted(s.execution_id for s in starts) == sorted(eids * 2)
    assert len({s.instance_id for s in starts}) == 6


async def test_a_later_startup_group_waits_placed_until_the_earlier_one_runs(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    """The pass stores the first group as starting (its commands sent) and the second
    as placed; the first group's facts start the second, once, and the execution runs
    when both do."""
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    app = _app(total=1)
    later = copy.deepcopy(app["services"][0])
    app["services"][0]["essential_count"] = app["services"][0]["total_count"] = 2
    later.update(name="client", startup_order=1)
    app["services"].append(later)
    eid = await _submit(pool, test_env, app)
    await _outbox(pool)
    decisions, _ = await passes.run_pass(
        pool, test_env.deployment, Policy.from_name("dynsize+pack")
    )
    assert len(decisions.starts) == 3  # all of it placed at once (gang)
    rows = await pool.fetch("SELECT name, state, node FROM instances ORDER BY id")
    assert [(r["name"], r["state"], r["node"]) for r in rows] == [
        ("worker0", "starting", "n1"),
        ("worker1", "starting", "n1"),
        ("client0", "placed", "n1"),
    ]
    first = [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)]
    assert sorted(s.instance for s in first) == ["worker0", "worker1"]

    facts = [
        m.InstanceStarted(
            node="n1",
            execution_id=eid,
            instance_id=s.instance_id,
            container_id=f"c-{s.instance}",
            container_name=s.container_name,
        )
        for s in first
    ]
    await handlers.on_started_many(facts[:1], deps)
    assert [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)] == []
    await handlers.on_started_many(facts[1:], deps)
    await handlers.on_started_many(facts, deps)  # redelivered: nothing more
    second = [x for x in await _outbox(pool) if isinstance(x, m.StartInstance)]
    assert [s.instance for s in second] == ["client0"]
    assert await _state(pool, eid) == "starting"
    client = m.InstanceStarted(
        node="n1",
        execution_id=eid,
        instance_id=second[0].instance_id,
        container_id="c-client0",
        container_name=second[0].container_name,
    )
    await handlers.on_started(client, deps)
    assert await _state(pool, eid) == "running"


async def test_a_heartbeat_racing_the_node_s_loss_never_leaves_the_node_lost(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    """Both run in the scheduler, one at a time per node: whichever comes last, the
    next heartbeat finds the row as the scheduler remembers it."""
    deps, _ = _deps(pool, test_env)
    beat = m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30)
    await handlers.on_heartbeat(beat, deps)
    for _ in range(20):
        await asyncio.gather(
            handlers.on_node_lost(m.NodeLost(node="n1"), deps),
            handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps),
        )
        await handlers.on_heartbeat(beat, deps)  # the same news: stored only if needed
        assert await pool.fetchval("SELECT state FROM nodes WHERE name = 'n1'") == "up"


async def test_one_verdict_delivered_twice_at_once_is_decided_once(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    _, starts = await _run(pool, test_env, deps, _app(total=2))
    s = starts["worker1"]
    verdict = _verdict(s, "crashed", 1)
    await asyncio.gather(*(handlers.on_instance_ended(verdict, deps) for _ in range(4)))
    row = await pool.fetchrow(
        "SELECT state, restart_count, generation FROM instances WHERE id = $1", s.instance_id
    )
    assert (row["state"], row["restart_count"], row["generation"]) == ("created", 1, 1)
    stops = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert [x.container_name for x in stops] == [s.container_name]


async def test_a_waiting_execution_s_reason_is_stored_once_and_cleared_when_it_fits(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=2, memory=1 << 30, registered=True), deps
    )
    eid = await _submit(pool, test_env, _app(total=1, cores=8.0))
    view = passes.ClusterView(pool, test_env.deployment, Policy.from_name("dynsize"))
    decisions, _ = await view.run_pass()
    assert decisions.starts == []

    async def row() -> asyncpg.Record:
        return await pool.fetchrow(
            "SELECT xmin::text AS version, pending_reason, schedulable FROM executions"
            " WHERE id = $1",
            eid,
        )

    first = await row()
    assert first["pending_reason"] == "unschedulable: no node has 8 cores"
    assert first["schedulable"] is False
    shown = await api_store.get_execution(pool, eid)
    assert shown["pending_reason"] == first["pending_reason"]
    assert shown["schedulable"] is False
    for _ in range(3):  # unchanged: not written again
        await view.run_pass()
    assert (await row())["version"] == first["version"]
    # a scheduler taking over reads what is stored and writes nothing either
    await passes.ClusterView(pool, test_env.deployment, Policy.from_name("dynsize")).run_pass()
    assert (await row())["version"] == first["version"]

    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30, registered=True), deps
    )
    await view.run_pass()
    smaller = await row()
    assert smaller["pending_reason"] == "unschedulable: no node has 8 cores"  # 4 < 8 still
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n3", cores=16, memory=4 << 30, registered=True), deps
    )
    decisions, _ = await view.run_pass()
    assert len(decisions.starts) == 1
    cleared = await row()
    assert cleared["pending_reason"] is None and cleared["schedulable"] is True


async def test_a_reason_of_an_execution_that_fits_later_names_the_room(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=2, memory=1 << 30, registered=True), deps
    )
    view = passes.ClusterView(pool, test_env.deployment, Policy.from_name("dynsize"))
    first = await _submit(pool, test_env, _app(total=1, cores=2.0))
    await view.run_pass()
    second = await _submit(pool, test_env, _app(total=1, cores=2.0))
    await view.run_pass()
    assert await _state(pool, first) == "starting"
    reason = await pool.fetchval("SELECT pending_reason FROM executions WHERE id = $1", second)
    assert reason == (
        "needs 1 instance of 2 cores and 64 MiB; the largest free room on a node is"
        " 0 cores and 960 MiB"
    )


async def test_the_fair_policy_shares_the_cluster_by_the_users_weights(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    deps, _ = _deps(pool, test_env)
    await pool.execute("DELETE FROM users WHERE name IN ('heavy', 'light')")
    await pool.execute(
        "INSERT INTO users (name, role, weight) VALUES ('heavy', 'user', NULL), ('light', 'user', 3)"
    )
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30, registered=True), deps
    )
    heavy = [await _submit(pool, test_env, _app(cores=1.0), "heavy") for _ in range(6)]
    light = [await _submit(pool, test_env, _app(cores=1.0), "light") for _ in range(6)]
    await passes.run_pass(pool, test_env.deployment, Policy.from_name("fair"))
    started = {
        r["user_name"]: r["n"]
        for r in await pool.fetch(
            "SELECT user_name, count(*) AS n FROM executions WHERE state = 'starting'"
            " GROUP BY user_name"
        )
    }
    # light weighs 3 (heavy, without a weight of its own, its role's 1): 3 turns to 1
    assert started == {"light": 3, "heavy": 1}
    assert len(heavy) == len(light) == 6


async def test_the_deployment_s_history_replays_under_each_policy(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    import datetime as dt

    from services.scheduler.history import load_history, parse_since
    from services.scheduler.simulator import simulate

    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=4, memory=4 << 30, labels=["ssd"], registered=True),
        deps,
    )
    ids = [await _submit(pool, test_env, _app(total=3), user) for user in ("ann", "bob", "ann")]
    ids.append(await _submit(pool, test_env, _app(), "cy"))  # never ran: not replayed
    # they ran 60 s, 120 s and 180 s, submitted 10 s apart on 30 November
    for n, eid in enumerate(ids[:3]):
        await pool.execute(
            "UPDATE executions SET state = 'finished',"
            " submitted_at = timestamptz '2026-11-30 00:00+00' + $2 * interval '10 seconds',"
            " started_at = timestamptz '2026-11-30 00:00+00' + $2 * interval '10 seconds',"
            " finished_at = timestamptz '2026-11-30 00:00+00' + $2 * interval '10 seconds'"
            "  + ($2 + 1) * interval '60 seconds' WHERE id = $1",
            eid,
            n,
        )
    async with pool.acquire() as conn:
        workload = await load_history(conn, None)
        recent = await load_history(conn, dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    assert [a.id for a in workload.apps] == ids[:3]
    assert [a.arrival for a in workload.apps] == [0.0, 10.0, 20.0]
    assert [round(a.runtime) for a in workload.apps] == [60, 120, 180]
    assert [a.user for a in workload.apps] == ["ann", "bob", "ann"]
    first = workload.apps[0]
    assert [i.essential for i in first.instances] == [True, False, False] and first.elastic
    assert [n.name for n in workload.nodes] == ["n1"]
    assert recent.apps == ()
    results = simulate(workload, ["fifo", "fair", "rigid-fifo"], check=True)
    assert all(r.finished == 3 for r in results)
    assert set(results[1].per_user) == {"ann", "bob"}
    assert parse_since("2026-11-30").tzinfo is not None
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


async def test_a_drained_node_takes_nothing_new_and_its_elastic_instances_move(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    from services.scheduler import drain

    deps, asked = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=3))  # all three on n1
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30), deps)

    await handlers.HANDLERS[m.NodeDrainRequested](m.NodeDrainRequested(node="n1"), deps)
    assert asked
    stops = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert sorted(s.instance_id for s in stops) == sorted(
        starts[n].instance_id for n in ("worker1", "worker2")
    )  # the elastic ones; the essential worker0 stays
    shown = {n["name"]: n for n in await api_store.list_nodes(pool)}
    assert shown["n1"]["state"] == "drained" and shown["n2"]["state"] == "up"
    for name in ("worker1", "worker2"):
        await handlers.on_instance_ended(_verdict(starts[name], "stopped", 0), deps)
    await passes.run_pass(pool, test_env.deployment, Policy.from_name("dynsize+pack"))
    moved = [s for s in await _outbox(pool) if isinstance(s, m.StartInstance)]
    assert {s.instance for s in moved} == {"worker1", "worker2"}
    nodes = await pool.fetch(
        "SELECT name, node FROM instances WHERE execution_id = $1 ORDER BY name", eid
    )
    assert [(r["name"], r["node"]) for r in nodes] == [
        ("worker0", "n1"),
        ("worker1", "n2"),
        ("worker2", "n2"),
    ]
    # a new execution goes to n2 only, however tight it is there
    other = await _submit(pool, test_env, _app(total=1, cores=2.0))
    await passes.run_pass(pool, test_env.deployment, Policy.from_name("dynsize+pack"))
    assert await pool.fetchval("SELECT node FROM instances WHERE execution_id = $1", other) == "n2"
    assert await drain.enforce(pool, deps.rules, lambda: None) == 0  # no deadline: stays

    await handlers.HANDLERS[m.NodeDrainRequested](
        m.NodeDrainRequested(node="n1", drain=False), deps
    )
    shown = {n["name"]: n for n in await api_store.list_nodes(pool)}
    assert shown["n1"]["state"] == "up"


async def test_past_the_drain_deadline_essential_instances_end_as_on_a_lost_node(
    pool: asyncpg.Pool, test_env: TestEnv, clean: None
) -> None:
    from services.scheduler import drain

    deps, _ = _deps(pool, test_env)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    eid, starts = await _run(pool, test_env, deps, _app(total=1))
    await handlers.HANDLERS[m.NodeDrainRequested](
        m.NodeDrainRequested(node="n1", deadline=3600.0), deps
    )
    assert await drain.enforce(pool, deps.rules, lambda: None) == 0  # not yet
    assert await _state(pool, eid) == "running"
    await pool.execute("UPDATE nodes SET drain_deadline = now() - interval '1 second'")
    assert await drain.enforce(pool, deps.rules, lambda: None) == 1
    row = await pool.fetchrow(
        "SELECT e.state, e.error, i.reason FROM executions e JOIN instances i"
        " ON i.execution_id = e.id WHERE e.id = $1",
        eid,
    )
    assert row["state"] == "cleaning_up" and row["reason"] == "node-lost"
    stops = [x for x in await _outbox(pool) if isinstance(x, m.StopInstance)]
    assert [s.instance_id for s in stops] == [starts["worker0"].instance_id]
    assert await drain.enforce(pool, deps.rules, lambda: None) == 0  # nothing held any more

"""The scheduler's in-memory view against the real PostgreSQL: after any run of
submissions, terminations, facts, verdicts, heartbeats, node losses, drains, sweeps and
takeovers through the real handlers and passes, the view it kept by deltas equals a
fresh read."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from common import messages as m
from common.zapp import load_description
from services.api import store as api_store
from services.scheduler import drain, handlers, passes, sweeper
from services.scheduler.core import Policy, schedule
from services.scheduler.view import Changes, View
from tests.conftest import TestEnv, own_database

MiB = 1024 * 1024
NODES = ["n0", "n1", "n2", "n3"]


def _app(total: int, cores: float, labels: list[str]) -> dict[str, Any]:
    return {
        "name": "view-test",
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
                "labels": labels,
                "resources": {
                    "cores": {"min": cores, "max": cores},
                    "memory": {"min": 64 * MiB, "max": 64 * MiB},
                },
            }
        ],
    }


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    async with own_database(test_env, "schedview") as p:
        yield p


_pick = hs.integers(0, 1000)
_PASS = hs.tuples(hs.just("pass"))
_SUBMIT = hs.tuples(
    hs.just("submit"),
    hs.integers(1, 3),
    hs.sampled_from([0.5, 1.0, 2.0]),
    hs.sampled_from([[], ["ssd"]]),
    hs.booleans(),  # whether its message arrives (else only the pass admits it)
)
_STARTED = hs.tuples(hs.just("started"), _pick, hs.integers(1, 3))
OPS = hs.one_of(
    _PASS,
    _STARTED,
    _PASS,
    _STARTED,
    hs.tuples(
        hs.just("beat"),
        hs.sampled_from(NODES),
        hs.sampled_from([1.0, 2.0, 4.0]),
        hs.sampled_from([[], ["ssd"]]),
        hs.booleans(),
    ),
    hs.tuples(hs.just("lose"), hs.sampled_from(NODES)),
    hs.tuples(hs.just("drain"), hs.sampled_from(NODES), hs.booleans()),
    _SUBMIT,
    hs.tuples(hs.just("terminate"), _pick),
    _PASS,
    _STARTED,
    hs.tuples(hs.just("ended"), _pick, hs.sampled_from(["exited", "crashed"]), hs.booleans()),
    hs.tuples(hs.just("sweep")),
    hs.tuples(hs.just("takeover")),
)


def _dump(view: View) -> tuple[Any, Any]:
    nodes = {n: (x.cores, x.memory, x.labels, x.up, x.drained) for n, x in view.nodes.items()}
    execs = {
        e.id: (
            e.submitted,
            e.size,
            e.priority,
            e.cleaning,
            e.user,
            {i: (x.req, x.node, x.not_before) for i, x in e.instances.items()},
        )
        for e in view.executions.values()
    }
    return nodes, execs


def _snap(snapshot: Any) -> Any:
    nodes, execs, wake = snapshot
    return (
        sorted(nodes, key=lambda n: n.name),
        sorted(
            (
                (e.id, e.submitted_at, e.size, e.priority, e.user),
                sorted(i.id for i in e.pending),
                sorted((i.id, n) for i, n in e.placed),
            )
            for e in execs
        ),
        wake,
    )


async def _run(pool: asyncpg.Pool, env: TestEnv, ops: list[tuple[Any, ...]]) -> None:
    async with pool.acquire() as conn:
        await conn.execute("TRUNCATE executions, nodes, outbox, orphans CASCADE")
    changes = Changes()
    deps = handlers.Deps(
        pool=pool, deployment=env.deployment, request_pass=lambda: None, view=changes
    )
    view = passes.ClusterView(pool, env.deployment, Policy.from_name("dynsize"), changes)
    rules = sweeper.SweepRules(env.deployment, resend_after=0.0, give_up_after=0.0)
    executions: list[int] = []
    for node in NODES[:3]:  # a cluster to start with; the ops change it
        await handlers.on_heartbeat(m.NodeHeartbeat(node=node, cores=4.0, memory=1 << 30), deps)
    for op in ops:
        match op:
            case ("beat", node, cores, labels, registered):
                beat = m.NodeHeartbeat(
                    node=node, cores=cores, memory=1 << 30, labels=labels, registered=registered
                )
                await handlers.on_heartbeat(beat, deps)
            case ("lose", node):
                await handlers.on_node_lost(m.NodeLost(node=node), deps)
            case ("drain", node, on):
                await drain.on_drain(m.NodeDrainRequested(node=node, drain=on), deps)
            case ("submit", total, cores, labels, told):
                created, _ = await api_store.create_execution(
                    pool,
                    name="t",
                    user_name="u",
                    description=load_description(_app(total, cores, labels)).description,
                    deployment=env.deployment,
                )
                executions.append(int(created["id"]))
                if told:
                    sub = m.ExecutionSubmitted(execution_id=executions[-1])
                    await handlers.on_submitted(sub, deps)
            case ("terminate", k) if executions:
                eid = executions[k % len(executions)]
                await handlers.on_terminate(m.ExecutionTerminateRequested(execution_id=eid), deps)
            case ("pass",):
                await view.run_pass()
            case ("started", k, n):
                rows = await pool.fetch(
                    "SELECT id, execution_id, node, container_name FROM instances"
                    " WHERE state = 'starting' ORDER BY id"
                )
                facts = [
                    m.InstanceStarted(
                        node=r["node"],
                        execution_id=r["execution_id"],
                        instance_id=r["id"],
                        container_id=f"c{r['id']}",
                        container_name=r["container_name"],
                    )
                    for r in itertools.islice(itertools.cycle(rows), k, k + n)
                ]
                if facts:
                    await handlers.on_started_many(facts, deps)
            case ("ended", k, reason, gone):
                rows = await pool.fetch(
                    "SELECT id, execution_id, container_name FROM instances"
                    " WHERE state IN ('starting', 'running', 'stopping') ORDER BY id"
                )
                if rows:
                    r = rows[k % len(rows)]
                    verdict = m.InstanceEnded(
                        execution_id=r["execution_id"],
                        instance_id=r["id"],
                        reason=reason,
                        exit_code=0 if reason == "exited" else 1,
                        container_name=r["container_name"],
                        gone=gone,
                    )
                    await handlers.on_instance_ended(verdict, deps)
            case ("sweep",):
                await sweeper.sweep(pool, rules, changes)
            case ("takeover",):  # a new term: a new view, read from the database
                changes = Changes()
                deps = dataclasses.replace(deps, view=changes)
                view = passes.ClusterView(
                    pool, env.deployment, Policy.from_name("dynsize"), changes
                )
    # nothing here may need a full reload: the deltas must do
    assert changes.full is None
    await view.sync()
    fresh = View()
    async with pool.acquire() as conn:
        await fresh.load(conn, "check")
        for later in (0.0, 5.0, 3600.0):
            now = await _now(conn) + later
            assert _snap(view.view.snapshot(now)) == _snap(await passes.load_snapshot(conn, now))
        # what the core kept between the passes decides as a fresh read does
        now = await _now(conn)
        nodes, execs, _ = view.view.snapshot(now)
        read_nodes, read_execs, _ = await passes.load_snapshot(conn, now)
        read_nodes.sort(key=lambda n: n.name)
        policy = Policy.from_name("dynsize")
        assert schedule(nodes, execs, now=now, policy=policy, kept=view.kept) == schedule(
            read_nodes, read_execs, now=now, policy=policy
        )
    assert _dump(view.view) == _dump(fresh)


async def _now(conn: asyncpg.Connection) -> float:
    return float(await conn.fetchval("SELECT extract(epoch FROM now())"))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    first=hs.lists(_SUBMIT, min_size=1, max_size=6),
    ops=hs.lists(OPS, min_size=1, max_size=60),
)
async def test_the_view_kept_by_deltas_equals_a_fresh_read(
    pool: asyncpg.Pool,
    test_env: TestEnv,
    first: list[tuple[Any, ...]],
    ops: list[tuple[Any, ...]],
) -> None:
    await _run(pool, test_env, [*first, ("pass",), *ops])


async def test_a_failed_write_asks_for_a_full_reload(pool: asyncpg.Pool, test_env: TestEnv) -> None:
    """A handler whose write fails (was it committed?) makes the next pass read all."""
    changes = Changes()
    deps = handlers.Deps(
        pool=pool, deployment=test_env.deployment, request_pass=lambda: None, view=changes
    )
    await pool.execute("ALTER TABLE executions RENAME TO executions_away")
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await handlers.on_terminate(m.ExecutionTerminateRequested(execution_id=1), deps)
    finally:
        await pool.execute("ALTER TABLE executions_away RENAME TO executions")
    assert changes.full == "failed"

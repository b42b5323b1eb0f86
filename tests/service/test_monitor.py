"""The back path against the real PostgreSQL: facts -> the monitor's verdicts -> the
scheduler's decisions.

The monitor turns each fact into one verdict and writes no row of the scheduler's; the
scheduler tells apart a stop it asked for, a clean exit, a crash, an OOM kill and a lost
node, records each end once however often a fact is delivered, and ignores facts about
a container that is no longer the instance's current one. What each publishes is read
from the outbox (no broker needed). A database of its own: these tests truncate tables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from common import messages as m
from common.outbox import enqueue
from common.zapp import load_description
from services.api import store as api_store
from services.monitor import handlers
from services.scheduler import handlers as scheduler
from tests.conftest import TestEnv, own_database

MiB = 1024 * 1024

_VERDICTS = (
    m.InstanceEnded
    | m.NodeLost
    | m.ExecutionSubmitted
    | m.ExecutionStatesChanged
    | m.StopInstance
    | m.StartInstance
)


def _service(name: str, *, monitor: bool, essential: int = 1, total: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "image": "zoe/busybox:1",
        "monitor": monitor,
        "essential_count": essential,
        "total_count": total,
        "startup_order": 0,
        "command": "sleep 1000",
        "environment": [],
        "ports": [],
        "volumes": [],
        "resources": {
            "cores": {"min": 0.1, "max": 0.1},
            "memory": {"min": 16 * MiB, "max": 16 * MiB},
        },
    }


def _app(*, will_end: bool) -> dict[str, Any]:
    services = [
        _service("main", monitor=True),
        _service("worker", monitor=False, essential=1, total=2),
    ]
    return {"name": "mon-test", "version": 3, "will_end": will_end, "size": 1, "services": services}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    async with own_database(test_env, "mon") as p:
        yield p


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _kept_in_outbox(pool: asyncpg.Pool) -> Any:
    """What the monitor says, kept in the outbox table for the test to read (the service
    publishes it on the bus)."""

    async def say(items: Any) -> None:
        async with pool.acquire() as conn:
            await enqueue(conn, list(items))

    return say


@pytest.fixture
def deps(pool: asyncpg.Pool, clock: Clock) -> handlers.Deps:
    return handlers.Deps(pool=pool, last_seen={}, clock=clock, say=_kept_in_outbox(pool))


@pytest.fixture
def sched(pool: asyncpg.Pool) -> scheduler.Deps:
    return scheduler.Deps(pool=pool, deployment="zm", request_pass=lambda: None)


async def _decide(sched: scheduler.Deps, verdicts: list[m.Message], times: int = 2) -> None:
    """The scheduler acts on the verdicts, each delivered ``times`` (redeliveries)."""
    for verdict in verdicts:
        for _ in range(times):
            await scheduler.HANDLERS[type(verdict)](verdict, sched)


async def _said(pool: asyncpg.Pool) -> list[m.Message]:
    """The monitor's verdicts, taken from the outbox (what the scheduler sent is dropped)."""
    return [v for v in await _verdicts(pool) if isinstance(v, m.InstanceEnded | m.NodeLost)]


async def _execution(pool: asyncpg.Pool, execution_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT state, outcome, exit_code, error FROM executions WHERE id = $1", execution_id
    )
    assert row is not None
    return row


async def _running(pool: asyncpg.Pool, *, will_end: bool, node: str = "n1") -> dict[str, int]:
    """An execution whose instances all run on ``node``: instance name -> id."""
    description = load_description(_app(will_end=will_end)).description
    created, _ = await api_store.create_execution(
        pool, name="t", user_name="u", description=description, deployment="zm"
    )
    eid = created["id"]
    await pool.execute(
        "INSERT INTO nodes (name, cores, memory) VALUES ($1, 4, $2) ON CONFLICT DO NOTHING",
        node,
        1 << 30,
    )
    await pool.execute("UPDATE executions SET state = 'running' WHERE id = $1", eid)
    await pool.execute(
        "UPDATE instances SET state = 'running', node = $2, removed = false,"
        " container_name = 'zm-' || execution_id || '-' || name, container_id = 'id-' || name"
        " WHERE execution_id = $1",
        eid,
        node,
    )
    rows = await pool.fetch("SELECT id, name FROM instances WHERE execution_id = $1", eid)
    await _verdicts(pool)
    return {"eid": eid, **{r["name"]: r["id"] for r in rows}}


async def _verdicts(pool: asyncpg.Pool) -> list[m.Message]:
    rows = await pool.fetch("DELETE FROM outbox RETURNING id, body")
    dec = m.decoder(_VERDICTS)
    return [dec.decode(r["body"]) for r in sorted(rows, key=lambda r: r["id"])]


async def _instance(pool: asyncpg.Pool, instance_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT state, reason, exit_code, removed FROM instances WHERE id = $1", instance_id
    )
    assert row is not None
    return row


def _exited(ids: dict[str, int], name: str, code: int, *, oom: bool = False) -> m.InstanceExited:
    return m.InstanceExited(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids[name],
        container_id=f"id-{name}",
        container_name=f"zm-{ids['eid']}-{name}",
        exit_code=code,
        oom_killed=oom,
    )


@pytest.mark.parametrize(
    ("terminating", "code", "oom", "said", "state", "reason"),
    [
        (True, 143, False, "crashed", "stopped", "stopped"),  # Zoe asked: whatever the code
        (True, 137, True, "oom", "stopped", "stopped"),
        (False, 0, False, "exited", "stopped", "exited"),  # ended by itself, cleanly
        (False, 137, False, "crashed", "died", "crashed"),  # docker kill
        (False, 3, False, "crashed", "died", "crashed"),
        (False, 137, True, "oom", "died", "oom"),
    ],
)
async def test_each_end_gets_its_reason_once(
    pool: asyncpg.Pool,
    deps: handlers.Deps,
    sched: scheduler.Deps,
    terminating: bool,
    code: int,
    oom: bool,
    said: str,
    state: str,
    reason: str,
) -> None:
    # worker0: an essential instance of an ephemeral execution (the monitor service is main0)
    ids = await _running(pool, will_end=True)
    if terminating:
        await scheduler.on_terminate(m.ExecutionTerminateRequested(execution_id=ids["eid"]), sched)
        await _verdicts(pool)
    fact = _exited(ids, "worker0", code, oom=oom)
    await handlers.on_exited(fact, deps)
    await handlers.on_exited(fact, deps)  # redelivered: the same verdict again
    verdicts = await _said(pool)
    assert [(v.instance_id, v.reason, v.exit_code) for v in verdicts] == [  # type: ignore[union-attr]
        (ids["worker0"], said, code)
    ] * 2
    await _decide(sched, verdicts)
    row = await _instance(pool, ids["worker0"])
    assert (row["state"], row["reason"], row["exit_code"]) == (state, reason, code)
    assert not row["removed"]  # the container still exists: the scheduler removes it

    # then the container is removed: recorded with its log, the end said already
    removed = m.InstanceRemoved(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker0"],
        container_name=f"zm-{ids['eid']}-worker0",
        exit_code=code,
        log="bye\n",
    )
    await handlers.on_removed(removed, deps)
    await handlers.on_removed(removed, deps)
    gone = await _said(pool)
    assert [v.gone for v in gone] == [True, True]  # type: ignore[union-attr]
    await _decide(sched, gone)
    row = await _instance(pool, ids["worker0"])
    assert row["removed"]
    assert (row["state"], row["reason"], row["exit_code"]) == (state, reason, code)
    log = await pool.fetchval(
        "SELECT log FROM instance_logs WHERE instance_id = $1", ids["worker0"]
    )
    assert log == "bye\n"


@pytest.mark.parametrize(("code", "outcome"), [(0, "finished"), (2, "failed")])
async def test_monitor_service_ends_an_ephemeral_execution(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps, code: int, outcome: str
) -> None:
    ids = await _running(pool, will_end=True)
    await handlers.on_exited(_exited(ids, "main0", code), deps)
    (ended,) = await _said(pool)
    assert isinstance(ended, m.InstanceEnded)
    assert ended.reason == ("exited" if code == 0 else "crashed")
    await _decide(sched, [ended])
    row = await _execution(pool, ids["eid"])
    assert (row["state"], row["outcome"], row["exit_code"]) == ("cleaning_up", outcome, code)
    if outcome == "failed":
        assert row["error"] == "essential instance main0 ended: crashed (exit code 2)"


async def test_monitor_service_of_a_long_running_execution_is_an_instance_like_others(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    """A long-running execution never ends by a service exiting: the scheduler decides
    (it may restart an essential instance; with no restarts allowed, it fails)."""
    ids = await _running(pool, will_end=False)
    await handlers.on_exited(_exited(ids, "main0", 137), deps)
    (verdict,) = await _said(pool)
    assert isinstance(verdict, m.InstanceEnded) and verdict.reason == "crashed"
    await _decide(sched, [verdict])
    row = await _execution(pool, ids["eid"])
    assert (row["state"], row["outcome"]) == ("cleaning_up", "failed")
    assert row["error"] == "essential instance main0 ended: crashed (exit code 137)"


async def test_stop_requested_for_the_monitor_service_ends_nothing(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    ids = await _running(pool, will_end=True)
    await scheduler.on_terminate(m.ExecutionTerminateRequested(execution_id=ids["eid"]), sched)
    await _verdicts(pool)
    await handlers.on_exited(_exited(ids, "main0", 143), deps)
    await _decide(sched, await _said(pool))
    assert (await _instance(pool, ids["main0"]))["reason"] == "stopped"
    row = await _execution(pool, ids["eid"])
    assert (row["state"], row["outcome"], row["error"]) == ("cleaning_up", "terminated", None)


async def test_facts_about_an_older_container_change_nothing(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    ids = await _running(pool, will_end=False)
    # the instance runs its second generation; facts about the first come late
    await pool.execute(
        "UPDATE instances SET container_name = container_name || '-r1', container_id = 'new'"
        " WHERE id = $1",
        ids["worker1"],
    )
    await handlers.on_exited(_exited(ids, "worker1", 137), deps)  # names the old container
    unnamed = m.InstanceExited(  # an older executor names no container: its id tells
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker1"],
        container_id="id-worker1",
        exit_code=137,
    )
    await handlers.on_exited(unnamed, deps)
    old_removed = m.InstanceRemoved(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker1"],
        container_name=f"zm-{ids['eid']}-worker1",
    )
    await handlers.on_removed(old_removed, deps)
    failed = m.InstanceStartFailed(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker1"],
        container_name=f"zm-{ids['eid']}-worker1",
        reason="late",
    )
    await handlers.on_start_failed(failed, deps)
    verdicts = await _said(pool)
    assert len(verdicts) == 4
    await _decide(sched, verdicts)
    row = await _instance(pool, ids["worker1"])
    assert (row["state"], row["removed"]) == ("running", False)
    assert await _verdicts(pool) == []  # the scheduler did nothing either


async def test_container_removed_behind_zoe_s_back_is_a_crash(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    ids = await _running(pool, will_end=True)
    gone = m.InstanceRemoved(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker0"],
        container_name=f"zm-{ids['eid']}-worker0",
        exit_code=137,
    )
    await handlers.on_removed(gone, deps)
    (verdict,) = await _said(pool)
    assert isinstance(verdict, m.InstanceEnded) and verdict.reason == "crashed"
    await _decide(sched, [verdict])
    row = await _instance(pool, ids["worker0"])
    assert (row["state"], row["reason"], row["removed"]) == ("died", "crashed", True)


async def test_start_failure_is_a_verdict_with_the_engine_s_reason(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    ids = await _running(pool, will_end=True)
    await pool.execute("UPDATE instances SET state = 'starting' WHERE id = $1", ids["worker0"])
    failed = m.InstanceStartFailed(
        node="n1",
        execution_id=ids["eid"],
        instance_id=ids["worker0"],
        container_name=f"zm-{ids['eid']}-worker0",
        reason="no such image",
    )
    await handlers.on_start_failed(failed, deps)
    await handlers.on_start_failed(failed, deps)
    verdicts = await _said(pool)
    assert [(v.reason, v.detail) for v in verdicts] == [("start-failed", "no such image")] * 2  # type: ignore[union-attr]
    await _decide(sched, verdicts)
    row = await _instance(pool, ids["worker0"])
    assert (row["state"], row["reason"], row["removed"]) == ("died", "start-failed", True)
    error = (await _execution(pool, ids["eid"]))["error"]
    assert error == "essential instance worker0 ended: start-failed: no such image"


async def test_silent_node_is_lost_once_and_its_containers_are_orphans(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps, clock: Clock
) -> None:
    ids = await _running(pool, will_end=False, node="n1")
    other = await _running(pool, will_end=False, node="n2")
    # on n1: main0 runs, worker0 is starting, worker1 ended and waits for its removal
    await pool.execute("UPDATE instances SET state = 'starting' WHERE id = $1", ids["worker0"])
    await pool.execute(
        "UPDATE instances SET state = 'died', reason = 'crashed' WHERE id = $1", ids["worker1"]
    )
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30), deps)
    clock.now += 2
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30), deps)
    assert await handlers.check_nodes(pool, deps, timeout=3) == []
    clock.now += 2  # n1 silent for 4 s, n2 for 2 s
    assert await handlers.check_nodes(pool, deps, timeout=3) == ["n1"]
    assert await handlers.check_nodes(pool, deps, timeout=3) == []  # said once
    verdicts = await _said(pool)
    assert verdicts == [m.NodeLost(id=verdicts[0].id, node="n1")]
    await _decide(sched, verdicts)

    states = dict(await pool.fetch("SELECT name, state FROM nodes"))
    assert states == {"n1": "lost", "n2": "up"}
    rows = await pool.fetch(
        "SELECT id, state, reason, removed FROM instances WHERE execution_id = $1", ids["eid"]
    )
    by_id = {r["id"]: r for r in rows}
    for name in ("main0", "worker0"):
        r = by_id[ids[name]]
        assert (r["state"], r["reason"], r["removed"]) == ("died", "node-lost", True)
    r = by_id[ids["worker1"]]  # it had ended already: only given up
    assert (r["state"], r["reason"], r["removed"]) == ("died", "crashed", True)
    # its essential instances died with it: the execution fails (no restarts allowed)
    assert (await _execution(pool, ids["eid"]))["outcome"] == "failed"
    orphans = await pool.fetch("SELECT node, container_name, instance_id FROM orphans")
    assert sorted((o["node"], o["instance_id"]) for o in orphans) == sorted(
        ("n1", ids[n]) for n in ("main0", "worker0", "worker1")
    )
    # n2's instances are untouched
    assert {
        r["state"]
        for r in await pool.fetch(
            "SELECT state FROM instances WHERE execution_id = $1", other["eid"]
        )
    } == {"running"}

    # a declaration repeated (another monitor, a retry) changes nothing
    await _verdicts(pool)
    await handlers.declare_lost(pool, "n1")
    await _decide(sched, await _said(pool))
    assert await _verdicts(pool) == []
    # n1 beats again: watched again, lost again after another silence
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    assert "n1" in deps.last_seen


async def test_liveness_beats_keep_a_node_alive_and_silence_still_loses_it(
    pool: asyncpg.Pool, deps: handlers.Deps, clock: Clock
) -> None:
    """Between two full heartbeats a node sends only `NodeAlive`: it counts as a
    heartbeat for liveness, and a node silent for the timeout is lost all the same."""
    await _running(pool, will_end=False, node="n1")
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n2", cores=4, memory=1 << 30), deps)
    for _ in range(5):  # 10 s of liveness beats alone from n1, nothing from n2
        clock.now += 2
        await handlers.on_alive_many([m.NodeAlive(node="n1"), m.NodeAlive(node="n4")], deps)
        lost = await handlers.check_nodes(pool, deps, timeout=3)
        assert "n1" not in lost
    assert "n2" not in deps.last_seen  # declared lost on the way
    clock.now += 4  # n1 (and n4, known from its liveness beats alone) fall silent too
    assert sorted(await handlers.check_nodes(pool, deps, timeout=3)) == ["n1", "n4"]
    # a liveness beat after a stop does not cut the restart's grace short
    deps.restart_grace = 60
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n3", cores=4, memory=1 << 30, stopping=True), deps
    )
    await handlers.on_alive(m.NodeAlive(node="n3"), deps)
    clock.now += 30
    assert await handlers.check_nodes(pool, deps, timeout=10) == []


async def test_beats_of_several_nodes_sent_together_count_for_each(
    pool: asyncpg.Pool, deps: handlers.Deps, clock: Clock
) -> None:
    """A process of hollow nodes sends its nodes' beats together (`NodeHeartbeats`,
    `NodesAlive`): each node counts as heard, one left out is lost all the same, and a
    stopping node's grace is kept."""
    beats = m.NodeHeartbeats(
        sender="p",
        beats=[m.NodeHeartbeat(node=n, cores=4, memory=1 << 30) for n in ("h1", "h2", "h3")],
    )
    await handlers.on_heartbeats(beats, deps)
    deps.restart_grace = 60
    stopping = m.NodeHeartbeat(node="h4", cores=4, memory=1 << 30, stopping=True)
    await handlers.on_heartbeats(m.NodeHeartbeats(sender="p", beats=[stopping]), deps)
    for _ in range(5):  # h2 falls silent
        clock.now += 2
        await handlers.on_nodes_alive(m.NodesAlive(sender="p", nodes=["h1", "h3", "h4"]), deps)
        lost = await handlers.check_nodes(pool, deps, timeout=3)
        assert not {"h1", "h3", "h4"} & set(lost)
    assert sorted(deps.last_seen) == ["h1", "h3", "h4"]  # h2 declared lost on the way
    clock.now += 30
    assert sorted(await handlers.check_nodes(pool, deps, timeout=10)) == ["h1", "h3"]


async def test_no_node_is_lost_while_the_monitor_could_not_hear(
    pool: asyncpg.Pool, deps: handlers.Deps, clock: Clock
) -> None:
    await _running(pool, will_end=False, node="n1")
    await handlers.on_heartbeat(m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30), deps)
    clock.now += 60  # the broker was down for a minute
    handlers.grant_grace(deps)
    assert await handlers.check_nodes(pool, deps, timeout=3) == []
    clock.now += 4
    assert await handlers.check_nodes(pool, deps, timeout=3) == ["n1"]


async def test_usage_from_heartbeats_is_stored_and_shown_with_the_execution(
    pool: asyncpg.Pool, deps: handlers.Deps
) -> None:
    ids = await _running(pool, will_end=False)
    usage = [
        m.ContainerUsage(instance_id=ids["main0"], cpu_percent=12.5, memory_bytes=3 * MiB),
        m.ContainerUsage(instance_id=10**9, cpu_percent=1.0, memory_bytes=MiB),  # unknown
    ]
    beat = m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30, usage=usage, sent_at=1.7e9)
    await handlers.on_heartbeat(beat, deps)
    assert await handlers.store_usage(pool, deps) == 2
    assert await handlers.store_usage(pool, deps) == 0  # each sample is written once
    later = m.ContainerUsage(instance_id=ids["main0"], cpu_percent=50.0, memory_bytes=4 * MiB)
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="n1", cores=4, memory=1 << 30, usage=[later], sent_at=1.7e9 + 10),
        deps,
    )
    await handlers.store_usage(pool, deps)

    shown = await api_store.get_execution(pool, ids["eid"])
    by_name = {s["name"]: s["usage"] for s in shown["services"]}
    assert by_name["worker0"] is None  # no sample yet
    assert by_name["main0"]["cpu_percent"] == 50.0
    assert by_name["main0"]["memory_bytes"] == 4 * MiB
    assert by_name["main0"]["sampled_at"].startswith("2023-11-14T22:13:30")
    assert await pool.fetchval("SELECT count(*) FROM instance_usage") == 1


async def test_a_log_with_nul_bytes_is_kept_and_the_cleanup_finishes(
    pool: asyncpg.Pool, deps: handlers.Deps, sched: scheduler.Deps
) -> None:
    """PostgreSQL refuses NUL in text: the log is kept without it, and the removal still
    counts (an execution must not stay cleaning up for ever)."""
    ids = await _running(pool, will_end=True)
    await scheduler.on_terminate(m.ExecutionTerminateRequested(execution_id=ids["eid"]), sched)
    for name in ("main0", "worker0", "worker1"):
        removed = m.InstanceRemoved(
            node="n1",
            execution_id=ids["eid"],
            instance_id=ids[name],
            container_name=f"zm-{ids['eid']}-{name}",
            exit_code=143,
            log="binary \x00 junk \ud800 end\n",
        )
        await handlers.on_removed(removed, deps)
    await _decide(sched, await _said(pool), times=1)
    assert (await _execution(pool, ids["eid"]))["state"] == "terminated"
    log = await pool.fetchval("SELECT log FROM instance_logs WHERE instance_id = $1", ids["main0"])
    assert log == "binary  junk ? end\n"


async def test_a_node_whose_executor_said_it_stops_is_given_its_restart_grace(
    pool: asyncpg.Pool, clock: Clock
) -> None:
    """A clean stop (a restart) ends with a ``stopping`` heartbeat: the node's silence
    counts only after the restart grace, so a slow restart fails nothing."""
    deps = handlers.Deps(
        pool=pool, last_seen={}, clock=clock, say=_kept_in_outbox(pool), restart_grace=60
    )
    await handlers.on_heartbeat(m.NodeHeartbeat(node="r1", cores=4, memory=1 << 30), deps)
    await handlers.on_heartbeat(m.NodeHeartbeat(node="r2", cores=4, memory=1 << 30), deps)
    await handlers.on_heartbeat(
        m.NodeHeartbeat(node="r1", cores=4, memory=1 << 30, stopping=True), deps
    )
    clock.now += 30
    assert await handlers.check_nodes(pool, deps, timeout=10) == ["r2"]  # r1 restarts
    handlers.grant_grace(deps)  # a broker outage meanwhile keeps the longer grace
    clock.now += 35
    assert await handlers.check_nodes(pool, deps, timeout=10) == []
    clock.now += 10  # 75 s: past the grace and the timeout, and it never came back
    assert await handlers.check_nodes(pool, deps, timeout=10) == ["r1"]

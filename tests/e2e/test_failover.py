"""End to end: a standby scheduler takes over when the active one dies under load."""

from __future__ import annotations

import asyncio

import aiodocker
import asyncpg
import pytest

from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import (
    SERVE_FOREVER,
    Platform,
    ServiceProcess,
    container_creates,
    containers_of,
    service,
    zapp,
)
from tests.e2e.test_failures import log_events, terminate, wait_log

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
EXECUTIONS = 20


async def test_standby_scheduler_takes_over_and_every_execution_runs_once(
    platform: Platform, docker: aiodocker.Docker, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    active = platform["scheduler"]
    env = {**active.env, "ZOE_METRICS_PORT": "0"}  # both run at once: not the same port
    standby = ServiceProcess("scheduler-standby", active.module, env, active.log_path.parent)
    took_over = len(log_events(standby.log_path, "scheduler.active"))
    standby.start()
    try:
        await wait_log(standby, "scheduler.standby", count=1 + took_over)
        # every container created while the block runs, from a live event stream
        async with container_creates(test_env) as creates:
            app = zapp(
                "failover",
                service("server", SERVE_FOREVER, total=2, cores=0.04, memory=16 * MiB),
                will_end=False,
            )
            submitted = await asyncio.gather(
                *(platform.submit(app, name=f"load{i}") for i in range(EXECUTIONS))
            )
            ids = [e["id"] for e in submitted]
            # kill it in the middle: some executions run, the others are starting
            await wait_for(
                lambda: _running(pool, ids), timeout=60, interval=0.02, what="one running"
            )
            active.kill()  # SIGKILL: no goodbye, its lock goes with its connection
            assert await _running(pool, ids) < EXECUTIONS, "too late: every execution runs already"
            await wait_log(standby, "scheduler.active", count=1 + took_over, timeout=15)

            for eid in ids:
                await platform.wait_state(eid, "running", timeout=120)
            await wait_for(
                lambda: _all_instances_running(pool, ids),
                timeout=120,
                what="every instance running",
            )
            # exactly once: one container per instance, never created twice, never restarted
            for eid in ids:
                names = sorted(
                    c["Names"][0].lstrip("/") for c in await containers_of(docker, test_env, eid)
                )
                assert names == [f"{test_env.deployment}-{eid}-server{i}" for i in (0, 1)]
            wanted = {f"{test_env.deployment}-{eid}-server{i}" for eid in ids for i in (0, 1)}
            assert {n: c for n, c in creates.items() if n in wanted} == dict.fromkeys(wanted, 1)
            restarts = await pool.fetchval(
                "SELECT sum(restart_count) FROM instances WHERE execution_id = ANY($1::bigint[])",
                ids,
            )
            assert restarts == 0
            await terminate(platform, *ids)
            for eid in ids:
                assert await containers_of(docker, test_env, eid) == []
    finally:
        # the platform's own scheduler back as the active one
        restart = not active.alive
        seen = len(log_events(active.log_path, "scheduler.active"))
        if restart:
            active.start()
        standby.stop()
        if restart:
            await wait_log(active, "scheduler.active", count=seen + 1, timeout=30)


async def _all_instances_running(pool: asyncpg.Pool, ids: list[int]) -> bool:
    states = await pool.fetch(
        "SELECT state, count(*) FROM instances WHERE execution_id = ANY($1::bigint[])"
        " GROUP BY state",
        ids,
    )
    return dict(states) == {"running": 2 * len(ids)}  # type: ignore[no-any-return]


async def _running(pool: asyncpg.Pool, ids: list[int]) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM executions WHERE id = ANY($1::bigint[]) AND state = 'running'", ids
    )
    return n

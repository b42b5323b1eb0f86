"""End to end: the database fails over to its standby under load, and nothing
acknowledged is lost.

The platform of this module runs on a PostgreSQL primary of its own with a streaming
standby in synchronous mode (a commit returns once the standby has it), and
``ZOE_DATABASE_URL`` lists both with ``target_session_attrs=read-write``. While a client
submits an execution every 0.2 s (retrying a 503 with the same Idempotency-Key), the
primary crashes ("immediate") and the standby is promoted: every acknowledged submission
is on the new primary and runs to its end, the scheduler leads again there, no service
died and nothing was dead-lettered.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common import db
from services.scheduler.service import acquire_leadership
from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import ROOT, Platform, dead_letters, platform_on, service, zapp
from tests.private_postgres import PrivatePostgres

pytestmark = pytest.mark.e2e

SYNCHRONOUS = {"synchronous_standby_names": "*", "synchronous_commit": "on"}


@dataclass
class Pair:
    """A primary and its streaming standby."""

    primary: PrivatePostgres
    standby: PrivatePostgres

    def url(self, database: str) -> str:
        hosts = f"{self.primary.address},{self.standby.address}"
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"


@pytest.fixture(scope="module")
def replicated_pg(test_env: TestEnv) -> Iterator[Pair]:
    base = ROOT / "var" / "test-postgres" / f"{test_env.run_id}-ha"
    primary = PrivatePostgres(base / "primary", SYNCHRONOUS)
    standby: PrivatePostgres | None = None
    try:
        primary.start()
        standby = primary.standby(base / "standby")
        standby.start()
        primary.wait_streaming(standby)
        yield Pair(primary, standby)
    finally:
        primary.remove()
        if standby is not None:
            standby.remove()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
async def ha_platform(
    test_env: TestEnv, replicated_pg: Pair, base_image: str, log_dir: Path
) -> AsyncIterator[Platform]:
    async with platform_on(test_env, "ha", replicated_pg.url("zoe"), log_dir) as p:
        yield p


@dataclass
class Submitter:
    """A client submitting a batch execution (one second long) every ``interval``
    seconds until stopped; a 503 is retried with the same Idempotency-Key, anything
    else but a 201 or 200 (a retry that found the first attempt's execution) is kept
    as a failure."""

    platform: Platform
    interval: float = 0.2
    acknowledged: list[tuple[float, int]] = field(default_factory=list)  # (when, id)
    unavailable: int = 0
    failures: list[tuple[int, object]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"stream-{n}"
            body = {"name": name, "application": zapp(name, service("job", "sleep 1; exit 0"))}
            key = {"Idempotency-Key": uuid.uuid4().hex}
            while True:
                status, answer = await self.platform.acall("POST", "/executions", body, key)
                if status != 503:
                    break
                self.unavailable += 1
                await asyncio.sleep(self.interval)
            if status in (200, 201):
                self.acknowledged.append((time.monotonic(), answer["id"]))
            else:
                self.failures.append((status, answer))
            await asyncio.sleep(self.interval)

    def since(self, moment: float) -> list[int]:
        return [eid for when, eid in self.acknowledged if when > moment]


async def test_the_scheduler_takes_no_lock_on_a_standby(replicated_pg: Pair) -> None:
    # a URL naming the standby alone: it grants advisory locks that exclude nobody
    stop = asyncio.Event()
    task = asyncio.create_task(acquire_leadership(replicated_pg.standby.url + "postgres", stop))
    done, _ = await asyncio.wait({task}, timeout=2)
    assert not done, "a lock taken on a standby made a leader"
    stop.set()
    assert await asyncio.wait_for(task, 10) is None


async def test_a_failover_under_load_loses_no_acknowledged_submission(
    ha_platform: Platform, replicated_pg: Pair
) -> None:
    platform = ha_platform
    client = Submitter(platform)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(client.run())
        await wait_for(lambda: len(client.acknowledged) >= 10, timeout=60, what="submissions")
        async with db.pool(platform.env.database_url, max_size=1) as pool:
            underway = await wait_for(
                lambda: pool.fetchval("SELECT count(*) FROM executions WHERE state <> 'finished'"),
                timeout=30,
                what="executions underway when the primary crashes",
            )
        await asyncio.to_thread(replicated_pg.primary.stop_server, mode="immediate")
        crashed = time.monotonic()
        # the platform meets the outage before the operator promotes the standby:
        # clients are told to come back, the scheduler's term ends with its lock
        await wait_for(lambda: client.unavailable >= 3, timeout=30, what="503s")
        await wait_for(
            lambda: "scheduler.lost_leadership" in platform["scheduler"].log_path.read_text(),
            timeout=30,
            what="the scheduler loses its lock",
        )
        await asyncio.to_thread(replicated_pg.standby.promote)
        promoted = time.monotonic()
        await wait_for(
            lambda: len(client.since(promoted)) >= 10, timeout=120, what="submissions again"
        )
        client.stop.set()
    assert client.failures == []
    first_after = min(when for when, _ in client.acknowledged if when > promoted)
    acknowledged = [eid for _, eid in client.acknowledged]
    assert len(set(acknowledged)) == len(acknowledged)

    # the promoted standby is the new primary, where the platform's URL leads now:
    # every acknowledged execution is there, and every execution it holds runs to its
    # end (the scheduler leads again on it)
    async with db.pool(platform.env.database_url, max_size=2) as pool:
        assert await pool.fetchval("SELECT inet_server_port()") == replicated_pg.standby.port
        rows = await pool.fetch("SELECT id FROM executions WHERE id = ANY($1)", acknowledged)
        assert {r["id"] for r in rows} == set(acknowledged), "an acknowledged submission is lost"

        async def settled() -> bool:
            states = await pool.fetch("SELECT state, count(*) AS n FROM executions GROUP BY 1")
            return {r["state"] for r in states} == {"finished"}

        await wait_for(settled, timeout=180, interval=0.5, what="every execution finished")
        converged = time.monotonic()
        total = await pool.fetchval("SELECT count(*) FROM executions")
    assert all(s.alive for s in platform.services.values()), "a service died of the failover"
    assert await dead_letters(platform.env.amqp_url) == []
    print(
        f"\nacknowledged {len(acknowledged)} ({len(client.since(promoted))} after the"
        f" promotion), {underway} underway at the crash, {client.unavailable} answers 503,"
        f" {total} executions in all;"
        f" down {first_after - crashed:.1f} s from the crash to the first acknowledgement"
        f" after the promotion ({promoted - crashed:.1f} s before it);"
        f" every execution finished {converged - promoted:.1f} s after the promotion"
    )

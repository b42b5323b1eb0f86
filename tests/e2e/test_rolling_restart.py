"""End to end: every service restarted in turn under a steady stream of submissions.

Each restart is the operator's (deploy/restart.sh): SIGTERM, wait for the exit, start
again, wait until ready. Meanwhile a client submits an execution every 0.3 s with an
Idempotency-Key, retrying a 503 or a refused connection with the same key. Nothing
acknowledged may be lost, nothing may be created or started twice, nothing may be
dead-lettered, and a submission made while the scheduler hands over to its standby runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from tests.conftest import TestEnv, wait_for
from tests.e2e.conftest import (
    Platform,
    ServiceProcess,
    _free_port,
    container_creates,
    dead_letters,
    service,
    zapp,
)
from tests.e2e.test_failures import log_events, wait_log

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
INTERVAL = 0.3  # between two submissions
NAME = "rolling"
JOB = zapp("rolling", service("job", "exit 0", monitor=True, cores=0.05, memory=16 * MiB))


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    """The status of one request; OSError when nothing answers (or the answer is cut)."""
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


async def _status(url: str) -> int | None:
    """GET ``url``'s status, None while nothing answers."""
    try:
        return await asyncio.to_thread(_http, url)
    except OSError:
        return None


@dataclass
class Submitter:
    """Submits one execution every INTERVAL seconds, each under a key of its own, and
    retries each until it is acknowledged: ``acked`` maps key -> (execution id, when)."""

    platform: Platform
    acked: dict[str, tuple[int, float]] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def _post(self, key: str) -> tuple[int, Any]:
        body = json.dumps({"name": f"{NAME}-{key}", "application": JOB}).encode()
        req = urllib.request.Request(self.platform.url + "/executions", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Idempotency-Key", key)
        req.add_header("Authorization", f"Bearer {self.platform.env.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    async def submit(self, key: str | None = None) -> int:
        """One submission, retried with the same key until acknowledged (2 minutes)."""
        key = key or uuid.uuid4().hex

        async def attempt() -> int | None:
            try:
                status, body = await asyncio.to_thread(self._post, key)
            except OSError as exc:  # refused, reset, timed out: the api is restarting
                status, body = 0, repr(exc)
            if status in (200, 201):
                self.acked[key] = (int(body["id"]), time.time())
                return int(body["id"])
            assert status in (0, 503), f"submission {key}: {status} {body}"
            self.retries[key] += 1
            return None

        eid: int = await wait_for(
            attempt, timeout=120, interval=0.2, what=f"submission {key} acknowledged"
        )
        return eid

    async def run(self) -> None:
        while not self.stop.is_set():
            await self.submit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), INTERVAL)


async def _stop(proc: ServiceProcess, *, signalled: bool = False) -> None:
    """SIGTERM (unless sent already) and wait for the exit, off the event loop so the
    submitter keeps going. One signal only: a second one may land after the process
    closed its loop, when SIGTERM kills it again."""
    assert proc.proc is not None
    if not signalled:
        proc.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.proc.wait, 60)
    # exited by itself, having drained, not killed by the signal
    assert code == 0, f"{proc.name} exited with {code}"


async def _restart(proc: ServiceProcess, ready: Callable[[], Awaitable[bool]]) -> None:
    await _stop(proc)
    proc.start()
    await wait_for(ready, timeout=60, interval=0.2, what=f"{proc.name} ready again")


def _ready(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _status(url + "/readyz") == 200

    return check


def _standby(proc: ServiceProcess, url: str, seen: int) -> Callable[[], Awaitable[bool]]:
    """Alive, and its log holds one more ``scheduler.standby`` line than ``seen``."""

    async def check() -> bool:
        standing = len(log_events(proc.log_path, "scheduler.standby")) > seen
        return standing and await _status(url + "/healthz") == 200

    return check


def _stamp(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


async def test_rolling_restart_loses_nothing_and_starts_nothing_twice(
    platform: Platform, test_env: TestEnv, pool: asyncpg.Pool
) -> None:
    active = platform["scheduler"]
    standby_url = f"http://127.0.0.1:{_free_port()}"
    standby = ServiceProcess(
        "scheduler-standby",
        active.module,
        {**active.env, "ZOE_METRICS_PORT": standby_url.rpartition(":")[2]},
        active.log_path.parent,
    )
    stood_by = len(log_events(standby.log_path, "scheduler.standby"))
    # (The executor's restart is no lost node even when it takes longer than the 10 s
    # node timeout, on a busy host: its last heartbeat says it stops, and the monitor
    # waits ZOE_NODE_RESTART_GRACE for it.)
    standby.start()
    try:
        await wait_for(
            _standby(standby, standby_url, stood_by),
            timeout=60,
            interval=0.2,
            what="the standby scheduler standing by",
        )
        await dead_letters(test_env.amqp_url)  # what earlier tests left is not ours
        async with container_creates(test_env) as creates:
            await _roll(platform, test_env, pool, standby, standby_url, creates)
    finally:
        # the platform's own scheduler back as the leader, for the tests after this one
        standby.stop()
        if not active.alive:
            active.start()
        url = platform.probe_urls["scheduler"]
        await wait_for(_ready(url), timeout=60, interval=0.2, what="the scheduler leads again")


async def _roll(
    platform: Platform,
    test_env: TestEnv,
    pool: asyncpg.Pool,
    standby: ServiceProcess,
    standby_url: str,
    creates: Counter[str],
) -> None:
    active, url = platform["scheduler"], platform.probe_urls
    submitter = Submitter(platform)
    stream = asyncio.create_task(submitter.run())
    try:
        await wait_for(lambda: len(submitter.acked) >= 3, timeout=60, what="a steady stream")

        # the standby first: it holds nothing
        seen = len(log_events(standby.log_path, "scheduler.standby"))
        await _restart(standby, _standby(standby, standby_url, seen))

        # the active one: the standby takes over; one submission made right after the
        # SIGTERM, while the active one drains and before the standby leads, must run
        took_over = len(log_events(standby.log_path, "scheduler.active"))
        stood_by = len(log_events(active.log_path, "scheduler.standby"))
        assert active.proc is not None
        sigterm = time.time()
        active.proc.send_signal(signal.SIGTERM)
        during = await submitter.submit()
        await _stop(active, signalled=True)
        await wait_log(standby, "scheduler.active", count=took_over + 1, timeout=60)
        await wait_for(_ready(standby_url), timeout=60, interval=0.2, what="the new leader ready")
        active.start()
        await wait_for(
            _standby(active, url["scheduler"], stood_by),
            timeout=60,
            interval=0.2,
            what="the old leader standing by",
        )
        drained = [
            _stamp(r)
            for r in log_events(active.log_path, "service.draining")
            if _stamp(r) >= sigterm
        ]
        leads = _stamp(log_events(standby.log_path, "scheduler.active")[-1])
        gap = leads - drained[0]
        acked_at = next(t for eid, t in submitter.acked.values() if eid == during)
        print(
            f"handover: draining -> standby active in {gap:.3f}s; the submission made"
            f" meanwhile acknowledged {acked_at - sigterm:.3f}s after the SIGTERM,"
            f" the standby leading {leads - sigterm:.3f}s after it"
        )

        for name in ("monitor", "executor", "api"):
            await _restart(platform[name], _ready(url[name]))
        after = len(submitter.acked)  # the stream flows again through the new api
        await wait_for(lambda: len(submitter.acked) >= after + 3, timeout=60, what="more")
    finally:
        submitter.stop.set()
        await asyncio.wait_for(stream, timeout=150)
        for proc in platform.services.values():
            if not proc.alive:
                proc.start()

    await _check(platform, test_env, pool, submitter, creates, during)
    for name in ("api", "monitor", "executor"):
        assert await _status(url[name] + "/readyz") == 200, name
    assert await _status(standby_url + "/readyz") == 200, "the standby leads now"
    assert await _status(url["scheduler"] + "/readyz") == 503, "the old leader stands by"
    assert await _status(url["scheduler"] + "/healthz") == 200


async def _check(
    platform: Platform,
    env: TestEnv,
    pool: asyncpg.Pool,
    submitter: Submitter,
    creates: Counter[str],
    during: int,
) -> None:
    acked = {key: eid for key, (eid, _) in submitter.acked.items()}
    ids = sorted(acked.values())
    print(
        f"acknowledged {len(ids)} submissions, {sum(submitter.retries.values())} retries"
        f" over {len(submitter.retries)} of them"
    )
    assert len(set(ids)) == len(ids), "two keys acknowledged with the same execution"
    # in the database once each: one execution per key, no other of this test's name
    rows = await pool.fetch("SELECT id, request_id FROM executions WHERE name LIKE $1", f"{NAME}-%")
    assert {r["request_id"]: r["id"] for r in rows} == acked
    assert len(rows) == len(acked)
    assert during in ids

    async def all_ended() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM executions WHERE id = ANY($1::bigint[])"
            " AND state IN ('finished', 'failed', 'terminated', 'error')",
            ids,
        )
        return bool(n == len(ids))

    await wait_for(all_ended, timeout=300, interval=0.5, what="every acknowledged execution ended")
    states = await pool.fetch(
        "SELECT state, count(*) FROM executions WHERE id = ANY($1::bigint[]) GROUP BY state", ids
    )
    assert dict(states) == {"finished": len(ids)}
    instances = await pool.fetch(
        "SELECT execution_id, restart_count FROM instances WHERE execution_id = ANY($1::bigint[])",
        ids,
    )
    assert sorted(r["execution_id"] for r in instances) == ids
    assert all(r["restart_count"] == 0 for r in instances)

    # started once: one container created per execution (Docker's events), and one
    # `instance.started` per container in the executor's log
    wanted = {f"{env.deployment}-{eid}-job0" for eid in ids}
    await wait_for(lambda: wanted <= set(creates), timeout=30, what="every create event read")
    assert {n: c for n, c in creates.items() if n in wanted} == dict.fromkeys(wanted, 1)
    started = Counter(
        r.get("container")
        for r in log_events(platform["executor"].log_path, "instance.started")
        if "via" not in r  # the command's line, not an engine event's report
    )
    assert {n: c for n, c in started.items() if n in wanted} == dict.fromkeys(wanted, 1)
    assert await dead_letters(env.amqp_url) == []

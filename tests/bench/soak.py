"""Soak: minutes of mixed load while faults happen, then a checker. Not a test.

    python tests/bench/soak.py --minutes 3 --json

The whole platform as deployed (api, scheduler, monitor: each its own process; the
executors are ``--nodes`` hollow ones in one more process), on a RabbitMQ node and a
PostgreSQL server of the run's own (the machine's shared ones are never touched), for
``--minutes`` of load:

- submissions over HTTP of small long-running ZApps (a monitor service and elastic
  workers) and ephemeral ones (their monitor service exits 0 after a few seconds: the
  hollow process runs with ``--play-commands``), each with an ``Idempotency-Key`` and
  retried with it while the api does not answer;
- terminations of random running executions;
- bad requests: over HTTP (malformed JSON, unknown fields, unknown ids: 4xx expected)
  and over the AMQP request interface (malformed JSON, unknown type, a field of the
  wrong type: dead-lettered, expected; a get of an unknown id: an error reply).

Faults at random times (``--seed``), spread over the load: SIGKILL of each service
process (api, scheduler, monitor, the hollow executors' process) and its restart, a
restart of the RabbitMQ node and one of PostgreSQL (each down ``--down`` seconds);
``--rounds`` of them. A service that exits by itself is restarted too (as a supervisor
would) and counted. The hollow process keeps a journal of its containers
(``--journal``), so a killed one finds them again as Docker would, and the checker can
count how often each container name was started.

Then faults and load stop and the platform settles (polled, ``--settle`` seconds at
most), and the checker reads the database, the broker's dead-letter queue and the
hollow journal. It prints every invariant with whether it held; the exit code is 0
whatever they show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common import db, routes
from common import messages as m
from common.states import EXECUTION_FINAL, INSTANCE_HOLDING
from services.executor.hollow import HollowJournal
from tests.bench._platform import (
    BenchPlatform,
    busybox_service,
    cpu_seconds,
    machine,
    pids_with_env,
)

SERVICES = ("api", "scheduler", "monitor", "hollow")
FAULTS = (*SERVICES, "rabbitmq", "postgres")
TRANSITIONAL = ("submitted", "starting", "cleaning_up")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
RETRY_FOR = 60.0  # seconds a submission or termination is retried while unanswered
MAX_ATTEMPTS = 40
MAX_RESTARTS = 20  # unexpected exits of one service restarted by the supervisor
RESTART_DELAY = 1.0  # seconds the supervisor waits before restarting an exited service
BAD_PREFIX = "soak-bad-"
VALID_BAD = f"{BAD_PREFIX}unknown_id_get-"  # a valid request of an unknown id: a 404 reply


# ---- ZApps ------------------------------------------------------------------------------


def _soak_zapp(
    name: str, main: str, main_command: str, *, will_end: bool, workers: int
) -> dict[str, Any]:
    """A monitor service ``main`` running ``main_command`` and a service of ``workers`` instances
    (one essential, the others elastic)."""

    def one(service: str, command: str, total: int, monitor: bool) -> dict[str, Any]:
        return busybox_service(
            service,
            command=command,
            monitor=monitor,
            essential=1,
            total=total,
            min_cores=0.1,
            min_memory=32 << 20,
        )

    services = [one(main, main_command, 1, True)]
    services.append(one("worker", "sleep 3600", workers, False))
    return {"name": name, "version": 3, "will_end": will_end, "size": 1, "services": services}


def long_running() -> dict[str, Any]:
    """A notebook-like ZApp: a monitor service and a service of elastic workers."""
    return _soak_zapp("soak-lr", "main", "sleep 3600", will_end=False, workers=3)


def ephemeral(seconds: float) -> dict[str, Any]:
    """A batch-like ZApp: its monitor service exits 0 after ``seconds``; a worker."""
    return _soak_zapp("soak-eph", "job", f"sleep {seconds:.1f}", will_end=True, workers=2)


# ---- what the load did ------------------------------------------------------------------


@dataclass
class Submission:
    """One submission (one idempotency key), retried until answered."""

    key: str
    kind: str  # long | ephemeral
    sent: float
    attempts: int = 0
    status: int | None = None  # the answer that ended the attempts
    execution_id: int | None = None
    answered: float | None = None


@dataclass
class Record:
    """Everything the load and the faults did, for the checker and the figures."""

    t0: float = field(default_factory=time.monotonic)
    submissions: list[Submission] = field(default_factory=list)
    terminations: dict[int, int] = field(default_factory=dict)  # id -> answer status
    # every execution a termination was sent for (an answer lost to a fault, then 409 on
    # the retry, may hide a termination that happened)
    terminate_sent: set[int] = field(default_factory=set)
    termination_errors: int = 0
    bad_http: Counter[str] = field(default_factory=Counter)  # "kind:status"
    bad_amqp_sent: Counter[str] = field(default_factory=Counter)  # confirmed publishes
    bad_amqp_unsent: Counter[str] = field(default_factory=Counter)  # not confirmed
    amqp_replies: Counter[int] = field(default_factory=Counter)
    faults: list[dict[str, Any]] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # services being killed by a fault

    def at(self) -> float:
        return round(time.monotonic() - self.t0, 2)


# ---- the load ---------------------------------------------------------------------------


async def _retrying(attempt: Callable[[], Awaitable[bool]], deadline: float) -> tuple[int, bool]:
    """Call ``attempt`` until it returns True (answered), ``MAX_ATTEMPTS`` or ``deadline``;
    returns (attempts, answered). Connection errors and timeouts count as unanswered."""
    delay = 0.2
    for n in range(1, MAX_ATTEMPTS + 1):
        try:
            if await attempt():
                return n, True
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() + delay > deadline:
            return n, False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return MAX_ATTEMPTS, False


async def submit(
    session: aiohttp.ClientSession, api: str, rec: Record, kind: str, key: str, seconds: float
) -> None:
    """Submit one ZApp; retried with the same key while the api does not answer (or
    answers 5xx), so one key makes at most one execution."""
    app = long_running() if kind == "long" else ephemeral(seconds)
    body = {"name": f"soak-{kind}", "application": app}
    sub = Submission(key, kind, time.time())
    rec.submissions.append(sub)

    async def attempt() -> bool:
        sub.attempts += 1
        headers = {"Idempotency-Key": key}
        async with session.post(
            f"{api}/executions", json=body, headers=headers, timeout=REQUEST_TIMEOUT
        ) as r:
            if r.status >= 500:
                return False
            sub.status, sub.answered = r.status, time.time()
            if r.status in (200, 201):
                sub.execution_id = int((await r.json())["id"])
            return True

    await _retrying(attempt, time.monotonic() + RETRY_FOR)


async def terminate(
    session: aiohttp.ClientSession, api: str, rec: Record, execution_id: int
) -> None:
    """Ask for one execution's termination (idempotent: retried while unanswered)."""

    rec.terminate_sent.add(execution_id)

    async def attempt() -> bool:
        url = f"{api}/executions/{execution_id}/terminate"
        async with session.post(url, timeout=REQUEST_TIMEOUT) as r:
            if r.status >= 500:
                return False
            rec.terminations[execution_id] = r.status
            return True

    _, answered = await _retrying(attempt, time.monotonic() + RETRY_FOR)
    if not answered:
        rec.termination_errors += 1


async def bad_http(
    session: aiohttp.ClientSession, api: str, rec: Record, rng: random.Random
) -> None:
    """One bad request over HTTP: 4xx expected. Not retried (nothing to keep)."""
    kind = rng.choice(["malformed_json", "unknown_field", "unknown_id_get", "unknown_id_terminate"])
    unknown = 10**12 + rng.randrange(10**6)
    try:
        if kind == "malformed_json":
            headers = {"Content-Type": "application/json"}
            call = session.post(
                f"{api}/executions",
                data=b'{"name": "x", ',
                headers=headers,
                timeout=REQUEST_TIMEOUT,
            )
        elif kind == "unknown_field":
            body = {"name": "x", "application": long_running(), "colour": "blue"}
            call = session.post(f"{api}/executions", json=body, timeout=REQUEST_TIMEOUT)
        elif kind == "unknown_id_get":
            call = session.get(f"{api}/executions/{unknown}", timeout=REQUEST_TIMEOUT)
        else:
            call = session.post(f"{api}/executions/{unknown}/terminate", timeout=REQUEST_TIMEOUT)
        async with call as r:
            await r.read()
            rec.bad_http[f"{kind}:{r.status}"] += 1
    except (aiohttp.ClientError, TimeoutError):
        rec.bad_http[f"{kind}:unanswered"] += 1


class AmqpClient:
    """The soak's own connection to the broker: bad requests to ``api.requests`` (with
    confirms, so a request counts only once the broker has it) and their replies."""

    def __init__(self, url: str, rec: Record) -> None:
        self._url = url
        self._rec = rec
        self.token = ""  # whose requests they are (the admin's, once the platform exists)
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._replies = ""
        self._count = 0

    async def open(self) -> None:
        self._conn = await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": "soak"}
        )
        self._channel = await self._conn.channel(publisher_confirms=True)
        queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        self._replies = queue.name
        await queue.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 10)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            self._rec.amqp_replies[int(json.loads(message.body)["status"])] += 1

    async def bad_request(self, rng: random.Random) -> None:
        """One bad request; a get of an unknown id is valid and answered (404 reply)."""
        self._count += 1
        kind = rng.choice(["malformed_json", "unknown_type", "wrong_field_type", "unknown_id_get"])
        body = {
            "malformed_json": b'{"type": "api.submit", "name": ',
            "unknown_type": json.dumps({"type": "api.frobnicate", "id": "x"}).encode(),
            "wrong_field_type": json.dumps({"type": "api.get", "execution_id": "abc"}).encode(),
            "unknown_id_get": m.encode(m.GetRequest(execution_id=10**12 + self._count)),
        }[kind]
        msg = aio_pika.Message(
            body,
            message_id=f"{BAD_PREFIX}{kind}-{self._count}",
            reply_to=self._replies,
            correlation_id=str(self._count),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"zoe-token": self.token},
        )
        try:
            assert self._channel is not None
            await asyncio.wait_for(
                self._channel.default_exchange.publish(msg, routing_key="api.requests"), 10
            )
        except Exception:
            # the broker is down or did not confirm: it may still have it
            self._rec.bad_amqp_unsent[kind] += 1
            return
        self._rec.bad_amqp_sent[kind] += 1


async def load(
    args: argparse.Namespace,
    plat: BenchPlatform,
    rec: Record,
    amqp: AmqpClient,
    rng: random.Random,
    until: float,
) -> None:
    """Actions at ``--rate`` per second (exponential gaps) until ``until``; each one a
    task of this group, so the load ends when the last retry has ended."""
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    actions = ["long", "ephemeral", "terminate", "bad_http", "bad_amqp"]
    weights = [3, 3, 2, 1.5, 1]
    async with (
        aiohttp.ClientSession(connector=connector, headers=plat.headers) as session,
        asyncio.TaskGroup() as tg,
    ):
        for n in range(10**6):
            if time.monotonic() >= until:
                break
            action = rng.choices(actions, weights)[0]
            if action in ("long", "ephemeral"):
                key = f"{plat.run_id}-{n}"
                seconds = rng.uniform(args.job_min, args.job_max)
                tg.create_task(submit(session, plat.api, rec, action, key, seconds))
            elif action == "terminate":
                running = [
                    s.execution_id
                    for s in rec.submissions
                    if s.execution_id is not None and s.execution_id not in rec.terminate_sent
                ]
                if running:
                    tg.create_task(terminate(session, plat.api, rec, rng.choice(running)))
            elif action == "bad_http":
                tg.create_task(bad_http(session, plat.api, rec, rng))
            else:
                tg.create_task(amqp.bad_request(rng))
            await asyncio.sleep(min(rng.expovariate(args.rate), max(0.0, until - time.monotonic())))


# ---- faults -----------------------------------------------------------------------------


def schedule(rng: random.Random, duration: float, rounds: int) -> list[tuple[float, str]]:
    """Each fault ``rounds`` times, in a random order, one in each of as many equal slots
    of the load's 8 %..85 % (at a random time within its slot), so they spread out."""
    kinds = [f for _ in range(rounds) for f in rng.sample(FAULTS, len(FAULTS))]
    lo, hi = 0.08 * duration, 0.85 * duration
    slot = (hi - lo) / len(kinds)
    return [(lo + i * slot + rng.uniform(0.1, 0.6) * slot, k) for i, k in enumerate(kinds)]


async def kill_and_restart(
    plat: BenchPlatform, rec: Record, name: str, down: float
) -> dict[str, Any]:
    """SIGKILL one service process, then start it again after ``down`` seconds."""
    proc = plat.procs[name]
    assert proc.popen is not None
    rec.down.add(name)
    try:
        pid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(proc.popen.wait, 10)
        await asyncio.sleep(down)
        proc.start()
    finally:
        rec.down.discard(name)
    return {"pid": pid, "new_pid": proc.pid}


async def faults(
    args: argparse.Namespace, plat: BenchPlatform, rec: Record, plan: list[tuple[float, str]]
) -> None:
    """Carry out ``plan`` (seconds after the load's start, fault), one after the other."""
    assert plat.broker is not None and plat.postgres is not None
    for at, kind in plan:
        wait = rec.t0 + at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        started = time.monotonic()
        entry: dict[str, Any] = {"fault": kind, "at_s": rec.at()}
        try:
            if kind in SERVICES:
                entry.update(await kill_and_restart(plat, rec, kind, args.down))
                entry["fault"] = f"sigkill {kind}"
            elif kind == "rabbitmq":
                await asyncio.to_thread(plat.broker.restart, args.down)
                entry["fault"] = "restart rabbitmq"
            else:
                await asyncio.to_thread(plat.postgres.restart, args.down)
                entry["fault"] = "restart postgres"
        except Exception as exc:
            entry["error"] = repr(exc)
        entry["took_s"] = round(time.monotonic() - started, 2)
        rec.faults.append(entry)


async def supervise(plat: BenchPlatform, rec: Record, stop: asyncio.Event) -> None:
    """Restart a service that exited by itself (not killed by a fault) after
    ``RESTART_DELAY``, as a supervisor would, and record it: when, its exit code and
    why (the error of its last ``service.crashed`` log line, or its last line)."""
    restarts: Counter[str] = Counter()
    seen_down: dict[str, float] = {}
    while not stop.is_set():
        for name, proc in plat.procs.items():
            if name in rec.down or proc.alive() or restarts[name] >= MAX_RESTARTS:
                seen_down.pop(name, None)
                continue
            if name not in seen_down:
                assert proc.popen is not None
                seen_down[name] = time.monotonic()
                rec.unexpected_exits.append(
                    {
                        "service": name,
                        "at_s": rec.at(),
                        "code": proc.popen.returncode,
                        "why": exit_reason(proc.log_path),
                    }
                )
            elif time.monotonic() - seen_down[name] >= RESTART_DELAY:
                restarts[name] += 1
                seen_down.pop(name)
                proc.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def exit_reason(log_path: Path) -> str:
    """Why a service stopped, from the end of its log."""
    lines = log_path.read_text(errors="replace").splitlines()[-20:]
    for line in reversed(lines):
        with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
            event = json.loads(line)
            if event.get("event") == "service.crashed":
                exc = event["exception"][0]
                return f"crashed: {exc['exc_type']}: {exc['exc_value']}"[:300]
            if event.get("level") in ("error", "critical"):
                return f"{event['level']}: {event['event']}"[:300]
    return (lines[-1] if lines else "")[:300]


class CpuSampler:
    """CPU seconds per process group, sampled every second: a killed or restarted
    process's time is kept (as of its last sample) beside its successor's."""

    def __init__(self, plat: BenchPlatform) -> None:
        self._plat = plat
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}

    def _groups(self) -> dict[str, list[int]]:
        plat = self._plat
        out = {name: [p.pid] for name, p in plat.procs.items() if p.alive()}
        assert plat.broker is not None and plat.postgres is not None
        out["rabbitmq"] = pids_with_env(f"RABBITMQ_NODENAME={plat.broker.node}")
        out["postgres"] = plat.postgres.pids()
        out["bench-client"] = [os.getpid()]
        return out

    def sample(self) -> None:
        for group, pids in self._groups().items():
            for pid in pids:
                used = cpu_seconds(pid)
                if used:
                    self._last[(group, pid)] = used

    async def run(self, stop: asyncio.Event) -> None:
        self.sample()
        # what was used before the load does not count; a process started later counts whole
        self._first = dict(self._last)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            await asyncio.to_thread(self.sample)

    def used(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (group, pid), last in self._last.items():
            first = self._first.get((group, pid), 0.0)
            out[group] = out.get(group, 0.0) + (last - first if first <= last else last)
        return {k: round(v, 2) for k, v in sorted(out.items())}


# ---- the checker ------------------------------------------------------------------------


async def query(url: str, sql: str, *args: Any, timeout: float = 30) -> list[asyncpg.Record]:
    """One query on a connection of its own (a pool would keep connections a database
    restart has cut), retried while the server does not answer."""
    deadline = time.monotonic() + timeout
    for _ in range(100):
        try:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    raise TimeoutError("the database did not answer")


QUEUED_WITH_ROOM = f"""
WITH held AS (
    SELECT node, sum(cores) AS cores, sum(memory) AS memory FROM instances
    WHERE state IN ({", ".join(f"'{s}'" for s in sorted(INSTANCE_HOLDING))}) GROUP BY node
), free AS (
    SELECT n.name, n.cores - coalesce(h.cores, 0) AS cores,
           n.memory - coalesce(h.memory, 0) AS memory
    FROM nodes n LEFT JOIN held h ON h.node = n.name WHERE n.state = 'up'
), needs AS (
    SELECT execution_id, sum(cores) AS cores, sum(memory) AS memory,
           max(cores) AS top_cores, max(memory) AS top_memory
    FROM instances WHERE essential GROUP BY execution_id
)
SELECT e.id FROM executions e JOIN needs ON needs.execution_id = e.id
WHERE e.state = 'queued'
  AND (SELECT sum(cores) FROM free) >= needs.cores
  AND (SELECT sum(memory) FROM free) >= needs.memory
  AND EXISTS (SELECT 1 FROM free WHERE free.cores >= needs.top_cores
                                   AND free.memory >= needs.top_memory)
"""


async def unsettled(plat: BenchPlatform, rec: Record) -> dict[str, Any]:
    """What keeps the platform from having settled (empty once it has)."""
    url = plat.database_url
    out: dict[str, Any] = {}
    rows = await query(
        url,
        "SELECT state, array_agg(id ORDER BY id) AS ids FROM executions"
        " WHERE state = ANY($1::text[]) GROUP BY state",
        list(TRANSITIONAL),
    )
    for r in rows:
        out[f"executions_{r['state']}"] = r["ids"]
    queued = [r["id"] for r in await query(url, QUEUED_WITH_ROOM)]
    if queued:
        out["executions_queued_with_room"] = queued
    rows = await query(
        url,
        "SELECT state, count(*) AS n FROM instances"
        " WHERE state IN ('placed', 'starting', 'stopping') GROUP BY state",
    )
    for r in rows:
        out[f"instances_{r['state']}"] = r["n"]
    ephemeral = [
        s.execution_id for s in rec.submissions if s.kind == "ephemeral" and s.execution_id
    ]
    terminated = [i for i, status in rec.terminations.items() if status == 202]
    rows = await query(
        url,
        "SELECT count(*) FILTER (WHERE id = ANY($1::bigint[])) AS eph,"
        " count(*) FILTER (WHERE id = ANY($2::bigint[])) AS term FROM executions"
        " WHERE state <> ALL($3::text[])",
        ephemeral,
        terminated,
        list(EXECUTION_FINAL),
    )
    if rows[0]["eph"]:
        out["ephemeral_still_active"] = rows[0]["eph"]
    if rows[0]["term"]:
        out["terminated_still_active"] = rows[0]["term"]
    outbox = (await query(url, "SELECT count(*) AS n FROM outbox"))[0]["n"]
    if outbox:
        out["outbox_rows"] = outbox
    down = [name for name, p in plat.procs.items() if not p.alive()]
    if down:
        out["services_down"] = down
    return out


async def settle(
    plat: BenchPlatform, rec: Record, timeout: float
) -> tuple[float | None, dict[str, Any]]:
    """Poll until nothing is unsettled or ``timeout``; returns (seconds it took or None,
    what was still unsettled at the deadline)."""
    started = time.monotonic()
    left: dict[str, Any] = {}
    for _ in range(int(timeout) + 10):
        try:
            left = await unsettled(plat, rec)
        except Exception as exc:
            left = {"database": repr(exc)}
        if not left:
            return round(time.monotonic() - started, 1), {}
        if time.monotonic() - started > timeout:
            break
        await asyncio.sleep(1.0)
    return None, left


async def dead_letters(url: str, limit: int = 100_000) -> list[dict[str, Any]]:
    """Every message of the dead-letter queue (taken off it): queue, reason, body."""
    out: list[dict[str, Any]] = []
    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        queue = await channel.get_queue(routes.DEAD_LETTERS)
        for _ in range(limit):
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                break
            headers = message.headers or {}
            deaths = headers.get("x-death") or [{}]
            first: Any = deaths[0] if isinstance(deaths, list) and deaths else {}
            out.append(
                {
                    "queue": _text(first.get("queue") or headers.get("x-zoe-queue") or "?"),
                    "reason": _text(first.get("reason") or "refused"),
                    "message_id": message.message_id or "",
                    "body": message.body,
                }
            )
    finally:
        await conn.close()
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def classify(letters: list[dict[str, Any]]) -> dict[str, Any]:
    """Split dead letters by why they are there.

    - ``own_reason_expected``: the soak's own bad requests (a get of an unknown id is
      a valid request, and is judged as any other message);
    - ``transient``: a message that decodes as what its queue receives, dead-lettered
      because its deliveries ran out (``delivery_limit``): it was valid and would have
      been handled if retried later;
    - ``valid_but_rejected``: a valid message that a handler refused (a user error);
    - ``invalid_unexpected``: a message that does not decode and is not the soak's.
    """
    groups: dict[str, Counter[str]] = {
        "own_reason_expected": Counter(),
        "transient": Counter(),
        "valid_but_rejected": Counter(),
        "invalid_unexpected": Counter(),
    }
    samples: dict[str, list[str]] = {name: [] for name in groups}
    for letter in letters:
        queue, reason = letter["queue"], letter["reason"]
        tag = "?"
        valid = False
        try:
            tag = str(json.loads(letter["body"]).get("type", "?"))
            m.decoder(routes.inbox(queue)).decode(letter["body"])
            valid = True
        except Exception:
            pass
        if is_bad_body(letter["message_id"]):
            group = "own_reason_expected"
        elif valid and reason == "delivery_limit":
            group = "transient"
        elif valid:
            group = "valid_but_rejected"
        else:
            group = "invalid_unexpected"
        groups[group][f"{queue} {tag} ({reason})"] += 1
        if group != "own_reason_expected" and len(samples[group]) < 5:
            samples[group].append(letter["body"][:240].decode(errors="replace"))
    return {
        name: {"count": sum(c.values()), "by_queue_type_reason": dict(c)}
        | ({"samples": samples[name]} if samples[name] else {})
        for name, c in groups.items()
    }


def is_bad_body(message_id: str) -> bool:
    """Whether a message is one of the soak's requests that cannot decode."""
    return message_id.startswith(BAD_PREFIX) and not message_id.startswith(VALID_BAD)


def journal_facts(path: Path) -> dict[str, Any]:
    """From the hollow journal: container names started more than once, how many starts,
    and which containers run on each node now."""
    starts: Counter[str] = Counter()
    boots = 0
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            if rec["op"] == "start":
                starts[rec["name"]] += 1
            elif rec["op"] == "boot":
                boots += 1
    running = {
        (node, c["name"])
        for node, containers in HollowJournal.replay(path).items()
        for c in containers
        if c.get("exited") is None and not (c.get("exit_at") and c["exit_at"] <= time.time())
    }
    return {
        "starts": sum(starts.values()),
        "twice": sorted(name for name, n in starts.items() if n > 1),
        "running": running,
        "boots": boots,
    }


async def check(plat: BenchPlatform, rec: Record, journal: Path) -> dict[str, Any]:
    """Read the database, the dead letters and the journal; every invariant and its figures."""
    url = plat.database_url
    acked = {s.execution_id: s for s in rec.submissions if s.execution_id is not None}
    rows = await query(
        url,
        "SELECT id, state, will_end, request_id, exit_code, error FROM executions"
        " WHERE request_id = ANY($1::text[]) OR id = ANY($2::bigint[])",
        [s.key for s in rec.submissions],
        list(acked),
    )
    by_id = {r["id"]: r for r in rows}
    keys_in_db = Counter(r["request_id"] for r in rows)
    missing = sorted(i for i in acked if i not in by_id)
    unacked = [s for s in rec.submissions if s.execution_id is None]
    unacked_stored = sum(1 for s in unacked if keys_in_db[s.key])
    twice_per_key = sorted(k for k, n in keys_in_db.items() if n > 1)

    terminated_ok = {i for i, status in rec.terminations.items() if status == 202}
    states: dict[str, Counter[str]] = {"long": Counter(), "ephemeral": Counter()}
    lr_not_running, eph_not_finished, term_active = [], [], []
    for i, s in acked.items():
        r = by_id.get(i)
        if r is None:
            continue
        states[s.kind][r["state"]] += 1
        if i in terminated_ok and r["state"] not in EXECUTION_FINAL:
            term_active.append(i)
        if i in rec.terminate_sent:
            continue  # its end is the termination's (or whatever came first)
        if s.kind == "long" and r["state"] != "running":
            lr_not_running.append({"id": i, "state": r["state"], "error": r["error"]})
        elif s.kind == "ephemeral" and r["state"] != "finished":
            eph_not_finished.append(
                {"id": i, "state": r["state"], "exit_code": r["exit_code"], "error": r["error"]}
            )

    stuck = await unsettled(plat, rec)
    facts = journal_facts(journal)
    db_running = {
        (r["node"], r["container_name"])
        for r in await query(
            url,
            "SELECT node, container_name FROM instances WHERE state = 'running'",
        )
    }
    leaked = sorted(facts["running"] - db_running)
    vanished = sorted(db_running - facts["running"])
    letters = classify(await dead_letters(plat.amqp_url))
    bad_amqp_bodies = sum(n for k, n in rec.bad_amqp_sent.items() if k != "unknown_id_get")
    unconfirmed = sum(n for k, n in rec.bad_amqp_unsent.items() if k != "unknown_id_get")
    # 4xx, or 503 (the database or the broker away: the api cannot tell yet, and says so)
    bad_http_wrong = {
        k: n
        for k, n in rec.bad_http.items()
        if not k.endswith(":unanswered") and not k.split(":")[1].startswith(("4", "503"))
    }

    def inv(held: bool, **detail: Any) -> dict[str, Any]:
        return {"held": held, **detail}

    invariants = {
        "acknowledged_submissions_in_database": inv(
            not missing, acknowledged=len(acked), missing=missing[:20], missing_count=len(missing)
        ),
        "one_execution_per_idempotency_key": inv(not twice_per_key, keys=twice_per_key[:20]),
        "no_container_name_started_twice": inv(
            not facts["twice"], names=facts["twice"][:20], count=len(facts["twice"])
        ),
        "nothing_stuck_after_settle": inv(not stuck, stuck=_short(stuck)),
        "no_transient_dead_letters": inv(
            letters["transient"]["count"] == 0, **letters["transient"]
        ),
        "no_unexpected_dead_letters": inv(
            letters["valid_but_rejected"]["count"] + letters["invalid_unexpected"]["count"] == 0,
            valid_but_rejected=letters["valid_but_rejected"],
            invalid_unexpected=letters["invalid_unexpected"],
        ),
        # each confirmed one is there; an unconfirmed one may be
        "bad_amqp_requests_all_dead_lettered": inv(
            bad_amqp_bodies
            <= letters["own_reason_expected"]["count"]
            <= bad_amqp_bodies + unconfirmed,
            confirmed=bad_amqp_bodies,
            unconfirmed=unconfirmed,
            dead_lettered=letters["own_reason_expected"]["count"],
        ),
        "bad_http_requests_answered_4xx": inv(not bad_http_wrong, wrong=bad_http_wrong),
        "terminations_honoured": inv(not term_active, still_active=term_active[:20]),
        "long_running_still_running": inv(
            not lr_not_running, executions=lr_not_running[:20], count=len(lr_not_running)
        ),
        "ephemeral_finished": inv(
            not eph_not_finished, executions=eph_not_finished[:20], count=len(eph_not_finished)
        ),
        "containers_match_database": inv(
            not leaked and not vanished,
            on_node_not_running_in_db=[f"{n}/{c}" for n, c in leaked[:20]],
            running_in_db_not_on_node=[f"{n}/{c}" for n, c in vanished[:20]],
        ),
        "services_survive_faults": inv(
            not rec.unexpected_exits,
            exits_by_service=dict(Counter(e["service"] for e in rec.unexpected_exits)),
            exits=rec.unexpected_exits[:20],
        ),
    }
    return {
        "invariants": invariants,
        "executions": {
            "submitted": len(rec.submissions),
            "acknowledged": len(acked),
            "acknowledged_201": sum(1 for s in acked.values() if s.status == 201),
            "acknowledged_200_retry": sum(1 for s in acked.values() if s.status == 200),
            "retried": sum(1 for s in rec.submissions if s.attempts > 1),
            "never_acknowledged": len(unacked),
            "never_acknowledged_but_stored": unacked_stored,
            "refused": dict(Counter(str(s.status) for s in unacked if s.status)),
            "final_states": {k: dict(v) for k, v in states.items()},
        },
        "terminations": {
            "answered": dict(Counter(str(v) for v in rec.terminations.values())),
            "unanswered": rec.termination_errors,
        },
        "bad_requests": {
            "http": dict(rec.bad_http),
            "amqp_confirmed": dict(rec.bad_amqp_sent),
            "amqp_unconfirmed": dict(rec.bad_amqp_unsent),
            "amqp_replies": {str(k): v for k, v in rec.amqp_replies.items()},
        },
        "dead_letters": letters,
        "hollow": {
            "container_starts": facts["starts"],
            "process_boots": facts["boots"],
            "running_now": len(facts["running"]),
        },
    }


def _short(stuck: dict[str, Any]) -> dict[str, Any]:
    return {k: (v[:20] if isinstance(v, list) else v) for k, v in stuck.items()}


# ---- the run ----------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    plat = BenchPlatform("soak", private_broker=True, private_postgres=True)
    journal = plat.log_dir / "hollow-journal.jsonl"
    info = machine()
    duration = args.minutes * 60
    rec = Record()
    plan: list[tuple[float, str]] = []
    amqp = AmqpClient(plat.amqp_url, rec)
    stop = asyncio.Event()
    try:
        await plat.create()
        amqp.token = plat.admin_token
        plat.spawn(
            "hollow",
            [
                "services.executor.hollow",
                "--nodes",
                str(args.nodes),
                "--prefix",
                plat.deployment,
                "--journal",
                str(journal),
                "--play-commands",
            ],
            ZOE_CORES=str(args.cores),
            ZOE_MEMORY=str(16 << 30),
            ZOE_USAGE_INTERVAL="30",
            ZOE_LOG_LEVEL="warning",
        )
        plat.start_core({"scheduler": {"ZOE_PASS_INTERVAL": "1"}})
        async with aiohttp.ClientSession(headers=plat.headers) as session:
            await plat.wait_api(session)
        async with db.pool(plat.database_url, max_size=2) as pool:
            await plat.wait_nodes(pool, args.nodes)
        await amqp.open()

        sampler = CpuSampler(plat)
        plan = schedule(rng, duration, args.rounds)
        rec.t0 = time.monotonic()
        started = time.time()
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(sampler.run(stop)),
                tg.create_task(supervise(plat, rec, stop)),
            ]
            fault_task = tg.create_task(faults(args, plat, rec, plan))
            await load(args, plat, rec, amqp, rng, rec.t0 + duration)
            load_s = time.monotonic() - rec.t0
            await fault_task
            faults_s = time.monotonic() - rec.t0
            settle_s, _ = await settle(plat, rec, args.settle)
            report = await check(plat, rec, journal)
            stop.set()
            for task in background:
                await task
        window = time.monotonic() - rec.t0
        cpu = sampler.used()
        ended = time.time()
    finally:
        stop.set()
        await amqp.close()
        await plat.destroy()

    acked = [s for s in rec.submissions if s.execution_id is not None]
    failed = [k for k, v in report["invariants"].items() if not v["held"]]
    return {
        "invariants_failed": failed,
        "invariants_held": [k for k in report["invariants"] if k not in failed],
        **report,
        "load": {
            "load_seconds": round(load_s, 1),
            "faults_done_at_s": round(faults_s, 1),
            "settle_seconds": settle_s,  # None: did not settle within --settle
            "submissions_per_s": round(len(rec.submissions) / load_s, 2),
            "acknowledged_per_s": round(len(acked) / load_s, 2),
            "terminations_per_s": round(len(rec.terminations) / load_s, 2),
            "bad_requests_per_s": round(
                (sum(rec.bad_http.values()) + sum(rec.bad_amqp_sent.values())) / load_s, 2
            ),
        },
        "faults": rec.faults,
        "fault_plan_s": [(round(at, 1), kind) for at, kind in plan],
        "cpu_seconds": cpu,
        "cpu_cores_avg": {k: round(v / window, 3) for k, v in cpu.items()},
        "run_wall_clock": [round(started, 1), round(ended, 1)],
        "logs": str(plat.log_dir),
        "config": {
            "minutes": args.minutes,
            "nodes": args.nodes,
            "cores_per_node": args.cores,
            "seed": args.seed,
            "rate_per_s": args.rate,
            "rounds": args.rounds,
            "down_s": args.down,
            "settle_s": args.settle,
            "ephemeral_seconds": [args.job_min, args.job_max],
            "engine": "hollow",
        },
        "machine": info,
    }


def summary(figures: dict[str, Any]) -> str:
    """One line per invariant, for the terminal (stderr)."""
    lines = []
    for name, value in figures["invariants"].items():
        detail = {k: v for k, v in value.items() if k != "held"}
        mark = "ok  " if value["held"] else "FAIL"
        lines.append(f"{mark} {name}" + ("" if value["held"] else f": {json.dumps(detail)[:400]}"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of load")
    parser.add_argument("--nodes", type=int, default=50, help="hollow nodes")
    parser.add_argument("--cores", type=float, default=4.0, help="cores of each hollow node")
    parser.add_argument("--seed", type=int, default=1, help="seed of the load and the faults")
    parser.add_argument("--rate", type=float, default=4.0, help="load actions per second")
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests at once")
    parser.add_argument("--rounds", type=int, default=1, help="times each fault happens")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a faulted part stays down")
    parser.add_argument("--settle", type=float, default=120.0, help="seconds to converge, at most")
    parser.add_argument("--job-min", type=float, default=3.0, help="shortest ephemeral job, s")
    parser.add_argument("--job-max", type=float, default=20.0, help="longest ephemeral job, s")
    parser.add_argument("--docker", action="store_true", help="not supported yet: hollow only")
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args()
    # stdout is for the figures: the platform's set-up logs (migrations) and the soak's own
    # AMQP client's reconnection warnings go to stderr, or nowhere
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if args.docker:
        parser.error("--docker is not supported yet: the soak runs on hollow nodes")
    figures = asyncio.run(run(args))
    print(summary(figures), file=sys.stderr)
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The api's reads and writes: creating executions, reading them back for users."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import structlog

from common import messages as m
from common import outbox
from common.bus import Outgoing
from common.errors import Conflict, FieldError, NotFound
from common.outbox import enqueue
from common.states import EXECUTION_FINAL, INSTANCE_HOLDING, sql_list
from common.zapp import Description, expand
from services.api import quotas
from services.api.quotas import UNLIMITED, Quota

_HOLDING = sql_list(INSTANCE_HOLDING)
log = structlog.get_logger("api")


_EXEC_COLUMNS = (
    "id, name, user_name, state, outcome, error, exit_code, will_end, size, priority,"
    " submitted_at, started_at, finished_at, runtime_limit, pending_reason, schedulable"
)
_INSTANCE_COLUMNS = (
    "id, name, service, essential, monitor, state, node, container_name, container_id,"
    " exit_code, reason, restart_count, endpoints, cores, memory, updated_at"
)


class _Ids:
    """Execution ids drawn from the sequence a block at a time (one round trip per
    ``BLOCK`` submissions): unique, and increasing within one api process (lists are
    ordered by submission time, not id, for several api processes)."""

    BLOCK = 64

    def __init__(self) -> None:
        self._free: collections.deque[int] = collections.deque()

    async def next(self, conn: asyncpg.Connection | asyncpg.Pool) -> int:
        if not self._free:
            self._free.extend(
                await conn.fetchval(
                    "SELECT array_agg(nextval(pg_get_serial_sequence('executions', 'id')))"
                    " FROM generate_series(1, $1)",
                    self.BLOCK,
                )
            )
        return self._free.popleft()


# one block per pool (so per database); the pool is kept so that its id stays its own
_ids: dict[int, tuple[asyncpg.Pool, _Ids]] = {}


def _ids_of(pool: asyncpg.Pool) -> _Ids:
    if id(pool) not in _ids:
        _ids[id(pool)] = (pool, _Ids())
    return _ids[id(pool)][1]


# Stores an execution, its instances and its submission message in one statement;
# returns one row per instance, each with the execution's columns too (e_*, i_*).
# Nothing is stored when ``request_id`` was seen before (no row comes back).
# ($23, the request's digest, $24, the runtime limit, and $25, the outbox's token, are
# last so that the outbox's numbering stays as it was.)
_CREATE = (
    "WITH e AS (INSERT INTO executions (id, name, user_name, description, will_end, size,"
    "  priority, request_id, request_digest, runtime_limit)"
    "  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $23, $24)"
    "  ON CONFLICT (request_id) WHERE request_id IS NOT NULL DO NOTHING"
    f"  RETURNING {_EXEC_COLUMNS}),"
    " i AS (INSERT INTO instances (execution_id, name, service, idx, essential, monitor,"
    "  startup_order, cores, memory, labels, spec)"
    "  SELECT e.id, s.name, s.service, s.idx, s.essential, s.monitor, s.startup_order,"
    "   s.cores, s.memory, ARRAY(SELECT jsonb_array_elements_text(s.labels::jsonb)), s.spec"
    "  FROM e, unnest($9::text[], $10::text[], $11::int[], $12::bool[], $13::bool[],"
    "   $14::int[], $15::float8[], $16::bigint[], $17::text[], $18::jsonb[])"
    "   AS s(name, service, idx, essential, monitor, startup_order, cores, memory,"
    "   labels, spec)"
    f"  RETURNING {_INSTANCE_COLUMNS}),"
    f" o AS ({outbox.INSERT_ROWS.format(19, 20, 21, 22)} WHERE EXISTS (SELECT 1 FROM e)"
    "  RETURNING id)"
    " SELECT "
    + ", ".join(f"e.{c.strip()} AS e_{c.strip()}" for c in _EXEC_COLUMNS.split(","))
    + ", "
    + ", ".join(f"i.{c.strip()} AS i_{c.strip()}" for c in _INSTANCE_COLUMNS.split(","))
    + f", (SELECT array_agg(id) FROM o) AS outbox_ids, {outbox.NOTIFY.format(22, 25)}"
    " AS notified FROM e, i ORDER BY i.id"
)


# Stores several executions (no request id, no quota to hold: nothing to refuse), their
# instances and ONE submission message for all of them, in one statement; one row per
# instance, as ``_CREATE``.
_CREATE_MANY = (
    "WITH e AS (INSERT INTO executions (id, name, user_name, description, will_end, size,"
    "  priority, runtime_limit)"
    "  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::jsonb[], $5::bool[],"
    "   $6::float8[], $7::int[], $8::float8[])"
    f"  RETURNING {_EXEC_COLUMNS}),"
    " i AS (INSERT INTO instances (execution_id, name, service, idx, essential, monitor,"
    "  startup_order, cores, memory, labels, spec)"
    "  SELECT e.id, s.name, s.service, s.idx, s.essential, s.monitor, s.startup_order,"
    "   s.cores, s.memory, ARRAY(SELECT jsonb_array_elements_text(s.labels::jsonb)), s.spec"
    "  FROM unnest($9::bigint[], $10::text[], $11::text[], $12::int[], $13::bool[],"
    "   $14::bool[], $15::int[], $16::float8[], $17::bigint[], $18::text[], $19::jsonb[])"
    "   WITH ORDINALITY AS s(execution_id, name, service, idx, essential, monitor,"
    "   startup_order, cores, memory, labels, spec, n)"
    "  JOIN e ON e.id = s.execution_id ORDER BY s.n"
    f"  RETURNING execution_id AS owner, {_INSTANCE_COLUMNS}),"
    f" o AS ({outbox.INSERT_ROWS.format(20, 21, 22, 23)} RETURNING id)"
    " SELECT "
    + ", ".join(f"e.{c.strip()} AS e_{c.strip()}" for c in _EXEC_COLUMNS.split(","))
    + ", "
    + ", ".join(f"i.{c.strip()} AS i_{c.strip()}" for c in _INSTANCE_COLUMNS.split(","))
    + f", (SELECT array_agg(id) FROM o) AS outbox_ids, {outbox.NOTIFY.format(23, 24)}"
    " AS notified FROM e JOIN i ON i.owner = e.id ORDER BY i.id"
)


@dataclass
class _Submission:
    """One submission waiting to be stored with others."""

    execution_id: int
    name: str
    user_name: str
    description: Description
    priority: int
    runtime: float | None
    specs: list[Any]
    stored: asyncio.Future[list[asyncpg.Record]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Grouper:
    """Stores the submissions that arrive while the previous ones are being stored
    together: one statement, one commit and one message for up to ``size`` of them.
    A lone submission is stored at once, as before; a group that fails is stored one
    submission at a time, so that each fails (or not) by itself."""

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._size = max(1, size)
        self._waiting: list[_Submission] = []
        self._drainer: asyncio.Task[None] | None = None  # the owner of the work, while any

    async def store(self, sub: _Submission) -> list[asyncpg.Record]:
        self._waiting.append(sub)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await sub.stored

    async def _drain(self) -> None:
        try:
            await self._store_waiting()
        finally:
            # in the same step as the last look at the queue: a submission that comes
            # after it finds no drainer and starts one (a done callback would run a step
            # later, after the answers' callers may have submitted again)
            self._drainer = None

    async def _store_waiting(self) -> None:
        while self._waiting:
            group = [s for s in self._waiting[: self._size] if not s.stored.done()]
            del self._waiting[: self._size]
            if len(group) > 1:
                try:
                    rows = await _stored(self._pool, _CREATE_MANY, _many_arguments(group))
                except Exception as exc:  # each is tried alone below
                    log.warning("submissions.group_failed", size=len(group), error=repr(exc))
                else:
                    _hand_out(group, rows)
                    continue
            for sub in group:
                try:
                    rows = await _stored(self._pool, _CREATE, _one_arguments(sub))
                except Exception as exc:
                    if not sub.stored.done():
                        sub.stored.set_exception(exc)
                else:
                    _hand_out([sub], rows)


_Columns = tuple[list[str], list[str], list[bytes]]  # the outbox's, as `outbox.columns`


async def _stored(
    db: asyncpg.Pool | asyncpg.Connection, sql: str, built: tuple[list[Any], _Columns]
) -> list[asyncpg.Record]:
    """Run ``_CREATE`` or ``_CREATE_MANY`` on its arguments and outbox columns (as the
    argument builders give them), the message staged for the outbox's relay (the stage's
    token is the statement's last argument); returns the rows."""
    arguments, columns = built
    return await outbox.staged(
        columns,
        lambda token: db.fetch(sql, *arguments, token),
        lambda rows: rows[0]["outbox_ids"] if rows else None,
    )


def _hand_out(group: list[_Submission], rows: list[asyncpg.Record]) -> None:
    by_id: dict[int, list[asyncpg.Record]] = {}
    for r in rows:
        by_id.setdefault(r["e_id"], []).append(r)
    for sub in group:
        if not sub.stored.done():
            sub.stored.set_result(by_id.get(sub.execution_id, []))


def _many_arguments(group: list[_Submission]) -> tuple[list[Any], _Columns]:
    """``_CREATE_MANY``'s arguments (but the stage's token) and its outbox columns."""
    specs = [(sub.execution_id, s) for sub in group for s in sub.specs]
    submitted = Outgoing(m.ExecutionsSubmitted(execution_ids=[s.execution_id for s in group]))
    columns = outbox.columns([submitted])
    return [
        [s.execution_id for s in group],
        [s.name for s in group],
        [s.user_name for s in group],
        [s.description for s in group],  # (structs: the JSON codec encodes them)
        [s.description.will_end for s in group],
        [float(s.description.size) for s in group],
        [s.priority for s in group],
        [s.runtime for s in group],
        [e for e, _ in specs],
        *_instance_arrays([s for _, s in specs]),
        *columns,
        outbox.CHANNEL,
    ], columns


_LIST = msgspec.json.Encoder()


def _instance_arrays(specs: list[Any]) -> list[list[Any]]:
    """The instance columns of ``_CREATE`` and ``_CREATE_MANY``, one array each."""
    return [
        [s.name for s in specs],
        [s.service for s in specs],
        [s.index for s in specs],
        [s.essential for s in specs],
        [s.monitor for s in specs],
        [s.startup_order for s in specs],
        [s.cores_reserved for s in specs],
        [s.memory_reserved for s in specs],
        [_LIST.encode(list(s.labels)).decode() for s in specs],  # one JSON list each
        specs,
    ]


def _one_arguments(
    sub: _Submission, request_id: str | None = None, request_digest: str | None = None
) -> tuple[list[Any], _Columns]:
    """``_CREATE``'s arguments (but the stage's token) and its outbox columns."""
    submitted = Outgoing(m.ExecutionSubmitted(execution_id=sub.execution_id))
    columns = outbox.columns([submitted])
    return [
        sub.execution_id,
        sub.name,
        sub.user_name,
        sub.description,
        sub.description.will_end,
        float(sub.description.size),
        sub.priority,
        request_id,
        *_instance_arrays(sub.specs),
        *columns,
        outbox.CHANNEL,
        request_digest,
        sub.runtime,
    ], columns


# one grouper per pool, for the pools of the api service (``group_submissions``)
_groupers: dict[int, tuple[asyncpg.Pool, _Grouper]] = {}


def group_submissions(pool: asyncpg.Pool, size: int) -> None:
    """Store concurrent submissions through ``pool`` together, up to ``size`` a statement
    (ZOE_SUBMIT_GROUP; 1: each alone)."""
    _groupers[id(pool)] = (pool, _Grouper(pool, size))


async def create_execution(
    pool: asyncpg.Pool,
    *,
    name: str,
    user_name: str,
    description: Description,
    deployment: str,
    priority: int = 0,
    request_id: str | None = None,
    request_digest: str | None = None,
    quota: Quota = UNLIMITED,
) -> tuple[dict[str, Any], bool]:
    """Store an execution with its expanded instances and queue its submission, atomically.

    ``quota`` is the user's: a submission that would take them past it is refused
    (OverQuota) and nothing is stored; its runtime limit is stored with the execution.

    Returns the execution as ``get_execution`` shows it, and whether it was created now
    (False: ``request_id`` was seen before and this is the execution it created). A
    ``request_id`` seen before with another ``request_digest`` is a Conflict (a row
    stored before digests were kept matches any). One statement (one round trip, one
    commit) whatever the number of instances, plus a lock and a read under a quota.
    Submissions with no ``request_id`` and no quota to hold that arrive together are
    stored together (``group_submissions``): one statement and one message for them all.
    """
    grouper = _groupers.get(id(pool))
    if grouper is not None and request_id is None and not quota.limits_holdings:
        # nothing to refuse and nothing to look up: stored with whatever arrives meanwhile
        execution_id = await _ids_of(pool).next(pool)
        sub = _submission(execution_id, name, user_name, description, deployment, priority, quota)
        rows = await grouper[1].store(sub)
        return _created(rows), True
    async with pool.acquire() as conn, contextlib.AsyncExitStack() as held:
        execution_id = await _ids_of(pool).next(conn)
        sub = _submission(execution_id, name, user_name, description, deployment, priority, quota)
        if quota.limits_holdings and not await _seen(conn, request_id):
            await held.enter_async_context(conn.transaction())
            await quotas.check(
                conn,
                user_name,
                quota,
                cores=sum(s.cores_reserved for s in sub.specs),
                memory=sum(s.memory_reserved for s in sub.specs),
            )
        rows = await _stored(conn, _CREATE, _one_arguments(sub, request_id, request_digest))
        if not rows:
            existing = await conn.fetchrow(
                "SELECT id, request_digest FROM executions WHERE request_id = $1", request_id
            )
            if existing["request_digest"] not in (None, request_digest):
                raise Conflict(
                    f"request id {request_id!r} was used for another request"
                    f" (execution {existing['id']})",
                    [FieldError("request_id", "already used with a different body")],
                )
            return await get_execution(conn, existing["id"]), False
    return _created(rows), True


def _submission(
    execution_id: int,
    name: str,
    user_name: str,
    description: Description,
    deployment: str,
    priority: int,
    quota: Quota,
) -> _Submission:
    specs = expand(
        description,
        execution_id=execution_id,
        execution_name=name,
        user_name=user_name,
        deployment=deployment,
    )
    return _Submission(
        execution_id, name, user_name, description, priority, quota.runtime, list(specs)
    )


def _created(rows: list[asyncpg.Record]) -> dict[str, Any]:
    """The execution as ``get_execution`` shows it, from the rows its insert returned."""
    out = _execution(_prefixed(rows[0], "e_"))
    out["services"] = [_instance(_prefixed(r, "i_")) for r in rows]
    return out


async def _seen(conn: asyncpg.Connection, request_id: str | None) -> bool:
    """Whether an execution was created under ``request_id`` already (its retry is
    answered with that execution, whatever the quota says now)."""
    if request_id is None:
        return False
    found = await conn.fetchval("SELECT 1 FROM executions WHERE request_id = $1", request_id)
    return found is not None


def _prefixed(row: asyncpg.Record, prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)}


async def request_termination(
    pool: asyncpg.Pool, execution_id: int, owner: str | None = None
) -> str:
    """Queue a termination request; returns the execution's current state. ``owner``:
    the user whose execution it must be (None: anyone's)."""
    async with pool.acquire() as conn, conn.transaction():
        state = await conn.fetchval(
            "SELECT state FROM executions WHERE id = $1 AND ($2::text IS NULL OR user_name = $2)",
            execution_id,
            owner,
        )
        if state is None:
            raise NotFound(f"execution {execution_id} does not exist")
        if state in EXECUTION_FINAL:
            raise Conflict(f"execution {execution_id} has already ended ({state})")
        msg = m.ExecutionTerminateRequested(execution_id=execution_id)
        await enqueue(conn, [Outgoing(msg)])
    return str(state)


def _execution(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["user"] = out.pop("user_name")
    for key in ("submitted_at", "started_at", "finished_at"):
        out[key] = out[key].isoformat() if out[key] is not None else None
    return out


def _instance(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["updated_at"] = out["updated_at"].isoformat()
    # the latest usage sample of its container (None before the first one)
    sampled_at = out.pop("sampled_at", None)
    cpu, memory = out.pop("cpu_percent", None), out.pop("memory_bytes", None)
    out["usage"] = (
        {"cpu_percent": cpu, "memory_bytes": memory, "sampled_at": sampled_at.isoformat()}
        if sampled_at is not None
        else None
    )
    return out


async def list_executions(
    pool: asyncpg.Pool, *, state: str | None = None, limit: int = 100, user: str | None = None
) -> list[dict[str, Any]]:
    """Executions, newest first, optionally only those in ``state`` (one of
    ``ExecutionState``: the caller checks it) and of ``user``."""
    rows = await pool.fetch(
        f"SELECT {_EXEC_COLUMNS} FROM executions WHERE ($1::text IS NULL OR state = $1)"
        " AND ($3::text IS NULL OR user_name = $3)"
        " ORDER BY submitted_at DESC, id DESC LIMIT $2",
        state,
        limit,
        user,
    )
    return [_execution(r) for r in rows]


async def get_execution(
    db: asyncpg.Pool | asyncpg.Connection, execution_id: int, owner: str | None = None
) -> dict[str, Any]:
    """One execution with its service instances; NotFound unless it is ``owner``'s (None:
    anyone's), so that another user's execution looks like none at all."""
    row = await db.fetchrow(
        f"SELECT {_EXEC_COLUMNS} FROM executions WHERE id = $1"
        " AND ($2::text IS NULL OR user_name = $2)",
        execution_id,
        owner,
    )
    if row is None:
        raise NotFound(f"execution {execution_id} does not exist")
    out = _execution(row)
    columns = ", ".join(f"i.{c.strip()}" for c in _INSTANCE_COLUMNS.split(","))
    instances = await db.fetch(
        f"SELECT {columns}, u.cpu_percent, u.memory_bytes, u.sampled_at"
        " FROM instances i LEFT JOIN instance_usage u ON u.instance_id = i.id"
        " WHERE i.execution_id = $1 ORDER BY i.id",
        execution_id,
    )
    out["services"] = [_instance(r) for r in instances]
    return out


async def find_instance(
    pool: asyncpg.Pool, execution_id: int, name: str, owner: str | None = None
) -> asyncpg.Record:
    """The instance called ``name`` in an execution of ``owner`` (None: anyone's), with
    where its container is."""
    row = await pool.fetchrow(
        "SELECT i.id, i.state, i.node, i.container_name, i.removed, l.log AS saved_log"
        " FROM instances i JOIN executions e ON e.id = i.execution_id"
        " LEFT JOIN instance_logs l ON l.instance_id = i.id"
        " WHERE i.execution_id = $1 AND i.name = $2 AND ($3::text IS NULL OR e.user_name = $3)",
        execution_id,
        name,
        owner,
    )
    if row is None:
        raise NotFound(f"execution {execution_id} has no service instance {name!r}")
    return row


async def list_nodes(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Nodes with their capacity, what is reserved on them, and their liveness."""
    rows = await pool.fetch(
        "SELECT n.name, n.cores, n.memory, n.labels, n.last_heartbeat, n.drain_deadline,"
        " CASE WHEN n.state = 'up' AND n.drained_at IS NOT NULL THEN 'drained'"
        "  ELSE n.state END AS state,"
        " coalesce(sum(i.cores), 0) AS cores_reserved,"
        " coalesce(sum(i.memory), 0)::bigint AS memory_reserved, count(i.id) AS instances"
        " FROM nodes n LEFT JOIN instances i ON i.node = n.name"
        f"  AND i.state IN {_HOLDING}"
        " GROUP BY n.name ORDER BY n.name"
    )
    out = []
    for r in rows:
        node = dict(r)
        node["last_heartbeat"] = node["last_heartbeat"].isoformat()
        if node["drain_deadline"] is not None:
            node["drain_deadline"] = node["drain_deadline"].isoformat()
        out.append(node)
    return out

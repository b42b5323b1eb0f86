"""The scheduler's reads and guarded writes in PostgreSQL.

Every transition is an ``UPDATE ... WHERE state IN (...)``: a duplicate or late message
finds the row already moved and changes nothing. Messages that announce a change go to
the outbox in the same transaction.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from common import messages as m
from common import metrics
from common import states as st
from common.bus import Outgoing
from common.outbox import enqueue
from common.states import EXECUTION_FINAL, InstanceState

_ENDED = st.sql_list(st.INSTANCE_ENDED)
_ON_NODE = st.sql_list(st.INSTANCE_ON_NODE)
ACTIVE = sorted(st.EXECUTION_ACTIVE)
HOLDING = sorted(st.INSTANCE_HOLDING)


def container_name(deployment: str, execution_id: int, instance: str, generation: int) -> str:
    """Container names derive from deployment, execution, instance and generation.

    An instance's generation grows each time it goes back to the queue (a restart after
    a death, or a reclaim), so a container name is started at most once: an executor
    refuses to start again a name it stopped, and a late fact about an old generation's
    container never matches the current one.
    """
    base = f"{deployment}-{execution_id}-{instance}"
    return f"{base}-r{generation}" if generation else base


def network_name(deployment: str, execution_id: int) -> str:
    """Every execution gets its own network; instances reach each other by name."""
    return f"{deployment}-{execution_id}"


async def set_execution_state(
    conn: asyncpg.Connection,
    execution_id: int,
    new: str,
    allowed_from: Sequence[str],
    **fields: Any,
) -> bool:
    """Move an execution to ``new`` if it is in one of ``allowed_from``; announce it."""
    sets = ["state = $2", "updated_at = now()"]
    args: list[Any] = [execution_id, new, list(allowed_from)]
    for name, value in fields.items():
        args.append(value)
        sets.append(f"{name} = ${len(args)}")
    if new == "running":
        sets.append("started_at = coalesce(started_at, now())")
    if new in EXECUTION_FINAL:
        sets.append("finished_at = now()")
    row = await conn.fetchrow(
        f"UPDATE executions SET {', '.join(sets)} WHERE id = $1 AND state = ANY($3::text[])"
        " RETURNING user_name",
        *args,
    )
    if row is None:
        return False
    await enqueue(conn, state_events([(execution_id, row["user_name"])], new))
    return True


def state_events(moved: Sequence[tuple[int, str]], new: str) -> list[Outgoing]:
    """The events announcing that ``moved`` (execution id, owner) reached ``new``: one
    ExecutionStatesChanged per ``STATE_CHANGES_PER_MESSAGE`` of them."""
    at = time.time()
    changes = [m.StateChange(execution_id=i, state=new, at=at, user=user) for i, user in moved]
    step = m.STATE_CHANGES_PER_MESSAGE
    return [
        Outgoing(m.ExecutionStatesChanged(changes=changes[k : k + step]))
        for k in range(0, len(changes), step)
    ]


async def begin_cleanup(
    conn: asyncpg.Connection,
    deployment: str,
    execution_id: int,
    outcome: str,
    *,
    exit_code: int | None = None,
    error: str | None = None,
) -> bool:
    """Start ending an execution: stop every container it has, then finish as ``outcome``."""
    fields: dict[str, Any] = {"outcome": outcome}
    if exit_code is not None:
        fields["exit_code"] = exit_code
    if error is not None:
        fields["error"] = error
    if not await set_execution_state(conn, execution_id, "cleaning_up", ACTIVE, **fields):
        return False
    await conn.execute(
        "UPDATE instances SET state = 'stopped', updated_at = now()"
        " WHERE execution_id = $1 AND state = 'created'",
        execution_id,
    )
    rows = await conn.fetch(
        f"UPDATE instances SET state = CASE WHEN state IN {_ENDED} THEN state"
        " ELSE 'stopping' END,"
        " updated_at = now()"
        " WHERE execution_id = $1 AND (state = ANY($2::text[]) OR NOT removed)"
        " RETURNING id, node, container_name",
        execution_id,
        list(HOLDING),
    )
    await enqueue(conn, [stop_command(deployment, execution_id, r) for r in rows if r["node"]])
    await maybe_finish(conn, execution_id)
    return True


def stop_command(deployment: str, execution_id: int, row: asyncpg.Record) -> Outgoing:
    msg = m.StopInstance(
        execution_id=execution_id,
        instance_id=row["id"],
        container_name=row["container_name"],
        network=network_name(deployment, execution_id),
    )
    return Outgoing(msg, node=row["node"])


async def stop_instances(
    conn: asyncpg.Connection, deployment: str, instance_ids: Iterable[int]
) -> list[int]:
    """Reclaim elastic instances: ask their executors to stop them."""
    rows = await conn.fetch(
        "UPDATE instances SET state = 'stopping', updated_at = now()"
        " WHERE id = ANY($1::bigint[]) AND NOT essential AND state = ANY($2::text[])"
        " RETURNING id, execution_id, node, container_name, state",
        list(instance_ids),
        st.moving_to(st.INSTANCE_TRANSITIONS, InstanceState.STOPPING),
    )
    await enqueue(conn, [stop_command(deployment, r["execution_id"], r) for r in rows])
    return [r["id"] for r in rows]


async def maybe_finish(conn: asyncpg.Connection, execution_id: int) -> bool:
    """A cleaning-up execution whose containers are all gone reaches its outcome."""
    row = await conn.fetchrow(
        "SELECT e.outcome FROM executions e WHERE e.id = $1 AND e.state = 'cleaning_up'"
        " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.execution_id = e.id"
        "   AND (i.state = ANY($2::text[]) OR NOT i.removed))",
        execution_id,
        list(HOLDING),
    )
    if row is None:
        return False
    return await set_execution_state(conn, execution_id, row["outcome"], ["cleaning_up"])


async def set_executions_state(
    conn: asyncpg.Connection, execution_ids: Collection[int], new: str, allowed_from: Sequence[str]
) -> list[int]:
    """``set_execution_state`` for many executions in one statement; returns those moved."""
    if not execution_ids:
        return []
    rows = await conn.fetch(
        "UPDATE executions SET state = $2, updated_at = now(),"
        " started_at = CASE WHEN $2 = 'running' THEN coalesce(started_at, now())"
        "  ELSE started_at END"
        " WHERE id = ANY($1::bigint[]) AND state = ANY($3::text[])"
        " RETURNING id, user_name, extract(epoch FROM started_at - submitted_at) AS waited",
        list(execution_ids),
        new,
        list(allowed_from),
    )
    return await _announce(conn, rows, new)


async def admit_submitted(conn: asyncpg.Connection) -> list[int]:
    """Take every submitted execution into the queue, in one statement; returns those
    moved."""
    rows = await conn.fetch(
        "UPDATE executions SET state = 'queued', updated_at = now()"
        " WHERE state = 'submitted' RETURNING id, user_name"
    )
    return await _announce(conn, rows, "queued")


async def _announce(conn: asyncpg.Connection, rows: list[asyncpg.Record], new: str) -> list[int]:
    """Queue the state events of the executions (rows of ``id``, ``user_name``, and
    ``waited`` when they run) that moved to ``new``; returns their ids."""
    if new == "running":
        for r in rows:
            metrics.START_WAIT.observe(max(0.0, float(r["waited"])))
    await enqueue(conn, state_events([(r["id"], r["user_name"]) for r in rows], new))
    return [r["id"] for r in rows]


async def dispatch_ready(
    conn: asyncpg.Connection, deployment: str, execution_ids: Collection[int]
) -> int:
    """Send start commands for placed instances whose startup group may start now.

    Services start in ascending ``startup_order``: a group starts once every essential
    instance of the earlier groups runs. An instance also waits while its node still
    holds containers being stopped for it (reclaimed capacity), so a node is never
    over-committed. Set-based: a handful of statements for any number of executions.
    """
    if not execution_ids:
        return 0
    rows = [dict(r) for r in await locked_instances(conn, execution_ids)]
    ready = ready_rows(rows)
    if not ready:
        return 0
    room = await node_room(conn, {r["node"] for r in ready})
    return await write_starts(conn, deployment, fitting(ready, room), [], ())


async def locked_instances(
    conn: asyncpg.Connection, execution_ids: Collection[int], placing: Collection[int] = ()
) -> list[asyncpg.Record]:
    """Every instance of the executions, locked (in id order), with the spec of those
    placed and of those in ``placing`` (to be placed now): what a start command needs."""
    return await conn.fetch(
        "SELECT id, execution_id, name, essential, startup_order, state, node, generation,"
        " cores, memory, CASE WHEN state = 'placed' OR id = ANY($2::bigint[]) THEN spec END"
        " AS spec FROM instances WHERE execution_id = ANY($1::bigint[])"
        " ORDER BY id FOR NO KEY UPDATE",
        list(execution_ids),
        list(placing),
    )


def ready_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The placed rows whose startup group may start now (`states.ready_starts`)."""
    by_id = {r["id"]: r for r in rows}
    return [
        by_id[i]
        for i in st.ready_starts(
            st.StartCandidate(
                r["id"],
                r["execution_id"],
                r["essential"],
                r["startup_order"],
                InstanceState(r["state"]),
            )
            for r in rows
        )
    ]


def fitting(
    ready: list[dict[str, Any]], room: dict[str, tuple[float, int, bool]]
) -> list[dict[str, Any]]:
    """Those of ``ready`` that fit their node's room, taken in order (each takes room)."""
    fits = []
    for r in ready:
        free = room.get(r["node"])
        if free is None or free[0] < r["cores"] - 1e-9 or free[1] < r["memory"]:
            continue
        room[r["node"]] = (free[0] - r["cores"], free[1] - r["memory"], free[2])
        fits.append(r)
    return fits


async def write_starts(
    conn: asyncpg.Connection,
    deployment: str,
    starting: list[dict[str, Any]],
    placed: list[dict[str, Any]],
    fresh: Collection[int],
) -> int:
    """Store ``starting`` as starting (their containers named) and ``placed`` as placed
    on their nodes, in one statement, and queue the start commands; returns how many
    start. The instances in ``fresh`` move from created (placed by this pass), the
    others from placed, under the locks the caller holds."""
    if not starting and not placed:
        return 0
    rows = starting + placed
    names = [
        container_name(deployment, r["execution_id"], r["name"], r["generation"]) for r in starting
    ]
    moved = await conn.fetchval(
        "WITH s AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],"
        "  $5::text[]) AS s(id, node, state, name, was)),"
        " m AS (UPDATE instances i SET state = s.state, node = s.node,"
        "  container_name = coalesce(s.name, i.container_name),"
        "  container_id = CASE WHEN s.name IS NULL THEN i.container_id END,"
        "  endpoints = CASE WHEN s.name IS NULL THEN i.endpoints ELSE '{}' END,"
        "  removed = CASE WHEN s.name IS NULL THEN i.removed ELSE false END,"
        "  updated_at = now()"
        "  FROM s WHERE i.id = s.id AND i.state = s.was RETURNING 1)"
        " SELECT count(*) FROM m",
        [r["id"] for r in rows],
        [r["node"] for r in rows],
        ["starting"] * len(starting) + ["placed"] * len(placed),
        [*names, *([None] * len(placed))],
        ["created" if r["id"] in fresh else "placed" for r in rows],
    )
    if moved != len(rows):
        # the caller holds the rows' locks: they cannot have moved since it read them
        raise RuntimeError(f"{len(rows) - moved} of {len(rows)} instances moved meanwhile")
    starts: dict[str, list[m.StartInstance]] = defaultdict(list)  # node -> its starts
    for r, name in zip(starting, names, strict=True):
        starts[r["node"]].append(start_command(deployment, r["execution_id"], r, name))
    # one command per node (a pass often places many instances on one node), split so
    # that no command grows past COMMAND_BYTES
    await enqueue(
        conn,
        [
            Outgoing(part[0] if len(part) == 1 else m.StartInstances(starts=part), node=node)
            for node, cmds in starts.items()
            for part in split_commands(cmds, COMMAND_BYTES)
        ],
    )
    return len(starting)


# The most a StartInstances command carries: well under the broker's message size limit.
COMMAND_BYTES = 1024 * 1024


def split_commands(starts: list[m.StartInstance], limit: int) -> list[list[m.StartInstance]]:
    """``starts`` in consecutive groups whose encoded sizes add up to at most ``limit``
    (a single start larger than that goes alone)."""
    groups: list[list[m.StartInstance]] = [[]]
    size = 0
    for start in starts:
        n = len(m.encode(start))
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(start)
        size += n
    return groups


async def node_room(
    conn: asyncpg.Connection, nodes: set[str]
) -> dict[str, tuple[float, int, bool]]:
    """Free cores and memory per node, counting only containers that exist or will
    soon, and whether it is drained (it takes nothing new)."""
    rows = await conn.fetch(
        "SELECT n.name, n.cores - coalesce(sum(i.cores), 0) AS cores,"
        " n.memory - coalesce(sum(i.memory), 0) AS memory,"
        " n.drained_at IS NOT NULL AS drained"
        " FROM nodes n LEFT JOIN instances i ON i.node = n.name"
        f"  AND i.state IN {_ON_NODE}"
        " WHERE n.name = ANY($1::text[]) GROUP BY n.name",
        list(nodes),
    )
    return {r["name"]: (float(r["cores"]), int(r["memory"]), r["drained"]) for r in rows}


def start_command(
    deployment: str, execution_id: int, row: Mapping[str, Any], name: str
) -> m.StartInstance:
    """The StartInstance command for one instance row (its spec was expanded at submit)."""
    spec = row["spec"]
    return m.StartInstance(
        execution_id=execution_id,
        instance_id=row["id"],
        instance=row["name"],
        container_name=name,
        network=network_name(deployment, execution_id),
        image=spec["image"],
        command=spec.get("command"),
        environment=spec.get("environment", {}),
        cores_limit=spec["cores_limit"],
        memory_limit=spec["memory_limit"],
        # what the placement reserved: the executor re-checks it against its node
        cores_reserved=spec["cores_reserved"],
        memory_reserved=spec["memory_reserved"],
        run_as_root=spec.get("run_as_root", False),
        shm_size=spec.get("shm_size"),
        work_dir=spec.get("work_dir"),
        ports=[
            m.PortRequest(
                name=p["name"],
                port_number=p["port_number"],
                protocol=p.get("protocol", "tcp"),
                url_template=p.get("url_template"),
            )
            for p in spec.get("ports", [])
        ],
        volumes=[
            m.VolumeRequest(
                source=f"{deployment}-{v['name']}",
                path=v["path"],
                read_only=v.get("read_only", False),
            )
            for v in spec.get("volumes", [])
        ],
    )


async def enqueue_stop(
    conn: asyncpg.Connection, deployment: str, execution_id: int, instance_id: int
) -> None:
    """Ask the instance's executor to remove its (dead) container."""
    row = await conn.fetchrow(
        "SELECT id, node, container_name FROM instances WHERE id = $1", instance_id
    )
    if row is not None and row["node"] and row["container_name"]:
        await enqueue(conn, [stop_command(deployment, execution_id, row)])


async def requeue(
    conn: asyncpg.Connection,
    instance_id: int,
    *,
    from_state: str,
    restart: bool = False,
    backoff: float = 0.0,
) -> int | None:
    """Put an ended instance back in the queue, as its next generation.

    ``restart``: after a death, so its restart count grows and it waits ``backoff``
    seconds before it may be placed again. Guarded: only an instance still in
    ``from_state`` moves (a redelivered verdict finds it moved already). Returns the
    new restart count, or None when nothing moved.
    """
    count: int | None = await conn.fetchval(
        "UPDATE instances SET state = 'created', node = NULL, generation = generation + 1,"
        " restart_count = restart_count + $3::int,"
        " backoff = CASE WHEN $3::int = 1 THEN $4 ELSE backoff END,"
        " not_before = CASE WHEN $3::int = 1 THEN now() + make_interval(secs => $4)"
        "  ELSE not_before END,"
        " updated_at = now() WHERE id = $1 AND state = $2 RETURNING restart_count",
        instance_id,
        from_state,
        1 if restart else 0,
        backoff,
    )
    return count


async def stop_orphans(conn: asyncpg.Connection, deployment: str, node: str) -> int:
    """Ask a node that came back to remove the containers given up when it was lost."""
    rows = await conn.fetch(
        "DELETE FROM orphans WHERE node = $1"
        " RETURNING execution_id, instance_id AS id, container_name, node",
        node,
    )
    await enqueue(conn, [stop_command(deployment, r["execution_id"], r) for r in rows])
    return len(rows)

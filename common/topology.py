"""The bus's topology, declared by every service on connect (and by aio-pika again after a
reconnect): the exchanges, the shared queues with their bindings, the dead letters, and
how each kind of queue is declared (common/routes.py says which queue is of which kind).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from common import routes
from common.routes import COMMANDS, DEAD_LETTERS, DLX, EVENTS

log = structlog.get_logger("bus")


def _queue_arguments(kind: routes.QueueKind, quorum_size: int = 0) -> dict[str, Any]:
    """How a queue of a kind is declared: a heartbeat queue is classic with a message
    time to live; every other one is quorum with a delivery limit and dead-lettering."""
    if kind == "heartbeats":
        return {"x-queue-type": "classic", "x-message-ttl": routes.HEARTBEAT_TTL_MS}
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": routes.DELIVERY_LIMIT,
        "x-dead-letter-exchange": DLX,
        **_quorum_arguments(quorum_size),
    }


def _quorum_arguments(quorum_size: int) -> dict[str, Any]:
    return {"x-quorum-initial-group-size": quorum_size} if quorum_size else {}


@dataclass(frozen=True, slots=True)
class _Declaration:
    name: str
    durable: bool
    arguments: dict[str, Any]


def _declaration(
    name: str, kind: routes.QueueKind | None = None, quorum_size: int = 0
) -> _Declaration:
    kind = kind or routes.queue(name).kind
    # A heartbeat queue is transient: a durable classic queue lives on one node of a
    # cluster and cannot be declared again while that node is down (a service could not
    # reconnect); a transient one is deleted with its node and made again elsewhere.
    return _Declaration(name, kind != "heartbeats", _queue_arguments(kind, quorum_size))


def _dead_letters(quorum_size: int) -> _Declaration:
    # quorum: the dead letters outlive the death of a node; no limit, no dead-lettering
    return _Declaration(
        DEAD_LETTERS, True, {"x-queue-type": "quorum", **_quorum_arguments(quorum_size)}
    )


async def declare_queue(
    channel: AbstractChannel,
    name: str,
    kind: routes.QueueKind | None = None,
    quorum_size: int = 0,
) -> AbstractQueue:
    how = _declaration(name, kind, quorum_size)
    return await channel.declare_queue(name, durable=how.durable, arguments=how.arguments)


async def replace_outdated_queues(connection: AbstractRobustConnection, quorum_size: int) -> None:
    """Delete the shared queues declared otherwise than they are now (an older version's
    durable heartbeat queue or classic dead letters) so that they are declared anew: a
    heartbeat queue whatever it holds (heartbeats are soon worth nothing), any other only
    when it is empty. A queue that still holds messages stays, and the declaration that
    follows fails with the broker's reason (docs/operations.md, "A replicated bus")."""
    wanted = [
        _dead_letters(quorum_size),
        *(_declaration(q, None, quorum_size) for q in routes.bindings()),
    ]
    for how in wanted:
        # a refused declaration closes its channel: each on a channel of its own
        async with connection.channel() as channel:
            try:
                await channel.declare_queue(how.name, durable=how.durable, arguments=how.arguments)
                continue
            except aio_pika.exceptions.ChannelPreconditionFailed as exc:
                reason = str(exc)
        async with connection.channel() as channel:
            heartbeats = not how.durable
            with contextlib.suppress(aio_pika.exceptions.ChannelPreconditionFailed):
                await channel.queue_delete(how.name, if_empty=not heartbeats)
                log.warning("queue.replaced", queue=how.name, reason=reason)


async def declare_topology(channel: AbstractChannel, quorum_size: int = 0) -> None:
    """Declare every exchange and the shared queues with their bindings (idempotent)."""
    events = await channel.declare_exchange(EVENTS, aio_pika.ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(COMMANDS, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(DLX, aio_pika.ExchangeType.FANOUT, durable=True)
    dead = _dead_letters(quorum_size)
    dead_queue = await channel.declare_queue(dead.name, durable=True, arguments=dead.arguments)
    await dead_queue.bind(dlx)
    for name, keys in routes.bindings().items():
        queue = await declare_queue(channel, name, None, quorum_size)
        for exchange, key in keys:
            await queue.bind(exchange if exchange != EVENTS else events, routing_key=key)
    current = {(q, k) for q, keys in routes.bindings().items() for _, k in keys}
    for name, key in routes.FORMER_BINDINGS:
        if (name, key) not in current:
            await (await channel.get_queue(name, ensure=False)).unbind(events, key)

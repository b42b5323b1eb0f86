"""The AMQP request interface, for platforms that talk to Zoe over RabbitMQ.

Publish a ``SubmitRequest``, ``TerminateRequest`` or ``GetRequest`` to the default
exchange with routing key ``api.requests``, a ``reply_to`` queue and a
``correlation_id``; the reply is an ``ApiReply`` whose ``status`` and ``body`` are what
the HTTP API would answer. A submission's message ``id`` is its idempotency key, so a
redelivered request creates one execution. State changes are published on ``zoe.events``
with routing key ``state.execution.<id>`` for whoever binds to them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from common import messages as m
from common.errors import UserError
from services.api import actions, store
from services.api.shop import Shop


@dataclass(frozen=True)
class Deps:
    """What the request handlers need."""

    pool: asyncpg.Pool
    shop: Shop
    deployment: str


async def on_submit(msg: m.SubmitRequest, deps: Deps) -> m.ApiReply:
    """Create an execution (idempotent on the message id)."""
    body: dict[str, Any] = {"name": msg.name, "priority": msg.priority}
    if msg.application is not None:
        body["application"] = msg.application
    if msg.zapp is not None:
        body["zapp"] = msg.zapp
        body["params"] = msg.params or {}
        if msg.resources is not None:
            body["resources"] = msg.resources
    execution, created = await actions.submit(
        deps.pool, deps.shop, deps.deployment, body, request_id=f"amqp:{msg.id}"
    )
    return m.ApiReply(status=201 if created else 200, body=execution)


async def on_terminate(msg: m.TerminateRequest, deps: Deps) -> m.ApiReply:
    """Ask for an execution to end."""
    state = await store.request_termination(deps.pool, msg.execution_id)
    return m.ApiReply(
        status=202, body={"id": msg.execution_id, "state": state, "terminating": True}
    )


async def on_get(msg: m.GetRequest, deps: Deps) -> m.ApiReply:
    """Read one execution."""
    return m.ApiReply(status=200, body=await store.get_execution(deps.pool, msg.execution_id))


HANDLERS: dict[type[m.Message], Callable[[Any, Deps], Awaitable[m.ApiReply]]] = {
    m.SubmitRequest: on_submit,
    m.TerminateRequest: on_terminate,
    m.GetRequest: on_get,
}


async def handle(msg: m.Message, deps: Deps) -> m.ApiReply:
    """Answer one request; a user error is an error reply (acked), not a dead letter."""
    try:
        return await HANDLERS[type(msg)](msg, deps)
    except UserError as exc:
        return error_reply(exc)


def error_reply(exc: UserError) -> m.ApiReply:
    """What a refused request gets: the status and body the HTTP API would give."""
    return m.ApiReply(status=exc.status, body=exc.to_dict())

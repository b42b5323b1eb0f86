"""The AMQP request interface, for platforms that talk to Zoe over RabbitMQ.

Publish a ``SubmitRequest``, ``TerminateRequest`` or ``GetRequest`` to the default
exchange with routing key ``api.requests``, a ``reply_to`` queue and a
``correlation_id``; the reply is an ``ApiReply`` whose ``status`` and ``body`` are what
the HTTP API would answer. A submission's message ``id`` is its idempotency key, so a
redelivered request creates one execution. State changes are published on ``zoe.events``
with routing key ``state.executions`` for whoever binds to them: each an
``ExecutionStatesChanged``, the changes one statement of the scheduler made.

Each request carries its platform's API token in the message header ``zoe-token`` and
acts as that token's user (a platform is a user of its own); without one, or with an
unknown, revoked or expired one, the reply is a 401.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from common import messages as m
from common.errors import UserError
from services.api import actions, auth, endpoints, store
from services.api.auth import Caller
from services.api.shop import Shop


@dataclass(frozen=True)
class Deps:
    """What the request handlers need."""

    pool: asyncpg.Pool
    shop: Shop
    deployment: str
    public_url: str = ""


async def on_submit(msg: m.SubmitRequest, deps: Deps, caller: Caller) -> m.ApiReply:
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
        deps.pool,
        deps.shop,
        deps.deployment,
        body,
        caller,
        request_id=f"amqp:{caller.name}:{msg.id}",
    )
    return m.ApiReply(status=201 if created else 200, body=execution)


async def on_terminate(msg: m.TerminateRequest, deps: Deps, caller: Caller) -> m.ApiReply:
    """Ask for an execution to end."""
    state = await store.request_termination(deps.pool, msg.execution_id, caller.owner_filter())
    return m.ApiReply(
        status=202, body={"id": msg.execution_id, "state": state, "terminating": True}
    )


async def on_get(msg: m.GetRequest, deps: Deps, caller: Caller) -> m.ApiReply:
    """Read one execution."""
    execution = await store.get_execution(deps.pool, msg.execution_id, caller.owner_filter())
    return m.ApiReply(status=200, body=endpoints.shown(execution, deps.public_url))


HANDLERS: dict[type[m.Message], Callable[[Any, Deps, Caller], Awaitable[m.ApiReply]]] = {
    m.SubmitRequest: on_submit,
    m.TerminateRequest: on_terminate,
    m.GetRequest: on_get,
}


async def handle(msg: m.Message, deps: Deps, headers: Mapping[str, Any]) -> m.ApiReply:
    """Answer one request as the caller its ``zoe-token`` header names; a user error is
    an error reply (acked), not a dead letter."""
    try:
        caller = await auth.caller_of_message(deps.pool, headers)
        return await HANDLERS[type(msg)](msg, deps, caller)
    except UserError as exc:
        return error_reply(exc)


def error_reply(exc: UserError) -> m.ApiReply:
    """What a refused request gets: the status and body the HTTP API would give."""
    return m.ApiReply(status=exc.status, body=exc.to_dict())

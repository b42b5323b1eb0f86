"""Overlay networks over the bus: a worker engine's executor asks, a manager's answers.

Swarm networks are made and removed on a manager engine only
(services/executor/engine/overlay.py). An executor whose engine is a worker sends
`NetworkEnsure` to the shared queue ``executor.networks`` and waits for the
`NetworkReply`; it sends `NetworkRelease` once the last container of an execution on its
engine is gone. Only executors whose engine is a manager consume that queue.

The caller is checked twice. By who sent it: only the executor of the node a request
names may send it, known by the broker user the broker checked it was published by
(``<deployment>-executor-<node>``, as provisioning names them; a deployment whose
services share one broker user has no boundary to guard, so that user is taken too).
And by what the messages can do: they name an execution, never a network, so a sender
can only have this deployment's execution networks made (removed by the sweep when
unused) or removed when nothing uses them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from common import messages as m
from common import routes
from common.bus import Bus
from common.errors import UserError
from common.retry import Backoff
from services.executor.engine.overlay import NetworkUnavailable, OverlayNetworks, overlay_name

log = structlog.get_logger("executor")
RELEASE_SETTLE = 15.0
_REPLY = m.decoder(m.NetworkReply)


class BusNetworkAsker:
    """`NetworkAsker` of a worker engine's executor: requests on ``executor.networks``."""

    def __init__(self, bus: Bus, *, node: str, timeout: float) -> None:
        self._bus = bus
        self._node = node
        self._timeout = timeout

    async def ensure(self, network: str, execution_id: int) -> None:
        """Have a manager's executor make the execution's network; `NetworkUnavailable`
        when none answers within the timeout or its engine failed to."""
        ask = m.NetworkEnsure(node=self._node, execution_id=execution_id)
        try:
            body = await self._bus.request(
                "", ask, timeout=self._timeout, queue=routes.EXECUTOR_NETWORKS
            )
        except TimeoutError:
            raise NetworkUnavailable(
                f"no swarm manager's executor answered the request for overlay network"
                f" {network} within {self._timeout:g} s (queue {routes.EXECUTOR_NETWORKS})"
            ) from None
        except Exception as exc:  # the bus away: the start is tried again
            raise NetworkUnavailable(
                f"the request for overlay network {network} could not be sent: {exc!r}"
            ) from exc
        try:
            reply = _REPLY.decode(body)
        except Exception as exc:
            raise NetworkUnavailable(f"a bad answer for overlay network {network}: {exc}") from exc
        if not reply.ok:
            raise NetworkUnavailable(f"the swarm manager's executor said: {reply.reason}")

    async def release(self, network: str, execution_id: int) -> None:
        """Ask for the network's removal; a failure is only logged (the manager's sweep
        removes a forgotten network)."""
        try:
            await self._bus.publish(m.NetworkRelease(node=self._node, execution_id=execution_id))
        except Exception as exc:
            log.warning("network.release_failed", network=network, reason=repr(exc))


class NetworkRequests:
    """The consumer of ``executor.networks`` on a manager engine's executor."""

    def __init__(self, overlay: OverlayNetworks, *, deployment: str, own_user: str) -> None:
        self.overlay = overlay
        self.deployment = deployment
        self.own_user = own_user  # this executor's broker user

    def sender(self, user: str | None, msg: m.NetworkEnsure | m.NetworkRelease) -> str | None:
        """None when ``user`` may send ``msg`` (the executor of the node it names), else
        why not (`common.bus.SenderCheck`)."""
        expected = f"{self.deployment}-executor-{msg.node}"
        if user in (expected, self.own_user):
            return None
        who = f"broker user {user!r}" if user else "a publisher that named no broker user"
        return f"{who} may not ask for networks as node {msg.node!r} (only {expected!r} may)"

    @staticmethod
    def refusal(error: UserError) -> m.NetworkReply:
        """The reply a refused request gets (`common.bus.RefusalReply`)."""
        fields = "; ".join(map(str, error.errors))
        return m.NetworkReply(
            ok=False, network="", reason=f"{error.message}: {fields}" if fields else error.message
        )

    async def handle(self, msg: m.Message) -> m.Message | None:
        """Route a network request to its handler."""
        return await HANDLERS[type(msg)](self, msg)


async def ensure_network(req: NetworkRequests, msg: m.NetworkEnsure) -> m.NetworkReply:
    """Make the execution's overlay network (idempotent) and say whether it is there."""
    name = overlay_name(req.deployment, msg.execution_id)
    try:
        await req.overlay.create(name, msg.execution_id)
    except NetworkUnavailable as exc:
        log.warning("network.ensure_failed", network=name, asked_by=msg.node, reason=str(exc))
        return m.NetworkReply(ok=False, network=name, reason=str(exc))
    return m.NetworkReply(ok=True, network=name)


async def release_network(req: NetworkRequests, msg: m.NetworkRelease) -> None:
    """Remove the execution's overlay network unless a container somewhere uses it.

    A worker's container just removed may still count as attached for a moment (its
    engine detaches it from the swarm after the removal), so "in use" is tried again
    for ``RELEASE_SETTLE`` seconds; past that, another host uses it (its own release
    comes later) or the sweep removes it."""
    name = overlay_name(req.deployment, msg.execution_id)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + RELEASE_SETTLE
    backoff = Backoff(0.5, 4.0)
    try:
        while not await req.overlay.remove(name) and loop.time() < give_up:
            if not await req.overlay.exists(name):
                return
            await asyncio.sleep(backoff.next())
    except Exception as exc:  # the sweep tries again later
        log.warning("network.release_failed", network=name, reason=str(exc))


HANDLERS: dict[type[m.Message], Callable[[NetworkRequests, Any], Awaitable[m.Message | None]]] = {
    m.NetworkEnsure: ensure_network,
    m.NetworkRelease: release_network,
}

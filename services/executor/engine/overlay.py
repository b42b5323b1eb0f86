"""Executions' overlay networks, when the deployment's engines form one Docker Swarm.

Each execution has one attachable overlay network, ``<deployment>-x<execution id>``,
labelled with the deployment and the execution, that every instance joins (with its
hostname as alias) on whichever host it runs. Swarm networks are created and removed on
a manager engine only:

- the executor of a manager engine creates the network itself (idempotent: a name that
  exists already is the network wanted);
- the executor of a worker engine asks a manager's over the bus (`NetworkEnsure` on the
  queue ``executor.networks``, services/executor/networks.py) and waits for its answer
  for ``ZOE_NETWORK_TIMEOUT`` seconds; no answer, or a manager's engine failing, is
  `NetworkUnavailable`: a transient failure, and the start is retried;
- once the execution's last container on an engine is removed, the network is released:
  removed by a manager's executor (locally, or on a `NetworkRelease` from a worker's),
  which takes "in use" (a container of it on another host) as an answer, not a failure;
- a manager's executor also sweeps, every minute, the overlay networks of its
  deployment older than two minutes that are in use nowhere (a lost release).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

import aiodocker
import structlog
from aiodocker.exceptions import DockerError

from common.lifecycle import wait_any
from services.executor.engine.calls import engine_errors, unless_gone
from services.executor.engine.port import (
    LABEL_DEPLOYMENT,
    LABEL_EXECUTION,
    ContainerSpec,
    EngineError,
    TransientEngineError,
)
from services.executor.locks import KeyedLocks

log = structlog.get_logger("executor.engine")

SWEEP_INTERVAL = 60.0  # a manager's executor looks for forgotten networks this often
SWEEP_MIN_AGE = 120.0  # and removes those older than this that nothing uses


class NetworkUnavailable(TransientEngineError):
    """The execution's overlay network cannot be had now: no manager's executor answered,
    or the engine failed to make it. Transient: the start is tried again."""


class NetworkAsker(Protocol):
    """How a worker's executor gets a manager's to create or remove a network."""

    async def ensure(self, network: str, execution_id: int) -> None:
        """Have the network made (idempotent); `NetworkUnavailable` if that fails."""
        ...

    async def release(self, network: str, execution_id: int) -> None:
        """Ask for the network's removal if unused (fire-and-forget)."""
        ...


def overlay_name(deployment: str, execution_id: int | str) -> str:
    """The name of an execution's overlay network."""
    return f"{deployment}-x{execution_id}"


def in_use(exc: DockerError) -> bool:
    """Whether Docker refused a network's removal because something is attached to it
    (here, or through a task on another host)."""
    return exc.status in (403, 409) or "in use" in (exc.message or "")


class OverlayNetworks:
    """The overlay networks of the executions on one swarm engine.

    The same calls as `Networks` (the bridge mode) for `DockerEngine`; ``async with``
    runs the sweep of forgotten networks on a manager.
    """

    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        deployment: str,
        manager: bool,
        asker: NetworkAsker | None = None,
    ) -> None:
        self._docker = docker
        self._deployment = deployment
        self.manager = manager
        self.asker = asker  # a worker's: set once the bus is open
        self._locks = KeyedLocks()
        self._stop = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    # ---- lifetime (the manager's sweep) -----------------------------------------------

    async def __aenter__(self) -> OverlayNetworks:
        if self.manager:
            self._stop.clear()
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="overlay-sweep")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._sweeper is not None:
            self._stop.set()
            sweeper, self._sweeper = self._sweeper, None
            await sweeper

    def refill(self) -> None:
        """Nothing is made ahead: an overlay network is the execution's own."""

    async def adopt(self) -> None:
        """Nothing to find again: an execution's network is known by its name."""

    # ---- starts -----------------------------------------------------------------------

    def name_for(self, spec: ContainerSpec) -> str:
        return overlay_name(self._deployment, spec.network_labels[LABEL_EXECUTION])

    @contextlib.asynccontextmanager
    async def claimed(self, spec: ContainerSpec) -> AsyncIterator[str]:
        """The execution's overlay network, made (or asked for) if this engine does not
        see it, held for the block: no removal by this executor meanwhile."""
        name = self.name_for(spec)
        async with self._locks(name):
            await self._ensure(name, int(spec.network_labels[LABEL_EXECUTION]))
            yield name

    async def _ensure(self, name: str, execution_id: int) -> None:
        with engine_errors():
            if await unless_gone(self._docker.networks.get(name)) is not None:
                return  # a worker sees it once a container here is attached to it
        if self.manager:
            await self.create(name, execution_id)
        else:
            if self.asker is None:
                raise NetworkUnavailable(f"no way to ask a swarm manager for network {name}")
            await self.asker.ensure(name, execution_id)

    async def create(self, name: str, execution_id: int) -> None:
        """Create the execution's overlay network (a manager only); one of that name
        already there is it. `NetworkUnavailable` when the engine fails to."""
        config: dict[str, Any] = {
            "Name": name,
            "Driver": "overlay",
            "Attachable": True,
            "CheckDuplicate": True,
            "Labels": {LABEL_DEPLOYMENT: self._deployment, LABEL_EXECUTION: str(execution_id)},
        }
        try:
            await self._docker.networks.create(config)
        except DockerError as exc:
            # 409 for one found there first; the swarm's own refusal (a 500) for one a
            # concurrent create (the manager's own start, a worker's request) just made
            message = exc.message or ""
            if exc.status == 409 or "already exists" in message or "name conflicts" in message:
                return
            raise NetworkUnavailable(
                f"overlay network {name} could not be created: {exc.message}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise NetworkUnavailable(
                f"overlay network {name}: engine unreachable: {exc!r}"
            ) from exc
        log.info("network.created", network=name, driver="overlay")

    # ---- removal ----------------------------------------------------------------------

    async def remove_if_unused(self, network: str, execution_id: int) -> bool:
        """Release the execution's overlay network when no container of the execution is
        left on this engine: removed here on a manager (True if it went), asked for on a
        worker (False: another engine removes it). ``network`` (the scheduler's name for
        the execution's network) is not the overlay's."""
        name = overlay_name(self._deployment, execution_id)
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_EXECUTION}={execution_id}"]
        async with self._locks(name):
            with engine_errors():
                left = await self._docker.containers.list(all=True, filters={"label": labels})
            if left:
                return False
            if not self.manager:
                if self.asker is not None:
                    await self.asker.release(name, execution_id)
                return False
            return await self.remove(name)

    async def remove(self, name: str) -> bool:
        """Remove a network unless something, on any host, is attached to it; True if
        it went (a manager only)."""
        try:
            gone = await unless_gone(self._delete(name))
        except DockerError as exc:
            if in_use(exc):
                log.debug("network.in_use", network=name)
                return False
            if "not found" in (exc.message or ""):
                # removed meanwhile by a concurrent release (the engine resolved the
                # name, then found the network gone): what was asked for is done
                log.debug("network.gone", network=name)
                return False
            raise EngineError(
                f"overlay network {name} could not be removed: {exc.message}"
            ) from exc
        if gone is None:
            return False
        log.info("network.removed", network=name, driver="overlay")
        return True

    async def exists(self, name: str) -> bool:
        """Whether the engine knows a network of that name."""
        with engine_errors():
            return await unless_gone(self._docker.networks.get(name)) is not None

    async def _delete(self, name: str) -> bool:
        await aiodocker.networks.DockerNetwork(self._docker, name).delete()
        return True

    # ---- the manager's sweep ----------------------------------------------------------

    async def _sweep_loop(self) -> None:
        while True:
            await wait_any(self._stop, timeout=SWEEP_INTERVAL)
            if self._stop.is_set():
                return
            try:
                await self.sweep()
            except Exception as exc:  # the engine away for a while: next time
                log.warning("network.sweep_failed", reason=str(exc) or repr(exc))

    async def sweep(self, *, min_age: float = SWEEP_MIN_AGE) -> list[str]:
        """Remove this deployment's overlay networks older than ``min_age`` seconds that
        nothing uses on any host; returns those removed."""
        filters = {
            "label": [f"{LABEL_DEPLOYMENT}={self._deployment}", LABEL_EXECUTION],
            "driver": ["overlay"],
        }
        with engine_errors():
            found = await self._docker.networks.list(filters=filters)
        now = dt.datetime.now(dt.UTC)
        removed = []
        for network in found:
            created = _created(network.get("Created") or "")
            if created is None or (now - created).total_seconds() < min_age:
                continue
            async with self._locks(network["Name"]):
                if await self.remove(network["Name"]):
                    removed.append(network["Name"])
        return removed


def _created(stamp: str) -> dt.datetime | None:
    """Docker's creation time (RFC 3339, nanoseconds) as an aware datetime."""
    if not stamp:
        return None
    head, _, rest = stamp.partition(".")
    zone = rest.lstrip("0123456789") if rest else stamp[19:]
    try:
        when = dt.datetime.fromisoformat(head[:19] + (zone if zone != "Z" else "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)

"""Executions' networks on one Docker engine: the spare networks made ahead, and claims.

An execution has a bridge network of its own on each engine it runs on: its instances
reach each other there by their hostnames, also when several executors share the
engine. Docker takes about as long to create a network as to start a container, so the
executor keeps a few spare networks made ahead (``ZOE_NETWORK_POOL``) and an
execution's first start on an engine takes one. Which network an execution uses is
recorded in a *claim*: an empty volume named after the execution's network
(``<network>.network``), labelled with the real network's name. Docker creates volumes
one name at a time and answers the creation of an existing volume with that volume as it
is, so creating the claim is an atomic create-or-get: when two executors start instances
of one execution at once, the first claim wins and both use its network. The claim
outlives the executor (a restarted one finds the network again) and is removed with the
network when the execution's last container on the engine is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import aiodocker
import structlog
from aiodocker.exceptions import DockerError

from common.lifecycle import wait_any
from services.executor.engine.calls import engine_errors, unless_gone
from services.executor.engine.port import (
    CLAIM_SUFFIX,
    LABEL_DEPLOYMENT,
    LABEL_EXECUTION,
    LABEL_NETWORK,
    LABEL_POOL,
    ContainerSpec,
    EngineError,
)
from services.executor.locks import KeyedLocks

log = structlog.get_logger("executor.engine")

# Spare networks: retry delays after a failure, how often a full pool is looked at, and
# how long after a spare was taken another one is made.
_RETRY_FIRST, _RETRY_CAP = 1.0, 30.0
_IDLE_CHECK = 60.0
_REFILL_DELAY = 0.5


class Networks:
    """The networks of the executions on one engine, and the spares kept for them.

    ``async with networks:`` keeps ``pool_size`` spares made ahead while the block runs
    and removes those left when it ends. Claims work without it: a start with no spare
    at hand makes its network there and then.
    """

    def __init__(
        self, docker: aiodocker.Docker, *, deployment: str, node: str, pool_size: int = 0
    ) -> None:
        self._docker = docker
        self._deployment = deployment
        self._node = node
        self._pool_size = pool_size
        # An execution's network is claimed by a start and removed by a stop of the same
        # execution (locked by the execution's network name): the check "is a container
        # left?" and the removal must not interleave with a start that has claimed the
        # network but not yet created its container.
        self._locks = KeyedLocks()
        self._spares: deque[str] = deque()  # networks made ahead, claimed by no execution
        self._spares_wanted = asyncio.Event()  # a spare was taken: make another
        self._stop = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    # ---- the spares' lifetime -------------------------------------------------------------

    async def __aenter__(self) -> Networks:
        if self._pool_size > 0:
            self._stop.clear()
            self._keeper = asyncio.create_task(self._keep_spares(), name="spare-networks")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._keeper is not None:
            self._stop.set()  # not cancelled: the keeper removes the spares left, then ends
            keeper, self._keeper = self._keeper, None
            await keeper

    def refill(self) -> None:
        """A start is done: make a spare again shortly if it took one.

        Asked for only after the start (and made a moment later, see `_keep_spares`):
        creating a network keeps Docker busy, which would slow the start down.
        """
        if len(self._spares) < self._pool_size:
            self._spares_wanted.set()

    async def _keep_spares(self) -> None:
        """Keep ``pool_size`` spare networks until the stop, then remove those left.

        Spares are labelled with the deployment (removed with it) and with this node,
        so that a restarted executor takes back those its killed predecessor left.
        A spare is made again shortly after a start took one.
        """
        stop = self._stop
        adopted = False
        backoff = _RETRY_FIRST
        try:
            while not stop.is_set():
                self._spares_wanted.clear()
                delay: float | None = None
                try:
                    if not adopted:
                        await self._adopt_spares()
                        adopted = True
                    while len(self._spares) < self._pool_size and not stop.is_set():
                        self._spares.append(await self._make_spare())
                    backoff = _RETRY_FIRST
                except Exception as exc:  # engine away, out of address pools: try later
                    log.warning("network.spare_failed", reason=str(exc) or repr(exc))
                    delay, backoff = backoff, min(2 * backoff, _RETRY_CAP)
                await wait_any(self._spares_wanted, stop, timeout=delay or _IDLE_CHECK)
                # A moment later: creating a network keeps Docker (and its iptables runs)
                # busy, which would slow the starts that come with the one that took a
                # spare, and the handling of the start just reported.
                await wait_any(stop, timeout=_REFILL_DELAY)
        finally:
            await self._remove_spares()

    async def _make_spare(self) -> str:
        name = f"{self._deployment}-net-{uuid.uuid4().hex[:12]}"
        labels = {LABEL_DEPLOYMENT: self._deployment, LABEL_POOL: self._node}
        with engine_errors():
            await self._create_network(name, labels)
        return name

    async def _adopt_spares(self) -> None:
        """Take back this node's spares that no claim names (left by a killed executor)."""
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_POOL}={self._node}"]
        with engine_errors():
            mine = await self._docker.networks.list(filters={"label": labels})
        claimed = await self._claimed_networks()
        for found in mine:
            name = found["Name"]
            if name not in claimed and name not in self._spares:
                self._spares.append(name)
                log.info("network.spare_adopted", network=name)

    async def _remove_spares(self) -> None:
        spares, self._spares = list(self._spares), deque()
        for name in spares:
            await self._remove_spare(name)

    async def _remove_spare(self, name: str) -> None:
        try:
            with engine_errors():
                await aiodocker.networks.DockerNetwork(self._docker, name).delete()
        except EngineError as exc:
            log.warning("network.spare_remove_failed", network=name, reason=str(exc))

    # ---- claims ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claimed(self, spec: ContainerSpec) -> AsyncIterator[str]:
        """The network of ``spec``'s execution on this engine, held for the block: create
        the container in it there, so that no stop of the execution removes it meanwhile."""
        async with self._locks(spec.network):
            yield await self._network_for(spec)

    async def _network_for(self, spec: ContainerSpec) -> str:
        """The network the execution uses on this engine: the one its claim names, else
        a spare (made now if none is left), claimed for it.

        Called under the execution's network lock. A network is always made before a
        claim names it, under a name of its own: Docker does not keep two networks
        created at once from taking the same name.
        """
        if self._spares:
            spare = self._spares.popleft()
        else:
            network = await self._claimed(spec.network)
            if network is not None:
                await self._ensure_network(network, spec.network_labels)
                return network
            spare = await self._make_spare()
        try:
            network = await self._claim(spec.network, spec.network_labels, spare)
        except BaseException:
            await self._give_back(spare)
            raise
        if network == spare:
            log.info("network.claimed", network=network, execution_network=spec.network)
        else:
            await self._give_back(spare)  # the execution has a network already
        # Made again if missing: removed behind our back (a network prune, a purge).
        await self._ensure_network(network, spec.network_labels)
        return network

    async def _give_back(self, spare: str) -> None:
        """Return a spare not used after all to the pool, or remove it if that is full."""
        if len(self._spares) < self._pool_size:
            self._spares.appendleft(spare)
        else:
            await self._remove_spare(spare)

    async def _claim(self, name: str, labels: Mapping[str, str], network: str) -> str:
        """Claim ``network`` for the execution whose network is called ``name``, unless it
        has one already; returns the network its claim names (see the module's docstring)."""
        body = {"Name": name + CLAIM_SUFFIX, "Labels": {**labels, LABEL_NETWORK: network}}
        with engine_errors():
            # aiodocker's volumes.create drops the answer: its labels are the point here
            data = await self._docker._query_json("volumes/create", method="POST", data=body)
        return str((data.get("Labels") or {}).get(LABEL_NETWORK) or name)

    async def _claimed_networks(self) -> set[str]:
        """The networks named by the claims of this deployment on the engine."""
        with engine_errors():
            claims = await self._docker.volumes.list(
                filters={"label": [f"{LABEL_DEPLOYMENT}={self._deployment}", LABEL_NETWORK]}
            )
        named = ((v.get("Labels") or {}).get(LABEL_NETWORK) for v in claims.get("Volumes") or ())
        return {str(n) for n in named if n}

    async def adopt(self) -> None:
        """Claim the execution networks an executor made before claims existed (named
        after the execution's network), so that the instances started from now on join
        them rather than a network of their own."""
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", LABEL_EXECUTION]
        with engine_errors():
            found = await self._docker.networks.list(filters={"label": labels})
        claimed = await self._claimed_networks()
        for network in found:
            name = network["Name"]
            if name not in claimed:
                execution = (network.get("Labels") or {})[LABEL_EXECUTION]
                owner = {LABEL_DEPLOYMENT: self._deployment, LABEL_EXECUTION: execution}
                await self._claim(name, owner, name)
                log.info("network.adopted", network=name)

    async def _claimed(self, network: str) -> str | None:
        """The network the claim of an execution's network names; None without a claim."""
        with engine_errors():
            data = await unless_gone(self._docker._query_json(f"volumes/{network}{CLAIM_SUFFIX}"))
        if data is None:
            return None
        return str((data.get("Labels") or {}).get(LABEL_NETWORK) or network)

    async def _ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        with engine_errors():
            if await unless_gone(self._docker.networks.get(name)) is not None:
                return
            try:
                await self._create_network(name, labels)
            except DockerError as exc:
                if exc.status != 409:  # another start created it meanwhile
                    raise

    async def _create_network(self, name: str, labels: Mapping[str, str]) -> None:
        config: dict[str, Any] = {
            "Name": name,
            "Driver": "bridge",
            "Labels": dict(labels),
            "CheckDuplicate": True,
        }
        await self._docker.networks.create(config)
        log.info("network.created", network=name)

    async def remove_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove the execution's network, and its claim, when no container of the
        execution is left on this engine; True if removed.

        Containers of other nodes sharing this engine count too: they use the network.
        """
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_EXECUTION}={execution_id}"]
        async with self._locks(network):
            with engine_errors():
                left = await self._docker.containers.list(all=True, filters={"label": labels})
                if left:
                    return False
                used = await self._claimed(network)
                try:
                    target = aiodocker.networks.DockerNetwork(self._docker, used or network)
                    if await unless_gone(target.delete()) is None:
                        used = None  # already gone: its claim goes all the same
                except DockerError as exc:
                    if exc.status in (403, 409):  # in use
                        return False
                    raise
                # after the network: while its removal is refused, the claim still names it
                volume = aiodocker.volumes.DockerVolume(self._docker, network + CLAIM_SUFFIX)
                await unless_gone(volume.delete())
        if used is None:
            return False
        log.info("network.removed", network=used, execution_network=network)
        return True

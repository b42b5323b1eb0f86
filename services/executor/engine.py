"""The executor's port to a container engine, and its one real adapter: Docker.

The handlers and loops of the executor only call `Engine`; a hollow engine (a fake node
for scale benchmarks) implements the same protocol. An engine manages only the
containers labelled with its deployment and node, so several executors can share one
Docker engine. Every failure of the engine surfaces as `EngineError` carrying the
engine's own message.

Networks. An execution has a bridge network of its own on each engine it runs on: its
instances reach each other there by their hostnames, also when several executors share
the engine. Docker takes about as long to create a network as to start a container, so
the executor keeps a few spare networks made ahead (``ZOE_NETWORK_POOL``) and an
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
import calendar
import contextlib
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer
from aiodocker.events import DockerEvents
from aiodocker.exceptions import DockerError

from common.errors import ZoeError
from common.lifecycle import wait_any
from services.executor import images
from services.executor.locks import KeyedLocks

log = structlog.get_logger("executor.engine")

LABEL_DEPLOYMENT = "zoe.deployment"
LABEL_NODE = "zoe.node"
LABEL_EXECUTION = "zoe.execution"
LABEL_INSTANCE = "zoe.instance"
LABEL_INSTANCE_ID = "zoe.instance_id"
LABEL_PORT_PREFIX = "zoe.port."  # zoe.port.<name> = "8080/tcp"
LABEL_URL_PREFIX = "zoe.url."  # zoe.url.<name> = the port's url_template
LABEL_POOL = "zoe.pool"  # on a spare network: the node whose executor made it
LABEL_NETWORK = "zoe.network"  # on a network claim: the network the execution uses
CLAIM_SUFFIX = ".network"  # a claim is the volume <execution's network name>.network

# Lines read when a caller wants "the whole tail": the bytes limit is applied after.
_MAX_LOG_LINES = 10_000
# Spare networks: retry delays after a failure, how often a full pool is looked at, and
# how long after a spare was taken another one is made.
_RETRY_FIRST, _RETRY_CAP = 1.0, 30.0
_IDLE_CHECK = 60.0
_REFILL_DELAY = 0.5
RUNNING_STATES = frozenset({"running", "paused", "restarting"})
ENDED_STATES = frozenset({"exited", "dead"})


class EngineError(ZoeError):
    """The engine refused or failed a call; the message is the engine's own."""


class ContainerExists(EngineError):
    """A container of that name exists already (made by an earlier delivery of a start)."""


class _ImageMissing(Exception):
    """The image of a container being created is not (or no longer) on the engine."""


# ---- plain data crossing the port -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A container port published on a random host port."""

    name: str
    number: int
    protocol: str = "tcp"
    url_template: str | None = None

    @property
    def key(self) -> str:
        return f"{self.number}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything needed to create one instance's container."""

    name: str
    image: str
    network: str
    network_labels: Mapping[str, str]
    hostname: str  # also its alias in the network
    labels: Mapping[str, str]
    command: str | None = None  # run by ``sh -c``; None: the image's own command
    environment: Mapping[str, str] = field(default_factory=dict)
    work_dir: str | None = None
    memory: int = 0
    nano_cpus: int = 0
    shm_size: int | None = None
    ports: tuple[PortSpec, ...] = ()
    binds: tuple[str, ...] = ()  # "source:path[:ro]", source a host path or a volume
    # Named volumes among the binds' sources: made (labelled) before the container.
    volumes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Container:
    """What the engine says about one container.

    ``exit_code`` and ``oom_killed`` are known only from an inspect (None/False in a
    listing); ``host_ports`` maps "8080/tcp" to the published host port.
    """

    id: str
    name: str
    state: str  # created | running | paused | restarting | removing | exited | dead
    labels: Mapping[str, str]
    exit_code: int | None = None
    oom_killed: bool = False
    host_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


@dataclass(frozen=True, slots=True)
class Removed:
    """A container this engine stopped and removed: how it ended and what it printed."""

    container_id: str
    exit_code: int | None
    oom_killed: bool
    log: str


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Part of a log being followed: what was printed after a cursor, and the next cursor.

    ``running`` is the container's state *before* the log was read: when false, the
    chunk holds everything the container will ever print after the cursor.
    """

    text: str
    cursor: str
    running: bool


@dataclass(frozen=True, slots=True)
class Stats:
    """One sample of a container's resource counters, as the engine reports them."""

    cpu_ns: int  # CPU time the container used since it started
    system_ns: int  # CPU time of the whole host (every core) at the same moment
    online_cpus: int
    memory_bytes: int  # in use, page cache that can be dropped excluded
    # Docker's own previous sample, when it has one (0: none).
    prev_cpu_ns: int = 0
    prev_system_ns: int = 0


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    """A managed container died (``die``) or was removed (``destroy``)."""

    action: str
    container_id: str
    name: str
    labels: Mapping[str, str]
    time: float  # seconds since the epoch, as the engine stamped it
    exit_code: int | None = None


class Engine(Protocol):
    """The calls the executor makes on its node's container engine."""

    async def image_tags(self, prefix: str) -> list[str]:
        """Tags of the local images that start with ``prefix``."""
        ...

    async def inspect(self, name_or_id: str) -> Container | None:
        """The container, or None when it does not exist."""
        ...

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """Make the image and the execution's network if missing, create and start the
        container; inspect it.

        Raises `ContainerExists` when the name is taken. On failure nothing of the
        container is left behind.
        """
        ...

    async def start(self, name: str) -> Container:
        """Start an existing (created) container and inspect it; remove it if that fails."""
        ...

    async def stop_and_remove(self, name: str, *, timeout: float, log_bytes: int) -> Removed | None:
        """Stop (``timeout`` seconds, then kill), read the log tail, remove; None if absent."""
        ...

    async def logs(self, name: str, *, tail: int | None, max_bytes: int) -> str | None:
        """The end of a container's stdout and stderr; None when it does not exist."""
        ...

    async def follow_logs(
        self, name: str, *, cursor: str, tail: int | None, max_bytes: int
    ) -> LogChunk | None:
        """What the container printed after ``cursor`` ("": its tail), at most
        ``max_bytes`` of it; None when it does not exist."""
        ...

    async def stats(self, name_or_id: str) -> Stats | None:
        """A sample of the container's CPU and memory counters; None when it is gone."""
        ...

    async def list_managed(self) -> list[Container]:
        """Every container of this deployment and node, in any state."""
        ...

    def events(self, *, since: float) -> AsyncGenerator[ContainerEvent, None]:
        """``die`` and ``destroy`` events of managed containers from ``since`` on.

        Ends or raises `EngineError` when the stream breaks; close it with ``aclosing``.
        """
        ...

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove an execution's network unless a container of it is left; True if removed."""
        ...

    async def keep_spare_networks(self, stop: asyncio.Event) -> None:
        """Keep networks made ahead for the executions to come until ``stop``, then remove
        those left; an engine without networks just waits."""
        ...

    async def adopt_networks(self) -> None:
        """Find again the networks of the executions already running (at a start)."""
        ...


# ---- the Docker adapter -----------------------------------------------------------------


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Turn what aiodocker and aiohttp raise into `EngineError`."""
    try:
        yield
    except DockerError as exc:
        raise EngineError(exc.message) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise EngineError(f"docker engine unreachable: {exc!r}") from exc


class DockerEngine:
    """`Engine` over a Docker engine (aiodocker)."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        *,
        deployment: str,
        node: str,
        publish_host: str,
        zapps_root: Path,
        network_pool: int = 0,
    ) -> None:
        self._docker = docker
        self._deployment = deployment
        self._node = node
        self._publish_host = publish_host
        self._zapps_root = zapps_root
        self._image_locks = KeyedLocks()
        self._images: set[str] = set()  # images seen present: not checked before a create
        # An execution's network is claimed by a start and removed by a stop of the same
        # execution (locked by the execution's network name): the check "is a container
        # left?" and the removal must not interleave with a start that has claimed the
        # network but not yet created its container.
        self._network_locks = KeyedLocks()
        self._volumes: set[str] = set()  # named volumes made (or found) by this engine
        self._pool_size = network_pool
        self._spares: deque[str] = deque()  # networks made ahead, claimed by no execution
        self._spares_wanted = asyncio.Event()  # a spare was taken: make another

    @property
    def _managed_labels(self) -> list[str]:
        return [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_NODE}={self._node}"]

    # ---- images --------------------------------------------------------------------------

    async def ensure_image(self, ref: str) -> None:
        """Build a missing image with services/executor/images.py (one build per ref)."""
        async with self._image_locks(ref):
            with engine_errors():
                if not await images.image_present(self._docker, ref):
                    log.info("image.missing", image=ref)
                    await images.ensure_image(self._docker, ref, zapps_root=self._zapps_root)
        self._images.add(ref)

    async def image_tags(self, prefix: str) -> list[str]:
        """Tags of local images starting with ``prefix``."""
        with engine_errors():
            images = await self._docker.images.list()
        return sorted(
            tag for image in images for tag in image.get("RepoTags") or () if tag.startswith(prefix)
        )

    # ---- containers ----------------------------------------------------------------------

    async def inspect(self, name_or_id: str) -> Container | None:
        """Inspect a container; None when it does not exist."""
        with engine_errors():
            try:
                data = await self._docker.containers.container(name_or_id).show()
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        return _from_inspect(data)

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """Create (network first) and start a container; remove it again if that fails.

        The name is not looked up first: a create refused for a name in use raises
        `ContainerExists`. An image seen present before is not checked again: a create
        that finds it gone makes it, then creates again.
        """
        try:
            for volume in spec.volumes:
                await self._ensure_volume(volume)
            if spec.image not in self._images:
                await self.ensure_image(spec.image)
            try:
                container = await self._create(spec)
            except _ImageMissing:
                self._images.discard(spec.image)
                await self.ensure_image(spec.image)
                container = await self._create(spec)
            try:
                with engine_errors():
                    await container.start()
                info = await self.inspect(container.id)
                if info is None:
                    raise EngineError(f"container {spec.name} vanished right after its start")
                return info
            except BaseException:
                await self._remove_quietly(container.id)
                raise
        finally:
            # asked for only now (and made a moment later): see keep_spare_networks
            if len(self._spares) < self._pool_size:
                self._spares_wanted.set()

    async def _create(self, spec: ContainerSpec) -> DockerContainer:
        async with self._network_locks(spec.network):
            network = await self._network_for(spec)
            with engine_errors():
                try:
                    return await self._docker.containers.create(
                        docker_config(spec, self._publish_host, network), name=spec.name
                    )
                except DockerError as exc:
                    if exc.status == 409:
                        raise ContainerExists(exc.message) from exc
                    if exc.status == 404 and not await images.image_present(
                        self._docker, spec.image
                    ):
                        raise _ImageMissing(spec.image) from exc
                    raise

    async def start(self, name: str) -> Container:
        """Start an existing (created) container and inspect it; remove it if that fails."""
        try:
            with engine_errors():
                await self._docker.containers.container(name).start()
        except EngineError:
            await self._remove_quietly(name)
            raise
        info = await self.inspect(name)
        if info is None:
            raise EngineError(f"container {name} vanished right after its start")
        return info

    async def stop_and_remove(self, name: str, *, timeout: float, log_bytes: int) -> Removed | None:
        """Stop, inspect the exit, keep the log tail, force-remove; None when absent."""
        container = self._docker.containers.container(name)
        with engine_errors():
            try:
                await container.stop(t=max(0, math.ceil(timeout)))
                data = await container.show()
                text = await _log_tail(container, tail=None, max_bytes=log_bytes)
                await container.delete(force=True)
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        state = data["State"]
        return Removed(data["Id"], state.get("ExitCode"), bool(state.get("OOMKilled")), text)

    async def logs(self, name: str, *, tail: int | None, max_bytes: int) -> str | None:
        """The container's log tail (stdout and stderr); None when it does not exist."""
        with engine_errors():
            try:
                container = self._docker.containers.container(name)
                return await _log_tail(container, tail=tail, max_bytes=max_bytes)
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise

    async def follow_logs(
        self, name: str, *, cursor: str, tail: int | None, max_bytes: int
    ) -> LogChunk | None:
        """The log after ``cursor``, read with Docker's timestamps (see `after_cursor`)."""
        container = self._docker.containers.container(name)
        with engine_errors():
            try:
                info = await container.show()  # before the log: see LogChunk.running
                params: dict[str, Any] = {"timestamps": True}
                if cursor:
                    params["since"] = cursor_since(cursor)
                else:
                    params["tail"] = tail if tail is not None else _MAX_LOG_LINES
                entries = await container.log(stdout=True, stderr=True, **params)
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        running = (info.get("State") or {}).get("Status") in RUNNING_STATES
        text, cursor = after_cursor(entries, cursor, max_bytes, keep_end=not cursor)
        return LogChunk(text, cursor, running)

    async def stats(self, name_or_id: str) -> Stats | None:
        """One-shot stats: Docker answers at its next collection tick (up to a second),
        so callers sample many containers concurrently, and seldom."""
        with engine_errors():
            try:
                data = await self._docker._query_json(  # aiodocker has no one-shot flag
                    f"containers/{name_or_id}/stats", params={"stream": "0", "one-shot": "1"}
                )
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        return _stats(data)

    async def list_managed(self) -> list[Container]:
        """Containers labelled with this deployment and node (from the engine's listing)."""
        with engine_errors():
            found = await self._docker.containers.list(
                all=True, filters={"label": self._managed_labels}
            )
        return [_from_summary(c._container) for c in found]

    # ---- events --------------------------------------------------------------------------

    async def events(self, *, since: float) -> AsyncGenerator[ContainerEvent, None]:
        """Stream ``die``/``destroy`` events of managed containers, replayed from ``since``.

        aiodocker's `DockerEvents.subscribe()` would start its reader with a bare
        ``ensure_future`` that nobody owns; here the reader is this generator's task,
        cancelled when the generator closes, and its error is raised to the caller.
        """
        source = DockerEvents(self._docker)
        subscriber = source.subscribe(create_task=False)
        filters = {
            "type": ["container"],
            "event": ["die", "destroy"],
            "label": self._managed_labels,
        }
        reader = asyncio.ensure_future(source.run(filters=filters, since=_timestamp(since)))
        try:
            while (raw := await subscriber.get()) is not None:  # None: the stream ended
                event = _event(raw)
                if event is not None:
                    yield event
            with engine_errors():
                await reader
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    # ---- volumes and networks ------------------------------------------------------------

    async def _ensure_volume(self, name: str) -> None:
        """Create a named volume labelled with the deployment (so it can be found and
        removed with it) unless this engine did already; creating it again is harmless."""
        if name in self._volumes:
            return
        with engine_errors():
            await self._docker.volumes.create(
                {"Name": name, "Labels": {LABEL_DEPLOYMENT: self._deployment}}
            )
        self._volumes.add(name)

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

    async def adopt_networks(self) -> None:
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
            try:
                data = await self._docker._query_json(f"volumes/{network}{CLAIM_SUFFIX}")
            except DockerError as exc:
                if exc.status == 404:
                    return None
                raise
        return str((data.get("Labels") or {}).get(LABEL_NETWORK) or network)

    async def _ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        with engine_errors():
            try:
                await self._docker.networks.get(name)
                return
            except DockerError as exc:
                if exc.status != 404:
                    raise
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

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove the execution's network, and its claim, when no container of the
        execution is left on this engine.

        Containers of other nodes sharing this engine count too: they use the network.
        """
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_EXECUTION}={execution_id}"]
        async with self._network_locks(network):
            with engine_errors():
                left = await self._docker.containers.list(all=True, filters={"label": labels})
                if left:
                    return False
                used = await self._claimed(network)
                try:
                    await aiodocker.networks.DockerNetwork(self._docker, used or network).delete()
                except DockerError as exc:
                    if exc.status in (403, 409):  # in use
                        return False
                    if exc.status != 404:  # already gone: its claim goes all the same
                        raise
                    used = None
                # after the network: while its removal is refused, the claim still names it
                await self._delete_volume(network + CLAIM_SUFFIX)
        if used is None:
            return False
        log.info("network.removed", network=used, execution_network=network)
        return True

    # ---- spare networks ------------------------------------------------------------------

    async def keep_spare_networks(self, stop: asyncio.Event) -> None:
        """Keep ``network_pool`` spare networks until ``stop``, then remove those left.

        Spares are labelled with the deployment (removed with it) and with this node,
        so that a restarted executor takes back those its killed predecessor left.
        A spare is made again shortly after a start took one.
        """
        if self._pool_size <= 0:
            await stop.wait()
            return
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
        with engine_errors():
            mine = await self._docker.networks.list(
                filters={
                    "label": [
                        f"{LABEL_DEPLOYMENT}={self._deployment}",
                        f"{LABEL_POOL}={self._node}",
                    ]
                }
            )
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

    async def _delete_volume(self, name: str) -> None:
        try:
            await aiodocker.volumes.DockerVolume(self._docker, name).delete()
        except DockerError as exc:
            if exc.status != 404:
                raise

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self._docker.containers.container(container_id).delete(force=True)
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("container.cleanup_failed", container_id=container_id, reason=str(exc))


# ---- translations (pure) ----------------------------------------------------------------


def docker_config(
    spec: ContainerSpec, publish_host: str, network: str | None = None
) -> dict[str, Any]:
    """The body of Docker's ``containers/create`` for ``spec``, attached to ``network``
    (the execution's network as the engine found it; by default ``spec.network``)."""
    network = network or spec.network
    host_config: dict[str, Any] = {
        "Memory": spec.memory,
        # No swap beyond the memory limit: the limit is what the scheduler reserved.
        "MemorySwap": spec.memory if spec.memory else 0,
        "NanoCpus": spec.nano_cpus,
        "NetworkMode": network,
        "PortBindings": {p.key: [{"HostIp": publish_host, "HostPort": ""}] for p in spec.ports},
        "Binds": list(spec.binds),
    }
    if spec.shm_size:
        host_config["ShmSize"] = spec.shm_size
    config: dict[str, Any] = {
        "Image": spec.image,
        "Env": [f"{k}={v}" for k, v in spec.environment.items()],
        "Labels": dict(spec.labels),
        "Hostname": spec.hostname,
        "ExposedPorts": {p.key: {} for p in spec.ports},
        "HostConfig": host_config,
        "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": [spec.hostname]}}},
    }
    if spec.command is not None:
        config["Cmd"] = ["sh", "-c", spec.command]
    if spec.work_dir:
        config["WorkingDir"] = spec.work_dir
    return config


def _from_inspect(data: Mapping[str, Any]) -> Container:
    state = data.get("State") or {}
    ports = (data.get("NetworkSettings") or {}).get("Ports") or {}
    host_ports = {key: int(b[0]["HostPort"]) for key, b in ports.items() if b and b[0]["HostPort"]}
    return Container(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        state=state.get("Status", "unknown"),
        labels=(data.get("Config") or {}).get("Labels") or {},
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        host_ports=host_ports,
    )


def _from_summary(data: Mapping[str, Any]) -> Container:
    host_ports = {
        f"{p['PrivatePort']}/{p['Type']}": int(p["PublicPort"])
        for p in data.get("Ports") or ()
        if p.get("PublicPort")
    }
    names = data.get("Names") or [""]
    return Container(
        id=data["Id"],
        name=names[0].lstrip("/"),
        state=data.get("State", "unknown"),
        labels=data.get("Labels") or {},
        host_ports=host_ports,
    )


def _event(raw: Mapping[str, Any]) -> ContainerEvent | None:
    actor = raw.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    action = raw.get("Action") or raw.get("status")
    if action not in ("die", "destroy") or not actor.get("ID"):
        return None
    code = attributes.pop("exitCode", None)
    name = attributes.pop("name", "")
    attributes.pop("image", None)
    return ContainerEvent(
        action=action,
        container_id=actor["ID"],
        name=name,
        labels=attributes,
        time=int(raw.get("timeNano", 0)) / 1e9,
        exit_code=int(code) if code is not None else None,
    )


def _timestamp(seconds: float) -> str:
    """Docker's ``since`` format: seconds and nanoseconds."""
    whole = math.floor(seconds)
    return f"{whole}.{min(int((seconds - whole) * 1e9), 999_999_999):09d}"


async def _log_tail(container: Any, *, tail: int | None, max_bytes: int) -> str:
    lines = await container.log(
        stdout=True, stderr=True, tail=tail if tail is not None else _MAX_LOG_LINES
    )
    data = "".join(lines).encode()
    if len(data) > max_bytes:
        data = data[-max_bytes:]
    return data.decode(errors="ignore")


def _stats(data: Mapping[str, Any]) -> Stats:
    cpu = data.get("cpu_stats") or {}
    pre = data.get("precpu_stats") or {}
    mem = data.get("memory_stats") or {}
    detail = mem.get("stats") or {}
    # as `docker stats` does: page cache that can be dropped is not "used"
    inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    return Stats(
        cpu_ns=int((cpu.get("cpu_usage") or {}).get("total_usage", 0)),
        system_ns=int(cpu.get("system_cpu_usage") or 0),
        online_cpus=int(cpu.get("online_cpus") or 1),
        memory_bytes=max(0, int(mem.get("usage") or 0) - int(inactive)),
        prev_cpu_ns=int((pre.get("cpu_usage") or {}).get("total_usage", 0)),
        prev_system_ns=int(pre.get("system_cpu_usage") or 0),
    )


# ---- log cursors (pure) -----------------------------------------------------------------
#
# A cursor is "<timestamp> <count>": the engine's RFC 3339 timestamp of the last entry
# returned, and how many entries carrying exactly that timestamp were returned. The next
# read asks the engine for entries since that timestamp (inclusive) and skips those.


def cursor_since(cursor: str) -> str:
    """Docker's ``since`` ("seconds.nanoseconds") for the timestamp of a cursor."""
    stamp = cursor.split(" ", 1)[0]
    return unix_nanos(stamp)


def unix_nanos(stamp: str) -> str:
    """An RFC 3339 UTC timestamp with up to nanoseconds, as "seconds.nanoseconds"."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return f"{seconds}.{(fraction + '000000000')[:9]}"


def after_cursor(
    entries: list[str], cursor: str, max_bytes: int, *, keep_end: bool
) -> tuple[str, str]:
    """The text of timestamped log entries that come after ``cursor``, and the new cursor.

    At most ``max_bytes`` are returned: the first ones when following (the rest comes
    with the next read), the last ones for an opening tail (``keep_end``).
    """
    last, _, seen_text = cursor.partition(" ")
    seen = int(seen_text) if seen_text else 0
    kept: list[tuple[str, str]] = []
    for entry in entries:
        stamp, _, text = entry.partition(" ")
        if seen and stamp == last:
            seen -= 1  # returned by an earlier read
            continue
        kept.append((stamp, text))
    # whole entries only, and at least one, so that every read makes progress
    order = range(len(kept) - 1, -1, -1) if keep_end else range(len(kept))
    size = taken = 0
    for i in order:
        size += len(kept[i][1].encode())
        if taken and size > max_bytes:
            break
        taken += 1
    kept = kept[len(kept) - taken :] if keep_end else kept[:taken]
    if not kept:
        return "", cursor
    stamp = kept[-1][0]
    same = sum(1 for s, _ in kept if s == stamp)
    if stamp == last:
        same += int(seen_text or 0)
    return "".join(t for _, t in kept), f"{stamp} {same}"

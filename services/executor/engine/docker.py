"""`DockerEngine`: the executor's one real `Engine`, over a Docker engine (aiodocker).

It manages only the containers labelled with its deployment and node, so several
executors can share one Docker engine. Executions' networks are kept by `Networks`
(services/executor/engine/networks.py); what is sent to and read from Docker is
translated by services/executor/engine/translate.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer
from aiodocker.events import DockerEvents
from aiodocker.exceptions import DockerError

from services.executor import images
from services.executor.engine import translate
from services.executor.engine.calls import EngineUnanswered, engine_errors, unless_gone
from services.executor.engine.logs import log_after, log_tail
from services.executor.engine.networks import Networks
from services.executor.engine.overlay import NetworkUnavailable, OverlayNetworks
from services.executor.engine.port import (
    LABEL_DEPLOYMENT,
    LABEL_NODE,
    RUNNING_STATES,
    Container,
    ContainerEvent,
    ContainerExists,
    ContainerSpec,
    EngineError,
    LogChunk,
    NotManaged,
    Removed,
    Stats,
    TransientEngineError,
)
from services.executor.locks import KeyedLocks

log = structlog.get_logger("executor.engine")


class ImageUnavailable(TransientEngineError):
    """The deployment's registry did not answer: the start is tried again."""


class _ImageMissing(Exception):
    """The image of a container being created is not (or no longer) on the engine."""


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
        debian_mirror: str = images.DEFAULT_DEBIAN_MIRROR,
        capacity: translate.NodeCapacity | None = None,
        overlay: OverlayNetworks | None = None,
        registry: str = "",
        workspace_nfs: str = "",
    ) -> None:
        self._docker = docker
        self._deployment = deployment
        self._node = node
        self._publish_host = publish_host
        self._capacity = capacity
        self._zapps_root = zapps_root
        self._debian_mirror = debian_mirror
        self._image_locks = KeyedLocks()
        self._images: set[str] = set()  # images seen present: not checked before a create
        self._volumes: set[str] = set()  # named volumes made (or found) by this engine
        self._registry = registry
        self._workspace_nfs = workspace_nfs
        # Bridge networks of this engine, or the swarm's overlay networks (ZOE_SWARM).
        self._networks: Networks | OverlayNetworks = overlay or Networks(
            docker, deployment=deployment, node=node, pool_size=network_pool
        )

    @property
    def _managed_labels(self) -> list[str]:
        return [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_NODE}={self._node}"]

    def _own(self, data: dict[str, Any], name: str) -> dict[str, Any]:
        """``data`` (an inspect) if it describes a container of this deployment and node;
        else `NotManaged`: whatever its name, another's container is left alone."""
        labels = (data.get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL_DEPLOYMENT) != self._deployment or labels.get(LABEL_NODE) != self._node:
            raise NotManaged(
                f"container {name} is not managed by this node: it lacks the labels"
                f" {LABEL_DEPLOYMENT}={self._deployment} and {LABEL_NODE}={self._node}"
            )
        return data

    async def _show_own(self, name: str) -> DockerContainer | None:
        """The managed container called ``name`` (by its id from now on, so that another
        made under the same name meanwhile is not touched); None when there is none."""
        data = await unless_gone(self._docker.containers.container(name).show())
        if data is None:
            return None
        self._own(data, name)
        return self._docker.containers.container(data["Id"])

    # ---- images --------------------------------------------------------------------------

    async def ensure_image(self, ref: str) -> None:
        """Pull a missing image from the deployment's registry (``ZOE_REGISTRY``), else
        build it with services/executor/images/ and push it there (one per ref);
        `ImageUnavailable` (transient) when the registry does not answer."""
        async with self._image_locks(ref):
            with engine_errors():
                if not await images.image_present(self._docker, ref):
                    log.info("image.missing", image=ref)
                    try:
                        await images.ensure_image(
                            self._docker,
                            ref,
                            zapps_root=self._zapps_root,
                            debian_mirror=self._debian_mirror,
                            registry=self._registry,
                        )
                    except images.RegistryUnavailable as exc:
                        raise ImageUnavailable(str(exc)) from exc
        self._images.add(ref)

    async def image_tags(self, prefix: str) -> list[str]:
        """Tags of local images starting with ``prefix``."""
        with engine_errors():
            found = await self._docker.images.list()
        return sorted(
            tag for image in found for tag in image.get("RepoTags") or () if tag.startswith(prefix)
        )

    # ---- containers ----------------------------------------------------------------------

    async def inspect(self, name_or_id: str) -> Container | None:
        """Inspect a container; None when it does not exist."""
        with engine_errors():
            data = await unless_gone(self._docker.containers.container(name_or_id).show())
        if data is None:
            return None
        return translate.container_from_inspect(self._own(data, name_or_id))

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """Create (network first) and start a container; remove it again if that fails.

        The name is not looked up first: a create refused for a name in use raises
        `ContainerExists`. An image seen present before is not checked again: a create
        that finds it gone makes it, then creates again.
        """
        try:
            for volume in spec.volumes:
                await self._ensure_volume(volume, spec.volume_options.get(volume))
            if spec.image not in self._images:
                await self.ensure_image(spec.image)
            try:
                container = await self._create(spec)
            except _ImageMissing:
                self._images.discard(spec.image)
                await self.ensure_image(spec.image)
                container = await self._create(spec)
            try:
                try:
                    with engine_errors():
                        await container.start()
                except EngineError as exc:
                    gone = self._network_gone(exc)
                    if gone is not None:
                        raise gone from exc
                    raise
                info = await self.inspect(container.id)
                if info is None:
                    raise EngineError(f"container {spec.name} vanished right after its start")
                return info
            except EngineUnanswered as exc:
                # The start may have reached the engine, the container be running:
                # removing it and creating it again would run it twice. Tried again,
                # the create finds it by its name and the start resumes it.
                raise TransientEngineError(f"no answer to the start of {spec.name}: {exc}") from exc
            except Exception:
                await self._remove_quietly(container.id)
                raise
            # A cancellation (a stop's drain timeout) leaves the container as it is: the
            # start may have reached the engine, so removing it here and creating it again
            # on the redelivery could run it twice. The redelivered start finds it by its
            # name and resumes it (starts it if only created, reports it if it ran).
        finally:
            self._networks.refill()

    async def _create(self, spec: ContainerSpec) -> DockerContainer:
        async with self._networks.claimed(spec) as network:
            with engine_errors():
                try:
                    return await self._docker.containers.create(
                        translate.docker_config(
                            spec,
                            self._publish_host,
                            network,
                            capacity=self._capacity,
                            run_as_root=spec.run_as_root,
                        ),
                        name=spec.name,
                    )
                except DockerError as exc:
                    if exc.status == 409:
                        raise ContainerExists(exc.message) from exc
                    gone = self._network_gone(EngineError(exc.message))
                    if gone is not None:
                        raise gone from exc
                    if exc.status == 404 and not await images.image_present(
                        self._docker, spec.image
                    ):
                        raise _ImageMissing(spec.image) from exc
                    raise

    def _network_gone(self, exc: EngineError) -> NetworkUnavailable | None:
        """An overlay network removed between its ensure and the container's start (a
        release or the sweep elsewhere) makes the start fail: transient, as the next
        try makes it again."""
        if isinstance(self._networks, OverlayNetworks) and "network" in str(exc).lower():
            if "not found" in str(exc).lower():
                return NetworkUnavailable(f"the execution's overlay network went: {exc}")
        return None

    async def start(self, name: str) -> Container:
        """Start an existing (created) container and inspect it; remove it if the engine
        refuses (not when no answer came: it may have started, and is left as it is)."""
        try:
            with engine_errors():
                await self._docker.containers.container(name).start()
        except EngineUnanswered:
            raise
        except EngineError:
            await self._remove_quietly(name)
            raise
        info = await self.inspect(name)
        if info is None:
            raise EngineError(f"container {name} vanished right after its start")
        return info

    async def stop_and_remove(self, name: str, *, timeout: float, log_bytes: int) -> Removed | None:
        """Stop, inspect the exit, keep the log tail, force-remove; None when absent;
        `NotManaged` (and nothing done) for a container that is not this node's."""

        async def stop_read_remove() -> Removed | None:
            container = await self._show_own(name)
            if container is None:
                return None
            await container.stop(t=max(0, math.ceil(timeout)))
            data = await container.show()
            text = await log_tail(container, tail=None, max_bytes=log_bytes)
            await container.delete(force=True)
            return translate.removed_from(data, text)

        with engine_errors():
            return await unless_gone(stop_read_remove())

    async def logs(self, name: str, *, tail: int | None, max_bytes: int) -> str | None:
        """The container's log tail (stdout and stderr); None when it does not exist;
        `NotManaged` for a container that is not this node's."""

        async def read() -> str | None:
            container = await self._show_own(name)
            if container is None:
                return None
            return await log_tail(container, tail=tail, max_bytes=max_bytes)

        with engine_errors():
            return await unless_gone(read())

    async def follow_logs(
        self, name: str, *, cursor: str, tail: int | None, max_bytes: int
    ) -> LogChunk | None:
        """The log after ``cursor``, read with Docker's timestamps (see `after_cursor`)."""
        container = self._docker.containers.container(name)

        async def read() -> LogChunk:
            # before the log: see LogChunk.running
            info = self._own(await container.show(), name)
            text, after = await log_after(container, cursor=cursor, tail=tail, max_bytes=max_bytes)
            return LogChunk(text, after, (info.get("State") or {}).get("Status") in RUNNING_STATES)

        with engine_errors():
            return await unless_gone(read())

    async def stats(self, name_or_id: str) -> Stats | None:
        """One-shot stats: Docker answers at its next collection tick (up to a second),
        so callers sample many containers concurrently, and seldom."""
        with engine_errors():
            data = await unless_gone(
                self._docker._query_json(  # aiodocker has no one-shot flag
                    f"containers/{name_or_id}/stats", params={"stream": "0", "one-shot": "1"}
                )
            )
        return translate.stats_from(data) if data is not None else None

    async def list_managed(self) -> list[Container]:
        """Containers labelled with this deployment and node (from the engine's listing)."""
        with engine_errors():
            found = await self._docker.containers.list(
                all=True, filters={"label": self._managed_labels}
            )
        return [translate.container_from_summary(c._container) for c in found]

    # ---- events --------------------------------------------------------------------------

    async def events(self, *, since: float) -> AsyncGenerator[ContainerEvent, None]:
        """Stream the ``translate.EVENTS`` of managed containers, replayed from ``since``.

        aiodocker's `DockerEvents.subscribe()` would start its reader with a bare
        ``ensure_future`` that nobody owns; here the reader is this generator's task,
        cancelled when the generator closes, and its error is raised to the caller.
        """
        source = DockerEvents(self._docker)
        subscriber = source.subscribe(create_task=False)
        filters = {
            "type": ["container"],
            "event": list(translate.EVENTS),
            "label": self._managed_labels,
        }
        reader = asyncio.ensure_future(
            source.run(filters=filters, since=translate.since_timestamp(since))
        )
        try:
            while (raw := await subscriber.get()) is not None:  # None: the stream ended
                event = translate.container_event(raw)
                if event is not None:
                    yield event
            with engine_errors():
                await reader
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    # ---- volumes and networks ------------------------------------------------------------

    async def _ensure_volume(self, name: str, options: Mapping[str, str] | None = None) -> None:
        """Create a named volume labelled with the deployment (so it can be found and
        removed with it) unless this engine did already; creating it again is harmless.

        With ``options`` (an NFS workspace: ``ZOE_WORKSPACE_NFS``) it is a volume of the
        local driver with those options; one of that name made otherwise before is
        refused, saying so (Docker would answer with it as it is)."""
        if name in self._volumes:
            return
        body: dict[str, Any] = {"Name": name, "Labels": {LABEL_DEPLOYMENT: self._deployment}}
        if options:
            body.update(Driver="local", DriverOpts=dict(options))
        with engine_errors():
            # aiodocker's volumes.create drops the answer: its options are checked here
            made = await self._docker._query_json("volumes/create", method="POST", data=body)
        if options and dict((made or {}).get("Options") or {}) != dict(options):
            raise EngineError(
                f"volume {name} exists with the options {made.get('Options') or {}},"
                f" not {dict(options)} (ZOE_WORKSPACE_NFS): remove it (docker volume rm"
                f" {name}) so that it is made again"
            )
        self._volumes.add(name)

    def spare_networks(self) -> Networks | OverlayNetworks:
        """The executions' networks, keeping spares made ahead inside ``async with``."""
        return self._networks

    async def adopt_networks(self) -> None:
        """Claim the execution networks made before claims existed (see `Networks.adopt`)."""
        await self._networks.adopt()

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove the execution's network and its claim when no container of the
        execution is left on this engine (other nodes' included); True if removed."""
        return await self._networks.remove_if_unused(network, execution_id)

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self._docker.containers.container(container_id).delete(force=True)
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("container.cleanup_failed", container_id=container_id, reason=str(exc))

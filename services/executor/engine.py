"""The executor's port to a container engine, and its one real adapter: Docker.

The handlers and loops of the executor only call `Engine`; a hollow engine (a fake node
for scale benchmarks) implements the same protocol. An engine manages only the
containers labelled with its deployment and node, so several executors can share one
Docker engine. Every failure of the engine surfaces as `EngineError` carrying the
engine's own message.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import math
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiodocker
import aiohttp
import structlog
from aiodocker.events import DockerEvents
from aiodocker.exceptions import DockerError

from common.errors import ZoeError
from services.executor.locks import KeyedLocks

log = structlog.get_logger("executor.engine")

LABEL_DEPLOYMENT = "zoe.deployment"
LABEL_NODE = "zoe.node"
LABEL_EXECUTION = "zoe.execution"
LABEL_INSTANCE = "zoe.instance"
LABEL_INSTANCE_ID = "zoe.instance_id"
LABEL_PORT_PREFIX = "zoe.port."  # zoe.port.<name> = "8080/tcp"
LABEL_URL_PREFIX = "zoe.url."  # zoe.url.<name> = the port's url_template

# Lines read when a caller wants "the whole tail": the bytes limit is applied after.
_MAX_LOG_LINES = 10_000
RUNNING_STATES = frozenset({"running", "paused", "restarting"})
ENDED_STATES = frozenset({"exited", "dead"})


class EngineError(ZoeError):
    """The engine refused or failed a call; the message is the engine's own."""


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

    async def ensure_image(self, ref: str) -> None:
        """Make sure ``ref`` is present, building it locally if needed."""
        ...

    async def image_tags(self, prefix: str) -> list[str]:
        """Tags of the local images that start with ``prefix``."""
        ...

    async def inspect(self, name_or_id: str) -> Container | None:
        """The container, or None when it does not exist."""
        ...

    async def create_and_start(self, spec: ContainerSpec) -> Container:
        """Create the network if missing, create and start the container; inspect it.

        On failure nothing of the container is left behind.
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
    ) -> None:
        self._docker = docker
        self._deployment = deployment
        self._node = node
        self._publish_host = publish_host
        self._zapps_root = zapps_root
        self._image_locks = KeyedLocks()
        # A network is created by a start and removed by a stop of the same execution:
        # the check "is a container left?" and the removal must not interleave with a
        # start that has created the network but not yet its container.
        self._network_locks = KeyedLocks()
        self._volumes: set[str] = set()  # named volumes made (or found) by this engine

    @property
    def _managed_labels(self) -> list[str]:
        return [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_NODE}={self._node}"]

    # ---- images --------------------------------------------------------------------------

    async def ensure_image(self, ref: str) -> None:
        """Build a missing image with services/executor/images.py (one build per ref)."""
        from services.executor import images  # another module, written alongside

        async with self._image_locks(ref):
            with engine_errors():
                if await images.image_present(self._docker, ref):
                    return
                log.info("image.missing", image=ref)
                await images.ensure_image(self._docker, ref, zapps_root=self._zapps_root)

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
        """Create (network first) and start a container; remove it again if that fails."""
        for volume in spec.volumes:
            await self._ensure_volume(volume)
        async with self._network_locks(spec.network):
            await self._ensure_network(spec.network, spec.network_labels)
            with engine_errors():
                container = await self._docker.containers.create(
                    docker_config(spec, self._publish_host), name=spec.name
                )
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

    async def _ensure_network(self, name: str, labels: Mapping[str, str]) -> None:
        with engine_errors():
            try:
                await self._docker.networks.get(name)
                return
            except DockerError as exc:
                if exc.status != 404:
                    raise
            config: dict[str, Any] = {
                "Name": name,
                "Driver": "bridge",
                "Labels": dict(labels),
                "CheckDuplicate": True,
            }
            try:
                await self._docker.networks.create(config)
                log.info("network.created", network=name)
            except DockerError as exc:
                if exc.status != 409:  # another start created it meanwhile
                    raise

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove the execution's network when no container of it is left on this engine.

        Containers of other nodes sharing this engine count too: they use the network.
        """
        labels = [f"{LABEL_DEPLOYMENT}={self._deployment}", f"{LABEL_EXECUTION}={execution_id}"]
        async with self._network_locks(network):
            with engine_errors():
                left = await self._docker.containers.list(all=True, filters={"label": labels})
                if left:
                    return False
                try:
                    await aiodocker.networks.DockerNetwork(self._docker, network).delete()
                except DockerError as exc:
                    if exc.status in (403, 404, 409):  # in use, or already gone
                        return False
                    raise
        log.info("network.removed", network=network)
        return True

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self._docker.containers.container(container_id).delete(force=True)
        except (DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("container.cleanup_failed", container_id=container_id, reason=str(exc))


# ---- translations (pure) ----------------------------------------------------------------


def docker_config(spec: ContainerSpec, publish_host: str) -> dict[str, Any]:
    """The body of Docker's ``containers/create`` for ``spec``."""
    host_config: dict[str, Any] = {
        "Memory": spec.memory,
        # No swap beyond the memory limit: the limit is what the scheduler reserved.
        "MemorySwap": spec.memory if spec.memory else 0,
        "NanoCpus": spec.nano_cpus,
        "NetworkMode": spec.network,
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
        "NetworkingConfig": {"EndpointsConfig": {spec.network: {"Aliases": [spec.hostname]}}},
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

"""The executor's port to a container engine: the `Engine` protocol and the plain data
that crosses it.

The handlers and loops of the executor only call `Engine`; a hollow engine (a fake node
for scale benchmarks) implements the same protocol, and `DockerEngine` is its one real
adapter. An engine manages only the containers labelled with its deployment and node,
so several executors can share one Docker engine. Every failure of the engine surfaces
as `EngineError` carrying the engine's own message.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from common.errors import ZoeError

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

RUNNING_STATES = frozenset({"running", "paused", "restarting"})
ENDED_STATES = frozenset({"exited", "dead"})


class EngineError(ZoeError):
    """The engine refused or failed a call; the message is the engine's own."""


class TransientEngineError(EngineError):
    """A failure that may pass (the swarm's manager or the registry not answering now):
    the start that met it is tried again with backoff before it is reported failed."""


class ContainerExists(EngineError):
    """A container of that name exists already (made by an earlier delivery of a start)."""


class NotManaged(EngineError):
    """A container this engine does not manage (it lacks the deployment's and the node's
    labels): a command naming it is refused, and the container is left alone."""


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
    # Driver options of some of them (the local driver's: an NFS workspace), by name.
    volume_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    run_as_root: bool = False  # else the unprivileged ZApp user with no capability


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
    """A managed container died (``die``) or was removed (``destroy``); or the engine
    signalled it (``kill``), or the kernel killed it for want of memory (``oom``): an
    engine may send those two, which only tell how a death came."""

    action: str
    container_id: str
    name: str
    labels: Mapping[str, str]
    time: float  # seconds since the epoch, as the engine stamped it
    exit_code: int | None = None
    signal: str | None = None  # a kill's, as the engine names it ("9", "SIGKILL")


class Engine(Protocol):
    """The calls the executor makes on its node's container engine."""

    async def image_tags(self, prefix: str) -> list[str]:
        """Tags of the local images that start with ``prefix``."""
        ...

    async def inspect(self, name_or_id: str) -> Container | None:
        """The container, or None when it does not exist; `NotManaged` when it is not
        this engine's (``stop_and_remove``, ``logs`` and ``follow_logs`` refuse those too)."""
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
        """``die`` and ``destroy`` events of managed containers from ``since`` on (and
        ``kill`` and ``oom`` ones, where the engine tells them).

        Ends or raises `EngineError` when the stream breaks; close it with ``aclosing``.
        """
        ...

    async def remove_network_if_unused(self, network: str, execution_id: int) -> bool:
        """Remove an execution's network unless a container of it is left; True if removed."""
        ...

    def spare_networks(self) -> AbstractAsyncContextManager[object]:
        """Keep networks made ahead for the executions to come while the block runs, and
        remove those left when it ends; an engine without networks keeps nothing."""
        ...

    async def adopt_networks(self) -> None:
        """Find again the networks of the executions already running (at a start)."""
        ...

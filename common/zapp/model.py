"""The validated ZApp description: what `load_description` returns and the database stores.

Encoding a `Description` with `msgspec.json.encode` gives a valid ZApp description again;
`load_description` of that JSON returns an equal `Description` with no warnings.
"""

from __future__ import annotations

import msgspec


class MemoryRange(msgspec.Struct, frozen=True, kw_only=True):
    """Memory of one instance in bytes: `min` is reserved, `max` is the hard limit."""

    min: int | None
    max: int | None


class CoresRange(msgspec.Struct, frozen=True, kw_only=True):
    """CPU cores of one instance: `min` is reserved, `max` is the CPU limit."""

    min: float | None
    max: float | None


class Resources(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one instance of a service reserves and may use; `shm` is /dev/shm in bytes."""

    memory: MemoryRange
    cores: CoresRange
    shm: int | None = None


class Port(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An endpoint of a service; `url_template` may use `{ip_port}` and `{proxy_path}`."""

    name: str
    port_number: int
    protocol: str
    url_template: str
    proxy: bool = False


class Volume(msgspec.Struct, frozen=True, kw_only=True):
    """A Docker volume mounted at `path` in every instance of the service.

    `name` is a volume of the ZApp's own (shared by the executions of the deployment
    that name it), or `workspace`: the workspace of the user who starts the execution.
    """

    name: str
    path: str
    read_only: bool


class Service(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One service of a ZApp: `total_count` instances, the first `essential_count` essential.

    `environment` values and `command` are templates (see `common.zapp.templates`).
    `run_as_root`: its containers run as root (uid 0) instead of the unprivileged user
    of the ZApp images (uid 1000); only a caller allowed to `run-as-root` may start it.
    """

    name: str
    image: str
    monitor: bool
    essential_count: int
    total_count: int
    startup_order: int
    resources: Resources
    ports: list[Port]
    environment: list[tuple[str, str]]
    volumes: list[Volume]
    command: str | None
    work_dir: str | None = None
    labels: list[str] = []
    run_as_root: bool = False

    def instance_names(self) -> list[str]:
        """The names of this service's instances, `<name><index>` from 0."""
        return [f"{self.name}{index}" for index in range(self.total_count)]


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """A validated ZApp description (format version 3)."""

    name: str
    version: int
    will_end: bool
    size: int
    services: list[Service]

    @property
    def needs_root(self) -> bool:
        """Whether a service runs as root: starting it needs the `run-as-root` capability."""
        return any(service.run_as_root for service in self.services)

    def instance_count(self) -> int:
        """How many instances the ZApp has at most, essential and elastic."""
        return sum(service.total_count for service in self.services)


class LoadedDescription(msgspec.Struct, frozen=True, kw_only=True):
    """A description and what was accepted but changed or ignored while loading it."""

    description: Description
    warnings: list[str] = []

"""What one instance of an execution is: its spec, and the values its templates are filled with.

`expand` builds every spec of an execution; `sizes` builds the skeleton of one to count
what all of them take. Both build them here, so the count cannot drift from the specs.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from common.zapp import templates
from common.zapp.model import Description, Service

DEFAULT_MEMORY = 256 * 1024 * 1024
"""Bytes reserved for an instance whose `resources.memory.min` is null."""

DEFAULT_CORES = 0.1
"""Cores reserved for an instance whose `resources.cores.min` is null."""

SELF = templates.DNS_PREFIX + templates.SELF

WORKSPACE = "workspace"
"""The volume name a description gives the workspace of the user who starts it."""

WORKSPACE_PREFIX = "workspace-"
"""Volumes named so are users' workspaces: a description may not name one itself."""

_VOLUME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PortSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint of one instance; `url_for` turns it into a URL once it is published."""

    name: str
    port_number: int
    protocol: str
    url_template: str
    proxy: bool


class VolumeSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A Docker volume mounted at `path` in one instance."""

    name: str
    path: str
    read_only: bool


class InstanceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to place and start one instance, templates resolved.

    `name` is `<service><index>`; it is also the instance's DNS name in the execution's
    network. The first `essential_count` instances of a service are `essential`.
    """

    name: str
    service: str
    index: int
    essential: bool
    monitor: bool
    startup_order: int
    image: str
    command: str | None
    environment: dict[str, str]
    cores_reserved: float
    cores_limit: float
    memory_reserved: int
    memory_limit: int
    shm_size: int | None
    ports: list[PortSpec]
    volumes: list[VolumeSpec]
    work_dir: str | None
    labels: list[str]
    run_as_root: bool = False


class Names(msgspec.Struct, frozen=True, kw_only=True):
    """What an execution's templates are filled with, besides its instance names."""

    execution_id: int
    execution_name: str
    user_name: str
    deployment: str


def template_values(description: Description, names: Names) -> dict[str, str]:
    """The value of every template variable but `{dns_name#self}`."""
    values = {
        "user_name": names.user_name,
        "execution_id": str(names.execution_id),
        "execution_name": names.execution_name,
        "deployment_name": names.deployment,
    }
    for service in description.services:
        for instance in service.instance_names():
            values[templates.DNS_PREFIX + instance] = instance
    return values


def injected(names: Names, instance: str) -> dict[str, str]:
    """The variables Zoe sets in the container of `instance`, over the description's."""
    return {
        "EXECUTION_ID": str(names.execution_id),
        "DEPLOY_NAME": names.deployment,
        "ZOE_USER": names.user_name,
        "ZOE_WORKSPACE": templates.WORKSPACE_PATH,
        "SERVICE_NAME": instance,
    }


def workspace_volume(user_name: str) -> str:
    """The volume of a user's workspace, without the deployment's prefix: a user name
    that is not a valid volume name part is made one, with a hash so two such names
    never collide. (The executor mounts `<deployment>-` this at /mnt/workspace.)"""
    safe = _VOLUME_UNSAFE.sub("_", user_name)
    if safe != user_name:
        safe = f"{safe}_{hashlib.sha256(user_name.encode()).hexdigest()[:8]}"
    return WORKSPACE_PREFIX + safe


def instance_spec(
    service: Service,
    index: int,
    *,
    command: str | None,
    environment: dict[str, str],
    user_name: str,
) -> InstanceSpec:
    """The spec of instance `index` of `service`, given its resolved command and environment.

    Resources: the reserved memory is `memory.min`, or `DEFAULT_MEMORY` when null (capped
    by `memory.max`); the limit is `memory.max`, or the reservation when null. Cores work
    the same with `DEFAULT_CORES`. A volume named `workspace` is `user_name`'s workspace.
    """
    memory, cores = service.resources.memory, service.resources.cores
    memory_reserved = memory.min
    if memory_reserved is None:
        memory_reserved = DEFAULT_MEMORY if memory.max is None else min(DEFAULT_MEMORY, memory.max)
    cores_reserved = cores.min
    if cores_reserved is None:
        cores_reserved = DEFAULT_CORES if cores.max is None else min(DEFAULT_CORES, cores.max)
    return InstanceSpec(
        name=f"{service.name}{index}",
        service=service.name,
        index=index,
        essential=index < service.essential_count,
        monitor=service.monitor,
        startup_order=service.startup_order,
        image=service.image,
        command=command,
        environment=environment,
        cores_reserved=float(cores_reserved),
        cores_limit=float(cores_reserved if cores.max is None else cores.max),
        memory_reserved=memory_reserved,
        memory_limit=memory_reserved if memory.max is None else memory.max,
        shm_size=service.resources.shm,
        ports=[
            PortSpec(
                name=port.name,
                port_number=port.port_number,
                protocol=port.protocol,
                url_template=port.url_template,
                proxy=port.proxy,
            )
            for port in service.ports
        ],
        volumes=[
            VolumeSpec(
                name=workspace_volume(user_name) if volume.name == WORKSPACE else volume.name,
                path=volume.path,
                read_only=volume.read_only,
            )
            for volume in service.volumes
        ],
        work_dir=service.work_dir,
        labels=list(service.labels),
        run_as_root=service.run_as_root,
    )

"""Expansion of a description into the instances of one execution, and endpoint URLs.

Every execution gets a Docker network of its own where each container has its instance
name as alias, so the DNS name of an instance is its instance name (`spark-master0`).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from common.errors import FieldError, InvalidZApp
from common.zapp import templates
from common.zapp.model import Description, Service

DEFAULT_MEMORY = 256 * 1024 * 1024
"""Bytes reserved for an instance whose `resources.memory.min` is null."""

DEFAULT_CORES = 0.1
"""Cores reserved for an instance whose `resources.cores.min` is null."""

_SELF = templates.DNS_PREFIX + templates.SELF


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


def expand(
    description: Description,
    *,
    execution_id: int,
    execution_name: str,
    user_name: str,
    deployment: str,
) -> list[InstanceSpec]:
    """One `InstanceSpec` per instance, in service order then index.

    Resources: the reserved memory is `memory.min`, or `DEFAULT_MEMORY` when null (capped
    by `memory.max`); the limit is `memory.max`, or the reservation when null. Cores work
    the same with `DEFAULT_CORES`. Every instance also gets `EXECUTION_ID`, `DEPLOY_NAME`
    (= `deployment`), `ZOE_USER`, `SERVICE_NAME` (= its instance name) and `ZOE_WORKSPACE`,
    which win over variables of the same name in the description.

    Raises `InvalidZApp` for a template that does not resolve, which only a description
    that did not come from `load_description` can have.
    """
    values = {
        "user_name": user_name,
        "execution_id": str(execution_id),
        "execution_name": execution_name,
        "deployment_name": deployment,
    }
    for service in description.services:
        for instance in service.instance_names():
            values[templates.DNS_PREFIX + instance] = instance
    injected = {
        "EXECUTION_ID": str(execution_id),
        "DEPLOY_NAME": deployment,
        "ZOE_USER": user_name,
        "ZOE_WORKSPACE": templates.WORKSPACE_PATH,
    }
    specs: list[InstanceSpec] = []
    for position, service in enumerate(description.services):
        specs.extend(_instances(service, f"services[{position}]", values, injected))
    return specs


def _instances(
    service: Service, path: str, values: dict[str, str], injected: dict[str, str]
) -> list[InstanceSpec]:
    # Templates are resolved once per service; only {dns_name#self} differs per instance.
    environment = [
        (variable, _prepare(value, values, f"{path}.environment[{i}][1]"))
        for i, (variable, value) in enumerate(service.environment)
    ]
    command = (
        None if service.command is None else _prepare(service.command, values, f"{path}.command")
    )
    memory, cores = service.resources.memory, service.resources.cores
    memory_reserved = memory.min
    if memory_reserved is None:
        memory_reserved = DEFAULT_MEMORY if memory.max is None else min(DEFAULT_MEMORY, memory.max)
    cores_reserved = cores.min
    if cores_reserved is None:
        cores_reserved = DEFAULT_CORES if cores.max is None else min(DEFAULT_CORES, cores.max)
    specs = []
    for index, name in enumerate(service.instance_names()):
        env = {variable: name.join(chunks) for variable, chunks in environment}
        env.update(injected, SERVICE_NAME=name)
        specs.append(
            InstanceSpec(
                name=name,
                service=service.name,
                index=index,
                essential=index < service.essential_count,
                monitor=service.monitor,
                startup_order=service.startup_order,
                image=service.image,
                command=None if command is None else name.join(command),
                environment=env,
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
                    VolumeSpec(name=volume.name, path=volume.path, read_only=volume.read_only)
                    for volume in service.volumes
                ],
                work_dir=service.work_dir,
                labels=list(service.labels),
            )
        )
    return specs


def _prepare(text: str, values: Mapping[str, str], path: str) -> list[str]:
    try:
        return templates.split_on(text, values, _SELF)
    except templates.TemplateSyntaxError:
        message = templates.SYNTAX_MESSAGE
    except templates.UnknownVariable as exc:
        message = f"unknown template variable {{{exc.args[0]}}}"
    raise InvalidZApp("invalid ZApp description", errors=[FieldError(path, message)])


def url_for(port: PortSpec, host: str, host_port: int, proxy_path: str = "") -> str:
    """The URL of `port` published at `host:host_port`, filling `{ip_port}` and `{proxy_path}`.

    An IPv6 `host` is bracketed. A template that is not valid has its two variables
    replaced textually instead, so this never fails.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    values = {"ip_port": f"{host}:{host_port}", "proxy_path": proxy_path}
    try:
        return templates.substitute(port.url_template, values)
    except (templates.TemplateSyntaxError, templates.UnknownVariable):
        text = port.url_template
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text

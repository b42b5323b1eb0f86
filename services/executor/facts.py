"""Pure translations between the executor's bus messages and engine data.

No I/O here: how a StartInstance becomes a container spec, and how a container the
engine reports becomes a fact. Facts about a container are built from its labels, so an
adopted container (found after a restart) reads the same as a freshly started one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping

from common import messages as m
from common.errors import ZoeError
from common.settings import ExecutorSettings
from common.zapp import specs, templates
from common.zapp.expand import PortSpec as PortTemplate
from common.zapp.expand import url_for
from services.executor.engine import (
    LABEL_DEPLOYMENT,
    LABEL_EXECUTION,
    LABEL_INSTANCE,
    LABEL_INSTANCE_ID,
    LABEL_NODE,
    LABEL_PORT_PREFIX,
    LABEL_URL_PREFIX,
    Container,
    ContainerEvent,
    ContainerSpec,
    PortSpec,
    Stats,
)

WORKSPACE_PATH = templates.WORKSPACE_PATH  # also $ZOE_WORKSPACE in every container
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]+")


class VolumeRefused(ZoeError):
    """A StartInstance asks to mount something this node does not allow."""


def container_spec(
    msg: m.StartInstance,
    settings: ExecutorSettings,
    resolve: Callable[[str], str] = posixpath.normpath,
) -> ContainerSpec:
    """The container a StartInstance asks for, labelled for this deployment and node.

    ``resolve`` turns a host path into the one that would really be mounted (the
    executor passes ``os.path.realpath``, so a symbolic link cannot lead out of an
    allowed directory). Raises `VolumeRefused` for a mount this node does not allow.
    """
    ports = tuple(PortSpec(p.name, p.port_number, p.protocol, p.url_template) for p in msg.ports)
    labels = {
        **msg.labels,
        # ours last: a message cannot claim another node's or deployment's labels
        LABEL_DEPLOYMENT: settings.deployment,
        LABEL_NODE: settings.node_name,
        LABEL_EXECUTION: str(msg.execution_id),
        LABEL_INSTANCE: msg.instance,
        LABEL_INSTANCE_ID: str(msg.instance_id),
        **{LABEL_PORT_PREFIX + p.name: p.key for p in ports},
        # kept on the container, so an adopted container reports the same URLs
        **{LABEL_URL_PREFIX + p.name: p.url_template for p in ports if p.url_template},
    }
    binds, volumes = mounts(msg, settings, resolve)
    user = msg.environment.get("ZOE_USER")
    options = {}
    if settings.workspace_nfs and user and workspace_volume(settings.deployment, user) in volumes:
        name = workspace_volume(settings.deployment, user)
        options[name] = nfs_volume_options(settings.workspace_nfs, user)
    return ContainerSpec(
        name=msg.container_name,
        image=msg.image,
        network=msg.network,
        network_labels={
            LABEL_DEPLOYMENT: settings.deployment,
            LABEL_EXECUTION: str(msg.execution_id),
        },
        hostname=msg.instance,
        labels=labels,
        command=msg.command,
        environment=dict(msg.environment),
        work_dir=msg.work_dir,
        memory=msg.memory_limit,
        nano_cpus=int(msg.cores_limit * 1e9),
        shm_size=msg.shm_size,
        ports=ports,
        binds=binds,
        volumes=volumes,
        volume_options=options,
        run_as_root=msg.run_as_root,
    )


def mounts(
    msg: m.StartInstance, settings: ExecutorSettings, resolve: Callable[[str], str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The binds ("source:path[:ro]") of a start, and the named volumes among them.

    - A named volume must belong to this deployment (``<deployment>-...``): a message
      cannot mount another deployment's data.
    - A host path (absolute) must lie in one of ``ZOE_HOST_PATHS`` once resolved.
    - The user's workspace volume ``<deployment>-workspace-<user>`` is mounted at
      /mnt/workspace, unless the instance mounts something there itself.
    """
    binds: list[str] = []
    volumes: list[str] = []
    for v in msg.volumes:
        if v.source.startswith("/"):
            source = host_path(v.source, settings.host_paths, resolve)
        else:
            source = v.source
            if not _VOLUME_NAME.fullmatch(source):
                raise VolumeRefused(f"volume {source!r} is neither a volume name nor a host path")
            if not source.startswith(settings.deployment + "-"):
                raise VolumeRefused(
                    f"volume {source!r} does not belong to deployment {settings.deployment!r}"
                )
            volumes.append(source)
        binds.append(f"{source}:{v.path}:ro" if v.read_only else f"{source}:{v.path}")
    user = msg.environment.get("ZOE_USER")
    targets = {posixpath.normpath(v.path) for v in msg.volumes}
    if settings.workspace_volume and user and WORKSPACE_PATH not in targets:
        name = workspace_volume(settings.deployment, user)
        volumes.append(name)
        binds.append(f"{name}:{WORKSPACE_PATH}")
    return tuple(binds), tuple(dict.fromkeys(volumes))


def host_path(path: str, allowed: tuple[str, ...], resolve: Callable[[str], str]) -> str:
    """``path`` resolved, if it is one of ``allowed`` or below one; else `VolumeRefused`."""
    real = resolve(posixpath.normpath(path))
    for root in allowed:
        root = resolve(posixpath.normpath(root))
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return real
    shown = ", ".join(allowed) if allowed else "none"
    raise VolumeRefused(f"host path {path} is not allowed on this node (ZOE_HOST_PATHS: {shown})")


def workspace_volume(deployment: str, user: str) -> str:
    """The Docker volume holding a user's workspace (common/zapp/specs.py names it)."""
    return f"{deployment}-{specs.workspace_volume(user)}"


# The log event for each fact ("instance.started", ...): `m.tag_of` inspects the type
# on every call, too slow for the hot path of an executor serving many starts.
_EVENTS: dict[type[m.Message], str] = {
    m.InstanceStarted: "instance.started",
    m.InstanceStartFailed: "instance.start_failed",
    m.InstanceExited: "instance.exited",
    m.InstanceRemoved: "instance.removed",
}


def event_name(fact: m.Message) -> str:
    """The log event naming a fact: ``instance.started`` for InstanceStarted, ..."""
    return _EVENTS.get(type(fact)) or type(fact).__name__


def ids_of(labels: Mapping[str, str]) -> tuple[int, int]:
    """(execution_id, instance_id) read from a managed container's labels."""
    return int(labels.get(LABEL_EXECUTION, 0)), int(labels.get(LABEL_INSTANCE_ID, 0))


def endpoints(container: Container, advertise_host: str) -> dict[str, str]:
    """Port name -> URL for the ports the container publishes: the port's url_template
    with ``{ip_port}`` = "host:port" and ``{proxy_path}`` = the api proxy's path of the
    port (``/proxy/<execution>/<instance>/<port>``, where a ZApp serving under
    ``{proxy_base}`` answers); the bare "host:port" for a port without a template."""
    out = {}
    for label, value in container.labels.items():
        if label.startswith(LABEL_PORT_PREFIX) and value in container.host_ports:
            name = label.removeprefix(LABEL_PORT_PREFIX)
            template = container.labels.get(LABEL_URL_PREFIX + name)
            proxy_path = "/proxy/{}/{}/{}".format(
                container.labels.get(LABEL_EXECUTION, ""),
                container.labels.get(LABEL_INSTANCE, ""),
                value.partition("/")[0],
            )
            out[name] = url(template, advertise_host, container.host_ports[value], proxy_path)
    return out


def url(template: str | None, host: str, port: int, proxy_path: str = "") -> str:
    """An endpoint URL (common.zapp's `url_for`: never fails, brackets an IPv6 host)."""
    if not template:
        return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    port_spec = PortTemplate(
        name="", port_number=0, protocol="", url_template=template, proxy=False
    )
    return url_for(port_spec, host, port, proxy_path=proxy_path)


def cpu_percent(sample: Stats, previous: Stats | None) -> float:
    """CPU use between two samples, in percent of one core (as ``docker stats``).

    Docker's own previous sample is used when it has one, else ours; none: 0.
    """
    if sample.prev_system_ns:
        cpu, system = sample.cpu_ns - sample.prev_cpu_ns, sample.system_ns - sample.prev_system_ns
    elif previous is not None:
        cpu, system = sample.cpu_ns - previous.cpu_ns, sample.system_ns - previous.system_ns
    else:
        return 0.0
    if system <= 0 or cpu < 0:
        return 0.0
    return round(cpu / system * sample.online_cpus * 100.0, 2)


def started(node: str, container: Container, advertise_host: str) -> m.InstanceStarted:
    """The fact that ``container`` runs."""
    execution_id, instance_id = ids_of(container.labels)
    return m.InstanceStarted(
        node=node,
        execution_id=execution_id,
        instance_id=instance_id,
        container_id=container.id,
        container_name=container.name,
        endpoints=endpoints(container, advertise_host),
    )


def exited(node: str, container: Container) -> m.InstanceExited:
    """The fact that ``container`` stopped running (it still exists)."""
    execution_id, instance_id = ids_of(container.labels)
    return m.InstanceExited(
        node=node,
        execution_id=execution_id,
        instance_id=instance_id,
        container_id=container.id,
        exit_code=container.exit_code if container.exit_code is not None else -1,
        oom_killed=container.oom_killed,
        container_name=container.name,
    )


def removed_elsewhere(node: str, event: ContainerEvent) -> m.InstanceRemoved:
    """The fact that a managed container was removed by someone else than this executor."""
    execution_id, instance_id = ids_of(event.labels)
    return m.InstanceRemoved(
        node=node,
        execution_id=execution_id,
        instance_id=instance_id,
        container_name=event.name,
        exit_code=event.exit_code,
    )


def parse_nfs_export(export: str) -> tuple[str, str]:
    """``ZOE_WORKSPACE_NFS`` ("server:/export/path") as (server, path); `ValueError`
    saying what is wrong otherwise."""
    server, colon, path = export.partition(":")
    if not colon or not server or not path.startswith("/"):
        raise ValueError(
            f"ZOE_WORKSPACE_NFS must be server:/export/path (an absolute path), not {export!r}"
        )
    if any(c in server + path for c in ", ") or "=" in server:
        raise ValueError(f"ZOE_WORKSPACE_NFS {export!r} holds a comma, a space or '='")
    return server, path.rstrip("/") or "/"


def nfs_volume_options(export: str, user: str) -> dict[str, str]:
    """The local driver's options that make a user's workspace volume the NFS directory
    ``<export path>/<user>`` (the user's name as in the volume's name), so that it is
    the same on every host. The server is best given as an address (the kernel's NFS
    mount takes ``addr=`` as one)."""
    server, path = parse_nfs_export(export)
    part = specs.workspace_volume(user).removeprefix(specs.WORKSPACE_PREFIX)
    return {
        "type": "nfs",
        "o": f"addr={server},rw,nfsvers=4",
        "device": f":{path.rstrip('/')}/{part}",
    }

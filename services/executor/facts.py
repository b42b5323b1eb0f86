"""Pure translations between the executor's bus messages and engine data.

No I/O here: how a StartInstance becomes a container spec, and how a container the
engine reports becomes a fact. Facts about a container are built from its labels, so an
adopted container (found after a restart) reads the same as a freshly started one.
"""

from __future__ import annotations

from collections.abc import Mapping

from common import messages as m
from common.settings import ExecutorSettings
from services.executor.engine import (
    LABEL_DEPLOYMENT,
    LABEL_EXECUTION,
    LABEL_INSTANCE,
    LABEL_INSTANCE_ID,
    LABEL_NODE,
    LABEL_PORT_PREFIX,
    Container,
    ContainerEvent,
    ContainerSpec,
    PortSpec,
)


def container_spec(msg: m.StartInstance, settings: ExecutorSettings) -> ContainerSpec:
    """The container a StartInstance asks for, labelled for this deployment and node."""
    ports = tuple(PortSpec(p.name, p.port_number, p.protocol) for p in msg.ports)
    labels = {
        **msg.labels,
        # ours last: a message cannot claim another node's or deployment's labels
        LABEL_DEPLOYMENT: settings.deployment,
        LABEL_NODE: settings.node_name,
        LABEL_EXECUTION: str(msg.execution_id),
        LABEL_INSTANCE: msg.instance,
        LABEL_INSTANCE_ID: str(msg.instance_id),
        **{LABEL_PORT_PREFIX + p.name: p.key for p in ports},
    }
    binds = tuple(
        f"{v.source}:{v.path}:ro" if v.read_only else f"{v.source}:{v.path}" for v in msg.volumes
    )
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
    )


def ids_of(labels: Mapping[str, str]) -> tuple[int, int]:
    """(execution_id, instance_id) read from a managed container's labels."""
    return int(labels.get(LABEL_EXECUTION, 0)), int(labels.get(LABEL_INSTANCE_ID, 0))


def endpoints(container: Container, advertise_host: str) -> dict[str, str]:
    """Port name -> "host:port" for the ports the container publishes."""
    out = {}
    for label, value in container.labels.items():
        if label.startswith(LABEL_PORT_PREFIX) and value in container.host_ports:
            out[label.removeprefix(LABEL_PORT_PREFIX)] = (
                f"{advertise_host}:{container.host_ports[value]}"
            )
    return out


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

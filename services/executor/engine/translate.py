"""Translations between the engine's plain data and Docker's JSON, without any I/O.

`docker_config` writes the body of a container's creation, with the confinement every
ZApp container gets (docs/zapps.md, *Containers*); the others read what Docker answers
(an inspect, a listing, an event, a stats sample) into the port's data classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.executor.engine.port import (
    Container,
    ContainerEvent,
    ContainerSpec,
    EngineError,
    Removed,
    Stats,
)


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What this node offers in all (the executor's ``ZOE_CORES`` and ``ZOE_MEMORY``)."""

    cores: float
    memory: int


class LimitRefused(EngineError):
    """A container's memory or CPU limit is one Docker would read as *no limit*, or
    below the smallest it accepts: the start is refused, saying which."""


ZAPP_USER = "1000:1000"
"""The unprivileged user (and group) of the library's images, `zoe`: every container
runs as it unless its service has ``run_as_root``."""

ROOT_USER = "0:0"

DROPPED_CAPABILITIES = ("MKNOD", "NET_RAW", "SETFCAP", "SETPCAP")
"""Taken from Docker's default set in a container that runs as root (docs/zapps.md says
why each); a container of the unprivileged user drops them all."""

PIDS_LIMIT = 2048
"""Processes and threads of one container: a fork bomb stops there (a Spark JVM runs a
few hundred threads)."""

LOG_CONFIG: dict[str, Any] = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
"""The engine keeps at most 30 MB of a container's output (3 files of 10 MB)."""

MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses a memory limit below 6 MiB
MIN_NANO_CPUS = 10_000_000  # 0.01 core: Docker's smallest CPU limit; 0 would be none


def docker_config(
    spec: ContainerSpec,
    publish_host: str,
    network: str | None = None,
    *,
    capacity: NodeCapacity | None = None,
    run_as_root: bool = False,
    pids_limit: int = PIDS_LIMIT,
) -> dict[str, Any]:
    """The body of Docker's ``containers/create`` for ``spec``, attached to ``network``
    (the execution's network as the engine found it; by default ``spec.network``).

    Every container gets no new privileges, a pids limit, bounded logs, and runs as
    `ZAPP_USER` with no capability at all, or as root with Docker's default capabilities
    but `DROPPED_CAPABILITIES` when ``run_as_root``. Its memory and CPU limits are
    lowered to the node's ``capacity``; raises `LimitRefused` for a limit of 0 (which
    Docker reads as *no limit*) or below Docker's smallest.
    """
    network = network or spec.network
    memory, nano_cpus = limits(spec, capacity)
    host_config: dict[str, Any] = {
        "Memory": memory,
        # No swap beyond the memory limit: the limit is what the scheduler reserved.
        "MemorySwap": memory,
        "NanoCpus": nano_cpus,
        "PidsLimit": pids_limit,
        "SecurityOpt": ["no-new-privileges:true"],
        "CapDrop": list(DROPPED_CAPABILITIES) if run_as_root else ["ALL"],
        "Privileged": False,
        "LogConfig": LOG_CONFIG,
        "NetworkMode": network,
        "PortBindings": {p.key: [{"HostIp": publish_host, "HostPort": ""}] for p in spec.ports},
        "Binds": list(spec.binds),
    }
    if spec.shm_size:
        host_config["ShmSize"] = spec.shm_size
    config: dict[str, Any] = {
        "Image": spec.image,
        "User": ROOT_USER if run_as_root else ZAPP_USER,
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


def limits(spec: ContainerSpec, capacity: NodeCapacity | None) -> tuple[int, int]:
    """``spec``'s memory (bytes) and CPU (NanoCpus) limits, at most the node's capacity.

    Raises `LimitRefused` for a limit below Docker's smallest (0 included: Docker would
    read it as *no limit*).
    """
    if spec.memory < MIN_MEMORY:
        raise LimitRefused(
            f"container {spec.name}: memory limit {spec.memory} bytes is below"
            f" {MIN_MEMORY} (6 MiB), the smallest Docker accepts (0 would be no limit)"
        )
    if spec.nano_cpus < MIN_NANO_CPUS:
        raise LimitRefused(
            f"container {spec.name}: CPU limit {spec.nano_cpus} NanoCpus is below"
            f" {MIN_NANO_CPUS} (0.01 core), the smallest Docker accepts (0 would be no limit)"
        )
    memory, nano_cpus = spec.memory, spec.nano_cpus
    if capacity is not None:
        memory = min(memory, capacity.memory)
        nano_cpus = min(nano_cpus, int(capacity.cores * 1e9))
        if memory < MIN_MEMORY or nano_cpus < MIN_NANO_CPUS:
            raise LimitRefused(
                f"container {spec.name}: this node offers {capacity.cores:g} cores and"
                f" {capacity.memory} bytes, below what one container needs at least"
            )
    return memory, nano_cpus


def container_from_inspect(data: Mapping[str, Any]) -> Container:
    """A container as an inspect (``containers/<id>/json``) describes it."""
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


def container_from_summary(data: Mapping[str, Any]) -> Container:
    """A container as a listing (``containers/json``) describes it: no exit code there."""
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


# The container events the executor follows: deaths and removals, which it reports, and
# the engine's word that it signalled a container or that the kernel killed one for want
# of memory, which tell how a death came (``locks.EngineNotices``).
EVENTS = ("die", "destroy", "kill", "oom")


def container_event(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """The ``die``, ``destroy``, ``kill`` or ``oom`` event of a container; None for any
    other event."""
    actor = raw.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    action = raw.get("Action") or raw.get("status")
    if action not in EVENTS or not actor.get("ID"):
        return None
    code = attributes.pop("exitCode", None)
    name = attributes.pop("name", "")
    attributes.pop("image", None)
    signal = attributes.pop("signal", None)
    return ContainerEvent(
        action=action,
        container_id=actor["ID"],
        name=name,
        labels=attributes,
        time=int(raw.get("timeNano", 0)) / 1e9,
        exit_code=int(code) if code is not None else None,
        signal=signal,
    )


def since_timestamp(seconds: float) -> str:
    """Docker's ``since`` format: seconds and nanoseconds."""
    whole = math.floor(seconds)
    return f"{whole}.{min(int((seconds - whole) * 1e9), 999_999_999):09d}"


def stats_from(data: Mapping[str, Any]) -> Stats:
    """The counters of a one-shot ``containers/<id>/stats`` answer."""
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


def removed_from(data: Mapping[str, Any], log: str) -> Removed:
    """How a container ended, from its inspect just before its removal, and its log."""
    state = data.get("State") or {}
    return Removed(data["Id"], state.get("ExitCode"), bool(state.get("OOMKilled")), log)

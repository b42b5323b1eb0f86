"""Typed, frozen settings per service, read once from ``ZOE_*`` environment variables.

Every field of a settings class maps to the variable ``ZOE_<FIELD NAME IN UPPER CASE>``;
values are converted to the field's type (numbers, booleans, comma-separated lists), and a
bad value is refused at start with the variable's name. Settings are passed explicitly:
nothing reads the environment after start.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Literal, Self

import msgspec

from common.errors import FieldError, InvalidRequest


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """What every service needs: where the broker and the database are, and who we are."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # On how many nodes of a RabbitMQ cluster each quorum queue is replicated (0: the
    # broker's default); the same for every service, fixed when a queue is first made.
    amqp_quorum_size: int = 0
    database_url: str = "postgresql://postgres@127.0.0.1:5432/zoe"
    # Names containers, networks and labels: two deployments never touch each other's.
    deployment: str = "zoe"
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON when stderr is not a terminal
    prefetch: int = 64
    # How long a stopping service waits for in-flight messages before cancelling them.
    drain_timeout: float = 10.0
    # Longest one message's handler may run; past it, it fails (and is redelivered).
    handler_timeout: float = 60.0
    # How long a message whose handler fails for a transient reason (database or broker
    # away) is retried in place before it goes back to its queue (a delivery spent).
    transient_retry: float = 300.0
    # Where /metrics, /healthz and /readyz are served (common/probe.py); port 0: nowhere
    # (the api serves them on its HTTP port instead).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build the settings from ``ZOE_*`` variables (``os.environ`` by default)."""
        env = os.environ if env is None else env
        raw: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get("ZOE_" + field.name.upper())
            if value is None:
                continue
            if _is_list(field.type):
                raw[field.name] = [v.strip() for v in value.split(",") if v.strip()]
            elif value == "" and _is_optional(field.type):
                raw[field.name] = None
            else:
                raw[field.name] = value
        raw.update(overrides)
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            path = str(exc).rpartition("at `$.")[2].rstrip("`")
            name = "ZOE_" + path.upper() if path != str(exc) else "ZOE_*"
            raise InvalidRequest(
                "invalid settings", [FieldError(name, str(exc).split(" - at")[0])]
            ) from exc


def _is_list(tp: Any) -> bool:
    return "list[" in str(tp) or "tuple[" in str(tp)


def _is_optional(tp: Any) -> bool:
    return "None" in str(tp)


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 30


class ApiSettings(Settings, frozen=True, kw_only=True):
    """The HTTP gateway and the AMQP request interface."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Names the api answers to in the Host header besides 127.0.0.1, localhost, [::1]
    # and ZOE_HTTP_HOST:ZOE_HTTP_PORT (anything else is a 421: DNS rebinding): "name"
    # on any port, "name:port" on that one, "*" any name (services/api/hygiene.py).
    http_allowed_hosts: tuple[str, ...] = ()
    # Origins a state-changing request may come from besides the api's own (the Host it
    # was sent to), as "https://zoe.example.com"; any other is a 403.
    http_allowed_origins: tuple[str, ...] = ()
    zapps_root: str = "zapps"
    # Longest a request waits for a log reply from an executor, in seconds.
    rpc_timeout: float = 5.0
    # Server-sent event streams and log follows open at once, per api process (429 beyond).
    max_event_streams: int = 256
    max_log_follows: int = 64
    # Who checks a user name and password at sign-in: "database" (Zoe's own users table)
    # is the one backend there is (services/api/auth.py, BACKENDS).
    auth_backend: Literal["database"] = "database"
    # The gateway as users reach it, e.g. https://zoe.example.org (behind a TLS proxy):
    # endpoint links served through its proxy are given on it. "": as the executor said.
    public_url: str = ""
    # Seconds a token's caller and a user's quota, once read, are used without reading
    # them again (0: read on every request). A token revoked, a user disabled or a quota
    # changed through this api process counts at once; through another, within this.
    auth_cache_ttl: float = 2.0
    # Submissions stored together in one statement (and announced by one message) when
    # they arrive while the previous group is being stored: at most this many.
    submit_group: int = 64


class SchedulerSettings(Settings, frozen=True, kw_only=True):
    """The one placement decider."""

    policy: str = "dynsize+pack"
    # A pass also runs on this period, to catch backoffs that expire.
    pass_interval: float = 1.0
    # A died instance is placed again at once the first time; the second restart waits
    # this many seconds, doubled for each further one, up to the max.
    restart_backoff: float = 0.5
    restart_backoff_max: float = 30.0
    # Deaths (crash, OOM, lost node) of each essential instance of a long-running
    # execution that are restarted before the execution fails; 0: the first one fails it.
    essential_restarts: int = 0
    # The sweeper (services/scheduler/sweeper.py) runs this often; an instance starting
    # or stopping with no news for sweep_resend_after seconds gets its command again, and
    # a cleanup still waiting after sweep_give_up_after seconds gives its containers up.
    sweep_interval: float = 30.0
    sweep_resend_after: float = 120.0
    sweep_give_up_after: float = 900.0
    metrics_port: int = 9101
    # The gauges read from the database (services/scheduler/stats.py) are this fresh.
    stats_interval: float = 5.0


class ExecutorSettings(Settings, frozen=True, kw_only=True):
    """One executor per Docker host; the node's identity and capacity."""

    # A start may build a missing image first (minutes for a large one).
    handler_timeout: float = 1800.0
    metrics_port: int = 9103
    node_name: str = msgspec.field(default_factory=socket.gethostname)
    cores: float = msgspec.field(default_factory=lambda: float(os.cpu_count() or 1))
    memory: int = msgspec.field(default_factory=_memory_bytes)
    labels: tuple[str, ...] = ()
    docker_url: str | None = None
    heartbeat_interval: float = 2.0
    # Between two full heartbeats (capacity, labels, images, instances, usage: what the
    # scheduler reads), a node whose inventory did not change sends only a small
    # liveness beat to the monitor; a full one goes at least this often.
    inventory_interval: float = 60.0
    stop_timeout: float = 5.0
    # Bytes of a container's log kept after the container is removed.
    log_keep_bytes: int = 1 << 20
    zapps_root: str = "zapps"
    # Host part of the endpoint URLs the executor reports ({ip_port} = "host:port").
    advertise_host: str = "127.0.0.1"
    # Host address published container ports bind to.
    publish_host: str = "127.0.0.1"
    # The deployment's engines form one Docker Swarm: executions get an attachable
    # overlay network (one across every host) instead of a bridge on each engine. The
    # executor refuses to start unless its engine is an active swarm node (of the swarm
    # ``swarm_cluster_id`` names, when set).
    swarm: bool = False
    swarm_cluster_id: str = ""
    # How long an executor on a worker engine waits for a manager's executor to answer
    # its request for an execution's overlay network.
    network_timeout: float = 10.0
    # host:port of the deployment's image registry (e.g. 198.18.0.1:5055): a missing
    # image is pulled from there (never from anywhere else), and one built here is
    # pushed there. Empty: no registry, each host builds its images.
    registry: str = ""
    # How long a start whose network or image cannot be had for now (no swarm manager
    # answers, the registry does not) is retried, with backoff, before it fails.
    start_retry: float = 120.0
    # "server:/export/path": the users' workspace volumes are NFS mounts of
    # /export/path/<user> (the local driver with NFS options), the same on every host.
    workspace_nfs: str = ""
    # Host directories (and what is below them) a container may mount, e.g. /data,/srv.
    # Empty: no host path at all, only named volumes.
    host_paths: tuple[str, ...] = ()
    # Mount the user's workspace volume (<deployment>-workspace-<user>) at /mnt/workspace.
    # (Not ZOE_WORKSPACE: that is the path Zoe gives every container in its environment.)
    workspace_volume: bool = True
    # Seconds between two samples of the containers' CPU and memory use (reported with
    # the heartbeats); 0 turns sampling off.
    usage_interval: float = 10.0
    # Containers that ended and are still there are reported again this often (a lost
    # fact must not leave its instance running for ever); 0 turns it off.
    report_ended_interval: float = 60.0
    # A container killed by the kernel for want of memory may be told to the engine only
    # after its death (Docker on cgroup v1, under load): a death by SIGKILL (exit code
    # 137) that the engine did not send (no ``kill`` event with SIGKILL) and that is not
    # marked OOM waits this long for a late ``oom`` event before it is reported as a crash.
    oom_grace: float = 1.0
    # "docker", or "hollow": a fake node that starts no container, for scale benchmarks
    # only (services/executor/hollow.py).
    engine: str = "docker"
    # Spare networks kept made ahead, so that an execution's first start on this node
    # does not wait for Docker to create its network; 0: each is made when needed.
    network_pool: int = 2
    # The Debian mirror the zoe/debian:12 base image is bootstrapped from, and its apt
    # then uses.
    debian_mirror: str = "http://deb.debian.org/debian"


class MonitorSettings(Settings, frozen=True, kw_only=True):
    """The verdict maker."""

    # A node that sent no heartbeat for this many seconds is lost.
    node_timeout: float = 10.0
    # ... and this many more after its executor said it stops (a restart): its
    # containers keep running meanwhile.
    node_restart_grace: float = 60.0
    check_interval: float = 1.0
    # Seconds between two writes of the containers' usage samples (from heartbeats).
    usage_store_interval: float = 5.0
    metrics_port: int = 9102

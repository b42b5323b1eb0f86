"""The executor's port to a container engine, and its one real adapter: Docker.

- `port`: the `Engine` protocol, the data crossing it, its errors and label names;
- `docker`: `DockerEngine`, the adapter over aiodocker;
- `networks`: executions' bridge networks on an engine, spares made ahead and claims;
- `overlay`: executions' overlay networks when the engines form one Docker Swarm;
- `swarm`: the engine's place in the swarm, checked at start;
- `translate`: Docker's JSON to and from the port's data, without I/O;
- `logs`: log tails and the cursors of a followed log;
- `calls`: Docker's failures in the engine's terms.
"""

from services.executor.engine.calls import engine_errors, unless_gone
from services.executor.engine.docker import DockerEngine
from services.executor.engine.logs import after_cursor, cursor_since, unix_nanos
from services.executor.engine.networks import Networks
from services.executor.engine.port import (
    CLAIM_SUFFIX,
    ENDED_STATES,
    LABEL_DEPLOYMENT,
    LABEL_EXECUTION,
    LABEL_INSTANCE,
    LABEL_INSTANCE_ID,
    LABEL_NETWORK,
    LABEL_NODE,
    LABEL_POOL,
    LABEL_PORT_PREFIX,
    LABEL_URL_PREFIX,
    RUNNING_STATES,
    Container,
    ContainerEvent,
    ContainerExists,
    ContainerSpec,
    Engine,
    EngineError,
    LogChunk,
    NotManaged,
    PortSpec,
    Removed,
    Stats,
    TransientEngineError,
)
from services.executor.engine.translate import docker_config

__all__ = [
    "CLAIM_SUFFIX",
    "ENDED_STATES",
    "LABEL_DEPLOYMENT",
    "LABEL_EXECUTION",
    "LABEL_INSTANCE",
    "LABEL_INSTANCE_ID",
    "LABEL_NETWORK",
    "LABEL_NODE",
    "LABEL_POOL",
    "LABEL_PORT_PREFIX",
    "LABEL_URL_PREFIX",
    "RUNNING_STATES",
    "Container",
    "ContainerEvent",
    "ContainerExists",
    "ContainerSpec",
    "DockerEngine",
    "Engine",
    "EngineError",
    "LogChunk",
    "Networks",
    "NotManaged",
    "PortSpec",
    "Removed",
    "Stats",
    "TransientEngineError",
    "after_cursor",
    "cursor_since",
    "docker_config",
    "engine_errors",
    "unix_nanos",
    "unless_gone",
]

"""The engine's place in the deployment's Docker Swarm, checked when the executor starts.

With ``ZOE_SWARM`` the executions' networks are overlay networks of the swarm, so an
executor whose engine is not an active node of it could start nothing that reaches the
other hosts: it refuses to start (the node never registers) and says why. Whether the
engine is a manager decides who creates the networks (services/executor/engine/overlay.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiodocker

from common.errors import StartRefused
from services.executor.engine.calls import engine_errors


class SwarmRefused(StartRefused):
    """The engine is not an active node of the deployment's swarm (``ZOE_SWARM``)."""


@dataclass(frozen=True, slots=True)
class SwarmState:
    """What the engine says of its swarm (``docker info``'s ``Swarm``)."""

    state: str  # LocalNodeState: inactive | pending | active | error | locked
    manager: bool  # ControlAvailable: networks can be created and removed here
    node_id: str = ""
    node_addr: str = ""
    cluster_id: str = ""  # known on a manager only (a worker's engine does not say)
    error: str = ""


def swarm_state(info: Mapping[str, Any]) -> SwarmState:
    """The swarm part of an engine's ``/info`` answer."""
    swarm = info.get("Swarm") or {}
    return SwarmState(
        state=str(swarm.get("LocalNodeState") or "inactive"),
        manager=bool(swarm.get("ControlAvailable")),
        node_id=str(swarm.get("NodeID") or ""),
        node_addr=str(swarm.get("NodeAddr") or ""),
        cluster_id=str((swarm.get("Cluster") or {}).get("ID") or ""),
        error=str(swarm.get("Error") or ""),
    )


def swarm_problem(state: SwarmState, engine: str, cluster_id: str = "") -> str | None:
    """Why this engine cannot serve a swarm deployment; None when it can.

    ``cluster_id`` (``ZOE_SWARM_CLUSTER_ID``) is compared on a manager only: a worker's
    engine does not report the swarm's id (it is the manager's to know).
    """
    if state.state != "active":
        why = f" ({state.error})" if state.error else ""
        return (
            f"ZOE_SWARM is set but the Docker engine at {engine} is not in a swarm:"
            f" its swarm state is {state.state!r}{why}; join it to the deployment's swarm"
            " (docker swarm join) or unset ZOE_SWARM"
        )
    if cluster_id and state.manager and state.cluster_id != cluster_id:
        return (
            f"the Docker engine at {engine} is a manager of swarm {state.cluster_id},"
            f" not of the deployment's swarm {cluster_id} (ZOE_SWARM_CLUSTER_ID)"
        )
    return None


async def check_swarm(docker: aiodocker.Docker, engine: str, cluster_id: str = "") -> SwarmState:
    """The engine's swarm state; `SwarmRefused` when it cannot serve a swarm deployment."""
    with engine_errors():
        info = await docker.system.info()
    state = swarm_state(info)
    problem = swarm_problem(state, engine, cluster_id)
    if problem is not None:
        raise SwarmRefused(problem)
    return state

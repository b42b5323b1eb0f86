"""The executor's cluster parts without I/O: the swarm check, overlay network names and
ages, and the network requests' place in the route table."""

from __future__ import annotations

import datetime as dt

import pytest
from aiodocker.exceptions import DockerError

from common import routes
from services.executor.engine.overlay import _created, in_use, overlay_name
from services.executor.engine.swarm import swarm_problem, swarm_state


def info(**swarm: object) -> dict[str, object]:
    return {"Swarm": swarm}


def test_an_engine_outside_a_swarm_is_refused_naming_the_engine_and_its_state() -> None:
    state = swarm_state(info(LocalNodeState="inactive", ControlAvailable=False))
    assert not state.manager
    problem = swarm_problem(state, "unix:///var/run/docker.sock")
    assert problem is not None
    assert "unix:///var/run/docker.sock" in problem and "'inactive'" in problem
    pending = swarm_state(info(LocalNodeState="pending", Error="timeout joining"))
    assert "timeout joining" in (swarm_problem(pending, "e") or "")
    assert swarm_problem(swarm_state({}), "e") is not None  # no Swarm part at all


def test_active_manager_and_worker_are_accepted_and_told_apart() -> None:
    manager = swarm_state(
        info(LocalNodeState="active", ControlAvailable=True, NodeID="n1", Cluster={"ID": "c1"})
    )
    worker = swarm_state(info(LocalNodeState="active", ControlAvailable=False, NodeID="n2"))
    assert manager.manager and manager.cluster_id == "c1"
    assert not worker.manager and worker.cluster_id == ""
    assert swarm_problem(manager, "e") is None
    assert swarm_problem(worker, "e") is None
    assert swarm_problem(manager, "e", cluster_id="c1") is None
    other = swarm_problem(manager, "e", cluster_id="c2")
    assert other is not None and "c1" in other and "c2" in other
    # a worker's engine does not say which swarm it is in: not refused for it
    assert swarm_problem(worker, "e", cluster_id="c2") is None


def test_overlay_names_and_creation_times() -> None:
    assert overlay_name("zoe", 42) == "zoe-x42"
    assert overlay_name("zt", "7") == "zt-x7"
    want = dt.datetime(2026, 11, 1, 10, 0, 0, tzinfo=dt.UTC)
    assert _created("2026-11-01T10:00:00.123456789Z") == want
    assert _created("2026-11-01T10:00:00Z") == want
    assert _created("2026-11-01T12:00:00.5+02:00") == want
    assert _created("") is None and _created("yesterday") is None


def test_in_use_is_told_from_other_refusals() -> None:
    assert in_use(DockerError(403, "error while removing network: in use"))
    assert in_use(DockerError(500, "rpc error: network x is in use by task y"))
    assert not in_use(DockerError(500, "something else"))


def test_network_requests_have_their_own_queue_no_node_can_take() -> None:
    assert routes.queue(routes.EXECUTOR_NETWORKS).name == routes.EXECUTOR_NETWORKS
    assert routes.queue(routes.EXECUTOR_NETWORKS).kind == "heartbeats"  # transient
    assert routes.queue("executor.host1").name == routes.EXECUTOR
    assert routes.bindings()[routes.EXECUTOR_NETWORKS] == []  # the default exchange
    with pytest.raises(ValueError, match="networks"):
        routes.executor_queue("networks")
    executor = routes.permissions("executor", "host1")
    import re

    assert re.fullmatch(executor.read, routes.EXECUTOR_NETWORKS)
    assert re.fullmatch(executor.configure, "amq_" + "0" * 32)  # its reply queue


def test_an_nfs_export_makes_each_users_workspace_a_directory_of_it() -> None:
    from common import messages as m
    from common.settings import ExecutorSettings
    from services.executor.facts import container_spec, nfs_volume_options, parse_nfs_export

    assert parse_nfs_export("10.0.0.5:/srv/zoe/") == ("10.0.0.5", "/srv/zoe")
    for bad in ("/srv/zoe", "10.0.0.5:srv", ":/srv", "a,b:/srv", "h:/s p"):
        with pytest.raises(ValueError, match="ZOE_WORKSPACE_NFS"):
            parse_nfs_export(bad)
    assert nfs_volume_options("10.0.0.5:/srv/zoe", "alice") == {
        "type": "nfs",
        "o": "addr=10.0.0.5,rw,nfsvers=4",
        "device": ":/srv/zoe/alice",
    }
    settings = ExecutorSettings(deployment="zt", workspace_nfs="10.0.0.5:/srv/zoe")
    start = m.StartInstance(
        execution_id=1,
        instance_id=1,
        instance="main",
        container_name="zt-1-main",
        network="zt-1",
        image="zoe/busybox:1",
        cores_limit=1,
        memory_limit=1 << 26,
        environment={"ZOE_USER": "alice"},
    )
    spec = container_spec(start, settings)
    assert spec.volume_options == {
        "zt-workspace-alice": nfs_volume_options(settings.workspace_nfs, "alice")
    }
    plain = container_spec(start, ExecutorSettings(deployment="zt"))
    assert plain.volume_options == {}


def test_endpoint_urls_use_the_advertised_host() -> None:
    from services.executor.engine import Container
    from services.executor.facts import endpoints

    container = Container(
        id="c1",
        name="zt-1-nb0",
        state="running",
        labels={
            "zoe.execution": "1",
            "zoe.instance": "nb0",
            "zoe.port.ui": "8888/tcp",
            "zoe.url.ui": "http://{ip_port}/lab",
            "zoe.port.raw": "7077/tcp",
        },
        host_ports={"8888/tcp": 32768, "7077/tcp": 32769},
    )
    assert endpoints(container, "198.18.0.12") == {
        "ui": "http://198.18.0.12:32768/lab",
        "raw": "198.18.0.12:32769",
    }

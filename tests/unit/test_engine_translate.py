"""Docker's JSON to and from the engine port's data, without Docker."""

from __future__ import annotations

import pytest

from services.executor.engine.port import ContainerSpec, PortSpec
from services.executor.engine.translate import (
    container_event,
    container_from_inspect,
    container_from_summary,
    docker_config,
    removed_from,
    since_timestamp,
    stats_from,
)

MIB = 1 << 20


def spec(**changes: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "name": "zoe-7-main",
        "image": "zoe/busybox:1",
        "network": "zoe-7",
        "network_labels": {"zoe.execution": "7"},
        "hostname": "main",
        "labels": {"zoe.node": "n1"},
        "environment": {"A": "1", "B": "two words"},
        "memory": 64 * MIB,
        "nano_cpus": 500_000_000,
        "ports": (PortSpec("http", 8080), PortSpec("dns", 53, "udp")),
        "binds": ("/data/in:/data", "zoe-vol:/mnt:ro"),
    }
    fields.update(changes)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


def test_docker_config_carries_limits_ports_network_and_command() -> None:
    config = docker_config(spec(command="echo hi", work_dir="/tmp"), "127.0.0.1")
    host = config["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (64 * MIB, 64 * MIB, 5e8)
    assert host["NetworkMode"] == "zoe-7"
    assert host["PortBindings"] == {
        "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
    }
    assert host["Binds"] == ["/data/in:/data", "zoe-vol:/mnt:ro"]
    assert "ShmSize" not in host
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["Env"] == ["A=1", "B=two words"]
    assert config["Cmd"] == ["sh", "-c", "echo hi"]
    assert config["WorkingDir"] == "/tmp"
    assert config["Hostname"] == "main"
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"zoe-7": {"Aliases": ["main"]}}}


def test_docker_config_joins_the_network_found_and_keeps_the_images_command() -> None:
    config = docker_config(spec(memory=0, shm_size=96 * MIB), "0.0.0.0", "zoe-net-abc")
    assert config["HostConfig"]["NetworkMode"] == "zoe-net-abc"
    assert list(config["NetworkingConfig"]["EndpointsConfig"]) == ["zoe-net-abc"]
    assert config["HostConfig"]["MemorySwap"] == 0  # no limit, no swap limit either
    assert config["HostConfig"]["ShmSize"] == 96 * MIB
    assert "Cmd" not in config and "WorkingDir" not in config


def test_an_inspect_gives_the_state_exit_and_published_ports() -> None:
    data = {
        "Id": "c1",
        "Name": "/zoe-7-main",
        "State": {"Status": "exited", "ExitCode": 137, "OOMKilled": True},
        "Config": {"Labels": {"zoe.node": "n1"}},
        "NetworkSettings": {
            "Ports": {
                "8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
                "9090/tcp": None,  # exposed, not published
            }
        },
    }
    c = container_from_inspect(data)
    assert (c.id, c.name, c.state, c.exit_code, c.oom_killed) == (
        "c1",
        "zoe-7-main",
        "exited",
        137,
        True,
    )
    assert c.host_ports == {"8080/tcp": 32768}
    assert c.labels == {"zoe.node": "n1"}
    assert c.ended and not c.running


def test_a_listing_gives_no_exit_code_and_only_published_ports() -> None:
    data = {
        "Id": "c2",
        "Names": ["/zoe-7-worker"],
        "State": "running",
        "Labels": {"zoe.instance": "worker"},
        "Ports": [
            {"PrivatePort": 8080, "Type": "tcp", "PublicPort": 32770},
            {"PrivatePort": 7077, "Type": "tcp"},
        ],
    }
    c = container_from_summary(data)
    assert (c.name, c.state, c.exit_code, c.oom_killed) == ("zoe-7-worker", "running", None, False)
    assert c.host_ports == {"8080/tcp": 32770}
    assert c.running and not c.ended


def test_die_and_destroy_events_keep_the_labels_only() -> None:
    raw = {
        "Action": "die",
        "Actor": {
            "ID": "c1",
            "Attributes": {"exitCode": "3", "name": "zoe-7-main", "image": "x", "zoe.node": "n1"},
        },
        "timeNano": 1_700_000_000_250_000_000,
    }
    event = container_event(raw)
    assert event is not None
    assert (event.action, event.container_id, event.name, event.exit_code) == (
        "die",
        "c1",
        "zoe-7-main",
        3,
    )
    assert event.labels == {"zoe.node": "n1"}
    assert event.time == pytest.approx(1_700_000_000.25)
    destroyed = container_event({"status": "destroy", "Actor": {"ID": "c1", "Attributes": {}}})
    assert destroyed is not None and destroyed.exit_code is None
    assert container_event({"Action": "start", "Actor": {"ID": "c1"}}) is None
    assert container_event({"Action": "die", "Actor": {}}) is None


def test_stats_leave_out_the_page_cache_that_can_be_dropped() -> None:
    data = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 2_000},
            "system_cpu_usage": 90_000,
            "online_cpus": 2,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 80_000},
        "memory_stats": {"usage": 10 * MIB, "stats": {"total_inactive_file": 4 * MIB}},
    }
    s = stats_from(data)
    assert (s.cpu_ns, s.system_ns, s.online_cpus) == (2_000, 90_000, 2)
    assert (s.prev_cpu_ns, s.prev_system_ns) == (1_000, 80_000)
    assert s.memory_bytes == 6 * MIB
    cgroup2 = stats_from({"memory_stats": {"usage": MIB, "stats": {"inactive_file": 2 * MIB}}})
    assert (cgroup2.memory_bytes, cgroup2.online_cpus, cgroup2.cpu_ns) == (0, 1, 0)


def test_since_is_seconds_and_nanoseconds() -> None:
    assert since_timestamp(1_700_000_000.5) == "1700000000.500000000"
    assert since_timestamp(12.0) == "12.000000000"
    assert since_timestamp(3.9999999999) == "3.999999999"  # never 1e9 nanoseconds


def test_a_removed_container_says_how_it_ended() -> None:
    data = {"Id": "c1", "State": {"ExitCode": 7, "OOMKilled": False}}
    removed = removed_from(data, "bye\n")
    assert (removed.container_id, removed.exit_code, removed.oom_killed, removed.log) == (
        "c1",
        7,
        False,
        "bye\n",
    )

"""Docker's JSON to and from the engine port's data, without Docker."""

from __future__ import annotations

import pytest

from services.executor.engine.port import ContainerSpec, EngineError, PortSpec
from services.executor.engine.translate import (
    DROPPED_CAPABILITIES,
    LOG_CONFIG,
    PIDS_LIMIT,
    ZAPP_USER,
    LimitRefused,
    NodeCapacity,
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
    config = docker_config(spec(shm_size=96 * MIB), "0.0.0.0", "zoe-net-abc")
    assert config["HostConfig"]["NetworkMode"] == "zoe-net-abc"
    assert list(config["NetworkingConfig"]["EndpointsConfig"]) == ["zoe-net-abc"]
    assert config["HostConfig"]["ShmSize"] == 96 * MIB
    assert "Cmd" not in config and "WorkingDir" not in config


# confinement ---------------------------------------------------------------------------------

DEFAULT_CAPABILITIES = {  # Docker 20.10's default set (moby oci/caps/defaults.go)
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}  # fmt: skip


def test_every_container_gets_no_new_privileges_a_pids_limit_and_bounded_logs() -> None:
    for run_as_root in (False, True):
        config = docker_config(spec(), "127.0.0.1", run_as_root=run_as_root)
        host = config["HostConfig"]
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert host["PidsLimit"] == PIDS_LIMIT == 2048
        assert host["Privileged"] is False
        assert host["LogConfig"] == LOG_CONFIG
        assert LOG_CONFIG == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
        assert "CapAdd" not in host


def test_an_unprivileged_container_runs_as_the_zapp_user_without_capabilities() -> None:
    config = docker_config(spec(), "127.0.0.1")
    assert config["User"] == ZAPP_USER == "1000:1000"
    assert config["HostConfig"]["CapDrop"] == ["ALL"]


def test_a_root_container_keeps_docker_s_defaults_minus_the_dropped_ones() -> None:
    config = docker_config(spec(), "127.0.0.1", run_as_root=True)
    assert config["User"] == "0:0"
    dropped = set(config["HostConfig"]["CapDrop"])
    assert dropped == set(DROPPED_CAPABILITIES) == {"MKNOD", "NET_RAW", "SETFCAP", "SETPCAP"}
    assert dropped <= DEFAULT_CAPABILITIES
    assert DEFAULT_CAPABILITIES - dropped == {
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "NET_BIND_SERVICE",
        "SYS_CHROOT", "KILL", "AUDIT_WRITE",
    }  # fmt: skip


def test_limits_above_the_node_are_lowered_to_its_capacity() -> None:
    node = NodeCapacity(cores=2.0, memory=512 * MIB)
    big = spec(memory=4096 * MIB, nano_cpus=8_000_000_000)
    host = docker_config(big, "127.0.0.1", capacity=node)["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (
        512 * MIB,
        512 * MIB,
        2_000_000_000,
    )
    small = docker_config(spec(), "127.0.0.1", capacity=node)["HostConfig"]
    assert (small["Memory"], small["NanoCpus"]) == (64 * MIB, 500_000_000)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"memory": 0}, "memory limit 0 bytes is below 6291456 (6 MiB)"),
        ({"memory": 6 * MIB - 1}, "memory limit 6291455 bytes is below 6291456 (6 MiB)"),
        ({"nano_cpus": 0}, "CPU limit 0 NanoCpus is below 10000000 (0.01 core)"),
        ({"nano_cpus": 9_999_999}, "CPU limit 9999999 NanoCpus is below 10000000 (0.01 core)"),
    ],
)
def test_a_limit_docker_would_read_as_none_is_refused(
    changes: dict[str, int], message: str
) -> None:
    with pytest.raises(LimitRefused) as info:
        docker_config(spec(**changes), "127.0.0.1")
    assert isinstance(info.value, EngineError)  # a start that fails, with its reason
    assert str(info.value).startswith(f"container zoe-7-main: {message}")


def test_a_node_too_small_for_any_container_is_refused() -> None:
    with pytest.raises(LimitRefused, match=r"this node offers 0\.001 cores"):
        docker_config(spec(), "127.0.0.1", capacity=NodeCapacity(cores=0.001, memory=1 << 30))


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


def test_kill_and_oom_events_keep_their_signal_apart_from_the_labels() -> None:
    attributes = {"name": "zoe-7-main", "signal": "9", "zoe.node": "n1"}
    killed = container_event({"Action": "kill", "Actor": {"ID": "c1", "Attributes": attributes}})
    assert killed is not None
    assert (killed.action, killed.labels, killed.signal) == ("kill", {"zoe.node": "n1"}, "9")
    oom = container_event({"Action": "oom", "Actor": {"ID": "c1", "Attributes": {}}})
    assert oom is not None and (oom.action, oom.exit_code) == ("oom", None)


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

"""Every rule of the ZApp description format, with its exact path and message."""

from __future__ import annotations

import copy
import json
import math
import pathlib
from typing import Any

import msgspec
import pytest

from common.errors import InvalidZApp
from common.zapp import (
    CoresRange,
    Description,
    MemoryRange,
    Port,
    Resources,
    Service,
    Volume,
    load_description,
)

GOLDEN = pathlib.Path(__file__).parent / "golden"
DELETE = object()


def spark() -> dict[str, Any]:
    """The Spark example of ZAPP_FORMAT.md."""
    data: dict[str, Any] = json.loads((GOLDEN / "spark.json").read_text())
    return data


def minimal(**service: object) -> dict[str, Any]:
    """A valid one-service description, with `service` keys replaced."""
    main: dict[str, Any] = {
        "name": "main",
        "image": "zoe/app:1",
        "monitor": True,
        "essential_count": 1,
        "total_count": 1,
        "startup_order": 0,
        "resources": {"memory": {"min": None, "max": None}, "cores": {"min": None, "max": None}},
        "ports": [],
        "environment": [],
        "volumes": [],
        "command": None,
    }
    main.update(service)
    return {"name": "app", "version": 3, "will_end": True, "size": 1, "services": [main]}


def changed(data: dict[str, Any], keys: tuple[object, ...], value: object) -> dict[str, Any]:
    """A copy of `data` with the value at `keys` replaced (or deleted with DELETE)."""
    data = copy.deepcopy(data)
    target: Any = data
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


def errors(data: object, **options: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidZApp) as info:
        load_description(data, **options)
    assert info.value.message == "invalid ZApp description"
    assert info.value.status == 422
    return [(e.path, e.message) for e in info.value.errors]


def test_the_spark_example_loads_unchanged() -> None:
    loaded = load_description(spark())
    assert loaded.warnings == []
    d = loaded.description
    assert (d.name, d.version, d.will_end, d.size) == ("spark-jupyter", 3, False, 512)
    assert [s.name for s in d.services] == ["spark-master", "spark-worker", "jupyter"]
    worker = d.services[1]
    assert (worker.essential_count, worker.total_count, worker.startup_order) == (1, 4, 1)
    assert worker.resources == Resources(
        memory=MemoryRange(min=4294967296, max=4294967296), cores=CoresRange(min=2.0, max=2.0)
    )
    assert worker.environment == [("SPARK_MASTER_IP", "{dns_name#spark-master0}")]
    assert d.services[2].ports == [
        Port(
            name="Jupyter Notebook interface",
            port_number=8888,
            protocol="tcp",
            url_template="http://{ip_port}{proxy_path}",
            proxy=True,
        )
    ]
    assert d.instance_count() == 6


def test_the_description_round_trips_through_json() -> None:
    description = load_description(spark()).description
    again = load_description(json.loads(msgspec.json.encode(description)))
    assert again.description == description
    assert again.warnings == []


def test_everything_optional_round_trips() -> None:
    data = minimal(
        work_dir="/work",
        labels=["gpu", "ssd"],
        command="run {user_name}",
        volumes=[{"name": "data", "path": "/data", "read_only": False}],
        resources={
            "memory": {"min": 6 * MIB, "max": None},
            "cores": {"min": 0.01, "max": 2},
            "shm": 0,
        },
    )
    description = load_description(data).description
    main = description.services[0]
    assert main.work_dir == "/work"
    assert main.labels == ["gpu", "ssd"]
    assert main.volumes == [Volume(name="data", path="/data", read_only=False)]
    assert main.resources.shm == 0
    assert load_description(json.loads(msgspec.json.encode(description))).description == description


@pytest.mark.parametrize(
    "data",
    [None, [], "spark", 3, True, 1.5],
    ids=["null", "array", "string", "int", "bool", "float"],
)
def test_a_description_must_be_an_object(data: object) -> None:
    assert errors(data) == [("", "the description must be a JSON object")]


def test_missing_and_unknown_top_level_keys() -> None:
    data = {"priority": 5, 7: "x", "requires_binary": False}
    assert errors(data) == [
        ("name", "is required"),
        ("size", "is required"),
        ("services", "is required"),
        ("priority", "unknown key"),
        ("[7]", "unknown key"),
        ("requires_binary", "unknown key"),
    ]


def test_keys_that_cannot_be_printed() -> None:
    assert errors({**minimal(), 10**5000: 1}) == [("[<int>]", "unknown key")]


def test_odd_unknown_keys_are_quoted_in_the_path() -> None:
    data = changed(minimal(), ("services", 0, "a key"), 1)
    assert errors(data) == [("services[0]['a key']", "unknown key")]


def test_missing_version_and_will_end_default_with_warnings() -> None:
    data = changed(changed(spark(), ("version",), DELETE), ("will_end",), DELETE)
    loaded = load_description(data)
    assert loaded.description.version == 3
    assert loaded.description.will_end is True
    assert loaded.warnings == [
        "version: missing, assumed 3",
        "will_end: missing, assumed true because a service has monitor: true",
    ]


def test_image_without_tag_gets_latest_with_a_warning() -> None:
    data = changed(minimal(), ("services", 0, "image"), "zoe/app")
    loaded = load_description(data)
    assert loaded.description.services[0].image == "zoe/app:latest"
    assert loaded.warnings == ["services[0].image: no tag, using 'zoe/app:latest'"]


@pytest.mark.parametrize(
    "image",
    ["ubuntu:22.04", "zoe/app@sha256:" + "a" * 64, "zapps/a/b_c.d-e:1.0-rc1", "my-org/app:1"],
)
def test_images_with_a_tag_or_digest_are_kept(image: str) -> None:
    loaded = load_description(minimal(image=image))
    assert loaded.description.services[0].image == image
    assert loaded.warnings == []


@pytest.mark.parametrize(
    "image",
    ["registry.example.com:5000/a/b_c.d-e:1.0-rc1", "Registry.Example.com:5000/a:1"],
)
def test_images_of_an_allowed_registry_are_kept(image: str) -> None:
    loaded = load_description(minimal(image=image), registries=["registry.example.com:5000"])
    assert loaded.description.services[0].image == image
    assert loaded.warnings == []


def test_images_of_another_registry_name_the_allowed_ones() -> None:
    data = minimal(image="registry.example.com/a:1")
    assert errors(data, registries=["r2:5000", "r1.lan"]) == [
        (
            "services[0].image",
            "names the registry 'registry.example.com'; this deployment pulls only from"
            " 'r1.lan', 'r2:5000'",
        )
    ]


def test_replicas_of_1_is_accepted_and_network_ignored_with_a_warning() -> None:
    loaded = load_description(minimal(replicas=1, network="my-net"))
    assert loaded.warnings == [
        "services[0].network: ignored: every execution has a network of its own"
    ]
    assert "replicas" not in msgspec.json.encode(loaded.description).decode()


def test_injected_variables_are_ignored_with_a_warning() -> None:
    loaded = load_description(minimal(environment=[["A", "1"], ["ZOE_USER", "bob"]]))
    assert loaded.description.services[0].environment == [("A", "1")]
    assert loaded.warnings == [
        "services[0].environment[1][0]: ZOE_USER is set by Zoe; this value is ignored"
    ]


def test_shm_size_of_the_original_format_is_read_as_shm() -> None:
    resources = {"memory": {"min": None, "max": None}, "cores": {"min": None, "max": None}}
    loaded = load_description(minimal(resources={**resources, "shm_size": 67108864}))
    assert loaded.description.services[0].resources.shm == 67108864
    assert loaded.warnings == ["services[0].resources.shm_size: read as resources.shm"]


def test_integral_floats_are_integers() -> None:
    loaded = load_description(minimal(total_count=2.0, essential_count=1.0))
    main = loaded.description.services[0]
    assert (main.total_count, main.essential_count) == (2, 1)
    assert isinstance(main.total_count, int)


S = ("services", 0)
MEM = (*S, "resources", "memory")
CPU = (*S, "resources", "cores")
R = "services[0]"
NAME_RULE = "must be 3 to 128 characters: letters, digits, '-' and '@'"
SERVICE_NAME_RULE = "must be 3 to 16 characters: letters, digits and '-'"
IMAGE_RULE = "must be a Docker image reference such as 'zapps/spark-master:1'"
VAR_RULE = "must be a variable name: letters, digits and '_', not starting with a digit"
MIB = 1024 * 1024
MEMORY_LOW = "must be >= 6291456 (6 MiB, the engine's smallest memory limit) or null"
MEMORY_RULE = "must be an integer >= 6291456 (6 MiB) or null"
CORES_LOW = "must be >= 0.01 (the engine's smallest CPU limit) or null"
CORES_RULE = "must be a number >= 0.01 or null"
REPLICAS_RULE = (
    "must be 1 or absent: each instance is one container; total_count sets how many there are"
)
MOUNT_COLON = "must not contain ':' (Docker would read what follows as mount options)"
NO_REGISTRY = (
    "names the registry {!r}, but this deployment pulls from no registry:"
    " images are built on its nodes (such as 'zoe/spark:1')"
)
VOLUME_RULE = (
    "must be a Docker volume name: 2 to 255 letters, digits, '_', '.' and '-',"
    " starting with a letter or digit"
)
PORT = {"name": "web", "port_number": 80, "protocol": "tcp", "url_template": "http://{ip_port}/"}
VOLUME = {"name": "data", "path": "/data", "read_only": True}

RULES: list[tuple[tuple[object, ...], object, str, str]] = [
    # top level
    (("name",), "ab", "name", NAME_RULE),
    (("name",), "a" * 129, "name", NAME_RULE),
    (("name",), "my app", "name", NAME_RULE),
    (("name",), "my_app", "name", NAME_RULE),
    (("name",), 123, "name", NAME_RULE),
    (("version",), 2, "version", "must be 3"),
    (("version",), 4, "version", "must be 3"),
    (("version",), "3", "version", "must be 3"),
    (("version",), None, "version", "must be 3"),
    (("will_end",), 1, "will_end", "must be a boolean"),
    (("will_end",), "true", "will_end", "must be a boolean"),
    (("size",), -1, "size", "must be an integer >= 0"),
    (("size",), True, "size", "must be an integer >= 0"),
    (("size",), 1.5, "size", "must be an integer >= 0"),
    (("size",), "512", "size", "must be an integer >= 0"),
    (("size",), 2**31, "size", "must be <= 2147483647"),
    (("services",), [], "services", "must be a non-empty array"),
    (("services",), {}, "services", "must be an array"),
    (("services",), None, "services", "must be an array"),
    (S, "main", R, "must be an object"),
    # service
    ((*S, "name"), "ab", f"{R}.name", SERVICE_NAME_RULE),
    ((*S, "name"), "a" * 17, f"{R}.name", SERVICE_NAME_RULE),
    ((*S, "name"), "spark_master", f"{R}.name", SERVICE_NAME_RULE),
    ((*S, "name"), "spark@master", f"{R}.name", SERVICE_NAME_RULE),
    ((*S, "name"), DELETE, f"{R}.name", "is required"),
    ((*S, "image"), "", f"{R}.image", "must be a non-empty string"),
    ((*S, "image"), None, f"{R}.image", "must be a non-empty string"),
    ((*S, "image"), "zoe app:1", f"{R}.image", IMAGE_RULE),
    ((*S, "image"), "Zoe/App:1", f"{R}.image", IMAGE_RULE),
    ((*S, "image"), "zoe/app:", f"{R}.image", IMAGE_RULE),
    (
        (*S, "image"),
        "docker.io/library/ubuntu:22.04",
        f"{R}.image",
        NO_REGISTRY.format("docker.io"),
    ),
    ((*S, "image"), "localhost/zoe/app:1", f"{R}.image", NO_REGISTRY.format("localhost")),
    ((*S, "image"), "localhost:5000/zoe/app", f"{R}.image", NO_REGISTRY.format("localhost:5000")),
    ((*S, "image"), "reg:5000/app:1", f"{R}.image", NO_REGISTRY.format("reg:5000")),
    ((*S, "image"), "Zoe/app:1", f"{R}.image", NO_REGISTRY.format("Zoe")),
    ((*S, "image"), "ghcr.io/x/y@sha256:" + "a" * 64, f"{R}.image", NO_REGISTRY.format("ghcr.io")),
    ((*S, "monitor"), 1, f"{R}.monitor", "must be a boolean"),
    ((*S, "monitor"), None, f"{R}.monitor", "must be a boolean"),
    ((*S, "essential_count"), 0, f"{R}.essential_count", "must be an integer >= 1"),
    ((*S, "essential_count"), True, f"{R}.essential_count", "must be an integer >= 1"),
    ((*S, "essential_count"), "1", f"{R}.essential_count", "must be an integer >= 1"),
    ((*S, "total_count"), 0, f"{R}.total_count", "must be an integer >= 1"),
    ((*S, "total_count"), 1.5, f"{R}.total_count", "must be an integer >= 1"),
    ((*S, "total_count"), 1025, f"{R}.total_count", "must be <= 1024"),
    ((*S, "startup_order"), "0", f"{R}.startup_order", "must be an integer"),
    ((*S, "startup_order"), False, f"{R}.startup_order", "must be an integer"),
    (
        (*S, "startup_order"),
        2**31,
        f"{R}.startup_order",
        "must be between -2147483648 and 2147483647",
    ),
    ((*S, "command"), "", f"{R}.command", "must be a non-empty string or null"),
    ((*S, "command"), ["sh", "-c"], f"{R}.command", "must be a non-empty string or null"),
    ((*S, "command"), DELETE, f"{R}.command", "is required"),
    ((*S, "command"), "x" * 65537, f"{R}.command", "must be at most 65536 characters long"),
    ((*S, "work_dir"), "work", f"{R}.work_dir", "must be an absolute path or null"),
    ((*S, "work_dir"), "", f"{R}.work_dir", "must be an absolute path or null"),
    ((*S, "network"), "", f"{R}.network", "must be a non-empty string"),
    ((*S, "replicas"), 3, f"{R}.replicas", REPLICAS_RULE),
    ((*S, "replicas"), 0, f"{R}.replicas", REPLICAS_RULE),
    ((*S, "replicas"), True, f"{R}.replicas", REPLICAS_RULE),
    ((*S, "replicas"), "1", f"{R}.replicas", REPLICAS_RULE),
    ((*S, "replicas"), None, f"{R}.replicas", REPLICAS_RULE),
    ((*S, "extra"), 1, f"{R}.extra", "unknown key"),
    ((*S, "docker_image"), "zoe/app:1", f"{R}.docker_image", "unknown key"),
    # resources
    ((*S, "resources"), None, f"{R}.resources", "must be an object"),
    ((*S, "resources", "memory"), DELETE, f"{R}.resources.memory", "is required"),
    ((*S, "resources", "gpu"), 1, f"{R}.resources.gpu", "unknown key"),
    ((*MEM, "min"), 6 * MIB - 1, f"{R}.resources.memory.min", MEMORY_LOW),
    ((*MEM, "min"), 1024, f"{R}.resources.memory.min", MEMORY_LOW),
    ((*MEM, "min"), 0, f"{R}.resources.memory.min", MEMORY_LOW),
    ((*MEM, "min"), "1G", f"{R}.resources.memory.min", MEMORY_RULE),
    ((*MEM, "min"), True, f"{R}.resources.memory.min", MEMORY_RULE),
    ((*MEM, "min"), 8 * MIB + 0.5, f"{R}.resources.memory.min", MEMORY_RULE),
    ((*MEM, "max"), 512, f"{R}.resources.memory.max", MEMORY_LOW),
    ((*MEM, "max"), 4 * MIB, f"{R}.resources.memory.max", MEMORY_LOW),
    (
        (*MEM, "max"),
        2**46 + 1,
        f"{R}.resources.memory.max",
        "must be <= 70368744177664 (64 TiB)",
    ),
    ((*MEM, "min"), DELETE, f"{R}.resources.memory.min", "is required"),
    ((*MEM, "avg"), 1, f"{R}.resources.memory.avg", "unknown key"),
    ((*CPU, "min"), 0, f"{R}.resources.cores.min", CORES_LOW),
    ((*CPU, "min"), -1.5, f"{R}.resources.cores.min", CORES_LOW),
    ((*CPU, "min"), 0.009, f"{R}.resources.cores.min", CORES_LOW),
    ((*CPU, "min"), 1e-10, f"{R}.resources.cores.min", CORES_LOW),
    ((*CPU, "max"), 0.0099999999, f"{R}.resources.cores.max", CORES_LOW),
    ((*CPU, "min"), "2", f"{R}.resources.cores.min", CORES_RULE),
    ((*CPU, "min"), True, f"{R}.resources.cores.min", CORES_RULE),
    ((*CPU, "min"), math.nan, f"{R}.resources.cores.min", CORES_RULE),
    ((*CPU, "max"), math.inf, f"{R}.resources.cores.max", CORES_RULE),
    ((*CPU, "max"), 1025, f"{R}.resources.cores.max", "must be <= 1024"),
    ((*CPU, "max"), 10**400, f"{R}.resources.cores.max", "must be <= 1024"),
    ((*S, "resources", "shm"), -1, f"{R}.resources.shm", "must be an integer >= 0 or null"),
    ((*S, "resources", "shm"), "64m", f"{R}.resources.shm", "must be an integer >= 0 or null"),
    # ports
    ((*S, "ports"), {}, f"{R}.ports", "must be an array"),
    ((*S, "ports"), [PORT] * 101, f"{R}.ports", "must have at most 100 items"),
    ((*S, "ports"), [[]], f"{R}.ports[0]", "must be an object"),
    (
        (*S, "ports"),
        [{**PORT, "name": "ui"}],
        f"{R}.ports[0].name",
        "must be a string of at least 3 characters",
    ),
    (
        (*S, "ports"),
        [{**PORT, "port_number": 0}],
        f"{R}.ports[0].port_number",
        "must be an integer from 1 to 65535",
    ),
    (
        (*S, "ports"),
        [{**PORT, "port_number": 65536}],
        f"{R}.ports[0].port_number",
        "must be an integer from 1 to 65535",
    ),
    (
        (*S, "ports"),
        [{**PORT, "port_number": True}],
        f"{R}.ports[0].port_number",
        "must be an integer from 1 to 65535",
    ),
    (
        (*S, "ports"),
        [{**PORT, "port_number": "80"}],
        f"{R}.ports[0].port_number",
        "must be an integer from 1 to 65535",
    ),
    (
        (*S, "ports"),
        [{**PORT, "protocol": "http"}],
        f"{R}.ports[0].protocol",
        "must be 'tcp' or 'udp'",
    ),
    ((*S, "ports"), [{**PORT, "proxy": "yes"}], f"{R}.ports[0].proxy", "must be a boolean"),
    ((*S, "ports"), [{**PORT, "expose": True}], f"{R}.ports[0].expose", "unknown key"),
    (
        (*S, "ports"),
        [{k: v for k, v in PORT.items() if k != "url_template"}],
        f"{R}.ports[0].url_template",
        "is required",
    ),
    (
        (*S, "ports"),
        [{**PORT, "url_template": "http://{host}/"}],
        f"{R}.ports[0].url_template",
        "unknown template variable {host}; only {ip_port} and {proxy_path} are allowed",
    ),
    (
        (*S, "ports"),
        [{**PORT, "url_template": "http://{ip_port/"}],
        f"{R}.ports[0].url_template",
        "unbalanced '{' or '}' (write '{{' or '}}' for a literal brace)",
    ),
    (
        (*S, "ports"),
        [PORT, {**PORT, "name": "other", "protocol": "udp"}],
        f"{R}.ports[1].port_number",
        "duplicate port number 80 (also ports[0])",
    ),
    # environment
    ((*S, "environment"), {"A": "1"}, f"{R}.environment", "must be an array"),
    ((*S, "environment"), [["A"]], f"{R}.environment[0]", "must be a [NAME, value] pair"),
    ((*S, "environment"), ["A=1"], f"{R}.environment[0]", "must be a [NAME, value] pair"),
    (
        (*S, "environment"),
        [["A", "1", "2"]],
        f"{R}.environment[0]",
        "must be a [NAME, value] pair",
    ),
    ((*S, "environment"), [["1A", "1"]], f"{R}.environment[0][0]", VAR_RULE),
    ((*S, "environment"), [["A-B", "1"]], f"{R}.environment[0][0]", VAR_RULE),
    ((*S, "environment"), [["", "1"]], f"{R}.environment[0][0]", VAR_RULE),
    ((*S, "environment"), [["A", 1]], f"{R}.environment[0][1]", "must be a string"),
    ((*S, "environment"), [["A", None]], f"{R}.environment[0][1]", "must be a string"),
    (
        (*S, "environment"),
        [["A", "1"], ["A", "2"]],
        f"{R}.environment[1][0]",
        "duplicate variable A (also environment[0])",
    ),
    (
        (*S, "environment"),
        [["A", "{home}"]],
        f"{R}.environment[0][1]",
        "unknown template variable {home}",
    ),
    (
        (*S, "environment"),
        [["A", "${HOME}"]],
        f"{R}.environment[0][1]",
        "unknown template variable {HOME}",
    ),
    (
        (*S, "environment"),
        [["A", "a } b"]],
        f"{R}.environment[0][1]",
        "unbalanced '{' or '}' (write '{{' or '}}' for a literal brace)",
    ),
    (
        (*S, "environment"),
        [["A", "{dns_name#main1}"]],
        f"{R}.environment[0][1]",
        "{dns_name#main1}: no instance of this ZApp is named 'main1'",
    ),
    (
        (*S, "environment"),
        [["A", "{dns_name#Main0}"]],
        f"{R}.environment[0][1]",
        "{dns_name#Main0}: no instance of this ZApp is named 'Main0'",
    ),
    (
        (*S, "environment"),
        [["A", "x\x00y"]],
        f"{R}.environment[0][1]",
        "must not contain NUL or unpaired surrogate characters",
    ),
    (
        (*S, "environment"),
        [["A", "\ud800"]],
        f"{R}.environment[0][1]",
        "must not contain NUL or unpaired surrogate characters",
    ),
    # volumes
    ((*S, "volumes"), None, f"{R}.volumes", "must be an array"),
    ((*S, "volumes"), [["data", "/data", True]], f"{R}.volumes[0]", "must be an object"),
    ((*S, "volumes"), [{**VOLUME, "name": "/etc"}], f"{R}.volumes[0].name", VOLUME_RULE),
    ((*S, "volumes"), [{**VOLUME, "name": "a"}], f"{R}.volumes[0].name", VOLUME_RULE),
    (
        (*S, "volumes"),
        [{**VOLUME, "path": "data"}],
        f"{R}.volumes[0].path",
        "must be an absolute path",
    ),
    ((*S, "volumes"), [{**VOLUME, "path": "/data:ro"}], f"{R}.volumes[0].path", MOUNT_COLON),
    ((*S, "volumes"), [{**VOLUME, "path": "/a:b/c"}], f"{R}.volumes[0].path", MOUNT_COLON),
    ((*S, "volumes"), [{**VOLUME, "path": "/data:"}], f"{R}.volumes[0].path", MOUNT_COLON),
    (
        (*S, "volumes"),
        [{**VOLUME, "read_only": "no"}],
        f"{R}.volumes[0].read_only",
        "must be a boolean",
    ),
    (
        (*S, "volumes"),
        [{k: v for k, v in VOLUME.items() if k != "read_only"}],
        f"{R}.volumes[0].read_only",
        "is required",
    ),
    (
        (*S, "volumes"),
        [VOLUME, {**VOLUME, "name": "other"}],
        f"{R}.volumes[1].path",
        "duplicate mount path (also volumes[0])",
    ),
    # labels
    ((*S, "labels"), "gpu", f"{R}.labels", "must be an array"),
    (
        (*S, "labels"),
        ["gpu", ""],
        f"{R}.labels[1]",
        "must be a non-empty string without spaces, at most 128 characters",
    ),
    (
        (*S, "labels"),
        ["a b"],
        f"{R}.labels[0]",
        "must be a non-empty string without spaces, at most 128 characters",
    ),
    ((*S, "labels"), ["x" * 129], f"{R}.labels[0]", "must be at most 128 characters long"),
    ((*S, "labels"), ["gpu", "gpu"], f"{R}.labels[1]", "duplicate label (also labels[0])"),
]


@pytest.mark.parametrize(("keys", "value", "path", "message"), RULES)
def test_each_rule(keys: tuple[object, ...], value: object, path: str, message: str) -> None:
    assert errors(changed(minimal(), keys, value)) == [(path, message)]


def test_the_brief_example_path() -> None:
    data = changed(spark(), ("services", 1, "resources", "memory", "min"), 512)
    assert errors(data) == [("services[1].resources.memory.min", MEMORY_LOW)]


def test_max_below_min() -> None:
    data = minimal(
        resources={"memory": {"min": 8 * MIB, "max": 7 * MIB}, "cores": {"min": 2, "max": 1.5}}
    )
    assert errors(data) == [
        ("services[0].resources.memory.max", "must be >= memory.min (8388608) or null"),
        ("services[0].resources.cores.max", "must be >= cores.min (2) or null"),
    ]


def test_total_count_below_essential_count() -> None:
    assert errors(minimal(essential_count=3, total_count=2)) == [
        ("services[0].total_count", "must be >= essential_count (3)")
    ]


def test_at_least_one_monitor() -> None:
    data = changed(spark(), ("services", 2, "monitor"), False)
    assert errors(data) == [("services", "at least one service must have monitor: true")]


def test_no_monitor_error_when_a_monitor_flag_is_itself_broken() -> None:
    data = changed(spark(), ("services", 2, "monitor"), "yes")
    assert errors(data) == [("services[2].monitor", "must be a boolean")]


def test_service_names_are_unique_ignoring_case() -> None:
    data = spark()
    data["services"][2]["name"] = "Spark-Master"
    assert errors(data) == [
        ("services[2].name", "duplicate service name (same as services[0].name, ignoring case)")
    ]


def test_instance_names_must_not_clash() -> None:
    web = minimal(name="web", total_count=11, monitor=True)["services"][0]
    web1 = {**web, "name": "web1", "total_count": 1, "essential_count": 1}
    data = minimal()
    data["services"] = [web, web1]
    assert errors(data) == [
        ("services[1].name", "instance 'web10' clashes with an instance of services[0]")
    ]


def test_dns_names_of_elastic_instances_exist() -> None:
    data = spark()
    data["services"][2]["environment"].append(["LAST", "{dns_name#spark-worker3}"])
    assert load_description(data).warnings == []
    data["services"][2]["environment"].append(["NEXT", "{dns_name#spark-worker4}"])
    assert errors(data) == [
        (
            "services[2].environment[2][1]",
            "{dns_name#spark-worker4}: no instance of this ZApp is named 'spark-worker4'",
        )
    ]


def test_commands_are_templates_too() -> None:
    ok = minimal(command="run --master {dns_name#main0} --user {user_name} ${{HOME}}")
    assert load_description(ok).description.services[0].command == ok["services"][0]["command"]
    assert errors(minimal(command="echo {nobody} {nobody} {dns_name#web0}")) == [
        ("services[0].command", "unknown template variable {nobody}"),
        ("services[0].command", "{dns_name#web0}: no instance of this ZApp is named 'web0'"),
    ]


def test_all_template_variables_are_known() -> None:
    value = (
        "{user_name} {execution_id} {execution_name} {deployment_name} {dns_name#self}"
        " {dns_name#main0} {{literal}}"
    )
    assert load_description(minimal(environment=[["ALL", value]])).warnings == []


def test_too_many_services() -> None:
    data = minimal()
    data["services"] = [{**data["services"][0], "name": f"s{i:03}"} for i in range(101)]
    assert errors(data) == [("services", "must have at most 100 items")]


def test_too_many_instances() -> None:
    data = minimal()
    data["services"] = [
        {**data["services"][0], "name": f"svc{chr(97 + i)}", "total_count": 1000} for i in range(11)
    ]
    assert errors(data) == [("services", "11000 instances in all; at most 10000 are allowed")]


def test_too_much_expanded_text() -> None:
    value = "x" * 65536
    environment = [[f"V{i}", value] for i in range(2)]
    data = minimal(total_count=1000, environment=environment)
    [(path, message)] = errors(data)
    assert path == "services"
    assert message == (
        "expanded, the 1000 instances take up to 131671000 bytes; at most 8388608 (8 MiB) are allowed"
    )


def test_every_error_is_listed_at_once() -> None:
    data = spark()
    data["name"] = "x"
    data["services"][0]["total_count"] = True
    data["services"][1]["resources"]["memory"]["min"] = 5
    data["services"][1]["ports"] = [{"name": "ab", "port_number": 0, "protocol": "sctp"}]
    data["services"][2]["environment"][0][1] = "{nope}"
    assert errors(data) == [
        ("name", NAME_RULE),
        ("services[0].total_count", "must be an integer >= 1"),
        ("services[1].resources.memory.min", MEMORY_LOW),
        ("services[1].ports[0].url_template", "is required"),
        ("services[1].ports[0].name", "must be a string of at least 3 characters"),
        ("services[1].ports[0].port_number", "must be an integer from 1 to 65535"),
        ("services[1].ports[0].protocol", "must be 'tcp' or 'udp'"),
        ("services[2].environment[0][1]", "unknown template variable {nope}"),
    ]


def test_the_error_list_is_capped() -> None:
    data = minimal()
    for i in range(300):
        data[f"junk{i}"] = i
    found = errors(data)
    assert len(found) == 201
    assert found[0] == ("junk0", "unknown key")
    assert found[-1] == ("", "too many errors; only the first 200 are listed")


def test_huge_strings_are_refused_with_the_limit() -> None:
    assert errors(changed(minimal(), ("services", 0, "image"), "a" * 5000)) == [
        ("services[0].image", "must be at most 4096 characters long")
    ]


def test_tuples_are_accepted_as_arrays() -> None:
    data = minimal(environment=(("A", "1"),), labels=("x",))
    assert load_description(data).description.services[0].environment == [("A", "1")]


def test_a_description_built_in_code_loads_back() -> None:
    description = Description(
        name="built",
        version=3,
        will_end=True,
        size=0,
        services=[
            Service(
                name="one",
                image="zoe/one:1",
                monitor=True,
                essential_count=1,
                total_count=2,
                startup_order=0,
                resources=Resources(
                    memory=MemoryRange(min=None, max=None), cores=CoresRange(min=None, max=None)
                ),
                ports=[],
                environment=[("PEER", "{dns_name#one1}")],
                volumes=[],
                command=None,
            )
        ],
    )
    data = msgspec.json.decode(msgspec.json.encode(description))
    assert load_description(data).description == description


def objects_in(value: object, keys: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The keys leading to every JSON object inside `value`, `value` itself first."""
    if isinstance(value, dict):
        children: list[tuple[object, object]] = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    else:
        return []
    found = [keys] if isinstance(value, dict) else []
    for key, child in children:
        found.extend(objects_in(child, (*keys, key)))
    return found


def json_path(keys: tuple[object, ...]) -> str:
    path = ""
    for key in keys:
        path = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
    return path


def test_every_object_refuses_an_unknown_key() -> None:
    data = minimal(
        ports=[PORT],
        volumes=[VOLUME],
        labels=["gpu"],
        work_dir="/work",
        resources={"memory": {"min": None, "max": None}, "cores": {"min": 1, "max": 1}, "shm": 0},
    )
    places = objects_in(data)
    assert len(places) == 7  # top, service, resources, memory, cores, port, volume
    for keys in places:
        path = json_path((*keys, "colour"))
        assert errors(changed(data, (*keys, "colour"), "red")) == [(path, "unknown key")], path


def test_cores_of_the_floor_are_a_cpu_limit_the_engine_takes() -> None:
    data = minimal(
        resources={"memory": {"min": 6 * MIB, "max": 6 * MIB}, "cores": {"min": 0.01, "max": 0.01}}
    )
    main = load_description(data).description.services[0]
    assert main.resources.memory == MemoryRange(min=6291456, max=6291456)
    assert main.resources.cores == CoresRange(min=0.01, max=0.01)
    # the executor gives Docker NanoCpus = int(cores x 1e9); Docker refuses below 1e7
    assert int(main.resources.cores.min * 1e9) == 10_000_000  # type: ignore[operator]


def test_a_nul_character_anywhere_is_refused_with_its_path() -> None:
    import copy

    from common.errors import InvalidZApp
    from common.zapp import load_description

    good = {
        "name": "nul-test",
        "version": 3,
        "will_end": True,
        "size": 1,
        "services": [
            {
                "name": "job",
                "image": "zoe/busybox:1",
                "monitor": True,
                "essential_count": 1,
                "total_count": 1,
                "startup_order": 0,
                "command": "echo hi",
                "environment": [["A", "1"]],
                "ports": [],
                "volumes": [],
                "resources": {
                    "cores": {"min": 0.1, "max": 0.1},
                    "memory": {"min": 16 << 20, "max": 16 << 20},
                },
            }
        ],
    }
    load_description(good)
    bad = copy.deepcopy(good)
    bad["services"][0]["command"] = "echo \x00hi"
    bad["services"][0]["environment"] = [["A", "1\x00"]]
    with pytest.raises(InvalidZApp) as caught:
        load_description(bad)
    paths = {e.path for e in caught.value.errors if "NUL" in e.message}
    assert paths == {"services[0].command", "services[0].environment[0][1]"}

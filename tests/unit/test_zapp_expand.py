"""Expansion of descriptions into instances (golden files) and endpoint URLs.

Golden files are `golden/expand_*.json`: the input description (inline, or the name of a
file beside them), the execution, then the expected warnings and instances. Run with
ZOE_UPDATE_GOLDEN=1 to rewrite the expectations after an intended change, and review
the diff.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import msgspec
import pytest

from common.errors import InvalidZApp
from common.zapp import (
    DEFAULT_CORES,
    DEFAULT_MEMORY,
    CoresRange,
    Description,
    MemoryRange,
    PortSpec,
    Resources,
    Service,
    expand,
    load_description,
    url_for,
)

GOLDEN = pathlib.Path(__file__).parent / "golden"
CASES = sorted(GOLDEN.glob("expand_*.json"))
UPDATE = os.environ.get("ZOE_UPDATE_GOLDEN") == "1"


def write_golden(path: pathlib.Path, case: dict[str, Any]) -> None:
    path.write_text(json.dumps(case, indent=2, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_expansion(path: pathlib.Path) -> None:
    case = json.loads(path.read_text())
    source = case["description"]
    if isinstance(source, str):
        source = json.loads((GOLDEN / source).read_text())
    loaded = load_description(source)
    specs = expand(loaded.description, **case["execution"])
    actual = msgspec.to_builtins(specs)
    if UPDATE:
        write_golden(path, {**case, "warnings": loaded.warnings, "instances": actual})
        return
    assert loaded.warnings == case["warnings"]
    assert actual == case["instances"]


def test_there_are_golden_cases() -> None:
    assert {p.stem for p in CASES} >= {"expand_spark", "expand_defaults"}


def spark() -> Description:
    return load_description(json.loads((GOLDEN / "spark.json").read_text())).description


def test_spark_instances_in_service_order_then_index() -> None:
    specs = expand(spark(), execution_id=1, execution_name="e", user_name="u", deployment="d")
    assert [(s.name, s.essential) for s in specs] == [
        ("spark-master0", True),
        ("spark-worker0", True),
        ("spark-worker1", False),
        ("spark-worker2", False),
        ("spark-worker3", False),
        ("jupyter0", True),
    ]
    jupyter = specs[-1]
    assert jupyter.environment == {
        "SPARK_MASTER": "spark://spark-master0:7077",
        "EXECUTION_ID": "1",
        "DEPLOY_NAME": "d",
        "ZOE_USER": "u",
        "ZOE_WORKSPACE": "/mnt/workspace",
        "SERVICE_NAME": "jupyter0",
    }
    assert (jupyter.cores_reserved, jupyter.cores_limit) == (1.0, 2.0)
    assert (jupyter.memory_reserved, jupyter.memory_limit) == (2147483648, 4294967296)


def service(**changes: Any) -> Service:
    fields: dict[str, Any] = {
        "name": "one",
        "image": "zoe/one:1",
        "monitor": True,
        "essential_count": 1,
        "total_count": 1,
        "startup_order": 0,
        "resources": Resources(
            memory=MemoryRange(min=None, max=None), cores=CoresRange(min=None, max=None)
        ),
        "ports": [],
        "environment": [],
        "volumes": [],
        "command": None,
    }
    fields.update(changes)
    return Service(**fields)


def description(*services: Service) -> Description:
    return Description(name="app", version=3, will_end=True, size=0, services=list(services))


@pytest.mark.parametrize(
    ("memory", "cores", "expected"),
    [
        (
            (None, None),
            (None, None),
            (DEFAULT_MEMORY, DEFAULT_MEMORY, DEFAULT_CORES, DEFAULT_CORES),
        ),
        ((2048, None), (0.5, None), (2048, 2048, 0.5, 0.5)),
        ((2048, 4096), (0.5, 4.0), (2048, 4096, 0.5, 4.0)),
        ((None, 4096), (None, 0.05), (4096, 4096, 0.05, 0.05)),
        ((None, 2**30), (None, 8.0), (DEFAULT_MEMORY, 2**30, DEFAULT_CORES, 8.0)),
    ],
)
def test_resource_defaults(
    memory: tuple[int | None, int | None],
    cores: tuple[float | None, float | None],
    expected: tuple[int, int, float, float],
) -> None:
    resources = Resources(
        memory=MemoryRange(min=memory[0], max=memory[1]),
        cores=CoresRange(min=cores[0], max=cores[1]),
    )
    [spec] = expand(
        description(service(resources=resources)),
        execution_id=1,
        execution_name="e",
        user_name="u",
        deployment="d",
    )
    assert (spec.memory_reserved, spec.memory_limit, spec.cores_reserved, spec.cores_limit) == (
        expected
    )


def test_default_memory_is_256_mib() -> None:
    assert DEFAULT_MEMORY == 256 * 1024 * 1024
    assert DEFAULT_CORES == 0.1


def test_injected_variables_win() -> None:
    broken = description(service(environment=[("SERVICE_NAME", "mine"), ("A", "{dns_name#self}")]))
    [spec] = expand(broken, execution_id=3, execution_name="e", user_name="u", deployment="d")
    assert spec.environment["SERVICE_NAME"] == "one0"
    assert spec.environment["A"] == "one0"


def test_substituted_values_are_not_read_again() -> None:
    d = description(service(command="echo {execution_name}"))
    [spec] = expand(d, execution_id=3, execution_name="{user_name}", user_name="u", deployment="x")
    assert spec.command == "echo '{user_name}'"  # quoted for the shell, not filled again


def test_a_description_that_would_not_validate_is_refused() -> None:
    broken = description(service(environment=[("A", "{nobody}")], command="x"))
    with pytest.raises(InvalidZApp) as info:
        expand(broken, execution_id=1, execution_name="e", user_name="u", deployment="d")
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("services[0].environment[0][1]", "unknown template variable {nobody}")
    ]
    with pytest.raises(InvalidZApp) as info:
        expand(
            description(service(command="a } b")),
            execution_id=1,
            execution_name="e",
            user_name="u",
            deployment="d",
        )
    assert [e.path for e in info.value.errors] == ["services[0].command"]


def port(template: str) -> PortSpec:
    return PortSpec(name="web", port_number=80, protocol="tcp", url_template=template, proxy=False)


@pytest.mark.parametrize(
    ("template", "host", "proxy_path", "expected"),
    [
        ("http://{ip_port}/", "10.0.0.5", "", "http://10.0.0.5:31000/"),
        ("http://{ip_port}{proxy_path}", "zoe.example", "/zoe/u/1/jupyter0", "http://zoe.example:31000/zoe/u/1/jupyter0"),
        ("http://{ip_port}/", "fd00::1", "", "http://[fd00::1]:31000/"),
        ("http://{ip_port}/", "[fd00::1]", "", "http://[fd00::1]:31000/"),
        ("{{literal}} {ip_port}", "h", "", "{literal} h:31000"),
        ("", "h", "", ""),
        ("http://{ip_port}/{unknown}", "h", "", "http://h:31000/{unknown}"),
        ("http://{ip_port}/{", "h", "", "http://h:31000/{"),
    ],
)  # fmt: skip
def test_url_for(template: str, host: str, proxy_path: str, expected: str) -> None:
    assert url_for(port(template), host, 31000, proxy_path) == expected


def largest(environment_size: int) -> Description:
    """10,000 instances, the most a ZApp may have, each with `environment_size` variables."""
    services = [
        service(
            name=f"svc{letter}",
            monitor=letter == "a",
            total_count=1000,
            environment=[
                (f"V{i}", "{dns_name#svca0} {dns_name#self} {user_name}")
                for i in range(environment_size)
            ],
            command="run --as {dns_name#self}",
        )
        for letter in "abcdefghij"
    ]
    return description(*services)


def test_the_largest_zapp_expands() -> None:
    specs = expand(largest(4), execution_id=9, execution_name="e", user_name="u", deployment="d")
    assert len(specs) == 10_000
    last = specs[-1]
    assert last.name == "svcj999"
    assert last.command == "run --as svcj999"
    assert last.environment["V3"] == "svca0 svcj999 u"
    assert 5_000_000 < sum(len(msgspec.json.encode(spec)) for spec in specs) < 8 * 1024 * 1024


def test_a_zapp_too_large_once_expanded_is_refused_before_it_is_built() -> None:
    with pytest.raises(InvalidZApp) as info:
        expand(largest(20), execution_id=9, execution_name="e", user_name="u", deployment="d")
    assert [(e.path, e.message) for e in info.value.errors] == [
        (
            "services",
            "expanded, the 10000 instances take up to 9239000 bytes;"
            " at most 8388608 (8 MiB) are allowed",
        )
    ]


def test_instance_specs_encode_to_json() -> None:
    specs = expand(spark(), execution_id=1, execution_name="e", user_name="u", deployment="d")
    decoded = msgspec.json.decode(msgspec.json.encode(specs), type=list[type(specs[0])])
    assert decoded == specs

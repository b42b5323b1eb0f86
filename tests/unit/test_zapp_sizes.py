"""The expanded size of a description: counted exactly, refused past its limits.

Sizes are compared with the real thing: the JSON encoding of the specs `expand` makes.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import msgspec
import pytest

from common.errors import InvalidZApp
from common.zapp import InstanceSpec, expand, load_description, shell, sizes, specs, templates
from common.zapp.limits import (
    MAX_DEPLOYMENT,
    MAX_EXECUTION_NAME,
    MAX_EXPANDED_BYTES,
    MAX_INSTANCE_BYTES,
    MAX_USER_NAME,
)
from common.zapp.model import Description
from tests.unit.test_zapp_validate import errors, minimal

GOLDEN = pathlib.Path(__file__).parent / "golden"
LIBRARY = pathlib.Path(__file__).parents[2] / "zapps"
NAMES = {"execution_id": 42, "execution_name": "run", "user_name": "admin", "deployment": "zoe"}
LONGEST_NAMES = msgspec.structs.asdict(sizes.LONGEST)


def real_spec(
    description: Description, position: int, index: int, names: dict[str, Any]
) -> InstanceSpec:
    """The spec of one instance, its templates filled by plain substitution (in a command,
    each value quoted for its place): the oracle the count is compared with
    (`test_the_oracle_is_what_expand_makes` checks it)."""
    service = description.services[position]
    instance = f"{service.name}{index}"
    execution = specs.Names(**names)
    values = {**specs.template_values(description, execution), specs.SELF: instance}
    environment = {v: templates.substitute(t, values) for v, t in service.environment}
    environment.update(specs.injected(execution, instance))
    command = None
    if service.command is not None:
        pieces = templates.parts(service.command)
        places = iter(shell.contexts(pieces))
        command = "".join(
            shell.quote(values[piece], next(places)) if is_variable else piece
            for is_variable, piece in pieces
        )
    return specs.instance_spec(
        service, index, command=command, environment=environment, user_name=execution.user_name
    )


def largest_spec(data: dict[str, Any], names: dict[str, Any]) -> int:
    """Bytes of the spec of the last instance of the one-service `data` (taken as it is,
    without validation, so past the limits too)."""
    description = msgspec.convert(data, Description)
    count = description.services[0].total_count
    return len(msgspec.json.encode(real_spec(description, 0, count - 1, names)))


def with_instance_bytes(target: int, total_count: int = 1) -> dict[str, Any]:
    """A description whose largest instance takes exactly `target` bytes, names at their
    longest, padded by its environment: `PAD` values of 60,000 characters and then `LAST`."""
    data = minimal(total_count=total_count, environment=[["LAST", ""]])
    missing = target - largest_spec(data, LONGEST_NAMES)
    pad = [[f"PAD{i}", "x" * 60_000] for i in range(missing // 61_000)]
    data["services"][0]["environment"] = [*pad, ["LAST", ""]]
    last(data, "x" * (target - largest_spec(data, LONGEST_NAMES)))
    assert largest_spec(data, LONGEST_NAMES) == target
    return data


def last(data: dict[str, Any], value: str | None = None) -> str:
    """The value of `LAST` in `data`, replaced by `value` if given."""
    pair = data["services"][0]["environment"][-1]
    if value is not None:
        pair[1] = value
    return str(pair[1])


# The report: one large request expanded to 1.2 GiB in one insert -----------------------------


def hostile() -> dict[str, Any]:
    """1,024 instances of 100 ports and 100 volumes with 4 KB strings: about 1.2 MB."""
    text = "p" * 4000
    ports = [
        {"name": f"{i:03}{text}", "port_number": 1000 + i, "protocol": "tcp", "url_template": text}
        for i in range(100)
    ]
    volumes = [
        {"name": f"vol{i}", "path": f"/{i:03}{text}", "read_only": False} for i in range(100)
    ]
    return minimal(total_count=1024, ports=ports, volumes=volumes)


def test_the_reported_request_is_refused_before_expansion() -> None:
    data = hostile()
    assert len(json.dumps(data)) > 1_200_000
    largest = largest_spec(data, LONGEST_NAMES)
    assert largest > 1_200_000
    assert errors(data) == [
        (
            "services[0]",
            f"expanded, one instance takes up to {largest} bytes;"
            " at most 262144 (256 KiB) are allowed",
        ),
        (
            "services",
            f"expanded, the 1024 instances take up to {largest * 1024} bytes;"
            " at most 8388608 (8 MiB) are allowed",
        ),
    ]


def test_expand_refuses_it_too_without_building_it() -> None:
    description = msgspec.convert(hostile(), Description)
    with pytest.raises(InvalidZApp) as info:
        expand(description, **NAMES)
    assert [e.path for e in info.value.errors] == ["services[0]", "services"]


def test_the_limits_are_those_documented() -> None:
    assert MAX_INSTANCE_BYTES == 256 * 1024
    assert MAX_EXPANDED_BYTES == 8 * 1024 * 1024
    assert (MAX_EXECUTION_NAME, MAX_USER_NAME, MAX_DEPLOYMENT) == (128, 64, 64)
    longest = sizes.LONGEST.execution_name
    assert len(longest) == MAX_EXECUTION_NAME
    assert len(msgspec.json.encode(longest)) == 4 * MAX_EXECUTION_NAME + 2


# Exact boundaries -------------------------------------------------------------------------------


def test_one_instance_of_exactly_the_limit_is_accepted_one_byte_more_refused() -> None:
    data = with_instance_bytes(MAX_INSTANCE_BYTES)
    load_description(data)
    last(data, last(data) + "x")
    assert errors(data) == [
        (
            "services[0]",
            "expanded, one instance takes up to 262145 bytes; at most 262144 (256 KiB) are allowed",
        )
    ]


def test_all_instances_of_exactly_the_limit_are_accepted_one_byte_more_refused() -> None:
    # 1024 instances of 8 KiB, the largest (main1023) counted for each
    data = with_instance_bytes(MAX_EXPANDED_BYTES // 1024, total_count=1024)
    load_description(data)
    last(data, last(data) + "x")
    assert errors(data) == [
        (
            "services",
            "expanded, the 1024 instances take up to 8389632 bytes;"
            " at most 8388608 (8 MiB) are allowed",
        )
    ]


def test_the_total_adds_up_every_service() -> None:
    data = with_instance_bytes(MAX_EXPANDED_BYTES // 2048, total_count=1024)
    load_description(data)
    other = {**copy.deepcopy(data["services"][0]), "name": "next", "monitor": False}
    data["services"].append(other)
    [(path, message)] = errors(data)
    assert path == "services"
    assert message.startswith("expanded, the 2048 instances take up to ")


def test_templates_count_at_their_expanded_size() -> None:
    # 4096 x {execution_name}: 16 characters written, 512 bytes each once filled
    command = "{execution_name}" * 4096
    assert len(command) == 65536
    largest = largest_spec(minimal(command=command), LONGEST_NAMES)
    assert largest > 4096 * 512
    assert errors(minimal(command=command)) == [
        (
            "services[0]",
            f"expanded, one instance takes up to {largest} bytes;"
            " at most 262144 (256 KiB) are allowed",
        )
    ]


def test_characters_json_escapes_count_at_their_escaped_size() -> None:
    # a control character takes 6 bytes in JSON
    data = with_instance_bytes(MAX_INSTANCE_BYTES)
    value = last(data)
    last(data, "\x01" + value[6:])
    load_description(data)
    last(data, "\x01" + value[5:])
    assert errors(data) == [
        (
            "services[0]",
            "expanded, one instance takes up to 262145 bytes; at most 262144 (256 KiB) are allowed",
        )
    ]


def test_the_size_is_checked_once_every_other_rule_holds() -> None:
    data = hostile()
    data["services"][0]["monitor"] = "yes"
    assert errors(data) == [("services[0].monitor", "must be a boolean")]


# expand checks the real names -------------------------------------------------------------------


def test_expand_refuses_names_longer_than_the_validator_allows() -> None:
    data = with_instance_bytes(MAX_INSTANCE_BYTES)
    description = load_description(data).description
    expand(description, **NAMES)
    names = {**NAMES, "user_name": "u" * 300_000}
    with pytest.raises(InvalidZApp) as info:
        expand(description, **names)
    [error] = info.value.errors
    largest = largest_spec(data, names)
    assert (error.path, error.message) == (
        "services[0]",
        f"expanded, one instance takes up to {largest} bytes; at most 262144 (256 KiB) are allowed",
    )


def library() -> list[Description]:
    files = [GOLDEN / "spark.json", *sorted(LIBRARY.glob("*/*.json"))]
    loaded = [json.loads(f.read_text()) for f in files if f.name != "manifest.json"]
    return [load_description(data).description for data in loaded]


def test_the_oracle_is_what_expand_makes() -> None:
    descriptions = library()
    assert len(descriptions) >= 8
    for description in descriptions:
        for names in (NAMES, LONGEST_NAMES):
            expanded = expand(description, **names)
            i = 0
            for position, service in enumerate(description.services):
                for index in range(service.total_count):
                    assert expanded[i] == real_spec(description, position, index, names)
                    i += 1


def test_the_count_is_exact_for_the_spark_example_and_the_library() -> None:
    for description in library():
        for names in (NAMES, LONGEST_NAMES):
            execution = specs.Names(**names)
            values = specs.template_values(description, execution)
            expanded = expand(description, **names)
            for service in description.services:
                real = max(
                    len(msgspec.json.encode(spec))
                    for spec in expanded
                    if spec.service == service.name
                )
                assert sizes.instance_bytes(service, values, execution) == real
            assert sum(len(msgspec.json.encode(spec)) for spec in expanded) < 64 * 1024

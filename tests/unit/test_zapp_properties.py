"""Property tests: whatever is thrown at the validators, only `InvalidZApp` comes out."""

from __future__ import annotations

import copy
import json
import pathlib
import shutil
import string
import tempfile
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidZApp
from common.zapp import expand, load_description, load_shop, render, sizes, specs, url_for
from common.zapp.checks import Collector
from common.zapp.expand import PortSpec
from common.zapp.limits import MAX_DEPLOYMENT, MAX_EXECUTION_NAME, MAX_USER_NAME, MIN_MEMORY
from common.zapp.manifest import parse_manifest
from common.zapp.templates import escape, substitute

GOLDEN = pathlib.Path(__file__).parent / "golden"
SPARK: dict[str, Any] = json.loads((GOLDEN / "spark.json").read_text())
SHOP_SPARK = GOLDEN / "shop" / "spark"
MANIFEST: dict[str, Any] = json.loads((SHOP_SPARK / "manifest.json").read_text())
WHOLE_DOCUMENT = {
    "the description must be a JSON object",
    "the manifest must be a JSON object",
}
SUMMARY_PREFIX = "too many errors"

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = [
    "name", "version", "will_end", "size", "services", "image", "monitor", "essential_count",
    "total_count", "startup_order", "resources", "memory", "cores", "min", "max", "shm",
    "shm_size", "ports", "port_number", "protocol", "url_template", "proxy", "environment",
    "volumes", "path", "read_only", "command", "work_dir", "labels", "replicas", "network",
    "zapps", "category", "description", "readable_descr", "logo", "parameters", "kind",
    "type", "default", "step", "enabled_for", "disabled_for",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["{dns_name#self}", "{x}", "{", "}}", "tcp", "int", "/data", "\x00"])
)
keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(-(2**70), 2**70)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def assert_well_formed(error: InvalidZApp) -> None:
    assert error.errors, "an InvalidZApp must say what is wrong"
    for e in error.errors:
        assert isinstance(e.path, str)
        assert isinstance(e.message, str)
        assert e.message
        if not e.path:
            assert e.message in WHOLE_DOCUMENT or e.message.startswith(SUMMARY_PREFIX), e


def assert_round_trips(data: object) -> None:
    loaded = load_description(data)
    encoded = msgspec.json.encode(loaded.description)
    again = load_description(json.loads(encoded))
    assert again.description == loaded.description
    assert again.warnings == []


def check_description(data: object) -> bool:
    """Load `data`; True when valid (and then it round-trips)."""
    try:
        assert_round_trips(data)
    except InvalidZApp as exc:
        assert_well_formed(exc)
        return False
    return True


# Valid descriptions -------------------------------------------------------------------------

LOWER = string.ascii_lowercase
plain_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="{}\x00"), max_size=8)
# Text of a shell command around template variables: none of the shell's quoting,
# substitution or comment characters, after which a value cannot be quoted safely (the
# validator refuses those; tests/unit/test_zapp_shell.py covers them).
shell_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="{}\x00#$`\\'\"<()"), max_size=8
)
images = st.sampled_from(
    ["zoe/app:1", "ubuntu", "zapps/a/b:2.0", "zoe/x@sha256:" + "0" * 64, "busybox"]
)


@st.composite
def valid_descriptions(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(
        st.lists(
            st.text(alphabet=LOWER, min_size=3, max_size=12),
            min_size=1,
            max_size=4,
            unique_by=str.lower,
        )
    )
    counts = [draw(st.integers(1, 5)) for _ in names]
    instances = [f"{n}{i}" for n, count in zip(names, counts, strict=True) for i in range(count)]
    piece = plain_text | st.sampled_from(
        [
            "{user_name}",
            "{execution_id}",
            "{execution_name}",
            "{deployment_name}",
            "{dns_name#self}",
            "{{",
            "}}",
            *(f"{{dns_name#{i}}}" for i in instances),
        ]
    )
    template = st.lists(piece, max_size=4).map("".join)
    variables = st.sampled_from(
        [
            "{user_name}",
            "{execution_id}",
            "{execution_name}",
            "{deployment_name}",
            "{dns_name#self}",
            *(f"{{dns_name#{i}}}" for i in instances),
        ]
    )
    command = st.lists(shell_text | variables, max_size=4).map("".join)
    monitors = [draw(st.booleans()) for _ in names]
    monitors[draw(st.integers(0, len(names) - 1))] = True
    services = [
        draw(service(name, count, monitor, template, command))
        for name, count, monitor in zip(names, counts, monitors, strict=True)
    ]
    data: dict[str, Any] = {
        "name": draw(
            st.text(alphabet=string.ascii_letters + string.digits + "-@", min_size=3, max_size=20)
        ),
        "size": draw(st.integers(0, 2**31 - 1)),
        "services": services,
    }
    if draw(st.booleans()):
        data["version"] = 3
    if draw(st.booleans()):
        data["will_end"] = draw(st.booleans())
    return data


@st.composite
def service(
    draw: st.DrawFn,
    name: str,
    count: int,
    monitor: bool,
    template: st.SearchStrategy[str],
    command: st.SearchStrategy[str],
) -> dict[str, Any]:
    memory_min = draw(st.none() | st.integers(MIN_MEMORY, 2**40))
    memory_max = draw(st.none() | st.integers(memory_min or MIN_MEMORY, 2**46))
    cores_min = draw(st.none() | st.floats(0.01, 64))
    cores_max = draw(st.none() | st.floats(cores_min or 0.01, 1024))
    numbers = draw(st.lists(st.integers(1, 65535), unique=True, max_size=3))
    url = st.lists(plain_text | st.sampled_from(["{ip_port}", "{proxy_path}"]), max_size=3)
    variables = draw(
        st.lists(
            st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10).filter(
                lambda v: not v.startswith(("ZOE_", "EXECUTION_ID", "DEPLOY_", "SERVICE_NAME"))
            ),
            unique=True,
            max_size=4,
        )
    )
    mounts = draw(
        st.lists(
            st.text(alphabet=LOWER, min_size=1, max_size=8).map(lambda t: "/" + t),
            unique=True,
            max_size=2,
        )
    )
    data: dict[str, Any] = {
        "name": name,
        "image": draw(images),
        "monitor": monitor,
        "essential_count": draw(st.integers(1, count)),
        "total_count": count,
        "startup_order": draw(st.integers(-5, 5)),
        "resources": {
            "memory": {"min": memory_min, "max": memory_max},
            "cores": {"min": cores_min, "max": cores_max},
        },
        "ports": [
            {
                "name": draw(st.text(min_size=3, max_size=10).filter(lambda t: "\x00" not in t)),
                "port_number": number,
                "protocol": draw(st.sampled_from(["tcp", "udp"])),
                "url_template": "".join(draw(url)),
                **({"proxy": draw(st.booleans())} if draw(st.booleans()) else {}),
            }
            for number in numbers
        ],
        "environment": [[variable, draw(template)] for variable in variables],
        "volumes": [
            {"name": f"vol{i}", "path": mount, "read_only": draw(st.booleans())}
            for i, mount in enumerate(mounts)
        ],
        "command": draw(st.none() | command.filter(bool)),
    }
    if draw(st.booleans()):
        data["work_dir"] = draw(st.sampled_from(["/", "/work", "/home/zoe"]))
    if draw(st.booleans()):
        data["labels"] = draw(
            st.lists(st.text(alphabet=LOWER, min_size=1, max_size=6), unique=True)
        )
    if draw(st.booleans()):
        data["replicas"] = 1
    return data


# Mutations ----------------------------------------------------------------------------------


def paths_in(value: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found.extend(paths_in(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.extend(paths_in(child, (*prefix, index)))
    return found


@st.composite
def mutated(draw: st.DrawFn, original: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_in(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if action == "replace":
            parent[last] = draw(json_values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(json_values)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return data


# Every place, every kind of wrong value --------------------------------------------------------

ODD_VALUES: list[object] = [
    None, True, False, 0, -1, 1.5, 2**70, float("nan"), float("inf"), "", "x", "\x00", "{",
    [], [None], {}, {"x": 1},
]  # fmt: skip


def replaced(original: dict[str, Any], path: tuple[object, ...], value: object) -> Any:
    data = copy.deepcopy(original)
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return data


def deleted(original: dict[str, Any], path: tuple[object, ...]) -> Any:
    data = copy.deepcopy(original)
    parent: Any = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return data


def test_every_value_of_the_spark_example_replaced_or_deleted() -> None:
    for path in paths_in(SPARK):
        check_description(deleted(SPARK, path))
        for value in ODD_VALUES:
            check_description(replaced(SPARK, path, value))


def test_every_value_of_the_manifest_replaced_or_deleted() -> None:
    for path in paths_in(MANIFEST):
        for data in [deleted(MANIFEST, path), *(replaced(MANIFEST, path, v) for v in ODD_VALUES)]:
            c = Collector()
            parse_manifest(c, data)
            for e in c.all_errors():
                assert e.path, e


# Properties of descriptions -----------------------------------------------------------------


@FAST
@given(json_values)
def test_random_json_gives_only_invalid_zapp(value: object) -> None:
    assert not check_description(value) or isinstance(value, dict)


@FAST
@given(st.dictionaries(keys, json_values, max_size=6))
def test_random_objects_give_only_invalid_zapp(value: dict[str, object]) -> None:
    check_description(value)


@MEDIUM
@given(valid_descriptions())
def test_valid_descriptions_load_round_trip_and_expand(data: dict[str, Any]) -> None:
    assert check_description(data)
    description = load_description(data).description
    specs = expand(
        description, execution_id=7, execution_name="run {x}", user_name="u", deployment="d"
    )
    assert len(specs) == description.instance_count()
    assert len({spec.name for spec in specs}) == len(specs)
    for service in description.services:
        mine = [spec for spec in specs if spec.service == service.name]
        assert [spec.index for spec in mine] == list(range(service.total_count))
        assert sum(spec.essential for spec in mine) == service.essential_count
    for spec in specs:
        assert spec.memory_reserved <= spec.memory_limit
        assert 0 < spec.cores_reserved <= spec.cores_limit
        assert spec.environment["SERVICE_NAME"] == spec.name
        for port in spec.ports:
            url_for(port, "10.0.0.1", 30000, "/proxy")


execution_names = st.text(
    alphabet=st.characters(codec="utf-8").filter(str.isprintable), max_size=MAX_EXECUTION_NAME
)
docker_names = st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1)
allowed_names = st.builds(
    specs.Names,
    execution_id=st.integers(0, 2**63 - 1),
    execution_name=execution_names,
    user_name=docker_names.filter(lambda t: len(t) <= MAX_USER_NAME),
    deployment=docker_names.filter(lambda t: len(t) <= MAX_DEPLOYMENT),
)
any_names = st.builds(
    specs.Names,
    execution_id=st.integers(-(2**63), 2**63 - 1),
    execution_name=st.text(st.characters(codec="utf-8"), max_size=300),
    user_name=st.text(st.characters(codec="utf-8"), max_size=300),
    deployment=st.text(st.characters(codec="utf-8"), max_size=300),
)


@MEDIUM
@given(valid_descriptions(), allowed_names, any_names)
def test_the_size_count_is_exact_and_never_below_the_encoded_size(
    data: dict[str, Any], allowed: specs.Names, names: specs.Names
) -> None:
    description = load_description(data).description
    longest = specs.template_values(description, sizes.LONGEST)
    for execution in (allowed, names):
        values = specs.template_values(description, execution)
        expanded = expand(description, **msgspec.structs.asdict(execution))
        for service in description.services:
            encoded = [
                len(msgspec.json.encode(spec)) for spec in expanded if spec.service == service.name
            ]
            # exact for the real names: the size of the largest spec, the last one
            counted = sizes.instance_bytes(service, values, execution)
            assert counted == max(encoded) == encoded[-1]
            if execution is allowed:
                # what the validator counted holds for any allowed names
                assert sizes.instance_bytes(service, longest, sizes.LONGEST) >= counted


@FAST
@given(st.data())
def test_mutated_spark_example_gives_only_invalid_zapp(data: st.DataObject) -> None:
    check_description(data.draw(mutated(SPARK)))


@MEDIUM
@given(st.data())
def test_mutated_valid_descriptions_give_only_invalid_zapp(data: st.DataObject) -> None:
    original = data.draw(valid_descriptions())
    check_description(data.draw(mutated(original)))


# Properties of the shop ---------------------------------------------------------------------


@FAST
@given(json_values)
def test_random_manifests_give_only_errors(value: object) -> None:
    c = Collector()
    zapps = parse_manifest(c, value)
    assert zapps is not None or c.errors
    for e in c.all_errors():
        assert e.path or e.message in WHOLE_DOCUMENT or e.message.startswith(SUMMARY_PREFIX)


@SLOW
@given(st.data())
def test_mutated_manifests_give_only_invalid_zapp(data: st.DataObject) -> None:
    manifest = data.draw(mutated(MANIFEST))
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "spark"
        shutil.copytree(SHOP_SPARK, folder)
        (folder / "manifest.json").write_bytes(msgspec.json.encode(manifest))
        try:
            entries = load_shop(pathlib.Path(tmp))
        except InvalidZApp as exc:
            assert_well_formed(exc)
            for e in exc.errors:
                assert e.path.startswith("spark/"), e
        else:
            assert len(entries) == len(manifest["zapps"])


param_values = (
    st.text(max_size=12)
    | st.integers()
    | st.from_regex(r"\s*[+-]?[0-9]{1,22}\s*", fullmatch=True)
    | json_values
)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["spark-worker", "SPARK_WORKER_RAM", "jupyter"]) | st.text(max_size=5),
        param_values,
        max_size=3,
    ),
    st.none() | json_values,
)
def test_random_parameters_give_only_invalid_zapp(
    params: dict[str, object], resources: object
) -> None:
    [entry] = [e for e in load_shop_cached() if e.id == "spark"]
    try:
        loaded = render(entry, params, resources=resources, can_customize_resources=True)  # type: ignore[arg-type]
    except InvalidZApp as exc:
        assert_well_formed(exc)
    else:
        assert_round_trips(msgspec.to_builtins(loaded.description))


_SHOP: list[Any] = []


def load_shop_cached() -> list[Any]:
    if not _SHOP:
        _SHOP.extend(load_shop(GOLDEN / "shop"))
    return _SHOP


# Templates ----------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=30))
def test_escaped_text_substitutes_to_itself(text: str) -> None:
    assert substitute(escape(text), {}) == text


@FAST
@given(st.text(max_size=30), st.text(max_size=10))
def test_url_for_never_fails(template: str, host: str) -> None:
    port = PortSpec(name="web", port_number=80, protocol="tcp", url_template=template, proxy=True)
    assert isinstance(url_for(port, host, 8080, "/p"), str)

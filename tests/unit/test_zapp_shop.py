"""The ZApp shop: manifests, the files they name, visibility and parameter rendering.

Golden files `golden/render_*.json` give an entry id, parameters and resources, and the
expected description and warnings, or the expected errors. The shop they use is
`golden/shop`. Run with ZOE_UPDATE_GOLDEN=1 to rewrite the expectations, then review.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from common.errors import InvalidZApp, NotFound
from common.zapp import ShopEntry, load_description, load_shop, render, visible_to

GOLDEN = pathlib.Path(__file__).parent / "golden"
REPOSITORY_ZAPPS = pathlib.Path(__file__).parents[2] / "zapps"
RENDER_CASES = sorted(GOLDEN.glob("render_*.json"))
UPDATE = os.environ.get("ZOE_UPDATE_GOLDEN") == "1"
M = "spark/manifest.json"
INT_RULE = "must be an integer between -9223372036854775807 and 9223372036854775807"
FILE_RULE = "must be a relative file name inside the ZApp folder"
DELETE = object()


@pytest.fixture
def shop(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable copy of the golden shop."""
    root = tmp_path / "shop"
    shutil.copytree(GOLDEN / "shop", root)
    return root


@pytest.fixture(scope="module")
def entries() -> dict[str, ShopEntry]:
    return {entry.id: entry for entry in load_shop(GOLDEN / "shop")}


def shop_errors(root: pathlib.Path) -> list[tuple[str, str]]:
    with pytest.raises(InvalidZApp) as info:
        load_shop(root)
    assert info.value.message == "invalid ZApp shop"
    return [(e.path, e.message) for e in info.value.errors]


def edit_json(path: pathlib.Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# Loading ------------------------------------------------------------------------------------


def test_the_golden_shop_loads(entries: dict[str, ShopEntry]) -> None:
    assert list(entries) == ["multi/0", "multi/1", "spark"]
    spark = entries["spark"]
    assert (spark.category, spark.name) == ("Data science", "Distributed PySpark notebook")
    assert spark.description_file == "spark.json"
    assert spark.readable_descr.startswith("# Distributed PySpark notebook")
    assert spark.logo == (GOLDEN / "shop" / "spark" / "logo.png").read_bytes()
    assert spark.folder == str(GOLDEN / "shop" / "spark")
    assert (spark.enabled_for, spark.disabled_for) == (None, ["guest"])
    assert [(p.kind, p.name, p.type) for p in spark.parameters] == [
        ("service_count", "spark-worker", "int"),
        ("environment", "SPARK_WORKER_RAM", "int"),
        ("command", "jupyter", "string"),
    ]
    worker = spark.parameters[0]
    assert (worker.default, worker.min, worker.max, worker.step) == (4, 1, 16, 1)
    assert spark.description.name == "spark-jupyter"
    assert spark.warnings == []


def test_a_manifest_with_several_zapps_numbers_them(entries: dict[str, ShopEntry]) -> None:
    sleep, echo = entries["multi/0"], entries["multi/1"]
    assert (sleep.name, echo.name) == ("Sleep", "Echo")
    assert (sleep.logo, sleep.readable_descr) == (None, "")
    assert echo.readable_descr == "Prints a text.\n"
    assert sleep.enabled_for == ["admin", "user"]
    assert echo.parameters[0].readable_name == "Text to print"
    assert sleep.parameters[0].readable_name == "SECONDS"
    assert echo.warnings == [
        "version: missing, assumed 3",
        "services[0].image: no tag, using 'zoe/busybox:latest'",
        "will_end: missing, assumed true because a service has monitor: true",
    ]


def test_a_missing_library_is_an_empty_shop(tmp_path: pathlib.Path) -> None:
    assert load_shop(tmp_path / "nowhere") == []


def test_folders_without_manifest_and_hidden_folders_are_skipped(shop: pathlib.Path) -> None:
    (shop / "notes").mkdir()
    (shop / "notes" / "README.md").write_text("no manifest here")
    shutil.copytree(shop / "spark", shop / ".spark-backup")
    (shop / "README.md").write_text("a file, not a folder")
    assert [entry.id for entry in load_shop(shop)] == ["multi/0", "multi/1", "spark"]


def test_the_repository_zapps_load() -> None:
    if not REPOSITORY_ZAPPS.is_dir():
        pytest.skip("no zapps/ folder in this checkout")
    for entry in load_shop(REPOSITORY_ZAPPS):
        render(entry, {})


def test_an_entry_encodes_to_json_with_a_base64_logo(entries: dict[str, ShopEntry]) -> None:
    encoded = json.loads(msgspec.json.encode(entries["spark"]))
    assert base64.b64decode(encoded["logo"]) == entries["spark"].logo
    assert encoded["id"] == "spark"
    assert (
        msgspec.json.decode(msgspec.json.encode(entries["spark"]), type=ShopEntry)
        == (entries["spark"])
    )


Z = ("zapps", 0)
P = ("zapps", 0, "parameters")
MANIFEST_RULES: list[tuple[tuple[object, ...], object, list[tuple[str, str]]]] = [
    (("version",), 2, [(f"{M}: version", "must be 1")]),
    (("version",), 0, [(f"{M}: version", "must be 1")]),
    (("zapps",), [], [(f"{M}: zapps", "must be a non-empty array")]),
    (("zapps",), {}, [(f"{M}: zapps", "must be an array")]),
    (("extra",), 1, [(f"{M}: extra", "unknown key")]),
    ((*Z, "icon"), "x.png", [(f"{M}: zapps[0].icon", "unknown key")]),
    ((*Z, "category"), "", [(f"{M}: zapps[0].category", "must be a non-empty string of at most 128 characters")]),
    ((*Z, "description"), "../spark/spark.json", [(f"{M}: zapps[0].description", FILE_RULE)]),
    ((*Z, "description"), "/etc/passwd", [(f"{M}: zapps[0].description", FILE_RULE)]),
    ((*Z, "description"), "./spark.json", [(f"{M}: zapps[0].description", FILE_RULE)]),
    ((*Z, "description"), None, [(f"{M}: zapps[0].description", FILE_RULE)]),
    ((*Z, "logo"), "a\\b.png", [(f"{M}: zapps[0].logo", FILE_RULE)]),
    ((*Z, "enabled_for"), "admin", [(f"{M}: zapps[0].enabled_for", "must be an array of role names")]),
    ((*Z, "disabled_for"), [""], [(f"{M}: zapps[0].disabled_for[0]", "must be a non-empty string of at most 128 characters")]),
    ((*P,), {}, [(f"{M}: zapps[0].parameters", "must be an array")]),
    ((*P, 0, "kind"), "volume", [(f"{M}: zapps[0].parameters[0].kind", "must be 'environment', 'command' or 'service_count'")]),
    ((*P, 0, "type"), "float", [(f"{M}: zapps[0].parameters[0].type", "must be 'int' or 'string'")]),
    ((*P, 0, "type"), "string", [
        (f"{M}: zapps[0].parameters[0].type", "must be 'int' for a service_count parameter"),
        (f"{M}: zapps[0].parameters[0].min", "only allowed for type int"),
        (f"{M}: zapps[0].parameters[0].max", "only allowed for type int"),
        (f"{M}: zapps[0].parameters[0].step", "only allowed for type int"),
        (f"{M}: zapps[0].parameters[0].default", "must be a string"),
    ]),
    ((*P, 0, "default"), 17, [(f"{M}: zapps[0].parameters[0].default", "must be <= 16")]),
    ((*P, 0, "default"), 0, [(f"{M}: zapps[0].parameters[0].default", "must be >= 1")]),
    ((*P, 0, "default"), "4", [(f"{M}: zapps[0].parameters[0].default", INT_RULE)]),
    ((*P, 0, "default"), True, [(f"{M}: zapps[0].parameters[0].default", INT_RULE)]),
    ((*P, 0, "step"), 0, [(f"{M}: zapps[0].parameters[0].step", "must be an integer >= 1")]),
    ((*P, 0, "max"), 0, [(f"{M}: zapps[0].parameters[0].max", "must be >= min (1)")]),
    ((*P, 0, "colour"), "red", [(f"{M}: zapps[0].parameters[0].colour", "unknown key")]),
    ((*P, 1, "min"), "1", [(f"{M}: zapps[0].parameters[1].min", INT_RULE)]),
    ((*P, 1, "default"), 2147483649, [(f"{M}: zapps[0].parameters[1].default", "must be 536870912 plus a multiple of 536870912")]),
    ((*P, 2, "min"), 1, [(f"{M}: zapps[0].parameters[2].min", "only allowed for type int")]),
    ((*P, 2, "default"), 5, [(f"{M}: zapps[0].parameters[2].default", "must be a string")]),
    ((*P, 2, "name"), "spark-worker", [(f"{M}: zapps[0].parameters[2].name", "duplicate parameter name (also parameters[0])")]),
    ((*P, 2, "kind"), DELETE, [(f"{M}: zapps[0].parameters[2].kind", "is required")]),
    ((*P, 0, "name"), "nope", [(f"{M}: zapps[0].parameters[0].name", "spark.json has no service named 'nope'")]),
    ((*P, 1, "name"), "NOPE", [(f"{M}: zapps[0].parameters[1].name", "no service of spark.json defines the variable NOPE")]),
]  # fmt: skip


@pytest.mark.parametrize(("keys", "value", "expected"), MANIFEST_RULES)
def test_manifest_rules(
    shop: pathlib.Path, keys: tuple[object, ...], value: object, expected: list[tuple[str, str]]
) -> None:
    def change(data: Any) -> None:
        for key in keys[:-1]:
            data = data[key]
        if value is DELETE:
            del data[keys[-1]]
        else:
            data[keys[-1]] = value

    edit_json(shop / "spark" / "manifest.json", change)
    assert shop_errors(shop) == expected


def test_a_manifest_that_is_not_json(shop: pathlib.Path) -> None:
    (shop / "spark" / "manifest.json").write_text("{'version': 1}")
    [(path, message)] = shop_errors(shop)
    assert path == M
    assert message.startswith("is not valid JSON: ")


def test_missing_files(shop: pathlib.Path) -> None:
    (shop / "spark" / "README.md").unlink()
    (shop / "spark" / "logo.png").unlink()
    (shop / "multi" / "sleep.json").unlink()
    assert shop_errors(shop) == [
        ("multi/manifest.json: zapps[0].description", "cannot be read: no file sleep.json"),
        (f"{M}: zapps[0].readable_descr", "cannot be read: no file README.md"),
        (f"{M}: zapps[0].logo", "cannot be read: no file logo.png"),
    ]


def test_files_must_stay_inside_the_folder(shop: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (tmp_path / "secret.md").write_text("secret")
    (shop / "spark" / "README.md").unlink()
    (shop / "spark" / "README.md").symlink_to(tmp_path / "secret.md")
    assert shop_errors(shop) == [
        (f"{M}: zapps[0].readable_descr", "cannot be read: README.md is outside the ZApp folder")
    ]


def test_files_must_be_small_and_text(shop: pathlib.Path) -> None:
    (shop / "spark" / "README.md").write_bytes(b"\xff\xfe not utf-8")
    (shop / "multi" / "echo.md").write_bytes(b"x" * (4 * 1024 * 1024 + 1))
    errors = shop_errors(shop)
    assert errors[0] == (
        "multi/manifest.json: zapps[1].readable_descr",
        "cannot be read: echo.md is larger than 4194304 bytes",
    )
    assert errors[1][0] == f"{M}: zapps[0].readable_descr"
    assert errors[1][1].startswith("cannot be read: 'utf-8' codec can't decode")


def test_errors_of_a_description_file_carry_its_name(shop: pathlib.Path) -> None:
    def change(data: Any) -> None:
        data["services"][1]["resources"]["memory"]["min"] = 5
        data["services"][0]["ports"][0]["protocol"] = "http"

    edit_json(shop / "spark" / "spark.json", change)
    (shop / "multi" / "echo.json").write_text("[1,")
    errors = shop_errors(shop)
    assert errors[0][0] == "multi/echo.json"
    assert errors[0][1].startswith("is not valid JSON: ")
    assert errors[1:] == [
        ("spark/spark.json: services[0].ports[0].protocol", "must be 'tcp' or 'udp'"),
        (
            "spark/spark.json: services[1].resources.memory.min",
            "must be >= 6291456 (6 MiB, the engine's smallest memory limit) or null",
        ),
    ]


def test_defaults_must_give_a_valid_zapp(shop: pathlib.Path) -> None:
    def change(data: Any) -> None:
        data["services"][2]["environment"].append(["LAST", "{dns_name#spark-worker3}"])

    edit_json(shop / "spark" / "spark.json", change)
    edit_json(
        shop / "spark" / "manifest.json",
        lambda data: data["zapps"][0]["parameters"][0].update(default=2),
    )
    assert shop_errors(shop) == [
        (
            f"{M}: zapps[0].parameters",
            "the default values give an invalid ZApp: services[2].environment[2][1]:"
            " {dns_name#spark-worker3}: no instance of this ZApp is named 'spark-worker3'",
        )
    ]


# Visibility ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry_id", "role", "visible"),
    [
        ("spark", "user", True),
        ("spark", "admin", True),
        ("spark", "guest", False),
        ("multi/0", "admin", True),
        ("multi/0", "user", True),
        ("multi/0", "guest", False),
        ("multi/1", "anyone", True),
    ],
)
def test_visible_to(entries: dict[str, ShopEntry], entry_id: str, role: str, visible: bool) -> None:
    assert visible_to(entries[entry_id], role) is visible


def test_disabled_for_wins_over_enabled_for(entries: dict[str, ShopEntry]) -> None:
    entry = msgspec.structs.replace(entries["spark"], enabled_for=["guest"], disabled_for=["guest"])
    assert not visible_to(entry, "guest")


def test_render_refuses_a_role_that_cannot_see_the_zapp(entries: dict[str, ShopEntry]) -> None:
    with pytest.raises(NotFound):
        render(entries["spark"], {}, role="guest")
    assert render(entries["spark"], {}, role="user").description.name == "spark-jupyter"


# Rendering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RENDER_CASES, ids=[p.stem for p in RENDER_CASES])
def test_golden_render(entries: dict[str, ShopEntry], path: pathlib.Path) -> None:
    case = json.loads(path.read_text())
    inputs = {k: case[k] for k in ("about", "entry", "params", "resources") if k in case}
    if "can_customize_resources" in case:
        inputs["can_customize_resources"] = case["can_customize_resources"]
    result: dict[str, Any]
    try:
        loaded = render(
            entries[case["entry"]],
            case["params"],
            resources=case.get("resources"),
            can_customize_resources=case.get("can_customize_resources", False),
        )
    except InvalidZApp as exc:
        result = {"error": exc.message, "errors": [[e.path, e.message] for e in exc.errors]}
    else:
        description = json.loads(msgspec.json.encode(loaded.description))
        result = {"warnings": loaded.warnings, "description": description}
        assert load_description(description).description == loaded.description
    if UPDATE:
        path.write_text(json.dumps({**inputs, **result}, indent=2, ensure_ascii=False) + "\n")
        return
    assert result == {k: case[k] for k in result}
    assert set(case) == set(inputs) | set(result)


def test_there_are_golden_renders() -> None:
    assert len(RENDER_CASES) >= 5


def render_errors(entry: ShopEntry, params: dict[str, Any], **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidZApp) as info:
        render(entry, params, **kwargs)
    return [(e.path, e.message) for e in info.value.errors]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be >= 1"),
        ("-3", "must be >= 1"),
        ("17", "must be <= 16"),
        ("8.0", "must be an integer"),
        ("eight", "must be an integer"),
        ("", "must be an integer"),
        (True, "must be an integer"),
        (4.0, "must be an integer"),
        (None, "must be an integer"),
        ("9" * 30, "must be an integer"),
    ],
)
def test_int_parameter_values(entries: dict[str, ShopEntry], value: object, message: str) -> None:
    assert render_errors(entries["spark"], {"spark-worker": value}) == [
        ("parameters['spark-worker']", message)
    ]


def test_int_parameter_step(entries: dict[str, ShopEntry]) -> None:
    assert render_errors(entries["spark"], {"SPARK_WORKER_RAM": "536870913"}) == [
        ("parameters.SPARK_WORKER_RAM", "must be 536870912 plus a multiple of 536870912")
    ]


def test_int_parameters_accept_ints_and_padded_strings(entries: dict[str, ShopEntry]) -> None:
    for value in (6, "6", " +6 "):
        workers = render(entries["spark"], {"spark-worker": value}).description.services[1]
        assert (workers.total_count, workers.essential_count) == (6, 2)


def test_environment_parameters_set_every_service_defining_the_variable(
    entries: dict[str, ShopEntry],
) -> None:
    services = render(entries["spark"], {"SPARK_WORKER_RAM": 1073741824}).description.services
    assert [dict(s.environment).get("SPARK_WORKER_RAM") for s in services] == [
        None,
        "1073741824",
        "1073741824",
    ]


def test_string_parameters(entries: dict[str, ShopEntry]) -> None:
    assert render_errors(entries["multi/1"], {"TEXT": 5}) == [
        ("parameters.TEXT", "must be a string")
    ]
    assert render_errors(entries["multi/1"], {"TEXT": "x" * 65537}) == [
        ("parameters.TEXT", "must be at most 65536 characters long")
    ]


def test_unknown_parameters(entries: dict[str, ShopEntry]) -> None:
    assert render_errors(entries["multi/1"], {"TXT": "x", 3: "y"}) == [
        ("parameters.TXT", "unknown parameter; this ZApp has: TEXT"),
        ("parameters[3]", "unknown parameter; this ZApp has: TEXT"),
    ]


def test_parameter_values_are_templates(entries: dict[str, ShopEntry]) -> None:
    with pytest.raises(InvalidZApp) as info:
        render(entries["spark"], {"jupyter": "jupyter --ip {ip}"})
    assert info.value.message == "invalid ZApp description"
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("services[2].command", "unknown template variable {ip}")
    ]


def test_resources_need_the_permission(entries: dict[str, ShopEntry]) -> None:
    resources = {"jupyter": {"cores": {"max": 4}}}
    assert render_errors(entries["spark"], {}, resources=resources) == [
        ("resources", "this role may not customise resources")
    ]
    loaded = render(entries["spark"], {}, resources=resources, can_customize_resources=True)
    assert loaded.description.services[2].resources.cores.max == 4.0


def test_resource_overrides_are_checked(entries: dict[str, ShopEntry]) -> None:
    resources = {
        "nope": {},
        "jupyter": {"disk": 1, "memory": {"avg": 3}, "cores": "many"},
        "spark-master": [],
    }
    assert render_errors(
        entries["spark"], {}, resources=resources, can_customize_resources=True
    ) == [
        ("resources.nope", "this ZApp has no service of this name"),
        ("resources.jupyter.disk", "unknown key"),
        ("resources.jupyter.memory.avg", "unknown key"),
        ("resources.jupyter.cores", "must be an object"),
        ("resources['spark-master']", "must be an object"),
    ]
    assert render_errors(entries["spark"], {}, resources=[], can_customize_resources=True) == [
        ("resources", "must be an object")
    ]


def test_params_must_be_an_object(entries: dict[str, ShopEntry]) -> None:
    assert render_errors(entries["spark"], ["spark-worker"]) == [  # type: ignore[arg-type]
        ("parameters", "must be an object")
    ]


def test_render_does_not_change_the_entry(entries: dict[str, ShopEntry]) -> None:
    before = msgspec.json.encode(entries["spark"])
    render(entries["spark"], {"spark-worker": 9, "jupyter": "x"})
    assert msgspec.json.encode(entries["spark"]) == before


def test_every_object_of_a_manifest_refuses_an_unknown_key(shop: pathlib.Path) -> None:
    manifest = json.loads((shop / "spark" / "manifest.json").read_text())
    count = len(manifest["zapps"][0]["parameters"])
    places = [(), ("zapps", 0), *(("zapps", 0, "parameters", i) for i in range(count))]
    for keys in places:
        data = copy.deepcopy(manifest)
        target: Any = data
        for key in keys:
            target = target[key]
        target["colour"] = "red"
        (shop / "spark" / "manifest.json").write_text(json.dumps(data))
        path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
        with pytest.raises(InvalidZApp) as info:
            load_shop(shop)
        found = [(e.path, e.message) for e in info.value.errors]
        assert found == [(f"{M}: {path + '.' if path else ''}colour", "unknown key")]

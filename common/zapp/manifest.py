"""The ZApp shop manifest (`manifest.json`): validation of its content, without any I/O."""

from __future__ import annotations

import re

import msgspec

from common.zapp.checks import (
    Collector,
    TooManyErrors,
    Unique,
    check_array,
    check_int,
    check_object,
    check_text,
    item_path,
    key_path,
    known,
)
from common.zapp.limits import (
    MANIFEST_VERSION,
    MAX_PARAMETER_INT,
    MAX_PARAMETERS,
    MAX_ROLES,
    MAX_SHOP_ZAPPS,
    MAX_TEXT,
)
from common.zapp.model import Description

ENVIRONMENT = "environment"
COMMAND = "command"
SERVICE_COUNT = "service_count"
KINDS = (ENVIRONMENT, COMMAND, SERVICE_COUNT)
INT = "int"
STRING = "string"
DEFAULT_LOGO = "logo.png"

_ZAPP_REQUIRED = ("category", "name", "description")
_ZAPP_OPTIONAL = ("readable_descr", "logo", "parameters", "enabled_for", "disabled_for")
_PARAMETER_REQUIRED = ("kind", "name", "type", "default")
_PARAMETER_OPTIONAL = ("readable_name", "description", "min", "max", "step")
_FILE_RULE = "must be a relative file name inside the ZApp folder"
_NAME_RULE = "must be a non-empty string of at most 128 characters"
_INT_RULE = f"must be an integer between {-MAX_PARAMETER_INT} and {MAX_PARAMETER_INT}"
_BAD_FILE_PART = re.compile(r"(?:^|/)\.{0,2}(?:/|$)")


class Parameter(msgspec.Struct, frozen=True, kw_only=True):
    """A value the shop asks the user for before starting a ZApp.

    `kind` says what it sets: `environment` the variable `name` in every service that
    defines it, `command` the command of service `name`, `service_count` the
    `total_count` of service `name`. `type` is `int` (with optional `min`, `max`, `step`)
    or `string`.
    """

    kind: str
    name: str
    readable_name: str
    description: str
    type: str
    default: int | str
    min: int | None = None
    max: int | None = None
    step: int | None = None


class ManifestZApp(msgspec.Struct, frozen=True, kw_only=True):
    """One ZApp of a manifest; file names are relative to the manifest's folder.

    `logo` is `None` when the manifest names none: then `logo.png` is used if present.
    `enabled_for` is `None` when every role may see the ZApp.
    """

    category: str
    name: str
    description: str
    readable_descr: str | None
    logo: str | None
    parameters: list[Parameter]
    enabled_for: list[str] | None
    disabled_for: list[str]


def parse_manifest(c: Collector, data: object) -> list[ManifestZApp] | None:
    """The ZApps of a parsed `manifest.json`, recording every broken rule in `c`."""
    try:
        return _manifest(c, data)
    except TooManyErrors:
        return None


def int_problem(parameter: Parameter, value: int) -> str | None:
    """What is wrong with `value` for an `int` parameter, or `None` when it fits."""
    low = parameter.min
    if parameter.kind == SERVICE_COUNT:
        low = 1 if low is None else max(low, 1)
    if low is not None and value < low:
        return f"must be >= {low}"
    if parameter.max is not None and value > parameter.max:
        return f"must be <= {parameter.max}"
    if parameter.step is not None:
        base = parameter.min if parameter.min is not None else 0
        if (value - base) % parameter.step:
            if base:
                return f"must be {base} plus a multiple of {parameter.step}"
            return f"must be a multiple of {parameter.step}"
    return None


def check_parameters(
    c: Collector, parameters: list[Parameter], description: Description, path: str, file: str
) -> None:
    """Check that every parameter names something `description` (read from `file`) has."""
    services = {service.name for service in description.services}
    variables = {name for service in description.services for name, _ in service.environment}
    for j, parameter in enumerate(parameters):
        at = key_path(item_path(key_path(path, "parameters"), j), "name")
        if parameter.kind in (COMMAND, SERVICE_COUNT) and parameter.name not in services:
            c.error(at, f"{file} has no service named {parameter.name!r}")
        elif parameter.kind == ENVIRONMENT and parameter.name not in variables:
            c.error(at, f"no service of {file} defines the variable {parameter.name}")


def _manifest(c: Collector, data: object) -> list[ManifestZApp] | None:
    obj = check_object(
        c, data, "", required=("version", "zapps"), message="the manifest must be a JSON object"
    )
    if obj is None:
        return None
    if "version" in obj:
        check_int(
            c,
            obj["version"],
            "version",
            lo=MANIFEST_VERSION,
            hi=MANIFEST_VERSION,
            rule="must be 1",
            hi_rule="must be 1",
        )
    if "zapps" not in obj:
        return None
    items = check_array(c, obj["zapps"], "zapps", max_items=MAX_SHOP_ZAPPS)
    if items is None:
        return None
    if not items:
        c.error("zapps", "must be a non-empty array")
    mark = c.mark()
    zapps = [_zapp(c, item, item_path("zapps", i)) for i, item in enumerate(items)]
    if c.failed_since(mark):
        return None
    return [known(zapp) for zapp in zapps]


def _file(c: Collector, value: object, path: str) -> str | None:
    name = check_text(c, value, path, message=_FILE_RULE, min_len=1)
    if name is not None and (name.startswith("/") or "\\" in name or _BAD_FILE_PART.search(name)):
        c.error(path, _FILE_RULE)
        return None
    return name


def _roles(c: Collector, value: object, path: str) -> list[str] | None:
    items = check_array(
        c, value, path, max_items=MAX_ROLES, message="must be an array of role names"
    )
    if items is None:
        return None
    roles = [
        check_text(c, item, item_path(path, i), message=_NAME_RULE, min_len=1, max_len=128)
        for i, item in enumerate(items)
    ]
    return [role for role in roles if role is not None]


def _zapp(c: Collector, value: object, path: str) -> ManifestZApp | None:
    mark = c.mark()
    obj = check_object(c, value, path, required=_ZAPP_REQUIRED, optional=_ZAPP_OPTIONAL)
    if obj is None:
        return None
    texts: dict[str, str | None] = {}
    for key in ("category", "name"):
        if key in obj:
            texts[key] = check_text(
                c, obj[key], key_path(path, key), message=_NAME_RULE, min_len=1, max_len=128
            )
    files: dict[str, str | None] = {}
    for key in ("description", "readable_descr", "logo"):
        if key in obj and (key == "description" or obj[key] is not None):
            files[key] = _file(c, obj[key], key_path(path, key))
    parameters = _parameters(c, obj.get("parameters", []), key_path(path, "parameters"))
    enabled_for = None
    if obj.get("enabled_for") is not None:
        enabled_for = _roles(c, obj["enabled_for"], key_path(path, "enabled_for"))
    disabled_for: list[str] | None = []
    if obj.get("disabled_for") is not None:
        disabled_for = _roles(c, obj["disabled_for"], key_path(path, "disabled_for"))
    if c.failed_since(mark):
        return None
    return ManifestZApp(
        category=known(texts.get("category")),
        name=known(texts.get("name")),
        description=known(files.get("description")),
        readable_descr=files.get("readable_descr"),
        logo=files.get("logo"),
        parameters=known(parameters),
        enabled_for=enabled_for,
        disabled_for=known(disabled_for),
    )


def _parameters(c: Collector, value: object, path: str) -> list[Parameter] | None:
    items = check_array(c, value, path, max_items=MAX_PARAMETERS)
    if items is None:
        return None
    mark = c.mark()
    parameters: list[Parameter] = []
    unique = Unique(c, "parameters")
    for i, item in enumerate(items):
        parameter = _parameter(c, item, item_path(path, i))
        if parameter is None:
            continue
        name_path = key_path(item_path(path, i), "name")
        unique.check(parameter.name, i, name_path, "duplicate parameter name")
        parameters.append(parameter)
    return None if c.failed_since(mark) else parameters


def _parameter(c: Collector, value: object, path: str) -> Parameter | None:
    mark = c.mark()
    obj = check_object(c, value, path, required=_PARAMETER_REQUIRED, optional=_PARAMETER_OPTIONAL)
    if obj is None:
        return None

    def sub(key: str) -> str:
        return key_path(path, key)

    kind = obj.get("kind")
    if "kind" in obj and kind not in KINDS:
        c.error(sub("kind"), "must be 'environment', 'command' or 'service_count'")
    name = None
    if "name" in obj:
        name = check_text(c, obj["name"], sub("name"), message=_NAME_RULE, min_len=1, max_len=128)
    readable = check_text(c, obj.get("readable_name", name or ""), sub("readable_name"))
    about = check_text(c, obj.get("description", ""), sub("description"), max_len=MAX_TEXT)
    kind_type = obj.get("type")
    if "type" in obj and kind_type not in (INT, STRING):
        c.error(sub("type"), "must be 'int' or 'string'")
    elif kind == SERVICE_COUNT and kind_type == STRING:
        c.error(sub("type"), "must be 'int' for a service_count parameter")
    bounds: dict[str, int | None] = {}
    for key in ("min", "max", "step"):
        if obj.get(key) is None:
            continue
        if kind_type != INT:
            if kind_type == STRING:
                c.error(sub(key), "only allowed for type int")
            continue
        floor = 1 if key == "step" else -MAX_PARAMETER_INT
        rule = "must be an integer >= 1" if key == "step" else _INT_RULE
        bounds[key] = check_int(c, obj[key], sub(key), lo=floor, hi=MAX_PARAMETER_INT, rule=rule)
    low, high = bounds.get("min"), bounds.get("max")
    if low is not None and high is not None and high < low:
        c.error(sub("max"), f"must be >= min ({low})")
    default: int | str | None = None
    if "default" in obj and kind_type == INT:
        default = check_int(
            c,
            obj["default"],
            sub("default"),
            lo=-MAX_PARAMETER_INT,
            hi=MAX_PARAMETER_INT,
            rule=_INT_RULE,
        )
    elif "default" in obj and kind_type == STRING:
        default = check_text(c, obj["default"], sub("default"), max_len=MAX_TEXT)
    if c.failed_since(mark) or default is None:
        return None
    parameter = Parameter(
        kind=str(kind),
        name=known(name),
        readable_name=known(readable),
        description=known(about),
        type=str(kind_type),
        default=default,
        min=low,
        max=high,
        step=bounds.get("step"),
    )
    if isinstance(parameter.default, int):
        problem = int_problem(parameter, parameter.default)
        if problem is not None:
            c.error(sub("default"), problem)
            return None
    return parameter

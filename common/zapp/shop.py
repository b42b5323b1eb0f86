"""The ZApp shop: the ZApps found in a library folder, and their parameters applied.

Every sub-folder of the library holding a `manifest.json` contributes the ZApps its
manifest lists. A ZApp's id is the folder name when the manifest lists one ZApp, and
`<folder>/<n>` (n from 0, in manifest order) when it lists several.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from common.errors import FieldError, InvalidZApp, NotFound
from common.zapp.checks import Collector, TooManyErrors, check_object, key_path
from common.zapp.limits import MAX_FILE_BYTES, MAX_PARAMETER_INT, MAX_TEXT
from common.zapp.manifest import (
    COMMAND,
    DEFAULT_LOGO,
    ENVIRONMENT,
    INT,
    SERVICE_COUNT,
    ManifestZApp,
    Parameter,
    check_parameters,
    int_problem,
    parse_manifest,
)
from common.zapp.model import Description, LoadedDescription
from common.zapp.validate import load_description

MANIFEST = "manifest.json"
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")


class ShopEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A ZApp of the shop, with its files read and its description validated.

    `enabled_for` is `None` when every role may see it; `logo` is PNG bytes (base64 when
    encoded to JSON); `warnings` are those of loading `description_file`.
    """

    id: str
    category: str
    name: str
    description_file: str
    readable_descr: str
    logo: bytes | None
    parameters: list[Parameter]
    enabled_for: list[str] | None
    disabled_for: list[str]
    folder: str
    description: Description
    warnings: list[str] = []


class _FileProblem(Exception):
    pass


def load_shop(root: pathlib.Path) -> list[ShopEntry]:
    """Every ZApp of the library at `root`, folders in name order.

    Reads each `manifest.json` and the files it names, validates the descriptions and
    checks that the default parameter values give a valid ZApp. Raises `InvalidZApp`
    listing every problem of every folder, with paths such as
    `spark/manifest.json: zapps[0].parameters[1].min`. A missing `root` is an empty shop.
    """
    entries, errors = scan_shop(root)
    if errors:
        raise InvalidZApp("invalid ZApp shop", errors=errors)
    return entries


def scan_shop(root: pathlib.Path) -> tuple[list[ShopEntry], list[FieldError]]:
    """Like `load_shop`, but returns the valid entries and the problems of the others,
    so that one broken folder does not hide the rest of the shop."""
    if not root.is_dir():
        return [], []
    entries: list[ShopEntry] = []
    errors: list[FieldError] = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        entries.extend(_load_folder(folder, errors))
    return entries, errors


def visible_to(entry: ShopEntry, role: str) -> bool:
    """Whether users with `role` may see and start `entry`."""
    if role in entry.disabled_for:
        return False
    return entry.enabled_for is None or role in entry.enabled_for


def render(
    entry: ShopEntry,
    params: Mapping[str, object],
    *,
    role: str | None = None,
    resources: Mapping[str, object] | None = None,
    can_customize_resources: bool = False,
) -> LoadedDescription:
    """The description of `entry` with `params` applied, validated.

    `params` maps parameter names to values (strings as a form sends them, or ints);
    parameters not given take their default. `resources` overrides memory and cores per
    service, e.g. `{"spark-worker": {"memory": {"min": 2147483648, "max": null}}}`, and
    is refused unless `can_customize_resources` (the caller knows the user's role).
    Raises `NotFound` when `role` is given and may not see the ZApp, `InvalidZApp` for a
    bad parameter (paths like `parameters.SPARK_WORKER_RAM`) or a bad resulting description.
    """
    if role is not None and not visible_to(entry, role):
        raise NotFound(f"no ZApp {entry.id!r} in the shop for role {role!r}")
    c = Collector()
    # A JSON round trip gives plain, mutable lists and dicts to apply the parameters to.
    data: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(entry.description))
    try:
        _apply_parameters(c, entry, params, data)
        if resources is not None:
            _apply_resources(c, resources, data, allowed=can_customize_resources)
    except TooManyErrors:
        pass
    c.raise_if_errors("invalid ZApp parameters")
    loaded = load_description(data)
    return LoadedDescription(
        description=loaded.description, warnings=[*entry.warnings, *loaded.warnings]
    )


def _apply_parameters(c: Collector, entry: ShopEntry, params: object, data: dict[str, Any]) -> None:
    if not isinstance(params, Mapping):
        c.error("parameters", "must be an object")
        return
    by_name = {parameter.name: parameter for parameter in entry.parameters}
    for key in params:
        if key not in by_name:
            names = ", ".join(by_name) or "none"
            c.error(key_path("parameters", key), f"unknown parameter; this ZApp has: {names}")
    for parameter in entry.parameters:
        path = key_path("parameters", parameter.name)
        raw = params[parameter.name] if parameter.name in params else parameter.default
        value = _value(c, parameter, raw, path)
        if value is not None:
            _set(parameter, value, data["services"])


def _value(c: Collector, parameter: Parameter, raw: object, path: str) -> int | str | None:
    if parameter.type != INT:
        if not isinstance(raw, str):
            c.error(path, "must be a string")
            return None
        if len(raw) > MAX_TEXT:
            c.error(path, f"must be at most {MAX_TEXT} characters long")
            return None
        return raw
    number: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        number = int(raw.strip())
    if number is None or abs(number) > MAX_PARAMETER_INT:
        c.error(path, "must be an integer")
        return None
    problem = int_problem(parameter, number)
    if problem is not None:
        c.error(path, problem)
        return None
    return number


def _set(parameter: Parameter, value: int | str, services: list[dict[str, Any]]) -> None:
    for service in services:
        if parameter.kind == ENVIRONMENT:
            for pair in service["environment"]:
                if pair[0] == parameter.name:
                    pair[1] = str(value)
        elif service["name"] != parameter.name:
            continue
        elif parameter.kind == COMMAND:
            service["command"] = str(value) if str(value).strip() else None
        elif parameter.kind == SERVICE_COUNT and isinstance(value, int):
            service["total_count"] = value
            service["essential_count"] = min(service["essential_count"], value)


def _apply_resources(
    c: Collector, resources: object, data: dict[str, Any], *, allowed: bool
) -> None:
    if not allowed:
        c.error("resources", "this role may not customise resources")
        return
    if not isinstance(resources, Mapping):
        c.error("resources", "must be an object")
        return
    services = {service["name"]: service for service in data["services"]}
    for name, override in resources.items():
        path = key_path("resources", name)
        if name not in services:
            c.error(path, "this ZApp has no service of this name")
            continue
        obj = check_object(c, override, path, optional=("memory", "cores"))
        for kind in ("memory", "cores"):
            if obj is None or kind not in obj:
                continue
            bounds = check_object(c, obj[kind], key_path(path, kind), optional=("min", "max"))
            if bounds is not None:
                services[name]["resources"][kind].update(bounds)


def _load_folder(folder: pathlib.Path, errors: list[FieldError]) -> list[ShopEntry]:
    where = f"{folder.name}/{MANIFEST}"
    try:
        data = msgspec.json.decode(_read(folder, MANIFEST))
    except _FileProblem as exc:
        errors.append(FieldError(where, f"cannot be read: {exc}"))
        return []
    except msgspec.DecodeError as exc:
        errors.append(FieldError(where, f"is not valid JSON: {exc}"))
        return []
    c = Collector()
    zapps = parse_manifest(c, data)
    if zapps is None or c.errors:
        errors.extend(_prefixed(c.all_errors(), where))
        return []
    entries: list[ShopEntry] = []
    for i, zapp in enumerate(zapps):
        entry_id = folder.name if len(zapps) == 1 else f"{folder.name}/{i}"
        entry = _load_entry(folder, zapp, entry_id, f"zapps[{i}]", errors)
        if entry is not None:
            entries.append(entry)
    return entries


def _load_entry(
    folder: pathlib.Path,
    zapp: ManifestZApp,
    entry_id: str,
    path: str,
    errors: list[FieldError],
) -> ShopEntry | None:
    where = f"{folder.name}/{MANIFEST}"
    before = len(errors)
    loaded = _load_file_description(
        folder, zapp.description, f"{where}: {path}.description", errors
    )
    readme = ""
    if zapp.readable_descr is not None:
        try:
            readme = _read(folder, zapp.readable_descr).decode("utf-8")
        except (_FileProblem, UnicodeDecodeError) as exc:
            errors.append(FieldError(f"{where}: {path}.readable_descr", f"cannot be read: {exc}"))
    logo = None
    if zapp.logo is not None or (folder / DEFAULT_LOGO).is_file():
        try:
            logo = _read(folder, zapp.logo or DEFAULT_LOGO)
        except _FileProblem as exc:
            errors.append(FieldError(f"{where}: {path}.logo", f"cannot be read: {exc}"))
    if loaded is None or len(errors) > before:
        return None
    c = Collector()
    check_parameters(c, zapp.parameters, loaded.description, path, zapp.description)
    if c.errors:
        errors.extend(_prefixed(c.all_errors(), where))
        return None
    entry = ShopEntry(
        id=entry_id,
        category=zapp.category,
        name=zapp.name,
        description_file=zapp.description,
        readable_descr=readme,
        logo=logo,
        parameters=zapp.parameters,
        enabled_for=zapp.enabled_for,
        disabled_for=zapp.disabled_for,
        folder=str(folder),
        description=loaded.description,
        warnings=loaded.warnings,
    )
    try:
        render(entry, {})
    except InvalidZApp as exc:
        errors.extend(
            FieldError(
                f"{where}: {path}.parameters", f"the default values give an invalid ZApp: {e}"
            )
            for e in exc.errors
        )
        return None
    return entry


def _load_file_description(
    folder: pathlib.Path, name: str, key: str, errors: list[FieldError]
) -> LoadedDescription | None:
    """Load the description file `name`; `key` is where the manifest names it."""
    try:
        data = msgspec.json.decode(_read(folder, name))
    except _FileProblem as exc:
        errors.append(FieldError(key, f"cannot be read: {exc}"))
        return None
    except msgspec.DecodeError as exc:
        errors.append(FieldError(f"{folder.name}/{name}", f"is not valid JSON: {exc}"))
        return None
    try:
        return load_description(data)
    except InvalidZApp as exc:
        errors.extend(_prefixed(exc.errors, f"{folder.name}/{name}"))
        return None


def _prefixed(errors: list[FieldError], where: str) -> list[FieldError]:
    return [FieldError(f"{where}: {e.path}" if e.path else where, e.message) for e in errors]


def _read(folder: pathlib.Path, name: str) -> bytes:
    """The bytes of `folder/name`, refusing anything outside `folder` or too large."""
    try:
        path = (folder / name).resolve()
        if not path.is_relative_to(folder.resolve()):
            raise _FileProblem(f"{name} is outside the ZApp folder")
        if not path.is_file():
            raise _FileProblem(f"no file {name}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise _FileProblem(f"{name} is larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise _FileProblem(f"{name}: {exc.strerror or exc}") from exc

"""`load_description`: parsed JSON in, a validated `Description` (or every error) out."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from common.zapp import sizes, templates
from common.zapp.checks import (
    Collector,
    TooManyErrors,
    check_array,
    check_bool,
    check_int,
    check_object,
    check_text,
    item_path,
    key_path,
    known,
    shorten,
)
from common.zapp.limits import (
    FORMAT_VERSION,
    MAX_INSTANCES,
    MAX_SERVICES,
    MAX_SIZE,
)
from common.zapp.model import Description, LoadedDescription
from common.zapp.service import Draft, check_service

ERROR_MESSAGE = "invalid ZApp description"
NOT_AN_OBJECT = "the description must be a JSON object"

_ZAPP_NAME = re.compile(r"[A-Za-z0-9@-]{3,128}")
_ZAPP_NAME_RULE = "must be 3 to 128 characters: letters, digits, '-' and '@'"
_TOP_REQUIRED = ("name", "size", "services")
_TOP_TOLERATED = ("version", "will_end")  # older files: defaults with a warning


def load_description(data: object, *, registries: Collection[str] = ()) -> LoadedDescription:
    """Validate a parsed JSON ZApp description and return it normalised.

    Raises `InvalidZApp` listing every broken rule, each with its JSON path, and nothing
    else whatever `data` is. Older files are tolerated with warnings: a missing `version`
    is 3, a missing `will_end` is inferred from the monitor services, an image without a
    tag gets `:latest`; the returned description has these filled in.

    `registries` are the registry hosts (`registry.example.com:5000`) images may name;
    by default none: images are built on the nodes. Once every rule holds, the expanded
    size is checked with execution, user and deployment names at their longest.
    """
    c = Collector()
    try:
        description = _description(c, data, frozenset(r.lower() for r in registries))
    except TooManyErrors:
        description = None
    c.raise_if_errors(ERROR_MESSAGE)
    return LoadedDescription(description=known(description), warnings=c.warnings)


def _description(c: Collector, data: object, registries: frozenset[str]) -> Description | None:
    obj = check_object(
        c, data, "", required=_TOP_REQUIRED, optional=_TOP_TOLERATED, message=NOT_AN_OBJECT
    )
    if obj is None:
        return None
    name = None
    if "name" in obj:
        name = check_text(c, obj["name"], "name", message=_ZAPP_NAME_RULE, pattern=_ZAPP_NAME)
    version = FORMAT_VERSION
    if "version" not in obj:
        c.warn("version", f"missing, assumed {FORMAT_VERSION}")
    else:
        check_int(
            c,
            obj["version"],
            "version",
            lo=FORMAT_VERSION,
            hi=FORMAT_VERSION,
            rule="must be 3",
            hi_rule="must be 3",
        )
    size = None
    if "size" in obj:
        size = check_int(c, obj["size"], "size", lo=0, hi=MAX_SIZE, rule="must be an integer >= 0")
    drafts = _services(c, obj["services"], registries) if "services" in obj else None
    will_end = _will_end(c, obj, drafts)
    if c.errors or drafts is None:
        return None
    description = Description(
        name=known(name),
        version=version,
        will_end=known(will_end),
        size=known(size),
        services=[known(draft.service) for draft in drafts],
    )
    for error in sizes.size_errors(description, sizes.LONGEST):
        c.error(error.path, error.message)
    return None if c.errors else description


def _will_end(c: Collector, obj: Mapping[str, object], drafts: list[Draft] | None) -> bool | None:
    if "will_end" in obj:
        return check_bool(c, obj["will_end"], "will_end")
    if drafts is None:
        return None
    will_end = any(draft.monitor is True for draft in drafts)
    reason = "a service has" if will_end else "no service has"
    c.warn("will_end", f"missing, assumed {str(will_end).lower()} because {reason} monitor: true")
    return will_end


def _services(c: Collector, value: object, registries: frozenset[str]) -> list[Draft] | None:
    items = check_array(c, value, "services", max_items=MAX_SERVICES)
    if items is None:
        return None
    if not items:
        c.error("services", "must be a non-empty array")
        return None
    drafts = [
        check_service(c, item, item_path("services", i), registries) for i, item in enumerate(items)
    ]
    _check_across(c, drafts)
    return drafts


def _check_across(c: Collector, drafts: list[Draft]) -> None:
    """The rules that involve more than one service."""
    seen: dict[str, int] = {}
    for i, draft in enumerate(drafts):
        if draft.name is None:
            continue
        other = seen.setdefault(draft.name.lower(), i)
        if other != i:
            c.error(
                key_path(draft.path, "name"),
                f"duplicate service name (same as services[{other}].name, ignoring case)",
            )
    monitors = [draft.monitor for draft in drafts]
    if None not in monitors and not any(monitors):
        c.error("services", "at least one service must have monitor: true")
    counts = [draft.total_count for draft in drafts]
    instances: set[str] | None = None
    if None not in counts:
        total = sum(known(count) for count in counts)
        if total > MAX_INSTANCES:
            c.error("services", f"{total} instances in all; at most {MAX_INSTANCES} are allowed")
        elif len(seen) == len(drafts):
            instances = _instance_names(c, drafts)
    for draft in drafts:
        for path, text in draft.template_texts:
            _check_template(c, path, text, instances)


def _instance_names(c: Collector, drafts: list[Draft]) -> set[str] | None:
    """Every instance name, or `None` after reporting two services whose instances clash.

    Names are compared ignoring case: they are DNS names.
    """
    owners: dict[str, int] = {}
    names: set[str] = set()
    clash = False
    for i, draft in enumerate(drafts):
        for index in range(known(draft.total_count)):
            instance = f"{draft.name}{index}"
            names.add(instance)
            other = owners.setdefault(instance.lower(), i)
            if other != i:
                clash = True
                c.error(
                    key_path(draft.path, "name"),
                    f"instance {instance!r} clashes with an instance of services[{other}]",
                )
                break
    return None if clash else names


def _check_template(c: Collector, path: str, text: str, instances: set[str] | None) -> None:
    try:
        names = templates.variables(text)
    except templates.TemplateSyntaxError:
        c.error(path, templates.SYNTAX_MESSAGE)
        return
    for name in dict.fromkeys(names):
        if name in templates.SIMPLE_VARIABLES:
            continue
        if name.startswith(templates.DNS_PREFIX):
            instance = name.removeprefix(templates.DNS_PREFIX)
            if instance != templates.SELF and instances is not None:
                if instance not in instances:
                    c.error(
                        path,
                        f"{{{shorten(name)}}}: no instance of this ZApp is named"
                        f" {shorten(instance)!r}",
                    )
            continue
        c.error(path, f"unknown template variable {{{shorten(name)}}}")

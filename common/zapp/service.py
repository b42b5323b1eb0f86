"""Validation of one service of a description, up to what needs the other services."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.zapp import images, shell, templates
from common.zapp.checks import (
    Collector,
    Unique,
    check_absolute_path,
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
    MAX_ENVIRONMENT,
    MAX_LABEL,
    MAX_LABELS,
    MAX_STARTUP_ORDER,
    MAX_TEXT,
    MAX_TOTAL_COUNT,
    MIN_STARTUP_ORDER,
)
from common.zapp.model import Service
from common.zapp.service_parts import check_ports, check_resources, check_volumes

_SERVICE_NAME = re.compile(r"[A-Za-z0-9-]{3,16}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NO_SPACE = re.compile(r"\S+")
_SERVICE_REQUIRED = (
    "name",
    "image",
    "monitor",
    "essential_count",
    "total_count",
    "startup_order",
    "resources",
    "ports",
    "environment",
    "volumes",
    "command",
)
_SERVICE_OPTIONAL = ("work_dir", "labels", "run_as_root", "replicas", "network")
_COUNT_RULE = "must be an integer >= 1"
_STARTUP_ORDER_RANGE = f"must be between {MIN_STARTUP_ORDER} and {MAX_STARTUP_ORDER}"
_SERVICE_NAME_RULE = "must be 3 to 16 characters: letters, digits and '-'"
_VARIABLE_RULE = "must be a variable name: letters, digits and '_', not starting with a digit"
_REPLICAS_RULE = (
    "must be 1 or absent: each instance is one container; total_count sets how many there are"
)


@dataclass
class Draft:
    """What the cross-service checks need from one service, valid or not."""

    path: str
    service: Service | None = None
    name: str | None = None
    total_count: int | None = None
    monitor: bool | None = None
    template_texts: list[tuple[str, str]] = field(default_factory=list)


def check_service(c: Collector, value: object, path: str, registries: frozenset[str]) -> Draft:
    """Check the service at `path`; the draft holds a `Service` only if it has no error.

    `registries`: the registry hosts (lower case) its image may name.
    """
    draft = Draft(path=path)
    mark = c.mark()
    obj = check_object(c, value, path, required=_SERVICE_REQUIRED, optional=_SERVICE_OPTIONAL)
    if obj is None:
        return draft
    if "name" in obj:
        draft.name = check_text(
            c,
            obj["name"],
            key_path(path, "name"),
            message=_SERVICE_NAME_RULE,
            pattern=_SERVICE_NAME,
        )
    image = None
    if "image" in obj:
        image = _image(c, obj["image"], key_path(path, "image"), registries)
    if "monitor" in obj:
        draft.monitor = check_bool(c, obj["monitor"], key_path(path, "monitor"))
    essential, startup_order = _counts(c, obj, path, draft)
    resources = ports = environment = volumes = None
    if "resources" in obj:
        resources = check_resources(c, obj["resources"], key_path(path, "resources"))
    if "ports" in obj:
        ports = check_ports(c, obj["ports"], key_path(path, "ports"))
    if "environment" in obj:
        environment = _environment(c, obj["environment"], key_path(path, "environment"), draft)
    if "volumes" in obj:
        volumes = check_volumes(c, obj["volumes"], key_path(path, "volumes"))
    command, work_dir, labels = _extras(c, obj, path, draft)
    run_as_root: bool | None = False
    if "run_as_root" in obj:
        run_as_root = check_bool(c, obj["run_as_root"], key_path(path, "run_as_root"))
    if c.failed_since(mark):
        return draft
    draft.service = Service(
        name=known(draft.name),
        image=known(image),
        monitor=known(draft.monitor),
        essential_count=known(essential),
        total_count=known(draft.total_count),
        startup_order=known(startup_order),
        resources=known(resources),
        ports=known(ports),
        environment=known(environment),
        volumes=known(volumes),
        command=command,
        work_dir=work_dir,
        labels=known(labels),
        run_as_root=known(run_as_root),
    )
    return draft


def _counts(
    c: Collector, obj: Mapping[str, object], path: str, draft: Draft
) -> tuple[int | None, int | None]:
    """`essential_count` and `startup_order`; `total_count` goes into the draft."""
    essential = startup_order = None
    if "essential_count" in obj:
        essential = check_int(
            c,
            obj["essential_count"],
            key_path(path, "essential_count"),
            lo=1,
            hi=MAX_TOTAL_COUNT,
            rule=_COUNT_RULE,
        )
    if "total_count" in obj:
        draft.total_count = check_int(
            c,
            obj["total_count"],
            key_path(path, "total_count"),
            lo=1,
            hi=MAX_TOTAL_COUNT,
            rule=_COUNT_RULE,
        )
    if essential is not None and draft.total_count is not None and draft.total_count < essential:
        c.error(key_path(path, "total_count"), f"must be >= essential_count ({essential})")
    if "startup_order" in obj:
        startup_order = check_int(
            c,
            obj["startup_order"],
            key_path(path, "startup_order"),
            lo=MIN_STARTUP_ORDER,
            hi=MAX_STARTUP_ORDER,
            rule="must be an integer",
            lo_rule=_STARTUP_ORDER_RANGE,
            hi_rule=_STARTUP_ORDER_RANGE,
        )
    return essential, startup_order


def _extras(
    c: Collector, obj: Mapping[str, object], path: str, draft: Draft
) -> tuple[str | None, str | None, list[str] | None]:
    """`command`, `work_dir` and `labels`; `network` and `replicas` are checked, then dropped."""
    command = work_dir = None
    if obj.get("command") is not None:
        command = check_text(
            c,
            obj["command"],
            key_path(path, "command"),
            message="must be a non-empty string or null",
            min_len=1,
            max_len=MAX_TEXT,
        )
        if command is not None:
            draft.template_texts.append((key_path(path, "command"), command))
            _check_command_quoting(c, command, key_path(path, "command"))
    if obj.get("work_dir") is not None:
        work_dir = check_absolute_path(
            c, obj["work_dir"], key_path(path, "work_dir"), "must be an absolute path or null"
        )
    labels = _labels(c, obj["labels"], key_path(path, "labels")) if "labels" in obj else []
    if "network" in obj:
        network = check_text(
            c,
            obj["network"],
            key_path(path, "network"),
            message="must be a non-empty string",
            min_len=1,
        )
        if network is not None:
            c.warn(key_path(path, "network"), "ignored: every execution has a network of its own")
    # Original files carry "replicas": 1, which is what Zoe does anyway; another count is
    # a request it would not honour.
    replicas = obj.get("replicas", 1)
    if isinstance(replicas, bool) or replicas != 1:
        c.error(key_path(path, "replicas"), _REPLICAS_RULE)
    return command, work_dir, labels


def _check_command_quoting(c: Collector, command: str, path: str) -> None:
    """Refuse a variable standing where its value could not be quoted (see `shell`)."""
    try:
        shell.contexts(templates.parts(command))
    except templates.TemplateSyntaxError:
        pass  # reported with the other template errors
    except shell.UnquotableVariable as exc:
        c.error(path, str(exc))


def _image(c: Collector, value: object, path: str, registries: frozenset[str]) -> str | None:
    image = check_text(c, value, path, message="must be a non-empty string", min_len=1)
    if image is None:
        return None
    if not images.is_reference(image):
        c.error(path, images.MESSAGE)
        return None
    registry = images.registry(image)
    if registry is not None and registry.lower() not in registries:
        c.error(path, _registry_message(registry, registries))
        return None
    tagged = images.with_tag(image)
    if tagged is None:
        return image
    c.warn(path, f"no tag, using {tagged!r}")
    return tagged


def _environment(
    c: Collector, value: object, path: str, draft: Draft
) -> list[tuple[str, str]] | None:
    items = check_array(c, value, path, max_items=MAX_ENVIRONMENT)
    if items is None:
        return None
    mark = c.mark()
    pairs: list[tuple[str, str]] = []
    unique = Unique(c, "environment")
    for i, item in enumerate(items):
        item_at = item_path(path, i)
        if not isinstance(item, list | tuple) or len(item) != 2:
            c.error(item_at, "must be a [NAME, value] pair")
            continue
        name = check_text(
            c, item[0], item_path(item_at, 0), message=_VARIABLE_RULE, pattern=_VARIABLE
        )
        text = check_text(c, item[1], item_path(item_at, 1), max_len=MAX_TEXT)
        if text is not None:
            draft.template_texts.append((item_path(item_at, 1), text))
        if name is None or text is None:
            continue
        if not unique.check(name, i, item_path(item_at, 0), f"duplicate variable {name}"):
            continue
        if name in templates.INJECTED_VARIABLES:
            c.warn(item_path(item_at, 0), f"{name} is set by Zoe; this value is ignored")
        else:
            pairs.append((name, text))
    return None if c.failed_since(mark) else pairs


def _labels(c: Collector, value: object, path: str) -> list[str] | None:
    items = check_array(c, value, path, max_items=MAX_LABELS)
    if items is None:
        return None
    mark = c.mark()
    labels: list[str] = []
    unique = Unique(c, "labels")
    for i, item in enumerate(items):
        label = check_text(
            c,
            item,
            item_path(path, i),
            message=f"must be a non-empty string without spaces, at most {MAX_LABEL} characters",
            min_len=1,
            max_len=MAX_LABEL,
            pattern=_NO_SPACE,
        )
        if label is None:
            continue
        unique.check(label, i, item_path(path, i), "duplicate label")
        labels.append(label)
    return None if c.failed_since(mark) else labels


def _registry_message(registry: str, registries: frozenset[str]) -> str:
    if not registries:
        return (
            f"names the registry {shorten(registry)!r}, but this deployment pulls from no"
            " registry: images are built on its nodes (such as 'zoe/spark:1')"
        )
    allowed = ", ".join(repr(r) for r in sorted(registries))
    return f"names the registry {shorten(registry)!r}; this deployment pulls only from {allowed}"

"""`load_description`: parsed JSON in, a validated `Description` (or every error) out."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from common.zapp import images, templates
from common.zapp.checks import (
    Collector,
    TooManyErrors,
    check_array,
    check_bool,
    check_int,
    check_object,
    check_positive,
    check_text,
    item_path,
    key_path,
    known,
    shorten,
)
from common.zapp.limits import (
    FORMAT_VERSION,
    MAX_CORES,
    MAX_ENVIRONMENT,
    MAX_EXPANDED_TEXT,
    MAX_INSTANCES,
    MAX_LABEL,
    MAX_LABELS,
    MAX_MEMORY,
    MAX_PORTS,
    MAX_SERVICES,
    MAX_SIZE,
    MAX_STARTUP_ORDER,
    MAX_TEXT,
    MAX_TOTAL_COUNT,
    MAX_VOLUMES,
    MIN_MEMORY,
    MIN_STARTUP_ORDER,
)
from common.zapp.model import (
    CoresRange,
    Description,
    LoadedDescription,
    MemoryRange,
    Port,
    Resources,
    Service,
    Volume,
)

ERROR_MESSAGE = "invalid ZApp description"
NOT_AN_OBJECT = "the description must be a JSON object"

_ZAPP_NAME = re.compile(r"[A-Za-z0-9@-]{3,128}")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9-]{3,16}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{1,254}")
_NO_SPACE = re.compile(r"\S+")

_TOP_REQUIRED = ("name", "size", "services")
_TOP_TOLERATED = ("version", "will_end")  # older files: defaults with a warning
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
_SERVICE_OPTIONAL = ("work_dir", "labels", "replicas", "network")
_RANGE_KEYS = ("min", "max")

_MEMORY_RULE = f"must be an integer >= {MIN_MEMORY} or null"
_MEMORY_LOW = f"must be >= {MIN_MEMORY} or null"
_MEMORY_HIGH = f"must be <= {MAX_MEMORY} (64 TiB)"
_CORES_RULE = "must be a number > 0 or null"
_CORES_LOW = "must be > 0 or null"
_CORES_HIGH = f"must be <= {MAX_CORES:g}"
_COUNT_RULE = "must be an integer >= 1"
_SERVICE_NAME_RULE = "must be 3 to 16 characters: letters, digits and '-'"
_ZAPP_NAME_RULE = "must be 3 to 128 characters: letters, digits, '-' and '@'"
_VARIABLE_RULE = "must be a variable name: letters, digits and '_', not starting with a digit"
_VOLUME_NAME_RULE = (
    "must be a Docker volume name: 2 to 255 letters, digits, '_', '.' and '-',"
    " starting with a letter or digit"
)


def load_description(data: object) -> LoadedDescription:
    """Validate a parsed JSON ZApp description and return it normalised.

    Raises `InvalidZApp` listing every broken rule, each with its JSON path, and nothing
    else whatever `data` is. Older files are tolerated with warnings: a missing `version`
    is 3, a missing `will_end` is inferred from the monitor services, an image without a
    tag gets `:latest`; the returned description has these filled in.
    """
    c = Collector()
    try:
        description = _description(c, data)
    except TooManyErrors:
        description = None
    c.raise_if_errors(ERROR_MESSAGE)
    return LoadedDescription(description=known(description), warnings=c.warnings)


@dataclass
class _Draft:
    """What the cross-service checks need from one service, valid or not."""

    path: str
    service: Service | None = None
    name: str | None = None
    total_count: int | None = None
    monitor: bool | None = None
    text_size: int = 0
    templates: list[tuple[str, str]] = field(default_factory=list)


def _description(c: Collector, data: object) -> Description | None:
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
            c, obj["version"], "version", lo=FORMAT_VERSION, hi=FORMAT_VERSION, rule="must be 3"
        )
    size = None
    if "size" in obj:
        size = check_int(c, obj["size"], "size", lo=0, hi=MAX_SIZE, rule="must be an integer >= 0")
    drafts = _services(c, obj["services"]) if "services" in obj else None
    will_end = _will_end(c, obj, drafts)
    if c.errors or drafts is None:
        return None
    return Description(
        name=known(name),
        version=version,
        will_end=known(will_end),
        size=known(size),
        services=[known(draft.service) for draft in drafts],
    )


def _will_end(c: Collector, obj: Mapping[str, object], drafts: list[_Draft] | None) -> bool | None:
    if "will_end" in obj:
        return check_bool(c, obj["will_end"], "will_end")
    if drafts is None:
        return None
    will_end = any(draft.monitor is True for draft in drafts)
    reason = "a service has" if will_end else "no service has"
    c.warn("will_end", f"missing, assumed {str(will_end).lower()} because {reason} monitor: true")
    return will_end


def _services(c: Collector, value: object) -> list[_Draft] | None:
    items = check_array(c, value, "services", max_items=MAX_SERVICES)
    if items is None:
        return None
    if not items:
        c.error("services", "must be a non-empty array")
        return None
    drafts = [_service(c, item, item_path("services", i)) for i, item in enumerate(items)]
    _check_across(c, drafts)
    return drafts


def _check_across(c: Collector, drafts: list[_Draft]) -> None:
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
        expanded = sum(known(d.total_count) * d.text_size for d in drafts)
        if total > MAX_INSTANCES:
            c.error("services", f"{total} instances in all; at most {MAX_INSTANCES} are allowed")
        elif expanded > MAX_EXPANDED_TEXT:
            c.error(
                "services",
                f"commands and environments of all instances add up to {expanded} characters;"
                f" at most {MAX_EXPANDED_TEXT} are allowed",
            )
        elif len(seen) == len(drafts):
            instances = _instance_names(c, drafts)
    for draft in drafts:
        for path, text in draft.templates:
            _check_template(c, path, text, instances)


def _instance_names(c: Collector, drafts: list[_Draft]) -> set[str] | None:
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


def _service(c: Collector, value: object, path: str) -> _Draft:
    draft = _Draft(path=path)
    mark = c.mark()
    obj = check_object(c, value, path, required=_SERVICE_REQUIRED, optional=_SERVICE_OPTIONAL)
    if obj is None:
        return draft

    def sub(key: str) -> str:
        return key_path(path, key)

    if "name" in obj:
        draft.name = check_text(
            c, obj["name"], sub("name"), message=_SERVICE_NAME_RULE, pattern=_SERVICE_NAME
        )
    image = _image(c, obj["image"], sub("image")) if "image" in obj else None
    if "monitor" in obj:
        draft.monitor = check_bool(c, obj["monitor"], sub("monitor"))
    essential = None
    if "essential_count" in obj:
        essential = check_int(
            c,
            obj["essential_count"],
            sub("essential_count"),
            lo=1,
            hi=MAX_TOTAL_COUNT,
            rule=_COUNT_RULE,
        )
    if "total_count" in obj:
        draft.total_count = check_int(
            c, obj["total_count"], sub("total_count"), lo=1, hi=MAX_TOTAL_COUNT, rule=_COUNT_RULE
        )
    if essential is not None and draft.total_count is not None and draft.total_count < essential:
        c.error(sub("total_count"), f"must be >= essential_count ({essential})")
    startup_order = None
    if "startup_order" in obj:
        startup_order = check_int(
            c,
            obj["startup_order"],
            sub("startup_order"),
            lo=MIN_STARTUP_ORDER,
            hi=MAX_STARTUP_ORDER,
            rule="must be an integer",
            lo_rule=f"must be between {MIN_STARTUP_ORDER} and {MAX_STARTUP_ORDER}",
            hi_rule=f"must be between {MIN_STARTUP_ORDER} and {MAX_STARTUP_ORDER}",
        )
    resources = _resources(c, obj["resources"], sub("resources")) if "resources" in obj else None
    ports = _ports(c, obj["ports"], sub("ports")) if "ports" in obj else None
    environment = (
        _environment(c, obj["environment"], sub("environment"), draft)
        if "environment" in obj
        else None
    )
    volumes = _volumes(c, obj["volumes"], sub("volumes")) if "volumes" in obj else None
    command = None
    if obj.get("command") is not None:
        command = check_text(
            c,
            obj["command"],
            sub("command"),
            message="must be a non-empty string or null",
            min_len=1,
            max_len=MAX_TEXT,
        )
        if command is not None:
            draft.templates.append((sub("command"), command))
            draft.text_size += len(command)
    work_dir = None
    if obj.get("work_dir") is not None:
        work_dir = _absolute_path(
            c, obj["work_dir"], sub("work_dir"), "must be an absolute path or null"
        )
    labels = _labels(c, obj["labels"], sub("labels")) if "labels" in obj else []
    if "network" in obj:
        network = check_text(
            c, obj["network"], sub("network"), message="must be a non-empty string", min_len=1
        )
        if network is not None:
            c.warn(sub("network"), "ignored: every execution has a network of its own")
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
    )
    return draft


def _image(c: Collector, value: object, path: str) -> str | None:
    image = check_text(c, value, path, message="must be a non-empty string", min_len=1)
    if image is None:
        return None
    if not images.is_reference(image):
        c.error(path, images.MESSAGE)
        return None
    tagged = images.with_tag(image)
    if tagged is None:
        return image
    c.warn(path, f"no tag, using {tagged!r}")
    return tagged


def _absolute_path(c: Collector, value: object, path: str, message: str) -> str | None:
    text = check_text(c, value, path, message=message, min_len=1)
    if text is not None and not text.startswith("/"):
        c.error(path, message)
        return None
    return text


def _range(c: Collector, value: object, path: str) -> tuple[object, object] | None:
    obj = check_object(c, value, path, required=_RANGE_KEYS)
    if obj is None or "min" not in obj or "max" not in obj:
        return None
    return obj["min"], obj["max"]


def _memory(c: Collector, value: object, path: str) -> MemoryRange | None:
    pair = _range(c, value, path)
    if pair is None:
        return None
    mark = c.mark()
    bounds: list[int | None] = []
    for key, raw in zip(_RANGE_KEYS, pair, strict=True):
        bounds.append(
            None
            if raw is None
            else check_int(
                c,
                raw,
                key_path(path, key),
                lo=MIN_MEMORY,
                hi=MAX_MEMORY,
                rule=_MEMORY_RULE,
                lo_rule=_MEMORY_LOW,
                hi_rule=_MEMORY_HIGH,
            )
        )
    low, high = bounds
    if low is not None and high is not None and high < low:
        c.error(key_path(path, "max"), f"must be >= memory.min ({low}) or null")
    if c.failed_since(mark):
        return None
    return MemoryRange(min=low, max=high)


def _cores(c: Collector, value: object, path: str) -> CoresRange | None:
    pair = _range(c, value, path)
    if pair is None:
        return None
    mark = c.mark()
    bounds: list[float | None] = []
    for key, raw in zip(_RANGE_KEYS, pair, strict=True):
        bounds.append(
            None
            if raw is None
            else check_positive(
                c,
                raw,
                key_path(path, key),
                hi=MAX_CORES,
                rule=_CORES_RULE,
                lo_rule=_CORES_LOW,
                hi_rule=_CORES_HIGH,
            )
        )
    low, high = bounds
    if low is not None and high is not None and high < low:
        c.error(key_path(path, "max"), f"must be >= cores.min ({low:g}) or null")
    if c.failed_since(mark):
        return None
    return CoresRange(min=low, max=high)


def _resources(c: Collector, value: object, path: str) -> Resources | None:
    obj = check_object(c, value, path, required=("memory", "cores"), optional=("shm", "shm_size"))
    if obj is None:
        return None
    mark = c.mark()
    memory = _memory(c, obj["memory"], key_path(path, "memory")) if "memory" in obj else None
    cores = _cores(c, obj["cores"], key_path(path, "cores")) if "cores" in obj else None
    shm = None
    shm_key = "shm"
    if "shm_size" in obj:  # the original format's name for it
        shm_key = "shm_size"
        if "shm" in obj:
            c.error(key_path(path, "shm_size"), "give either shm or shm_size, not both")
        else:
            c.warn(key_path(path, "shm_size"), "read as resources.shm")
    if obj.get(shm_key) is not None:
        shm = check_int(
            c,
            obj[shm_key],
            key_path(path, shm_key),
            lo=0,
            hi=MAX_MEMORY,
            rule="must be an integer >= 0 or null",
            hi_rule=_MEMORY_HIGH,
        )
    if c.failed_since(mark):
        return None
    return Resources(memory=known(memory), cores=known(cores), shm=shm)


def _ports(c: Collector, value: object, path: str) -> list[Port] | None:
    items = check_array(c, value, path, max_items=MAX_PORTS)
    if items is None:
        return None
    mark = c.mark()
    ports: list[Port] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        port = _port(c, item, item_path(path, i))
        if port is None:
            continue
        other = seen.setdefault(port.port_number, i)
        if other != i:
            c.error(
                key_path(item_path(path, i), "port_number"),
                f"duplicate port number {port.port_number} (also ports[{other}])",
            )
        ports.append(port)
    return None if c.failed_since(mark) else ports


def _port(c: Collector, value: object, path: str) -> Port | None:
    obj = check_object(
        c,
        value,
        path,
        required=("name", "port_number", "protocol", "url_template"),
        optional=("proxy",),
    )
    if obj is None:
        return None
    mark = c.mark()
    name = number = protocol = template = None
    if "name" in obj:
        name = check_text(
            c,
            obj["name"],
            key_path(path, "name"),
            message="must be a string of at least 3 characters",
            min_len=3,
        )
    if "port_number" in obj:
        number = check_int(
            c,
            obj["port_number"],
            key_path(path, "port_number"),
            lo=1,
            hi=65535,
            rule="must be an integer from 1 to 65535",
            hi_rule="must be an integer from 1 to 65535",
        )
    if "protocol" in obj:
        protocol = obj["protocol"]
        if protocol not in ("tcp", "udp"):
            c.error(key_path(path, "protocol"), "must be 'tcp' or 'udp'")
    if "url_template" in obj:
        template = check_text(c, obj["url_template"], key_path(path, "url_template"))
        if template is not None:
            _check_url_template(c, key_path(path, "url_template"), template)
    proxy = False
    if "proxy" in obj:
        proxy = check_bool(c, obj["proxy"], key_path(path, "proxy"))
    if c.failed_since(mark):
        return None
    return Port(
        name=known(name),
        port_number=known(number),
        protocol=str(protocol),
        url_template=known(template),
        proxy=known(proxy),
    )


def _check_url_template(c: Collector, path: str, text: str) -> None:
    try:
        names = templates.variables(text)
    except templates.TemplateSyntaxError:
        c.error(path, templates.SYNTAX_MESSAGE)
        return
    for name in dict.fromkeys(names):
        if name not in templates.URL_VARIABLES:
            c.error(
                path,
                f"unknown template variable {{{shorten(name)}}};"
                " only {ip_port} and {proxy_path} are allowed",
            )


def _environment(
    c: Collector, value: object, path: str, draft: _Draft
) -> list[tuple[str, str]] | None:
    items = check_array(c, value, path, max_items=MAX_ENVIRONMENT)
    if items is None:
        return None
    mark = c.mark()
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
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
            draft.templates.append((item_path(item_at, 1), text))
        if name is None or text is None:
            continue
        other = seen.setdefault(name, i)
        if other != i:
            c.error(item_path(item_at, 0), f"duplicate variable {name} (also environment[{other}])")
        elif name in templates.INJECTED_VARIABLES:
            c.warn(item_path(item_at, 0), f"{name} is set by Zoe; this value is ignored")
        else:
            draft.text_size += len(name) + len(text)
            pairs.append((name, text))
    return None if c.failed_since(mark) else pairs


def _volumes(c: Collector, value: object, path: str) -> list[Volume] | None:
    items = check_array(c, value, path, max_items=MAX_VOLUMES)
    if items is None:
        return None
    mark = c.mark()
    volumes: list[Volume] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        item_at = item_path(path, i)
        obj = check_object(c, item, item_at, required=("name", "path", "read_only"))
        if obj is None:
            continue
        item_mark = c.mark()
        name = mount = read_only = None
        if "name" in obj:
            name = check_text(
                c,
                obj["name"],
                key_path(item_at, "name"),
                message=_VOLUME_NAME_RULE,
                pattern=_VOLUME_NAME,
            )
        if "path" in obj:
            mount = _absolute_path(
                c, obj["path"], key_path(item_at, "path"), "must be an absolute path"
            )
        if "read_only" in obj:
            read_only = check_bool(c, obj["read_only"], key_path(item_at, "read_only"))
        if mount is not None:
            other = seen.setdefault(mount, i)
            if other != i:
                c.error(key_path(item_at, "path"), f"duplicate mount path (also volumes[{other}])")
        if not c.failed_since(item_mark):
            volumes.append(Volume(name=known(name), path=known(mount), read_only=known(read_only)))
    return None if c.failed_since(mark) else volumes


def _labels(c: Collector, value: object, path: str) -> list[str] | None:
    items = check_array(c, value, path, max_items=MAX_LABELS)
    if items is None:
        return None
    mark = c.mark()
    labels: list[str] = []
    seen: dict[str, int] = {}
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
        other = seen.setdefault(label, i)
        if other != i:
            c.error(item_path(path, i), f"duplicate label (also labels[{other}])")
        labels.append(label)
    return None if c.failed_since(mark) else labels

"""Validation of the nested parts of a service: resources, ports and volumes."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from common.zapp import templates
from common.zapp.checks import (
    Collector,
    Unique,
    check_absolute_path,
    check_array,
    check_bool,
    check_int,
    check_number,
    check_object,
    check_text,
    item_path,
    key_path,
    known,
    shorten,
)
from common.zapp.limits import (
    MAX_CORES,
    MAX_MEMORY,
    MAX_PORTS,
    MAX_VOLUMES,
    MIN_CORES,
    MIN_MEMORY,
)
from common.zapp.model import CoresRange, MemoryRange, Port, Resources, Volume
from common.zapp.specs import WORKSPACE, WORKSPACE_PREFIX

N = TypeVar("N", int, float)

_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{1,254}")
_RANGE_KEYS = ("min", "max")
_MEMORY_RULE = f"must be an integer >= {MIN_MEMORY} (6 MiB) or null"
_MEMORY_LOW = f"must be >= {MIN_MEMORY} (6 MiB, the engine's smallest memory limit) or null"
_MEMORY_HIGH = f"must be <= {MAX_MEMORY} (64 TiB)"
_CORES_RULE = f"must be a number >= {MIN_CORES:g} or null"
_CORES_LOW = f"must be >= {MIN_CORES:g} (the engine's smallest CPU limit) or null"
_MOUNT_COLON = "must not contain ':' (Docker would read what follows as mount options)"
_CORES_HIGH = f"must be <= {MAX_CORES:g}"
_WORKSPACE_RULE = (
    f"must not start with {WORKSPACE_PREFIX!r}: those are users' workspaces; name the"
    f" volume {WORKSPACE!r} to mount the workspace of the user who starts the execution"
)
# An execution's network claim is the volume <network>.network (services/executor/engine).
CLAIM_SUFFIX = ".network"
_VOLUME_NAME_RULE = (
    "must be a Docker volume name: 2 to 255 letters, digits, '_', '.' and '-',"
    " starting with a letter or digit"
)


def _bounds(
    c: Collector,
    value: object,
    path: str,
    check: Callable[[object, str], N | None],
    name: str,
) -> tuple[N | None, N | None] | None:
    """The `{min, max}` object at `path`, each bound null or passing `check`, max >= min."""
    mark = c.mark()
    obj = check_object(c, value, path, required=_RANGE_KEYS)
    if obj is None:
        return None
    low, high = (
        None if obj.get(key) is None else check(obj[key], key_path(path, key))
        for key in _RANGE_KEYS
    )
    if low is not None and high is not None and high < low:
        shown = f"{low:g}" if isinstance(low, float) else str(low)
        c.error(key_path(path, "max"), f"must be >= {name}.min ({shown}) or null")
    if c.failed_since(mark):
        return None
    return low, high


def _memory(c: Collector, value: object, path: str) -> MemoryRange | None:
    def check(raw: object, at: str) -> int | None:
        return check_int(
            c,
            raw,
            at,
            lo=MIN_MEMORY,
            hi=MAX_MEMORY,
            rule=_MEMORY_RULE,
            lo_rule=_MEMORY_LOW,
            hi_rule=_MEMORY_HIGH,
        )

    bounds = _bounds(c, value, path, check, "memory")
    return None if bounds is None else MemoryRange(min=bounds[0], max=bounds[1])


def _cores(c: Collector, value: object, path: str) -> CoresRange | None:
    def check(raw: object, at: str) -> float | None:
        return check_number(
            c,
            raw,
            at,
            lo=MIN_CORES,
            hi=MAX_CORES,
            rule=_CORES_RULE,
            lo_rule=_CORES_LOW,
            hi_rule=_CORES_HIGH,
        )

    bounds = _bounds(c, value, path, check, "cores")
    return None if bounds is None else CoresRange(min=bounds[0], max=bounds[1])


def check_resources(c: Collector, value: object, path: str) -> Resources | None:
    """The `resources` of a service: memory and cores ranges, and shm."""
    mark = c.mark()
    obj = check_object(c, value, path, required=("memory", "cores"), optional=("shm", "shm_size"))
    if obj is None:
        return None
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


def check_ports(c: Collector, value: object, path: str) -> list[Port] | None:
    """The `ports` of a service; port numbers are unique within it."""
    items = check_array(c, value, path, max_items=MAX_PORTS)
    if items is None:
        return None
    mark = c.mark()
    ports: list[Port] = []
    unique = Unique(c, "ports")
    for i, item in enumerate(items):
        port = _port(c, item, item_path(path, i))
        if port is None:
            continue
        number_path = key_path(item_path(path, i), "port_number")
        unique.check(port.port_number, i, number_path, f"duplicate port number {port.port_number}")
        ports.append(port)
    return None if c.failed_since(mark) else ports


def _port(c: Collector, value: object, path: str) -> Port | None:
    mark = c.mark()
    obj = check_object(
        c,
        value,
        path,
        required=("name", "port_number", "protocol", "url_template"),
        optional=("proxy",),
    )
    if obj is None:
        return None
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
    proxy: bool | None = False
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


def _reserved(c: Collector, name: str, path: str) -> bool:
    """Refuse a volume name that is not the ZApp's own: a user's workspace by its
    stored name (another user's, whoever starts it) or an execution's network claim."""
    if name.startswith(WORKSPACE_PREFIX):
        c.error(path, _WORKSPACE_RULE)
        return True
    if name.endswith(CLAIM_SUFFIX):
        c.error(path, f"must not end with {CLAIM_SUFFIX!r}: Zoe names its own volumes so")
        return True
    return False


def check_volumes(c: Collector, value: object, path: str) -> list[Volume] | None:
    """The `volumes` of a service; mount paths are unique within it.

    A name is the ZApp's own volume, or `workspace` (the user's own workspace); other
    users' workspaces (`workspace-*`) and Zoe's network claims (`*.network`) are refused.
    """
    items = check_array(c, value, path, max_items=MAX_VOLUMES)
    if items is None:
        return None
    mark = c.mark()
    volumes: list[Volume] = []
    unique = Unique(c, "volumes")
    for i, item in enumerate(items):
        item_at = item_path(path, i)
        item_mark = c.mark()
        obj = check_object(c, item, item_at, required=("name", "path", "read_only"))
        if obj is None:
            continue
        name = mount = read_only = None
        if "name" in obj:
            name = check_text(
                c,
                obj["name"],
                key_path(item_at, "name"),
                message=_VOLUME_NAME_RULE,
                pattern=_VOLUME_NAME,
            )
            if name is not None and _reserved(c, name, key_path(item_at, "name")):
                name = None
        if "path" in obj:
            mount = check_absolute_path(
                c, obj["path"], key_path(item_at, "path"), "must be an absolute path"
            )
            if mount is not None and ":" in mount:
                c.error(key_path(item_at, "path"), _MOUNT_COLON)
                mount = None
        if "read_only" in obj:
            read_only = check_bool(c, obj["read_only"], key_path(item_at, "read_only"))
        if mount is not None:
            unique.check(mount, i, key_path(item_at, "path"), "duplicate mount path")
        if not c.failed_since(item_mark):
            volumes.append(Volume(name=known(name), path=known(mount), read_only=known(read_only)))
    return None if c.failed_since(mark) else volumes

"""What users may ask, whichever way they ask it (HTTP or the AMQP request interface).

Each action validates everything before storing anything and raises a ``UserError``
naming every offending field.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import asyncpg
import msgspec

from common.errors import FieldError, InvalidRequest, NotFound
from common.zapp import LoadedDescription, load_description
from common.zapp.limits import MAX_EXECUTION_NAME
from services.api import auth, limits, quotas, store
from services.api.auth import Caller
from services.api.shop import Shop

NAME_MAX = MAX_EXECUTION_NAME  # the size count of a description assumes it
REQUEST_ID_MAX = 200
SUBMIT_FIELDS = {"name", "application", "zapp", "params", "resources", "priority"}


async def submit(
    pool: asyncpg.Pool,
    shop: Shop,
    deployment: str,
    body: dict[str, Any],
    caller: Caller,
    *,
    request_id: str | None = None,
    parsed: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Create an execution of ``caller`` from a request body; returns it and whether it
    is new. ``parsed``: the body comes from `limits.loads`, which checked it already.

    ``request_id`` makes the request idempotent: the same id again with the same body
    returns the execution the first one created; with another body it is a Conflict.
    The caller needs the ``submit`` capability, a priority within their role's ceiling
    and room in their quota (403 otherwise, nothing stored).
    """
    caller.require(auth.SUBMIT)
    if not parsed:
        limits.check_json(body)  # an AMQP body is not parsed by `limits.loads`
    errors: list[FieldError] = [
        FieldError(k, "unknown field") for k in sorted(set(body) - SUBMIT_FIELDS)
    ]
    name = body.get("name")
    if not isinstance(name, str) or not (1 <= len(name) <= NAME_MAX) or not name.isprintable():
        errors.append(
            FieldError("name", f"must be a printable string of 1 to {NAME_MAX} characters")
        )
    priority = body.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool) or not -100 <= priority <= 100:
        errors.append(FieldError("priority", "must be an integer from -100 to 100"))
    if request_id is not None and not (
        0 < len(request_id) <= REQUEST_ID_MAX and request_id.isascii() and request_id.isprintable()
    ):
        errors.append(
            FieldError("request_id", f"must be 1 to {REQUEST_ID_MAX} printable ASCII characters")
        )
    loaded = None
    try:
        loaded = description(shop, body, caller)
    except InvalidRequest as exc:
        errors += exc.errors
    if errors or loaded is None:
        raise InvalidRequest("invalid execution request", errors)
    if priority > caller.max_priority:
        raise auth.Forbidden(
            "priority above the role's ceiling",
            [
                FieldError(
                    "priority", f"role {caller.role!r} may ask for at most {caller.max_priority}"
                )
            ],
        )
    if loaded.description.needs_root and not caller.can(auth.RUN_AS_ROOT):
        root = [
            FieldError(f"services[{i}].run_as_root", f"role {caller.role!r} may not run as root")
            for i, service in enumerate(loaded.description.services)
            if service.run_as_root
        ]
        raise auth.Forbidden("this ZApp's containers run as root", root)
    out, created = await store.create_execution(
        pool,
        name=str(name),
        user_name=caller.name,
        description=loaded.description,
        deployment=deployment,
        priority=int(priority),
        request_id=request_id,
        request_digest=digest(body) if request_id is not None else None,
        quota=await quotas.quota_of(pool, caller.name),
    )
    out["warnings"] = list(loaded.warnings)
    return out, created


def digest(body: dict[str, Any]) -> str:
    """A hash of what a submission asks for, to tell a retry (the same) from another
    request under the same idempotency key: the body's JSON with sorted keys and the
    default priority made explicit."""
    normal = {**body, "priority": body.get("priority", 0)}
    text = json.dumps(normal, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def description(shop: Shop, body: dict[str, Any], caller: Caller) -> LoadedDescription:
    """The description to run: ``application`` as given, or ``zapp`` from the shop."""
    if ("application" in body) == ("zapp" in body):
        raise InvalidRequest(
            "invalid execution request",
            [FieldError("application", "give exactly one of application or zapp")],
        )
    if "application" in body:
        if "params" in body or "resources" in body:
            raise InvalidRequest(
                "invalid execution request",
                [FieldError("params", "params and resources apply to a shop zapp only")],
            )
        try:
            return _LOADED.load(body["application"])
        except InvalidRequest as exc:
            raise InvalidRequest(
                exc.message,
                [FieldError(_join("application", e.path), e.message) for e in exc.errors],
            ) from exc
    zapp_id = body["zapp"]
    if not isinstance(zapp_id, str):
        raise InvalidRequest("invalid execution request", [FieldError("zapp", "must be a string")])
    try:
        return shop.render(zapp_id, body.get("params"), body.get("resources"), caller)
    except NotFound as exc:
        raise InvalidRequest(exc.message, [FieldError("zapp", exc.message)]) from exc


class _Loaded:
    """The descriptions loaded last, by their JSON text: a client submits the same
    application again and again, and checking it is most of a submission's work. Only
    a valid one is kept (a refused one is checked anew, to say why); a large one is
    not kept at all. `LoadedDescription` is frozen, and nothing may change the lists it
    holds once loaded: they are shared by every submission of that text.

    The one instance is the process's (`_LOADED`), a memo of a pure function like an
    ``lru_cache``: what it holds is what `load_description` would give again, so no
    caller can tell it is there. Its keys are the JSON text of values `limits` checked
    (no NaN, no infinity, nesting bounded): one text is one value."""

    ENTRIES = 128
    LARGEST = 32 * 1024  # bytes of JSON text

    def __init__(self) -> None:
        self._by_text: dict[bytes, LoadedDescription] = {}

    def load(self, application: Any) -> LoadedDescription:
        try:
            text = msgspec.json.encode(application)
        except (TypeError, ValueError, OverflowError):
            return load_description(application)  # (refused there, saying why)
        loaded = self._by_text.pop(text, None)
        if loaded is None:
            loaded = load_description(application)
            if len(text) > self.LARGEST:
                return loaded
            if len(self._by_text) >= self.ENTRIES:
                del self._by_text[next(iter(self._by_text))]  # the least recently used
        self._by_text[text] = loaded
        return loaded


_LOADED = _Loaded()


def _join(prefix: str, path: str) -> str:
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"

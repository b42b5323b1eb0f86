"""The one exception hierarchy of Zoe.

User errors (a bad ZApp, an unknown id, a refused request) are `UserError`s and map to a
4xx HTTP status or an error reply; anything else is a bug and surfaces with a traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ZoeError(Exception):
    """Base of every error Zoe raises on purpose."""


class StartRefused(ZoeError):
    """A service cannot run with its settings or environment (an executor told of a swarm
    its engine is not in, say): logged as one plain error, and the process exits 2."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One broken rule: the JSON path of the offending value and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UserError(ZoeError):
    """A request that cannot be honoured because of what the user sent or asked for."""

    status = 400

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors or [])

    def to_dict(self) -> dict[str, object]:
        return {
            "error": self.message,
            "errors": [{"path": e.path, "message": e.message} for e in self.errors],
        }


class InvalidRequest(UserError):
    """The request body or a parameter is malformed; `errors` names every offending field."""

    status = 400


class InvalidZApp(InvalidRequest):
    """A ZApp description or manifest breaks the format; `errors` lists every violation."""

    status = 422


class Forbidden(UserError):
    """The caller is known but may not do this."""

    status = 403


class NotFound(UserError):
    """The named execution, instance, node or ZApp does not exist."""

    status = 404


class TooManyRequests(UserError):
    """The service holds as many of these at once as it may: retry later."""

    status = 429


class Conflict(UserError):
    """The request is valid but the object's current state forbids it."""

    status = 409


class TooLarge(UserError):
    """The request or message is larger than the limit it is held to."""

    status = 413


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(.*)`")


def field_error(exc: Exception) -> FieldError:
    """The field a decoding error (msgspec's "... - at `$.a.b`") is about, as a FieldError
    with the JSON path without its ``$.``; a nesting too deep or a body that is not JSON
    at all is about the whole document (path "")."""
    if isinstance(exc, RecursionError):
        return FieldError("", "nested too deeply")
    text = str(exc)
    message, sep, where = text.partition(" - at `")
    path = where.rstrip("`") if sep else ""
    path = path.removeprefix("$").removeprefix(".")
    unknown = _UNKNOWN_FIELD.fullmatch(message)
    if unknown:  # msgspec names an unknown field in its message, not in the path
        path = f"{path}.{unknown[1]}" if path else unknown[1]
        message = "unknown field"
    return FieldError(path, message or type(exc).__name__)


def invalid_message(exc: Exception) -> InvalidRequest:
    """The user error of a message or body that does not decode."""
    return InvalidRequest("invalid message", [field_error(exc)])

"""The error collector and the primitive checks every ZApp validator is built from.

Checks record what is wrong in a `Collector` and return `None` for a value that is
missing, null or invalid; callers build their result only when no error was recorded, so
a `None` never reaches a model object in place of a required value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

from common.errors import FieldError, InvalidZApp
from common.zapp.limits import MAX_ERRORS, MAX_STRING

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN_KEY = 40


class TooManyErrors(Exception):
    """Raised by `Collector.error` once the limit is reached, to stop validating early."""


class Collector:
    """Every broken rule and every warning of one validation run, in the order found."""

    def __init__(self, max_errors: int = MAX_ERRORS) -> None:
        self.errors: list[FieldError] = []
        self.warnings: list[str] = []
        self._max_errors = max_errors
        self.truncated = False

    def error(self, path: str, message: str) -> None:
        """Record a broken rule at `path` ("" for the whole document)."""
        if len(self.errors) >= self._max_errors:
            self.truncated = True
            raise TooManyErrors
        self.errors.append(FieldError(path, message))

    def warn(self, path: str, message: str) -> None:
        """Record something accepted but changed or ignored."""
        self.warnings.append(f"{path}: {message}" if path else message)

    def mark(self) -> int:
        """A position to compare with `failed_since` after checking a part."""
        return len(self.errors)

    def failed_since(self, mark: int) -> bool:
        """Whether an error was recorded after `mark` was taken."""
        return len(self.errors) > mark

    def all_errors(self) -> list[FieldError]:
        """The errors, with a final line when some were left out."""
        if not self.truncated:
            return list(self.errors)
        return [
            *self.errors,
            FieldError("", f"too many errors; only the first {len(self.errors)} are listed"),
        ]

    def raise_if_errors(self, message: str) -> None:
        """Raise `InvalidZApp(message)` listing every error, if there is any."""
        if self.errors:
            raise InvalidZApp(message, errors=self.all_errors())


class Unique:
    """Reports every item of an array whose key an earlier item already had."""

    def __init__(self, c: Collector, array: str) -> None:
        self._c = c
        self._array = array
        self._seen: dict[object, int] = {}

    def check(self, key: object, index: int, path: str, message: str) -> bool:
        """Error at ``path`` with ``message`` if ``key`` was seen at an earlier index;
        returns whether the key is new."""
        other = self._seen.setdefault(key, index)
        if other != index:
            self._c.error(path, f"{message} (also {self._array}[{other}])")
        return other == index


def known(value: T | None) -> T:
    """Unwrap a value that validation has proved present (no error was recorded)."""
    if value is None:
        raise AssertionError("a validated value is missing")
    return value


def shorten(text: str, limit: int = 64) -> str:
    """`text`, cut to `limit` characters with an ellipsis, for messages."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def key_path(path: str, key: object) -> str:
    """The path of `key` inside the object at `path`: `a.b`, or `a["odd key"]`."""
    if isinstance(key, str) and _IDENTIFIER.fullmatch(key):
        name = shorten(key, _SHOWN_KEY)
        return f"{path}.{name}" if path else name
    try:
        shown = shorten(repr(key), _SHOWN_KEY)
    except ValueError:  # an int too long to print
        shown = f"<{type(key).__name__}>"
    return f"{path}[{shown}]"


def item_path(path: str, index: int) -> str:
    """The path of item `index` of the array at `path`."""
    return f"{path}[{index}]"


def check_object(
    c: Collector,
    value: object,
    path: str,
    *,
    required: Iterable[str] = (),
    optional: Iterable[str] = (),
    message: str = "must be an object",
) -> Mapping[str, object] | None:
    """The object at `path`, reporting missing required keys and unknown keys."""
    if not isinstance(value, dict):
        c.error(path, message)
        return None
    required = tuple(required)
    allowed = set(required) | set(optional)
    for key in required:
        if key not in value:
            c.error(key_path(path, key), "is required")
    for key in value:
        if not (isinstance(key, str) and key in allowed):
            c.error(key_path(path, key), "unknown key")
    return value


def check_array(
    c: Collector, value: object, path: str, *, max_items: int, message: str = "must be an array"
) -> list[object] | None:
    """The array at `path`, at most `max_items` long."""
    if not isinstance(value, list | tuple):
        c.error(path, message)
        return None
    if len(value) > max_items:
        c.error(path, f"must have at most {max_items} items")
        return None
    return list(value)


def _clean(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(
    c: Collector,
    value: object,
    path: str,
    *,
    message: str = "must be a string",
    min_len: int = 0,
    max_len: int = MAX_STRING,
    pattern: re.Pattern[str] | None = None,
) -> str | None:
    """A string of `min_len`..`max_len` characters (matching `pattern`), storable as JSON text."""
    if not isinstance(value, str) or len(value) < min_len:
        c.error(path, message)
        return None
    if len(value) > max_len:
        c.error(path, f"must be at most {max_len} characters long")
        return None
    if not _clean(value):
        c.error(path, "must not contain NUL or unpaired surrogate characters")
        return None
    if pattern is not None and not pattern.fullmatch(value):
        c.error(path, message)
        return None
    return value


def check_bool(c: Collector, value: object, path: str) -> bool | None:
    """A JSON boolean (numbers are not booleans)."""
    if not isinstance(value, bool):
        c.error(path, "must be a boolean")
        return None
    return value


def as_int(value: object) -> int | None:
    """`value` as an integer: an int (not a bool) or a float with no fractional part."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def as_number(value: object) -> float | None:
    """`value` as a finite float, or +-inf for an integer too large for a float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def check_int(
    c: Collector,
    value: object,
    path: str,
    *,
    lo: int,
    hi: int,
    rule: str,
    lo_rule: str | None = None,
    hi_rule: str | None = None,
) -> int | None:
    """An integer in `lo`..`hi`; `rule` names the whole rule, used for a non-integer."""
    number = as_int(value)
    if number is None:
        c.error(path, rule)
        return None
    if number < lo:
        c.error(path, lo_rule or rule)
        return None
    if number > hi:
        c.error(path, hi_rule or f"must be <= {hi}")
        return None
    return number


def check_number(
    c: Collector,
    value: object,
    path: str,
    *,
    lo: float,
    hi: float,
    rule: str,
    lo_rule: str,
    hi_rule: str,
) -> float | None:
    """A number in `lo`..`hi`; `rule` names the whole rule, used for a non-number."""
    number = as_number(value)
    if number is None:
        c.error(path, rule)
        return None
    if number < lo:
        c.error(path, lo_rule)
        return None
    if number > hi:
        c.error(path, hi_rule)
        return None
    return number


def check_absolute_path(c: Collector, value: object, path: str, message: str) -> str | None:
    """A string starting with `/`; `message` names the rule."""
    text = check_text(c, value, path, message=message, min_len=1)
    if text is not None and not text.startswith("/"):
        c.error(path, message)
        return None
    return text

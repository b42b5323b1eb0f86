"""What one request may make the api read, parse or hold, HTTP or AMQP alike.

Every bound here turns an input the code below could not handle (a body nested too
deep for the parser, a number too long to convert, a string PostgreSQL refuses, a
client that connects and never reads) into a user error with a 4xx status, before
anything is stored or held for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import msgspec
from aiohttp import web

from common.errors import FieldError, InvalidRequest, TooManyRequests

# Bytes of a request body: HTTP (aiohttp's client_max_size) and AMQP alike.
MAX_BODY = 4 * 1024 * 1024
# Nesting of arrays and objects in a body; a ZApp description needs fewer than 10.
MAX_JSON_DEPTH = 64
# Digits of a JSON integer: every integer Zoe stores fits in 64 bits (19 digits).
MAX_INT_DIGITS = 20
# Ids are PostgreSQL bigints.
MAX_ID = 2**63 - 1
# Long-lived HTTP responses held at once by one api process: server-sent event streams
# (GET /api/v1/events) and log follows (GET .../logs?follow=1). Beyond them: 429.
MAX_EVENT_STREAMS = 256
MAX_LOG_FOLLOWS = 64
# Seconds one write of a long-lived response may wait for a client that stopped reading
# (its socket buffers are full) before the connection is dropped.
WRITE_TIMEOUT = 30.0

# Characters PostgreSQL cannot store in text or jsonb (NUL), or that are no character at
# all (a surrogate left alone after JSON decoding: "\ud800", or a header byte that is not
# UTF-8, which aiohttp decodes with surrogateescape).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


TooBusy = TooManyRequests  # the api holds as many connections of this kind as it may


def storable(text: str) -> bool:
    """Whether PostgreSQL can store ``text`` as it is (no NUL, no lone surrogate)."""
    return _UNSTORABLE.search(text) is None


def ascii_int(raw: str, maximum: int = MAX_ID) -> int | None:
    """``raw`` as a non-negative integer up to ``maximum`` if it is ASCII digits only
    (``str.isdigit`` accepts superscripts and other scripts' digits; ``int`` accepts "+1", " 1" and "1_0")."""
    if not raw or len(raw) > len(str(maximum)) or not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value <= maximum else None


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _parse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unsupported_charset(charset: str) -> InvalidRequest:
    return InvalidRequest(
        "unsupported charset", [FieldError("", f"cannot decode a body in charset {charset!r}")]
    )


def decode_text(body: bytes, charset: str | None) -> str:
    """A request body as text in the charset of its Content-Type (UTF-8 if none), or a 400."""
    encoding = charset or "utf-8"
    try:
        return body.decode(encoding)
    except LookupError as exc:  # unknown, or no text encoding ("base64")
        raise _unsupported_charset(encoding) from exc
    except (UnicodeError, ValueError) as exc:
        raise InvalidRequest(
            "request body is not valid text", [FieldError("", f"not {encoding}: {exc}")]
        ) from exc


def loads(text: str) -> Any:
    """Parse a JSON document into values Zoe can store, or raise a 400 naming the problem:
    too deep, an integer too long, a number out of range, NaN, NUL or a lone surrogate.

    msgspec parses it first (several times faster); a document it refuses, or one with
    an integer too long, is parsed again by the standard library's parser, whose hooks
    and messages say what is wrong. msgspec refuses all the standard parser refuses, and
    more (NaN and infinite numbers, a lone surrogate, escaped or not, nesting past its
    limit)."""
    try:
        value = _FAST.decode(text)
    except (msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        pass  # (a lone surrogate in the text, from a charset that can say one, is no UTF-8)
    else:
        if not _long_int(value):
            check_json(value)
            return value
    return loads_slowly(text)


def loads_slowly(text: str) -> Any:
    """`loads` with the standard library's parser alone."""
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except RecursionError as exc:
        raise _too_deep("") from exc
    except ValueError as exc:  # json.JSONDecodeError too
        raise InvalidRequest("request body is not valid JSON", [FieldError("", str(exc))]) from exc
    check_json(value)
    return value


_FAST = msgspec.json.Decoder()
_INT_LIMIT = 10**MAX_INT_DIGITS  # the smallest integer of more digits


def _long_int(value: Any) -> bool:
    """Whether a decoded JSON value holds an integer of more than ``MAX_INT_DIGITS``
    digits (iterative: msgspec bounds the depth, not this)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is int:
            if not -_INT_LIMIT < item < _INT_LIMIT:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _too_deep(path: str) -> InvalidRequest:
    return InvalidRequest(
        "request body is nested too deep",
        [FieldError(path, f"arrays and objects may nest at most {MAX_JSON_DEPTH} deep")],
    )


def check_json(value: Any) -> None:
    """Raise InvalidRequest if a decoded JSON value cannot be stored: nesting deeper than
    ``MAX_JSON_DEPTH`` (reported alone), or strings with NUL or lone surrogates.

    Iterative, so a value of any depth (an AMQP body is decoded elsewhere) is safe.
    """
    errors: list[FieldError] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = []
    if isinstance(value, dict | list):
        stack.append((value, ()))
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            raise _too_deep(_path(path))
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if isinstance(key, str) and not storable(key):
                errors.append(FieldError(_path((*path, key)), "a key with NUL or a lone surrogate"))
            if isinstance(child, str):
                if not storable(child):
                    errors.append(FieldError(_path((*path, key)), "NUL or a lone surrogate"))
            elif isinstance(child, dict | list):
                stack.append((child, (*path, key)))
    if isinstance(value, str) and not storable(value):
        errors.append(FieldError("", "NUL or a lone surrogate"))
    if errors:
        errors.sort(key=lambda e: e.path)
        raise InvalidRequest("request body holds text PostgreSQL cannot store", errors)


def _path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return ascii(out)[1:-1] if not storable(out) else out


class Slots:
    """At most ``capacity`` holders at once of one kind of long-lived response."""

    def __init__(self, capacity: int, what: str) -> None:
        self.capacity = capacity
        self.what = what
        self.held = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the duration of the block, or TooBusy when all are taken."""
        if self.held >= self.capacity:
            raise TooBusy(f"too many {self.what} open (at most {self.capacity}); retry later")
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


async def write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write to a long-lived response; a client that has not taken the data within
    ``WRITE_TIMEOUT`` is dropped (its connection aborted, ConnectionResetError raised)
    rather than held, with what it was sent, for ever."""
    try:
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the client stopped reading") from None

"""Docker image references: the grammar Docker accepts, the implicit `:latest` tag and the
registry a reference names.
"""

from __future__ import annotations

import re

# Docker's reference grammar (distribution/reference), with the separators written so
# that Python's backtracking matcher stays linear: `-+` instead of the original `-*`.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")

MESSAGE = "must be a Docker image reference such as 'zapps/spark-master:1'"


def is_reference(image: str) -> bool:
    """Whether Docker would accept `image` as an image reference."""
    return _REFERENCE.fullmatch(image) is not None


def with_tag(image: str) -> str | None:
    """`image` with `:latest` appended when it has neither tag nor digest, else `None`."""
    match = _REFERENCE.fullmatch(image)
    if match is None or match.group("tag") or match.group("digest"):
        return None
    return f"{image}:latest"


def registry(image: str) -> str | None:
    """The registry host `image` names, or `None` for an image of the engine's default.

    As Docker reads a reference: the first path component is a registry host when it
    contains `.` or `:`, is `localhost`, or has an upper-case letter.
    """
    first, slash, _ = image.partition("/")
    if not slash:
        return None
    if "." in first or ":" in first or first == "localhost" or first.lower() != first:
        return first
    return None

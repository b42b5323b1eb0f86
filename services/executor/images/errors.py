"""Why an image cannot be made."""

from __future__ import annotations

from common.errors import ZoeError


class ImageError(ZoeError):
    """An image cannot be made; `ref` names it and `reason` says why."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"image {ref}: {reason}")
        self.ref = ref
        self.reason = reason


class UnknownImage(ImageError):
    """Neither a base image nor a ZApp Dockerfile defines this reference."""


class ImageBuildFailed(ImageError):
    """The recipe exists but building or importing it failed; nothing was tagged."""

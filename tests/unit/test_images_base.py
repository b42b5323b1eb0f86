"""Base image recipes refuse plainly when the host lacks their tool: nothing installs it."""

from __future__ import annotations

from typing import Any

import pytest

from services.executor.images import ImageBuildFailed
from services.executor.images.base import BaseOptions, make_debian


async def test_a_missing_debootstrap_names_the_debian_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    no_engine: Any = None  # refused before any call to the engine
    with pytest.raises(ImageBuildFailed) as info:
        await make_debian(no_engine, "zoe/debian:12", BaseOptions())
    assert info.value.ref == "zoe/debian:12"
    assert "install the Debian package debootstrap (deploy/install.sh does)" in str(info.value)

"""How calls to Docker fail, in the engine's terms: what aiodocker and aiohttp raise
becomes `EngineError`, and a 404 ("no such container, network, volume") means gone."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import aiohttp
from aiodocker.exceptions import DockerError

from services.executor.engine.port import EngineError

T = TypeVar("T")

# aiodocker's status for a request that got no answer (its connection failed or broke)
UNANSWERED = 900


class EngineUnanswered(EngineError):
    """No answer came (the connection failed or broke, or the call timed out): the call
    may or may not have been carried out by the engine."""


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Turn what aiodocker and aiohttp raise into `EngineError` (`EngineUnanswered`
    when the engine gave no answer)."""
    try:
        yield
    except DockerError as exc:
        if exc.status == UNANSWERED:
            raise EngineUnanswered(exc.message) from exc
        raise EngineError(exc.message) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise EngineUnanswered(f"docker engine unreachable: {exc!r}") from exc


async def unless_gone(call: Awaitable[T]) -> T | None:
    """Await a Docker call; None when Docker answers 404 (what it names does not exist).

    Any other refusal is raised as it is (inside `engine_errors` it becomes an
    `EngineError`). A call that answers None itself cannot be told apart: wrap it.
    """
    try:
        return await call
    except DockerError as exc:
        if exc.status == 404:
            return None
        raise

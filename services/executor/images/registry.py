"""The deployment's image registry (``ZOE_REGISTRY``, host:port): the one place images
are pulled from, and where the images built on a host are pushed.

An image ``zoe/spark:4.3`` is stored there as ``<registry>/zoe/spark:4.3``; a pulled one
is tagged ``zoe/spark:4.3`` on the engine, so containers name it as everywhere else.
Nothing is ever pulled from any other registry. Each engine must trust the registry
(``--insecure-registry <registry>`` for plain HTTP on an address other than 127.0.0.1).
"""

from __future__ import annotations

import aiodocker
import aiohttp
import structlog
from aiodocker.exceptions import DockerError

from services.executor.images.docker_http import post_stream, stream_error
from services.executor.images.errors import ImageError
from services.executor.images.refs import split_ref

log = structlog.get_logger("services.executor.images")

_EMPTY_AUTH = "e30="  # base64 of "{}": the registry needs no credentials


class RegistryUnavailable(ImageError):
    """The registry did not answer (or failed): worth trying again later."""


def registry_ref(registry: str, ref: str) -> str:
    """The name of ``ref`` in the registry."""
    return f"{registry}/{ref}"


def _missing(message: str) -> bool:
    """Whether the engine's error says the registry answered that it lacks the image."""
    text = message.lower()
    return "manifest unknown" in text or "not found" in text or "name unknown" in text


async def pull(docker: aiodocker.Docker, registry: str, ref: str) -> bool:
    """Pull ``ref`` from the registry and tag it ``ref``; False when the registry does
    not have it, `RegistryUnavailable` when it does not answer."""
    repo, tag = split_ref(registry_ref(registry, ref))
    try:
        lines = await post_stream(
            docker, "images/create", [("fromImage", repo), ("tag", tag)], None, "text/plain"
        )
    except DockerError as exc:
        if exc.status == 404 or _missing(exc.message):
            return False
        raise RegistryUnavailable(
            ref, f"registry {registry} did not answer: {exc.message}"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RegistryUnavailable(ref, f"docker engine unreachable: {exc!r}") from exc
    error = stream_error(lines)
    if error is not None:
        if _missing(error):
            return False
        raise RegistryUnavailable(ref, f"registry {registry} did not answer: {error}")
    local_repo, local_tag = split_ref(ref)
    try:
        await docker.images.tag(registry_ref(registry, ref), local_repo, tag=local_tag)
    except DockerError as exc:
        raise ImageError(ref, f"pulled from {registry} but not tagged: {exc.message}") from exc
    log.info("image.pulled", ref=ref, registry=registry)
    return True


async def push(docker: aiodocker.Docker, registry: str, ref: str) -> None:
    """Push the local image ``ref`` to the registry (as ``<registry>/<ref>``);
    `RegistryUnavailable` when the registry does not take it."""
    target = registry_ref(registry, ref)
    repo, tag = split_ref(target)
    try:
        await docker.images.tag(ref, repo, tag=tag)
        lines = await post_stream(
            docker,
            f"images/{repo}/push",
            [("tag", tag)],
            None,
            "text/plain",
            headers={"X-Registry-Auth": _EMPTY_AUTH},
        )
    except DockerError as exc:
        raise RegistryUnavailable(
            ref, f"push to registry {registry} failed: {exc.message}"
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise RegistryUnavailable(ref, f"docker engine unreachable: {exc!r}") from exc
    error = stream_error(lines)
    if error is not None:
        raise RegistryUnavailable(ref, f"registry {registry} did not answer: {error}")
    log.info("image.pushed", ref=ref, registry=registry)

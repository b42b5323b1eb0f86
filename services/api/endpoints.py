"""What the API says of an execution's endpoints.

An instance's endpoints are shown only while it runs and its execution is not ending:
after that the engine may give its host port to another container, perhaps another
user's. An endpoint served through the api's proxy (a URL whose path starts with
``/proxy/``) is given on the gateway's public URL (``ZOE_PUBLIC_URL``) when one is
configured, so that a link works from a laptop rather than naming a Docker host.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from common.states import EXECUTION_FINAL

ENDING = frozenset(EXECUTION_FINAL) | {"cleaning_up"}


def public(url: str, public_url: str) -> str:
    """``url`` on the public URL if it is a proxy path, else as it is."""
    if not public_url:
        return url
    parts = urlsplit(url)
    if not parts.path.startswith("/proxy/"):
        return url
    query = f"?{parts.query}" if parts.query else ""
    return public_url.rstrip("/") + parts.path + query


def shown(execution: dict[str, Any], public_url: str) -> dict[str, Any]:
    """``execution`` (as the store reads it) with the endpoints a caller may use."""
    ending = execution["state"] in ENDING
    for instance in execution.get("services", []):
        if ending or instance["state"] != "running":
            instance["endpoints"] = {}
        else:
            instance["endpoints"] = {
                name: public(url, public_url) for name, url in instance["endpoints"].items()
            }
    return execution

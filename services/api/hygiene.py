"""What every HTTP request must be before a route sees it.

- ``Host`` must be one of the api's names (421 otherwise): a page of another site whose
  name was made to resolve to the api's address (DNS rebinding) sends its own name, and
  is refused before it can read anything.
- A state-changing request (POST, PUT, PATCH, DELETE) that carries ``Origin`` must come
  from the api's own origin (the ``Host`` it was sent to) or one configured (403
  otherwise): another site's page cannot make a signed-in browser act.
- A route that takes a JSON body refuses any other ``Content-Type`` (415): an HTML form
  can send only form or text bodies across sites without asking first.

Each refusal is the api's JSON error, naming the header.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from common.errors import FieldError, UserError
from common.settings import ApiSettings
from services.api.responses import json_response
from services.api.routetable import UNSAFE, takes_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Names every api answers to, on any port: a client that used them is on this host.
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


@dataclass(frozen=True)
class Policy:
    """Accepted ``Host`` values (``name``: on any port, ``name:port``: that port only,
    ``*``: any) and ``Origin``s besides the api's own (``https://zoe.example.com``)."""

    hosts: frozenset[str]
    origins: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, host: str, port: int, hosts: Iterable[str] = (), origins: Iterable[str] = ()
    ) -> Policy:
        """The loopback names, the bind address ``host:port`` (unless a wildcard), and
        ``hosts``; ``origins`` as given (lower-case, without a trailing slash)."""
        names = set(LOOPBACK) | {h.strip().lower() for h in hosts if h.strip()}
        if host not in _WILDCARDS:
            bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
            names.add(f"{bracketed.lower()}:{port}")
        return cls(frozenset(names), frozenset(o.strip().lower().rstrip("/") for o in origins))

    @classmethod
    def from_settings(cls, settings: ApiSettings) -> Policy:
        """The policy of ``ZOE_HTTP_HOST``, ``ZOE_HTTP_PORT``, ``ZOE_HTTP_ALLOWED_HOSTS``
        and ``ZOE_HTTP_ALLOWED_ORIGINS``."""
        return cls.of(
            settings.http_host,
            settings.http_port,
            settings.http_allowed_hosts,
            settings.http_allowed_origins,
        )

    def host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header names this api."""
        if "*" in self.hosts:
            return True
        host = host.lower()
        name, port = split_host(host)
        return name in self.hosts or (port is not None and host in self.hosts)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a state-changing request from ``origin`` sent to ``host`` may act."""
        origin = origin.lower().rstrip("/")
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host.lower()


LOCAL = Policy.of("127.0.0.1", 0)


def split_host(host: str) -> tuple[str, str | None]:
    """``name`` and ``port`` of a ``Host`` value (``[::1]:8080`` -> ``[::1]``, ``8080``)."""
    name, sep, port = host.rpartition(":")
    if not sep or "]" in port or not port.isdigit():
        return host, None
    return name, port


def _refused(status: int, message: str, header: str, detail: str) -> web.Response:
    body = UserError(message, [FieldError(header, detail)]).to_dict()
    return json_response(body, status=status)


def middleware(policy: Policy) -> Middleware:
    """The aiohttp middleware enforcing ``policy`` and the JSON bodies of JSON routes."""

    @web.middleware
    async def hygiene(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")  # none at all (HTTP/1.0) names nothing
        if not policy.host_allowed(host):
            return _refused(
                421,
                "this api does not answer to that name",
                "Host",
                "not one of the names in ZOE_HTTP_ALLOWED_HOSTS",
            )
        origin = request.headers.get("Origin")
        if request.method in UNSAFE and origin is not None:
            if not policy.origin_allowed(origin, host):
                return _refused(
                    403,
                    "cross-site request refused",
                    "Origin",
                    "neither this api's origin nor one in ZOE_HTTP_ALLOWED_ORIGINS",
                )
        resource = request.match_info.route.resource
        has_body = request.body_exists
        if resource is not None and takes_json(
            request.method, resource.canonical, has_body=has_body
        ):
            kind = request.content_type
            if kind != "application/json" and not kind.endswith("+json"):
                return _refused(
                    415, "the body must be JSON", "Content-Type", "must be application/json"
                )
        return await handler(request)

    return hygiene

"""Where the broker is: one RabbitMQ node, or several nodes of one cluster.

``ZOE_AMQP_URL`` is an AMQP URL whose authority may list several ``host:port`` pairs,
comma-separated, that share the credentials, the vhost and the query::

    amqp://zoe:secret@rmq1:5672,rmq2:5672,rmq3:5672/zoe?heartbeat=30

`connect` tries each node in turn until one accepts; once connected, each lost
connection and each failed attempt to reconnect moves on to the next node, so that a
service whose node died reconnects to a live one (and aio-pika's robust channels
re-declare the queues and restart the consumers there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL


def node_urls(url: str) -> list[URL]:
    """One URL per node listed in ``url`` (just ``url`` when it names one host)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not an AMQP URL: {url!r}")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    prefix = f"{scheme}://{userinfo}{at}"
    suffix = f"{slash}{tail}"
    out = [URL(prefix + host.strip() + suffix) for host in hosts.split(",") if host.strip()]
    if not out:
        raise ValueError(f"no host in the AMQP URL {url!r}")
    return out


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection to one node of several: when the connection is lost, or an
    attempt to (re)connect fails, the next attempt goes to the next node in turn."""

    def __init__(self, urls: Sequence[URL], first: int = 0, **kwargs: Any) -> None:
        self._urls = list(urls)
        self._at = first % len(self._urls)
        super().__init__(self._urls[self._at], **kwargs)

    async def _on_connection_close(self, closing: Any) -> None:
        # Called for a lost connection and for a failed attempt alike (aio-pika calls
        # it when the transport cannot be made): either way, try another node next.
        self._at = (self._at + 1) % len(self._urls)
        self.url = self._urls[self._at]
        await super()._on_connection_close(closing)


async def connect(url: str, **kwargs: Any) -> aio_pika.abc.AbstractRobustConnection:
    """A robust connection to the first node of ``url`` that accepts one; raises the last
    node's error when none does (``kwargs`` go to aio-pika's connection)."""
    urls = node_urls(url)
    error: BaseException | None = None
    for first in range(len(urls)):
        connection = ClusterConnection(urls, first, **kwargs)
        try:
            await connection.connect()
        except CONNECTION_EXCEPTIONS as exc:
            error = exc
            await connection.close()
            continue
        return connection
    assert error is not None
    raise error

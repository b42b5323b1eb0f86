"""Execution state changes streamed to HTTP clients as server-sent events.

Each api process has its own exclusive queue, bound to ``state.executions`` while at
least one client is connected to ``GET /api/v1/events`` (``?execution=ID`` to follow
one execution), and fans the changes out to them, each client getting only those it
may see and asked for; with nobody listening, no event is delivered to the process. A
client that reconnects should re-read the executions it cares about: events are not
replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aiohttp import web

from common import messages as m
from common.bus import EVENTS, Bus
from common.errors import FieldError, InvalidRequest
from services.api import auth
from services.api.limits import Slots, ascii_int, write

QUEUE_SIZE = 1000
STATE_EVENTS = "state.executions"


@dataclass(eq=False)
class Subscriber:
    """One client's changes: of one execution (``only``) and of one owner's (``owner``),
    None meaning any. A client too slow to keep up misses changes while its queue is
    full."""

    only: int | None = None
    owner: str | None = None
    queue: asyncio.Queue[m.StateChange] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, change: m.StateChange) -> None:
        if self.only is not None and change.execution_id != self.only:
            return
        if self.owner is not None and change.user != self.owner:
            return  # another user's execution
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(change)


class Hub:
    """Subscribers (one per HTTP client) of state-change events."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self._decoder = m.decoder(m.ExecutionStatesChanged)
        self._queue: AbstractQueue | None = None
        self._binding = asyncio.Lock()  # (un)binds one at a time

    async def attach(self, bus: Bus) -> None:
        """Declare the exclusive queue of this process and consume it (bound on demand)."""
        channel = bus.consumer_channel
        self._queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await self._queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        try:
            event = self._decoder.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.deliver(event.changes)

    def deliver(self, changes: list[m.StateChange]) -> None:
        """Hand each change to every subscriber that wants it."""
        for sub in list(self._subscribers):
            for change in changes:
                sub.offer(change)

    async def subscribe(self, only: int | None = None, owner: str | None = None) -> Subscriber:
        """The changes from now on (see `Subscriber`); the first subscriber binds the
        queue."""
        sub = Subscriber(only, owner)
        async with self._binding:
            if not self._subscribers and self._queue is not None:
                await self._queue.bind(EVENTS, routing_key=STATE_EVENTS)
            self._subscribers.add(sub)
        return sub

    async def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber; the last one to leave unbinds the queue."""
        self._subscribers.discard(sub)  # at once, even if the unbinding waits
        async with self._binding:
            if not self._subscribers and self._queue is not None:
                await self._queue.unbind(EVENTS, routing_key=STATE_EVENTS)


HUB = web.AppKey("hub", Hub)
STREAMS = web.AppKey("event_streams", Slots)  # at most MAX_EVENT_STREAMS, set by make_app
KEEP_ALIVE = 15.0  # seconds between comments on a quiet stream
UNSUBSCRIBE_TIMEOUT = 5.0  # seconds a gone client's unbinding may take


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/events``: ``event: state`` lines with the execution id and state,
    of the caller's executions (everyone's for roles that operate all).

    429 when ``MAX_EVENT_STREAMS`` are open already; a client that stops reading is
    dropped after ``WRITE_TIMEOUT`` (and misses events while its queue is full).
    """
    only = _execution_filter(request)
    owner = auth.caller(request).owner_filter()
    with request.app[STREAMS].hold():
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        hub = request.app[HUB]
        sub = await hub.subscribe(only, owner)
        try:
            await write(request, response, b": connected\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), KEEP_ALIVE)
                except TimeoutError:
                    await write(request, response, b": keep-alive\n\n")
                    continue
                data = msgspec.json.encode(
                    {"execution_id": event.execution_id, "state": event.state, "at": event.at}
                )
                await write(request, response, b"event: state\ndata: " + data + b"\n\n")
        except ConnectionResetError:
            pass
        finally:
            # even when the client's task is cancelled (then re-raised: the process may be
            # ending), and bounded: the bus may be closed already
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(hub.unsubscribe(sub)), UNSUBSCRIBE_TIMEOUT)
    return response


def _execution_filter(request: web.Request) -> int | None:
    raw = request.query.get("execution")
    if raw is None:
        return None
    execution_id = ascii_int(raw)
    if execution_id is None:
        raise InvalidRequest("invalid query", [FieldError("execution", "must be an execution id")])
    return execution_id


__all__ = ["HUB", "STREAMS", "Hub", "stream"]

"""The bus: one place for RabbitMQ topology, publishing and the ack policy.

Which queues exist, how each is declared, what is bound to it and how each message is
delivered (persistent or transient, mandatory or optional) all come from the route
table in common/routes.py; this module only carries it out.

Ack policy (``Bus.consume``), the one place that acks or rejects:

- a message that does not decode (not JSON, an unknown type, a bad field, nested too
  deeply) or is larger than the queue's limit is refused: dead-lettered at once, after an
  error reply when it is a request that asks for one;
- the handler runs (within ``handler_timeout``); success -> ack (handlers commit before
  they return), with the handler's reply first if the message asks for one;
- a user error -> refused, as above;
- a transient failure (common/retry.py: the database or the broker away) is retried in
  place with backoff for up to ``transient_retry`` seconds: an outage does not spend the
  message's delivery limit;
- any other failure -> requeue, which counts against the delivery limit, so a message
  that always fails is dead-lettered (a heartbeat whose handler fails is dropped instead:
  the next one comes within seconds);
- cancellation -> neither, so it is redelivered.

Publishing: persistent messages with pipelined confirms; a mandatory message that no
queue takes is returned by the broker and fails its publish (it is not counted as sent).
A transient, optional one (a heartbeat) goes on a channel without confirms: it is worth
nothing seconds later and the next one replaces it, so nothing waits for the broker to
take it (a publish still fails while the link is down).

On a cluster (common/brokers.py) every queue that holds what must not be lost is a quorum
queue, replicated on ``quorum_size`` nodes (the broker's default when 0); the heartbeat
queues are transient classic ones, which a node's death deletes and the next declaration
(on reconnect) makes again on a live node.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Self

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from common import brokers, metrics, routes, topology
from common import messages as m
from common.errors import Forbidden, TooLarge, UserError, invalid_message
from common.retry import Backoff, is_transient
from common.routes import COMMANDS, DLX, EVENTS

log = structlog.get_logger("bus")

Handler = Callable[[Any], Awaitable[m.Message | None]]
# The headers of the message a handler is handling (the api reads a request's token there).
_HEADERS: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "zoe_message_headers", default=MappingProxyType({})
)


# ... and its routing key (a queue shared by several nodes' commands tells them apart by it).
_ROUTING_KEY: contextvars.ContextVar[str] = contextvars.ContextVar(
    "zoe_message_routing_key", default=""
)


def incoming_headers() -> Mapping[str, Any]:
    """The AMQP headers of the message the running handler was given."""
    return _HEADERS.get()


def incoming_routing_key() -> str:
    """The routing key of the message the running handler was given."""
    return _ROUTING_KEY.get()


BatchHandler = Callable[[list[Any]], Awaitable[None]]
# Builds the reply a refused request gets (when it asks for one: ``reply_to``).
RefusalReply = Callable[[UserError], m.Message]
# Whether a message's sender may send it: given the broker user that published it (the
# ``user_id`` the broker checked, None when the publisher set none) and the decoded
# message, None when it may, else why not.
SenderCheck = Callable[[str | None, Any], str | None]

PROBE_KEY = "zoe.probe"  # no queue has this name: a probe goes nowhere, and says so


class MessageTooLarge(Exception):
    """A message over ``routes.MAX_MESSAGE_BYTES``: refused before it is sent."""


class HandlerTimeout(Exception):
    """A handler ran longer than its bound: the message's own fault, not a transient one."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: to its route's exchange (events, or a shared queue by the
    default exchange), or to one node's command queue."""

    message: m.Message
    node: str | None = None  # set: a command for this node's executor

    @property
    def exchange(self) -> str:
        return COMMANDS if self.node is not None else routes.route_of(self.message).exchange

    @property
    def routing_key(self) -> str:
        return routes.routing_key(self.message, self.node)


class _Acks:
    """The acks of one bus's deliveries, sent together: what handlers finished in one
    turn of the event loop goes out as ONE ``basic.ack`` with ``multiple`` (an ack frame
    per message was a good part of a busy consumer's cost).

    A multiple ack covers every delivery of its channel up to its tag, so it is sent only
    up to the oldest delivery still being handled (or being rejected); what finished
    after that one is acked message by message. Deliveries are counted per channel (a
    reconnect opens a new one; acks for a closed one are dropped: the broker redelivers
    those messages anyway).
    """

    def __init__(self) -> None:
        self._open: dict[Any, set[int]] = {}  # channel -> delivery tags not settled yet
        self._done: dict[Any, list[AbstractIncomingMessage]] = {}  # channel -> to ack
        self._flushing = False

    def delivered(self, message: AbstractIncomingMessage) -> None:
        channel = _channel_of(message)
        if channel is not None and message.delivery_tag is not None:
            self._open.setdefault(channel, set()).add(message.delivery_tag)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """The delivery was rejected (its frame sent): no longer open."""
        found = self._open.get(_channel_of(message))
        if found is not None:
            found.discard(message.delivery_tag or 0)

    async def ack(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message`` with whatever else finishes in this turn of the loop."""
        channel = _channel_of(message)
        if channel is None:
            return  # its channel closed: the broker delivers it again
        self.settled(message)
        self._done.setdefault(channel, []).append(message)
        if self._flushing:
            return  # the running flush takes it on its next round
        self._flushing = True
        try:
            await asyncio.sleep(0)  # the acks of this turn join
            await self.flush()
        finally:
            self._flushing = False

    async def flush(self) -> None:
        """Send every ack waiting (until none is left)."""
        while self._done:
            channel, done = self._done.popitem()
            if channel.is_closed:
                self._open.pop(channel, None)
                continue
            still = self._open.get(channel)
            oldest = min(still) if still else None
            covered: list[AbstractIncomingMessage] = []
            alone: list[AbstractIncomingMessage] = []
            for d in done:
                below = oldest is None or (d.delivery_tag or 0) < oldest
                (covered if below else alone).append(d)
            try:
                if covered:
                    last = max(covered, key=lambda d: d.delivery_tag or 0)
                    await last.ack(multiple=len(covered) > 1)
                for d in alone:
                    await d.ack()
            except Exception as exc:  # the channel went: its messages are redelivered
                log.warning("ack.failed", error=repr(exc), messages=len(done))
            # (deliveries may have come meanwhile: the set is dropped only if empty now)
            if not self._open.get(channel, True):
                self._open.pop(channel, None)


def _channel_of(message: AbstractIncomingMessage) -> Any:
    """The channel a message came on; None once that channel is closed."""
    try:
        return message.channel
    except aiormq.exceptions.ChannelInvalidStateError:
        return None


@dataclass
class _Consumer:
    queue: AbstractQueue
    tag: str
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


class Bus:
    """A robust connection with a confirming publisher channel and a consumer channel."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        prefetch: int = 64,
        transient_retry: float = 300.0,
        retry_backoff: tuple[float, float] = (0.2, 10.0),
        quorum_size: int = 0,
    ) -> None:
        """``transient_retry``: how long a handler failing for a transient reason (the
        database or the broker away) is retried in place, with a backoff from
        ``retry_backoff[0]`` doubling up to ``retry_backoff[1]`` seconds, before its
        message is given back to the queue (which counts against the delivery limit).

        ``url`` may list several nodes of a cluster (common/brokers.py); ``quorum_size``:
        on how many nodes a quorum queue is replicated (0: the broker's default). Every
        service of a deployment must use the same: a queue's size is fixed when it is made.
        """
        self._url = url
        # every message published carries it as ``user_id``, which the broker checks
        # against the connection's login: a consumer knows who sent what it reads
        self.user = brokers.node_urls(url)[0].user or "guest"
        self._quorum_size = quorum_size
        self._transient_retry = transient_retry
        self._retry_backoff = retry_backoff
        self._name = name
        self._prefetch = prefetch
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractChannel | None = None
        # transient optional messages (heartbeats): no confirms (see the module's doc)
        self._loose: dict[str, AbstractExchange] = {}
        self._sub: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[_Consumer] = []
        self._rpc_queue: AbstractQueue | None = None
        self._declared: dict[str, AbstractQueue] = {}  # queues ``bind_queue`` declared
        self._rpc_waiting: dict[str, asyncio.Future[bytes]] = {}
        self._acks = _Acks()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect (retrying while the broker is unreachable) and declare the topology."""
        self._conn = await brokers.connect(
            self._url, client_properties={"connection_name": self._name}
        )
        await topology.replace_outdated_queues(self._conn, self._quorum_size)
        # on_return_raises: a mandatory message no queue took fails its publish
        self._pub = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        self._sub = await self._conn.channel()
        await self._sub.set_qos(prefetch_count=self._prefetch)
        await topology.declare_topology(self._pub, self._quorum_size)
        for name in (EVENTS, COMMANDS, DLX):
            self._exchanges[name] = await self._pub.get_exchange(name, ensure=False)
        self._exchanges[""] = self._pub.default_exchange
        loose = await self._conn.channel(publisher_confirms=False)
        self._loose[EVENTS] = await loose.get_exchange(EVENTS, ensure=False)

    async def close(self) -> None:
        """Stop consuming and close the connection (unacked messages are redelivered)."""
        await self.stop_consuming(timeout=0)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def connected(self) -> bool:
        """Whether the link to the broker is up now (a robust one may be reconnecting)."""
        return (
            self._conn is not None
            and not self._conn.is_closed
            and self._sub is not None
            and not self._sub.is_closed
        )

    @property
    def consuming(self) -> bool:
        """Whether consumers are registered and their channel is open (readiness)."""
        return bool(self._consumers) and self.connected

    @property
    def consumer_channel(self) -> AbstractChannel:
        """The channel consumers use (robust: restored after a reconnect)."""
        assert self._sub is not None
        return self._sub

    # ---- publishing ---------------------------------------------------------------------

    async def publish(self, message: m.Message, *, node: str | None = None) -> None:
        """Publish one persistent message and wait for the broker's confirm."""
        await self.publish_many([Outgoing(message, node)])

    async def publish_many(self, items: Sequence[Outgoing]) -> None:
        """Publish persistent messages with pipelined confirms; raises if any is refused."""
        await self.publish_raw([(o.exchange, o.routing_key, m.encode(o.message)) for o in items])

    async def publish_raw(self, items: Iterable[tuple[str, str, bytes]]) -> None:
        """Publish already-encoded bodies: (exchange, routing key, body) triples."""
        items = list(items)
        for _, key, body in items:
            if len(body) > routes.MAX_MESSAGE_BYTES:
                raise MessageTooLarge(
                    f"{key}: {len(body)} bytes, over the limit of {routes.MAX_MESSAGE_BYTES}"
                )
        publishes = []
        for exchange, key, body in items:
            how = routes.delivery(exchange, key)
            loose = not how.persistent and not how.mandatory
            target = self._loose.get(exchange) if loose else None
            publishes.append(
                (target or self._exchanges[exchange]).publish(
                    _amqp_message(body, persistent=how.persistent, user_id=self.user),
                    routing_key=key,
                    # an optional one is dropped quietly when no queue is bound
                    mandatory=how.mandatory,
                )
            )
        if len(publishes) == 1:
            await publishes[0]  # no task for a lone one (a heartbeat, a fact)
        elif publishes:
            await asyncio.gather(*publishes)

    async def publish_each(
        self, items: Sequence[tuple[str, str, bytes]]
    ) -> list[BaseException | None]:
        """``publish_raw``, telling for each item whether it failed (and why)."""
        results = await asyncio.gather(
            *(self.publish_raw([item]) for item in items), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    async def ping(self, *, timeout: float) -> bool:
        """Whether the broker confirms a publish now: a probe to the default exchange
        that no queue is named after, so it goes nowhere."""
        try:
            async with asyncio.timeout(timeout):
                await self._exchanges[""].publish(
                    _amqp_message(b"", persistent=False), routing_key=PROBE_KEY, mandatory=False
                )
        except Exception:  # any failure of the link means the same: nothing gets through
            return False
        return True

    # ---- request/reply ------------------------------------------------------------------

    async def request(
        self, node: str, message: m.Message, *, timeout: float, queue: str | None = None
    ) -> bytes:
        """Send a command to one node's executor and wait for its reply's body; with
        ``queue``, send it to that shared queue instead (``node`` unused)."""
        assert self._sub is not None
        if self._rpc_queue is None:
            self._rpc_queue = await self._sub.declare_queue(exclusive=True, auto_delete=True)
            await self._rpc_queue.consume(self._on_reply, no_ack=True)
        correlation = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._rpc_waiting[correlation] = future
        try:
            msg = _amqp_message(m.encode(message), user_id=self.user)
            msg.reply_to = self._rpc_queue.name
            msg.correlation_id = correlation
            msg.expiration = timeout
            # not mandatory: an unknown node is a request nobody answers (a timeout)
            if queue is not None:
                await self._exchanges[""].publish(msg, routing_key=queue, mandatory=False)
            else:
                await self._exchanges[COMMANDS].publish(msg, routing_key=node, mandatory=False)
            return await asyncio.wait_for(future, timeout)
        finally:
            self._rpc_waiting.pop(correlation, None)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._rpc_waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    # ---- consuming ----------------------------------------------------------------------

    async def declare_queue(
        self,
        name: str,
        bindings: Iterable[tuple[str, str]] = (),
        *,
        kind: routes.QueueKind | None = None,
    ) -> None:
        """Declare a queue as its kind in the route table says (or ``kind``, for a queue
        the table does not have), with bindings."""
        assert self._pub is not None
        queue = await topology.declare_queue(self._pub, name, kind, self._quorum_size)
        for exchange, key in bindings:
            await queue.bind(exchange, routing_key=key)

    async def bind_queue(self, name: str, exchange: str, key: str) -> None:
        """Bind the queue ``name`` (declared as the route table says, the first time only)
        to ``exchange`` with ``key``: one round trip a binding after the first."""
        assert self._pub is not None
        queue = self._declared.get(name)
        if queue is None:
            queue = await topology.declare_queue(self._pub, name, None, self._quorum_size)
            self._declared[name] = queue
        await queue.bind(exchange, routing_key=key)

    async def consume(
        self,
        queue_name: str,
        handler: Handler,
        *,
        batches: Mapping[type[m.Message], BatchHandler] | None = None,
        timeout: float | None = None,
        inbox: Any = None,
        kind: routes.QueueKind | None = None,
        refusal_reply: RefusalReply | None = None,
        max_body: int | None = None,
        sender: SenderCheck | None = None,
    ) -> None:
        """Deliver messages of ``queue_name``, decoded as the route table says it
        receives them, to ``handler``; a handler running longer than ``timeout``
        seconds fails (and its message is requeued, as for any failure). ``inbox`` and
        ``kind``: the message types and the kind of a queue the table does not have.

        ``batches``: message types whose handler takes a list. Messages of such a type
        that arrive together (up to the prefetch) go to it at once and are acked
        together once it returns; when it raises, they are handed to ``handler`` one by
        one instead, so that one bad message is told apart from the others.

        ``refusal_reply``: a request refused (it does not decode, is larger than
        ``max_body`` bytes, or its handler raised a user error) that asks for a reply
        (``reply_to``) gets the reply this builds from the error, then is dead-lettered.

        ``sender``: which broker users may send what (a message it refuses is refused as
        above, with a 403).
        """
        assert self._sub is not None
        # Declared (not merely looked up) on the robust channel, so that aio-pika restores
        # the queue and its consumer after a reconnect.
        queue_kind = kind or routes.queue(queue_name).kind
        heartbeats = queue_kind == "heartbeats"
        queue = await topology.declare_queue(self._sub, queue_name, queue_kind, self._quorum_size)
        decoder = m.decoder(inbox if inbox is not None else routes.inbox(queue_name))
        if timeout is not None:
            handler = _bounded(handler, timeout)
            batches = {k: _bounded(h, timeout) for k, h in (batches or {}).items()}
        consumer = _Consumer(queue, "")
        label = metrics.queue_label(queue_name)
        gathered: dict[type[m.Message], list[tuple[AbstractIncomingMessage, Any]]] = {}

        async def refuse(
            message: AbstractIncomingMessage, error: UserError, reason: str = "rejected"
        ) -> None:
            metrics.MESSAGES_REFUSED.labels(label, reason).inc()
            if refusal_reply is not None and message.reply_to:
                await self._reply(message, refusal_reply(error))
            if not heartbeats:
                await message.reject(requeue=False)  # the queue dead-letters it
                self._acks.settled(message)
                return
            # A heartbeat queue dead-letters nothing itself (its messages expire, and
            # expired ones would go there too): send the refused one on, then drop it.
            await self._exchanges[DLX].publish(
                aio_pika.Message(message.body, headers={"x-zoe-queue": queue_name}),
                routing_key=queue_name,
            )
            await self._acks.ack(message)

        async def flush(msg_type: type[m.Message], handle_many: BatchHandler) -> None:
            await asyncio.sleep(0)  # deliveries read in the same go join the batch
            batch = gathered.pop(msg_type)  # what arrives from now on makes the next batch
            try:
                await handle_many([decoded for _, decoded in batch])
            except asyncio.CancelledError:
                raise  # none acked: all redelivered
            except Exception as exc:
                tag = m.tag_of(msg_type)
                log.warning("batch.failed", msg=tag, size=len(batch), error=repr(exc))
                for message, decoded in batch:
                    await self._handle(
                        message, decoded, handler, refuse, label, heartbeat=heartbeats
                    )
                return
            for message, _ in batch:
                await self._acks.ack(message)

        def track(task: asyncio.Task[Any]) -> None:
            consumer.inflight.add(task)
            task.add_done_callback(consumer.inflight.discard)

        async def on_message(message: AbstractIncomingMessage) -> None:
            self._acks.delivered(message)
            metrics.MESSAGES_CONSUMED.labels(label).inc()
            if message.redelivered:
                metrics.MESSAGES_REDELIVERED.labels(label).inc()
            if max_body is not None and len(message.body) > max_body:
                size = len(message.body)
                log.warning("message.refused", reason="too large", size=size, limit=max_body)
                await refuse(
                    message,
                    TooLarge(f"message of {size} bytes; the limit is {max_body}"),
                    "too_large",
                )
                return
            try:
                decoded = decoder.decode(message.body)
            except Exception as exc:  # not JSON, not a known type, too deep, a bad field
                body = message.body[:200].decode(errors="replace")
                log.warning("message.refused", reason=str(exc), body=body)
                await refuse(message, invalid_message(exc), "invalid")
                return
            if sender is not None and (why := sender(message.user_id, decoded)) is not None:
                log.warning("message.refused", reason=why, user=message.user_id)
                await refuse(message, Forbidden(why), "forbidden")
                return
            msg_type = type(decoded)
            handle_many = batches.get(msg_type) if batches else None
            if handle_many is None:
                track(asyncio.current_task())  # type: ignore[arg-type]
                await self._handle(message, decoded, handler, refuse, label, heartbeat=heartbeats)
                return
            waiting = gathered.setdefault(msg_type, [])
            waiting.append((message, decoded))
            if len(waiting) == 1:  # the first of a batch: its flush is not scheduled yet
                track(asyncio.create_task(flush(msg_type, handle_many)))

        consumer.tag = await queue.consume(on_message)
        self._consumers.append(consumer)

    async def _handle(
        self,
        message: AbstractIncomingMessage,
        decoded: Any,
        handler: Handler,
        refuse: Callable[[AbstractIncomingMessage, UserError], Awaitable[None]],
        label: str,
        *,
        heartbeat: bool = False,
    ) -> None:
        """Run the handler under the ack policy. A transient failure is retried here,
        with backoff, for up to ``transient_retry`` seconds, so that an outage of the
        database or the broker does not spend the message's delivery limit."""
        ids = {
            k: getattr(decoded, k)
            for k in ("execution_id", "instance_id", "node")
            if hasattr(decoded, k)
        }
        _HEADERS.set(message.headers or {})
        _ROUTING_KEY.set(message.routing_key or "")
        with structlog.contextvars.bound_contextvars(msg=m.tag_of(decoded), **ids):
            backoff = Backoff(*self._retry_backoff)
            give_up = asyncio.get_running_loop().time() + self._transient_retry
            while True:
                try:
                    reply = await handler(decoded)
                    break
                except asyncio.CancelledError:
                    raise  # neither ack nor reject: the broker redelivers it
                except UserError as exc:
                    log.warning("message.rejected", reason=exc.message)
                    await refuse(message, exc)
                    return
                except Exception as exc:
                    if heartbeat:  # no delivery limit on its queue: the next replaces it
                        log.warning("heartbeat.dropped", error=repr(exc))
                        await self._acks.ack(message)
                        return
                    now = asyncio.get_running_loop().time()
                    if is_transient(exc) and now < give_up:
                        delay = min(backoff.next(), give_up - now)
                        log.warning("message.retrying", error=repr(exc), delay=round(delay, 2))
                        await asyncio.sleep(delay)
                        continue
                    log.exception("message.failed", redelivered=message.redelivered)
                    metrics.MESSAGES_REQUEUED.labels(label).inc()
                    await message.reject(requeue=True)  # counts against the delivery limit
                    self._acks.settled(message)
                    return
            if reply is not None and message.reply_to:
                await self._reply(message, reply)
            await self._acks.ack(message)

    async def _reply(self, request: AbstractIncomingMessage, reply: m.Message) -> None:
        out = _amqp_message(m.encode(reply), persistent=False)
        out.correlation_id = request.correlation_id
        # not mandatory: a requester that went away gets nothing
        await self._exchanges[""].publish(out, routing_key=request.reply_to or "", mandatory=False)

    async def stop_consuming(self, timeout: float) -> None:
        """Stop fetching, wait up to ``timeout`` for in-flight handlers, then cancel them."""
        consumers, self._consumers = self._consumers, []
        for c in consumers:
            with contextlib.suppress(Exception):
                await c.queue.cancel(c.tag)
        inflight = [t for c in consumers for t in c.inflight]
        if inflight and timeout > 0:
            await asyncio.wait(inflight, timeout=timeout)
        for t in inflight:
            t.cancel()
        with contextlib.suppress(Exception):
            await self._acks.flush()  # what finished is acked before the link closes


def _amqp_message(
    body: bytes, *, persistent: bool = True, user_id: str | None = None
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        user_id=user_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        if persistent
        else aio_pika.DeliveryMode.NOT_PERSISTENT,
    )


def _bounded(handler: Callable[[Any], Awaitable[Any]], seconds: float) -> Any:
    async def bounded(arg: Any) -> Any:
        bound = asyncio.timeout(seconds)
        try:
            async with bound:
                return await handler(arg)
        except TimeoutError:
            if bound.expired():
                raise HandlerTimeout(f"the handler ran for more than {seconds:g} s") from None
            raise

    return bounded


async def declare_executor_queue(bus: Bus, node: str) -> str:
    """Declare ``executor.<node>`` bound to the commands exchange; returns its name."""
    name = routes.executor_queue(node)
    await bus.declare_queue(name, [(COMMANDS, node)])
    return name

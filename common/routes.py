"""Every route on the bus, declared once: what goes where, sent by whom, consumed by whom.

The bus's bindings and queue declarations, each queue's decoder, the check that every
consuming service has exactly one handler per message it receives, and the AsyncAPI
document (docs/asyncapi.yaml) are all derived from ``ROUTES`` and ``QUEUES``: a new
message is one line here, a struct in common/messages.py and a handler.

Exchanges: ``zoe.events`` (topic; key = the route's ``key`` with its ``{field}`` parts
filled from the message), ``zoe.commands`` (direct; key = the node's name, queue
``executor.<node>``), the default exchange for the AMQP request interface (key = the
queue ``api.requests``) and ``zoe.dlx`` (fanout, to ``dead-letters``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from common import messages as m

EVENTS = "zoe.events"
COMMANDS = "zoe.commands"
DEFAULT = ""  # the default exchange: the routing key is a queue's name
DLX = "zoe.dlx"
DEAD_LETTERS = "dead-letters"
DELIVERY_LIMIT = 5
# The largest message Zoe publishes (RabbitMQ's own default limit is 16 MiB from 4.0 on,
# 128 MiB before): a larger one is refused before it reaches the broker.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A heartbeat older than this says nothing any more (it is the default ZOE_NODE_TIMEOUT:
# a late heartbeat must not make a node the monitor has declared lost look alive).
HEARTBEAT_TTL_MS = 10_000

SCHEDULER = "scheduler"
SCHEDULER_HEARTBEATS = "scheduler.heartbeats"
MONITOR = "monitor"
MONITOR_HEARTBEATS = "monitor.heartbeats"
API_REQUESTS = "api.requests"
EXECUTOR = "executor.{node}"  # one per node
# Overlay network requests, consumed by the executors whose engine is a swarm manager.
EXECUTOR_NETWORKS = "executor.networks"


QueueKind = Literal["quorum", "heartbeats"]


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue, the service that consumes it, and how it is declared.

    ``quorum``: durable, replicated, with a delivery limit and dead-lettering to
    ``zoe.dlx``; ``heartbeats``: a classic queue of transient messages with a time to
    live (a heartbeat is worth nothing a few seconds later, and the next one replaces a
    lost one), whose refused messages the bus sends to the dead letters itself; the
    network requests' queue is of this kind too (a request is worth nothing once its
    sender stopped waiting, and it asks again).
    """

    name: str
    service: str
    kind: QueueKind = "quorum"


@dataclass(frozen=True, slots=True)
class Route:
    """One message type: the exchange and key it is published with, its sender, and the
    queues it is delivered to. ``persistent``: written to disk by the broker;
    ``optional``: it may go unrouted (nobody listens) without being an error."""

    message: type[m.Message]
    exchange: str
    key: str
    sender: str
    consumers: tuple[str, ...] = ()
    persistent: bool = True
    optional: bool = False
    # sent by a process that plays several nodes (hollow nodes) only: no single node's
    # broker user may send it (its key names no node)
    many_nodes: bool = False


QUEUES: tuple[Queue, ...] = (
    Queue(SCHEDULER, "scheduler"),
    Queue(SCHEDULER_HEARTBEATS, "scheduler", "heartbeats"),
    Queue(MONITOR, "monitor"),
    Queue(MONITOR_HEARTBEATS, "monitor", "heartbeats"),
    Queue(API_REQUESTS, "api"),
    Queue(EXECUTOR, "executor"),
    Queue(EXECUTOR_NETWORKS, "executor", "heartbeats"),
)

_OTHERS = "other platforms (reply: ApiReply)"
ROUTES: tuple[Route, ...] = (
    Route(m.ExecutionSubmitted, EVENTS, "execution.submitted", "api", (SCHEDULER,)),
    Route(m.ExecutionsSubmitted, EVENTS, "execution.submitted_many", "api", (SCHEDULER,)),
    Route(m.ExecutionTerminateRequested, EVENTS, "execution.terminate", "api", (SCHEDULER,)),
    Route(m.NodeDrainRequested, EVENTS, "node.drain.{node}", "api", (SCHEDULER,)),
    Route(
        m.NodeHeartbeat,
        EVENTS,
        "node.heartbeat.{node}",
        "executor",
        (SCHEDULER_HEARTBEATS, MONITOR_HEARTBEATS),
        persistent=False,
        optional=True,
    ),
    Route(
        m.NodeAlive,
        EVENTS,
        "node.alive.{node}",
        "executor",
        (MONITOR_HEARTBEATS,),
        persistent=False,
        optional=True,
    ),
    Route(
        m.NodeHeartbeats,
        EVENTS,
        "node.heartbeat_many.{sender}",
        "executor",
        (SCHEDULER_HEARTBEATS, MONITOR_HEARTBEATS),
        persistent=False,
        optional=True,
        many_nodes=True,
    ),
    Route(
        m.NodesAlive,
        EVENTS,
        "node.alive_many.{sender}",
        "executor",
        (MONITOR_HEARTBEATS,),
        persistent=False,
        optional=True,
        many_nodes=True,
    ),
    Route(m.InstanceStarted, EVENTS, "fact.started.{node}", "executor", (SCHEDULER,)),
    Route(m.InstancesStarted, EVENTS, "fact.started_many.{node}", "executor", (SCHEDULER,)),
    Route(m.InstanceStartFailed, EVENTS, "fact.start_failed.{node}", "executor", (MONITOR,)),
    Route(m.InstanceExited, EVENTS, "fact.exited.{node}", "executor", (MONITOR,)),
    Route(m.InstanceRemoved, EVENTS, "fact.removed.{node}", "executor", (MONITOR,)),
    Route(m.InstanceEnded, EVENTS, "verdict.instance_ended", "monitor", (SCHEDULER,)),
    Route(m.NodeLost, EVENTS, "verdict.node_lost", "monitor", (SCHEDULER,)),
    Route(
        m.ExecutionStatesChanged,
        EVENTS,
        "state.executions",
        "scheduler",
        optional=True,  # bound by each api process while a client listens
    ),
    Route(m.StartInstance, COMMANDS, "{node}", "scheduler", (EXECUTOR,)),
    Route(m.StartInstances, COMMANDS, "{node}", "scheduler", (EXECUTOR,)),
    Route(m.StopInstance, COMMANDS, "{node}", "scheduler", (EXECUTOR,)),
    Route(m.LogsRequest, COMMANDS, "{node}", "api", (EXECUTOR,)),
    Route(
        m.NetworkEnsure,
        DEFAULT,
        EXECUTOR_NETWORKS,
        "executor",
        (EXECUTOR_NETWORKS,),
        persistent=False,
        optional=True,  # sent as a request (a timeout when nobody answers)
    ),
    Route(
        m.NetworkRelease,
        DEFAULT,
        EXECUTOR_NETWORKS,
        "executor",
        (EXECUTOR_NETWORKS,),
        persistent=False,
        optional=True,
    ),
    Route(m.SubmitRequest, DEFAULT, API_REQUESTS, _OTHERS, (API_REQUESTS,)),
    Route(m.TerminateRequest, DEFAULT, API_REQUESTS, _OTHERS, (API_REQUESTS,)),
    Route(m.GetRequest, DEFAULT, API_REQUESTS, _OTHERS, (API_REQUESTS,)),
)
# Replies go to the ``reply_to`` queue of the request they answer: no route of their own.
REPLIES: tuple[type[m.Message], ...] = (m.LogsReply, m.NetworkReply, m.ApiReply)
ALL_MESSAGES: tuple[type[m.Message], ...] = tuple(r.message for r in ROUTES) + REPLIES

_BY_MESSAGE = {r.message: r for r in ROUTES}
_FIELD = re.compile(r"\{(\w+)\}")


def route_of(message: m.Message | type[m.Message]) -> Route:
    """The route of a message (or message type)."""
    cls = message if isinstance(message, type) else type(message)
    return _BY_MESSAGE[cls]


# each route's key, and the message fields it names (read once: a key is computed for
# every message published, thousands a second from a process of hollow nodes)
_KEY_FIELDS = {r.message: (r.key, tuple(_FIELD.findall(r.key))) for r in ROUTES}


def routing_key(message: m.Message, node: str | None = None) -> str:
    """The key ``message`` is published with: its route's key, ``{field}`` parts filled
    from the message (a command's ``{node}`` is the node it is sent to)."""
    key, fields = _KEY_FIELDS[type(message)]
    if not fields:
        return key
    return key.format_map(
        {f: node if f == "node" and node is not None else str(getattr(message, f)) for f in fields}
    )


def queue(name: str) -> Queue:
    """The declaration of the queue called ``name`` (``executor.<node>`` included)."""
    for q in QUEUES:
        if q.name == name:
            return q
    if name.startswith("executor."):
        return next(q for q in QUEUES if q.name == EXECUTOR)
    raise KeyError(f"no queue {name!r} in common/routes.py")


def executor_queue(node: str) -> str:
    """The command queue of one node's executor (a node cannot be called ``networks``:
    ``executor.networks`` is the overlay network requests' queue)."""
    name = EXECUTOR.format(node=node)
    if name == EXECUTOR_NETWORKS:
        raise ValueError(f"a node cannot be called {node!r}: {name} is a shared queue")
    return name


def messages_for(queue_name: str) -> tuple[type[m.Message], ...]:
    """The message types delivered to a queue."""
    name = queue(queue_name).name
    return tuple(r.message for r in ROUTES if name in r.consumers)


@functools.cache
def inbox(queue_name: str) -> Any:
    """The union of the message types delivered to a queue: its decoder's type."""
    kinds = messages_for(queue(queue_name).name)
    union: Any = kinds[0]
    for kind in kinds[1:]:
        union = union | kind
    return union


def consumed_by(service: str) -> set[type[m.Message]]:
    """Every message type delivered to one of ``service``'s queues."""
    return {k for q in QUEUES if q.service == service for k in messages_for(q.name)}


def bindings() -> dict[str, list[tuple[str, str]]]:
    """Queue -> its (exchange, binding key) pairs on ``zoe.events``, for the shared
    queues (an executor's queue is bound by its node, to ``zoe.commands``)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for q in QUEUES:
        if q.name == EXECUTOR:
            continue
        # routes on the default exchange reach their queue by its name: no binding
        keys = [
            _FIELD.sub("*", r.key) for r in ROUTES if q.name in r.consumers and r.exchange == EVENTS
        ]
        out[q.name] = [(EVENTS, k) for k in dict.fromkeys(keys)]
    return out


# Bindings earlier versions made that the table no longer has: removed at start, so a
# deployment upgraded in place receives exactly what the table says.
FORMER_BINDINGS: tuple[tuple[str, str], ...] = (
    (SCHEDULER, "node.heartbeat.*"),
    (SCHEDULER, "execution.*"),
    (SCHEDULER, "verdict.*"),
    (MONITOR, "node.heartbeat.*"),
    (MONITOR, "fact.started.*"),
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a message published with some key is delivered."""

    persistent: bool
    mandatory: bool  # returned to the publisher (an error) when no queue takes it


def _pattern(route: Route) -> re.Pattern[str]:
    """The keys a route's messages are published with: each ``{field}`` one word."""
    parts = _FIELD.split(route.key)  # literal, field, literal, field, ..., literal
    literal = [re.escape(p) for p in parts[::2]]
    return re.compile("^" + "[^.]+".join(literal) + "$")


_PATTERNS = [(r.exchange, _pattern(r), Delivery(r.persistent, not r.optional)) for r in ROUTES]
_DEFAULT_DELIVERY = Delivery(persistent=True, mandatory=True)


@functools.lru_cache(maxsize=4096)
def delivery(exchange: str, key: str) -> Delivery:
    """How a message published to ``exchange`` with ``key`` is delivered, found from the
    route it matches (the outbox keeps only exchange, key and body)."""
    for ex, pattern, how in _PATTERNS:
        if ex == exchange and pattern.match(key):
            return how
    return _DEFAULT_DELIVERY


def described(routes: Iterable[Route] = ROUTES) -> list[tuple[type[m.Message], str, str, str]]:
    """(message, address, exchange, sender) of each route, for the AsyncAPI document."""
    return [(r.message, r.key, r.exchange, r.sender) for r in routes]


def markdown() -> str:
    """The route table as Markdown, as docs/architecture.md shows it (a test checks)."""
    lines = [
        "| message | exchange | key | sender | consumed from | delivery |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROUTES:
        exchange = r.exchange or "(default)"
        consumers = ", ".join(f"`{c}`" for c in r.consumers) or "whoever binds"
        how = ("persistent" if r.persistent else "transient") + (", optional" if r.optional else "")
        sender = r.sender.split(" (")[0]
        lines.append(
            f"| `{r.message.__name__}` | `{exchange}` | `{r.key}` | {sender} | {consumers} | {how} |"
        )
    return "\n".join(lines) + "\n"


# ---- least privilege: what each service's broker user may touch ------------------------

SERVICES = ("api", "scheduler", "monitor", "executor")
DEFAULT_EXCHANGE = "amq.default"  # the name permissions give the default exchange
# Exclusive queues named for their connection (replies, event streams): aio-pika names
# them amq_<uuid>, the broker amq.gen-<...>.
SERVER_NAMED = r"amq_[0-9a-f]{32}|amq\.gen-[A-Za-z0-9_-]+"
# Who declares exclusive queues of their own: the api (log replies, event streams),
# and the executors (their replies from a swarm manager's executor).
_SERVER_NAMED_BY = frozenset({"api", "executor"})


@dataclass(frozen=True, slots=True)
class Permissions:
    """A broker user's rights in a vhost, as RabbitMQ's ``set_permissions`` takes them
    (regexes over queue and exchange names), and its write rights on ``zoe.events`` by
    routing key (``set_topic_permissions``)."""

    configure: str
    write: str
    read: str
    topic_write: str


def _any_of(names: Iterable[str], raw: Iterable[str] = ()) -> str:
    parts = [re.escape(n) for n in dict.fromkeys(names)] + list(raw)
    return "^(" + "|".join(parts) + ")$" if parts else "^$"


def _topology() -> tuple[list[str], list[str], list[str]]:
    """What every service declares on connect (common/topology.py): the exchanges, the
    dead letters, and the shared queues, each bound to its exchange."""
    exchanges = [EVENTS, COMMANDS, DLX]
    queues = [DEAD_LETTERS, *bindings()]
    bound = [DEAD_LETTERS, *(q for q, keys in bindings().items() if keys)]
    sources = [DLX, *(ex for keys in bindings().values() for ex, _ in keys)]
    return [*exchanges, *queues], bound, sources


def permissions(service: str, node: str | None = None) -> Permissions:
    """The least a service's broker user needs, derived from the route table: declare
    the topology every service declares, consume its own queues, publish what it sends.
    An executor's user is one node's: it reads only ``executor.<node>`` and publishes
    facts and heartbeats under its own node's keys only."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: one of {', '.join(SERVICES)}")
    if (service == "executor") != (node is not None):
        raise ValueError("a node is given for the executor, and only for it")
    declared, bound, sources = _topology()
    mine = [q for q in QUEUES if q.service == service]
    own = [q.name for q in mine if q.name != EXECUTOR]
    raw = [SERVER_NAMED] if service in _SERVER_NAMED_BY else []
    if node is not None:
        own.append(executor_queue(node))
        sources.append(COMMANDS)  # its queue is bound to the commands exchange
    sent = [r for r in ROUTES if r.sender == service and not (node and r.many_nodes)]
    # Replies (to ``reply_to``) and the readiness probe go to the default exchange.
    published = [r.exchange or DEFAULT_EXCHANGE for r in sent] + [DEFAULT_EXCHANGE]
    # Making a queue that dead-letters (quorum) needs write on the dead-letter exchange,
    # and the bus dead-letters a refused heartbeat itself. Making one also needs read on
    # the queue: a service makes only its own; the shared ones are made at provisioning
    # (deploy/provision.py), and declaring a queue that exists needs configure alone.
    if mine:
        published.append(DLX)
    keys = [_key_pattern(r, node) for r in sent if r.exchange == EVENTS]
    return Permissions(
        configure=_any_of([*declared, *own], raw),
        # binding a queue is writing to it; publishing is writing to an exchange
        write=_any_of([*bound, *own, *published], raw),
        read=_any_of([*own, *sources], raw),
        topic_write="^(" + "|".join(keys) + ")$" if keys else "^$",
    )


def relayed_by(service: str) -> str:
    """The outbox rows (``exchange routing_key``, as a regex PostgreSQL and Python both
    read) that ``service``'s relay publishes: those of the routes it sends, which are
    the rows its broker user may publish."""
    parts = []
    for r in ROUTES:
        if r.sender == service and r.exchange in (EVENTS, COMMANDS):
            literals = _FIELD.split(f"{r.exchange} {r.key}")[::2]
            # a field is one key part or more (a node name may hold dots)
            parts.append(".+".join(re.escape(x) for x in literals))
    return "^(" + "|".join(dict.fromkeys(parts)) + ")$" if parts else "^$"


def _key_pattern(route: Route, node: str | None) -> str:
    """The keys a route's messages are published with, ``{node}`` being ``node``."""
    parts = _FIELD.split(route.key)  # literal, field, literal, ..., literal
    out = re.escape(parts[0])
    for field_name, literal in zip(parts[1::2], parts[2::2], strict=True):
        out += (re.escape(node) if field_name == "node" and node else "[^.]+") + re.escape(literal)
    return out


def _main(argv: list[str]) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m common.routes")
    parser.add_argument("--permissions", metavar="SERVICE", choices=SERVICES)
    parser.add_argument("--node", help="the executor's node (with --permissions executor)")
    args = parser.parse_args(argv)
    if args.permissions is None:
        print(markdown(), end="")
        return 0
    try:
        found = permissions(args.permissions, args.node)
    except ValueError as exc:
        parser.error(str(exc))
    print(json.dumps({f: getattr(found, f) for f in Permissions.__slots__}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))

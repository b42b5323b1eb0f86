"""Every message on the bus: frozen, keyword-only msgspec Structs, JSON on the wire.

Each message carries a type tag (``"type"``), a unique ``id`` and a schema version ``v``.
Decoders are built once per consumer from the union of what that consumer accepts; a
message that does not decode is refused with the reason and dead-lettered.
Where each goes, who sends it and who consumes it is declared once, in common/routes.py;
docs/asyncapi.yaml is generated from both (tests/unit/test_messages.py checks they agree).
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

import msgspec

from common.states import EndReason

SCHEMA_VERSION = 1


# Row ids: what a PostgreSQL bigint holds (a larger number is refused where it is read).
Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


def _new_id() -> str:
    """A message id: 128 random bits in hex (32 characters, as ``uuid4().hex``), at a
    fifth of the cost of a UUID object."""
    return os.urandom(16).hex()


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every bus message."""

    id: str = msgspec.field(default_factory=_new_id)
    v: int = SCHEMA_VERSION


# ---- requests (api -> scheduler) -------------------------------------------------------


class ExecutionSubmitted(Message, frozen=True, kw_only=True, tag="execution.submitted"):
    """A new execution is stored (state submitted) and asks to be scheduled."""

    execution_id: Id


class ExecutionsSubmitted(Message, frozen=True, kw_only=True, tag="execution.submitted_many"):
    """Several new executions, stored together by one statement (submissions that
    reached the api at the same time), ask to be scheduled: as many ExecutionSubmitted."""

    execution_ids: list[Id]


class ExecutionTerminateRequested(Message, frozen=True, kw_only=True, tag="execution.terminate"):
    """A user asked to terminate an execution."""

    execution_id: Id


class NodeDrainRequested(Message, frozen=True, kw_only=True, tag="node.drain"):
    """An admin asked to drain a node (``drain``) or to put it back to work (not).

    A drained node takes no new instances; its elastic instances move to other nodes;
    its essential ones stay until their executions end or, ``deadline`` seconds after
    the request (None: no deadline), end as if the node were lost."""

    node: str
    drain: bool = True
    deadline: Annotated[float, msgspec.Meta(ge=0)] | None = None


# ---- node facts (executor -> scheduler, monitor) ---------------------------------------


class ContainerUsage(msgspec.Struct, frozen=True, kw_only=True):
    """One container's resource use, sampled by its executor."""

    instance_id: Id
    cpu_percent: float
    memory_bytes: int


class NodeHeartbeat(Message, frozen=True, kw_only=True, tag="node.heartbeat"):
    """An executor is alive; carries its capacity and what it runs.

    ``registered`` is true for the first heartbeat after the executor starts (its
    registration); ``instances`` lists the instance ids of the containers it manages.
    ``stopping`` is true for the last one, sent when the executor stops cleanly (a
    restart, say): its containers keep running, and its silence for a while is no loss.
    """

    node: str
    cores: float
    memory: int
    labels: list[str] = []
    images: list[str] = []
    instances: list[int] = []
    usage: list[ContainerUsage] = []
    registered: bool = False
    stopping: bool = False
    sent_at: float = 0.0


class NodeAlive(Message, frozen=True, kw_only=True, tag="node.alive"):
    """An executor is alive, and nothing it reported in its last `NodeHeartbeat` changed:
    the beat between two full heartbeats, for the monitor alone (liveness is its). A
    node sends a full heartbeat instead when its inventory changed, when its previous
    beat went out late or failed, and at least every ``inventory_interval``."""

    node: str
    sent_at: float = 0.0


class NodeHeartbeats(Message, frozen=True, kw_only=True, tag="node.heartbeat_many"):
    """The full heartbeats of several nodes that one process plays (hollow nodes), sent
    together: each as the node would send it alone. ``sender`` names the process."""

    sender: str
    beats: list[NodeHeartbeat] = []


class NodesAlive(Message, frozen=True, kw_only=True, tag="node.alive_many"):
    """The liveness beats (`NodeAlive`) of several nodes that one process plays (hollow
    nodes), sent together, for the monitor alone. ``sender`` names the process."""

    sender: str
    nodes: list[str] = []
    sent_at: float = 0.0


# ---- commands (scheduler -> one executor) ----------------------------------------------


class PortRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A port to publish on the host."""

    name: str
    port_number: int
    protocol: str = "tcp"
    url_template: str | None = None


class VolumeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A volume to mount: ``source`` is a host path or a named Docker volume."""

    source: str
    path: str
    read_only: bool = False


class StartInstance(Message, frozen=True, kw_only=True, tag="instance.start"):
    """Start the container of one instance (idempotent: the name decides)."""

    execution_id: Id
    instance_id: int
    instance: str  # the instance name, also its DNS name in the execution's network
    container_name: str
    network: str
    image: str
    command: str | None = None
    environment: dict[str, str] = {}
    cores_limit: float
    memory_limit: int
    # What the scheduler reserved for the instance on the node (at most the limits): the
    # executor re-checks the sum over its running containers against its capacity.
    # None: not stated (the command is checked against the node's capacity alone).
    cores_reserved: float | None = None
    memory_reserved: int | None = None
    shm_size: int | None = None
    work_dir: str | None = None
    ports: list[PortRequest] = []
    volumes: list[VolumeRequest] = []
    labels: dict[str, str] = {}
    # The ZApp says this service needs root in its containers (else they run as uid 1000
    # with no capability); the api let only roles with run-as-root submit it.
    run_as_root: bool = False


class StartInstances(Message, frozen=True, kw_only=True, tag="instance.start_many"):
    """Several starts for one node that one scheduling pass placed there, sent together:
    each is handled as the StartInstance it carries (and reported by its own fact)."""

    starts: list[StartInstance]


class StopInstance(Message, frozen=True, kw_only=True, tag="instance.stop"):
    """Stop and remove the container of one instance (idempotent)."""

    execution_id: Id
    instance_id: int
    container_name: str
    network: str


class LogsRequest(Message, frozen=True, kw_only=True, tag="instance.logs"):
    """Ask an executor for a live container's log; the reply goes to ``reply_to``.

    To follow a log, ask with ``follow`` and then again and again with the ``cursor`` of
    the previous reply: each reply carries only what was printed since (``tail`` applies
    to the first request only).
    """

    container_name: str
    tail: int | None = None
    follow: bool = False
    cursor: str = ""  # from the previous LogsReply of a follow; "" for the first


# ---- container facts (executor -> monitor, scheduler) ----------------------------------


class InstanceStarted(Message, frozen=True, kw_only=True, tag="fact.started"):
    """The container of an instance runs."""

    node: str
    execution_id: Id
    instance_id: int
    container_id: str
    container_name: str
    endpoints: dict[str, str] = {}  # port name -> its URL (the port's url_template filled)


class InstancesStarted(Message, frozen=True, kw_only=True, tag="fact.started_many"):
    """The containers of several instances run: the facts of the starts one
    StartInstances command carried, sent together (each counts as the InstanceStarted
    it carries)."""

    node: str
    started: list[InstanceStarted]


class InstanceStartFailed(Message, frozen=True, kw_only=True, tag="fact.start_failed"):
    """The container of an instance could not be created or started."""

    node: str
    execution_id: Id
    instance_id: int
    container_name: str
    reason: str


class InstanceExited(Message, frozen=True, kw_only=True, tag="fact.exited"):
    """The container of an instance stopped running (it still exists)."""

    node: str
    execution_id: Id
    instance_id: int
    container_id: str
    exit_code: int
    oom_killed: bool = False
    container_name: str = ""


class InstanceRemoved(Message, frozen=True, kw_only=True, tag="fact.removed"):
    """The container of an instance is gone; ``log`` is the tail it printed."""

    node: str
    execution_id: Id
    instance_id: int
    container_name: str
    exit_code: int | None = None
    oom_killed: bool = False
    log: str = ""


# ---- verdicts (monitor -> scheduler) ---------------------------------------------------


class InstanceEnded(Message, frozen=True, kw_only=True, tag="verdict.instance_ended"):
    """The container of an instance ended, and how: ``exited`` (code 0 by itself),
    ``crashed``, ``oom``, ``start-failed`` (``detail``: the engine's reason) or
    ``node-lost``; ``gone``: the container no longer exists either. Self-contained: the
    scheduler alone decides what it means (a stop it had asked for, a restart, the end
    of the execution), and it applies only to the container it names (``""``: the
    instance's current one)."""

    execution_id: Id
    instance_id: int
    reason: EndReason
    exit_code: int | None = None
    detail: str = ""
    container_name: str = ""
    container_id: str = ""
    gone: bool = False


class NodeLost(Message, frozen=True, kw_only=True, tag="verdict.node_lost"):
    """A node missed its heartbeats for longer than the timeout."""

    node: str


# ---- events (scheduler -> anyone) ------------------------------------------------------


class StateChange(msgspec.Struct, frozen=True, kw_only=True):
    """One execution moved to ``state`` at ``at`` (Unix seconds); ``user`` is whose it
    is (for streams that show each user their own)."""

    execution_id: Id
    state: str
    at: float
    user: str = ""


class ExecutionStatesChanged(Message, frozen=True, kw_only=True, tag="state.executions"):
    """Executions moved to new states: the changes one statement of the scheduler made
    (a pass that starts a thousand executions announces them in one message, or a few:
    ``STATE_CHANGES_PER_MESSAGE`` at most each; an execution that ends alone, in one of
    its own)."""

    changes: list[StateChange]


# The most changes one ExecutionStatesChanged carries (about 100 bytes each).
STATE_CHANGES_PER_MESSAGE = 1000


class NetworkEnsure(Message, frozen=True, kw_only=True, tag="network.ensure"):
    """An executor on a swarm worker engine asks one on a manager engine to create the
    overlay network of an execution (idempotent; the reply is a NetworkReply). The
    network's name is derived from the execution by the manager's executor:
    ``<deployment>-x<execution_id>``."""

    node: str  # the asking node
    execution_id: Id


class NetworkRelease(Message, frozen=True, kw_only=True, tag="network.release"):
    """An executor removed the last container of an execution on its (worker) engine:
    a manager's executor removes the execution's overlay network unless a container on
    another host still uses it. No reply."""

    node: str
    execution_id: Id


class NetworkReply(Message, frozen=True, kw_only=True, tag="network.reply"):
    """A manager's executor's answer to a NetworkEnsure: ``ok``, or why not."""

    ok: bool
    network: str = ""
    reason: str = ""


class LogsReply(Message, frozen=True, kw_only=True, tag="instance.logs_reply"):
    """An executor's answer to a LogsRequest.

    For a follow: ``cursor`` is where the next request continues, and ``running`` says
    whether more may come (false once the container stopped: the follow is over).
    """

    found: bool
    log: str = ""
    cursor: str = ""
    running: bool = False


# ---- the AMQP request interface (other platforms -> api, reply to ``reply_to``) ---------


class SubmitRequest(
    Message, frozen=True, kw_only=True, tag="api.submit", forbid_unknown_fields=True
):
    """Create an execution: ``application`` (a ZApp description) or a shop ``zapp`` with
    ``params`` and ``resources`` (per-service overrides, as over HTTP). The message ``id``
    is the idempotency key: a redelivery creates nothing. Unknown fields are refused."""

    name: str
    application: Any = None
    zapp: str | None = None
    params: dict[str, Any] | None = None
    resources: dict[str, Any] | None = None
    priority: int = 0


class TerminateRequest(
    Message, frozen=True, kw_only=True, tag="api.terminate", forbid_unknown_fields=True
):
    """Terminate an execution."""

    execution_id: Id


class GetRequest(Message, frozen=True, kw_only=True, tag="api.get", forbid_unknown_fields=True):
    """Read an execution with its service instances."""

    execution_id: Id


class ApiReply(Message, frozen=True, kw_only=True, tag="api.reply"):
    """The answer to an api request: an HTTP-like ``status`` and the same ``body`` the
    HTTP API would give (the execution, or ``{"error", "errors"}``)."""

    status: int
    body: Any = None


_encoder = msgspec.json.Encoder()


def encode(message: Message) -> bytes:
    """The wire form of ``message``."""
    return _encoder.encode(message)


def decoder(union: Any) -> msgspec.json.Decoder[Any]:
    """A decoder for one consumer's inbox (a message type or a union of them)."""
    return msgspec.json.Decoder(union)


def tag_of(message: Message | type[Message]) -> str:
    """The type tag, which is also the routing key's first part."""
    cls = message if isinstance(message, type) else type(message)
    return _tag_of_class(cls)


@functools.cache
def _tag_of_class(cls: type[Message]) -> str:
    # msgspec.inspect is slow (~250 us a call) and this runs for every message sent
    return str(msgspec.inspect.type_info(cls).tag)  # type: ignore[attr-defined]

"""Every Prometheus metric of Zoe, declared once, and which service exposes which.

The metric objects live here (one set per process: a hollow process running many
executors counts them all together, under no node label, so a thousand hollow nodes do
not make a thousand series each). None of them is registered in prometheus_client's
default registry: ``registry(service)`` builds the registry of one service process with
the metrics it exposes (its own, the shared bus and outbox ones, the process figures),
so the api does not show empty scheduler histograms, and a test running several
services in one process gets one registry per service rather than a global one to
reset. docs/operations.md lists them; a unit test checks the list against this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.registry import Collector

# Buckets from a millisecond to a few minutes: handlers, passes, starts, waits.
SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Waits in the queue may be long: up to an hour.
WAIT_SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# ---- every service: the bus and the outbox ----------------------------------------------

MESSAGES_CONSUMED = Counter(
    "zoe_messages_consumed_total",
    "Messages delivered to this process, by queue (executor queues as executor.{node}).",
    ["queue"],
    registry=None,
)
MESSAGES_REDELIVERED = Counter(
    "zoe_messages_redelivered_total",
    "Deliveries of messages delivered before (the broker's redelivered flag), by queue.",
    ["queue"],
    registry=None,
)
MESSAGES_REFUSED = Counter(
    "zoe_messages_refused_total",
    "Messages dead-lettered by this process, by queue and reason"
    " (invalid, too_large, rejected: a user error).",
    ["queue", "reason"],
    registry=None,
)
MESSAGES_REQUEUED = Counter(
    "zoe_messages_requeued_total",
    "Messages given back to their queue after their handler failed (a delivery spent).",
    ["queue"],
    registry=None,
)
OUTBOX_PUBLISHED = Counter(
    "zoe_outbox_published_total",
    "Outbox rows this process's relay published (and deleted).",
    registry=None,
)
OUTBOX_PARKED = Counter(
    "zoe_outbox_parked_total",
    "Outbox rows this process's relay parked (refused by the broker for their own sake).",
    registry=None,
)
OUTBOX_LAG = Histogram(
    "zoe_outbox_relay_lag_seconds",
    "From an outbox row's insert to the broker's confirm of its publish.",
    buckets=SECONDS,
    registry=None,
)

# ---- the api ----------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "zoe_http_requests_total",
    "HTTP requests answered, by route pattern, method and status.",
    ["route", "method", "status"],
    registry=None,
)
HTTP_DURATION = Histogram(
    "zoe_http_request_duration_seconds",
    "Time from an HTTP request to its handler's return (a stream: its whole life),"
    " by route and method.",
    ["route", "method"],
    buckets=SECONDS,
    registry=None,
)

# ---- the scheduler ----------------------------------------------------------------------

EXECUTIONS = Gauge(
    "zoe_executions",
    "Executions by state (read from the database every few seconds).",
    ["state"],
    registry=None,
)
QUEUE_LENGTH = Gauge(
    "zoe_queue_executions",
    "Executions waiting for their essential set to be placed (submitted or queued).",
    registry=None,
)
QUEUE_OLDEST_WAIT = Gauge(
    "zoe_queue_oldest_wait_seconds",
    "How long the oldest waiting execution has waited since its submission (0: none).",
    registry=None,
)
NODES = Gauge("zoe_nodes", "Nodes by state (up, lost).", ["state"], registry=None)
OUTBOX_BACKLOG = Gauge(
    "zoe_outbox_backlog_messages", "Rows in the outbox, not published yet.", registry=None
)
OUTBOX_OLDEST = Gauge(
    "zoe_outbox_oldest_age_seconds",
    "Age of the oldest row in the outbox (0: empty): the relays' lag.",
    registry=None,
)
OUTBOX_PARKED_ROWS = Gauge(
    "zoe_outbox_parked_messages", "Rows in outbox_parked (never published).", registry=None
)
PASS_DURATION = Histogram(
    "zoe_scheduling_pass_duration_seconds",
    "Duration of one scheduling pass (admit, dispatch, read, decide, apply).",
    buckets=SECONDS,
    registry=None,
)
FULL_COLLECTION = Histogram(
    "zoe_scheduler_full_collection_seconds",
    "Duration of a full garbage collection, which the scheduler runs between passes.",
    buckets=SECONDS,
    registry=None,
)
PLACEMENTS = Counter("zoe_placements_total", "Instances placed on a node by a pass.", registry=None)
RECLAIMS = Counter(
    "zoe_reclaims_total", "Elastic instances stopped by a pass to make room.", registry=None
)
RESTARTS = Counter(
    "zoe_restarts_total", "Instances queued again after they died (restarts).", registry=None
)
DEATHS = Counter(
    "zoe_instance_deaths_total",
    "Instances that died, by reason (crashed, oom, node-lost, start-failed, ...).",
    ["reason"],
    registry=None,
)
START_WAIT = Histogram(
    "zoe_execution_start_wait_seconds",
    "From an execution's submission to its running (every essential instance running).",
    buckets=WAIT_SECONDS,
    registry=None,
)
LEADER = Gauge(
    "zoe_scheduler_leader", "1 while this scheduler holds the leadership lock.", registry=None
)
VIEW_RELOADS = Counter(
    "zoe_scheduler_view_reloads_total",
    "Full reads of the scheduler's in-memory view from PostgreSQL, by reason (start: a"
    " term of leadership began; failed: a write whose outcome is unknown; reasons: a"
    " write of pending reasons failed).",
    ["reason"],
    registry=None,
)

# ---- the monitor ------------------------------------------------------------------------

NODES_LOST = Counter(
    "zoe_nodes_lost_total", "Nodes the monitor declared lost (silent too long).", registry=None
)
# zoe_node_heartbeat_age_seconds{node}: a collector over the monitor's last_seen
# (services/monitor/service.py), read at each scrape.
HEARTBEAT_AGE = "zoe_node_heartbeat_age_seconds"

# ---- the executor -----------------------------------------------------------------------

START_DURATION = Histogram(
    "zoe_instance_start_duration_seconds",
    "Time for an executor to start a container, from the command to its fact, by outcome"
    " (started, failed).",
    ["outcome"],
    buckets=SECONDS,
    registry=None,
)
STOP_DURATION = Histogram(
    "zoe_instance_stop_duration_seconds",
    "Time for an executor to stop and remove a container.",
    buckets=SECONDS,
    registry=None,
)

_COMMON: tuple[Collector, ...] = (
    MESSAGES_CONSUMED,
    MESSAGES_REDELIVERED,
    MESSAGES_REFUSED,
    MESSAGES_REQUEUED,
    OUTBOX_PUBLISHED,
    OUTBOX_PARKED,
    OUTBOX_LAG,
)
_EXPOSED: dict[str, tuple[Collector, ...]] = {
    "api": (HTTP_REQUESTS, HTTP_DURATION),
    "scheduler": (
        EXECUTIONS,
        QUEUE_LENGTH,
        QUEUE_OLDEST_WAIT,
        NODES,
        OUTBOX_BACKLOG,
        OUTBOX_OLDEST,
        OUTBOX_PARKED_ROWS,
        PASS_DURATION,
        FULL_COLLECTION,
        PLACEMENTS,
        RECLAIMS,
        RESTARTS,
        DEATHS,
        START_WAIT,
        LEADER,
        VIEW_RELOADS,
    ),
    "monitor": (NODES_LOST,),
    "executor": (START_DURATION, STOP_DURATION),
}


def service_of(process_name: str) -> str:
    """The service a runtime name belongs to (``executor.<node>`` is an executor)."""
    return process_name.partition(".")[0]


def registry(service: str, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry with what ``service`` exposes: its metrics, the bus and outbox ones,
    the process figures (CPU, memory, file descriptors, GC), and ``extra``."""
    reg = CollectorRegistry(auto_describe=True)
    for c in (
        *_COMMON,
        *_EXPOSED.get(service, ()),
        PROCESS_COLLECTOR,
        PLATFORM_COLLECTOR,
        GC_COLLECTOR,
        *extra,
    ):
        reg.register(c)
    return reg


def queue_label(queue: str) -> str:
    """The ``queue`` label of a queue: an executor's queue is ``executor.{node}`` (one
    series for every node, as a hollow process runs many)."""
    return "executor.{node}" if queue.startswith("executor.") else queue

"""The route table: every routed message has exactly one handler in each service that
consumes it, and the bindings, inboxes and deliveries follow from the table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import messages as m
from common import routes
from services.api import amqp
from services.executor import handlers as executor
from services.executor import networks
from services.monitor import handlers as monitor
from services.scheduler import handlers as scheduler

TABLES = {
    "scheduler": scheduler.HANDLERS,
    "monitor": monitor.HANDLERS,
    "api": amqp.HANDLERS,
    "executor": {**executor.HANDLERS, **networks.HANDLERS},
}


@pytest.mark.parametrize("service", sorted(TABLES))
def test_each_consuming_service_has_one_handler_per_routed_message(service: str) -> None:
    assert set(TABLES[service]) == routes.consumed_by(service)


def test_every_message_has_one_route_and_every_consumer_queue_exists() -> None:
    assert len({r.message for r in routes.ROUTES}) == len(routes.ROUTES)
    names = {q.name for q in routes.QUEUES}
    for r in routes.ROUTES:
        assert set(r.consumers) <= names, r


def test_bindings_inboxes_and_deliveries_come_from_the_table() -> None:
    bound = routes.bindings()
    assert ("zoe.events", "fact.started.*") in bound["scheduler"]
    assert ("zoe.events", "fact.started.*") not in bound["monitor"]
    assert bound["monitor.heartbeats"] == [
        ("zoe.events", "node.heartbeat.*"),
        ("zoe.events", "node.alive.*"),
        ("zoe.events", "node.heartbeat_many.*"),
        ("zoe.events", "node.alive_many.*"),
    ]
    assert bound["scheduler.heartbeats"] == [
        ("zoe.events", "node.heartbeat.*"),
        ("zoe.events", "node.heartbeat_many.*"),
    ]
    assert routes.messages_for("executor.n7") == (
        m.StartInstance,
        m.StartInstances,
        m.StopInstance,
        m.LogsRequest,
    )
    beat = routes.delivery("zoe.events", "node.heartbeat.n1")
    assert (beat.persistent, beat.mandatory) == (False, False)
    alive = routes.delivery("zoe.events", "node.alive.n1")
    assert (alive.persistent, alive.mandatory) == (False, False)
    for key in ("node.heartbeat_many.hollow", "node.alive_many.hollow"):  # hollow nodes'
        together = routes.delivery("zoe.events", key)
        assert (together.persistent, together.mandatory) == (False, False)
    # only a process of several nodes sends those: a single node's user may not
    topic = re.compile(routes.permissions("executor", "n1").topic_write)
    assert topic.match("node.alive.n1") and not topic.match("node.alive_many.n1")
    state = routes.delivery("zoe.events", "state.executions")
    assert (state.persistent, state.mandatory) == (True, False)
    fact = routes.delivery("zoe.events", "fact.exited.n1")
    assert (fact.persistent, fact.mandatory) == (True, True)
    assert routes.queue("scheduler.heartbeats").kind == "heartbeats"
    assert routes.queue("executor.n1").kind == "quorum"
    assert (
        routes.routing_key(
            m.StopInstance(execution_id=1, instance_id=2, container_name="c", network="n"), "n9"
        )
        == "n9"
    )


def test_the_architecture_page_shows_the_route_table() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert routes.markdown() in page, "run: python -m common.routes, paste into the page"


def test_what_is_retried_and_what_is_parked() -> None:
    import aiormq

    from common.bus import MessageTooLarge
    from common.outbox import refused_for_itself
    from common.retry import is_transient

    closed = aiormq.exceptions.ChannelInvalidStateError("channel closed")
    returned = aiormq.exceptions.DeliveryError(None, None)
    assert is_transient(closed) and is_transient(ConnectionResetError())
    assert not is_transient(returned) and not is_transient(ValueError())
    assert not refused_for_itself(closed) and not refused_for_itself(TimeoutError())
    assert refused_for_itself(returned) and refused_for_itself(MessageTooLarge("big"))

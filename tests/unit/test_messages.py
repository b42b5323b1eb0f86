"""The message contract: round trips, tags, routing keys, and the AsyncAPI document."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml

from common import asyncapi, routes
from common import messages as m

ROOT = Path(__file__).resolve().parents[2]


def _sample(cls: type[m.Message]) -> m.Message:
    values = {
        int: 7,
        float: 1.5,
        str: "node-a",
        bool: True,
    }
    if cls is m.StartInstances:
        start = _sample(m.StartInstance)
        assert isinstance(start, m.StartInstance)
        return m.StartInstances(starts=[start, start])
    if cls is m.InstancesStarted:
        started = _sample(m.InstanceStarted)
        assert isinstance(started, m.InstanceStarted)
        return m.InstancesStarted(node="node-a", started=[started, started])
    if cls is m.ExecutionsSubmitted:
        return m.ExecutionsSubmitted(execution_ids=[3, 4])
    if cls is m.ExecutionStatesChanged:
        change = m.StateChange(execution_id=3, state="running", at=1.5, user="u")
        return m.ExecutionStatesChanged(changes=[change, change])
    kwargs = {}
    for f in msgspec.structs.fields(cls):
        if f.required:
            kind = getattr(f.type, "__origin__", f.type)  # Annotated[int, ...] -> int
            kwargs[f.name] = values.get(kind, "finished" if f.name == "outcome" else "crashed")
    return cls(**kwargs)


@pytest.mark.parametrize("cls", routes.ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips_with_tag_id_and_version(cls: type[m.Message]) -> None:
    msg = _sample(cls)
    wire = m.encode(msg)
    decoded = m.decoder(cls).decode(wire)
    assert decoded == msg
    raw = msgspec.json.decode(wire)
    assert raw["type"] == m.tag_of(cls)
    assert len(raw["id"]) == 32 and raw["v"] == m.SCHEMA_VERSION


def test_tags_are_unique() -> None:
    tags = [m.tag_of(c) for c in routes.ALL_MESSAGES]
    assert len(tags) == len(set(tags))


def test_inbox_decoder_refuses_other_types() -> None:
    wire = m.encode(m.StopInstance(execution_id=1, instance_id=2, container_name="c", network="n"))
    with pytest.raises(msgspec.ValidationError):
        m.decoder(routes.inbox(routes.SCHEDULER)).decode(wire)


def test_routing_keys() -> None:
    started = m.InstanceStarted(
        node="n1", execution_id=1, instance_id=2, container_id="x", container_name="y"
    )
    assert routes.routing_key(started) == "fact.started.n1"
    assert routes.routing_key(m.ExecutionSubmitted(execution_id=3)) == "execution.submitted"
    assert routes.routing_key(m.NodeLost(node="n1")) == "verdict.node_lost"
    change = m.StateChange(execution_id=9, state="running", at=0)
    state = m.ExecutionStatesChanged(changes=[change])
    assert routes.routing_key(state) == "state.executions"


def test_asyncapi_document_matches_the_code() -> None:
    committed = (ROOT / "docs" / "asyncapi.yaml").read_text()
    assert committed == asyncapi.render(), "run: python -m common.asyncapi > docs/asyncapi.yaml"
    doc = yaml.safe_load(committed)
    assert doc == asyncapi.document()
    schemas = doc["components"]["schemas"]
    for cls, *_ in asyncapi.CHANNELS:
        props = schemas[cls.__name__]["properties"]
        assert set(props) >= {f.encode_name for f in msgspec.structs.fields(cls)}

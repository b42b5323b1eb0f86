"""Every consumed queue's decoder, fed random and malformed bodies (hypothesis): a body
either decodes to a message routed to that queue, or fails in a way the bus turns into
a refusal with a reason (never an exception that escapes, whatever the body)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from common import messages as m
from common import routes
from common.errors import InvalidRequest, invalid_message

json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(),
    lambda children: (
        hs.lists(children, max_size=4) | hs.dictionaries(hs.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@hs.composite
def bodies(draw: hs.DrawFn, queue: str) -> bytes:
    """Random bytes, random JSON, or a routed message's JSON with fields mangled."""
    kind = draw(hs.sampled_from(["bytes", "json", "mangled", "deep"]))
    if kind == "bytes":
        return draw(hs.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(hs.integers(100, 5000))
        return b'{"type":"x","a":' + b"[" * depth + b"]" * depth + b"}"
    message_type = draw(hs.sampled_from(routes.messages_for(queue)))
    fields = {f.encode_name: draw(json_values) for f in msgspec.structs.fields(message_type)}
    fields["type"] = m.tag_of(message_type)
    if draw(hs.booleans()):
        fields[draw(hs.text(min_size=1, max_size=8))] = draw(json_values)
    return json.dumps(fields).encode()


@pytest.mark.parametrize("queue", [q.name.replace("{node}", "n1") for q in routes.QUEUES])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hs.data())
def test_a_consumed_queue_decodes_or_refuses_with_a_reason(queue: str, data: hs.DataObject) -> None:
    body = data.draw(bodies(routes.queue(queue).name))
    decoder = m.decoder(routes.inbox(queue))
    try:
        decoded = decoder.decode(body)
    except Exception as exc:  # what Bus.consume catches around decoding
        refusal = invalid_message(exc)
        assert isinstance(refusal, InvalidRequest)
        assert refusal.errors and refusal.errors[0].message
        return
    assert type(decoded) in routes.messages_for(queue)

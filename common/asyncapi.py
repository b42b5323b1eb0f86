"""Generate docs/asyncapi.yaml (AsyncAPI 3) from the route table (common/routes.py) and
the message types (common/messages.py).

``python -m common.asyncapi > docs/asyncapi.yaml`` regenerates it; a unit test checks
that the committed document matches the code.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import msgspec

from common import messages as m
from common import routes

# message -> (channel address, exchange, who sends it): from the route table
CHANNELS: list[tuple[type[m.Message], str, str, str]] = routes.described()


# The headers of a request to `api.requests`: whose request it is.
REQUEST_HEADERS: dict[str, Any] = {
    "type": "object",
    "required": ["zoe-token"],
    "properties": {
        "zoe-token": {
            "type": "string",
            "description": "an API token of the platform's user (zoe token create);"
            " the request acts as that user, with its role and quota",
        }
    },
}


def document() -> dict[str, Any]:
    """The AsyncAPI 3 document as plain data."""
    types = [c[0] for c in CHANNELS] + list(routes.REPLIES)
    _, schemas = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for cls, address, exchange, sender in CHANNELS:
        name = cls.__name__
        key = name[0].lower() + name[1:]
        params = {p: {"description": f"the {p.replace('_', ' ')}"} for p in _params(address)}
        channel: dict[str, Any] = {
            "address": address,
            "description": (cls.__doc__ or "").strip().splitlines()[0],
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": _queue_binding(address)
            if exchange == ""
            else {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "direct" if exchange == routes.COMMANDS else "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "/",
                    },
                    "bindingVersion": "0.3.0",
                }
            },
        }
        if params:
            channel["parameters"] = params
        channels[key] = channel
        operations[f"send{name}"] = {
            "action": "send",
            "summary": f"published by the {sender}",
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{name}"}],
        }
    messages = {
        cls.__name__: {
            "name": m.tag_of(cls),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
        }
        for cls in types
    }
    for cls, address, _, _ in CHANNELS:
        if address == routes.API_REQUESTS:
            messages[cls.__name__]["headers"] = REQUEST_HEADERS
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Zoe bus",
            "version": str(m.SCHEMA_VERSION),
            "description": (
                "Messages between Zoe's services on RabbitMQ, and what other platforms may "
                "bind to. Every message is JSON with a `type` tag, a unique `id` and a schema "
                "version `v`; messages are persistent, except heartbeats "
                "(`node.heartbeat.*`, and the liveness beats between them, `node.alive.*`), "
                "which are transient (worth nothing a few seconds "
                "later). Heartbeats and state events (`state.*`) are dropped when no queue "
                "is bound to them. "
                "Commands go to the direct exchange "
                "`zoe.commands` with the node name as routing key (queue `executor.<node>`). "
                "Other platforms send requests to the queue `api.requests` (default exchange) "
                "with `reply_to` and `correlation_id`, and get an `ApiReply`. Executors on a "
                "Docker Swarm worker ask those on a manager for an execution's overlay network "
                "on the queue `executor.networks` (`NetworkEnsure`, replied to with a "
                "`NetworkReply`; `NetworkRelease`): transient, internal to Zoe, answered "
                "only when the message's `user_id` (which the broker checks against the "
                "publisher's login, and which every Zoe service sets) is the broker user of "
                "the executor of the node it names (else a `NetworkReply` with `ok` false "
                "and the reason, then the `dead-letters` queue). A request that "
                "does not decode (not JSON, an unknown type or field, a wrong type, an id "
                "outside 0..2^63-1, nested too deeply), is larger than the HTTP API's body "
                "limit, or is refused gets an `ApiReply` with a 4xx `status` and "
                "`{error, errors: [{path, message}]}` (the JSON path of each offending "
                "field), then goes to the `dead-letters` queue. Each request carries its "
                "platform's API token in the header `zoe-token` and acts as that token's "
                "user (a 401 reply without one, or with an unknown, revoked or expired one). "
                "A submission's message id is its idempotency key (per user)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _queue_binding(queue: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {"name": queue, "durable": True, "exclusive": False, "autoDelete": False},
            "bindingVersion": "0.3.0",
        }
    }


def _params(address: str) -> list[str]:
    return [part[1:-1] for part in address.split(".") if part.startswith("{")]


_PLAIN = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$-]*$")


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML emitter for JSON-like data (strings are JSON-quoted, valid YAML)."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            key = str(k) if _PLAIN.match(str(k)) else json.dumps(str(k))
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(v, indent + 1)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for v in value:
            if isinstance(v, (dict, list)) and v:
                body = to_yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {body}")
            else:
                lines.append(f"{pad}- {to_yaml(v, indent + 1)}")
        return "\n".join(lines)
    return json.dumps(value)


def render() -> str:
    """The YAML text of docs/asyncapi.yaml."""
    return (
        "# Generated by `python -m common.asyncapi`; do not edit by hand.\n"
        + to_yaml(document())
        + "\n"
    )


if __name__ == "__main__":
    sys.stdout.write(render())

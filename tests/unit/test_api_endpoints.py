"""Endpoints as the API shows them: only while their instance runs, proxied ones on the
gateway's public URL."""

from __future__ import annotations

from typing import Any

from services.api.endpoints import public, shown


def _execution(state: str, instance_state: str) -> dict[str, Any]:
    return {
        "state": state,
        "services": [
            {
                "state": instance_state,
                "endpoints": {
                    "notebook": "http://10.0.0.5:32768/proxy/7/jupyter0/8888/?a=1",
                    "ui": "http://10.0.0.5:32769/",
                },
            }
        ],
    }


def test_a_proxied_endpoint_is_given_on_the_public_url() -> None:
    out = shown(_execution("running", "running"), "https://zoe.example.org/")
    assert out["services"][0]["endpoints"] == {
        "notebook": "https://zoe.example.org/proxy/7/jupyter0/8888/?a=1",
        "ui": "http://10.0.0.5:32769/",  # not proxied: as the executor reported it
    }
    assert public("http://h:1/proxy/1/a/2/", "") == "http://h:1/proxy/1/a/2/"


def test_no_endpoint_once_the_instance_or_its_execution_ends() -> None:
    for state, instance in [
        ("running", "stopped"),
        ("cleaning_up", "running"),
        ("finished", "stopped"),
    ]:
        assert shown(_execution(state, instance), "")["services"][0]["endpoints"] == {}

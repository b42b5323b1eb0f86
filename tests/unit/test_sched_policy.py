"""Policy settings strings: parsing, defaults and errors."""

from __future__ import annotations

import pytest

from services.scheduler.core import InvalidPolicy, Policy


def test_defaults_are_the_policy_the_simulations_favour():
    policy = Policy()
    assert (policy.name, policy.placement, policy.reclaim, policy.priorities) == (
        "dynsize",
        "pack",
        True,
        True,
    )
    assert Policy.from_name("dynsize") == policy
    assert str(policy) == "dynsize"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fifo", Policy(name="fifo")),
        ("size+spread", Policy(name="size", placement="spread")),
        ("DynSize + noreclaim", Policy(name="dynsize", reclaim=False)),
        ("dynsize+nopriority+aging=60", Policy(priorities=False, aging=60.0)),
        ("dynsize+lookahead=8+scan=50", Policy(lookahead=8, scan=50)),
        ("flexible", Policy(name="flexible", placement="spread", reclaim=False)),
        (
            "flexible+size+pack",
            Policy(name="flexible", order="size", placement="pack", reclaim=False),
        ),
    ],
)
def test_settings_strings_parse(text, expected):
    policy = Policy.from_name(text)
    assert policy == expected
    assert Policy.from_name(str(policy)) == policy


@pytest.mark.parametrize(
    "text",
    [
        "",
        "lottery",
        "dynsize+tetris",
        "fifo+size",
        "flexible+reclaim",
        "dynsize+aging=soon",
        "dynsize+aging=0",
        "dynsize+lookahead=-1",
    ],
)
def test_bad_settings_are_refused(text):
    with pytest.raises(InvalidPolicy):
        Policy.from_name(text)


def test_queue_order_of_the_flexible_heuristic_comes_from_its_order():
    assert Policy.from_name("flexible").queue_order == "fifo"
    assert Policy.from_name("flexible+dynsize").queue_order == "dynsize"
    assert Policy.from_name("size").queue_order == "size"

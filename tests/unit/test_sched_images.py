"""Placement prefers a node already holding the instance's image (pure, no I/O)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.scheduler.core import Policy, schedule
from services.scheduler.invariants import check_decisions
from services.scheduler.placement import Cluster, millicores
from tests.unit.test_sched_support import GIB, execution, inst, node

IMAGE = "zoe/spark:4.3"


def holding(n, *images):  # type: ignore[no-untyped-def]
    return replace(n, images=frozenset(images))


def cluster(*nodes):  # type: ignore[no-untyped-def]
    c = Cluster(list(nodes))
    c.build_index()
    return c


def test_the_policys_pick_stands_when_it_holds_the_image_or_nobody_does() -> None:
    c = cluster(holding(node("a", 4), IMAGE), holding(node("b", 8), IMAGE))
    a = c.index["a"]
    assert c.prefer_image(a, millicores(1), GIB, frozenset(), IMAGE, False) == a
    nobody = cluster(node("a", 4), node("b", 8))
    assert nobody.prefer_image(0, millicores(1), GIB, frozenset(), IMAGE, False) == 0
    assert nobody.prefer_image(-1, millicores(1), GIB, frozenset(), IMAGE, False) == -1
    assert c.prefer_image(a, millicores(1), GIB, frozenset(), "", False) == a


def test_a_fitting_holder_wins_and_the_policy_ranks_the_holders() -> None:
    c = cluster(
        node("bare", 2),
        holding(node("small", 4), IMAGE),
        holding(node("large", 16), IMAGE),
        holding(node("full", 1), IMAGE),  # too small for the request
    )
    bare = c.index["bare"]
    one = millicores(2)
    assert c.prefer_image(bare, one, GIB, frozenset(), IMAGE, False) == c.index["small"]
    assert c.prefer_image(bare, one, GIB, frozenset(), IMAGE, True) == c.index["large"]


def test_a_holder_without_the_labels_or_unavailable_is_not_taken() -> None:
    c = cluster(
        node("bare", 4, 32, "gpu"),
        holding(node("plain", 8), IMAGE),
        holding(node("down", 8, 32, "gpu", up=False), IMAGE),
    )
    bare = c.index["bare"]
    got = c.prefer_image(bare, millicores(1), GIB, frozenset({"gpu"}), IMAGE, False)
    assert got == bare


@pytest.mark.parametrize("policy", ["dynsize", "fifo", "dynsize+spread", "flexible"])
def test_a_pass_places_instances_on_the_nodes_holding_their_image(policy: str) -> None:
    # best fit alone would take "tight" (least room left); spread would take "roomy"
    nodes = [node("tight", 2, 4), holding(node("mid", 6, 16), IMAGE), node("roomy", 16, 64)]
    ex = execution(1, [replace(inst(1, 1), image=IMAGE), replace(inst(1, 1), image=IMAGE)])
    decisions = schedule(nodes, [ex], now=100.0, policy=Policy.from_name(policy))
    assert check_decisions(nodes, [ex], decisions, 100.0) == []
    assert [n for _, n in decisions.starts] == ["mid", "mid"]
    other = execution(2, [replace(inst(2, 1), image="zoe/other:1")])
    decisions = schedule(nodes, [other], now=100.0, policy=Policy.from_name(policy))
    assert [n for _, n in decisions.starts] != ["mid"]  # no preference: the policy's pick

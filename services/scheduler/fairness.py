"""Fairness figures of a simulated run: each user's mean slowdown, the worst of them,
Jain's index over them, and how far each user is from what it gets alone."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping


def per_user_slowdown(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Mean slowdown of each user, from (user, slowdown) of every finished application."""
    by_user: dict[str, list[float]] = defaultdict(list)
    for user, slowdown in rows:
        by_user[user].append(slowdown)
    return {u: statistics.fmean(v) for u, v in sorted(by_user.items())}


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index (Σx)² / (n Σx²): 1 when all are equal, 1/n at worst."""
    xs = list(values)
    square = sum(x * x for x in xs)
    if not xs or square == 0:
        return 1.0
    return sum(xs) ** 2 / (len(xs) * square)


def heaviest(counts: Mapping[str, int]) -> str | None:
    """The user submitting the most applications (ties: the first name)."""
    if not counts:
        return None
    return min(counts, key=lambda u: (-counts[u], u))


def worst_ratio(
    per_user: Mapping[str, float], alone: Mapping[str, float], skip: str | None
) -> float:
    """The largest of each user's mean slowdown over what it gets alone (but `skip`'s)."""
    ratios = [per_user[u] / alone[u] for u in per_user if u != skip and u in alone and alone[u] > 0]
    return max(ratios, default=1.0)

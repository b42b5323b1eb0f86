"""Quotas per user: concurrent executions, cores and memory held by active executions,
and the runtime limit of each execution.

A submission is checked against its user's quota in the transaction that stores it,
under a lock per user, so two concurrent submissions cannot both slip under a limit. The
cores and memory of an execution are those of all its service instances, essential and
elastic (what it may hold once fully grown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from common.errors import FieldError
from services.api import auth, users

UNITS = {"executions": "", "cores": " cores", "memory": " bytes"}


@dataclass(frozen=True, slots=True)
class Quota:
    """A user's limits; None: no limit."""

    executions: int | None = None
    cores: float | None = None
    memory: int | None = None
    runtime: float | None = None

    @property
    def limits_holdings(self) -> bool:
        return not (self.executions is None and self.cores is None and self.memory is None)


UNLIMITED = Quota()


class OverQuota(auth.Forbidden):
    """A submission that would take its user past a quota."""

    def __init__(self, quota: str, limit: float, used: float, requested: float) -> None:
        super().__init__(
            f"over quota: {quota}",
            [
                FieldError(
                    f"quota.{quota}",
                    f"the limit is {limit:g}{UNITS[quota]}; active executions hold"
                    f" {used:g} and this one asks for {requested:g}",
                )
            ],
        )
        self.quota, self.limit, self.used, self.requested = quota, limit, used, requested

    def to_dict(self) -> dict[str, object]:
        out = super().to_dict()
        out.update(quota=self.quota, limit=self.limit, used=self.used, requested=self.requested)
        return out


async def quota_of(db: asyncpg.Pool | asyncpg.Connection, user: str) -> Quota:
    """The user's quota: their overrides, else their role's defaults (read at most every
    ``auth.Remembered.ttl`` seconds per user through a pool)."""
    kept = auth.remembered(db) if isinstance(db, asyncpg.Pool) else None
    found = kept.quota(user) if kept is not None else None
    if isinstance(found, Quota):
        return found
    generation = kept.generation if kept is not None else 0
    q = (await users.get_user(db, user))["quota"]
    quota = Quota(q["executions"], q["cores"], q["memory"], q["runtime"])
    if kept is not None:
        kept.keep_quota(user, quota, generation)
    return quota


async def check(
    conn: asyncpg.Connection, user: str, quota: Quota, *, cores: float, memory: int
) -> None:
    """Raise OverQuota if one more execution holding ``cores`` and ``memory`` takes
    ``user`` past ``quota``. Call inside the transaction that stores the execution: it
    takes the user's lock until that transaction ends."""
    if not quota.limits_holdings:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('zoe.quota:' || $1))", user)
    used = await users.usage(conn, user)
    asked: dict[str, Any] = {"executions": 1, "cores": cores, "memory": memory}
    for name in ("executions", "cores", "memory"):
        limit = getattr(quota, name)
        if limit is not None and used[name] + asked[name] > limit + 1e-9:
            raise OverQuota(name, limit, used[name], asked[name])

"""PostgreSQL through asyncpg: pools, and ordered plain-SQL migrations under a lock.

A URL may list several servers, a primary and its standbys:
``postgresql://postgres@h1:5432,h2:5432/zoe?target_session_attrs=read-write``. asyncpg
tries them in order and keeps the first that accepts writes, for every connection it
makes (a pool's too), so after a failover new connections find the promoted standby.

Migrations are the files ``common/migrations/NNN_name.sql``, applied in order, each in
its own transaction, recorded in ``schema_migrations``. A session-level advisory lock
makes concurrent starts (several services at once) apply each file exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import structlog

log = structlog.get_logger("db")

MIGRATION_LOCK = 0x20E_0001  # advisory lock key for migrations


# msgspec: several times faster than the json module on the descriptions and instance
# specs every submission stores (and it takes msgspec structs as they are)
_JSON = msgspec.json.Encoder()


def _encode_json(value: object) -> str:
    return _JSON.encode(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=_encode_json, decoder=msgspec.json.decode, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection as it is: asyncpg has already rolled back an unfinished
    transaction and dropped its listeners. Its default reset query (unlisten, unlock,
    reset settings) would cost a round trip per release for state Zoe never leaves on
    a pooled connection (advisory locks are taken on connections of their own)."""


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: without NUL characters (which a text column
    refuses) and with any unpaired surrogate replaced (which UTF-8 cannot encode)."""
    text = text.replace("\x00", "")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="replace").decode()
    return text


@asynccontextmanager
async def pool(url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool whose json/jsonb columns read and write Python objects."""
    p = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
    )
    try:
        yield p
    finally:
        await p.close()


def admin_url(url: str) -> tuple[str, str]:
    """The URL of the database ``postgres`` on the same servers as ``url``, and the name
    of ``url``'s database. Hosts, user and query (``target_session_attrs``, say) are
    kept as they are: ``url`` may list several hosts (``h1:5432,h2:5432``)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres")), parts.path.lstrip("/")


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` when it does not exist yet."""
    admin, name = admin_url(url)
    if not name:
        return
    conn = await asyncpg.connect(admin)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()


def _migration_files() -> list[tuple[str, str]]:
    root = importlib.resources.files("common") / "migrations"
    files = sorted(f.name for f in root.iterdir() if f.name.endswith(".sql"))
    return [(name, (root / name).read_text()) for name in files]


async def migrate(url: str) -> list[str]:
    """Create the database if needed and apply pending migrations; returns their names."""
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, sql in _migration_files():
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("db.migrated", migration=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


def migrate_main(argv: list[str] | None = None) -> int:
    """``zoe-migrate``: apply migrations to ``ZOE_DATABASE_URL`` (or ``--url``)."""
    from common.logging import configure
    from common.settings import Settings

    parser = argparse.ArgumentParser(prog="zoe-migrate", description=migrate_main.__doc__)
    parser.add_argument("--url", help="PostgreSQL URL (default: ZOE_DATABASE_URL)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure("migrate", settings.log_level, settings.log_json)
    applied = asyncio.run(migrate(args.url or settings.database_url))
    print(f"migrations applied: {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    return 0


if __name__ == "__main__":
    sys.exit(migrate_main())

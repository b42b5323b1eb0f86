"""The first admin: ``python -m services.api.bootstrap --token-file var/secrets/admin.token``.

Run by ``make up`` after the migrations. The first time (no user of role admin yet) it
creates the user ``admin`` with a generated password, prints the password once, and
writes an API token of that admin to the token file (mode 0600). Later runs change
nothing, except that a missing token file gets a new token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from common.errors import Conflict
from common.settings import ApiSettings
from services.api import auth, users


async def ensure_user(
    db: asyncpg.Pool | asyncpg.Connection,
    name: str,
    role: str,
    *,
    password: str | None = None,
    description: str = "",
) -> str:
    """A new API token of user ``name``, created with ``role`` (and ``password``, else a
    generated one) if it does not exist yet."""
    try:
        await users.create_user(db, name, role, password or auth.generated_password())
    except Conflict:
        pass
    token = await users.create_token(db, name, description=description)
    return str(token["token"])


async def bootstrap(database_url: str, *, want_token: bool) -> tuple[str, str | None]:
    """Create the first admin unless one exists; returns an admin's name and, when
    ``want_token``, a new API token of theirs."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            admin = await conn.fetchval("SELECT name FROM users WHERE role = 'admin' LIMIT 1")
            if admin is None:
                password = auth.generated_password()
                await users.create_user(conn, "admin", "admin", password)
                admin = "admin"
                print(f"created the first admin: user 'admin', password {password}")
                print("  (shown once; change it with `zoe user passwd admin`)", flush=True)
            if not want_token:
                return admin, None
            token = await users.create_token(conn, admin, description="make up")
            return admin, str(token["token"])
    finally:
        await conn.close()


def write_secret(path: Path, secret: str) -> None:
    """Write ``secret`` to a new file only its owner may read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.api.bootstrap", description=__doc__)
    parser.add_argument("--token-file", type=Path, default=Path("var/secrets/admin.token"))
    args = parser.parse_args(argv)
    settings = ApiSettings.from_env()
    want = not args.token_file.exists()
    admin, token = asyncio.run(bootstrap(settings.database_url, want_token=want))
    if token is not None:
        write_secret(args.token_file, token)
        print(f"wrote an API token of {admin!r} to {args.token_file} (mode 0600)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

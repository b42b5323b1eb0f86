"""Least privilege for a deployment: one RabbitMQ user per service and a PostgreSQL role
that is not a superuser, each with a generated password kept under ``var/secrets/``.

``make up`` (deploy/up.sh) runs ``python -m deploy.provision``, which writes one
environment file per service process, ``var/secrets/zoe-<service>.env`` (mode 0600),
holding that process's own ``ZOE_AMQP_URL`` and ``ZOE_DATABASE_URL``; deploy/lib.sh
starts each process with its file. The broker users' rights are derived from the route
table (``common.routes.permissions``), never written by hand; ``guest`` gets no right on
the deployment's vhost. Tests call the same functions for a vhost and database of their
own. What each user may do, and why: docs/operations.md, "Least privilege".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import asyncpg

from common import routes, topology
from common.settings import Settings

SECRETS = Path("var/secrets")
# The role the services connect to PostgreSQL as (owning the database), when none is
# named: ``make up`` names it after the deployment, so that two share no role.
DEFAULT_ROLE = "zoe"
# The superuser deploy/install.sh makes for provisioning and the test suite.
ADMIN_ROLE = "zoe_admin"

Ctl = Callable[..., str]


class Secrets:
    """Generated passwords, one file each in a directory only root reads (0700, files
    0600); a password once made is kept, so provisioning again changes nothing."""

    def __init__(self, root: Path = SECRETS) -> None:
        self.root = root

    def password(self, name: str) -> str:
        """The password kept as ``<name>.password``, made on first use. It never starts
        with ``-``: rabbitmqctl would read it as an option ("Password is not provided");
        one kept from before that starts so is made anew (provisioning sets it again)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        path = self.root / f"{name}.password"
        if path.exists():
            kept = path.read_text().strip()
            if kept and not kept.startswith("-"):
                return kept
        value = new_password()
        write_private(path, value + "\n")
        return value


def new_password() -> str:
    """24 random bytes, URL-safe (it goes into a URL as it is), not starting with ``-``."""
    while True:
        value = secrets.token_urlsafe(24)
        if not value.startswith("-"):
            return value


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (from its creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


def rabbitmqctl(*args: str, timeout: float = 60, attempts: int = 4) -> str:
    """Run ``rabbitmqctl -q args`` (in a session of its own, so that a timeout kills its
    Erlang VM too); returns what it printed, raises with its error when it fails.
    Tried again a few times: a broker that restarts refuses commands meanwhile."""
    for attempt in range(attempts):
        proc = subprocess.Popen(
            ["rabbitmqctl", "-q", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            out, err = "", f"timed out after {timeout:g}s"
            proc.returncode = -1
        if proc.returncode == 0:
            return out
        if attempt < attempts - 1:
            time.sleep(2 * (attempt + 1))
    raise RuntimeError(f"rabbitmqctl {args[0]} failed: {err.strip() or out.strip()}")


# ---- RabbitMQ ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerUser:
    """The broker user of one service process (an executor's: of one node)."""

    process: str  # zoe-api, zoe-scheduler, zoe-monitor, zoe-executor-<node>
    service: str
    node: str | None
    name: str  # the RabbitMQ user, <deployment>-<service>[-<node>]

    @property
    def permissions(self) -> routes.Permissions:
        return routes.permissions(self.service, self.node)


def broker_users(deployment: str, nodes: Iterable[str]) -> list[BrokerUser]:
    """The users of a deployment: api, scheduler, monitor, and one per executor node."""
    out = [
        BrokerUser(f"zoe-{s}", s, None, f"{deployment}-{s}")
        for s in ("api", "scheduler", "monitor")
    ]
    for node in dict.fromkeys(nodes):
        out.append(
            BrokerUser(f"zoe-executor-{node}", "executor", node, f"{deployment}-executor-{node}")
        )
    return out


def provision_broker(
    base_url: str,
    deployment: str,
    nodes: Iterable[str],
    store: Secrets,
    *,
    quorum_size: int = 0,
    ctl: Ctl = rabbitmqctl,
) -> dict[str, str]:
    """Make the vhost of ``base_url`` and each service's user in it with the rights the
    route table gives it (an existing user gets its kept password and rights again);
    take ``guest``'s rights on the vhost away. Returns each process's AMQP URL."""
    vhost = unquote(urlsplit(base_url).path[1:]) or "/"
    if vhost not in ctl("list_vhosts", "name", "--no-table-headers").split():
        ctl("add_vhost", vhost)
    existing = _users(ctl)
    # The vhost's own administrator (no broker-wide tag): it makes the topology below.
    admin, admin_password = f"{deployment}-admin", store.password(f"amqp-{deployment}-admin")
    ctl("change_password" if admin in existing else "add_user", admin, admin_password)
    ctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
    admin_url = with_credentials(base_url, admin, admin_password)
    asyncio.run(declare_topology(admin_url, nodes, quorum_size))
    urls = {}
    for user in broker_users(deployment, nodes):
        password = store.password(f"amqp-{user.name}")
        if user.name in existing:
            ctl("change_password", user.name, password)
        else:
            ctl("add_user", user.name, password)
        rights = user.permissions
        ctl("set_permissions", "-p", vhost, user.name, rights.configure, rights.write, rights.read)
        ctl(
            "set_topic_permissions",
            "-p",
            vhost,
            user.name,
            routes.EVENTS,
            rights.topic_write,
            ".*",
        )
        urls[user.process] = with_credentials(base_url, user.name, password)
    if "guest" in existing and vhost != "/":
        for line in ctl("list_permissions", "-p", vhost, "--no-table-headers").splitlines():
            if line.split("\t")[0] == "guest":
                ctl("clear_permissions", "-p", vhost, "guest")
    return urls


def _users(ctl: Ctl) -> set[str]:
    return {line.split("\t")[0] for line in ctl("list_users", "--no-table-headers").splitlines()}


async def declare_topology(url: str, nodes: Iterable[str], quorum_size: int = 0) -> None:
    """Make the exchanges, the shared queues and each node's command queue, as the
    vhost's administrator: making a queue that dead-letters needs read on it, which a
    service has on its own queues only (declaring one that exists needs configure)."""
    connection = await aio_pika.connect_robust(url)
    try:
        # a shared queue an earlier version declared otherwise is made anew here: a
        # service could delete it, but not make it again
        await topology.replace_outdated_queues(connection, quorum_size)
        channel = await connection.channel()
        await topology.declare_topology(channel, quorum_size)
        for node in nodes:
            queue = await topology.declare_queue(
                channel, routes.executor_queue(node), None, quorum_size
            )
            await queue.bind(routes.COMMANDS, routing_key=node)
    finally:
        await connection.close()


def remove_broker_users(deployment: str, nodes: Iterable[str], *, ctl: Ctl = rabbitmqctl) -> None:
    """Delete a deployment's broker users (their passwords stay in the secrets)."""
    existing = _users(ctl)
    for name in [f"{deployment}-admin", *(u.name for u in broker_users(deployment, nodes))]:
        if name in existing:
            ctl("delete_user", name)


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` in place of whatever credentials it had."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


# ---- PostgreSQL -------------------------------------------------------------------------


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def provision_database(
    admin_url: str, database_url: str, store: Secrets, *, role: str = DEFAULT_ROLE
) -> str:
    """Make ``role`` a login role that is no superuser and may create neither roles nor
    databases, with its kept password; make (or hand over) the database of
    ``database_url`` owned by it, tables included. ``admin_url``: a superuser's
    connection (any database). Returns ``database_url`` as ``role`` with its password."""
    password = store.password(f"postgres-{role}")
    name = urlsplit(database_url).path.lstrip("/")
    if not name:
        raise ValueError(f"{database_url}: no database named in the URL")
    conn = await asyncpg.connect(admin_url)
    try:
        attributes = f"LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS PASSWORD {_literal(password)}"
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"ALTER ROLE {_ident(role)} {attributes}")
        else:
            await conn.execute(f"CREATE ROLE {_ident(role)} {attributes}")
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f"ALTER DATABASE {_ident(name)} OWNER TO {_ident(role)}")
        else:
            await conn.execute(f"CREATE DATABASE {_ident(name)} OWNER {_ident(role)}")
    finally:
        await conn.close()
    await _hand_over(with_database(admin_url, name), role)
    return with_credentials(database_url, role, password)


async def _hand_over(admin_url: str, role: str) -> None:
    """Give ``role`` the tables and sequences an earlier version made as a superuser."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"ALTER SCHEMA public OWNER TO {_ident(role)}")
        rows = await conn.fetch(
            "SELECT c.relname, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')"
            " AND pg_get_userbyid(c.relowner) <> $1"
            " ORDER BY c.relkind = 'S'",  # tables first: their sequences go with them
            role,
        )
        for row in rows:
            if row["relkind"] == "S":
                owned = await conn.fetchval(
                    "SELECT pg_get_userbyid(relowner) = $2 FROM pg_class"
                    " WHERE relname = $1 AND relkind = 'S'",
                    row["relname"],
                    role,
                )
                if owned:
                    continue
            kind = "SEQUENCE" if row["relkind"] == "S" else "TABLE"
            await conn.execute(
                f"ALTER {kind} public.{_ident(row['relname'])} OWNER TO {_ident(role)}"
            )
    finally:
        await conn.close()


async def drop_role(admin_url: str, role: str) -> None:
    """Drop ``role`` (its database must be gone or handed over first)."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {_ident(role)}")
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def admin_database_url(store: Secrets, database_url: str) -> str:
    """A superuser's connection to the servers of ``database_url``: ``zoe_admin`` with
    the password deploy/install.sh keeps in ``postgres-admin.password`` when there is
    one, else ``postgres`` without a password (a server that trusts loopback)."""
    path = store.root / "postgres-admin.password"
    url = with_database(database_url, "postgres")
    if path.exists():
        return with_credentials(url, ADMIN_ROLE, path.read_text().strip())
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc="postgres@" + parts.netloc.rpartition("@")[2]))


# ---- make up ----------------------------------------------------------------------------


def write_env_files(
    store: Secrets, amqp: dict[str, str], database_url: str, local: str | None = None
) -> list[Path]:
    """One ``<process>.env`` per service process (0600): its own broker URL and the
    database role's URL. The executor of this host's node ``local`` is ``zoe-executor``;
    another node's file, ``zoe-executor-<node>.env``, is for that node's host."""
    written = []
    for process, url in amqp.items():
        name = "zoe-executor" if local and process == f"zoe-executor-{local}" else process
        path = store.root / f"{name}.env"
        write_private(path, f"ZOE_AMQP_URL={url}\nZOE_DATABASE_URL={database_url}\n")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deploy.provision``: the users, role and env files of ``make up``."""
    parser = argparse.ArgumentParser(prog="python -m deploy.provision", description=main.__doc__)
    parser.add_argument("--amqp-url", default=os.environ.get("ZOE_AMQP_URL"), required=False)
    parser.add_argument("--database-url", default=os.environ.get("ZOE_DATABASE_URL"))
    parser.add_argument("--deployment", default=os.environ.get("ZOE_DEPLOYMENT", "zoe"))
    parser.add_argument("--node", required=True, help="the node of this host's executor")
    parser.add_argument(
        "--add-node",
        action="append",
        default=[],
        metavar="NODE",
        help="an executor on another host: its user, queue and zoe-executor-NODE.env",
    )
    parser.add_argument("--secrets", type=Path, default=SECRETS)
    parser.add_argument(
        "--role", help="the services' database role (default: the deployment's name)"
    )
    parser.add_argument(
        "--no-broker",
        action="store_true",
        help="the broker is not local (rabbitmqctl cannot reach it): every process gets"
        " --amqp-url as it is",
    )
    args = parser.parse_args(argv)
    if not args.amqp_url or not args.database_url:
        parser.error("--amqp-url and --database-url (or ZOE_AMQP_URL, ZOE_DATABASE_URL) are needed")
    nodes = [args.node, *args.add_node]
    store = Secrets(args.secrets)
    role = args.role or args.deployment
    if args.no_broker:
        amqp = {u.process: args.amqp_url for u in broker_users(args.deployment, nodes)}
    else:
        quorum = Settings.from_env().amqp_quorum_size
        amqp = provision_broker(args.amqp_url, args.deployment, nodes, store, quorum_size=quorum)
    database = asyncio.run(
        provision_database(
            admin_database_url(store, args.database_url), args.database_url, store, role=role
        )
    )
    for path in write_env_files(store, amqp, database, args.node):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

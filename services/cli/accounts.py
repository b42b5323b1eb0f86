"""``zoe login``, ``zoe logout``, ``zoe whoami``, ``zoe user``, ``zoe quota`` and
``zoe token``: signing in and managing users, quotas and API tokens."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from services.cli import config
from services.cli.client import Client

GIB = 2**30


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _secret_from_stdin(prompt: str) -> str:
    """A password: read from standard input when it is not a terminal, else asked for."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def cmd_login(client: Client, args: argparse.Namespace) -> int:
    username = args.username or input("user name: ")
    password = _secret_from_stdin("password: ")
    reply = client.call("POST", "/login", {"username": username, "password": password})
    path = config.store(client.url, reply["token"])
    print(f"signed in as {reply['user']} ({reply['role']}); token stored in {path}")
    return 0


def cmd_logout(client: Client, args: argparse.Namespace) -> int:
    client.call("POST", "/logout")
    config.store(client.url, None)
    print("signed out")
    return 0


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    me = client.call("GET", "/me")
    if args.json:
        _print_json(me)
        return 0
    print(f"{me['name']} ({me['role']}): {', '.join(me['capabilities']) or 'no capabilities'}")
    print("quota:", _quota(me["quota"]))
    print("in use:", _quota(me["usage"]))
    return 0


def _quota(q: dict[str, Any]) -> str:
    def show(key: str, unit: str = "", scale: float = 1) -> str:
        value = q.get(key)
        return f"{key} {'unlimited' if value is None else f'{value / scale:g}{unit}'}"

    parts = [show("executions"), show("cores"), show("memory", " GiB", GIB)]
    if "runtime" in q:
        parts.append(show("runtime", " s"))
    return ", ".join(parts)


def cmd_user_add(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if not sys.stdin.isatty():
        body["password"] = _secret_from_stdin("")
    user = client.call("POST", "/users", body)
    print(f"user {user['name']} ({user['role']}) created")
    if "password" in user:
        print(f"password: {user['password']}")
    return 0


def cmd_user_ls(client: Client, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/users")
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'USER':<20} {'ROLE':<8} {'ENABLED':<7}  QUOTA")
    for u in rows:
        print(
            f"{u['name']:<20} {u['role']:<8} {'yes' if u['enabled'] else 'no':<7}  {_quota(u['quota'])}"
        )
    return 0


def cmd_user_set(client: Client, args: argparse.Namespace, change: dict[str, Any]) -> int:
    user = client.call("PATCH", f"/users/{args.name}", change)
    print(
        f"user {user['name']}: role {user['role']}, {'enabled' if user['enabled'] else 'disabled'}"
    )
    return 0


def cmd_user_passwd(client: Client, args: argparse.Namespace) -> int:
    password = _secret_from_stdin("new password: ")
    return cmd_user_set(client, args, {"password": password})


def cmd_quota_set(client: Client, args: argparse.Namespace) -> int:
    body = {
        "executions": args.executions,
        "cores": args.cores,
        "memory": args.memory,
        "runtime": args.runtime,
    }
    user = client.call("PUT", f"/users/{args.name}/quota", body)
    print(f"quota of {user['name']}: {_quota(user['quota'])}")
    return 0


def cmd_token_create(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"description": args.description}
    if args.user:
        body["user"] = args.user
    token = client.call("POST", "/tokens", body)
    print(token["token"])
    print(f"token {token['id']} of {token['user']} (shown once)", file=sys.stderr)
    return 0


def cmd_token_ls(client: Client, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/tokens" + (f"?user={args.user}" if args.user else ""))
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'ID':>5}  {'USER':<16} {'KIND':<5}  {'CREATED':<19}  {'STATE':<8}  DESCRIPTION")
    for t in rows:
        state = "revoked" if t["revoked_at"] else "active"
        print(
            f"{t['id']:>5}  {t['user']:<16} {t['kind']:<5}  {t['created_at'][:19]:<19}"
            f"  {state:<8}  {t['description']}"
        )
    return 0


def cmd_token_revoke(client: Client, args: argparse.Namespace) -> int:
    client.call("DELETE", f"/tokens/{args.id}")
    print(f"token {args.id} revoked")
    return 0


def add_parsers(sub: Any) -> None:
    """Add the account commands to the ``zoe`` parser."""
    p = sub.add_parser("login", help="sign in; the token is kept in ~/.config/zoe/config")
    p.add_argument("username", nargs="?", help="asked for when not given")
    p.set_defaults(func=cmd_login)
    p = sub.add_parser("logout", help="sign out (revokes the stored token)")
    p.set_defaults(func=cmd_logout)
    p = sub.add_parser("whoami", help="your user, role, quota and what you use")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_whoami)

    user = sub.add_parser("user", help="manage users (admins)").add_subparsers(
        dest="user_command", required=True, metavar="COMMAND"
    )
    p = user.add_parser(
        "add",
        help="add a user (the password is read from standard input when it is not a"
        " terminal, else generated and printed)",
    )
    p.add_argument("name")
    p.add_argument("--role", default="user", help="admin, user or guest (default user)")
    p.set_defaults(func=cmd_user_add)
    p = user.add_parser("ls", help="list users with their roles and quotas")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_user_ls)
    p = user.add_parser("disable", help="disable a user (their tokens are revoked)")
    p.add_argument("name")
    p.set_defaults(func=lambda c, a: cmd_user_set(c, a, {"enabled": False}))
    p = user.add_parser("enable", help="enable a disabled user")
    p.add_argument("name")
    p.set_defaults(func=lambda c, a: cmd_user_set(c, a, {"enabled": True}))
    p = user.add_parser("role", help="change a user's role")
    p.add_argument("name")
    p.add_argument("role")
    p.set_defaults(func=lambda c, a: cmd_user_set(c, a, {"role": a.role}))
    p = user.add_parser("passwd", help="set a user's password (from standard input)")
    p.add_argument("name")
    p.set_defaults(func=cmd_user_passwd)

    quota = sub.add_parser("quota", help="set users' quotas (admins)").add_subparsers(
        dest="quota_command", required=True, metavar="COMMAND"
    )
    p = quota.add_parser(
        "set", help="set a user's quota; a limit not given goes back to the role's default"
    )
    p.add_argument("name")
    p.add_argument("--executions", type=int, help="concurrent executions")
    p.add_argument("--cores", type=float, help="cores held by active executions")
    p.add_argument("--memory", type=int, metavar="BYTES", help="memory held by active executions")
    p.add_argument("--runtime", type=float, metavar="SECONDS", help="runtime limit per execution")
    p.set_defaults(func=cmd_quota_set)

    token = sub.add_parser("token", help="API tokens for scripts and platforms").add_subparsers(
        dest="token_command", required=True, metavar="COMMAND"
    )
    p = token.add_parser("create", help="create an API token and print it (once)")
    p.add_argument("--description", default="", help="what it is for")
    p.add_argument("--user", help="for another user (admins)")
    p.set_defaults(func=cmd_token_create)
    p = token.add_parser("ls", help="list tokens (without their secrets)")
    p.add_argument("--user", help="another user's (admins)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_token_ls)
    p = token.add_parser("revoke", help="revoke a token")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_token_revoke)

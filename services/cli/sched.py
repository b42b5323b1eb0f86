"""``zoe node drain|undrain`` and how the CLI shows why an execution waits."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from services.cli.client import Client


def pending_line(execution: dict[str, Any]) -> str | None:
    """ "waiting: <reason>" for an execution the scheduler has not started, or None."""
    reason = execution.get("pending_reason")
    if not reason:
        return None
    return f"waiting: {reason}"


def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.deadline is not None:
        body["deadline"] = args.deadline
    node = client.call("POST", f"/nodes/{args.name}/drain", body)
    if args.json:
        print(json.dumps(node, indent=2, sort_keys=True))
        return 0
    until = (
        f"; what still runs there in {node['deadline']:g} s ends as on a lost node"
        if node.get("deadline") is not None
        else ""
    )
    print(f"node {args.name}: draining{until}")
    return 0


def cmd_undrain(client: Client, args: argparse.Namespace) -> int:
    client.call("POST", f"/nodes/{args.name}/undrain", {})
    print(f"node {args.name}: takes new work again")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``zoe node`` and its subcommands."""
    parser = sub.add_parser("node", help="drain a node or put it back to work (admins)")
    nsub = parser.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")

    p = nsub.add_parser(
        "drain",
        help="take no new instances on a node; move its elastic instances elsewhere",
    )
    p.add_argument("name", help="the node's name (zoe nodes)")
    p.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="after S seconds, end what still runs there as a lost node would",
    )
    p.add_argument("--json", action="store_true", help="print the node as JSON")
    p.set_defaults(func=cmd_drain)

    p = nsub.add_parser("undrain", help="let a drained node take new instances again")
    p.add_argument("name")
    p.set_defaults(func=cmd_undrain)


def print_pending(execution: dict[str, Any], last: str | None) -> str | None:
    """Print the reason to stderr when it changed since `last`; returns it."""
    line = pending_line(execution)
    if line is not None and line != last:
        print(f"execution {execution['id']}: {line}", file=sys.stderr)
    return line

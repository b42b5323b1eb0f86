"""``zoe``: the command line of the Zoe platform.

``ZOE_URL`` selects the API (default http://127.0.0.1:8080); ``zoe login`` signs in
(services/cli/config.py says where the token comes from: ``ZOE_TOKEN`` first).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from common.states import EXECUTION_FINAL
from services.cli import config, sched
from services.cli.accounts import add_parsers as add_account_parsers
from services.cli.client import ApiError, Client
from services.cli.zapp import add_parser as add_zapp_parser
from services.cli.zapp import parse_params


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _row(execution: dict[str, Any]) -> str:
    return (
        f"{execution['id']:>6}  {execution['name'][:24]:<24}  {execution['state']:<12}"
        f"  {execution['user'][:12]:<12}  {execution['submitted_at'][:19]}"
    )


def cmd_submit(client: Client, args: argparse.Namespace) -> int:
    if (args.file is None) == (args.zapp is None):
        print("zoe: give a description FILE or --zapp NAME", file=sys.stderr)
        return 2
    if args.zapp is not None:
        body: dict[str, Any] = {
            "name": args.name or args.zapp,
            "zapp": args.zapp,
            "params": parse_params(args.param),
        }
    else:
        path = Path(args.file)
        try:
            application = json.loads(path.read_text())
        except OSError as exc:
            print(f"zoe: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return 2
        except json.JSONDecodeError as exc:
            print(f"zoe: {path} is not valid JSON: {exc}", file=sys.stderr)
            return 2
        default = application.get("name") if isinstance(application, dict) else None
        body = {"name": args.name or default or path.stem, "application": application}
    execution = client.call("POST", "/executions", body)
    for warning in execution.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.wait:
        execution = _wait(client, execution["id"], args.wait, args.timeout, quiet=args.json)
    if args.json:
        _print_json(execution)
    else:
        print(f"execution {execution['id']} ({execution['name']}): {execution['state']}")
    if args.wait and execution["state"] in ("failed", "error"):
        return 1
    return 0


def _wait(client: Client, execution_id: int, until: str, timeout: float, *, quiet: bool) -> Any:
    """Poll until the execution runs (or ends), or until it ends when ``until == 'end'``."""
    deadline = time.monotonic() + timeout
    last = reason = None
    while True:
        execution = client.call("GET", f"/executions/{execution_id}")
        state = execution["state"]
        if state != last and not quiet:
            print(f"execution {execution_id}: {state}", file=sys.stderr)
            last = state
        if not quiet:
            reason = sched.print_pending(execution, reason)
        if state in EXECUTION_FINAL or (until == "running" and state == "running"):
            return execution
        if time.monotonic() > deadline:
            raise ApiError(0, f"execution {execution_id} still {state} after {timeout:.0f}s")
        time.sleep(0.25)


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    query = {"state": args.state, "user": args.user, "all": "1" if args.all else None}
    rows = client.call("GET", "/executions" + _query(query))
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'ID':>6}  {'NAME':<24}  {'STATE':<12}  {'USER':<12}  SUBMITTED")
    for r in rows:
        print(_row(r))
    return 0


def _query(params: dict[str, str | None]) -> str:
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""


def cmd_get(client: Client, args: argparse.Namespace) -> int:
    execution = client.call("GET", f"/executions/{args.id}")
    if args.json:
        _print_json(execution)
        return 0
    print(_row(execution))
    if execution.get("error"):
        print(f"  error: {execution['error']}")
    if (waiting := sched.pending_line(execution)) is not None:
        print(f"  {waiting}")
    for s in execution["services"]:
        extra = []
        if s["exit_code"] is not None:
            extra.append(f"exit {s['exit_code']}")
        if s["reason"]:
            extra.append(s["reason"])
        if s["restart_count"]:
            extra.append(f"restarts {s['restart_count']}")
        if s.get("usage") and s["state"] == "running":
            u = s["usage"]
            extra.append(f"cpu {u['cpu_percent']:.0f}% mem {u['memory_bytes'] / 2**20:.0f} MiB")
        kind = "essential" if s["essential"] else "elastic"
        print(
            f"  {s['name']:<20} {kind:<9} {s['state']:<9} {s['node'] or '-':<12}"
            f" {(s['container_id'] or '-')[:12]:<12} {' '.join(extra)}"
        )
        for port, url in (s.get("endpoints") or {}).items():
            print(f"      {port}: {url}")
    return 0


def cmd_terminate(client: Client, args: argparse.Namespace) -> int:
    client.call("POST", f"/executions/{args.id}/terminate")
    print(f"execution {args.id}: terminating")
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    params = [f"tail={args.tail}"] if args.tail is not None else []
    path = f"/executions/{args.id}/services/{args.instance}/logs"
    if not args.follow:
        query = "?" + "&".join(params) if params else ""
        sys.stdout.write(client.call("GET", path + query, raw=True))
        return 0
    # -f: the API streams the log while the container runs; print it as it comes
    import codecs
    import urllib.error
    import urllib.request

    req = client.request(path + "?" + "&".join([*params, "follow=1"]))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        with urllib.request.urlopen(req) as resp:  # no timeout: a quiet log is fine
            while chunk := resp.read1(65536):
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
    except urllib.error.HTTPError:
        client.call("GET", path)  # the API's error, described as for any other call
    except urllib.error.URLError as exc:
        print(f"zoe: cannot reach the Zoe API at {client.base}: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_nodes(client: Client, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/nodes")
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'NODE':<20} {'STATE':<7} {'CORES':>11} {'MEMORY GiB':>13} {'INSTANCES':>9}  LABELS")
    for n in rows:
        cores = f"{n['cores_reserved']:.1f}/{n['cores']:.1f}"
        mem = f"{n['memory_reserved'] / 2**30:.1f}/{n['memory'] / 2**30:.1f}"
        print(
            f"{n['name'][:20]:<20} {n['state']:<7} {cores:>11} {mem:>13} {n['instances']:>9}"
            f"  {','.join(n['labels'])}"
        )
    return 0


def cmd_simulate(argv: list[str]) -> int:
    from services.scheduler.simulator import main as simulate

    return simulate(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoe",
        description="Run analytics applications (ZApps) on a cluster of Docker hosts.",
        epilog="The API is at $ZOE_URL (default http://127.0.0.1:8080). Sign in with"
        " `zoe login`, or set ZOE_TOKEN (or ZOE_TOKEN_FILE) to an API token.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "submit", help="start an execution of a ZApp (a description file, or --zapp from the shop)"
    )
    p.add_argument("file", nargs="?", help="the ZApp description, a JSON file")
    p.add_argument("--zapp", metavar="NAME", help="a ZApp of the shop (zoe zapp ls)")
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a shop parameter"
    )
    p.add_argument("--name", help="execution name (default: the ZApp's name)")
    p.add_argument(
        "--wait",
        nargs="?",
        const="running",
        choices=["running", "end"],
        help="wait until the execution runs (or ends); with 'end', until it ends",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits at most")
    p.add_argument("--json", action="store_true", help="print the execution as JSON")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("ls", help="list your executions, newest first")
    p.add_argument("--state", help="only executions in this state")
    p.add_argument("--all", action="store_true", help="everyone's executions (admins)")
    p.add_argument("--user", help="only this user's executions (another's: admins)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("get", help="show one execution and its service instances")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("terminate", help="terminate an execution")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_terminate)

    p = sub.add_parser("logs", help="print the log of one service instance")
    p.add_argument("id", type=int)
    p.add_argument("instance", help="instance name, e.g. spark-worker0")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing while the instance runs"
    )
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("nodes", help="list the cluster's nodes and what is reserved on them")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_nodes)

    add_zapp_parser(sub)
    add_account_parsers(sub)
    sched.add_parser(sub)

    sub.add_parser(
        "simulate",
        help="run the scheduler simulator (zoe simulate --help)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``zoe``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        sys.exit(cmd_simulate(argv[1:]))
    args = build_parser().parse_args(argv)
    client = Client(config.url(), token=config.token())
    try:
        sys.exit(args.func(client, args))
    except ApiError as exc:
        print(f"zoe: {exc.describe()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

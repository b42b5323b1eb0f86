"""``zoe simulate``: a seeded workload, or the deployment's own history, under policies.

``--history [--since DATE]`` replays the finished executions stored in the database at
``ZOE_DATABASE_URL`` (services/scheduler/history.py) instead of a synthetic workload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from common.settings import Settings

from .history import parse_since, read_history
from .policies import InvalidPolicy
from .simulator import ALL_POLICIES, Variant, simulate
from .workload import SHAPES, Workload, make_workload


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoe simulate", description="Simulate a workload under scheduling policies."
    )
    parser.add_argument("--workload", default="default", choices=sorted(SHAPES))
    parser.add_argument(
        "--policy",
        default="all",
        help="a policy (e.g. dynsize, fair, dynsize+pack, flexible, rigid-fifo), a "
        "comma-separated list, or 'all'",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--apps", type=int, default=None, help="number of applications")
    parser.add_argument(
        "--history",
        action="store_true",
        help="replay this deployment's finished executions (from $ZOE_DATABASE_URL)",
    )
    parser.add_argument(
        "--since", metavar="DATE", help="with --history: only those submitted since DATE"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--plot", metavar="PNG", help="also draw the turnaround CDF here")
    parser.add_argument("--check", action="store_true", help="verify every decision")
    return parser


def _workload(args: argparse.Namespace) -> Workload:
    if not args.history:
        if args.since:
            raise ValueError("--since goes with --history")
        return make_workload(args.workload, args.seed, args.load, args.apps)
    since = parse_since(args.since) if args.since else None
    url = Settings.from_env(os.environ).database_url
    workload = asyncio.run(read_history(url, since))
    if not workload.apps:
        raise ValueError(
            "no finished execution to replay" + (f" since {args.since}" if since else "")
        )
    if not workload.nodes:
        raise ValueError("no node is up to replay the history on")
    return workload


def main(argv: list[str] | None = None) -> int:
    """Run, then print a table or JSON."""
    from .report import plot_turnarounds, render_table

    args = _parser().parse_args(argv)
    labels = list(ALL_POLICIES) if args.policy == "all" else args.policy.split(",")
    try:
        for label in labels:
            Variant.parse(label)
        workload = _workload(args)
    except (InvalidPolicy, ValueError, OSError) as exc:
        print(f"zoe simulate: {exc}", file=sys.stderr)
        return 2
    results = simulate(workload, labels, check=args.check)
    if args.json:
        doc = {
            "workload": workload.name,
            "seed": args.seed,
            "load": workload.load,
            "apps": len(workload.apps),
            "results": [r.figures() for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(workload, args.seed, results))
    if args.plot:
        floor = [a.runtime for a in workload.apps]
        plot_turnarounds(results, args.plot, title=_title(workload, args.seed), floor=floor)
    return 0


def _title(workload: Workload, seed: int) -> str:
    if workload.name == "history":
        return f"this deployment's history: {len(workload.apps)} executions"
    return (
        f"{workload.name} workload: {len(workload.apps)} apps, load {workload.load:g}, seed {seed}"
    )

"""Fuzz every HTTP route of the api with the strategies of tests/fuzzing.py, at a large
budget, against an api process on a database and vhost of its own.

    python tests/bench/fuzz_http.py --json [--examples 2000]

Prints how many requests each route got and every answer that broke the property
(a 5xx, or no JSON where JSON is due), at most ``--keep`` per route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import structlog
from _platform import ROOT, BenchPlatform, machine

sys.path.insert(0, str(ROOT))

from tests import fuzzing, rawhttp


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plat = BenchPlatform("fuzz-http")
    tried: Counter[str] = Counter()
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def seen(route: fuzzing.Route, req: fuzzing.Request, answer: rawhttp.Answer) -> None:
        tried[str(route)] += 1
        statuses[str(route)][answer.status] += 1
        wrong = fuzzing.problem(route, answer)
        if wrong is not None and len(found[str(route)]) < args.keep:
            found[str(route)].append(
                {
                    "target": req.target[:300].decode("latin-1"),
                    "body": repr(req.body)[:300],
                    "problem": wrong,
                }
            )

    try:
        await plat.create()
        plat.spawn("api", ["services.api"])
        async with aiohttp.ClientSession(headers=plat.headers) as session:
            await plat.wait_api(session)
        started = time.monotonic()
        for route in fuzzing.routes():
            if args.route and args.route not in str(route):
                continue
            await asyncio.to_thread(
                fuzzing.fuzz, plat.port, route, args.examples, seen, plat.admin_token
            )
            plat.check_alive()
        elapsed = time.monotonic() - started
    finally:
        await plat.destroy()
    return {
        "bench": "fuzz_http",
        "machine": machine(),
        "examples_per_route": args.examples,
        "seconds": round(elapsed, 1),
        "requests": sum(tried.values()),
        "tried": dict(tried),
        "statuses": {r: dict(sorted(c.items())) for r, c in statuses.items()},
        "problems": sum(len(v) for v in found.values()),
        "found": dict(found),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="requests per route")
    parser.add_argument("--keep", type=int, default=5, help="problems kept per route")
    parser.add_argument("--route", default="", help="only routes containing this text")
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout: JSON
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['requests']} requests in {out['seconds']} s, {out['problems']} problems")
        for route, count in out["tried"].items():
            print(f"  {route}: {count} tried, {len(out['found'].get(route, []))} problems")
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

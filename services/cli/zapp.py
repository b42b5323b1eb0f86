"""``zoe zapp ...``: the ZApp shop from the command line.

``ls``, ``show`` and ``render`` ask the API (the shop the platform serves);
``validate`` and ``build`` work locally, without a running platform.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from common.errors import InvalidZApp, ZoeError
from services.cli.client import ApiError, Client


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``K=V`` arguments as a dict; a malformed one is an error naming it."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ApiError(0, f"--param {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out


def cmd_ls(client: Client, args: argparse.Namespace) -> int:
    rows = client.call("GET", "/zapps")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':<20} {'CATEGORY':<16} {'KIND':<13} NAME")
    for z in rows:
        kind = "ephemeral" if z["will_end"] else "long-running"
        print(f"{z['id']:<20} {z['category'][:16]:<16} {kind:<13} {z['name']}")
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    z = client.call("GET", f"/zapps/{args.name}")
    if args.json:
        print(json.dumps(z, indent=2))
        return 0
    print(f"{z['name']}  [{z['id']}, {z['category']}]\n")
    print(z["readme"].rstrip() + "\n")
    if z["parameters"]:
        print("Parameters (zoe submit --zapp {} --param NAME=VALUE):".format(z["id"]))
        for p in z["parameters"]:
            bounds = ""
            if p.get("min") is not None or p.get("max") is not None:
                bounds = f", {p.get('min')}..{p.get('max')}"
            print(f"  {p['name']:<24} {p['kind']}, {p['type']}, default {p['default']}{bounds}")
            print(f"      {p['readable_name']}: {p['description']}")
    return 0


def cmd_render(client: Client, args: argparse.Namespace) -> int:
    out = client.call("POST", f"/zapps/{args.name}/render", {"params": parse_params(args.param)})
    for w in out["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(json.dumps(out["description"], indent=2))
    return 0


def cmd_validate(_: Client, args: argparse.Namespace) -> int:
    from common.zapp import load_description

    status = 0
    for name in args.files:
        try:
            data: Any = json.loads(Path(name).read_text())
            loaded = load_description(data)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}")
            status = 1
            continue
        except json.JSONDecodeError as exc:
            print(f"{name}: not valid JSON: {exc}")
            status = 1
            continue
        except InvalidZApp as exc:
            print(f"{name}: invalid, {len(exc.errors)} error(s)")
            for e in exc.errors:
                print(f"  {e}")
            status = 1
            continue
        for w in loaded.warnings:
            print(f"{name}: warning: {w}")
        print(f"{name}: valid")
    return status


def cmd_build(_: Client, args: argparse.Namespace) -> int:
    import aiodocker

    from common.logging import configure
    from common.settings import ExecutorSettings
    from services.executor.images import build_zapp, push

    configure("zoe", "info", json=False)
    root = Path(os.environ.get("ZOE_ZAPPS_ROOT", "zapps"))
    folder = root / args.name
    if not folder.is_dir():
        print(f"zoe: no ZApp folder {folder}", file=sys.stderr)
        return 1

    settings = ExecutorSettings.from_env()
    registry = "" if args.no_push else settings.registry

    async def build() -> list[str]:
        async with aiodocker.Docker() as docker:
            refs = await build_zapp(
                docker, folder, debian_mirror=settings.debian_mirror, registry=registry
            )
            # also those that were here already: the registry serves every host
            for ref in refs if registry else ():
                await push(docker, registry, ref)
            return refs

    try:
        refs = asyncio.run(build())
    except ZoeError as exc:
        print(f"zoe: {exc}", file=sys.stderr)
        return 1
    for ref in refs:
        print(f"{ref}: ready" + (f", in {registry}" if registry else ""))
    return 0


def add_parser(sub: Any) -> None:
    """Add ``zoe zapp`` and its subcommands."""
    parser = sub.add_parser("zapp", help="the ZApp shop: list, show, validate, render, build")
    zsub = parser.add_subparsers(dest="zapp_command", required=True, metavar="SUBCOMMAND")

    p = zsub.add_parser("ls", help="list the shop's ZApps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = zsub.add_parser("show", help="a ZApp's description, parameters and README")
    p.add_argument("name", help="the ZApp's id (its folder in zapps/)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = zsub.add_parser("render", help="print the final description with parameters applied")
    p.add_argument("name")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_render)

    p = zsub.add_parser("validate", help="check ZApp description files; exit 1 listing every error")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = zsub.add_parser(
        "build",
        help="build a ZApp's images on this host's Docker engine (skips those present) and"
        " push them to $ZOE_REGISTRY when set",
    )
    p.add_argument("name", help="the ZApp's folder name in $ZOE_ZAPPS_ROOT (default zapps/)")
    p.add_argument(
        "--no-push", action="store_true", help="build here only, even with ZOE_REGISTRY set"
    )
    p.set_defaults(func=cmd_build)

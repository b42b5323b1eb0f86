"""`python -m services.executor.images build REF... | build --zapp DIR | build --all |
present REF`: make images on this host, or tell whether one is present.

The ZApp library and the Debian mirror are the executor's settings (``ZOE_ZAPPS_ROOT``,
``ZOE_DEBIAN_MIRROR``) unless a flag says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import aiodocker
import structlog
from aiodocker.exceptions import DockerError

from common.errors import ZoeError
from common.settings import ExecutorSettings
from services.executor.images.build import build_library, build_zapp, ensure_images
from services.executor.images.docker_http import image_present


async def _cli(args: argparse.Namespace) -> int:
    async with aiodocker.Docker() as docker:
        if args.command == "present":
            present = await image_present(docker, args.ref)
            print(f"{args.ref}: {'present' if present else 'absent'}")
            return 0 if present else 1
        mirror = args.debian_mirror
        if args.all:
            root = Path(args.zapps_root)
            for ref in await build_library(docker, root, jobs=args.jobs, debian_mirror=mirror):
                print(f"{ref}: ready")
        for zapp in args.zapp:
            for ref in await build_zapp(docker, Path(zapp), jobs=args.jobs, debian_mirror=mirror):
                print(f"{ref}: ready")
        if args.refs:
            await ensure_images(
                docker,
                args.refs,
                zapps_root=Path(args.zapps_root),
                jobs=args.jobs,
                debian_mirror=mirror,
            )
            for ref in args.refs:
                print(f"{ref}: ready")
    return 0


def _parser(settings: ExecutorSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.executor.images")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="make images unless already present")
    build.add_argument("refs", nargs="*", metavar="REF", help="e.g. zoe/busybox:1, zoe/hello:1")
    build.add_argument(
        "--zapp",
        action="append",
        default=[],
        metavar="DIR",
        help="make every image the ZApp folder DIR defines",
    )
    build.add_argument(
        "--all", action="store_true", help="make every image of every ZApp in --zapps-root"
    )
    build.add_argument(
        "--jobs", type=int, default=2, metavar="N", help="build up to N images at once (2)"
    )
    build.add_argument(
        "--zapps-root",
        default=settings.zapps_root,
        help="where to look for ZApp Dockerfiles (default: $ZOE_ZAPPS_ROOT or zapps)",
    )
    build.add_argument(
        "--debian-mirror",
        default=settings.debian_mirror,
        metavar="URL",
        help=f"the Debian mirror of the zoe/debian base (default: $ZOE_DEBIAN_MIRROR or "
        f"{ExecutorSettings().debian_mirror})",
    )
    present = sub.add_parser("present", help="exit 0 if REF is present, 1 if not")
    present.add_argument("ref", metavar="REF")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`build REF...`, `build --zapp DIR`, `build --all`, or `present REF` (exit 0 or 1)."""
    try:
        settings = ExecutorSettings.from_env()
    except ZoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    parser = _parser(settings)
    args = parser.parse_args(argv)
    if args.command == "build" and not (args.refs or args.zapp or args.all):
        parser.error("build needs REF, --zapp DIR or --all")
    if not structlog.is_configured():
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        )
    try:
        return asyncio.run(_cli(args))
    except (ZoeError, DockerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

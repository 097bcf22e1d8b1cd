"""The `lastro` command: the local stack, services, audit verification, benchmarks."""

from __future__ import annotations

import argparse
import sys

from lastro.core.config import ConfigError, load_settings


def _dev(args: argparse.Namespace) -> int:
    from lastro.devstack import stack

    settings = load_settings()
    if args.action == "up":
        stack.up(settings)
        print(stack.render_status(stack.status(settings)))
        return 0
    if args.action == "down":
        stack.down(settings)
        return 0
    if args.action == "status":
        rows = stack.status(settings)
        print(stack.render_status(rows))
        return 0 if all(r.healthy for r in rows) else 1
    print(stack.logs(settings, args.component, args.lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lastro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local stack under .dev/")
    dev.add_argument("action", choices=["up", "down", "status", "logs"])
    dev.add_argument("component", nargs="?", help="for logs: one component")
    dev.add_argument("-n", "--lines", type=int, default=40)
    dev.set_defaults(func=_dev)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `lastro` command: the local stack, services, operations, benchmarks, the demo.

Each command group is a module of this package with ``register(subparsers)``; it
imports what it needs when it runs, so ``lastro --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from lastro.cli import bench, dashboards, demo, dev, fraud, operations, serve, trace
from lastro.core.config import ConfigError
from lastro.devstack.processes import StartError

COMMAND_GROUPS = (dev, serve, operations, bench, demo, fraud, trace, dashboards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lastro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"lastro: {exc}", file=sys.stderr)
        return 1

"""`lastro demo`: the platform walked through as its users see it, then verified."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lastro.core.config import load_settings


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="walk through the running platform as its users would")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from lastro.cli.operations import verify_audit, verify_ledger
    from lastro.demo import DemoFailed, run_demo

    try:
        asyncio.run(run_demo(load_settings()))
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    checks = [verify_ledger(argparse.Namespace(schema="accounts"))]
    checks.append(verify_audit(argparse.Namespace(all=True, schema=None)))
    return max(checks)

"""`lastro dev …`: the local stack under ``.dev/``, and `lastro dev sms` (what the
simulated SMS gateway received)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lastro.core.config import load_settings


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the local stack under .dev/")
    dev.add_argument(
        "action", choices=["bootstrap", "up", "down", "status", "logs", "restart", "sms"]
    )
    dev.add_argument("component", nargs="?", help="for logs: one component")
    dev.add_argument("-n", "--lines", type=int, default=40)
    dev.add_argument(
        "--browser", action="store_true", help="for bootstrap: also Chromium and its driver"
    )
    dev.add_argument("--to", help="for sms: only messages to this E.164 number")
    dev.add_argument("--reference", help="for sms: only messages with this reference")
    dev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastro.devstack import stack

    if args.action == "bootstrap":
        from lastro.devstack.bootstrap import bootstrap

        bootstrap(browser=args.browser)
        return 0
    settings = load_settings()
    if args.action == "up":
        stack.up(settings)
        print(stack.render_status(stack.status(settings)))
        return 0
    if args.action == "down":
        stack.down(settings)
        return 0
    if args.action == "restart":
        if not args.component:
            print("restart needs a component, e.g. `lastro dev restart accounts`", file=sys.stderr)
            return 2
        target = stack.component(settings, args.component)
        target.stop()
        target.start()
        print(f"{target.name} restarted at {target.address()}")
        return 0
    if args.action == "sms":
        from lastro.cli.sms import received_messages, render

        found = received_messages(settings, to=args.to, reference=args.reference, limit=args.lines)
        print(render(found))
        return 0
    if args.action == "status":
        rows = stack.status(settings)
        print(stack.render_status(rows))
        return 0 if all(r.healthy for r in rows) else 1
    print(stack.logs(settings, args.component, args.lines))
    return 0

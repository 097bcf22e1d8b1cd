"""`lastro dev …`: the local stack under ``.dev/`` (`status` also lists the alerts the
local Prometheus has firing), `lastro dev sms` (what the simulated SMS gateway
received) and `lastro dev mail` (what the SMTP sink received; ``--purge`` empties it,
or deletes only the messages ``--to`` one address)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lastro.core.config import load_settings


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="the local stack under .dev/")
    dev.add_argument(
        "action",
        choices=["bootstrap", "up", "down", "status", "logs", "restart", "sms", "mail"],
    )
    dev.add_argument("component", nargs="?", help="for logs: one component")
    dev.add_argument("-n", "--lines", type=int, default=40)
    dev.add_argument(
        "--browser", action="store_true", help="for bootstrap: also Chromium and its driver"
    )
    dev.add_argument("--to", help="for sms and mail: only messages to this number or address")
    dev.add_argument("--reference", help="for sms: only messages with this reference")
    dev.add_argument(
        "--purge",
        action="store_true",
        help="for mail: delete the messages (all, or those --to one address) instead of"
        " showing them",
    )
    dev.add_argument(
        "--k8s",
        action="store_true",
        help="bootstrap: build Helm, the Kubernetes control plane and kwok, install etcd"
        " and promtool; up: also start them (fake nodes, no kubelet) under .dev/k8s",
    )
    dev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastro.devstack import stack

    if args.action == "bootstrap":
        from lastro.devstack.bootstrap import bootstrap

        bootstrap(browser=args.browser)
        if args.k8s:
            from lastro.devstack.kubetools import ensure_tools

            ensure_tools(load_settings())
        return 0
    settings = load_settings()
    if args.action == "up":
        stack.up(settings, kubernetes=args.k8s)
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
        from lastro.cli import sms

        found = sms.received_messages(
            settings, to=args.to, reference=args.reference, limit=args.lines
        )
        print(sms.render(found))
        return 0
    if args.action == "mail":
        from lastro.cli import mail

        if args.purge:
            print(f"deleted {mail.purge(settings, to=args.to)} message(s)")
            return 0
        print(mail.render(mail.received_mail(settings, to=args.to, limit=args.lines)))
        return 0
    if args.action == "status":
        rows = stack.status(settings)
        print(stack.render_status(rows))
        print(stack.alerts_summary(settings))
        return 0 if all(r.healthy for r in rows) else 1
    print(stack.logs(settings, args.component, args.lines))
    return 0

"""`lastro dev mail [address] [-n N]`: what the dev stack's SMTP sink received.

Shows the newest ``N`` messages (all, or only those to ``address``): when, to whom,
the subject, the TLS version the sender used and the plain-text part. The sink
itself is the dev stack's ``smtp`` component (``lastro.devstack.smtp_sink``).
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add ``mail`` to the ``dev`` command's actions (its optional argument is the
    recipient, ``-n`` how many messages)."""
    dev = sub.choices["dev"]
    for action in dev._actions:  # argparse keeps no public handle on an argument
        if action.dest == "action" and action.choices is not None:
            action.choices = [*action.choices, "mail"]
    previous = dev.get_default("func")

    def run_dev(args: argparse.Namespace) -> int:
        return run(args) if args.action == "mail" else int(previous(args))

    dev.set_defaults(func=run_dev)


def run(args: argparse.Namespace) -> int:
    from lastro.core.config import load_settings
    from lastro.devstack.smtp_sink import read_mail

    settings = load_settings()
    messages = read_mail(settings.dev_dir / "mail", to=args.component)
    if not messages:
        print("no mail" + (f" to {args.component}" if args.component else ""))
        return 0
    for mail in messages[-args.lines :]:
        print(f"--- {mail.message.get('Date')}  to {', '.join(mail.rcpt_to)}  ({mail.tls})")
        print(f"Subject: {mail.subject}")
        print(f"Message-ID: {mail.message_id}")
        print((mail.part("text/plain") or "").rstrip())
    return 0

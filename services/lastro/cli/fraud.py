"""`lastro fraud evaluate`: score the detectors and rules on seeded synthetic traffic."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    fraud = sub.add_parser("fraud", help="fraud engine tools", add_help=False)
    fraud.add_argument("action", choices=["evaluate"], help="score the detectors (--help)")
    fraud.add_argument("options", nargs=argparse.REMAINDER, help="passed to the action")
    fraud.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastro.fraud import evaluation

    return evaluation.main(args.options)

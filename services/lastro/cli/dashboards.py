"""`lastro dashboards build [--check]`: write the Grafana dashboards of
``lastro.dashboards`` into the chart (``charts/lastro/files/grafana``), or, with
``--check``, fail when a committed file is not what the code builds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    dashboards = sub.add_parser("dashboards", help="generate the chart's Grafana dashboards")
    dashboards.add_argument("action", choices=["build"])
    dashboards.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is out of date"
    )
    dashboards.add_argument("--out", type=Path, help="directory (default: the chart's)")
    dashboards.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lastro.dashboards import DASHBOARDS, output_dir, render

    directory: Path = args.out or output_dir()
    stale = []
    for uid, build in DASHBOARDS.items():
        path = directory / f"{uid}.json"
        text = render(build)
        current = path.read_text() if path.exists() else None
        if current == text:
            print(f"{path}: up to date")
            continue
        if args.check:
            stale.append(path)
            print(f"{path}: differs from lastro.dashboards", file=sys.stderr)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"{path}: written")
    if stale:
        print("run `lastro dashboards build`", file=sys.stderr)
        return 1
    return 0

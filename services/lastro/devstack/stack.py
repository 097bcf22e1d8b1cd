"""`lastro dev up | down | status | logs`: the whole local stack."""

from __future__ import annotations

import time
from collections.abc import Callable

from lastro.core.config import Settings
from lastro.devstack.base import Component, Status
from lastro.devstack.bootstrap import bootstrap
from lastro.devstack.ca import DevCA
from lastro.devstack.components import components
from lastro.devstack.kubernetes import kubernetes_started


def up(
    settings: Settings, say: Callable[[str], None] = print, *, kubernetes: bool = False
) -> float:
    """Start every component that is not healthy yet; returns the seconds it took.
    ``kubernetes`` also starts etcd and kube-apiserver (built by `bootstrap --k8s`)."""
    started = time.monotonic()
    bootstrap(say)
    if kubernetes:  # cached: a second; the first time, the Go builds (minutes)
        from lastro.devstack.kubetools import ensure_tools

        ensure_tools(settings, say)
    settings.dev_dir.mkdir(parents=True, exist_ok=True)
    DevCA(settings.dev_dir / "ca").ensure()
    for component in components(settings, kubernetes=kubernetes or kubernetes_started(settings)):
        t0 = time.monotonic()
        outcome = component.up()
        say(
            f"{component.name:<10} {outcome:<16} {component.address()}  "
            f"({time.monotonic() - t0:.1f}s)"
        )
    elapsed = time.monotonic() - started
    say(f"stack healthy in {elapsed:.1f}s")
    return elapsed


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop only the processes this stack started (pid files), newest first; data is kept."""
    for component in reversed(components(settings, kubernetes=kubernetes_started(settings))):
        say(f"{component.name:<10} {'stopped' if component.stop() else 'not running'}")


def status(settings: Settings) -> list[Status]:
    return [
        component.status()
        for component in components(settings, kubernetes=kubernetes_started(settings))
    ]


def render_status(rows: list[Status]) -> str:
    lines = [f"{'component':<25}{'health':<10}{'pid':<9}address"]
    for row in rows:
        health = "healthy" if row.healthy else "down"
        lines.append(f"{row.name:<25}{health:<10}{row.pid or '-'!s:<9}{row.address}")
    return "\n".join(lines)


def alerts_summary(settings: Settings) -> str:
    """The alerts the local Prometheus has firing (``GET /api/v1/alerts``), or why not."""
    from lastro.devstack.prometheus import alerts, render_alerts

    try:
        return render_alerts(alerts(settings))
    except OSError as error:
        return f"alerts: Prometheus not answering ({error})"


def component(settings: Settings, name: str) -> Component:
    for candidate in components(settings, kubernetes=kubernetes_started(settings)):
        if candidate.name == name:
            return candidate
    raise SystemExit(f"unknown component {name!r}")


def logs(settings: Settings, name: str | None, lines: int = 40) -> str:
    every = components(settings, kubernetes=kubernetes_started(settings))
    chosen = [component(settings, name)] if name else every
    out = []
    for c in chosen:
        text = c.log.read_text(errors="replace").splitlines()[-lines:] if c.log.exists() else []
        out.append(f"==> {c.log} <==")
        out.extend(text)
    return "\n".join(out)

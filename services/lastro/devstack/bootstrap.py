"""Install what the local stack needs from Debian's packages, once.

Safe to run twice: it checks first and only installs what is missing, and
prints every step it takes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lastro.devstack.postgres import PG_BIN

CHROMIUM = "/usr/bin/chromium"
# Debian's `prometheus` package: the local Prometheus of the stack, and promtool.
PROMETHEUS = "/usr/bin/prometheus"
CHROMEDRIVER = "/usr/bin/chromedriver"

# (what, how to tell it is there, Debian package)
REQUIREMENTS: list[tuple[str, Callable[[], bool], str]] = [
    ("PostgreSQL 15 server", lambda: (PG_BIN / "postgres").exists(), "postgresql-15"),
    ("PostgreSQL client", lambda: shutil.which("psql") is not None, "postgresql-client-15"),
    ("Redis server", lambda: shutil.which("redis-server") is not None, "redis-server"),
    ("Java 17 runtime", lambda: shutil.which("java") is not None, "openjdk-17-jre-headless"),
    ("Maven", lambda: shutil.which("mvn") is not None, "maven"),
    ("Prometheus", lambda: Path(PROMETHEUS).exists(), "prometheus"),
]


# Optional: the headless browser the Swagger UI end-to-end test drives.
BROWSER_REQUIREMENTS: list[tuple[str, Callable[[], bool], str]] = [
    ("Chromium", lambda: Path(CHROMIUM).exists(), "chromium"),
    ("ChromeDriver", lambda: Path(CHROMEDRIVER).exists(), "chromium-driver"),
]


# Optional: promtool, which the tests use to lint every metrics exposition.
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS_REQUIREMENTS: list[tuple[str, Callable[[], bool], str]] = [
    ("promtool", lambda: Path(PROMTOOL).exists(), "prometheus"),
]


def bootstrap(say: Callable[[str], None] = print, *, browser: bool = False) -> None:
    """Install what the stack needs (and, with ``browser``, Chromium and its driver)."""
    if not install(REQUIREMENTS + (BROWSER_REQUIREMENTS if browser else []), say):
        return
    # Debian's package starts its own cluster and server on the default ports;
    # the dev stack runs its own on separate ports, so those are left alone.
    if not (PG_BIN / "postgres").exists():
        raise SystemExit(f"bootstrap: {PG_BIN} still missing after install")
    Path("/run/postgresql").mkdir(exist_ok=True)


def bootstrap_browser(say: Callable[[str], None] = print) -> None:
    """Install only the browser requirements (what the e2e tests call)."""
    install(BROWSER_REQUIREMENTS, say)


def bootstrap_promtool(say: Callable[[str], None] = print) -> str:
    """Install promtool (Debian's ``prometheus`` package) if missing; its path."""
    install(PROMETHEUS_REQUIREMENTS, say)
    return PROMTOOL


def install(
    requirements: list[tuple[str, Callable[[], bool], str]], say: Callable[[str], None] = print
) -> bool:
    """apt-get install the Debian packages of the requirements that are not present;
    True if anything was installed."""
    missing = [(what, pkg) for what, present, pkg in requirements if not present()]
    for what, _, _ in requirements:
        if all(what != m for m, _ in missing):
            say(f"bootstrap: {what}: present")
    if not missing:
        return False
    if os.geteuid() != 0:
        names = " ".join(pkg for _, pkg in missing)
        raise SystemExit(f"bootstrap: missing {names}; run as root or `apt-get install {names}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    say("bootstrap: apt-get update")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)  # noqa: S607
    for what, pkg in missing:
        say(f"bootstrap: installing {what} ({pkg})")
        subprocess.run(  # noqa: S603
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", pkg],  # noqa: S607
            check=True,
            env=env,
        )
    return True

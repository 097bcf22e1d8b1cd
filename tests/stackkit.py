"""Stacks of their own, for tests that must not share the developer's stack.

:func:`isolated_env` is the environment of a second ``lastro dev`` stack: its own
directory under ``.dev/test-stacks`` and every port shifted further (so it runs
beside the shared stack, which may itself run at an offset). :func:`own_stack`
brings such a stack up, yields its settings and takes it down and away again.
Tests that restart a broker or a service, or rotate keys, run there and are
marked ``disruptive``. Shifts keep the ports below Linux's ephemeral range (32768 and
up), where an outgoing connection may hold any port at any time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lastro.core.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def isolated_env(name: str, port_shift: int) -> dict[str, str]:
    """The environment of a stack under ``.dev/test-stacks/<name>-<id>`` with every port
    ``port_shift`` above the shared stack's (keep them under 32768, the start of Linux's
    ephemeral port range, or a restart can find a port taken by an outgoing connection)."""
    # Under the repository, not /tmp: the postgres user must be able to reach its data dir.
    dev_dir = REPO / ".dev" / "test-stacks" / f"{name}-{uuid.uuid4().hex[:8]}"
    offset = int(os.environ.get("LASTRO_PORT_OFFSET", "0")) + port_shift
    env = {**os.environ, "LASTRO_DEV_DIR": str(dev_dir), "LASTRO_PORT_OFFSET": str(offset)}
    env.pop("LASTRO_PG_PASSWORD", None)
    env.pop("LASTRO_VAULT_TOKEN", None)
    shared_jars = load_settings().dev_dir / "kafka" / "libs"
    if (shared_jars / ".complete").exists():  # reuse the resolved jars: offline and fast
        shutil.copytree(shared_jars, dev_dir / "kafka" / "libs")
    return env


def lastro(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``lastro <args>`` against the stack of ``env``."""
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lastro {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def remove(env: dict[str, str]) -> None:
    """Stop the stack of ``env`` and delete its directory."""
    lastro(env, "dev", "down", check=False)
    shutil.rmtree(env["LASTRO_DEV_DIR"], ignore_errors=True)


@contextmanager
def own_stack(name: str, port_shift: int = 10000) -> Iterator[tuple[Settings, dict[str, str]]]:
    """A whole stack of its own, up: its settings and environment; removed afterwards."""
    env = isolated_env(name, port_shift)
    try:
        lastro(env, "dev", "up")
        yield load_settings(env), env
    finally:
        remove(env)

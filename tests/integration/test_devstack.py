"""`lastro dev up|down|status` on a second, isolated stack (own directory and ports),
so the shared stack the other tests use is never disturbed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lastro.core.config import load_settings
from lastro.devstack.components import available_services
from stackkit import isolated_env, remove
from stackkit import lastro as lastro_cli

COMPONENTS = ("postgres", "redis", "kafka", "kms", "smtp", *available_services(), "prometheus")


@pytest.fixture(scope="module")
def stack_env() -> Iterator[dict[str, str]]:
    # Every port of this stack stays below 32768, where Linux picks the ephemeral source
    # ports of outgoing connections: with a shift of 20000, PostgreSQL (35432) and Kafka
    # (39092/39093) landed in that range and a restart could find its port taken.
    env = isolated_env("devstack", 5000)
    yield env
    remove(env)


def lastro(env: dict[str, str], *args: str, check: bool = True) -> str:
    return lastro_cli(env, *args, check=check).stdout


def psql(env: dict[str, str], sql: str) -> str:
    dev = Path(env["LASTRO_DEV_DIR"])
    return subprocess.run(
        [
            "psql",
            "-X",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            f"host=127.0.0.1 port={load_settings(env).pg_port} dbname=lastro user=lastro "
            f"sslmode=verify-full sslrootcert={dev / 'ca' / 'ca.pem'}",
        ],
        env={**env, "PGPASSWORD": (dev / "secrets" / "pg_password").read_text().strip()},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()


def redis_cli(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(load_settings(env).redis_port), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def test_up_twice_is_harmless_and_down_then_up_keeps_the_data(stack_env: dict[str, str]) -> None:
    first = lastro(stack_env, "dev", "up")
    assert "stack healthy" in first
    second = lastro(stack_env, "dev", "up")
    for component in COMPONENTS:
        assert f"{component:<10} already running" in second

    status = lastro(stack_env, "dev", "status")
    assert status.count("healthy") == len(COMPONENTS), status

    psql(stack_env, "CREATE TABLE platform.kept (v text); INSERT INTO platform.kept VALUES ('x1')")
    redis_cli(stack_env, "SET", "kept", "r1")
    # Redis persists through its append-only file; ask it to flush before the stop.
    redis_cli(stack_env, "BGREWRITEAOF")

    down = lastro(stack_env, "dev", "down")
    for component in COMPONENTS:
        assert f"{component:<10} stopped" in down
    after_down = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "dev", "status"],
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert after_down.returncode == 1
    assert "healthy" not in after_down.stdout

    again = lastro(stack_env, "dev", "up")
    assert "stack healthy" in again
    assert psql(stack_env, "SELECT v FROM platform.kept") == "x1"
    assert redis_cli(stack_env, "GET", "kept") == "r1"


def test_down_never_signals_a_process_it_did_not_start(stack_env: dict[str, str]) -> None:
    # A pid file pointing at an unrelated live process (here: this test runner) is ignored.
    dev = Path(stack_env["LASTRO_DEV_DIR"])
    lastro(stack_env, "dev", "down")
    (dev / "run").mkdir(parents=True, exist_ok=True)
    (dev / "run" / "kms.pid").write_text(f"{os.getpid()}\n")
    down = lastro(stack_env, "dev", "down")
    assert f"{'kms':<10} not running" in down
    assert not (dev / "run" / "kms.pid").exists()

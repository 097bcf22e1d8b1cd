"""`python -m lastro.smoke` against the local stack: the very script the kind job of
.github/workflows/e2e-kind.yml runs against a cluster, so it is exercised here on every
`make test`. The local stack serves each service on its own port (`--url`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lastro.core.config import Settings


def smoke(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lastro.smoke",
            "--base-url",
            settings.service_url("identity"),
            "--url",
            f"accounts={settings.service_url('accounts')}",
            "--ca",
            str(settings.ca_file),
            *extra,
        ],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_smoke_signs_in_opens_accounts_and_moves_money_once(settings: Settings) -> None:
    result = smoke(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:-1]] == [
        "sign_in",
        "open_accounts",
        "ledger_transfer",
    ]
    assert "replayed on retry, refused with another amount" in lines[2]
    assert lines[-1] == "smoke: passed"


def test_the_smoke_fails_loudly_when_it_cannot_sign_in(settings: Settings, tmp_path: Path) -> None:
    wrong = tmp_path / "admin"
    wrong.write_text("cli_00000000000000000000000000:not-the-secret\n")
    result = smoke(settings, "--admin-credentials", str(wrong))
    assert result.returncode == 1
    assert result.stderr.startswith("smoke FAILED in sign_in: POST /oauth/token: expected 200")
    assert "smoke: passed" not in result.stdout

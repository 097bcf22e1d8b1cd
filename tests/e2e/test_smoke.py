"""`python -m lastro.smoke` against the local stack: the very script the kind job of
.github/workflows/e2e-kind.yml runs against a cluster, so it is exercised here on every
`make test`. The local stack serves each service on its own port (`--url`); the
webhook receiver's certificate comes from the dev CA by default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lastro.core.config import Settings

URLS = ("accounts", "transactions", "notifications")


def smoke(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lastro.smoke",
            "--base-url",
            settings.service_url("identity"),
            *(f"--url={name}={settings.service_url(name)}" for name in URLS),
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


def test_the_smoke_signs_in_moves_money_once_and_receives_the_webhook(settings: Settings) -> None:
    result = smoke(settings)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:-1]] == [
        "sign_in",
        "open_accounts",
        "ledger_transfer",
        "transaction_transfer",
        "webhook_notification",
    ]
    assert "replayed on retry, refused with another amount" in lines[2]
    assert "of EUR 20.00 posted once (retry replayed)" in lines[3]
    assert "received, signature valid" in lines[4] and " dlv_" in lines[4]
    assert lines[-1] == "smoke: passed"


def test_the_smoke_fails_when_no_webhook_can_reach_it(settings: Settings, tmp_path: Path) -> None:
    """A receiver the notification service does not trust (a self-signed certificate)
    gets nothing: the webhook check fails, naming the receiver."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    result = smoke(settings, "--webhook-cert", str(cert), "--webhook-key", str(key))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("smoke FAILED in webhook_notification: no webhook at https://")
    assert "smoke: passed" not in result.stdout


def test_the_smoke_fails_loudly_when_it_cannot_sign_in(settings: Settings, tmp_path: Path) -> None:
    wrong = tmp_path / "admin"
    wrong.write_text("cli_00000000000000000000000000:not-the-secret\n")
    result = smoke(settings, "--admin-credentials", str(wrong))
    assert result.returncode == 1
    assert result.stderr.startswith("smoke FAILED in sign_in: POST /oauth/token: expected 200")
    assert "smoke: passed" not in result.stdout

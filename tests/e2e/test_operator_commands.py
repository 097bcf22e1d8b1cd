"""Operator commands against the running stack, as a runbook would use them."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request

from lastro.core.config import Settings


def lastro(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lastro.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def jwks_kids(settings: Settings) -> list[str]:
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    url = f"{settings.service_url('identity')}/.well-known/jwks.json"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310
        return [key["kid"] for key in json.load(response)["keys"]]


def test_signing_key_rotation_publishes_the_new_key_and_keeps_the_old(settings: Settings) -> None:
    before = jwks_kids(settings)
    rotated = lastro("keys", "rotate-signing-key")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")
    # Replicas reload the key set every 60 s; restarting one shows the result at once.
    restarted = lastro("dev", "restart", "identity")
    assert restarted.returncode == 0, restarted.stderr
    after = jwks_kids(settings)
    assert new_kid in after and new_kid not in before
    assert set(before) <= set(after), "old keys must stay published until their tokens expire"
    demo = lastro("demo")  # the new key is published ahead of signing: nothing breaks
    assert demo.returncode == 0, demo.stdout + demo.stderr


def test_pii_key_rotation_rewraps_customer_keys_and_is_audited(settings: Settings) -> None:
    rotated = lastro("keys", "rotate-pii-key")
    assert rotated.returncode == 0, rotated.stderr
    assert "customer data keys rewrapped to the newest version" in rotated.stdout
    verified = lastro("audit", "verify", "--schema", "accounts")
    assert verified.returncode == 0 and "chain intact" in verified.stdout


def test_ledger_verification_passes_over_the_live_ledger(settings: Settings) -> None:
    verified = lastro("accounts", "verify")
    assert verified.returncode == 0, verified.stdout
    assert "every posting balances" in verified.stdout

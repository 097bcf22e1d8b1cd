"""Operator commands as a runbook would use them. Key rotations and service restarts
run on a stack of their own (``disruptive``); read-only checks on the shared one."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request

import pytest

from lastro.core.config import Settings
from stackkit import lastro as lastro_in

Stack = tuple[Settings, dict[str, str]]


def lastro(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return lastro_in(env or dict(os.environ), *args, check=False)


def jwks_kids(settings: Settings) -> list[str]:
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    url = f"{settings.service_url('identity')}/.well-known/jwks.json"
    with urllib.request.urlopen(url, context=context, timeout=10) as response:  # noqa: S310
        return [key["kid"] for key in json.load(response)["keys"]]


@pytest.mark.disruptive
def test_signing_key_rotation_publishes_the_new_key_and_keeps_the_old(
    disruptive_stack: Stack,
) -> None:
    settings, env = disruptive_stack
    before = jwks_kids(settings)
    rotated = lastro("keys", "rotate-signing-key", env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split()[3].rstrip(";")
    # Replicas reload the key set every 60 s; restarting one shows the result at once.
    restarted = lastro("dev", "restart", "identity", env=env)
    assert restarted.returncode == 0, restarted.stderr
    after = jwks_kids(settings)
    assert new_kid in after and new_kid not in before
    assert set(before) <= set(after), "old keys must stay published until their tokens expire"
    demo = lastro("demo", env=env)  # the new key is published ahead of signing: nothing breaks
    assert demo.returncode == 0, demo.stdout + demo.stderr


@pytest.mark.disruptive
def test_pii_key_rotation_rewraps_customer_keys_and_is_audited(disruptive_stack: Stack) -> None:
    _, env = disruptive_stack
    assert lastro("demo", env=env).returncode == 0  # customers whose keys get rewrapped
    rotated = lastro("keys", "rotate-pii-key", env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert "customer data keys rewrapped to the newest version" in rotated.stdout
    assert int(rotated.stdout.split(";")[1].split()[0]) > 0, rotated.stdout
    verified = lastro("audit", "verify", "--schema", "accounts", env=env)
    assert verified.returncode == 0 and "chain intact" in verified.stdout


def test_ledger_verification_passes_over_the_live_ledger(settings: Settings) -> None:
    verified = lastro("accounts", "verify")
    assert verified.returncode == 0, verified.stdout
    assert "every posting balances" in verified.stdout

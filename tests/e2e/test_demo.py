"""The `make run` demo against the running services, through HTTPS only."""

from __future__ import annotations

import re
import subprocess
import sys

from lastro.core.config import Settings
from lastro.devstack.components import Service


def test_demo_moves_money_between_two_people_and_every_audit_chain_verifies(
    settings: Settings,
) -> None:
    for name in (
        "identity",
        "accounts",
        "notifications",
        "transactions",
        "transactions-worker",
        "acquirer",
    ):
        assert Service(settings, name).healthy(), f"{name} is not running: `lastro dev up`"
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the retry returned the same posting: True" in out
    assert "refused: https://lastro.dev/problems/insufficient-funds" in out
    assert "Ana's balance: posted EUR 749.50, available EUR 749.50" in out
    assert "Bruno's balance: posted EUR 250.50, available EUR 250.50" in out
    assert "Ana asks for Bruno's account: 404" in out
    assert "audit log of accounts:" in out and "chain intact" in out
    assert "account.frozen, signature verified: True" in out
    assert "over TLSv1.3: 'Sua conta ••••" in out and "foi bloqueada'" in out
    assert out.count("delivered after 1 attempt(s)") == 2
    assert "audit log of notifications:" in out
    assert "TAMPERED" not in out
    # The money path: a transfer, a card payment with a refund, a challenged large transfer.
    assert re.search(r"Carla pays Café Lisboa EUR 42.00.*\n   txn_\w+: posted", out)
    assert "visa •••• 4242, captured EUR 18.50" in out
    assert "refund of EUR 3.50 succeeded" in out
    assert "refused with 401 Step-up authentication required" in out
    assert re.search(r"same Idempotency-Key\) goes through: txn_\w+ posted", out)
    assert "Café Lisboa's balance: posted EUR 2,557.00" in out
    assert re.search(r"EUR 50.00 buys US\$[0-9.]+\n   txn_\w+: posted, US\$[0-9.]+ arrived", out)
    assert "Carla (EUR)'s balance: posted EUR 408.00" in out
    totals = re.search(r"currency totals (\{.*\})", out)
    assert totals is not None and "'USD': 0" in totals.group(1) and "'EUR': 0" in totals.group(1)
    assert "audit log of transactions:" in out

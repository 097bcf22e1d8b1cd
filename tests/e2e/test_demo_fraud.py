"""The fraud part of the `make run` demo against the running stack, through HTTPS."""

from __future__ import annotations

import re
import subprocess
import sys

from lastro.core.config import Settings
from lastro.devstack.components import Service


def test_demo_holds_a_card_testing_run_promotes_a_shadow_rule_and_freezes_a_traveller(
    settings: Settings,
) -> None:
    for name in ("identity", "accounts", "fraud", "fraud-analyser"):
        assert Service(settings, name).healthy(), f"{name} is not running: `lastro dev up`"
    result = subprocess.run(
        [sys.executable, "-m", "lastro.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"payment 4: approve \(shadow: the new rule would decline it\)", out), out
    assert re.search(r"payment 5: review by new-payees-burst", out), out
    assert re.search(r": 2 shadow hits, precision 1\.0 from resolved alerts", out), out
    promoted = re.search(r"The team promotes it to enforce: rule set (\d+)", out)
    assert promoted, out
    decided = re.search(r"next payment to a new payee: decline \(rule set (\d+)", out)
    assert decided and decided.group(1) == promoted.group(1), out
    assert "impossible_travel (high)" in out
    assert re.search(r"Bruno's account acc_\w+ is now frozen", out), out
    assert "audit log of fraud:" in out and "TAMPERED" not in out

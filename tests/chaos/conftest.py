"""Chaos fixtures: faults injected into the running stack's processes (workers
killed mid-step, dependencies down or slow). Uses the end-to-end kit."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lastro.core.config import Settings
from lastro.devstack.components import components

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))


@pytest.fixture(scope="session", autouse=True)
def stack_is_up(settings: Settings) -> None:
    down = [c.name for c in components(settings) if not c.healthy()]
    if down:
        pytest.exit(f"dev stack not healthy ({', '.join(down)}): run `lastro dev up`", 2)

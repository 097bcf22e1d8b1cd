"""Fixtures shared by every test layer. Nothing here starts the shared
infrastructure: `make test` brings the dev stack up first, and these fixtures
connect to it. Only ``disruptive`` tests get a stack of their own
(:func:`disruptive_stack`, started once per session on first use)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lastro.core.config import Settings, load_settings
from stackkit import own_stack


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def disruptive_stack() -> Iterator[tuple[Settings, dict[str, str]]]:
    """A stack of its own (settings, environment) for tests that restart or rotate
    parts of it, so the shared stack and everything using it are never disturbed."""
    with own_stack("disruptive") as stack:
        yield stack

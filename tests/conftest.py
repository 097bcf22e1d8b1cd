"""Fixtures shared by every test layer. Nothing here starts infrastructure:
`make test` brings the dev stack up first, and these fixtures connect to it."""

from __future__ import annotations

import pytest

from lastro.core.config import Settings, load_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()

"""Shared unit-test fixtures: settings pointing at a temporary dev dir, a dev CA
there, and a test token issuer. Nothing here starts a process or opens a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from issuerkit import TestIssuer
from lastro.core.config import Settings, load_settings
from lastro.devstack.ca import DevCA


@pytest.fixture(scope="session")
def unit_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dev")


@pytest.fixture(scope="session")
def unit_settings(unit_dev_dir: Path) -> Settings:
    return load_settings({"LASTRO_ENV": "test", "LASTRO_DEV_DIR": str(unit_dev_dir)})


@pytest.fixture(scope="session")
def dev_ca(unit_dev_dir: Path) -> DevCA:
    ca = DevCA(unit_dev_dir / "ca")
    ca.ensure()
    return ca


@pytest.fixture(scope="session")
def issuer() -> TestIssuer:
    return TestIssuer(issuer="https://identity.test", audience="example")

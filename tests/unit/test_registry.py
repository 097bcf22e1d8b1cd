"""The service registry: one list that config, the CLI, identity and the dev stack read."""

from __future__ import annotations

from pathlib import Path

import pytest

from lastro.core import registry
from lastro.core.config import ConfigError, load_settings
from lastro.devstack.components import available_services
from lastro.devstack.postgres import SERVICE_SCHEMAS
from lastro.identity import domain as identity


def test_names_ports_and_audiences_are_unique() -> None:
    names = [s.name for s in registry.SERVICES]
    ports = [s.port for s in registry.SERVICES if s.port is not None]
    assert len(names) == len(set(names))
    assert len(ports) == len(set(ports))
    assert registry.audiences() == {s.name for s in registry.SERVICES if s.kind == "api"}


def test_every_api_service_owns_a_schema_and_declares_its_scopes() -> None:
    for spec in registry.SERVICES:
        if spec.kind == "api":
            assert spec.schema == spec.name and spec.audience == spec.name
            assert spec.scopes, spec.name
            assert registry.PRIVACY_SCOPE in spec.scopes, spec.name


def test_identity_grants_exactly_the_registered_scopes_and_audiences() -> None:
    assert registry.scopes() == identity.SCOPES
    assert registry.audiences() == identity.AUDIENCES


def test_dev_stack_creates_every_schema_and_runs_only_present_processes() -> None:
    assert set(SERVICE_SCHEMAS) == {s.schema for s in registry.SERVICES if s.schema} | {
        registry.PLATFORM_SCHEMA
    }
    running = available_services()
    assert {"identity", "accounts"} <= set(running)
    assert "operator" not in running
    order = [s.name for s in registry.SERVICES]
    assert running == sorted(running, key=order.index)


def test_unknown_service_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: identity, accounts"):
        registry.service("ledger")


def test_port_offset_moves_every_default_port(tmp_path: Path) -> None:
    s = load_settings({"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_PORT_OFFSET": "1000"})
    assert (s.pg_port, s.redis_port, s.kafka_port, s.kms_port) == (16432, 17379, 20092, 9200)
    assert s.service_ports["transactions-worker"] == 8013
    assert s.service_url("identity") == "https://127.0.0.1:8001"
    assert s.jwks_url == "https://127.0.0.1:8001/.well-known/jwks.json"


def test_an_explicit_port_wins_over_the_offset(tmp_path: Path) -> None:
    s = load_settings(
        {
            "LASTRO_DEV_DIR": str(tmp_path),
            "LASTRO_PORT_OFFSET": "1000",
            "LASTRO_TRANSACTIONS_WORKER_PORT": "7999",
        }
    )
    assert s.service_ports["transactions-worker"] == 7999


def test_a_port_offset_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LASTRO_PORT_OFFSET"):
        load_settings({"LASTRO_DEV_DIR": str(tmp_path), "LASTRO_PORT_OFFSET": "60000"})

"""The shared privacy API (core/privacy.py) and who answers it (core/registry.py)."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from lastro.core import registry
from lastro.core.privacy import (
    InvalidCutoff,
    Purge,
    UnsupportedAction,
    UnsupportedDataClass,
    check_purge,
    parse_cutoff,
)

CUTOFF = datetime(2021, 11, 30, tzinfo=UTC)
PURGEABLE = {"svc.sessions": frozenset({"purge"}), "svc.profiles": frozenset({"anonymize"})}
OPERATIONS = ("export", "erase", "purge")


def test_a_supported_class_and_action_pass() -> None:
    check_purge("svc", PURGEABLE, Purge("svc.sessions", CUTOFF, "purge"))


def test_a_class_the_service_does_not_hold_is_refused_naming_the_ones_it_holds() -> None:
    with pytest.raises(UnsupportedDataClass) as refused:
        check_purge("svc", PURGEABLE, Purge("svc.audit_records", CUTOFF, "purge"))
    assert refused.value.field == "data_class"
    assert "svc.profiles, svc.sessions" in refused.value.detail
    assert refused.value.problem().status == 422


def test_an_action_the_class_does_not_support_is_refused() -> None:
    with pytest.raises(UnsupportedAction) as refused:
        check_purge("svc", PURGEABLE, Purge("svc.profiles", CUTOFF, "crypto-shred"))
    assert refused.value.field == "action" and refused.value.slug == "unsupported-retention-action"


def test_a_cutoff_needs_an_offset() -> None:
    assert parse_cutoff("2021-11-30T00:00:00Z") == CUTOFF
    assert parse_cutoff("2021-11-30T01:00:00+01:00") == CUTOFF
    for text in ("2021-11-30T00:00:00", "yesterday"):
        with pytest.raises(InvalidCutoff):
            parse_cutoff(text)


def _contract(spec: registry.ServiceSpec) -> dict[str, object]:
    found = importlib.util.find_spec(spec.module)
    assert found is not None and found.origin is not None, spec.module
    document: dict[str, object] = yaml.safe_load(
        (Path(found.origin).parent / "openapi.yaml").read_text()
    )
    return document


@pytest.mark.parametrize("spec", registry.privacy_services(), ids=lambda s: s.name)
def test_every_service_holding_personal_data_answers_the_privacy_api(
    spec: registry.ServiceSpec,
) -> None:
    """What the orchestrator and the operator rely on for each flagged service."""
    assert spec.audience is not None and registry.PRIVACY_SCOPE in spec.scopes
    paths = _contract(spec)["paths"]
    assert isinstance(paths, dict)
    for operation in OPERATIONS:
        post = paths[f"/internal/v1/privacy/{operation}"]["post"]
        assert post["security"] == [{"oauth2": [registry.PRIVACY_SCOPE]}], (spec.name, operation)


def test_identity_accounts_fraud_and_notifications_hold_personal_data() -> None:
    names = {s.name for s in registry.privacy_services()}
    assert {"identity", "accounts", "fraud", "notifications"} <= names

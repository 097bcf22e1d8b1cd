"""The Kopf handlers themselves, with in-memory stand-ins for the fraud admin and privacy
clients: what they publish, what they patch, when they ask Kopf to retry. (The same
handlers run against the real kube-apiserver in tests/k8s/test_operator.py.)"""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from lastro.core.observability import JsonFormatter
from lastro_operator.clients import Refused, Unavailable
from lastro_operator.expressions import default_validator
from lastro_operator.fraudrule import applied_status, publish_rule, withdraw_rule
from lastro_operator.main import DropKopfSettings
from lastro_operator.retentionpolicy import run_retention

UID = "6f1c2a9e-0000-4000-8000-000000000001"
LOG = logging.getLogger("test-operator")
SPEC = {"description": "d", "expression": "features.count_1m >= 6", "action": "review"}


class FakeFraudAdmin:
    """Applies a PUT at once, as a single-replica fraud service would."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.rules: dict[str, dict[str, Any]] = {}
        self.version = 1
        self.puts: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.failure = failure

    async def put_rule(self, rule: dict[str, Any]) -> None:
        if self.failure:
            raise self.failure
        self.puts.append(rule)
        self.version += 1
        self.rules[rule["id"]] = rule

    async def get_rule(self, rule_id: str) -> dict[str, Any] | None:
        rule = self.rules.get(rule_id)
        return None if rule is None else {**rule, "ruleset_version": self.version}

    async def delete_rule(self, rule_id: str) -> None:
        self.deleted.append(rule_id)
        self.rules.pop(rule_id, None)


def memo(fraud: FakeFraudAdmin, **extra: Any) -> kopf.Memo:
    return kopf.Memo(fraud=fraud, validator=default_validator(), ack_timeout=1.0, **extra)


async def publish(
    fraud: FakeFraudAdmin, spec: dict[str, Any], status: dict[str, Any], generation: int = 1
) -> kopf.Patch:
    patch = kopf.Patch()
    await publish_rule(
        name="velocity-burst",
        uid=UID,
        meta={"generation": generation},
        spec=spec,
        status=status,
        patch=patch,
        memo=memo(fraud),
        logger=LOG,
    )
    return patch


async def test_a_valid_rule_is_published_and_reported_live() -> None:
    fraud = FakeFraudAdmin()
    patch = await publish(fraud, SPEC, {})
    assert fraud.puts[0]["revision"] == f"{UID}:1"
    assert patch.status["appliedVersion"] == fraud.version
    assert patch.status["observedGeneration"] == 1


async def test_an_invalid_expression_is_never_published() -> None:
    fraud = FakeFraudAdmin()
    patch = await publish(fraud, {**SPEC, "expression": "features.count_1m >="}, {})
    assert fraud.puts == []
    invalid = next(c for c in patch.status["conditions"] if c["type"] == "Invalid")
    assert (invalid["status"], invalid["reason"]) == ("True", "InvalidExpression")


async def test_a_refusal_by_the_fraud_service_is_invalid_not_retried() -> None:
    fraud = FakeFraudAdmin(Refused(422, "undeclared reference to 'x'"))
    patch = await publish(fraud, SPEC, {})
    invalid = next(c for c in patch.status["conditions"] if c["type"] == "Invalid")
    assert invalid["reason"] == "RejectedByFraudService"
    assert "undeclared reference" in invalid["message"]


async def test_an_unreachable_fraud_service_is_retried_and_says_why() -> None:
    fraud = FakeFraudAdmin(Unavailable("fraud: timeout"))
    with pytest.raises(kopf.TemporaryError) as retry:
        await publish(fraud, SPEC, {})
    assert retry.value.delay and retry.value.delay > 0


async def test_a_generation_already_live_is_not_published_again() -> None:
    fraud = FakeFraudAdmin()
    status = applied_status({}, 4, f"{UID}:4", 9, "shadow", datetime.now(UTC))
    patch = await publish(fraud, SPEC, status, generation=4)
    assert fraud.puts == []
    assert not patch


async def test_delete_withdraws_only_a_rule_this_resource_published() -> None:
    fraud = FakeFraudAdmin()
    fraud.rules["velocity-burst"] = {"id": "velocity-burst", "revision": "another-uid:3"}
    await withdraw_rule(name="velocity-burst", uid=UID, memo=memo(fraud), logger=LOG)
    assert fraud.deleted == []
    fraud.rules["velocity-burst"]["revision"] = f"{UID}:3"
    await withdraw_rule(name="velocity-burst", uid=UID, memo=memo(fraud), logger=LOG)
    assert fraud.deleted == ["velocity-burst"]


class FakePrivacy:
    def __init__(self, failure: Exception | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failure = failure

    async def purge(self, request: dict[str, Any], request_id: str) -> dict[str, Any]:
        self.requests.append(request)
        if self.failure:
            raise self.failure
        return {"affected": 0}


POLICY = {
    "service": "notifications",
    "dataClass": "notifications.deliveries",
    "retention": "90d",
    "action": "purge",
    "schedule": "15 2 * * *",
}


async def retention(
    privacy: FakePrivacy, spec: dict[str, Any], meta: dict[str, Any], status: dict[str, Any]
) -> kopf.Patch:
    patch = kopf.Patch()
    await run_retention(
        name="deliveries",
        namespace="lastro",
        uid=UID,
        body=kopf.Body({"metadata": {"name": "deliveries", "namespace": "lastro", "uid": UID}}),
        meta={"generation": 1, "creationTimestamp": "2099-01-01T00:00:00Z", **meta},
        spec=spec,
        status=status,
        patch=patch,
        memo=kopf.Memo(privacy=lambda service: privacy),
        logger=LOG,
    )
    return patch


async def test_a_policy_that_is_not_due_only_records_its_next_run() -> None:
    privacy = FakePrivacy()
    patch = await retention(privacy, POLICY, {}, {})
    assert privacy.requests == []
    assert patch.status["nextRun"] == "2099-01-01T02:15:00Z"


async def test_a_suspended_policy_never_runs_even_when_asked() -> None:
    privacy = FakePrivacy()
    annotations = {"annotations": {"lastro.io/run-requested": "1"}}
    await retention(privacy, {**POLICY, "suspend": True}, annotations, {})
    assert privacy.requests == []


async def test_a_requested_run_that_cannot_reach_the_service_is_retried() -> None:
    privacy = FakePrivacy(Unavailable("notifications: connection refused"))
    annotations = {"annotations": {"lastro.io/run-requested": "1"}}
    with pytest.raises(kopf.TemporaryError):
        await retention(privacy, POLICY, annotations, {})
    assert privacy.requests[0]["data_class"] == "notifications.deliveries"


async def test_a_policy_naming_the_ledger_is_refused_before_any_call() -> None:
    privacy = FakePrivacy()
    annotations = {"annotations": {"lastro.io/run-requested": "1"}}
    spec = {**POLICY, "service": "accounts", "dataClass": "accounts.postings"}
    patch = await retention(privacy, spec, annotations, {})
    assert privacy.requests == []
    assert patch.status["conditions"][0]["reason"] == "InvalidPolicy"


def test_operator_log_lines_keep_the_object_but_not_kopfs_whole_settings() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("operator"))
    handler.addFilter(DropKopfSettings())
    logger = logging.getLogger("kopf.objects.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        extra = {"settings": kopf.OperatorSettings(), "kind": "FraudRule", "uid": "u-1"}
        logger.warning("FraudRule %s is invalid", "velocity-burst", extra=extra)
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "FraudRule velocity-burst is invalid"
    assert (line["kind"], line["uid"]) == ("FraudRule", "u-1")
    assert "settings" not in line

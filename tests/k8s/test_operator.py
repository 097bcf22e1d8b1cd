"""The operator against the real kube-apiserver, with stand-ins for the fraud admin API
and the notifications privacy API (tests/k8s/standins.py), which can be made to fail on
demand; test_operator_live.py runs it against the real services.

The operator runs in this process (`operate`, as `lastro serve operator` runs it) with
the dev cluster's least-privilege `lastro-operator` user, bound to exactly the Role the
chart grants its ServiceAccount: if the chart's RBAC missed a verb, these tests fail.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
from kubekit import (
    apply,
    condition,
    delete_custom_resources,
    eventually,
    getter,
    live_generation,
    resource,
)
from kubernetes import client
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError
from standins import FraudAdminStandIn, IssuerTokens, PrivacyStandIn, serve_tls

from issuerkit import TestIssuer
from lastro.core.config import Settings, load_settings
from lastro.devstack.kubernetes import kubeconfig_path
from lastro_operator.main import operate

pytestmark = pytest.mark.usefixtures("crds_installed")

RULE: dict[str, Any] = {
    "apiVersion": "lastro.io/v1alpha1",
    "kind": "FraudRule",
    "metadata": {"name": "velocity-burst"},
    "spec": {
        "description": "six or more transfers in a minute",
        "expression": "features.count_1m >= 6",
        "action": "review",
        "severity": "high",
    },
}


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
async def fraud(
    settings: Settings, issuer: TestIssuer
) -> AsyncIterator[tuple[FraudAdminStandIn, str]]:
    standin = FraudAdminStandIn(issuer.verifier(audience="fraud"))
    async with serve_tls(standin.app(), settings.dev_dir / "ca", "standin-fraud") as url:
        yield standin, url


@pytest.fixture(scope="module")
async def privacy(
    settings: Settings, issuer: TestIssuer
) -> AsyncIterator[tuple[PrivacyStandIn, str]]:
    standin = PrivacyStandIn(issuer.verifier(audience="notifications"))
    async with serve_tls(standin.app(), settings.dev_dir / "ca", "standin-notifications") as url:
        yield standin, url


@pytest.fixture(scope="module")
async def running_operator(
    settings: Settings,
    dynamic: DynamicClient,
    operator_namespace: str,
    fraud: tuple[FraudAdminStandIn, str],
    privacy: tuple[PrivacyStandIn, str],
    issuer: TestIssuer,
) -> AsyncIterator[None]:
    config = load_settings(
        {
            "LASTRO_DEV_DIR": str(settings.dev_dir),
            "LASTRO_FRAUD_URL": fraud[1],
            "LASTRO_NOTIFICATIONS_URL": privacy[1],
            "LASTRO_OPERATOR_NAMESPACE": operator_namespace,
            "LASTRO_OPERATOR_ACK_TIMEOUT": "5",
        },
        data_plane=False,
    )
    # Its own thread and event loop, as in a real process: Kopf cancels what runs in
    # its loop when it stops, which must not be this test's loop.
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(
                operate(
                    config,
                    memo=kopf.Memo(tokens=IssuerTokens(issuer)),
                    liveness=False,
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as exc:
            failure.append(exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig_path(settings, "lastro-operator")))
        thread = threading.Thread(target=run, name="lastro-operator", daemon=True)
        thread.start()
        assert await asyncio.to_thread(ready.wait, 30), f"operator not ready: {failure}"
        try:
            yield
            await delete_custom_resources(dynamic, operator_namespace)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive(), "the operator did not stop within 30 s of its stop flag"
    assert not failure, failure


@pytest.mark.usefixtures("running_operator")
class TestFraudRules:
    async def test_a_new_rule_goes_live_and_status_names_its_rule_set(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        standin = fraud[0]
        created = apply(dynamic, copy.deepcopy(RULE), operator_namespace).to_dict()
        uid = created["metadata"]["uid"]
        rule = await eventually(
            getter(dynamic, "FraudRule", "velocity-burst", operator_namespace), live_generation(1)
        )
        published = standin.rules["velocity-burst"]
        assert published["revision"] == f"{uid}:1"
        assert (published["mode"], published["action"], published["severity"]) == (
            "shadow",
            "review",
            "high",
        )
        assert rule["status"]["appliedRevision"] == f"{uid}:1"
        assert rule["status"]["appliedVersion"] == standin.ruleset_version
        assert "lastro.io/operator" in rule["metadata"]["finalizers"]

    async def test_shadow_to_enforce_rolls_out_as_a_new_rule_set_without_restart(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        standin = fraud[0]
        before = await eventually(
            getter(dynamic, "FraudRule", "velocity-burst", operator_namespace), live_generation(1)
        )
        enforced = copy.deepcopy(RULE)
        enforced["spec"]["mode"] = "enforce"
        apply(dynamic, enforced, operator_namespace)
        after = await eventually(
            getter(dynamic, "FraudRule", "velocity-burst", operator_namespace), live_generation(2)
        )
        assert standin.rules["velocity-burst"]["mode"] == "enforce"
        assert standin.rules["velocity-burst"]["revision"].endswith(":2")
        assert after["status"]["appliedVersion"] > before["status"]["appliedVersion"]
        assert "enforce mode" in condition(after, "Ready")["message"]

    async def test_an_invalid_expression_is_reported_and_publishes_nothing(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        standin = fraud[0]
        good = await eventually(
            getter(dynamic, "FraudRule", "velocity-burst", operator_namespace), live_generation(2)
        )
        puts_before = len(standin.puts)
        broken = copy.deepcopy(RULE)
        broken["spec"]["mode"] = "enforce"
        broken["spec"]["expression"] = "features.count_1m >="
        apply(dynamic, broken, operator_namespace)

        def judged_invalid(obj: dict[str, Any]) -> bool:
            return (
                obj["status"].get("observedGeneration") == 3
                and condition(obj, "Invalid").get("status") == "True"
            )

        bad = await eventually(
            getter(dynamic, "FraudRule", "velocity-burst", operator_namespace), judged_invalid
        )
        assert condition(bad, "Invalid")["reason"] == "InvalidExpression"
        assert "Syntax error" in condition(bad, "Invalid")["message"]
        assert condition(bad, "Ready")["status"] == "False"
        assert bad["status"]["appliedVersion"] == good["status"]["appliedVersion"]
        assert len(standin.puts) == puts_before
        assert standin.rules["velocity-burst"]["revision"].endswith(":2")
        assert standin.rules["velocity-burst"]["expression"] == "features.count_1m >= 6"

    async def test_a_rule_the_fraud_service_refuses_is_invalid_with_its_reason(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        refused = copy.deepcopy(RULE)
        refused["metadata"]["name"] = "older-fraud-service"
        refused["spec"]["expression"] = "features.near_threshold && txn.amount > 900000"
        apply(dynamic, refused, operator_namespace)

        def judged(obj: dict[str, Any]) -> bool:
            return condition(obj, "Invalid").get("status") == "True"

        rule = await eventually(
            getter(dynamic, "FraudRule", "older-fraud-service", operator_namespace), judged
        )
        assert condition(rule, "Invalid")["reason"] == "RejectedByFraudService"
        message = condition(rule, "Invalid")["message"]
        assert "undeclared reference to 'near_threshold'" in message
        assert "older-fraud-service" not in fraud[0].rules

    async def test_an_unavailable_fraud_service_is_retried_not_declared_invalid(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        standin = fraud[0]
        standin.unavailable = True
        try:
            later = copy.deepcopy(RULE)
            later["metadata"]["name"] = "large-payout"
            later["spec"] = {
                "description": "payouts above 10 000 EUR",
                "expression": "txn.type == 'payout' && txn.amount > 1000000",
                "action": "score",
                "weight": 40,
            }
            apply(dynamic, later, operator_namespace)

            def waiting(obj: dict[str, Any]) -> bool:
                return condition(obj, "Ready").get("reason") == "FraudServiceUnavailable"

            rule = await eventually(
                getter(dynamic, "FraudRule", "large-payout", operator_namespace), waiting
            )
            assert condition(rule, "Invalid") == {}
            assert "observedGeneration" not in rule["status"]
        finally:
            standin.unavailable = False
        await eventually(
            getter(dynamic, "FraudRule", "large-payout", operator_namespace), live_generation(1), 45
        )
        assert standin.rules["large-payout"]["weight"] == 40

    async def test_deleting_a_rule_withdraws_it_then_releases_theresource(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: tuple[FraudAdminStandIn, str]
    ) -> None:
        standin = fraud[0]
        await eventually(
            getter(dynamic, "FraudRule", "large-payout", operator_namespace), live_generation(1), 45
        )
        resource(dynamic, "FraudRule").delete(name="large-payout", namespace=operator_namespace)

        def gone() -> bool:
            try:
                getter(dynamic, "FraudRule", "large-payout", operator_namespace)()
            except NotFoundError:
                return True
            return False

        await eventually(gone, bool)
        assert "large-payout" in standin.deletes
        assert "large-payout" not in standin.rules
        assert "velocity-burst" in standin.rules


POLICY: dict[str, Any] = {
    "apiVersion": "lastro.io/v1alpha1",
    "kind": "RetentionPolicy",
    "metadata": {"name": "deliveries", "annotations": {"lastro.io/run-requested": "1"}},
    "spec": {
        "service": "notifications",
        "dataClass": "notifications.deliveries",
        "retention": "90d",
        "action": "purge",
        "schedule": "15 2 * * *",
    },
}


@pytest.mark.usefixtures("running_operator")
class TestRetentionPolicies:
    async def test_a_run_purges_only_expired_rows_and_records_the_counts(
        self,
        dynamic: DynamicClient,
        api_client: client.ApiClient,
        operator_namespace: str,
        privacy: tuple[PrivacyStandIn, str],
    ) -> None:
        standin = privacy[0]
        now = datetime.now(UTC)
        expired = [now - timedelta(days=days) for days in (91, 120, 400)]
        kept = [now - timedelta(days=days) for days in (1, 30, 89)]
        standin.deliveries = expired + kept
        apply(dynamic, copy.deepcopy(POLICY), operator_namespace)

        def ran(obj: dict[str, Any]) -> bool:
            return obj.get("status", {}).get("runs") == 1

        policy = await eventually(
            getter(dynamic, "RetentionPolicy", "deliveries", operator_namespace), ran
        )
        assert policy["status"]["lastResult"]["affected"] == 3
        assert policy["status"]["lastResult"]["dataClass"] == "notifications.deliveries"
        assert condition(policy, "Ready")["reason"] == "Purged"
        assert sorted(standin.deliveries) == sorted(kept)
        assert policy["status"]["nextRun"].endswith("T02:15:00Z")
        request_id, body = standin.requests[-1]
        assert request_id.startswith("retention-")
        assert (body["data_class"], body["action"], body["dry_run"]) == (
            "notifications.deliveries",
            "purge",
            False,
        )

        def audited() -> list[Any]:
            events = client.CoreV1Api(api_client).list_namespaced_event(operator_namespace).items
            return [
                e
                for e in events
                if e.reason == "RetentionRun" and e.involved_object.name == "deliveries"
            ]

        (event,) = await eventually(audited, bool)
        assert request_id in event.message
        assert "affected 3 records" in event.message

        again = copy.deepcopy(POLICY)
        again["metadata"]["annotations"]["lastro.io/run-requested"] = "2"
        apply(dynamic, again, operator_namespace)
        policy = await eventually(
            getter(dynamic, "RetentionPolicy", "deliveries", operator_namespace),
            lambda obj: obj["status"].get("runs") == 2,
        )
        assert policy["status"]["lastResult"]["affected"] == 0
        assert len(standin.deliveries) == 3

    async def test_a_data_class_the_service_does_not_hold_is_recorded_as_refused(
        self, dynamic: DynamicClient, operator_namespace: str
    ) -> None:
        unknown = copy.deepcopy(POLICY)
        unknown["metadata"]["name"] = "templates"
        unknown["spec"]["dataClass"] = "notifications.templates"
        apply(dynamic, unknown, operator_namespace)

        def refused(obj: dict[str, Any]) -> bool:
            return condition(obj, "Ready").get("reason") == "PurgeRefused"

        policy = await eventually(
            getter(dynamic, "RetentionPolicy", "templates", operator_namespace), refused
        )
        assert (
            "notifications holds no notifications.templates"
            in condition(policy, "Ready")["message"]
        )
        assert "lastResult" not in policy["status"]
        assert policy["status"]["lastRun"]

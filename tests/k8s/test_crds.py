"""The CRDs against the real kube-apiserver: installed, defaulted, and strict.

Every refusal below comes from the API server itself (OpenAPI schema or a CEL
`x-kubernetes-validations` rule in crds/), with the message a person would see from
`kubectl apply`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubekit import POLICIES, apply, documents
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import UnprocessibleEntityError

pytestmark = pytest.mark.usefixtures("crds_installed")

RULE: dict[str, Any] = {
    "apiVersion": "lastro.io/v1alpha1",
    "kind": "FraudRule",
    "metadata": {"name": "large-payout"},
    "spec": {
        "description": "payouts above 10 000 EUR go to review",
        "expression": "txn.type == 'payout' && txn.amount > 1000000",
        "action": "review",
    },
}
SERVICES = ("identity", "accounts", "transactions", "fraud", "notifications")
POLICY: dict[str, Any] = {
    "apiVersion": "lastro.io/v1alpha1",
    "kind": "RetentionPolicy",
    "metadata": {"name": "deliveries"},
    "spec": {
        "service": "notifications",
        "dataClass": "notifications.deliveries",
        "retention": "90d",
        "action": "purge",
    },
}


def _with(base: dict[str, Any], name: str, **spec: Any) -> dict[str, Any]:
    document = copy.deepcopy(base)
    document["metadata"]["name"] = name
    for key, value in spec.items():
        if value is None:
            document["spec"].pop(key, None)
        else:
            document["spec"][key] = value
    return document


def policy_files() -> list[Path]:
    return sorted(POLICIES.rglob("*.yaml"))


def test_the_policies_directory_ships_a_retention_policy_per_data_class() -> None:
    classes = {
        doc["spec"]["dataClass"]
        for path in policy_files()
        for doc in documents(path)
        if doc["kind"] == "RetentionPolicy"
    }
    assert {
        "notifications.deliveries",
        "identity.sessions",
        "fraud.profiles",
        "accounts.closed_customers",
        "accounts.audit_records",
        *(f"{service}.published_events" for service in SERVICES),
        "fraud.applied_events",
        "notifications.applied_events",
    } <= classes


@pytest.mark.parametrize("path", policy_files(), ids=lambda p: str(p.relative_to(POLICIES)))
def test_every_file_in_policies_applies(dynamic: DynamicClient, namespace: str, path: Path) -> None:
    for document in documents(path):
        stored = apply(dynamic, document, namespace).to_dict()
        assert stored["metadata"]["namespace"] == namespace
        assert stored["spec"][
            "dataClass" if document["kind"] == "RetentionPolicy" else "expression"
        ]


def test_defaults_are_filled_in_by_the_server(dynamic: DynamicClient, namespace: str) -> None:
    rule = apply(dynamic, _with(RULE, "defaults-rule"), namespace).to_dict()["spec"]
    assert (rule["mode"], rule["severity"], rule["enabled"]) == ("shadow", "medium", True)
    policy = apply(dynamic, _with(POLICY, "defaults-policy"), namespace).to_dict()["spec"]
    assert (policy["schedule"], policy["suspend"], policy["dryRun"]) == ("0 3 * * *", False, False)


REFUSED = [
    # (resource, what it breaks, message the server answers with)
    (_with(RULE, "scored", action="score"), "weight (0-100) is required when action is score"),
    (_with(RULE, "heavy", action="score", weight=101), "should be less than or equal to 100"),
    (_with(RULE, "loud", action="block"), 'Unsupported value: "block"'),
    (_with(RULE, "modal", mode="audit"), 'Unsupported value: "audit"'),
    (_with(RULE, "wordless", expression=None), "spec.expression: Required value"),
    (_with(RULE, "typed", transactionTypes=["wire"]), 'Unsupported value: "wire"'),
    (_with(RULE, "twice", transactionTypes=["payout", "payout"]), "Duplicate value"),
    (_with(RULE, "Not_A_Label"), "must be a DNS label"),
    (
        _with(POLICY, "foreign", dataClass="fraud.profiles"),
        "dataClass must start with the owning service's name",
    ),
    (
        _with(POLICY, "shredded", action="crypto-shred"),
        "crypto-shred applies only to data encrypted under per-customer keys",
    ),
    (
        _with(POLICY, "ledger", service="accounts", dataClass="accounts.postings"),
        "the ledger (entries, postings, balances, holds) is never purged",
    ),
    (
        _with(POLICY, "audit", dataClass="notifications.audit_records", action="anonymize"),
        "audit records past their legal period are purged whole",
    ),
    (
        _with(POLICY, "published", dataClass="notifications.published_events", action="anonymize"),
        "published and applied events are purged whole",
    ),
    (
        _with(POLICY, "applied", dataClass="notifications.applied_events", action="anonymize"),
        "published and applied events are purged whole",
    ),
    (_with(POLICY, "forever", retention="0d"), "spec.retention in body should match"),
    (_with(POLICY, "weekly", retention="2w"), "spec.retention in body should match"),
    (_with(POLICY, "cron", schedule="every day"), "spec.schedule in body should match"),
    (_with(POLICY, "owner", service="ledger"), 'Unsupported value: "ledger"'),
]


@pytest.mark.parametrize(
    ("document", "message"), REFUSED, ids=[doc["metadata"]["name"] for doc, _ in REFUSED]
)
def test_a_resource_breaking_a_rule_is_refused_with_its_message(
    dynamic: DynamicClient, namespace: str, document: dict[str, Any], message: str
) -> None:
    kind = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
    with pytest.raises(UnprocessibleEntityError) as refused:
        kind.create(body=document, namespace=namespace)
    body = json.loads(refused.value.body)
    assert message in body["message"], body["message"]
    names = [item["metadata"]["name"] for item in kind.get(namespace=namespace).to_dict()["items"]]
    assert document["metadata"]["name"] not in names


def test_crypto_shred_is_accepted_for_closed_customers(
    dynamic: DynamicClient, namespace: str
) -> None:
    document = _with(
        POLICY,
        "closed-customers",
        service="accounts",
        dataClass="accounts.closed_customers",
        action="crypto-shred",
        retention="1826d",
    )
    assert apply(dynamic, document, namespace).to_dict()["spec"]["action"] == "crypto-shred"


def test_status_is_a_subresource_the_spec_writer_cannot_set(
    dynamic: DynamicClient, namespace: str
) -> None:
    document = _with(RULE, "status-check")
    document["status"] = {"appliedVersion": 99}
    stored = apply(dynamic, document, namespace).to_dict()
    assert "appliedVersion" not in stored.get("status", {})


def test_kubectl_get_shows_mode_version_ready_and_age(
    dynamic: DynamicClient, namespace: str
) -> None:
    apply(dynamic, _with(RULE, "columns"), namespace)
    table = dynamic.request(
        "GET",
        f"/apis/lastro.io/v1alpha1/namespaces/{namespace}/fraudrules",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).to_dict()
    columns = [column["name"] for column in table["columnDefinitions"]]
    assert columns[:6] == ["Name", "Mode", "Action", "Version", "Ready", "Reason"]
    assert "Age" in columns
    row = next(r for r in table["rows"] if r["cells"][0] == "columns")
    assert row["cells"][1:3] == ["shadow", "review"]

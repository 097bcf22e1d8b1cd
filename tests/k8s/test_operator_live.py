"""The operator as it runs for real: `lastro serve operator` as its own process, against
the dev cluster's kube-apiserver (with the least-privilege `lastro-operator` user bound
to the chart's Role) and the real services of the local stack (`lastro dev up`): the
fraud service's rules admin API and the notifications privacy API, with a
client_credentials client registered in the real identity service.

What the fraud service shows is read through its own admin API (`GET /v1/rules`,
`/v1/rules/{id}`, `/v1/rules/stats`) and its screening endpoint; what the retention run
did is read from the real notifications database.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
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
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.db import create_engine
from lastro.core.security.tls import client_context
from lastro.demo import Api, client_credentials, operator_token
from lastro.devstack.components import components
from lastro.devstack.kubernetes import kubeconfig_path

pytestmark = pytest.mark.usefixtures("crds_installed")

# What the live test needs of the local stack (`lastro dev up`), beyond the cluster.
NEEDED = ("postgres", "redis", "kafka", "kms", "identity", "fraud", "notifications")
OPERATOR_SCOPES = ["fraud:admin", "privacy:admin"]
OPERATOR_AUDIENCES = ["fraud", "identity", "accounts", "notifications"]


@pytest.fixture(scope="module")
def stack(settings: Settings) -> Settings:
    down = [c.name for c in components(settings) if c.name in NEEDED and not c.healthy()]
    if down:
        pytest.fail(f"dev stack not healthy ({', '.join(down)}): run `lastro dev up --k8s`")
    return settings


@dataclass(frozen=True)
class Clients:
    operator: tuple[str, str]  # the operator's client id and secret
    fraud_admin: str  # a token for the test: fraud:admin, fraud:read, fraud:screen


@pytest.fixture(scope="module")
async def http(stack: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(stack.ca_file))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


@pytest.fixture(scope="module")
async def clients(stack: Settings, http: aiohttp.ClientSession) -> Clients:
    """The operator's client as docs/interfaces.md describes it, and the test's own."""
    identity = Api(http, stack.service_url("identity"))
    admin = await operator_token(identity, stack)
    run = secrets.token_hex(3)

    async def register(name: str, scopes: list[str], audiences: list[str]) -> tuple[str, str]:
        created = await identity.call(
            "POST",
            "/v1/clients",
            token=admin,
            expect=201,
            json={
                "name": f"{name}-{run}",
                "grant_types": ["client_credentials"],
                "scopes": scopes,
                "audiences": audiences,
            },
        )
        return str(created["client_id"]), str(created["client_secret"])

    operator = await register("lastro-operator", OPERATOR_SCOPES, OPERATOR_AUDIENCES)
    tester_scopes = ["fraud:admin", "fraud:read", "fraud:screen"]
    tester = await register("operator-live-test", tester_scopes, ["fraud"])
    token = await client_credentials(identity, *tester, " ".join(tester_scopes), "fraud")
    return Clients(operator, token)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _alive(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
            return bool(response.status == 200)
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
async def operator_process(
    stack: Settings,
    clients: Clients,
    dynamic: DynamicClient,
    operator_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Path]:
    """`lastro serve operator` watching the test namespace; yields its log file."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    port = _free_port()
    env = {
        **os.environ,
        "LASTRO_DEV_DIR": str(stack.dev_dir),
        "KUBECONFIG": str(kubeconfig_path(stack, "lastro-operator")),
        "LASTRO_OPERATOR_NAMESPACE": operator_namespace,
        "LASTRO_OPERATOR_CLIENT_ID": clients.operator[0],
        "LASTRO_OPERATOR_CLIENT_SECRET": clients.operator[1],
        "LASTRO_OPERATOR_HEALTH_PORT": str(port),
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lastro.cli",
            "serve",
            "operator",
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(_alive, f"http://127.0.0.1:{port}/healthz"):
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"the operator did not come up:\n{_tail(log)}")
            await asyncio.sleep(0.5)
        yield log
        await delete_custom_resources(dynamic, operator_namespace)
    finally:
        process.terminate()
        try:
            code = await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert code == 0, f"the operator exited {code} on SIGTERM:\n{_tail(log)}"


# ------------------------------------------------------------------ fraud rules


@dataclass
class Fraud:
    """The fraud service's admin API and screening endpoint, as the test sees them."""

    api: Api
    token: str

    async def ruleset_version(self) -> int:
        return int(
            (await self.api.call("GET", "/v1/rules", token=self.token, expect=200))[
                "ruleset_version"
            ]
        )

    async def rule(self, rule_id: str) -> dict[str, Any] | None:
        async with self.api.http.get(
            f"{self.api.base}/v1/rules/{rule_id}",
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def stats_mode(self, rule_id: str) -> tuple[int, str | None]:
        """The rule-set version the stats were read from and the rule's mode there."""
        stats = await self.api.call("GET", "/v1/rules/stats", token=self.token, expect=200)
        modes = {row["rule_id"]: row["mode"] for row in stats["rules"]}
        return int(stats["ruleset_version"]), modes.get(rule_id)

    async def screen(self, amount: int) -> dict[str, Any]:
        return await self.api.call(
            "POST",
            "/internal/v1/screenings",
            token=self.token,
            expect=200,
            json={
                "transaction_id": f"txn_live{secrets.token_hex(8)}",
                "type": "transfer",
                "amount": amount,
                "currency": "EUR",
                "customer_id": f"cus_live{secrets.token_hex(6)}",
                "source_account_id": f"acc_live{secrets.token_hex(6)}",
                "device_id": "dev_live",
                "ip": "203.0.113.7",
                "country": "PT",
                "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            },
        )


@pytest.fixture(scope="module")
def fraud(stack: Settings, http: aiohttp.ClientSession, clients: Clients) -> Fraud:
    return Fraud(Api(http, stack.service_url("fraud")), clients.fraud_admin)


@dataclass(frozen=True)
class LiveRule:
    """One FraudRule of this run: a name no earlier run used, and an amount only this
    run's screenings carry, so the rule fires for them and nothing else."""

    name: str
    amount: int

    def resource(self, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "lastro.io/v1alpha1",
            "kind": "FraudRule",
            "metadata": {"name": self.name},
            "spec": {
                "description": "the live operator test's marked amount",
                "expression": f"txn.amount == {self.amount}",
                "action": "decline",
                "severity": "high",
                **spec,
            },
        }


@pytest.fixture(scope="module")
def live_rule() -> LiveRule:
    return LiveRule(f"live-{secrets.token_hex(4)}", 1_000 + secrets.randbelow(9_000_000))


def rule_ids(entries: list[dict[str, Any]]) -> set[str]:
    return {str(entry["rule_id"]) for entry in entries}


@pytest.mark.usefixtures("operator_process")
class TestFraudRulesLive:
    async def test_a_created_rule_becomes_a_new_rule_set_in_shadow_mode(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: Fraud, live_rule: LiveRule
    ) -> None:
        before = await fraud.ruleset_version()
        created = apply(dynamic, live_rule.resource(), operator_namespace).to_dict()
        rule = await eventually(
            getter(dynamic, "FraudRule", live_rule.name, operator_namespace), live_generation(1)
        )
        applied = rule["status"]["appliedVersion"]
        assert applied > before
        served = await fraud.rule(live_rule.name)
        assert served is not None
        assert served["revision"] == f"{created['metadata']['uid']}:1"
        assert (served["mode"], served["ruleset_version"]) == ("shadow", applied)
        assert await fraud.stats_mode(live_rule.name) == (await fraud.ruleset_version(), "shadow")

        screening = await fraud.screen(live_rule.amount)
        assert screening["ruleset_version"] >= applied
        assert live_rule.name in rule_ids(screening["shadow"])
        assert live_rule.name not in rule_ids(screening["reasons"])

    async def test_shadow_to_enforce_switches_the_live_rule_set(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: Fraud, live_rule: LiveRule
    ) -> None:
        shadow = await eventually(
            getter(dynamic, "FraudRule", live_rule.name, operator_namespace), live_generation(1)
        )
        apply(dynamic, live_rule.resource(mode="enforce"), operator_namespace)
        enforced = await eventually(
            getter(dynamic, "FraudRule", live_rule.name, operator_namespace), live_generation(2)
        )
        applied = enforced["status"]["appliedVersion"]
        assert applied > shadow["status"]["appliedVersion"]
        assert "enforce mode" in condition(enforced, "Ready")["message"]
        served = await fraud.rule(live_rule.name)
        assert served is not None
        assert (served["mode"], served["ruleset_version"]) == ("enforce", applied)
        assert served["revision"].endswith(":2")
        assert (await fraud.stats_mode(live_rule.name))[1] == "enforce"

        screening = await fraud.screen(live_rule.amount)
        assert screening["decision"] == "decline"
        assert live_rule.name in rule_ids(screening["reasons"])
        assert live_rule.name not in rule_ids(screening["shadow"])

    async def test_an_invalid_expression_is_invalid_and_changes_nothing_at_the_fraud_service(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: Fraud, live_rule: LiveRule
    ) -> None:
        good = await eventually(
            getter(dynamic, "FraudRule", live_rule.name, operator_namespace), live_generation(2)
        )
        version_before = await fraud.ruleset_version()
        # An int compared with a double: parses, but the fraud service's type check refuses it.
        broken = live_rule.resource(mode="enforce", expression="txn.amount > 0.5")
        apply(dynamic, broken, operator_namespace)

        def judged_invalid(obj: dict[str, Any]) -> bool:
            return (
                obj["status"].get("observedGeneration") == 3
                and condition(obj, "Invalid").get("status") == "True"
            )

        bad = await eventually(
            getter(dynamic, "FraudRule", live_rule.name, operator_namespace), judged_invalid
        )
        assert condition(bad, "Invalid")["reason"] == "InvalidExpression"
        assert "no matching overload" in condition(bad, "Invalid")["message"]
        assert condition(bad, "Ready")["status"] == "False"
        assert bad["status"]["appliedVersion"] == good["status"]["appliedVersion"]
        assert await fraud.ruleset_version() == version_before
        served = await fraud.rule(live_rule.name)
        assert served is not None
        assert served["expression"] == f"txn.amount == {live_rule.amount}"
        assert served["revision"].endswith(":2")

    async def test_deleting_the_rule_withdraws_it_from_the_fraud_service(
        self, dynamic: DynamicClient, operator_namespace: str, fraud: Fraud, live_rule: LiveRule
    ) -> None:
        version_before = await fraud.ruleset_version()
        resource(dynamic, "FraudRule").delete(name=live_rule.name, namespace=operator_namespace)

        def gone() -> bool:
            try:
                getter(dynamic, "FraudRule", live_rule.name, operator_namespace)()
            except NotFoundError:
                return True
            return False

        await eventually(gone, bool)
        assert await fraud.rule(live_rule.name) is None
        version, mode = await fraud.stats_mode(live_rule.name)
        assert version > version_before
        assert mode is None
        screening = await fraud.screen(live_rule.amount)
        assert live_rule.name not in rule_ids(screening["reasons"] + screening["shadow"])


# ------------------------------------------------------------------ retention


@pytest.fixture(scope="module")
async def engine(stack: Settings) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(stack, pool_size=2, max_overflow=0, name="lastro-operator-live-test")
    yield eng
    await eng.dispose()


@dataclass(frozen=True)
class Seeded:
    expired: set[str]  # finished deliveries past the retention period: purged
    kept: set[str]  # fresh ones, and an expired one still in flight: never purged
    expected: int  # every finished delivery past the period, seeded here or not


RETENTION_DAYS = 90


@pytest.fixture
async def seeded_deliveries(engine: AsyncEngine) -> AsyncIterator[Seeded]:
    """Deliveries written straight into the notifications database, as if sent long ago."""
    run = secrets.token_hex(4)
    now = datetime.now(UTC)
    rows = {
        f"dlv_live{run}_old1": ("delivered", 91),
        f"dlv_live{run}_old2": ("dead", 120),
        f"dlv_live{run}_old3": ("delivered", 400),
        f"dlv_live{run}_inflight": ("pending", 200),
        f"dlv_live{run}_new1": ("delivered", 1),
        f"dlv_live{run}_new2": ("dead", RETENTION_DAYS - 1),
    }
    async with engine.begin() as connection:
        for delivery_id, (status, age) in rows.items():
            created = now - timedelta(days=age)
            await connection.execute(
                text(
                    "INSERT INTO notifications.deliveries (id, event_id, kind, channel,"
                    " destination, status, attempts, round_attempts, next_attempt_at,"
                    " address, content, created_at, updated_at, delivered_at)"
                    " VALUES (:id, :event, 'account.frozen', 'email', :destination, :status,"
                    " 1, 1, :next_attempt, 'sealed-address', 'sealed-content', :created, :created,"
                    " :delivered)"
                ),
                {
                    "id": delivery_id,
                    "event": f"evt_live{run}_{delivery_id}",
                    "destination": f"customer:{delivery_id}",
                    "status": status,
                    "created": created,
                    # the one in flight is retried tomorrow: the dispatcher leaves it be
                    "next_attempt": now + timedelta(days=1) if status == "pending" else created,
                    "delivered": created if status == "delivered" else None,
                },
            )
        expected = await connection.scalar(
            text(
                "SELECT count(*) FROM notifications.deliveries"
                " WHERE status IN ('delivered', 'dead') AND created_at < :cutoff"
            ),
            {"cutoff": now - timedelta(days=RETENTION_DAYS)},
        )
    expired = {
        i for i, (status, age) in rows.items() if age > RETENTION_DAYS and status != "pending"
    }
    yield Seeded(expired, set(rows) - expired, int(expected or 0))
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM notifications.deliveries WHERE id LIKE :prefix"),
            {"prefix": f"dlv_live{run}_%"},
        )


async def present(engine: AsyncEngine, ids: set[str]) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id FROM notifications.deliveries WHERE id = ANY(:ids)"),
            {"ids": sorted(ids)},
        )
        return {str(row[0]) for row in rows}


def retention_policy(name: str, run_requested: str) -> dict[str, Any]:
    return {
        "apiVersion": "lastro.io/v1alpha1",
        "kind": "RetentionPolicy",
        "metadata": {"name": name, "annotations": {"lastro.io/run-requested": run_requested}},
        "spec": {
            "service": "notifications",
            "dataClass": "notifications.deliveries",
            "retention": f"{RETENTION_DAYS}d",
            "action": "purge",
            "schedule": "15 2 * * *",
        },
    }


def run_events(api_client: client.ApiClient, namespace: str, name: str) -> Iterator[Any]:
    for event in client.CoreV1Api(api_client).list_namespaced_event(namespace).items:
        if event.reason == "RetentionRun" and event.involved_object.name == name:
            yield event


@pytest.mark.usefixtures("operator_process")
async def test_a_retention_run_purges_only_expired_deliveries_in_the_database_and_records_counts(
    dynamic: DynamicClient,
    api_client: client.ApiClient,
    operator_namespace: str,
    engine: AsyncEngine,
    seeded_deliveries: Seeded,
    clients: Clients,
) -> None:
    seeded = seeded_deliveries
    assert len(seeded.expired) == 3 and seeded.expected >= 3
    apply(dynamic, retention_policy("deliveries-live", "1"), operator_namespace)

    policy = await eventually(
        getter(dynamic, "RetentionPolicy", "deliveries-live", operator_namespace),
        lambda obj: obj.get("status", {}).get("runs") == 1,
    )
    result = policy["status"]["lastResult"]
    assert result["affected"] == seeded.expected
    assert (result["dataClass"], result["action"], result["dryRun"]) == (
        "notifications.deliveries",
        "purge",
        False,
    )
    assert condition(policy, "Ready")["reason"] == "Purged"
    assert await present(engine, seeded.expired) == set()
    assert await present(engine, seeded.kept) == seeded.kept

    (event,) = await eventually(
        lambda: list(run_events(api_client, operator_namespace, "deliveries-live")), bool
    )
    request_id = event.message.rsplit("[request ", 1)[1].rstrip("]")
    assert f"affected {seeded.expected} records" in event.message
    async with engine.connect() as connection:
        audit = (
            await connection.execute(
                text(
                    "SELECT actor, details FROM notifications.audit_log"
                    " WHERE action = 'privacy.purged' AND details->>'request_id' = :request"
                ),
                {"request": request_id},
            )
        ).one()
    assert audit.actor.startswith(f"{clients.operator[0]}/")
    assert audit.details["affected"] == seeded.expected

    apply(dynamic, retention_policy("deliveries-live", "2"), operator_namespace)
    again = await eventually(
        getter(dynamic, "RetentionPolicy", "deliveries-live", operator_namespace),
        lambda obj: obj["status"].get("runs") == 2,
    )
    assert again["status"]["lastResult"]["affected"] == 0
    assert await present(engine, seeded.kept) == seeded.kept


@pytest.mark.usefixtures("operator_process")
async def test_an_audit_records_policy_is_run_by_the_service_as_a_prefix_purge(
    dynamic: DynamicClient,
    api_client: client.ApiClient,
    operator_namespace: str,
    engine: AsyncEngine,
    clients: Clients,
) -> None:
    """The shipped `*-audit-records` policies are accepted end to end: the operator
    calls notifications' purge for `notifications.audit_records`, which answers (no
    longer 422), drops exactly the reported count from the start of the chain (none
    on a stack younger than a day) and audits the run."""
    policy = retention_policy("audit-records-live", "1")
    policy["spec"] |= {"dataClass": "notifications.audit_records", "retention": "1d"}
    async with engine.connect() as connection:
        first = await connection.scalar(text("SELECT min(seq) FROM notifications.audit_log"))
        anchor = await connection.scalar(text("SELECT seq FROM notifications.audit_anchor"))
    apply(dynamic, policy, operator_namespace)

    ran = await eventually(
        getter(dynamic, "RetentionPolicy", "audit-records-live", operator_namespace),
        lambda obj: obj.get("status", {}).get("runs") == 1,
    )

    assert condition(ran, "Ready")["reason"] == "Purged"
    result = ran["status"]["lastResult"]
    assert (result["dataClass"], result["action"]) == ("notifications.audit_records", "purge")
    affected = result["affected"]
    (event,) = await eventually(
        lambda: list(run_events(api_client, operator_namespace, "audit-records-live")), bool
    )
    request_id = event.message.rsplit("[request ", 1)[1].rstrip("]")
    async with engine.connect() as connection:
        audit = (
            await connection.execute(
                text(
                    "SELECT actor, target, details FROM notifications.audit_log"
                    " WHERE action = 'privacy.purged' AND details->>'request_id' = :request"
                ),
                {"request": request_id},
            )
        ).one()
        kept = await connection.scalar(text("SELECT min(seq) FROM notifications.audit_log"))
        moved = await connection.scalar(text("SELECT seq FROM notifications.audit_anchor"))
    assert kept == first + affected
    assert (moved if moved is not None else first - 1) == first - 1 + affected
    assert affected == 0 or moved != anchor
    assert audit.actor.startswith(f"{clients.operator[0]}/")
    assert audit.target == "notifications.audit_records" and audit.details["affected"] == affected

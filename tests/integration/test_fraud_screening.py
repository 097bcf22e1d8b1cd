"""The fraud API over HTTPS with real service tokens: screening, rules, alerts, stats.

The fraud app runs in-process on a throwaway schema and Redis prefix, against the
real PostgreSQL, Redis, Kafka (the real compacted ``lastro.fraud.rules`` topic), KMS
and the running identity service. Rules these tests publish match only this run's
customers, and are withdrawn at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fraud_stack import (
    Client,
    Contract,
    Http,
    StackIdentity,
    drop_schema,
    eventually,
    https_session,
    publisher,
    require_services,
    running_fraud,
    transaction,
    transactions_stand_in,
)
from schemas import unique_schema
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import verify_schema
from lastro.core.config import Settings
from lastro.core.events import EventSigner, new_event
from lastro.core.observability import metrics_registry
from lastro.fraud.app import OPENAPI, TRANSIT_KEY
from lastro.fraud.events import ALERT_RAISED, RULES_TOPIC

CONTRACT = Contract(OPENAPI)
RUN = secrets.token_hex(3)


def customer(name: str) -> tuple[str, str]:
    return f"cus_{RUN}_{name}", f"acc_{RUN}_{name}"


def rule(rule_id: str, expression: str, **fields: Any) -> dict[str, Any]:
    return {
        "description": f"test rule {rule_id}",
        "expression": expression,
        "action": "decline",
        "severity": "high",
        "mode": "shadow",
        "revision": secrets.token_hex(4),
        **fields,
    }


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    require_services(settings, "identity")
    async with https_session(settings) as session:
        yield session


@pytest.fixture(scope="module")
async def identity(settings: Settings, http: aiohttp.ClientSession) -> StackIdentity:
    return await StackIdentity.connect(settings, http)


@pytest.fixture(scope="module")
async def screener(identity: StackIdentity) -> Client:
    """The transaction service's identity, as far as fraud is concerned."""
    return await identity.client("screener", ["fraud:screen"], ["fraud"])


@pytest.fixture(scope="module")
async def analyst(identity: StackIdentity) -> Client:
    return await identity.client("analyst", ["fraud:read", "fraud:admin"], ["fraud"])


@pytest.fixture(scope="module")
def stand_in(settings: Settings) -> Any:
    with transactions_stand_in(settings) as base:
        yield base


@pytest.fixture(scope="module")
async def schema(engine: AsyncEngine) -> AsyncIterator[str]:
    name = unique_schema("fraud_api")
    yield name
    await drop_schema(engine, name)


@pytest.fixture(scope="module")
async def fraud(
    settings: Settings,
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    schema: str,
    stand_in: str,
) -> AsyncIterator[tuple[Http, web.Application]]:
    async with running_fraud(
        settings,
        engine,
        http,
        schema=schema,
        prefix=f"lastro:fraud-test:{RUN}",
        transactions_url=stand_in,
    ) as served:
        yield served


@pytest.fixture(scope="module")
async def api(fraud: tuple[Http, web.Application], analyst: Client) -> AsyncIterator[Http]:
    served, _ = fraud
    yield served
    headers = await analyst.bearer("fraud:admin")
    listed = await served.call("GET", "/v1/rules", headers, expect=200)
    for item in listed["rules"]:
        if item["id"].startswith(f"t{RUN}"):
            await served.call("DELETE", f"/v1/rules/{item['id']}", headers, expect=204)


async def screen(api: Http, screener: Client, body: dict[str, Any], expect: int = 200) -> Any:
    headers = await screener.bearer("fraud:screen")
    if expect == 200:
        answer = await api.screen(headers, body)
    else:
        answer = await api.call(
            "POST", "/internal/v1/screenings", headers, json=body, expect=expect
        )
    CONTRACT.check("POST", "/internal/v1/screenings", expect, answer)
    return answer


async def put_rule(api: Http, analyst: Client, rule_id: str, body: dict[str, Any]) -> Any:
    answer = await api.call(
        "PUT", f"/v1/rules/{rule_id}", await analyst.bearer("fraud:admin"), json=body, expect=200
    )
    CONTRACT.check("PUT", "/v1/rules/{id}", 200, answer)
    return answer


async def test_screening_records_the_rules_that_fired_and_the_rule_set_version(
    api: Http, screener: Client, analyst: Client
) -> None:
    cus, acc = customer("record")
    rule_id = f"t{RUN}-record"
    expression = f'txn.customer_id == "{cus}" && txn.amount >= 100000 && features.count_24h >= 0'
    put = await put_rule(
        api, analyst, rule_id, rule(rule_id, expression, action="challenge", mode="enforce")
    )
    assert put["live"] is True

    body = transaction(cus, acc, amount=150_000)
    answer = await screen(api, screener, body)

    assert answer["decision"] == "challenge"
    assert answer["ruleset_version"] == put["ruleset_version"]
    (reason,) = [r for r in answer["reasons"] if r["rule_id"] == rule_id]
    assert reason["features"] == {"count_24h": 0}
    assert reason["mode"] == "enforce" and reason["action"] == "challenge"
    recorded = await api.call(
        "GET",
        f"/v1/screenings/{body['transaction_id']}",
        await analyst.bearer("fraud:read"),
        expect=200,
    )
    CONTRACT.check("GET", "/v1/screenings/{transaction_id}", 200, recorded)
    assert recorded["screening_id"] == answer["screening_id"]
    assert recorded["ruleset_version"] == put["ruleset_version"]
    assert [r["rule_id"] for r in recorded["reasons"]] == [r["rule_id"] for r in answer["reasons"]]
    assert recorded["request"]["amount"] == 150_000

    small = await screen(api, screener, transaction(cus, acc, amount=99_999))
    assert small["decision"] == "approve" and small["reasons"] == []


async def test_a_retry_gets_the_first_decision_and_other_content_conflicts(
    api: Http, screener: Client
) -> None:
    cus, acc = customer("retry")
    body = transaction(cus, acc)
    first = await screen(api, screener, body)
    async with api.http.post(
        f"{api.base}/internal/v1/screenings",
        json=body,
        headers=await screener.bearer("fraud:screen"),
    ) as response:
        again = await response.json()
        assert response.status == 200
        assert response.headers["Idempotent-Replayed"] == "true"
    assert again == first
    changed = {**body, "amount": body["amount"] + 1}
    problem = await screen(api, screener, changed, expect=409)
    assert problem["type"].endswith("/screening-conflict")


async def test_screening_needs_a_fraud_screen_token_for_the_fraud_audience(
    api: Http, screener: Client, analyst: Client, identity: StackIdentity
) -> None:
    cus, acc = customer("auth")
    body = transaction(cus, acc)
    path = "/internal/v1/screenings"
    await api.call("POST", path, {}, json=body, expect=401)
    await api.call("POST", path, await analyst.bearer("fraud:admin"), json=body, expect=403)
    other = await identity.client("elsewhere", ["accounts:read"], ["accounts"])
    await api.call(
        "POST", path, await other.bearer("accounts:read", "accounts"), json=body, expect=401
    )
    await api.call("GET", "/v1/rules", await screener.bearer("fraud:screen"), expect=403)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 12.5}, "amount"),
        ({"amount": 0}, "amount"),
        ({"currency": "eur"}, "currency"),
        ({"occurred_at": "yesterday"}, "occurred_at"),
        ({"location": {"lat": 91, "lon": 0}}, "location.lat"),
        ({"surprise": True}, "surprise"),
    ],
)
async def test_a_malformed_screening_request_is_refused_and_not_recorded(
    api: Http, screener: Client, analyst: Client, change: dict[str, Any], field: str
) -> None:
    cus, acc = customer("malformed")
    body = {**transaction(cus, acc), **change}
    problem = await screen(api, screener, body, expect=422)
    assert any(error["field"] == field for error in problem["errors"]), problem
    await api.call(
        "GET",
        f"/v1/screenings/{body['transaction_id']}",
        await analyst.bearer("fraud:read"),
        expect=404,
    )


async def test_a_rule_switched_from_shadow_to_enforce_decides_from_the_next_transaction(
    api: Http, screener: Client, analyst: Client
) -> None:
    cus, acc = customer("switch")
    rule_id = f"t{RUN}-switch"
    shadow = rule(rule_id, f'txn.customer_id == "{cus}" && txn.amount > 50000')
    before = await put_rule(api, analyst, rule_id, shadow)

    first = transaction(cus, acc, amount=60_000)
    answer = await screen(api, screener, first)
    assert answer["decision"] == "approve"
    assert answer["ruleset_version"] == before["ruleset_version"]
    assert [r["rule_id"] for r in answer["shadow"]] == [rule_id]

    after = await put_rule(api, analyst, rule_id, {**shadow, "mode": "enforce"})
    assert after["ruleset_version"] > before["ruleset_version"]
    second = await screen(api, screener, transaction(cus, acc, amount=60_000))
    assert second["decision"] == "decline"
    assert second["ruleset_version"] == after["ruleset_version"]
    assert [r["rule_id"] for r in second["reasons"]] == [rule_id]

    recorded = await api.call(
        "GET",
        f"/v1/screenings/{first['transaction_id']}",
        await analyst.bearer("fraud:read"),
        expect=200,
    )
    assert recorded["decision"] == "approve"
    assert recorded["ruleset_version"] == before["ruleset_version"]


async def test_a_rule_published_on_the_topic_is_live_on_the_next_transaction(
    api: Http, screener: Client, analyst: Client, settings: Settings, signer: EventSigner
) -> None:
    cus, acc = customer("topic")
    rule_id = f"t{RUN}-topic"
    body = rule(rule_id, f'txn.customer_id == "{cus}"', mode="shadow")
    await put_rule(api, analyst, rule_id, body)
    assert (await screen(api, screener, transaction(cus, acc)))["decision"] == "approve"

    enforced = {**body, "id": rule_id, "mode": "enforce", "revision": "operator-uid:2"}
    async with publisher(settings, signer) as publish:
        await publish.rule(enforced)
    headers = await analyst.bearer("fraud:read")

    async def live() -> Any:
        shown = await api.call("GET", f"/v1/rules/{rule_id}", headers, expect=200)
        return shown if shown["revision"] == "operator-uid:2" else None

    shown = await eventually(live)
    CONTRACT.check("GET", "/v1/rules/{id}", 200, shown)
    answer = await screen(api, screener, transaction(cus, acc))
    assert answer["decision"] == "decline"
    assert answer["ruleset_version"] == shown["ruleset_version"]


def rejected_records() -> float:
    value = metrics_registry().get_sample_value(
        "lastro_fraud_rule_records_total", {"outcome": "rejected"}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("features.no_such_feature > 1", "no_such_feature"),
        ("txn.amount", "must be a bool"),
        ("txn.amount > 'x'", "no matching overload"),
        ("__import__('os').system('true')", "__import__"),
    ],
)
async def test_an_invalid_rule_is_refused_with_the_cel_error_and_the_set_is_kept(
    api: Http, analyst: Client, expression: str, says: str
) -> None:
    headers = await analyst.bearer("fraud:admin")
    rule_id = f"t{RUN}-keep"
    good = rule(rule_id, 'txn.customer_id == "nobody"')
    await put_rule(api, analyst, rule_id, good)
    before = await api.call("GET", "/v1/rules", headers, expect=200)

    problem = await api.call(
        "PUT", f"/v1/rules/{rule_id}", headers, json={**good, "expression": expression}, expect=422
    )
    assert problem["type"].endswith("/invalid-rule")
    assert problem["errors"][0]["field"] == "expression"
    assert says in problem["errors"][0]["detail"]
    after = await api.call("GET", "/v1/rules", headers, expect=200)
    assert after == before


async def test_an_invalid_or_unsigned_record_on_the_topic_is_skipped(
    api: Http, analyst: Client, settings: Settings, signer: EventSigner
) -> None:
    headers = await analyst.bearer("fraud:admin")
    rule_id = f"t{RUN}-skip"
    good = rule(rule_id, 'txn.customer_id == "nobody"')
    await put_rule(api, analyst, rule_id, good)
    before = rejected_records()
    async with publisher(settings, signer) as publish:
        await publish.rule({**good, "id": rule_id, "expression": "features.nope > 1"})
        unsigned = new_event("lastro.fraud.rule_upserted", "/elsewhere", {**good, "id": rule_id})
        await publish.producer.send_and_wait(
            RULES_TOPIC,
            json.dumps(unsigned.envelope()).encode(),
            key=rule_id.encode(),
        )
        marker = {**good, "id": rule_id, "revision": "after-the-bad-ones"}
        await publish.rule(marker)

    async def marker_live() -> Any:
        shown = await api.call("GET", f"/v1/rules/{rule_id}", headers, expect=200)
        return shown if shown["revision"] == "after-the-bad-ones" else None

    shown = await eventually(marker_live)
    assert shown["expression"] == good["expression"]
    assert rejected_records() - before == 2


async def test_replicas_converge_on_the_same_rule_set(
    api: Http,
    analyst: Client,
    settings: Settings,
    engine: AsyncEngine,
    http: aiohttp.ClientSession,
    schema: str,
    stand_in: str,
) -> None:
    rule_id = f"t{RUN}-replica"
    async with running_fraud(
        settings,
        engine,
        http,
        schema=schema,
        prefix=f"lastro:fraud-test:{RUN}",
        transactions_url=stand_in,
        name="fraud-tests-2",
    ) as (second, _):
        headers = await analyst.bearer("fraud:admin")
        put = await put_rule(api, analyst, rule_id, rule(rule_id, 'txn.country == "AQ"'))

        async def converged() -> Any:
            shown = await second.call("GET", "/v1/rules", headers, expect=200)
            return shown if shown["ruleset_version"] >= put["ruleset_version"] else None

        seen = await eventually(converged)
        ours = await api.call("GET", "/v1/rules", headers, expect=200)
        assert seen == ours


async def test_a_review_opens_an_alert_whose_resolution_reaches_the_transaction_service(
    api: Http, screener: Client, analyst: Client, http: aiohttp.ClientSession, stand_in: str
) -> None:
    cus, acc = customer("review")
    rule_id = f"t{RUN}-review"
    await put_rule(
        api,
        analyst,
        rule_id,
        rule(rule_id, f'txn.customer_id == "{cus}"', action="review", mode="enforce"),
    )
    body = transaction(cus, acc, amount=70_000)
    async with http.post(f"{stand_in}/admin/held", json=body) as held:
        assert held.status == 200
    answer = await screen(api, screener, body)
    assert answer["decision"] == "review"

    reader = await analyst.bearer("fraud:read")
    listed = await api.call("GET", f"/v1/alerts?customer_id={cus}", reader, expect=200)
    CONTRACT.check("GET", "/v1/alerts", 200, listed)
    (alert,) = listed["data"]
    assert alert["typology"] == "screening_review"
    assert alert["transaction_id"] == body["transaction_id"]
    assert alert["status"] == "open" and rule_id in alert["rule_ids"]

    admin = await analyst.bearer("fraud:admin")
    assigned = await api.call(
        "POST", f"/v1/alerts/{alert['id']}/assign", admin, json={"assignee": "ana"}, expect=200
    )
    CONTRACT.check("POST", "/v1/alerts/{id}/assign", 200, assigned)
    assert assigned["status"] == "assigned" and assigned["assignee"] == "ana"
    resolved = await api.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        admin,
        json={"resolution": "false_positive", "note": "customer confirmed by phone"},
        expect=200,
    )
    CONTRACT.check("POST", "/v1/alerts/{id}/resolve", 200, resolved)
    assert resolved["status"] == "resolved"
    assert resolved["review_outcome"]["state"] in ("pending", "done")

    async def reported() -> Any:
        shown = await api.call("GET", f"/v1/alerts/{alert['id']}", reader, expect=200)
        return shown if shown["review_outcome"]["state"] == "done" else None

    done = await eventually(reported)
    assert done["review_outcome"]["detail"].startswith("200")
    async with http.get(f"{stand_in}/admin/outcomes") as response:
        outcomes = [o for o in await response.json() if o["key"] == alert["id"]]
    assert [o["body"]["outcome"] for o in outcomes] == ["legitimate"]
    assert outcomes[0]["transaction_id"] == body["transaction_id"]

    again = await api.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        admin,
        json={"resolution": "false_positive"},
        expect=200,
    )
    assert again["resolved_at"] == resolved["resolved_at"]
    problem = await api.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        admin,
        json={"resolution": "true_positive"},
        expect=409,
    )
    assert problem["type"].endswith("/alert-resolved")

    stats = await api.call("GET", "/v1/rules/stats", reader, expect=200)
    CONTRACT.check("GET", "/v1/rules/stats", 200, stats)
    (row,) = [r for r in stats["rules"] if r["rule_id"] == rule_id]
    assert row["enforced_hits"] == 1 and row["mode"] == "enforce"
    assert (row["true_positives"], row["false_positives"], row["precision"]) == (0, 1, 0.0)


async def test_concurrent_reviews_each_open_one_alert_with_its_event_and_audit_record(
    api: Http,
    screener: Client,
    analyst: Client,
    fraud: tuple[Http, web.Application],
    settings: Settings,
    engine: AsyncEngine,
    schema: str,
) -> None:
    """A burst of reviews (they are recorded together, group-committed): each
    transaction gets one decision and one alert, with one event and one audit record
    each; retries sent at the same time get the first decision and raise nothing."""
    cus, acc = customer("burst")
    rule_id = f"t{RUN}-burst"
    await put_rule(
        api,
        analyst,
        rule_id,
        rule(rule_id, f'txn.customer_id == "{cus}"', action="review", mode="enforce"),
    )
    bodies = [transaction(cus, acc, amount=1_000 + n) for n in range(16)]
    answers = await asyncio.gather(*(screen(api, screener, b) for b in [*bodies, *bodies[:6]]))
    assert all(answer["decision"] == "review" for answer in answers)
    for n in range(6):
        assert answers[16 + n] == answers[n]

    listed = await api.call(
        "GET",
        f"/v1/alerts?customer_id={cus}&limit=100",
        await analyst.bearer("fraud:read"),
        expect=200,
    )
    alerts = {a["transaction_id"]: a["id"] for a in listed["data"]}
    assert sorted(alerts) == sorted(b["transaction_id"] for b in bodies)
    async with engine.connect() as conn:
        events = await conn.execute(
            text(
                f"SELECT envelope->>'subject', count(*) FROM \"{schema}\".outbox"
                " WHERE envelope->>'type' = :type AND envelope->>'subject' = ANY(:ids)"
                " GROUP BY 1"
            ),
            {"type": ALERT_RAISED, "ids": list(alerts.values())},
        )
        assert dict(events.all()) == dict.fromkeys(alerts.values(), 1)
        audited = await conn.execute(
            text(
                f'SELECT target, count(*) FROM "{schema}".audit_log'
                " WHERE action = 'alert.raised' AND target = ANY(:ids) GROUP BY 1"
            ),
            {"ids": list(alerts.values())},
        )
        assert dict(audited.all()) == dict.fromkeys(alerts.values(), 1)
    _, app = fraud
    key = await app[TRANSIT_KEY].local_hmac_key(settings.audit_key_name)
    chain = await verify_schema(engine, schema, key)
    assert chain.ok, chain.reason


async def test_shadow_hit_rates_count_each_mode(
    api: Http, screener: Client, analyst: Client
) -> None:
    cus, acc = customer("rates")
    rule_id = f"t{RUN}-rates"
    await put_rule(api, analyst, rule_id, rule(rule_id, f'txn.customer_id == "{cus}"'))
    for _ in range(3):
        await screen(api, screener, transaction(cus, acc))
    stats = await api.call("GET", "/v1/rules/stats", await analyst.bearer("fraud:read"), expect=200)
    (row,) = [r for r in stats["rules"] if r["rule_id"] == rule_id]
    assert (row["shadow_hits"], row["enforced_hits"], row["mode"]) == (3, 0, "shadow")
    assert row["hit_rate"] == round(3 / stats["screenings"], 6)
    assert row["precision"] is None


async def test_an_unknown_alert_or_rule_is_404(api: Http, analyst: Client) -> None:
    headers = await analyst.bearer("fraud:admin")
    await api.call("GET", "/v1/alerts/alrt_nope", headers, expect=404)
    await api.call(
        "POST",
        "/v1/alerts/alrt_nope/resolve",
        headers,
        json={"resolution": "true_positive"},
        expect=404,
    )
    await api.call("GET", f"/v1/rules/t{RUN}-never", headers, expect=404)
    await api.call("DELETE", f"/v1/rules/t{RUN}-never", headers, expect=404)
    problem = await api.call(
        "PUT", "/v1/rules/stats", headers, json=rule("stats", "true"), expect=422
    )
    assert problem["errors"][0]["field"] == "id"


async def held_alert(
    api: Http,
    screener: Client,
    analyst: Client,
    http: aiohttp.ClientSession,
    stand_in: str,
    name: str,
    *,
    hold: bool,
) -> dict[str, Any]:
    """A screening held in review by a rule of this run, and its open alert."""
    cus, acc = customer(name)
    rule_id = f"t{RUN}-{name}"
    await put_rule(
        api,
        analyst,
        rule_id,
        rule(rule_id, f'txn.customer_id == "{cus}"', action="review", mode="enforce"),
    )
    body = transaction(cus, acc)
    if hold:
        async with http.post(f"{stand_in}/admin/held", json=body) as held:
            assert held.status == 200
    assert (await screen(api, screener, body))["decision"] == "review"
    listed = await api.call(
        "GET", f"/v1/alerts?customer_id={cus}", await analyst.bearer("fraud:read"), expect=200
    )
    return dict(listed["data"][0])


async def test_a_review_outcome_is_retried_until_the_transaction_service_takes_it(
    api: Http, screener: Client, analyst: Client, http: aiohttp.ClientSession, stand_in: str
) -> None:
    alert = await held_alert(api, screener, analyst, http, stand_in, "retried", hold=True)
    admin = await analyst.bearer("fraud:admin")
    async with http.post(f"{stand_in}/admin/script", json={"down": True}) as down:
        assert down.status == 200
    try:
        await api.call(
            "POST",
            f"/v1/alerts/{alert['id']}/resolve",
            admin,
            json={"resolution": "true_positive"},
            expect=200,
        )

        async def refused() -> Any:
            shown = await api.call("GET", f"/v1/alerts/{alert['id']}", admin, expect=200)
            detail = shown["review_outcome"]["detail"] or ""
            return shown if "503" in detail else None

        waiting = await eventually(refused)
        assert waiting["review_outcome"]["state"] == "pending"
    finally:
        async with http.post(f"{stand_in}/admin/script", json={"down": False}) as up:
            assert up.status == 200

    async def taken() -> Any:
        shown = await api.call("GET", f"/v1/alerts/{alert['id']}", admin, expect=200)
        return shown if shown["review_outcome"]["state"] == "done" else None

    await eventually(taken, 30)
    async with http.get(f"{stand_in}/admin/outcomes") as response:
        outcomes = [o for o in await response.json() if o["key"] == alert["id"]]
    assert [o["body"]["outcome"] for o in outcomes][-1] == "fraud"


async def test_a_review_outcome_the_transaction_service_refuses_is_failed_not_retried(
    api: Http, screener: Client, analyst: Client, http: aiohttp.ClientSession, stand_in: str
) -> None:
    alert = await held_alert(api, screener, analyst, http, stand_in, "unknown", hold=False)
    admin = await analyst.bearer("fraud:admin")
    await api.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        admin,
        json={"resolution": "false_positive"},
        expect=200,
    )

    async def failed() -> Any:
        shown = await api.call("GET", f"/v1/alerts/{alert['id']}", admin, expect=200)
        return shown if shown["review_outcome"]["state"] == "failed" else None

    shown = await eventually(failed)
    assert shown["review_outcome"]["detail"].startswith("404")

"""The fraud part of `lastro demo`: rules, screening, the analyser and alerts, as the
fraud team and the payments service see them.

Through the fraud service's HTTPS API with real tokens from the identity service:
the fraud team reads the rule set and adds a shadow rule; Ana's card is tested with
a run of payments at merchants she never used; each payment is screened (the shadow
rule says what it would have done) and, once approved, posted, so the streaming
analyser keeps her profile current; a payment is held for review and its alert
waits for the fraud team; an analyst resolves it as fraud, which gives the shadow
rule its precision; the rule is promoted to enforce and declines the next payment,
the decision naming the new rule-set version. Then Bruno pays in Lisbon and, twenty
minutes later, in New York: the analyser raises impossible travel, a high-severity
alert, and the account service freezes his account.

The transaction service is not part of this build yet, so the demo plays its part
on the event side: for each approved payment it publishes the signed
``lastro.transaction.posted`` event that service's outbox would.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from lastro.core.config import Settings
from lastro.core.events import EventSigner, new_event
from lastro.core.security.transit import TransitClient
from lastro.demo import Api, DemoFailed, register_service
from lastro.fraud.store.profiles import ProfileStore

Say = Callable[[str], None]
SCREEN_ATTEMPTS = 5
LISBON = {"lat": 38.72, "lon": -9.14}
NEW_YORK = {"lat": 40.71, "lon": -74.01}


class _Transactions:
    """Plays the transaction service's part: screen, then publish ``posted``."""

    def __init__(
        self, fraud: Api, token: str, producer: AIOKafkaProducer, signer: EventSigner
    ) -> None:
        self._fraud = fraud
        self._token = token
        self._producer = producer
        self._signer = signer

    async def screen(self, payment: dict[str, Any]) -> dict[str, Any]:
        """Screen ``payment``; a 503 (the service could not decide in time) is asked
        again, as the transaction worker does: screening is idempotent."""
        for _ in range(SCREEN_ATTEMPTS):
            async with self._fraud.http.post(
                f"{self._fraud.base}/internal/v1/screenings",
                json=payment,
                headers={"Authorization": f"Bearer {self._token}"},
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    return dict(body)
                if response.status != 503:
                    raise DemoFailed(f"screening answered {response.status}: {body}")
                await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 2.0))
        raise DemoFailed(f"screening stayed unavailable: {body}")

    async def posted(self, payment: dict[str, Any]) -> None:
        event = new_event(
            "lastro.transaction.posted",
            "/transactions",
            {**payment, "status": "posted"},
            subject=payment["transaction_id"],
        )
        envelope = self._signer.sign(event.envelope())
        key = payment["source_account_id"].encode()
        await self._producer.send_and_wait(
            "lastro.transactions", json.dumps(envelope).encode(), key=key
        )


async def _until(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise DemoFailed(f"{what} did not happen within {seconds:.0f}s")


def _payment(customer: str, account: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "transaction_id": f"txn_demo_{secrets.token_hex(6)}",
        "type": "transfer",
        "currency": "EUR",
        "customer_id": customer,
        "source_account_id": account,
        "occurred_at": at.isoformat(),
        "device_id": f"dev_{customer}",
        "ip": "198.51.100.20",
        "country": "PT",
        **fields,
    }


def _rules(decision: dict[str, Any], key: str) -> str:
    return ", ".join(reason["rule_id"] for reason in decision[key]) or "none"


async def run_fraud_demo(
    settings: Settings,
    identity: Api,
    accounts: Api,
    admin: str,
    people: dict[str, dict[str, str]],
    say: Say,
) -> None:
    """The fraud walk-through (see the module docstring); ``people`` are the demo's
    customers: name → ``customer``, ``account`` and their user ``token``."""
    fraud = Api(identity.http, settings.service_url("fraud"))
    run = secrets.token_hex(3)
    _, analyst = await register_service(
        identity, admin, f"fraud-team-{run}", ["fraud:read", "fraud:admin"], "fraud"
    )
    _, screener = await register_service(
        identity, admin, f"payments-screening-{run}", ["fraud:screen"], "fraud"
    )
    ruleset = await fraud.call("GET", "/v1/rules", token=analyst, expect=200)
    modes = [rule["mode"] for rule in ruleset["rules"]]
    say(
        f"== Fraud: rule set {ruleset['ruleset_version']} in force:"
        f" {modes.count('enforce')} rules enforced, {modes.count('shadow')} in shadow"
    )
    rule_id = f"demo-{run}-new-payee-run"
    rule = {
        "description": "A fourth payment to a new payee within ten minutes",
        "expression": "features.count_10m >= 3 && features.new_counterparty",
        "action": "decline",
        "severity": "high",
        "mode": "shadow",
    }
    added = await fraud.call("PUT", f"/v1/rules/{rule_id}", token=analyst, expect=200, json=rule)
    say(f"== The fraud team adds {rule_id} in shadow: live in rule set {added['ruleset_version']}")

    transit = TransitClient.from_settings(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    redis = Redis.from_url(settings.redis_url)
    await producer.start()
    try:
        signer = await EventSigner.from_transit(transit, settings.events_key_name)
        payments = _Transactions(fraud, screener, producer, signer)
        profiles = ProfileStore(redis)
        await _card_testing(fraud, analyst, payments, profiles, people["ana"], rule_id, say)
        promoted = await fraud.call(
            "PUT",
            f"/v1/rules/{rule_id}",
            token=analyst,
            expect=200,
            json={**rule, "mode": "enforce"},
        )
        say(f"== The team promotes it to enforce: rule set {promoted['ruleset_version']}")
        ana = people["ana"]
        nxt = _payment(
            ana["customer"],
            ana["account"],
            datetime.now(UTC),
            amount=4_500,
            counterparty=f"iban_unknown_{run}",
        )
        decided = await payments.screen(nxt)
        say(
            f"   Ana's next payment to a new payee: {decided['decision']}"
            f" (rule set {decided['ruleset_version']}, reasons: {_rules(decided, 'reasons')})"
        )
        if (
            decided["decision"] != "decline"
            or decided["ruleset_version"] != promoted["ruleset_version"]
        ):
            raise DemoFailed(f"the promoted rule did not decide: {decided}")
        await _impossible_travel(fraud, analyst, accounts, payments, profiles, people["bruno"], say)
    finally:
        await producer.stop()
        await redis.aclose()
        await transit.close()
    await fraud.call("DELETE", f"/v1/rules/{rule_id}", token=analyst, expect=204)


async def _card_testing(
    fraud: Api,
    analyst: str,
    payments: _Transactions,
    profiles: ProfileStore,
    ana: dict[str, str],
    rule_id: str,
    say: Say,
) -> None:
    say("== Ana's card is tested: payments to merchants she never used, twenty seconds apart")
    start = datetime.now(UTC) - timedelta(minutes=3)
    for n in range(6):
        payment = _payment(
            ana["customer"],
            ana["account"],
            start + timedelta(seconds=20 * n),
            amount=2_100 + 37 * n,
            counterparty=f"mer_never_seen_{secrets.token_hex(3)}",
        )
        decided = await payments.screen(payment)
        shadow = [r["rule_id"] for r in decided["shadow"]]
        would = " (shadow: the new rule would decline it)" if rule_id in shadow else ""
        fired = "" if decided["decision"] == "approve" else f" by {_rules(decided, 'reasons')}"
        say(f"   payment {n + 1}: {decided['decision']}{fired}{would}")
        if decided["decision"] != "approve":
            break
        await payments.posted(payment)
        await _until(_outgoing(profiles, ana["customer"], n + 1), "the analyser's update")
    else:
        raise DemoFailed("no payment of the run was held")
    alert = await _until(
        lambda: _alert(fraud, analyst, ana["customer"], "screening_review"), "the review alert"
    )
    say(
        f"== The money is held; alert {alert['id']} ({alert['severity']}) waits for the fraud"
        f" team: score {alert['evidence']['score']}, rules {', '.join(alert['rule_ids'])}"
    )
    await fraud.call(
        "POST",
        f"/v1/alerts/{alert['id']}/resolve",
        token=analyst,
        expect=200,
        json={"resolution": "true_positive", "note": "Ana confirmed she made none of them"},
    )
    stats = await fraud.call("GET", "/v1/rules/stats", token=analyst, expect=200)
    (row,) = [r for r in stats["rules"] if r["rule_id"] == rule_id]
    say(
        "   resolved as fraud (the outcome goes to the transaction service, which releases"
        f" the held money); {rule_id}: {row['shadow_hits']} shadow hits,"
        f" precision {row['precision']} from resolved alerts"
    )


async def _impossible_travel(
    fraud: Api,
    analyst: str,
    accounts: Api,
    payments: _Transactions,
    profiles: ProfileStore,
    bruno: dict[str, str],
    say: Say,
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=25)
    home = _payment(
        bruno["customer"], bruno["account"], start, amount=1_800, location=LISBON, country="PT"
    )
    away = _payment(
        bruno["customer"],
        bruno["account"],
        start + timedelta(minutes=20),
        amount=2_600,
        location=NEW_YORK,
        country="US",
    )
    say("== Bruno pays in Lisbon, and twenty minutes later someone pays with his card in New York")
    await payments.posted(home)
    await _until(_outgoing(profiles, bruno["customer"], 1), "the analyser's update")
    await payments.posted(away)
    alert = await _until(
        lambda: _alert(fraud, analyst, bruno["customer"], "impossible_travel"),
        "the impossible-travel alert",
    )
    evidence = alert["evidence"]
    say(
        f"== {alert['id']}: {alert['typology']} ({alert['severity']}),"
        f" {evidence['distance_km']} km in {evidence['seconds']} s"
        f" ({evidence['speed_kmh']} km/h); the fraud service asks the account service to freeze"
    )
    frozen = await _until(
        lambda: _frozen(accounts, bruno), "the freeze of Bruno's account", seconds=30
    )
    say(f"   Bruno's account {frozen['id']} is now {frozen['status']}")


def _outgoing(profiles: ProfileStore, customer: str, count: int) -> Callable[[], Any]:
    """A check: the analyser has applied ``count`` payments to the customer's profile."""

    async def check() -> bool:
        profile = await profiles.customer(customer)
        return profile is not None and profile.outgoing.total >= count

    return check


async def _alert(fraud: Api, analyst: str, customer: str, typology: str) -> Any:
    listed = await fraud.call(
        "GET",
        f"/v1/alerts?customer_id={customer}&typology={typology}",
        token=analyst,
        expect=200,
    )
    return listed["data"][0] if listed["data"] else None


async def _frozen(accounts: Api, person: dict[str, str]) -> Any:
    account = await accounts.call(
        "GET", f"/v1/accounts/{person['account']}", token=person["token"], expect=200
    )
    return account if account["status"] == "frozen" else None

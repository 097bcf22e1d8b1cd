"""The money path of `lastro demo`, as its users see it.

Carla signs in to her wallet app and pays Café Lisboa from her euro account (a
transfer: accepted, screened by the fraud service, posted); a customer pays the café
by card (tokenised at the acquirer by the customer's phone, authorised, captured)
and gets part of it back (a refund); Carla moves euros to her new dollar account at
a quoted rate (a cross-currency transfer through the FX system accounts); then she
sends a large amount: the transaction service challenges it, asking for a second
factor (RFC 9470); she turns on TOTP, signs in again with a code and repeats the same
request (same Idempotency-Key), which now goes through. Every balance is checked at
the end (and ``lastro demo`` verifies the ledger and the audit chains after it).
"""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any

import aiohttp
import pyotp

from lastro.core.config import Settings
from lastro.demo import (
    REDIRECT_URI,
    Api,
    DemoFailed,
    _eur,
    _say,
    client_credentials,
    register_service,
    sign_in,
)

WALLET_SCOPES = "identity:self accounts:read accounts:write transfers:read transfers:write"
CAFE_SCOPES = ["accounts:read", "accounts:write", "payments:read", "payments:write"]


def _money(minor: int, currency: str) -> str:
    return _eur(minor) if currency == "EUR" else f"{currency} {minor / 100:,.2f}"


def _elapsed(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f} ms"


async def _post(
    api: Api, path: str, token: str, body: Any = None, *, key: str | None = None, expect: int
) -> dict[str, Any]:
    """A money POST: a fresh Idempotency-Key unless given, answer within 10 s if possible."""
    headers = {"Idempotency-Key": key or str(uuid.uuid4()), "Prefer": "wait=10"}
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    return await api.call("POST", path, token=token, expect=expect, **kwargs)


async def money_demo(settings: Settings, http: aiohttp.ClientSession, admin: str, run: str) -> None:
    identity = Api(http, settings.service_url("identity"))
    accounts = Api(http, settings.service_url("accounts"))
    transactions = Api(http, settings.service_url("transactions"))
    acquirer = Api(http, settings.service_url("acquirer"))

    _say("== Operator: register the wallet's money features and Café Lisboa's till")
    wallet = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"money-wallet-{run}",
            "confidential": False,
            "grant_types": ["authorization_code"],
            "scopes": WALLET_SCOPES.split(),
            "audiences": ["identity", "accounts", "transactions"],
            "redirect_uris": [REDIRECT_URI],
        },
    )
    till = await identity.call(
        "POST",
        "/v1/clients",
        token=admin,
        expect=201,
        json={
            "name": f"cafe-lisboa-{run}",
            "grant_types": ["client_credentials"],
            "scopes": CAFE_SCOPES,
            "audiences": ["accounts", "transactions"],
        },
    )
    _, funder = await register_service(
        identity, admin, f"topups-{run}", ["ledger:write"], "accounts"
    )
    cafe = await client_credentials(
        identity, till["client_id"], till["client_secret"], " ".join(CAFE_SCOPES),
        "accounts transactions",
    )  # fmt: skip
    cafe_customer = await accounts.call(
        "POST", "/v1/customers", token=cafe, expect=201,
        json={"name": "Café Lisboa", "email": f"cafe-{run}@example.com",
              "document_number": f"PT{run}"},
    )  # fmt: skip
    cafe_account = await accounts.call(
        "POST", "/v1/accounts", token=cafe, expect=201,
        json={"customer_id": cafe_customer["id"], "currency": "EUR"},
    )  # fmt: skip

    username, password = f"carla-{run}", secrets.token_urlsafe(16)
    await identity.call(
        "POST", "/v1/users", expect=201, json={"username": username, "password": password}
    )
    carla = await sign_in(identity, wallet["client_id"], username, password, scope=WALLET_SCOPES)
    customer = await accounts.call(
        "POST", "/v1/customers", token=carla, expect=201,
        json={"name": "Carla Dias", "email": f"{username}@example.com", "document_number": run},
    )  # fmt: skip
    account = await accounts.call(
        "POST", "/v1/accounts", token=carla, expect=201,
        json={"customer_id": customer["id"], "currency": "EUR"},
    )  # fmt: skip
    settlement = await accounts.call(
        "POST", "/internal/v1/accounts", token=funder, expect=201,
        json={"currency": "EUR", "purpose": "settlement"},
    )  # fmt: skip
    leg = {"amount": 300_000, "currency": "EUR"}
    await accounts.call(
        "POST", "/internal/v1/postings", token=funder, expect=201,
        json={"external_id": f"topup-{run}", "entries": [
            {"account_id": settlement["id"], "direction": "debit", **leg},
            {"account_id": account["id"], "direction": "credit", **leg},
        ]},
    )  # fmt: skip
    _say(f"== Carla signs in to her wallet; her account {account['id']} holds {_eur(300_000)}")

    _say(f"== Carla pays Café Lisboa {_eur(4_200)} from her wallet")
    started = time.perf_counter()
    paid = await _post(
        transactions, "/v1/transfers", carla, expect=201,
        body={"source_account_id": account["id"], "destination_account_id": cafe_account["id"],
              "amount": 4_200, "currency": "EUR", "description": "Lunch"},
    )  # fmt: skip
    screening = paid["screening"]
    _say(
        f"   {paid['id']}: {paid['status']} in {_elapsed(started)} "
        f"(screening: {screening['decision']}"
        f"{', fallback: the fraud service did not answer' if screening['fallback'] else ''})"
    )

    _say(f"== A customer's phone tokenises a card; the café charges it {_eur(1_850)}")
    card = await acquirer.call(
        "POST", "/v1/tokens", token=settings.partner_api_keys["acquirer"], expect=201,
        json={"number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"},
    )  # fmt: skip
    payment = await _post(
        transactions, "/v1/payments", cafe, expect=201,
        body={"destination_account_id": cafe_account["id"], "amount": 1_850, "currency": "EUR",
              "card": {"token": card["token"]}, "description": "Pastéis de nata"},
    )  # fmt: skip
    _say(
        f"   {payment['id']}: {payment['status']}, {payment['card']['brand']} "
        f"•••• {payment['card']['last4']}, captured {_eur(payment['captured_amount'])}"
    )
    refund = await _post(
        transactions, f"/v1/payments/{payment['id']}/refunds", cafe, expect=201,
        body={"amount": 350, "reason": "requested_by_customer"},
    )  # fmt: skip
    _say(f"   a pastry was missing: refund of {_eur(refund['amount'])} {refund['status']}")

    _say(f"== Carla opens a dollar account and moves {_eur(5_000)} into it at a quoted rate")
    dollars = await accounts.call(
        "POST", "/v1/accounts", token=carla, expect=201,
        json={"customer_id": customer["id"], "currency": "USD"},
    )  # fmt: skip
    quote = await transactions.call(
        "POST", "/v1/fx/quotes", token=carla, expect=201,
        json={"sell_currency": "EUR", "buy_currency": "USD", "sell_amount": 5_000},
    )  # fmt: skip
    _say(
        f"   quote {quote['id']}: rate {quote['rate']} (provider {quote['provider_rate']}, "
        f"spread {quote['spread_bps']} bps), {_eur(5_000)} buys US${quote['buy_amount'] / 100:.2f}"
    )
    converted = await _post(
        transactions, "/v1/transfers", carla, expect=201,
        body={"source_account_id": account["id"], "destination_account_id": dollars["id"],
              "amount": 5_000, "currency": "EUR", "quote_id": quote["id"],
              "description": "Dollars for the trip"},
    )  # fmt: skip
    _say(
        f"   {converted['id']}: {converted['status']}, "
        f"US${converted['fx']['destination_amount'] / 100:.2f} arrived"
    )

    _say(f"== Carla sends {_eur(250_000)} to the café: a large amount")
    key = str(uuid.uuid4())
    large = {
        "source_account_id": account["id"],
        "destination_account_id": cafe_account["id"],
        "amount": 250_000,
        "currency": "EUR",
        "description": "Catering for the wedding",
    }
    challenge = await _post(transactions, "/v1/transfers", carla, large, key=key, expect=401)
    _say(
        f"   refused with {challenge['status']} {challenge['title']}: asks for "
        f"acr_values={challenge['acr_values']} within max_age={challenge['max_age']} s"
    )
    enrolment = await identity.call("POST", "/v1/users/me/totp", token=carla, expect=201)
    totp = pyotp.TOTP(enrolment["secret"])
    await identity.call(
        "POST", "/v1/users/me/totp/confirm", token=carla, expect=200, json={"code": totp.now()}
    )
    stepped_up = await sign_in(
        identity, wallet["client_id"], username, password, scope=WALLET_SCOPES,
        otp=totp.at(time.time() + 30),
    )  # fmt: skip
    _say("   Carla turns on two-factor sign-in and signs in again with a one-time code")
    sent = await _post(transactions, "/v1/transfers", stepped_up, large, key=key, expect=201)
    if sent["status"] != "posted":
        raise DemoFailed(f"the stepped-up transfer ended {sent['status']}: {sent}")
    _say(f"   the same request (same Idempotency-Key) goes through: {sent['id']} {sent['status']}")

    history = await transactions.call("GET", "/v1/transactions", token=stepped_up, expect=200)
    for item in history["data"]:
        when, kind, status = item["created_at"][:19], item["type"], item["status"]
        _say(f"   {when} {kind:<12} {status:<8} {_eur(item['amount'])}")
    expected = {
        ("Café Lisboa", cafe_account["id"], cafe): 4_200 + 1_850 - 350 + 250_000,
        ("Carla (EUR)", account["id"], stepped_up): 300_000 - 4_200 - 5_000 - 250_000,
        ("Carla (USD)", dollars["id"], stepped_up): quote["buy_amount"],
    }
    for (who, account_id, token), amount in expected.items():
        balance = await accounts.call(
            "GET", f"/v1/accounts/{account_id}/balance", token=token, expect=200
        )
        _say(f"== {who}'s balance: posted {_money(balance['posted'], balance['currency'])}")
        if (balance["posted"], balance["pending"]) != (amount, 0):
            raise DemoFailed(f"{who}'s balance is {balance}, expected {amount} posted")

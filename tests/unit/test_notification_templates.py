"""Messages: every kind in both locales, money by currency, masked accounts, escaping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from lastro.core.money import InvalidAmount
from lastro.notifications.domain.kinds import SPECS, Kind
from lastro.notifications.domain.templates import (
    TEMPLATES,
    format_amount,
    mask_account,
    render_email,
    render_sms,
    webhook_payload,
)

AT = datetime(2026, 11, 30, 13, 5, tzinfo=UTC)
ACCOUNT = "acc_01JD5Q8Z6M4V3W2X1Y0ZABCDEF"
FACTS: dict[str, Any] = {
    "transaction_id": "txn_01JD5Q8Z6M4V3W2X1Y0Z123456",
    "type": "transfer",
    "amount": 125000,
    "currency": "BRL",
    "customer_id": "cus_1",
    "source_account_id": ACCOUNT,
    "reason": "insufficient_funds",
    "alert_id": "alr_1",
    "typology": "velocity",
    "account_id": ACCOUNT,
    "user_id": "usr_1",
    "device_id": "dev_1",
    "user_agent": "Firefox on Linux",
    "ip": "203.0.113.7",
    "endpoint_id": "whe_1",
    "url": "https://hooks.example.com/lastro",
    "failures": 30,
}


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "shown"),
    [
        (125000, "BRL", "pt-BR", "R$\xa01.250,00"),
        (125000, "EUR", "en", "€1,250.00"),
        (5, "JPY", "en", "¥5"),
        (1250, "BHD", "en", "BHD1.250"),
        (7, "USD", "pt-BR", "US$\xa00,07"),
    ],
)
def test_amounts_are_shown_with_the_currencys_decimals_in_the_locales_style(
    amount: int, currency: str, locale: str, shown: str
) -> None:
    assert format_amount(amount, currency, locale) == shown


def test_a_float_amount_is_refused_not_rounded() -> None:
    with pytest.raises(InvalidAmount):
        format_amount(12.5, "USD", "en")  # type: ignore[arg-type]


def test_masking() -> None:
    assert mask_account(ACCOUNT) == "••••CDEF"
    assert mask_account(None) == "••••"


@pytest.mark.parametrize("kind", [k for k in Kind if k in TEMPLATES])
@pytest.mark.parametrize("locale", ["en", "pt-BR"])
def test_every_kind_renders_in_both_locales_without_the_full_account_number(
    kind: Kind, locale: str
) -> None:
    mail = render_email(kind, locale, FACTS, AT, "America/Sao_Paulo")
    sms = render_sms(kind, locale, FACTS, AT, "America/Sao_Paulo")
    for text in (mail.subject, mail.text, mail.html, sms):
        assert ACCOUNT not in text
        assert "{" not in text.replace("{id}", "")  # every placeholder was filled
    assert mail.html.startswith("<!doctype html>") and f'lang="{locale}"' in mail.html


def test_every_kind_a_customer_or_owner_is_told_has_templates() -> None:
    told = {k for k, spec in SPECS.items() if spec.customer or spec.default_channels}
    assert told == set(TEMPLATES)
    assert all(set(TEMPLATES[k]) == {"en", "pt-BR"} for k in TEMPLATES)


def test_a_transfer_email_in_portuguese() -> None:
    mail = render_email(Kind.TRANSACTION_SUCCEEDED, "pt-BR", FACTS, AT, "America/Sao_Paulo")
    assert mail.subject == "Transação concluída: R$\xa01.250,00"
    assert "transferência de R$\xa01.250,00 da conta ••••CDEF em 30 nov. 2026, 10:05" in mail.text
    declined = render_sms(Kind.TRANSACTION_DECLINED, "en", FACTS, AT, "UTC")
    assert (
        declined
        == "Lastro: transfer of R$1,250.00 from account ••••CDEF declined (insufficient funds)."
    )


def test_values_are_escaped_in_html_but_not_in_text() -> None:
    hostile = {**FACTS, "typology": "<script>alert(1)</script>"}
    mail = render_email(Kind.FRAUD_ALERT_RAISED, "en", hostile, AT, "UTC")
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html
    assert "<script>alert(1)</script>" in mail.text


def test_webhooks_carry_ids_and_amounts_but_never_what_only_the_customer_sees() -> None:
    body = webhook_payload(Kind.LOGIN_NEW_DEVICE, "evt_1", AT, FACTS)
    assert body["type"] == "identity.login_new_device"
    assert body["timestamp"] == AT.isoformat()
    assert body["data"]["event_id"] == "evt_1"
    assert "ip" not in body["data"] and "user_agent" not in body["data"]
    assert body["data"]["amount"] == 125000

"""Notification routing: channels per kind, quiet hours, urgency, reachability."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from lastro.notifications.domain.errors import InvalidPreferences
from lastro.notifications.domain.kinds import SPECS, Channel, Kind
from lastro.notifications.domain.preferences import (
    Contact,
    Preferences,
    QuietHours,
    customer_messages,
    e164,
    is_stale,
    parse_preferences,
    preferences_fields,
)

NOW = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)  # 23:30 the day before in São Paulo (UTC-3)
BOTH = Contact("cus_1", "usr_1", "ana@example.com", "+5511912345678")
NIGHT = QuietHours(time(22, 0), time(7, 0))


def prefs(**kwargs: object) -> Preferences:
    return Preferences("cus_1", **kwargs)  # type: ignore[arg-type]


def test_quiet_hours_span_midnight() -> None:
    assert (
        NIGHT.contains(time(23, 0)) and NIGHT.contains(time(0, 0)) and NIGHT.contains(time(6, 59))
    )
    assert not NIGHT.contains(time(7, 0)) and not NIGHT.contains(time(21, 59))
    day = QuietHours(time(12, 0), time(14, 0))
    assert day.contains(time(12, 0)) and not day.contains(time(14, 0))


def test_a_non_urgent_message_waits_for_the_end_of_the_quiet_hours_in_the_customers_zone() -> None:
    p = prefs(timezone="America/Sao_Paulo", quiet_hours=NIGHT)
    messages = customer_messages(Kind.TRANSACTION_SUCCEEDED, p, BOTH, NOW)
    # 07:00 in São Paulo the next morning is 10:00 UTC
    assert [(m.channel, m.not_before) for m in messages] == [
        (Channel.EMAIL, datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
        (Channel.SMS, datetime(2026, 11, 30, 10, 0, tzinfo=UTC)),
    ]


def test_outside_the_quiet_hours_messages_are_due_now() -> None:
    p = prefs(timezone="America/Sao_Paulo", quiet_hours=NIGHT)
    noon = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert {m.not_before for m in customer_messages(Kind.PAYOUT_SENT, p, BOTH, noon)} == {noon}


@pytest.mark.parametrize(
    "kind",
    [Kind.FRAUD_ALERT_RAISED, Kind.LOGIN_NEW_DEVICE, Kind.TOTP_DISABLED, Kind.ACCOUNT_FROZEN],
)
def test_security_and_fraud_alerts_ignore_quiet_hours_and_cannot_be_switched_off(
    kind: Kind,
) -> None:
    p = prefs(timezone="America/Sao_Paulo", quiet_hours=NIGHT, channels={kind: frozenset()})
    messages = customer_messages(kind, p, BOTH, NOW)
    assert {m.channel for m in messages} == {Channel.EMAIL, Channel.SMS}
    assert all(m.not_before == NOW for m in messages)


def test_a_customer_may_switch_off_non_urgent_kinds_or_pick_one_channel() -> None:
    p = prefs(
        channels={
            Kind.TRANSACTION_SUCCEEDED: frozenset(),
            Kind.TRANSACTION_DECLINED: frozenset({Channel.SMS}),
        }
    )
    assert customer_messages(Kind.TRANSACTION_SUCCEEDED, p, BOTH, NOW) == []
    assert [m.channel for m in customer_messages(Kind.TRANSACTION_DECLINED, p, BOTH, NOW)] == [
        Channel.SMS
    ]


def test_only_channels_with_an_address_are_used() -> None:
    no_phone = Contact("cus_1", "usr_1", "ana@example.com", None)
    messages = customer_messages(Kind.TRANSACTION_FAILED, prefs(), no_phone, NOW)
    assert [m.channel for m in messages] == [Channel.EMAIL]


def test_kinds_only_the_service_sends_reach_no_customer() -> None:
    for kind in (Kind.WEBHOOK_TEST, Kind.ENDPOINT_DISABLED):
        assert not SPECS[kind].customer
        assert customer_messages(kind, prefs(), BOTH, NOW) == []


def test_staleness() -> None:
    assert is_stale(NOW - timedelta(days=2), NOW, timedelta(days=1))
    assert not is_stale(NOW - timedelta(hours=23), NOW, timedelta(days=1))


def test_e164() -> None:
    assert e164("+55 (11) 91234-5678") == "+5511912345678"
    assert e164("11 91234-5678") is None  # no country code: never guessed
    assert e164("+1 23") is None
    assert e164(None) is None


def test_preferences_round_trip_through_their_json_shape() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    body = {
        "locale": "pt-BR",
        "timezone": "America/Sao_Paulo",
        "quiet_hours": {"start": "22:00", "end": "07:30"},
        "channels": {"transaction.succeeded": ["email"], "payout.sent": []},
        "marketing_consent": True,
    }
    parsed = parse_preferences("cus_1", body, now)
    assert parsed.quiet_hours == QuietHours(time(22, 0), time(7, 30))
    fields = preferences_fields(parsed)
    assert fields["channels"] == {"payout.sent": [], "transaction.succeeded": ["email"]}
    assert {k: fields[k] for k in body} == body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"locale": "fr"}, "locale"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "07:00", "end": "07:00"}}, "quiet_hours"),
        ({"channels": {"webhook.test": ["email"]}}, "channels.webhook.test"),
        ({"channels": {"payout.sent": ["pigeon"]}}, "channels.payout.sent"),
        ({"marketing_consent": "yes"}, "marketing_consent"),
    ],
)
def test_bad_preferences_name_the_field(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidPreferences) as refused:
        parse_preferences("cus_1", body, NOW)
    assert refused.value.field == field

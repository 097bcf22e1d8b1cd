"""Events this service consumes and publishes.

Consumes (CloudEvents, signed, through ``core.events.EventConsumer`` and its inbox)
    ``lastro.transactions``: ``lastro.transaction.posted`` (told as
    ``transaction.succeeded``), ``.declined``, ``.failed``, ``.refunded``,
    ``lastro.payout.sent``; ``lastro.fraud``: ``lastro.fraud.alert_raised``;
    ``lastro.accounts``: ``lastro.account.frozen``, and ``lastro.customer.created``
    for the customer's owner (the user or client who may set their preferences and
    receives their events by webhook); ``lastro.identity``:
    ``lastro.identity.login_new_device``, ``.totp_enabled``, ``.totp_disabled``;
    ``lastro.marketing``: ``lastro.marketing.offer_published`` (``customer_id``,
    ``offer_id``, ``offer_title``: told only to customers with marketing consent).
    Every other type on those topics is recorded in the inbox and ignored.

Publishes (outbox, topic ``lastro.notifications`` unless said)
    ``lastro.webhook_endpoint.created|updated|deleted|secret_rotated|disabled``,
    ``lastro.preferences.updated``, ``lastro.notification.replayed``, and
    ``lastro.notification.dead_lettered`` on ``lastro.deadletter``; ids only.

:func:`parse` turns an event into what the service records: an
:class:`~lastro.notifications.domain.kinds.Occurrence` (facts validated here, so
a malformed event is rejected as a whole, counted and skipped, never half-applied)
or an :class:`OwnerLearned`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from lastro.core.db import Tx
from lastro.core.events import Apply, CloudEvent
from lastro.core.money import Currency, UnknownCurrency
from lastro.notifications.domain.kinds import Kind, Occurrence

TOPIC: Final = "lastro.notifications"
DEADLETTER_TOPIC: Final = "lastro.deadletter"
CONSUMED_TOPICS: Final = (
    "lastro.transactions",
    "lastro.fraud",
    "lastro.accounts",
    "lastro.identity",
    "lastro.marketing",
)

CUSTOMER_CREATED: Final = "lastro.customer.created"
DEAD_LETTERED: Final = "lastro.notification.dead_lettered"
REPLAYED: Final = "lastro.notification.replayed"
PREFERENCES_UPDATED: Final = "lastro.preferences.updated"
ENDPOINT_EVENT: Final = "lastro.webhook_endpoint.{fact}"

KINDS: Final[Mapping[str, Kind]] = {
    "lastro.transaction.posted": Kind.TRANSACTION_SUCCEEDED,
    "lastro.transaction.declined": Kind.TRANSACTION_DECLINED,
    "lastro.transaction.failed": Kind.TRANSACTION_FAILED,
    "lastro.transaction.refunded": Kind.TRANSACTION_REFUNDED,
    "lastro.payout.sent": Kind.PAYOUT_SENT,
    "lastro.fraud.alert_raised": Kind.FRAUD_ALERT_RAISED,
    "lastro.account.frozen": Kind.ACCOUNT_FROZEN,
    "lastro.identity.login_new_device": Kind.LOGIN_NEW_DEVICE,
    "lastro.identity.totp_enabled": Kind.TOTP_ENABLED,
    "lastro.identity.totp_disabled": Kind.TOTP_DISABLED,
    "lastro.marketing.offer_published": Kind.MARKETING_OFFER,
}

_TRANSACTION_KINDS: Final = frozenset(
    {
        Kind.TRANSACTION_SUCCEEDED,
        Kind.TRANSACTION_DECLINED,
        Kind.TRANSACTION_FAILED,
        Kind.TRANSACTION_REFUNDED,
        Kind.PAYOUT_SENT,
    }
)
_IDENTITY_KINDS: Final = frozenset({Kind.LOGIN_NEW_DEVICE, Kind.TOTP_ENABLED, Kind.TOTP_DISABLED})
# Kinds whose ``customer_id`` is null, per docs/interfaces.md, when no customer is
# involved: a deposit (an acquirer settlement moving money between the bank's own
# accounts) and a system account frozen. Nobody is told; an absent, empty or
# non-string ``customer_id`` is still malformed.
_ABOUT_NO_CUSTOMER_WHEN_NULL: Final = _TRANSACTION_KINDS | {Kind.ACCOUNT_FROZEN}
MAX_TEXT: Final = 200


class MalformedEvent(ValueError):
    """A consumed event of a known type lacks a field or carries a wrong one."""


@dataclass(frozen=True)
class OwnerLearned:
    """``lastro.customer.created``: ``owner`` (a user or client id) owns the customer."""

    customer_id: str
    owner: str


def _text(data: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise MalformedEvent(f"{name} must be a non-empty string")
    return value


def _moment(value: Any, fallback: str) -> datetime:
    for candidate in (value, fallback):
        if isinstance(candidate, str):
            try:
                moment = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is not None:
                return moment.astimezone(UTC)
    return datetime.now(UTC)


def _transaction_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    amount = data.get("amount")
    if type(amount) is not int or amount < 0:
        raise MalformedEvent("amount must be a non-negative integer of minor units")
    currency = _text(data, "currency")
    try:
        Currency.of(currency or "")
    except UnknownCurrency:
        raise MalformedEvent(f"unknown currency {currency!r}") from None
    facts: dict[str, Any] = {"amount": amount, "currency": currency}
    for name in ("transaction_id", "type", "customer_id"):
        facts[name] = _text(data, name)
    for name in (
        "status",
        "source_account_id",
        "destination_account_id",
        "counterparty_customer_id",
        "reason",
    ):
        value = _text(data, name, required=False)
        if value is not None:
            facts[name] = value
    return facts


def _fraud_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "alert_id": _text(data, "alert_id"),
        "customer_id": _text(data, "customer_id"),
    }
    for name in ("typology", "severity", "account_id", "transaction_id"):
        value = _text(data, name, required=False)
        if value is not None:
            facts[name] = value
    rule_ids = data.get("rule_ids", [])
    if not isinstance(rule_ids, list) or not all(isinstance(r, str) for r in rule_ids):
        raise MalformedEvent("rule_ids must be a list of strings")
    facts["rule_ids"] = rule_ids[:50]
    return facts


def _frozen_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "account_id": _text(data, "account_id"),
        "customer_id": _text(data, "customer_id"),
    }
    reason = _text(data, "reason", required=False)
    if reason is not None:
        facts["reason"] = reason
    return facts


def _offer_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "customer_id": _text(data, "customer_id"),
        "offer_id": _text(data, "offer_id"),
        "offer_title": _text(data, "offer_title"),
    }


def _identity_facts(data: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {"user_id": _text(data, "user_id")}
    device = data.get("device")
    if device is not None:
        if not isinstance(device, dict):
            raise MalformedEvent("device must be an object")
        device_id = _text(device, "id", required=False)
        agent = _text(device, "user_agent", required=False)
        if device_id is not None:
            facts["device_id"] = device_id
        facts["user_agent"] = agent or "unknown device"
    ip = _text(data, "ip", required=False)
    if ip is not None:
        facts["ip"] = ip
    return facts


def handles(event_type: str) -> bool:
    """Whether :func:`parse` can mean anything for an event of this type; the consumer
    skips the others (most transaction facts: only final ones notify) before its inbox."""
    return event_type == CUSTOMER_CREATED or event_type in KINDS


def parse(event: CloudEvent) -> Occurrence | OwnerLearned | None:
    """What ``event`` means here, or None for a type this service ignores or an event
    that concerns no customer; raises MalformedEvent for a known type with bad data."""
    data = event.data
    if event.type == CUSTOMER_CREATED:
        owner = _text(data, "owner", required=False)
        customer_id = _text(data, "customer_id")
        return None if owner is None or customer_id is None else OwnerLearned(customer_id, owner)
    kind = KINDS.get(event.type)
    if kind is None:
        return None
    if (
        kind in _ABOUT_NO_CUSTOMER_WHEN_NULL
        and "customer_id" in data
        and data["customer_id"] is None
    ):
        return None  # the bank's own money: a deposit of a settlement, a system account
    if kind in _TRANSACTION_KINDS:
        facts = _transaction_facts(data)
    elif kind is Kind.FRAUD_ALERT_RAISED:
        facts = _fraud_facts(data)
    elif kind is Kind.ACCOUNT_FROZEN:
        facts = _frozen_facts(data)
    elif kind is Kind.MARKETING_OFFER:
        facts = _offer_facts(data)
    else:
        facts = _identity_facts(data)
    occurred_at = _moment(data.get("occurred_at", data.get("at")), event.time)
    if kind in _IDENTITY_KINDS:
        return Occurrence(event.id, kind, occurred_at, facts, user_id=facts["user_id"])
    return Occurrence(event.id, kind, occurred_at, facts, customer_ids=(facts["customer_id"],))


class EventSink(Protocol):
    """Where parsed events go, inside the consumer's inbox transaction."""

    async def record_occurrence(self, tx: Tx, occurrence: Occurrence) -> None: ...
    async def record_owner(self, tx: Tx, learned: OwnerLearned) -> None: ...
    def rejected(self, event: CloudEvent, error: MalformedEvent) -> None: ...


def apply_to(sink: EventSink) -> Apply:
    """The consumer's apply function: parse, then record in the inbox transaction; a
    malformed event is reported to ``sink`` and skipped (its id stays in the inbox)."""

    async def apply(tx: Tx, event: CloudEvent) -> None:
        try:
            parsed = parse(event)
        except MalformedEvent as error:
            sink.rejected(event, error)
            return
        if isinstance(parsed, Occurrence):
            await sink.record_occurrence(tx, parsed)
        elif isinstance(parsed, OwnerLearned):
            await sink.record_owner(tx, parsed)

    return apply

"""What the service notifies about: kinds of notification, channels and occurrences.

A *kind* is a fact a person or merchant is told about (``transaction.succeeded``);
events of the other services map to kinds in ``notifications/events.py``. Each kind
says whether it is urgent (security and fraud: quiet hours never delay it and it
cannot be switched off), which customer channels it uses by default, and whether
merchants may subscribe to it by webhook.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"
    SMS = "sms"


CUSTOMER_CHANNELS: Final = frozenset({Channel.EMAIL, Channel.SMS})


class Kind(StrEnum):
    TRANSACTION_SUCCEEDED = "transaction.succeeded"
    TRANSACTION_DECLINED = "transaction.declined"
    TRANSACTION_FAILED = "transaction.failed"
    TRANSACTION_REFUNDED = "transaction.refunded"
    PAYOUT_SENT = "payout.sent"
    FRAUD_ALERT_RAISED = "fraud.alert_raised"
    ACCOUNT_FROZEN = "account.frozen"
    LOGIN_NEW_DEVICE = "identity.login_new_device"
    TOTP_ENABLED = "identity.totp_enabled"
    TOTP_DISABLED = "identity.totp_disabled"
    WEBHOOK_TEST = "webhook.test"
    ENDPOINT_DISABLED = "webhook_endpoint.disabled"


@dataclass(frozen=True)
class KindSpec:
    """``urgent``: sent at once, whatever the quiet hours, and never switched off;
    ``customer``: told to the customer (e-mail/SMS), by ``default_channels`` unless
    their preferences say otherwise; ``webhook``: merchants may subscribe to it."""

    urgent: bool
    customer: bool
    webhook: bool
    default_channels: frozenset[Channel] = field(default_factory=frozenset)


_BOTH: Final = frozenset({Channel.EMAIL, Channel.SMS})

SPECS: Final[Mapping[Kind, KindSpec]] = {
    Kind.TRANSACTION_SUCCEEDED: KindSpec(False, True, True, _BOTH),
    Kind.TRANSACTION_DECLINED: KindSpec(False, True, True, _BOTH),
    Kind.TRANSACTION_FAILED: KindSpec(False, True, True, _BOTH),
    Kind.TRANSACTION_REFUNDED: KindSpec(False, True, True, _BOTH),
    Kind.PAYOUT_SENT: KindSpec(False, True, True, _BOTH),
    Kind.FRAUD_ALERT_RAISED: KindSpec(True, True, True, _BOTH),
    Kind.ACCOUNT_FROZEN: KindSpec(True, True, True, _BOTH),
    Kind.LOGIN_NEW_DEVICE: KindSpec(True, True, True, _BOTH),
    Kind.TOTP_ENABLED: KindSpec(True, True, True, _BOTH),
    Kind.TOTP_DISABLED: KindSpec(True, True, True, _BOTH),
    # Sent on request to one endpoint only, never by subscription.
    Kind.WEBHOOK_TEST: KindSpec(True, False, False),
    # The notice to an endpoint's owner: e-mail to the address they registered.
    Kind.ENDPOINT_DISABLED: KindSpec(True, False, False, frozenset({Channel.EMAIL})),
}

SUBSCRIBABLE: Final = frozenset(kind for kind, spec in SPECS.items() if spec.webhook)
CUSTOMER_KINDS: Final = frozenset(kind for kind, spec in SPECS.items() if spec.customer)


@dataclass(frozen=True)
class Occurrence:
    """One event of another service as this one sees it: who it concerns and the
    facts the messages need (validated by ``notifications/events.py``; never contact
    details, which are looked up at delivery planning time).

    ``customer_ids`` are the customers told about it; ``user_id`` (identity events)
    is the user whose customers are told.
    """

    event_id: str
    kind: Kind
    occurred_at: datetime
    facts: Mapping[str, Any]
    customer_ids: tuple[str, ...] = ()
    user_id: str | None = None

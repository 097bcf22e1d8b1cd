"""What the service notifies about: kinds of notification, channels and occurrences.

A *kind* is a fact a person or merchant is told about (``transaction.succeeded``);
events of the other services map to kinds in ``notifications/events.py``. Each kind
says whether it is urgent (security and fraud: quiet hours never delay it and it
cannot be switched off), which customer channels it uses by default, whether
merchants may subscribe to it by webhook, and whether it is marketing: sent only to
customers who gave their marketing consent (transactional and security messages are
not marketing and never wait for consent).
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
    MARKETING_OFFER = "marketing.offer"


@dataclass(frozen=True)
class KindSpec:
    """``urgent``: sent at once, whatever the quiet hours, and never switched off;
    ``customer``: told to the customer (e-mail/SMS), by ``default_channels`` unless
    their preferences say otherwise; ``webhook``: merchants may subscribe to it;
    ``marketing``: only for customers whose preferences record marketing consent."""

    urgent: bool
    customer: bool
    webhook: bool
    default_channels: frozenset[Channel] = field(default_factory=frozenset)
    marketing: bool = False


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
    # A campaign's offer: e-mail only by default, never urgent, consent required.
    Kind.MARKETING_OFFER: KindSpec(False, True, False, frozenset({Channel.EMAIL}), marketing=True),
}

SUBSCRIBABLE: Final = frozenset(kind for kind, spec in SPECS.items() if spec.webhook)
CUSTOMER_KINDS: Final = frozenset(kind for kind, spec in SPECS.items() if spec.customer)


@dataclass(frozen=True)
class Occurrence:
    """One event of another service as this one sees it: who it concerns and the
    facts the messages need (validated by ``notifications/events.py``; never contact
    details, which are looked up at delivery planning time).

    ``customer_ids`` are the customers told about it; ``user_id`` (identity events)
    is the user whose customers are told; ``traceparent`` the trace it belongs to.
    """

    event_id: str
    kind: Kind
    occurred_at: datetime
    facts: Mapping[str, Any]
    customer_ids: tuple[str, ...] = ()
    user_id: str | None = None
    traceparent: str | None = None

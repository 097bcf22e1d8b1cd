"""What the account service publishes: event types, topics and payloads.

Every event is a signed CloudEvent written to the outbox in the transaction of the
change it reports (``core/changes.py``), keyed by the account (or customer) it is
about, so consumers see one aggregate's events in order. Payloads carry ids,
amounts and field names, never personal data. The service consumes nothing.

Audit actions mirror the events: ``<resource>.<past participle>`` (``account.opened``,
``posting.created``, ``hold.voided``, ``customer.erased``).
"""

from __future__ import annotations

from typing import Any, Final

from lastro.accounts.domain import (
    Account,
    AccountState,
    Customer,
    Direction,
    Entry,
    EntryRequest,
    Hold,
    Posting,
    PostingId,
)

SOURCE: Final = "/accounts"
LEDGER_TOPIC: Final = "lastro.ledger"
ACCOUNTS_TOPIC: Final = "lastro.accounts"

POSTING_CREATED: Final = "lastro.ledger.posting_created"
HOLD_PLACED: Final = "lastro.ledger.hold_placed"
HOLD_POSTED: Final = "lastro.ledger.hold_posted"
HOLD_VOIDED: Final = "lastro.ledger.hold_voided"
HOLD_EXPIRED: Final = "lastro.ledger.hold_expired"
HOLD_CHANGED: Final = {
    "placed": HOLD_PLACED,
    "posted": HOLD_POSTED,
    "voided": HOLD_VOIDED,
    "expired": HOLD_EXPIRED,
}
ACCOUNT_OPENED: Final = "lastro.account.opened"
ACCOUNT_FROZEN: Final = "lastro.account.frozen"
ACCOUNT_UNFROZEN: Final = "lastro.account.unfrozen"
ACCOUNT_CLOSED: Final = "lastro.account.closed"
CUSTOMER_CREATED: Final = "lastro.customer.created"
CUSTOMER_UPDATED: Final = "lastro.customer.updated"
CUSTOMER_ERASED: Final = "lastro.customer.erased"


def entry_fields(entry: EntryRequest | Entry) -> dict[str, Any]:
    """One leg as events and API resources show it."""
    return {
        "account_id": entry.account_id,
        "direction": entry.direction.value,
        "amount": entry.amount,
        "currency": entry.currency,
    }


def posting_fields(posting: Posting) -> dict[str, Any]:
    """A posting as its events and its API resource show it, but for its id (which
    an event names ``posting_id`` and the resource ``id``)."""
    return {
        "external_id": posting.external_id,
        "entries": [entry_fields(e) for e in posting.entries],
        "description": posting.description,
        "metadata": dict(posting.metadata),
        "reverses": posting.reverses,
        "created_at": posting.created_at.isoformat(),
    }


def hold_fields(hold: Hold) -> dict[str, Any]:
    """The fields of a hold its events and its API resource share (the resource
    adds its description, metadata and times; neither includes the id)."""
    return {
        "external_id": hold.external_id,
        "account_id": hold.account_id,
        "counterparty_id": hold.counterparty_id,
        "amount": hold.amount,
        "currency": hold.currency,
        "status": hold.status.value,
        "posted_amount": hold.posted_amount,
        "expires_at": hold.expires_at.isoformat(),
    }


def account_fields(account: AccountState) -> dict[str, Any]:
    """The fields of an account its events and its API resource share (no id)."""
    return {
        "currency": account.currency,
        "kind": account.kind.value,
        "status": account.status.value,
        "overdraft_limit": account.overdraft_limit,
    }


# ---------------------------------------------------------------- payloads


def posting_created(posting: Posting) -> dict[str, Any]:
    return {"posting_id": posting.id, **posting_fields(posting)}


def posting_key(posting: Posting) -> str:
    """The partition key of a posting's event: its lowest debited account."""
    debits = [e.account_id for e in posting.entries if e.direction is Direction.DEBIT]
    return min(debits) if debits else posting.entries[0].account_id


def hold_changed(hold: Hold, posting_id: PostingId | None = None) -> dict[str, Any]:
    return {"hold_id": hold.id, **hold_fields(hold), "posting_id": posting_id}


def account_opened(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.id,
        **account_fields(account.state),
        "customer_id": account.customer_id,
    }


def account_changed(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.id,
        "customer_id": account.customer_id,
        **account_fields(account.state),
    }


def customer_changed(customer: Customer | str, **details: Any) -> dict[str, Any]:
    """Ids and field names only, never personal data."""
    customer_id = customer if isinstance(customer, str) else customer.id
    return {"customer_id": customer_id, **details}

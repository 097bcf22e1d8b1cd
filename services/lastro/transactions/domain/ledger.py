"""What the ledger is asked to record at each step: postings and holds, built only
from stored data, so a repeat after a crash sends the very same request (the
ledger replays it by ``external_id``; a different body would be refused).

System accounts (opened once per currency in the account service):

* ``fx`` — the FX position: a cross-currency transfer is one posting of four legs,
  source → fx in the sold currency and fx → destination in the bought one, so
  each currency sums to zero and the spread stays in the fx accounts;
* ``acquirer`` — card money the acquirer owes us: a capture credits the merchant
  from it, a refund debits the merchant back into it, a settlement clears it;
* ``bank`` — our bank account: payouts leave through it, acquirer settlements
  arrive in it;
* ``fees`` — what the acquirer keeps of a settlement (its fees);
* ``clearing`` — atomic batches: the source is debited once into it, then the
  destinations are credited from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from lastro.transactions.domain.machine import Purpose
from lastro.transactions.domain.model import Kind, Refund, Transaction, TransferBatch


class SystemPurpose(StrEnum):
    FX = "fx"
    ACQUIRER = "acquirer"
    BANK = "bank"
    FEES = "fees"
    CLEARING = "clearing"


SystemKey = tuple[SystemPurpose, str]
SystemAccounts = Mapping[SystemKey, str]

MAX_LEGS: Final = 100
"""The account service takes at most 100 entries per posting."""
CHUNK: Final = MAX_LEGS - 1
"""Destinations per distribution posting of an atomic batch (plus the clearing debit)."""


@dataclass(frozen=True)
class Leg:
    account_id: str
    direction: str
    amount: int
    currency: str


@dataclass(frozen=True)
class PostingSpec:
    external_id: str
    legs: tuple[Leg, ...]
    description: str
    metadata: Mapping[str, str]

    def body(self) -> dict[str, object]:
        """The ``POST /internal/v1/postings`` request."""
        return {
            "external_id": self.external_id,
            "entries": [
                {
                    "account_id": leg.account_id,
                    "direction": leg.direction,
                    "amount": leg.amount,
                    "currency": leg.currency,
                }
                for leg in self.legs
            ],
            "description": self.description[:1000],
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class HoldSpec:
    external_id: str
    account_id: str
    counterparty_id: str
    amount: int
    currency: str
    expires_at: datetime
    description: str
    metadata: Mapping[str, str]

    def body(self) -> dict[str, object]:
        """The ``POST /internal/v1/holds`` request (posting the hold writes a posting
        with the same metadata, so it names the transaction too)."""
        return {
            "external_id": self.external_id,
            "account_id": self.account_id,
            "counterparty_id": self.counterparty_id,
            "amount": self.amount,
            "currency": self.currency,
            "expires_at": self.expires_at.isoformat(),
            "description": self.description[:1000],
            "metadata": dict(self.metadata),
        }


def _move(debit: str, credit: str, amount: int, currency: str) -> tuple[Leg, Leg]:
    return Leg(debit, "debit", amount, currency), Leg(credit, "credit", amount, currency)


def _described(txn: Transaction) -> str:
    return txn.description or f"{txn.kind.value} {txn.id}"


def system_accounts_needed(txn: Transaction, purpose: Purpose | None) -> list[SystemKey]:
    """The system accounts a posting of ``txn`` for ``purpose`` (None: its review
    hold) touches."""
    if purpose is None:
        return [] if txn.kind is Kind.TRANSFER else [_hold_counterparty(txn)]
    if purpose is Purpose.MAIN and txn.kind is Kind.FX_TRANSFER:
        assert txn.fx is not None
        return [(SystemPurpose.FX, txn.currency), (SystemPurpose.FX, txn.fx.currency)]
    if purpose is Purpose.MAIN and txn.kind is Kind.PAYOUT:
        return [(SystemPurpose.BANK, txn.currency)]
    if purpose is Purpose.DEPOSIT:
        return [
            (SystemPurpose.BANK, txn.currency),
            (SystemPurpose.ACQUIRER, txn.currency),
            (SystemPurpose.FEES, txn.currency),
        ]
    if purpose in (Purpose.CAPTURE, Purpose.REFUND):
        return [(SystemPurpose.ACQUIRER, txn.currency)]
    return []


def posting_for(
    txn: Transaction, purpose: Purpose, system: SystemAccounts, refund: Refund | None = None
) -> PostingSpec:
    """The posting that moves ``txn``'s money for ``purpose``; every currency sums to zero."""
    metadata = {"transaction_id": txn.id, "type": txn.kind.value, "purpose": purpose.value}
    legs: tuple[Leg, ...]
    external_id = txn.id
    if purpose is Purpose.MAIN:
        assert txn.source_account_id is not None
        if txn.kind is Kind.TRANSFER:
            assert txn.destination_account_id is not None
            legs = _move(
                txn.source_account_id, txn.destination_account_id, txn.amount, txn.currency
            )
        elif txn.kind is Kind.FX_TRANSFER:
            assert txn.fx is not None and txn.destination_account_id is not None
            sold = (SystemPurpose.FX, txn.currency)
            bought = (SystemPurpose.FX, txn.fx.currency)
            legs = _move(system[bought], txn.destination_account_id, txn.fx.amount, txn.fx.currency)
            if txn.hold_id is None:
                legs = _move(txn.source_account_id, system[sold], txn.amount, txn.currency) + legs
            else:  # the sell leg was posted with the review hold
                external_id = f"{txn.id}:buy"
            metadata["quote_id"] = txn.fx.quote_id
            metadata["rate"] = txn.fx.rate
        elif txn.kind is Kind.PAYOUT:
            bank = system[(SystemPurpose.BANK, txn.currency)]
            legs = _move(txn.source_account_id, bank, txn.amount, txn.currency)
        else:
            raise ValueError(f"no main posting for a {txn.kind}")
    elif purpose is Purpose.DEPOSIT:
        legs = settlement_legs(txn, system)
    elif purpose is Purpose.CAPTURE:
        assert txn.destination_account_id is not None
        acquirer = system[(SystemPurpose.ACQUIRER, txn.currency)]
        legs = _move(acquirer, txn.destination_account_id, txn.captured_amount, txn.currency)
        external_id = f"{txn.id}:capture"
    else:
        assert refund is not None and txn.destination_account_id is not None
        acquirer = system[(SystemPurpose.ACQUIRER, txn.currency)]
        legs = _move(txn.destination_account_id, acquirer, refund.amount, txn.currency)
        external_id = refund.id
        metadata["refund_id"] = refund.id
    return PostingSpec(external_id, legs, _described(txn), metadata)


def _hold_counterparty(txn: Transaction) -> SystemKey:
    purpose = SystemPurpose.FX if txn.kind is Kind.FX_TRANSFER else SystemPurpose.BANK
    return (purpose, txn.currency)


def settlement_amounts(txn: Transaction) -> tuple[int, int, int]:
    """``(gross, fees, net)`` of a deposit, as the acquirer's batch stated them."""
    meta = txn.metadata
    return int(meta["gross"]), int(meta["fees"]), int(meta["net"])


def settlement_legs(txn: Transaction, system: SystemAccounts) -> tuple[Leg, ...]:
    """A settlement batch clears ``gross`` (captures less refunds) from the acquirer
    account: ``net`` arrives in the bank account and ``fees`` go to the fees
    account. Any of them may be negative (a batch of refunds takes money back),
    so each leg's direction follows its sign; zero legs are left out."""
    gross, fees, net = settlement_amounts(txn)
    currency = txn.currency
    legs = []
    for account, amount in (
        (system[(SystemPurpose.ACQUIRER, currency)], gross),
        (system[(SystemPurpose.BANK, currency)], -net),
        (system[(SystemPurpose.FEES, currency)], -fees),
    ):
        if amount:
            direction = "credit" if amount > 0 else "debit"
            legs.append(Leg(account, direction, abs(amount), currency))
    return tuple(legs)


def review_hold(txn: Transaction, system: SystemAccounts) -> HoldSpec:
    """The hold that reserves a reviewed transfer's money on its source. Posting it
    pays the destination (a transfer), the bank account (a payout) or the fx
    account in the sold currency (a cross-currency transfer, whose bought leg is
    then posted alone as ``<id>:buy``)."""
    assert txn.source_account_id is not None and txn.hold_expires_at is not None
    if txn.kind is Kind.TRANSFER:
        assert txn.destination_account_id is not None
        counterparty = txn.destination_account_id
    else:
        counterparty = system[_hold_counterparty(txn)]
    return HoldSpec(
        external_id=txn.id,
        account_id=txn.source_account_id,
        counterparty_id=counterparty,
        amount=txn.amount,
        currency=txn.currency,
        expires_at=txn.hold_expires_at,
        description=_described(txn),
        metadata={"transaction_id": txn.id, "type": txn.kind.value, "purpose": "review_hold"},
    )


def batch_funding(batch: TransferBatch, clearing: str) -> PostingSpec:
    """Atomic batch, step one: the whole total leaves the source in one posting."""
    legs = _move(batch.source_account_id, clearing, batch.total, batch.currency)
    metadata = {"batch_id": batch.id, "purpose": "batch_funding"}
    return PostingSpec(f"{batch.id}:funding", legs, f"transfer batch {batch.id}", metadata)


def batch_chunks(items: Sequence[Transaction]) -> list[list[Transaction]]:
    """The items in distribution postings of at most :data:`CHUNK` destinations."""
    ordered = sorted(items, key=lambda item: item.id)
    return [ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)]


def batch_distribution(
    batch: TransferBatch, clearing: str, chunk: Sequence[Transaction], index: int
) -> PostingSpec:
    """Atomic batch, step two: credit one chunk of destinations from clearing."""
    total = sum(item.amount for item in chunk)
    legs = [Leg(clearing, "debit", total, batch.currency)]
    for item in chunk:
        assert item.destination_account_id is not None
        legs.append(Leg(item.destination_account_id, "credit", item.amount, batch.currency))
    metadata = {"batch_id": batch.id, "purpose": "batch_distribution", "chunk": str(index)}
    return PostingSpec(
        f"{batch.id}:chunk:{index}", tuple(legs), f"transfer batch {batch.id}", metadata
    )

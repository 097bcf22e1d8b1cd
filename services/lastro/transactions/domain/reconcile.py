"""Reconciliation: what the transactions say happened, against the ledger's
postings and the acquirer's records, for one period. Pure: the caller fetches.

Every posting this service asks for names its transaction
(``metadata.transaction_id``; refunds also ``refund_id``, batches ``batch_id``), and
every acquirer call carries the transaction id as ``reference``, so each side can
be matched to the other without trusting either. A :class:`Mismatch` is anything
that does not add up:

* ``no-posting`` — the transaction says money moved, the ledger has no posting;
* ``unexpected-posting`` — the ledger moved money for a transaction that says it did
  not (and the posting was not reversed);
* ``amount-differs`` — posted, captured or refunded amounts disagree;
* ``posting-without-transaction`` / ``record-without-transaction`` — the ledger or
  the acquirer knows a transaction id this service does not;
* ``acquirer-differs`` — authorisations, captures, refunds or voids at the acquirer
  disagree with the payment's state (a charge never released, a second capture).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from lastro.transactions.domain.model import Kind, Refund, RefundStatus, Status, Transaction

MOVED: Final = frozenset({Status.POSTED, Status.SETTLED, Status.REVERSED, Status.REFUNDED})
IN_FLIGHT: Final = frozenset(
    {Status.RECEIVED, Status.SCREENING, Status.APPROVED, Status.CHALLENGED, Status.IN_REVIEW}
)


@dataclass(frozen=True)
class Leg:
    account_id: str
    direction: str
    amount: int
    currency: str


@dataclass(frozen=True)
class LedgerPosting:
    id: str
    external_id: str
    metadata: Mapping[str, str]
    reverses: str | None
    legs: tuple[Leg, ...]

    def debited(self, account_id: str | None) -> int:
        return sum(
            leg.amount
            for leg in self.legs
            if leg.account_id == account_id and leg.direction == "debit"
        )

    def credited(self, account_id: str | None) -> int:
        return sum(
            leg.amount
            for leg in self.legs
            if leg.account_id == account_id and leg.direction == "credit"
        )


@dataclass(frozen=True)
class AcquirerRecord:
    id: str
    type: str
    reference: str | None
    amount: int
    status: str | None
    authorization: str | None


@dataclass(frozen=True)
class Mismatch:
    kind: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind:<28} {self.subject}  {self.detail}"


@dataclass
class _Trail:
    """The postings that name one transaction, split by what they are."""

    postings: list[LedgerPosting] = field(default_factory=list)
    reversed_ids: set[str] = field(default_factory=set)

    def live(self) -> list[LedgerPosting]:
        """Postings of the transaction that no reversal undid (reversals excluded)."""
        return [p for p in self.postings if p.reverses is None and p.id not in self.reversed_ids]


def reconcile(
    transactions: Sequence[Transaction],
    refunds: Mapping[str, Sequence[Refund]],
    postings: Iterable[LedgerPosting],
    records: Iterable[AcquirerRecord],
    *,
    known_ids: Collection[str],
) -> list[Mismatch]:
    """Every mismatch between ``transactions`` (the period's) and the two other
    sides; ``known_ids`` are all transaction ids this service holds (any period)."""
    trails: dict[str, _Trail] = defaultdict(_Trail)
    by_id: dict[str, LedgerPosting] = {}
    mismatches: list[Mismatch] = []
    for posting in postings:
        by_id[posting.id] = posting
    for posting in by_id.values():
        owner = posting.metadata.get("transaction_id")
        if posting.reverses is not None:
            original = by_id.get(posting.reverses)
            owner = owner or (original.metadata.get("transaction_id") if original else None)
            if owner is not None:
                trails[owner].reversed_ids.add(posting.reverses)
            continue
        if owner is None:
            continue  # not one of ours (a batch's, a top-up, another service's)
        trails[owner].postings.append(posting)
        if owner not in known_ids:
            mismatches.append(Mismatch("posting-without-transaction", posting.id, f"names {owner}"))
    by_reference: dict[str, list[AcquirerRecord]] = defaultdict(list)
    for record in records:
        if record.reference is None:
            continue
        by_reference[record.reference].append(record)
        if record.reference not in known_ids:
            mismatches.append(
                Mismatch(
                    "record-without-transaction",
                    record.id,
                    f"{record.type} for unknown reference {record.reference}",
                )
            )
    for txn in transactions:
        if txn.batch_id is not None:
            continue  # a batch's postings name the batch, not its items
        trail = trails.get(txn.id, _Trail())
        mismatches += _ledger(txn, trail, refunds.get(txn.id, ()))
        if txn.kind is Kind.CARD_PAYMENT:
            mismatches += _acquirer(txn, by_reference.get(txn.id, []), refunds.get(txn.id, ()))
    return mismatches


def _ledger(txn: Transaction, trail: _Trail, refunds: Sequence[Refund]) -> list[Mismatch]:
    live = trail.live()
    if txn.kind is Kind.CARD_PAYMENT:
        return _payment_postings(txn, live, refunds)
    if txn.status in IN_FLIGHT and txn.status is not Status.APPROVED:
        return []
    moved = txn.status in MOVED and txn.status is not Status.REVERSED
    if not moved:
        if live and txn.status is not Status.APPROVED:
            ids = ", ".join(p.id for p in live)
            return [Mismatch("unexpected-posting", txn.id, f"{txn.status}, yet {ids} moved money")]
        return []
    if not live:
        return [Mismatch("no-posting", txn.id, f"{txn.status} without a posting in the ledger")]
    if txn.kind is Kind.DEPOSIT:
        return []
    debited = sum(p.debited(txn.source_account_id) for p in live)
    if debited != txn.amount:
        return [
            Mismatch(
                "amount-differs",
                txn.id,
                f"the ledger debited {debited} from the source, the transaction says {txn.amount}",
            )
        ]
    return []


def _payment_postings(
    txn: Transaction, live: Sequence[LedgerPosting], refunds: Sequence[Refund]
) -> list[Mismatch]:
    merchant = txn.destination_account_id
    captured = sum(p.credited(merchant) for p in live if "refund_id" not in p.metadata)
    refunded = sum(p.debited(merchant) for p in live if "refund_id" in p.metadata)
    expected_refunds = sum(r.amount for r in refunds if r.status is RefundStatus.SUCCEEDED)
    pending = any(r.status is RefundStatus.PENDING for r in refunds)
    found = []
    expected_capture = txn.captured_amount if txn.status in MOVED else 0
    if captured != expected_capture:
        found.append(
            Mismatch(
                "amount-differs",
                txn.id,
                f"the ledger credited {captured} to the merchant, captured {expected_capture}",
            )
        )
    if refunded != expected_refunds and not pending:
        found.append(
            Mismatch(
                "amount-differs",
                txn.id,
                f"the ledger took back {refunded}, refunds succeeded for {expected_refunds}",
            )
        )
    return found


def _acquirer(
    txn: Transaction, records: Sequence[AcquirerRecord], refunds: Sequence[Refund]
) -> list[Mismatch]:
    approved = [r for r in records if r.type == "authorization" and r.status != "declined"]
    voided = any(r.type == "void" for r in records)
    captured = sum(r.amount for r in records if r.type == "capture")
    refunded = sum(r.amount for r in records if r.type == "refund")
    found = []

    def differs(detail: str) -> None:
        found.append(Mismatch("acquirer-differs", txn.id, detail))

    if len(approved) > 1:
        differs(f"{len(approved)} approved authorisations for one payment")
    if txn.status in MOVED:
        if captured != txn.captured_amount:
            differs(f"the acquirer captured {captured}, the payment says {txn.captured_amount}")
        if refunded != txn.refunded_amount and not any(
            r.status is RefundStatus.PENDING for r in refunds
        ):
            differs(f"the acquirer refunded {refunded}, the payment says {txn.refunded_amount}")
    elif txn.status is Status.AUTHORIZED:
        if not approved or voided:
            differs("authorised here, not (or no longer) at the acquirer")
    elif txn.status in (Status.DECLINED, Status.FAILED, Status.REVERSED):
        if approved and not voided and captured == 0 and txn.compensation is None:
            differs(f"{txn.status} here, but an authorisation at the acquirer was never voided")
        if captured - refunded > 0 and txn.compensation is None:
            differs(f"{txn.status} here, but {captured - refunded} stays captured at the acquirer")
    return found

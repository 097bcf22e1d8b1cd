"""What the state machine asks the worker to do (effects) and what the receivers
answer (outcomes): the worker performs an :data:`Effect` through the clients (fraud,
ledger, acquirer) and hands the :data:`Outcome` back to ``machine.after``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lastro.transactions.domain.model import Screening

# ---------------------------------------------------------------- effects


class Purpose(StrEnum):
    """Which ledger posting a :class:`PostLedger` writes (its ``external_id`` suffix)."""

    MAIN = "main"
    CAPTURE = "capture"
    REFUND = "refund"
    DEPOSIT = "deposit"


@dataclass(frozen=True)
class Screen:
    """Ask the fraud service (idempotent on the transaction id)."""


@dataclass(frozen=True)
class PlaceHold:
    """Reserve the amount on the source while a fraud alert is reviewed."""


@dataclass(frozen=True)
class ResolveHold:
    """Post (``post``) or void the review hold."""

    post: bool


@dataclass(frozen=True)
class PostLedger:
    purpose: Purpose
    refund_id: str | None = None


@dataclass(frozen=True)
class ReversePosting:
    """Undo a posting with its mirror (compensation, or an operator's reversal)."""

    posting_id: str
    refund_id: str | None = None


@dataclass(frozen=True)
class Authorize:
    pass


@dataclass(frozen=True)
class Capture:
    amount: int


@dataclass(frozen=True)
class VoidAuthorization:
    pass


@dataclass(frozen=True)
class RefundCard:
    """Refund at the acquirer: a customer's refund (``refund_id``) or, without
    one, the compensation for a capture the ledger refused."""

    amount: int
    refund_id: str | None = None


@dataclass(frozen=True)
class SendPayout:
    pass


@dataclass(frozen=True)
class SettlePayments:
    """A deposit from the acquirer's settlement marks its payments settled."""


Effect = (
    Screen
    | PlaceHold
    | ResolveHold
    | PostLedger
    | ReversePosting
    | Authorize
    | Capture
    | VoidAuthorization
    | RefundCard
    | SendPayout
    | SettlePayments
)


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Done:
    """The effect happened (now or, for a repeat, the first time): ``reference`` is
    what the receiver created (posting, hold, authorization, capture, refund);
    ``details`` what it told about it (an authorisation: the card's brand, last
    four digits and fingerprint)."""

    reference: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The receiver answered no, for good: ``reason`` is a stable slug."""

    reason: str


@dataclass(frozen=True)
class Unavailable:
    """No answer: timeout, breaker open, 5xx. ``uncertain`` when an attempt may
    have reached the receiver (a timeout), so a compensation may be owed."""

    detail: str
    uncertain: bool = False


Outcome = Screening | Done | Refused | Unavailable

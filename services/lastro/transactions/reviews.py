"""Use cases of fraud decisions on held transactions: the customer answers a
``challenge`` with a fresh second factor; the fraud service reports how an alert on
a transaction ``in_review`` was resolved.
"""

from __future__ import annotations

from lastro.core.stepup import require_recent_otp
from lastro.transactions.domain import requests as rules
from lastro.transactions.domain.errors import UnknownTransaction
from lastro.transactions.domain.model import ReviewOutcome, Transaction
from lastro.transactions.intake import Intake, Requester
from lastro.transactions.store import queries


class Reviews(Intake):
    """What the customer and the fraud service decide about a held transaction."""

    async def confirm(self, requester: Requester, txn_id: str) -> Transaction:
        """The customer answers a fraud ``challenge`` with a fresh second factor."""
        txn, _ = await self.get(requester, txn_id)
        if txn.owner != requester.principal.subject:
            raise UnknownTransaction(f"no transaction {txn_id}")
        require_recent_otp(requester.principal, max_age=self._config.step_up_max_age)
        rules.check_confirm(txn)
        return await self._decide(
            requester, txn, "transfer.confirmed", {}, confirmed_at=self._now()
        )

    async def resolve_review(
        self, requester: Requester, txn_id: str, outcome: ReviewOutcome, alert_id: str | None
    ) -> Transaction:
        """The fraud service reports how an alert on a held transaction was resolved.
        Repeating the same outcome is harmless; another outcome is refused."""
        txn = await self._read(lambda c: queries.get_transaction(c, self._t, txn_id))
        if txn is None:
            raise UnknownTransaction(f"no transaction {txn_id}")
        if not rules.check_review_outcome(txn, outcome):
            return txn
        return await self._decide(
            requester,
            txn,
            "transaction.review_resolved",
            {"outcome": outcome.value, "alert_id": alert_id},
            review_outcome=outcome,
        )

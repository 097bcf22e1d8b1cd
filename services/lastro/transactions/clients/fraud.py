"""The fraud service's synchronous screening (docs/interfaces.md, "Fraud screening").

One attempt within the latency budget (``LASTRO_TRANSACTIONS_FRAUD_TIMEOUT_MS``,
300 ms by default) behind its own breaker; no retry inside the budget (the
worker's next pass may ask again: screening is idempotent on the transaction id).
Anything but a well-formed 200 is :class:`Unavailable`, and the state machine
applies the documented fallback (``domain.machine.fallback_screening``).

At most ``LASTRO_TRANSACTIONS_FRAUD_CONCURRENCY`` screenings (16) are in flight from
one worker process; the others wait their turn before their budget starts. A burst
of a whole fetch sent at once made the fraud service answer all of it late: five
timeouts in a row opened the breaker, and every transfer in the next 15 s was
approved unscreened. For the same reason the fraud breaker probes again after
``LASTRO_TRANSACTIONS_FRAUD_BREAKER_RESET`` seconds (2), not the other breakers' 15.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lastro.transactions.clients.http import TRANSPORT_ERRORS, Endpoint, unavailable
from lastro.transactions.domain.effects import Unavailable
from lastro.transactions.domain.model import Decision, Screening, Transaction

log = logging.getLogger(__name__)


def screening_request(txn: Transaction) -> dict[str, Any]:
    """The screening contract's request for ``txn``."""
    body: dict[str, Any] = {
        "transaction_id": txn.id,
        "type": txn.kind.value,
        "amount": txn.amount,
        "currency": txn.currency,
        "occurred_at": txn.created_at.isoformat(),
    }
    optional = {
        "customer_id": txn.customer_id,
        "source_account_id": txn.source_account_id,
        "destination_account_id": txn.destination_account_id,
        "counterparty": txn.counterparty,
        "counterparty_customer_id": txn.counterparty_customer_id,
        "device_id": txn.context.device_id,
        "ip": txn.context.ip,
        "country": txn.context.country,
        "location": None if txn.context.location is None else dict(txn.context.location),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def screening_from(body: Any) -> Screening | None:
    """The decision in a screening answer, or None if the answer is malformed."""
    if not isinstance(body, dict):
        return None
    try:
        decision = Decision(body["decision"])
    except (KeyError, ValueError):
        return None
    reasons = body.get("reasons") or []
    version = body.get("ruleset_version")
    score = body.get("score")
    return Screening(
        decision=decision,
        fallback=False,
        screening_id=body.get("screening_id"),
        ruleset_version=version if isinstance(version, int) else None,
        score=score if isinstance(score, int) else None,
        rule_ids=tuple(
            str(r["rule_id"]) for r in reasons if isinstance(r, dict) and "rule_id" in r
        ),
    )


class FraudClient:
    """Screens transactions, at most ``concurrency`` at a time."""

    def __init__(self, endpoint: Endpoint, concurrency: int = 16) -> None:
        self._endpoint = endpoint
        self._slots = asyncio.Semaphore(concurrency)

    async def screen(self, txn: Transaction) -> Screening | Unavailable:
        try:
            async with self._slots:
                answer = await self._endpoint.request(
                    "POST",
                    "/internal/v1/screenings",
                    body=screening_request(txn),
                    idempotent=False,
                )
        except TRANSPORT_ERRORS as error:
            return unavailable("fraud", error)
        screening = screening_from(answer.body) if answer.status == 200 else None
        if screening is None:
            log.warning("fraud screening answered %s; applying the fallback", answer.status)
            return Unavailable(f"fraud answered {answer.status}")
        return screening

"""The card acquirer (docs/interfaces.md, "Card acquirer"), the end of the
idempotency chain for card money.

Every POST carries an ``Idempotency-Key`` derived from our own ids
(``<txn>:authorize``, ``<txn>:capture``, ``<txn>:void``, the refund's id,
``<txn>:compensate``), so a worker that repeats a call after a crash gets the
acquirer's first answer back and the card is never charged twice. The calls are
therefore retried on timeouts and 5xx; the breaker opens on a dependency that
keeps failing, and calls then fail fast.

:meth:`AcquirerClient.verify_settlement` checks the HMAC signature of the
acquirer's settlement callbacks (``Acquirer-Signature: t=<unix>,v1=<hex>`` over
``"<t>.<body>"``, five minutes' tolerance) with the acquirer's own helper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lastro.external.acquirer_signing import (
    InvalidSettlementSignature,
    verify_settlement_signature,
)
from lastro.transactions.clients.http import TRANSPORT_ERRORS, Endpoint, unavailable
from lastro.transactions.domain.machine import Done, Refused, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Authorization:
    """An authorisation as the acquirer reports it."""

    id: str
    status: str
    decline_code: str | None
    amount: int
    captured: int
    refunded: int


class AcquirerClient:
    def __init__(self, endpoint: Endpoint, webhook_secret: str) -> None:
        self._endpoint = endpoint
        self._secret = webhook_secret

    async def _post(self, path: str, body: Any, key: str) -> Done | Refused | Unavailable:
        try:
            answer = await self._endpoint.request(
                "POST", path, body=body, headers={"Idempotency-Key": key}, idempotent=True
            )
        except TRANSPORT_ERRORS as error:
            return unavailable("acquirer", error)
        if not answer.ok:
            return Refused(answer.problem)
        data = answer.body if isinstance(answer.body, dict) else {}
        if data.get("status") == "declined":
            return Refused(str(data.get("decline_code") or "card_declined"))
        card = data.get("card")
        details = (
            {k: str(card[k]) for k in ("brand", "last4", "fingerprint") if card.get(k)}
            if isinstance(card, dict)
            else {}
        )
        return Done(str(data["id"]) if "id" in data else None, details)

    async def authorize(
        self, txn_id: str, token: str, amount: int, currency: str
    ) -> Done | Refused | Unavailable:
        """Authorise the card; Done carries the authorisation id, Refused the decline code."""
        body = {"token": token, "amount": amount, "currency": currency, "reference": txn_id}
        return await self._post("/v1/authorizations", body, f"{txn_id}:authorize")

    async def capture(
        self, txn_id: str, authorization_id: str, amount: int
    ) -> Done | Refused | Unavailable:
        return await self._post(
            f"/v1/authorizations/{authorization_id}/captures",
            {"amount": amount},
            f"{txn_id}:capture",
        )

    async def void(self, txn_id: str, authorization_id: str) -> Done | Refused | Unavailable:
        outcome = await self._post(
            f"/v1/authorizations/{authorization_id}/void", None, f"{txn_id}:void"
        )
        if isinstance(outcome, Refused) and outcome.reason == "authorization_not_voidable":
            return Done(authorization_id)  # already voided (or declined): nothing held
        return outcome

    async def refund(self, capture_id: str, amount: int, key: str) -> Done | Refused | Unavailable:
        return await self._post(f"/v1/captures/{capture_id}/refunds", {"amount": amount}, key)

    async def authorization(self, authorization_id: str) -> Authorization | None:
        answer = await self._endpoint.request(
            "GET", f"/v1/authorizations/{authorization_id}", idempotent=True
        )
        return _authorization(answer.body) if answer.ok else None

    async def records(self, since: str, until: str) -> list[dict[str, Any]]:
        """The acquirer's own records created in ``[since, until)``, every page
        (reconciliation)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"from": since, "to": until, "limit": "500"}
            if cursor:
                params["cursor"] = cursor
            answer = await self._endpoint.request(
                "GET", "/v1/records", params=params, idempotent=True
            )
            if not answer.ok or not isinstance(answer.body, dict):
                raise RuntimeError(f"acquirer records answered {answer.status}")
            found.extend(r for r in answer.body.get("records", []) if isinstance(r, dict))
            cursor = answer.body.get("next_cursor")
            if not cursor:
                return found

    async def find_authorization(self, reference: str, since: str, until: str) -> str | None:
        """The id of an approved authorisation made for ``reference`` (our transaction
        id) in ``[since, until)``, from the acquirer's records; None if there is none."""
        for record in await self.records(since, until):
            if (
                record.get("type") == "authorization"
                and record.get("reference") == reference
                and record.get("status") != "declined"
            ):
                return str(record.get("authorization") or record.get("id"))
        return None

    def verify_settlement(self, header: str | None, body: bytes) -> bool:
        """True when ``header`` signs ``body`` with the shared secret, recently
        (``lastro.external.acquirer_signing``, the acquirer's own scheme)."""
        try:
            verify_settlement_signature(self._secret, header, body)
        except InvalidSettlementSignature as error:
            log.warning("settlement refused: %s", error)
            return False
        return True


def _authorization(body: Any) -> Authorization | None:
    if not isinstance(body, dict) or "id" not in body:
        return None
    return Authorization(
        id=str(body["id"]),
        status=str(body.get("status", "")),
        decline_code=body.get("decline_code"),
        amount=int(body.get("amount", 0)),
        captured=int(body.get("captured", 0)),
        refunded=int(body.get("refunded", 0)),
    )

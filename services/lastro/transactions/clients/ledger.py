"""The account service, as the transaction service uses it.

Money calls (``/internal/v1/postings``, ``/internal/v1/holds[/{id}/post|void]``,
``/internal/v1/postings/{id}/reverse``) carry a service token for audience
``accounts`` and are idempotent at the ledger (``external_id``, or the hold's own
state), so they are retried on timeouts and 5xx. Their answers become the state
machine's outcomes: 2xx → :class:`Done`, a rule refusal (4xx problem) →
:class:`Refused` with the problem's slug, no answer → :class:`Unavailable`.

Ownership is checked by the account service itself: the caller's own token is
forwarded to ``GET /v1/accounts/{id}``, which answers 404 for an account that is
not the caller's (so a customer's token for the transaction service must also
name audience ``accounts`` with ``accounts:read``). Answers are cached briefly:
an account's currency and customer never change, and its status is enforced by
the ledger at posting time anyway.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from lastro.transactions.clients.http import TRANSPORT_ERRORS, Answer, Endpoint, unavailable
from lastro.transactions.domain.ledger import HoldSpec, PostingSpec
from lastro.transactions.domain.machine import Done, Refused, Unavailable

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

CACHE_SECONDS: Final = 60.0
CACHE_SIZE: Final = 50_000
# A second attempt at something already done answers these; the effect holds.
ALREADY_DONE: Final = frozenset({"hold_already_posted", "hold_voided", "hold_expired"})


class TtlCache(Generic[K, V]):
    """A small LRU map whose entries expire ``ttl`` seconds after they were stored."""

    def __init__(self, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE) -> None:
        self._ttl = ttl
        self._size = size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        found = self._items.get(key)
        if found is None:
            return None
        stored_at, value = found
        if time.monotonic() - stored_at > self._ttl:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic(), value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class AccountInfo:
    id: str
    currency: str
    customer_id: str | None
    status: str
    kind: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> AccountInfo:
        return cls(
            id=str(body["id"]),
            currency=str(body["currency"]),
            customer_id=body.get("customer_id"),
            status=str(body["status"]),
            kind=str(body["kind"]),
        )


class AccountNotReadable(Exception):
    """The caller's token was refused by the account service (wrong audience or
    scope): ownership cannot be checked."""


class LedgerClient:
    """Calls to the account service (``service`` carries the service token;
    ``caller`` forwards the end user's)."""

    def __init__(self, service: Endpoint, caller: Endpoint) -> None:
        self._service = service
        self._caller = caller
        self._owned: TtlCache[tuple[str, str], AccountInfo] = TtlCache()
        self._accounts: TtlCache[str, AccountInfo] = TtlCache()

    # -------------------------------------------------------------- money

    async def _money(
        self, path: str, body: Any, *, already_done: bool = False
    ) -> Done | Refused | Unavailable:
        try:
            answer = await self._service.request("POST", path, body=body, idempotent=True)
        except TRANSPORT_ERRORS as error:
            return unavailable("accounts", error)
        if answer.ok:
            return Done(answer.body.get("id") if isinstance(answer.body, dict) else None)
        if answer.status in (401, 403):
            log.error("the account service refused our service token (%s)", answer.status)
            return Unavailable(f"accounts refused the service token ({answer.status})")
        reason = answer.problem
        if already_done and reason in ALREADY_DONE:
            return Done(None)
        return Refused(reason)

    async def post(self, spec: PostingSpec) -> Done | Refused | Unavailable:
        """Record the posting (idempotent on its ``external_id``)."""
        return await self._money("/internal/v1/postings", spec.body())

    async def place_hold(self, spec: HoldSpec) -> Done | Refused | Unavailable:
        return await self._money("/internal/v1/holds", spec.body())

    async def post_hold(self, hold_id: str) -> Done | Refused | Unavailable:
        outcome = await self._money(f"/internal/v1/holds/{hold_id}/post", {})
        if isinstance(outcome, Refused) and outcome.reason == "hold_already_posted":
            return Done(None)
        return outcome

    async def void_hold(self, hold_id: str) -> Done | Refused | Unavailable:
        """Release the hold; one already voided or expired is released already."""
        return await self._money(f"/internal/v1/holds/{hold_id}/void", None, already_done=True)

    async def reverse(self, posting_id: str, description: str) -> Done | Refused | Unavailable:
        """Post the mirror of ``posting_id`` (the ledger replays a second reversal)."""
        body = {"description": description[:1000]}
        return await self._money(f"/internal/v1/postings/{posting_id}/reverse", body)

    async def open_system_account(self, currency: str, purpose: str, rail: str) -> str:
        """Open a system account; raises on any failure (a start-up or first-use step)."""
        body = {"currency": currency, "purpose": purpose, "metadata": {"rail": rail}}
        answer = await self._service.request(
            "POST", "/internal/v1/accounts", body=body, idempotent=False
        )
        if answer.status != 201:
            raise RuntimeError(f"opening a {rail} account failed: {answer.status} {answer.body}")
        return str(answer.body["id"])

    # -------------------------------------------------------------- reads

    async def account(self, account_id: str) -> AccountInfo | None:
        """Any account, read with the service token (``ledger:read``)."""
        cached = self._accounts.get(account_id)
        if cached is not None:
            return cached
        answer = await self._service.request("GET", f"/v1/accounts/{account_id}", idempotent=True)
        return self._remember(answer, account_id, None)

    async def caller_account(
        self, account_id: str, bearer: str, subject: str
    ) -> AccountInfo | None:
        """The account if the account service shows it to the caller (their own)."""
        cached = self._owned.get((subject, account_id))
        if cached is not None:
            return cached
        answer = await self._caller.request(
            "GET",
            f"/v1/accounts/{account_id}",
            headers={"Authorization": f"Bearer {bearer}"},
            idempotent=True,
        )
        return self._remember(answer, account_id, subject)

    async def caller_accounts(self, bearer: str) -> list[AccountInfo]:
        answer = await self._caller.request(
            "GET", "/v1/accounts", headers={"Authorization": f"Bearer {bearer}"}, idempotent=True
        )
        if answer.status in (401, 403):
            raise AccountNotReadable(f"the account service answered {answer.status}")
        if not answer.ok:
            return []
        return [AccountInfo.of(item) for item in answer.body.get("data", [])]

    def _remember(self, answer: Answer, account_id: str, subject: str | None) -> AccountInfo | None:
        if answer.status in (401, 403):
            raise AccountNotReadable(f"the account service answered {answer.status}")
        if answer.status in (404, 422) or not answer.ok:
            return None
        info = AccountInfo.of(answer.body)
        if subject is None:
            self._accounts.put(account_id, info)
        else:
            self._owned.put((subject, account_id), info)
            self._accounts.put(account_id, info)
        return info

    async def posting(self, posting_id: str) -> dict[str, Any] | None:
        """A posting with its entries (reconciliation)."""
        answer = await self._service.request(
            "GET", f"/internal/v1/postings/{posting_id}", idempotent=True
        )
        return answer.body if answer.ok else None

    async def entries(self, account_id: str, since: str, until: str) -> list[dict[str, Any]]:
        """Every entry of an account in ``[since, until)`` (reconciliation)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"since": since, "until": until, "limit": "200"}
            if cursor:
                params["cursor"] = cursor
            answer = await self._service.request(
                "GET", f"/v1/accounts/{account_id}/entries", params=params, idempotent=True
            )
            if not answer.ok:
                return found
            found.extend(answer.body["data"])
            cursor = answer.body.get("next_cursor")
            if not cursor:
                return found

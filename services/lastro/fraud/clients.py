"""The sibling services the fraud service calls, each behind a timeout and a breaker.

- accounts: ``POST /v1/accounts/{id}/freeze`` (scope ``accounts:admin``), asked by
  the analyser for high-severity alerts;
- transactions: ``POST /internal/v1/transactions/{id}/review-outcome`` (scope
  ``transactions:review``, ``Idempotency-Key`` = the alert id), when a person
  resolves the alert of a transaction held in ``review``.

Both calls are idempotent (a frozen account stays frozen; the same outcome under
the same key is replayed), so :class:`~lastro.core.resilience.ResilientCall`
retries transient failures. An answer is an :class:`Answer`: ``done`` (the
effect holds), ``refused`` (the callee said no for good: unknown account, a
transaction no longer in review) or, by exception, :class:`Unavailable` (try
again later). The service token comes from the identity service
(:class:`~lastro.core.security.service_tokens.ServiceTokenClient`); on the local
stack this service registers its own client once
(:func:`~lastro.core.security.service_tokens.dev_service_credentials`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp

from lastro.core.config import ConfigError, Settings
from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError, is_transient
from lastro.core.security.service_tokens import (
    ServiceTokenClient,
    ServiceTokenError,
    dev_service_credentials,
)

SCOPES: Final = ["accounts:admin", "transactions:review"]
AUDIENCES: Final = ["accounts", "transactions"]
TIMEOUT_SECONDS: Final = 5.0


class TokenSource(Protocol):
    async def headers(self, audience: str) -> dict[str, str]: ...


class Unavailable(Exception):
    """The callee could not be reached, or answered with a transient failure."""


@dataclass(frozen=True)
class Answer:
    """``done``: the effect holds. Otherwise ``status`` and ``detail`` say why not."""

    done: bool
    status: int
    detail: str


def _detail(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("type") or "")[:300]
    return ""


class Sibling:
    """One sibling service over HTTPS: base URL, audience, breaker and timeout."""

    def __init__(
        self,
        audience: str,
        base_url: str,
        session: aiohttp.ClientSession,
        tokens: TokenSource,
        call: ResilientCall | None = None,
    ) -> None:
        self.audience = audience
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._tokens = tokens
        self._call = call or ResilientCall(f"fraud-{audience}", timeout=TIMEOUT_SECONDS, retries=2)

    async def post(
        self,
        path: str,
        body: Mapping[str, Any] | None,
        *,
        done: tuple[int, ...],
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST once (retried on transient failures): a status in ``done`` or any
        2xx is done, another 4xx is refused, the rest raises Unavailable."""

        async def attempt() -> Answer:
            sent = {**await self._tokens.headers(self.audience), **(headers or {})}
            async with self._session.post(
                f"{self.base_url}{path}", json=body, headers=sent
            ) as response:
                raw = await response.read()
                if response.status >= 500 or response.status == 429:
                    raise TransientError(f"{self.audience} answered {response.status}")
                ok = 200 <= response.status < 300 or response.status in done
                return Answer(ok, response.status, _detail(raw))

        try:
            return await self._call.call(attempt, idempotent=True)
        except ServiceTokenError as exc:
            raise Unavailable(f"no token for {self.audience}: {exc}") from exc
        except CircuitOpen as exc:
            raise Unavailable(str(exc)) from exc
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"{self.audience}: {exc!r}") from exc
            raise


class AccountFreezer:
    """Asks the account service to freeze an account."""

    def __init__(self, accounts: Sibling) -> None:
        self._accounts = accounts

    async def freeze(self, account_id: str) -> Answer:
        """Done when the account is frozen (freezing a frozen account is a no-op
        there); refused for an unknown (404) or closed (409) account."""
        return await self._accounts.post(
            f"/v1/accounts/{quote(account_id, safe='')}/freeze", None, done=()
        )


class ReviewReporter:
    """Tells the transaction service how the alert on a held transaction was resolved."""

    def __init__(self, transactions: Sibling) -> None:
        self._transactions = transactions

    async def report(self, transaction_id: str, outcome: str, alert_id: str) -> Answer:
        return await self._transactions.post(
            f"/internal/v1/transactions/{quote(transaction_id, safe='')}/review-outcome",
            {"outcome": outcome, "alert_id": alert_id},
            done=(),
            headers={"Idempotency-Key": alert_id},
        )


class ServiceTokens:
    """This service's tokens from the identity service; the client credentials are
    resolved on first use (configured, or registered once on the local stack), so
    start-up does not depend on the identity service."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: ServiceTokenClient | None = None

    async def _tokens(self) -> ServiceTokenClient:
        if self._client is None:
            client_id, secret = await credentials(self._settings)
            self._client = ServiceTokenClient.from_settings(self._settings, client_id, secret)
        return self._client

    async def headers(self, audience: str) -> dict[str, str]:
        return await (await self._tokens()).headers(audience)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


async def credentials(settings: Settings) -> tuple[str, str]:
    config = settings.fraud
    if config.client_id and config.client_secret:
        return config.client_id, config.client_secret
    if settings.env not in ("dev", "test"):
        raise ConfigError("LASTRO_FRAUD_CLIENT (client_id:client_secret) is required")
    return await dev_service_credentials(
        settings,
        "fraud",
        scopes=SCOPES,
        audiences=AUDIENCES,
        secret_file=settings.dev_dir / "secrets" / "fraud_client",
    )

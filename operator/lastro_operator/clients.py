"""HTTP clients of the fraud admin API and the services' privacy API.

Every call carries a service token whose audience is the callee, runs under a timeout
and a circuit breaker (:class:`~lastro.core.resilience.ResilientCall`), and is retried
with backoff only when it is idempotent (rule PUT/GET/DELETE are; a purge is attempted
once per reconciliation, since its counts would be lost in a retried answer).

Outcomes are mapped onto three exceptions the handlers act on:

- :class:`Refused`: the callee understood and said no (422, 4xx): permanent for this
  generation of the resource, reported in status, not retried;
- :class:`Unavailable`: timeouts, connection errors, 5xx, 429, an open breaker, a
  token the issuer would not give: retried later (``kopf.TemporaryError``);
- anything else is a bug and surfaces as such.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp

from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError, is_transient
from lastro.core.security.service_tokens import ServiceTokenError

REQUEST_TIMEOUT_SECONDS: Final = 10.0
PURGE_TIMEOUT_SECONDS: Final = 120.0


class TokenSource(Protocol):
    """Where bearer tokens come from (ServiceTokenClient in production)."""

    async def headers(self, audience: str) -> dict[str, str]: ...


class Refused(Exception):
    """The callee refused the request for a reason that asking again will not change."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Unavailable(Exception):
    """The callee could not be reached or answered with a transient failure."""


def problem_detail(status: int, raw: bytes) -> str:
    """The human part of a problem+json answer (``detail``, else ``title``), else the text."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title")
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            detail = f"{detail}: {json.dumps(errors, sort_keys=True)}"
        if detail:
            return str(detail)
    text = raw.decode(errors="replace").strip()
    return text[:500] if text else f"HTTP {status}"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any


class _ServiceClient:
    """One sibling service: base URL, audience, shared HTTP session, one breaker."""

    def __init__(
        self,
        name: str,
        base_url: str,
        session: aiohttp.ClientSession,
        tokens: TokenSource,
        *,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._tokens = tokens
        self._call = ResilientCall(f"operator-{name}", timeout=timeout, retries=2)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        also_ok: tuple[int, ...] = (),
    ) -> Answer:
        """Send one request; a 2xx (or a status in ``also_ok``, such as 404) is returned,
        another 4xx raises Refused, everything transient raises Unavailable."""

        async def attempt() -> Answer:
            auth = await self._tokens.headers(self.name)
            sent = {**auth, **(headers or {}), "Accept": "application/json"}
            async with self._session.request(
                method, f"{self.base_url}{path}", json=body, headers=sent
            ) as response:
                raw = await response.read()
                if 200 <= response.status < 300 or response.status in also_ok:
                    return Answer(response.status, json.loads(raw) if raw else None)
                if response.status >= 500 or response.status == 429:
                    raise TransientError(
                        f"{self.name} answered {response.status}: "
                        f"{problem_detail(response.status, raw)}"
                    )
                raise Refused(response.status, problem_detail(response.status, raw))

        try:
            return await self._call.call(attempt, idempotent=idempotent)
        except Refused:
            raise
        except ServiceTokenError as exc:
            raise Unavailable(f"no token for {self.name}: {exc}") from exc
        except CircuitOpen as exc:
            raise Unavailable(str(exc)) from exc
        except Exception as exc:
            if is_transient(exc):
                raise Unavailable(f"{self.name}: {exc!r}") from exc
            raise


def rule_path(rule_id: str) -> str:
    return f"/v1/rules/{quote(rule_id, safe='')}"


class FraudAdmin:
    """The fraud service's rule administration (scope ``fraud:admin``)."""

    def __init__(self, client: _ServiceClient) -> None:
        self._client = client

    @classmethod
    def create(
        cls, base_url: str, session: aiohttp.ClientSession, tokens: TokenSource
    ) -> FraudAdmin:
        return cls(_ServiceClient("fraud", base_url, session, tokens))

    async def put_rule(self, rule: Mapping[str, Any]) -> Any:
        """Create or replace the rule; Refused (422) carries the CEL error."""
        path = rule_path(str(rule["id"]))
        return (await self._client.request("PUT", path, body=rule, idempotent=True)).body

    async def get_rule(self, rule_id: str) -> dict[str, Any] | None:
        """The rule with the ``ruleset_version`` it is live in, or None when absent."""
        answer = await self._client.request(
            "GET", rule_path(rule_id), idempotent=True, also_ok=(404,)
        )
        if answer.status == 404:
            return None
        if not isinstance(answer.body, dict):
            raise Unavailable(f"GET {rule_path(rule_id)} answered a non-object")
        return answer.body

    async def delete_rule(self, rule_id: str) -> None:
        await self._client.request("DELETE", rule_path(rule_id), idempotent=True, also_ok=(404,))


class PrivacyAPI:
    """One service's ``/internal/v1/privacy`` (scope ``privacy:admin``)."""

    def __init__(self, client: _ServiceClient) -> None:
        self._client = client

    @classmethod
    def create(
        cls, service: str, base_url: str, session: aiohttp.ClientSession, tokens: TokenSource
    ) -> PrivacyAPI:
        client = _ServiceClient(service, base_url, session, tokens, timeout=PURGE_TIMEOUT_SECONDS)
        return cls(client)

    async def purge(self, request: Mapping[str, Any], request_id: str) -> dict[str, Any]:
        """Purge one data class older than a cutoff; the service audits it under
        ``request_id``. Refused for a data class the service does not hold."""
        answer = await self._client.request(
            "POST",
            "/internal/v1/privacy/purge",
            body=request,
            headers={"X-Request-Id": request_id},
            idempotent=False,
        )
        if not isinstance(answer.body, dict):
            raise Unavailable("purge answered a non-object")
        return answer.body


# service name -> base URL; the operator builds one PrivacyAPI per service it needs.
PrivacyFactory = Callable[[str], PrivacyAPI]
Sleep = Callable[[float], Awaitable[None]]

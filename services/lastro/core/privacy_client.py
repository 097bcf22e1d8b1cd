"""Calling the privacy API of the services that hold personal data (``core/privacy.py``).

One :class:`PrivacyClient` serves every service listed with ``holds_personal_data``
in ``core/registry.py``: a service token for the callee's audience with scope
``privacy:admin``, HTTPS verified against the configured CA, and per service a
:class:`~lastro.core.resilience.ResilientCall` (timeout, breaker, retries with
full-jitter backoff: every privacy operation is idempotent, so it is always
retried on a transient failure). A refusal (4xx) is not retried.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp

from lastro.core.config import Settings
from lastro.core.registry import PRIVACY_SCOPE, ServiceSpec
from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError
from lastro.core.security.service_tokens import ServiceTokenClient, ServiceTokenError
from lastro.core.security.tls import client_context

OPERATIONS: Final = ("export", "erase", "purge")
TIMEOUT_SECONDS: Final = 30.0


class PrivacyCallFailed(Exception):
    """A service did not do what was asked: ``status`` is its HTTP answer (0 when it
    could not be reached), ``detail`` what it said."""

    def __init__(self, service: str, status: int, detail: str) -> None:
        super().__init__(f"{service}: {detail}" if status == 0 else f"{service}: {status} {detail}")
        self.service = service
        self.status = status
        self.detail = detail


Credentials = Callable[[], Awaitable[tuple[str, str]]]


class PrivacyClient:
    """Calls ``/internal/v1/privacy/<operation>`` of registry services; the client
    credentials are resolved on first use (so start-up does not need identity)."""

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        *,
        timeout: float = TIMEOUT_SECONDS,
        retries: int = 3,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._tokens: ServiceTokenClient | None = None
        self._timeout = timeout
        self._retries = retries
        self._calls: dict[str, ResilientCall] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _headers(self, audience: str) -> dict[str, str]:
        if self._tokens is None:
            client_id, secret = await self._credentials()
            self._tokens = ServiceTokenClient.from_settings(
                self._settings, client_id, secret, scope=PRIVACY_SCOPE
            )
        return dict(await self._tokens.headers(audience))

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=client_context(self._settings.ca_file))
            )
        return self._session

    def _call_for(self, service: str) -> ResilientCall:
        if service not in self._calls:
            self._calls[service] = ResilientCall(
                f"privacy-{service}", timeout=self._timeout, retries=self._retries
            )
        return self._calls[service]

    async def close(self) -> None:
        if self._tokens is not None:
            await self._tokens.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        spec: ServiceSpec,
        operation: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """The service's answer to ``operation``; PrivacyCallFailed when it refused
        or stayed unreachable after the retries."""
        if operation not in OPERATIONS or spec.audience is None:
            raise ValueError(f"{spec.name} has no privacy operation {operation!r}")
        audience = spec.audience
        url = f"{self._settings.service_url(spec.name)}/internal/v1/privacy/{operation}"

        async def attempt() -> dict[str, Any]:
            headers = await self._headers(audience)
            if request_id is not None:
                headers["X-Request-Id"] = request_id
            async with self._http().post(url, json=dict(body), headers=headers) as response:
                raw = await response.read()
                if response.status >= 500:
                    raise TransientError(f"{spec.name} answered HTTP {response.status}")
                answer = _json(raw)
                if response.status != 200 or not isinstance(answer, dict):
                    detail = answer.get("detail") if isinstance(answer, dict) else None
                    raise PrivacyCallFailed(spec.name, response.status, str(detail or raw[:200]))
                return answer

        try:
            return await self._call_for(spec.name).call(attempt, idempotent=True)
        except (TransientError, CircuitOpen, TimeoutError, aiohttp.ClientError, OSError) as error:
            raise PrivacyCallFailed(spec.name, 0, f"unreachable: {error}") from error
        except ServiceTokenError as error:
            raise PrivacyCallFailed(spec.name, 0, f"no token: {error}") from error


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None

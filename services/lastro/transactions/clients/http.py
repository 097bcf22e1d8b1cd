"""One dependency over HTTPS: timeout, breaker and retries (``core/resilience.py``),
authentication per call, JSON in and out.

:meth:`Endpoint.request` returns every answer below 500 as it came (the caller
decides what a 404 or a 409 means for money) and raises for the rest:
:class:`~lastro.core.resilience.CircuitOpen` when the breaker refused to try,
``TimeoutError`` or a transport error when no answer came, ``TransientError`` for
5xx/429. :func:`unavailable` turns those into the state machine's ``Unavailable``,
noting whether the request may have reached the receiver.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError
from lastro.transactions.domain.machine import Unavailable

log = logging.getLogger(__name__)

Headers = Callable[[], Awaitable[Mapping[str, str]]]
PROBLEM_PREFIX: Final = "https://lastro.dev/problems/"


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def problem(self) -> str:
        """The problem ``type`` slug of an error answer, with underscores
        (``insufficient-funds`` → ``insufficient_funds``); ``http_<status>`` if none."""
        if isinstance(self.body, dict):
            kind = self.body.get("type") or self.body.get("error") or self.body.get("code")
            if isinstance(kind, str) and kind:
                return kind.removeprefix(PROBLEM_PREFIX).replace("-", "_")
        return f"http_{self.status}"


async def no_headers() -> Mapping[str, str]:
    return {}


class Endpoint:
    """Requests to one base URL through one :class:`ResilientCall`."""

    def __init__(
        self,
        name: str,
        base_url: str,
        session: aiohttp.ClientSession,
        call: ResilientCall,
        headers: Headers = no_headers,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = session
        self.call = call
        self._headers = headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> Answer:
        # Credentials first, outside the call's timeout: a token refresh is the
        # identity service's latency, not this dependency's.
        sent = {**(await self._headers()), **(headers or {})}

        async def attempt() -> Answer:
            data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
            if data is not None:
                sent["Content-Type"] = "application/json"
            async with self._session.request(
                method, f"{self.base_url}{path}", data=data, headers=sent, params=params
            ) as response:
                raw = await response.read()
                if response.status >= 500 or response.status == 429:
                    raise TransientError(f"{self.name} answered {response.status}")
                return Answer(response.status, _json(raw))

        return await self.call.call(attempt, idempotent=idempotent)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def unavailable(name: str, error: BaseException) -> Unavailable:
    """What a failed request means: never reached (breaker open, connection refused)
    or perhaps reached (timeout, reset, 5xx), so a compensation may be owed."""
    never_sent = isinstance(error, CircuitOpen | aiohttp.ClientConnectorError)
    detail = f"{name}: {type(error).__name__}" + (f" ({error})" if str(error) else "")
    return Unavailable(detail[:300], uncertain=not never_sent)


TRANSPORT_ERRORS: Final = (
    CircuitOpen,
    TimeoutError,
    TransientError,
    aiohttp.ClientError,
    OSError,
)
"""What :meth:`Endpoint.request` raises when there was no usable answer."""

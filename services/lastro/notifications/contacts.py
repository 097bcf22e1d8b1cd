"""Who to tell and where: the account service's contact lookup, and the service's own
OAuth client.

Personal data never travels in events, so for each customer a notification concerns
the service asks accounts (``GET /internal/v1/customers/{id}/contact``, service token
for audience ``accounts`` with scope ``customers:contact``) for the owner, e-mail and
phone, at planning time, and keeps them only sealed inside the deliveries it plans.
The lookup is an idempotent GET: timeout, breaker and retries with backoff
(``core.resilience``); an outage raises DependencyUnavailable and planning waits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiohttp

from lastro.core.config import Settings
from lastro.core.errors import DependencyUnavailable
from lastro.core.resilience import CircuitOpen, ResilientCall, TransientError
from lastro.core.security.service_tokens import dev_service_credentials
from lastro.core.security.tls import client_context
from lastro.notifications.domain.preferences import Contact, e164

log = logging.getLogger(__name__)

CONTACT_SCOPE: Final = "customers:contact"
ACCOUNTS: Final = "accounts"

Headers = Callable[[], Awaitable[Mapping[str, str]]]


class ContactDirectory:
    """Contacts from the account service; ``auth`` gives the Authorization header."""

    def __init__(
        self,
        base_url: str,
        auth: Headers,
        ca_file: Path,
        *,
        resilience: ResilientCall | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._auth = auth
        self._ca_file = ca_file
        self._call = resilience or ResilientCall(
            "accounts-contacts", timeout=3.0, retries=2, fail_max=5, reset_timeout=15
        )
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=client_context(self._ca_file))
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def contact(self, customer_id: str) -> Contact | None:
        """The customer's contact, or None when accounts knows no such customer or
        erased them; raises DependencyUnavailable when accounts cannot answer."""
        url = f"{self._base}/internal/v1/customers/{quote(customer_id, safe='')}/contact"

        async def lookup() -> Contact | None:
            headers = await self._auth()
            async with self._http().get(url, headers=headers) as response:
                if response.status in (404, 410):
                    return None
                if response.status != 200:
                    raise TransientError(f"accounts answered HTTP {response.status}")
                body = await response.json()
            return Contact(
                customer_id=customer_id,
                owner=str(body["owner"]),
                email=body.get("email") or None,
                phone=e164(body.get("phone")),
            )

        try:
            return await self._call.call(lookup, idempotent=True)
        except (CircuitOpen, TransientError, TimeoutError, aiohttp.ClientError, OSError) as error:
            raise DependencyUnavailable(f"contact lookup failed: {error}") from error


def client_file(settings: Settings) -> Path:
    """Where the dev stack keeps this service's OAuth client (``client_id:secret``)."""
    return settings.dev_dir / "secrets" / "notifications_client"


async def service_client(settings: Settings) -> tuple[str, str]:
    """This service's client credentials: from ``LASTRO_NOTIFICATIONS_CLIENT_ID`` and
    ``_SECRET``; in dev/test, registered once with the identity service through the
    bootstrap admin client and kept in :func:`client_file`."""
    configured = settings.notifications
    if configured.client_id and configured.client_secret:
        return configured.client_id, configured.client_secret
    if settings.env not in ("dev", "test"):
        raise RuntimeError("LASTRO_NOTIFICATIONS_CLIENT_ID and _CLIENT_SECRET are required")
    return await dev_service_credentials(
        settings,
        "notifications",
        scopes=[CONTACT_SCOPE],
        audiences=[ACCOUNTS],
        secret_file=client_file(settings),
    )

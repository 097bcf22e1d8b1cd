"""The identity service's events: a sign-in from a new device and 2FA changes go to
its outbox, signed, in the transaction of the change, and reach Kafka; the
notification service tells the user's customers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from accounts_app import running_accounts
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    enrol_totp,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    sign_up,
)
from notifications_kit import eventually, mail_to, running_notifications
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.identity.api import DEVICE_COOKIE


class DeviceBrowser(Browser):
    """A browser that keeps its cookies (the device cookie among them) and says who it is."""

    def __init__(self, identity: Identity, client_id: str, user_agent: str) -> None:
        super().__init__(identity, client_id, scope="identity:self")
        self.user_agent = user_agent

    @property
    def cookie(self) -> str | None:
        return self.cookies.get(DEVICE_COOKIE)

    async def submit(
        self, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        return await super().submit(form, {"User-Agent": self.user_agent, **(headers or {})})


@pytest.fixture(scope="module")
async def wallet(identity: Identity) -> str:
    client = await admin_client(
        identity,
        name=f"wallet-{uuid.uuid4().hex[:6]}",
        confidential=False,
        grant_types=["authorization_code"],
        scopes=["identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
    )
    return str(client["client_id"])


async def identity_events(engine: AsyncEngine, identity: Identity, user_id: str) -> list[Any]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                f'SELECT envelope, published_at FROM "{identity.schema}".outbox '
                "WHERE envelope->>'subject' = :user ORDER BY id"
            ),
            {"user": user_id},
        )
        return [tuple(row) for row in rows]


async def user_of(browser: DeviceBrowser, username: str, password: str) -> str:
    tokens = await browser.password_login(username, password)
    return str(jwt_claims(tokens["access_token"])["sub"])


async def test_a_sign_in_from_a_new_device_is_published_once_and_the_first_device_never(
    identity: Identity, wallet: str, engine: AsyncEngine, signer: EventSigner
) -> None:
    username, password = await sign_up(identity)
    laptop = DeviceBrowser(identity, wallet, "Firefox/133 on Linux")
    user_id = await user_of(laptop, username, password)
    assert laptop.cookie is not None
    await laptop.password_login(username, password)
    assert await identity_events(engine, identity, user_id) == []

    phone = DeviceBrowser(identity, wallet, "Safari on iPhone")
    await phone.password_login(username, password)
    await phone.password_login(username, password)
    await laptop.password_login(username, password)

    async def published() -> list[Any] | None:
        found = await identity_events(engine, identity, user_id)
        return found if found and all(at is not None for _, at in found) else None

    ((envelope, _),) = await eventually(published, 30, "the event to reach Kafka")
    event = signer.verify(envelope)
    assert event.type == "lastro.identity.login_new_device"
    assert event.data["user_id"] == user_id
    assert event.data["device"]["user_agent"] == "Safari on iPhone"
    assert event.data["device"]["id"].startswith("dev_")
    assert phone.cookie not in str(envelope) and password not in str(envelope)
    assert event.data["ip"] == "127.0.0.1"


async def test_enabling_and_disabling_two_factor_is_published(
    identity: Identity, wallet: str, engine: AsyncEngine, signer: EventSigner
) -> None:
    username, password = await sign_up(identity)
    browser = DeviceBrowser(identity, wallet, "curl")
    tokens = await browser.password_login(username, password)
    user_id = await user_of(browser, username, password)
    await enrol_totp(identity, tokens["access_token"])
    async with identity.http.delete(
        f"{identity.base}/v1/users/me/totp",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
        json={"password": password},
    ) as response:
        assert response.status == 200, await response.text()
    found = await identity_events(engine, identity, user_id)
    types = [signer.verify(envelope).type for envelope, _ in found]
    assert types == ["lastro.identity.totp_enabled", "lastro.identity.totp_disabled"]


@pytest.fixture(scope="module")
async def told(settings: Settings, engine: AsyncEngine) -> AsyncIterator[Any]:
    async with (
        running_accounts(settings, engine, "identity_events_accounts") as accounts,
        running_notifications(
            settings, engine, "identity_events_notif", accounts=accounts
        ) as notifications,
    ):
        yield accounts, notifications


async def test_the_users_customers_are_told_of_a_new_device_sign_in(
    identity: Identity, wallet: str, settings: Settings, told: Any
) -> None:
    accounts, notifications = told
    username, password = await sign_up(identity)
    laptop = DeviceBrowser(identity, wallet, "Firefox/133 on Linux")
    user_id = await user_of(laptop, username, password)
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    customer = await accounts.call(
        "POST",
        "/v1/customers",
        accounts.customer(user_id),
        expect=201,
        json={"name": "Eva", "email": email, "document_number": uuid.uuid4().hex[:8]},
    )
    await notifications.call(
        "PUT",
        "/v1/preferences",
        notifications.bearer(user_id),
        expect=200,
        json={"customer_id": customer["id"], "locale": "pt-BR", "timezone": "Europe/Lisbon"},
    )

    tablet = DeviceBrowser(identity, wallet, "Chrome on Android tablet")
    await tablet.password_login(username, password)

    (mail,) = await eventually(lambda: _mail(settings, email), 60, "the new-device e-mail")
    assert mail.subject == "Novo acesso à sua conta Lastro"
    body = mail.part("text/plain") or ""
    assert "Chrome on Android tablet" in body and "127.0.0.1" in body
    assert mail.tls.startswith("TLSv1.")


async def _mail(settings: Settings, address: str) -> list[Any]:
    return mail_to(settings, address)

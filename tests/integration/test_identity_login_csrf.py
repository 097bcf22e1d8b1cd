"""Cross-site request forgery on the sign-in forms: the login and TOTP steps are
accepted only with the synchroniser token of the browser's own login form session
(a SameSite=Strict cookie), and a TOTP step only with the ticket opened in it.

A refused submission is a 403 that checks no credential and opens nothing: no
authorization code, no login ticket, no device cookie, no audit record.
"""

from __future__ import annotations

from typing import Any

import pytest
from identity_flows import (
    Browser,
    Identity,
    admin_client,
    enrol_totp,
    hidden_fields,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    next_totp_code,
    sign_up,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.identity.login import CSRF_FIELD, LOGIN_COOKIE


@pytest.fixture(scope="module")
async def user_app(identity: Identity) -> dict[str, Any]:
    return await admin_client(
        identity,
        name="csrf-app",
        confidential=False,
        grant_types=["authorization_code", "refresh_token"],
        scopes=["identity:self", "accounts:read"],
        audiences=["identity", "accounts"],
        redirect_uris=["https://app.example/callback"],
    )


async def _traces(engine: AsyncEngine, schema: str) -> tuple[int, int, int]:
    """Audit records, authorization codes and login tickets in the schema."""
    async with engine.connect() as conn:
        counts = [
            (await conn.execute(text(f'SELECT count(*) FROM "{schema}".{table}'))).scalar_one()
            for table in ("audit_log", "authorization_codes", "login_tickets")
        ]
    return counts[0], counts[1], counts[2]


async def test_the_login_page_opens_a_strict_same_site_form_session(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    browser = Browser(identity, user_app["client_id"])
    async with identity.http.get(browser.authorize_url()) as response:
        assert response.status == 200
        cookie = response.cookies[LOGIN_COOKIE]
    assert cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert cookie["secure"] and cookie["httponly"]
    form = await browser.login_page()
    assert len(form[CSRF_FIELD]) >= 43


async def test_a_forged_login_post_without_the_token_gets_403_and_no_session(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    username, password = await sign_up(identity)
    victim = Browser(identity, user_app["client_id"])
    form = await victim.login_page()  # the victim's browser has a form session
    before = await _traces(engine, identity.schema)

    forged = {k: v for k, v in form.items() if k != CSRF_FIELD}
    response = await victim.submit_password(forged, username, password)
    assert response.status == 403
    assert "Location" not in response.headers
    assert "Set-Cookie" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")

    # A token from another browser's session does not do either.
    attacker = Browser(identity, user_app["client_id"])
    stolen = (await attacker.login_page())[CSRF_FIELD]
    response = await victim.submit_password({**form, CSRF_FIELD: stolen}, username, password)
    assert response.status == 403
    assert await _traces(engine, identity.schema) == before

    # The victim's own form, with its token, still signs in.
    response = await victim.submit_password(form, username, password)
    assert response.status == 302
    status, tokens = await victim.exchange(victim.code_from(response))
    assert status == 200, tokens


async def test_a_form_token_is_spent_by_the_sign_in_it_completes(
    identity: Identity, user_app: dict[str, Any]
) -> None:
    username, password = await sign_up(identity)
    browser = Browser(identity, user_app["client_id"])
    form = await browser.login_page()
    assert (await browser.submit_password(form, username, password)).status == 302
    assert (await browser.submit_password(form, username, password)).status == 403


async def test_the_totp_step_needs_the_session_that_passed_the_password_step(
    identity: Identity, user_app: dict[str, Any], engine: AsyncEngine
) -> None:
    username, password = await sign_up(identity)
    browser = Browser(identity, user_app["client_id"], scope="identity:self")
    tokens = await browser.password_login(username, password)
    totp, _ = await enrol_totp(identity, tokens["access_token"])

    first = Browser(identity, user_app["client_id"])
    response = await first.submit_password(await first.login_page(), username, password)
    assert response.status == 200
    totp_form = hidden_fields(await response.text())
    assert totp_form["ticket"] and totp_form[CSRF_FIELD]

    # Another browser (its own session and token) cannot finish this login with the ticket.
    other = Browser(identity, user_app["client_id"])
    own = await other.login_page()
    before = await _traces(engine, identity.schema)
    carried = {**totp_form, CSRF_FIELD: own[CSRF_FIELD], "step": "otp"}
    response = await other.submit({**carried, "otp": next_totp_code(totp)})
    assert response.status == 403
    assert await _traces(engine, identity.schema) == before

    # Without the token, the right browser is refused too; with it, the login completes.
    without = {k: v for k, v in totp_form.items() if k != CSRF_FIELD}
    response = await first.submit({**without, "step": "otp", "otp": next_totp_code(totp)})
    assert response.status == 403
    response = await first.submit({**totp_form, "step": "otp", "otp": next_totp_code(totp)})
    status, tokens = await first.exchange(first.code_from(response))
    assert status == 200, tokens

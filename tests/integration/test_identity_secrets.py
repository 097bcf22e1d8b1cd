"""Identity's Transit ciphertexts are bound to their owner through associated data.

TOTP seeds carry the user id and signing keys' private halves their kid, so a
ciphertext copied into another row does not decrypt. Rows written before the binding
(identity_0003) stay readable and are re-encrypted bound by the one-off the service
runs when it starts (``bind_legacy_secrets``, ``bind_legacy_keys``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from identity_flows import (
    REDIRECT_URI,
    Browser,
    Identity,
    admin_client,
    enrol_totp,
    jwt_claims,
    module_identity,  # noqa: F401 - provides the `identity` fixture
    next_totp_code,
    sign_up,
)
from joserfc.jwk import ECKey
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.config import Settings
from lastro.core.events import EventSigner
from lastro.core.security.transit import TransitClient, TransitError
from lastro.identity import app as identity_app
from lastro.identity import domain
from lastro.identity.api import KEYS_KEY, SERVICE_KEY
from lastro.identity.keys import TRANSIT_KEY as SIGNING_TRANSIT_KEY
from lastro.identity.keys import SigningKeys
from lastro.identity.service import TOTP_TRANSIT_KEY, recorder_for


@pytest.fixture(scope="module")
async def wallet(identity: Identity) -> dict[str, Any]:
    return await admin_client(
        identity,
        name="secrets-wallet",
        confidential=False,
        grant_types=["authorization_code"],
        scopes=["identity:self"],
        audiences=["identity"],
        redirect_uris=[REDIRECT_URI],
    )


async def _enrolled_user(identity: Identity, wallet: dict[str, Any]) -> tuple[str, str, str, Any]:
    """A user with TOTP enabled: (user id, username, password, TOTP generator)."""
    username, password = await sign_up(identity)
    browser = Browser(identity, wallet["client_id"], scope="identity:self")
    tokens = await browser.password_login(username, password)
    totp, _ = await enrol_totp(identity, tokens["access_token"])
    return jwt_claims(tokens["access_token"])["sub"], username, password, totp


async def _seed_row(engine: AsyncEngine, schema: str, user_id: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text(f'SELECT totp_secret, totp_bound FROM "{schema}".users WHERE id = :id'),
                {"id": user_id},
            )
        ).one()


async def test_a_totp_seed_decrypts_only_for_its_own_user(
    identity: Identity, wallet: dict[str, Any], engine: AsyncEngine, transit: TransitClient
) -> None:
    user_id, _, _, totp = await _enrolled_user(identity, wallet)
    row = await _seed_row(engine, identity.schema, user_id)
    assert row.totp_bound
    binding = domain.totp_seed_binding(user_id)
    seed = await transit.decrypt(TOTP_TRANSIT_KEY, row.totp_secret, associated_data=binding)
    assert seed.decode() == totp.secret
    for wrong in (None, domain.totp_seed_binding("usr_someone_else")):
        with pytest.raises(TransitError):
            await transit.decrypt(TOTP_TRANSIT_KEY, row.totp_secret, associated_data=wrong)


async def test_a_signing_key_decrypts_only_for_its_own_kid(
    identity: Identity, engine: AsyncEngine, transit: TransitClient
) -> None:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    f'SELECT kid, private_jwk, private_bound FROM "{identity.schema}".signing_keys'
                )
            )
        ).all()
    assert rows and all(row.private_bound for row in rows)
    row = rows[0]
    private = await transit.decrypt(
        SIGNING_TRANSIT_KEY, row.private_jwk, associated_data=domain.signing_key_binding(row.kid)
    )
    assert json.loads(private)["kid"] == row.kid
    for wrong in (None, domain.signing_key_binding(f"{row.kid}-other")):
        with pytest.raises(TransitError):
            await transit.decrypt(SIGNING_TRANSIT_KEY, row.private_jwk, associated_data=wrong)


async def test_seeds_written_before_the_binding_still_work_and_are_bound_by_the_one_off(
    identity: Identity, wallet: dict[str, Any], engine: AsyncEngine, transit: TransitClient
) -> None:
    user_id, username, password, totp = await _enrolled_user(identity, wallet)
    # The row as identity_0002 wrote it: the seed encrypted without associated data.
    legacy = await transit.encrypt(TOTP_TRANSIT_KEY, totp.secret.encode())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'UPDATE "{identity.schema}".users SET totp_secret = :c, totp_bound = false'
                " WHERE id = :id"
            ),
            {"c": legacy, "id": user_id},
        )
    browser = Browser(identity, wallet["client_id"], scope="identity:self")
    before = await browser.totp_login(username, password, next_totp_code(totp))
    assert jwt_claims(before["access_token"])["amr"] == ["pwd", "otp"]

    assert await identity.app[SERVICE_KEY].bind_legacy_secrets() >= 1
    row = await _seed_row(engine, identity.schema, user_id)
    assert row.totp_bound and row.totp_secret != legacy
    with pytest.raises(TransitError):
        await transit.decrypt(TOTP_TRANSIT_KEY, row.totp_secret)
    bound = await transit.decrypt(
        TOTP_TRANSIT_KEY, row.totp_secret, associated_data=domain.totp_seed_binding(user_id)
    )
    assert bound.decode() == totp.secret
    assert await identity.app[SERVICE_KEY].bind_legacy_secrets() == 0  # nothing left

    # Sign in again with the bound seed (forgetting the spent step, so that a code
    # of the current step is not a replay of the one just used).
    async with engine.begin() as conn:
        await conn.execute(
            text(f'UPDATE "{identity.schema}".users SET totp_last_step = NULL WHERE id = :id'),
            {"id": user_id},
        )
    browser = Browser(identity, wallet["client_id"], scope="identity:self")
    after = await browser.totp_login(username, password, totp.now())
    assert jwt_claims(after["access_token"])["sub"] == user_id


async def _fresh_keys(
    identity: Identity, settings: Settings, transit: TransitClient
) -> SigningKeys:
    """The key ring as another replica starting now would load it."""
    changes = recorder_for(
        await EventSigner.from_transit(transit, settings.events_key_name),
        await transit.local_hmac_key(settings.audit_key_name),
    )
    keys = SigningKeys(identity.app[identity_app.ENGINE_KEY], transit, changes)
    await keys.reload()
    return keys


async def test_signing_keys_written_before_the_binding_still_sign_and_are_bound(
    identity: Identity, engine: AsyncEngine, transit: TransitClient, settings: Settings
) -> None:
    keys = identity.app[KEYS_KEY]
    kid = await keys.rotate()
    # The new key as identity_0002 wrote it, and not yet decrypted by this process.
    async with engine.connect() as conn:
        ciphertext = await conn.scalar(
            text(f'SELECT private_jwk FROM "{identity.schema}".signing_keys WHERE kid = :k'),
            {"k": kid},
        )
    private = await transit.decrypt(
        SIGNING_TRANSIT_KEY, ciphertext, associated_data=domain.signing_key_binding(kid)
    )
    legacy = await transit.encrypt(SIGNING_TRANSIT_KEY, private)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f'UPDATE "{identity.schema}".signing_keys SET private_jwk = :c,'
                " private_bound = false WHERE kid = :k"
            ),
            {"c": legacy, "k": kid},
        )
    # A process that starts after the upgrade reads it without associated data...
    assert (await (await _fresh_keys(identity, settings, transit)).signing_key()).kid == kid

    assert await keys.bind_legacy_keys() == 1
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    f'SELECT private_jwk, private_bound FROM "{identity.schema}".signing_keys'
                    " WHERE kid = :k"
                ),
                {"k": kid},
            )
        ).one()
    assert row.private_bound and row.private_jwk != legacy
    # ... and, once bound, with it.
    assert (await (await _fresh_keys(identity, settings, transit)).signing_key()).kid == kid
    reopened = await transit.decrypt(
        SIGNING_TRANSIT_KEY, row.private_jwk, associated_data=domain.signing_key_binding(kid)
    )
    assert ECKey.import_key(json.loads(reopened)).kid == kid
    assert await keys.bind_legacy_keys() == 0

"""TransitClient against the dev stack's KMS (``lastro dev up``).

``settings`` (``load_settings()``) and ``transit`` (``TransitClient.from_settings``) come
from the shared conftests. Key names carry a random suffix: the KMS keeps its keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import uuid
from dataclasses import replace

import hvac
import pytest

from lastro.core.config import Settings
from lastro.core.security.transit import TransitClient, TransitError, TransitUnavailable


@pytest.fixture
async def key(transit: TransitClient) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    await transit.ensure_key(name)
    return name


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_kms_reports_healthy(transit: TransitClient) -> None:
    assert await transit.healthy() is True


async def test_encrypt_then_decrypt_round_trips(transit: TransitClient, key: str) -> None:
    ciphertext = await transit.encrypt(key, b"Maria da Silva")
    assert ciphertext.startswith("vault:v1:")
    assert await transit.decrypt(key, ciphertext) == b"Maria da Silva"


async def test_associated_data_binds_a_ciphertext_to_its_owner(
    transit: TransitClient, key: str
) -> None:
    ciphertext = await transit.encrypt(key, b"JBSWY3DPEHPK3PXP", associated_data=b"usr_1")
    assert await transit.decrypt(key, ciphertext, associated_data=b"usr_1") == b"JBSWY3DPEHPK3PXP"
    for other in (b"usr_2", None):
        with pytest.raises(TransitError) as refused:
            await transit.decrypt(key, ciphertext, associated_data=other)
        assert not isinstance(refused.value, TransitUnavailable)


async def test_ensure_key_keeps_existing_versions(transit: TransitClient, key: str) -> None:
    await transit.rotate(key)
    await transit.ensure_key(key)
    assert (await transit.encrypt(key, b"x")).startswith("vault:v2:")


async def test_tampered_ciphertext_is_refused(transit: TransitClient, key: str) -> None:
    raw = bytearray(base64.b64decode((await transit.encrypt(key, b"secret")).split(":")[2]))
    raw[-1] ^= 1
    with pytest.raises(TransitError) as refused:
        await transit.decrypt(key, "vault:v1:" + base64.b64encode(bytes(raw)).decode())
    assert not isinstance(refused.value, TransitUnavailable)


async def test_old_ciphertext_decrypts_after_rotation_and_rewraps_to_latest(
    transit: TransitClient, key: str
) -> None:
    old = await transit.encrypt(key, b"before rotation")
    await transit.rotate(key)
    assert (await transit.encrypt(key, b"after")).startswith("vault:v2:")
    assert await transit.decrypt(key, old) == b"before rotation"
    rewrapped = await transit.rewrap(key, old)
    assert rewrapped.startswith("vault:v2:")
    assert await transit.decrypt(key, rewrapped) == b"before rotation"


async def test_ciphertext_below_min_decryption_version_is_refused(
    transit: TransitClient, key: str, settings: Settings
) -> None:
    old = await transit.encrypt(key, b"old")
    await transit.rotate(key)
    new = await transit.encrypt(key, b"new")
    admin = hvac.Client(
        url=settings.vault_addr, token=settings.vault_token, verify=str(settings.ca_file)
    )
    await asyncio.to_thread(
        admin.secrets.transit.update_key_configuration, key, min_decryption_version=2
    )
    with pytest.raises(TransitError, match="disallowed by policy"):
        await transit.decrypt(key, old)
    assert await transit.decrypt(key, new) == b"new"


async def test_datakey_plaintext_decrypts_from_its_ciphertext(
    transit: TransitClient, key: str
) -> None:
    data_key = await transit.datakey(key)
    assert len(data_key.plaintext) == 32
    assert await transit.decrypt(key, data_key.ciphertext) == data_key.plaintext
    assert base64.b64encode(data_key.plaintext).decode() not in repr(data_key)


async def test_hmac_verifies_and_tampered_input_does_not(transit: TransitClient, key: str) -> None:
    mac = await transit.hmac(key, b"evt_1|100|BRL")
    assert mac.startswith("vault:v1:")
    assert await transit.verify_hmac(key, b"evt_1|100|BRL", mac) is True
    assert await transit.verify_hmac(key, b"evt_1|900|BRL", mac) is False
    assert await transit.verify_hmac(key, b"evt_1|100|BRL", "not-a-mac") is False


async def test_exported_hmac_keys_reproduce_kms_hmacs(transit: TransitClient) -> None:
    name = f"test-events-{uuid.uuid4().hex[:12]}"
    await transit.ensure_key(name, exportable=True)
    await transit.rotate(name)
    keys = await transit.export_hmac_keys(name)
    assert set(keys) == {1, 2}
    local = hmac.digest(keys[2], b"payload", hashlib.sha256)
    assert await transit.hmac(name, b"payload") == "vault:v2:" + base64.b64encode(local).decode()


async def test_ensure_key_makes_an_existing_key_exportable(
    transit: TransitClient, key: str
) -> None:
    with pytest.raises(TransitError, match="not exportable"):
        await transit.export_hmac_keys(key)
    await transit.ensure_key(key, exportable=True)
    assert set(await transit.export_hmac_keys(key)) == {1}


async def test_wrong_token_is_refused(settings: Settings, key: str) -> None:
    intruder = TransitClient.from_settings(replace(settings, vault_token="wrong-token"))
    try:
        with pytest.raises(TransitError, match="permission denied"):
            await intruder.encrypt(key, b"x")
    finally:
        await intruder.close()


async def test_unreachable_kms_is_unavailable_not_refused(settings: Settings) -> None:
    address = f"https://127.0.0.1:{_unused_port()}"
    down = TransitClient.from_settings(replace(settings, vault_addr=address), timeout=2)
    try:
        assert await down.healthy() is False
        with pytest.raises(TransitUnavailable):
            await down.encrypt("any", b"x")
    finally:
        await down.close()

"""The dev KMS, driven by the real hvac client over real HTTPS.

The KMS is our stand-in for a third-party product (Vault Transit), so it runs in-process
on a random port with a dev-CA certificate; hvac (synchronous) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from aiohttp.test_utils import TestServer

from lastro.core.security.tls import server_context
from lastro.devstack.bootstrap import bootstrap_promtool
from lastro.devstack.ca import DevCA
from lastro.devstack.kms import MASTER_KEY_ENV, build_app, main
from lastro.devstack.kms_keyring import KEY_FILE, KeyringError

TOKEN = "root-token-for-tests"
MASTER_KEY = bytes(range(32))

StartKMS = Callable[..., Awaitable[TestServer]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def call(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(func, *args, **kwargs)


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    ca = DevCA(tmp_path_factory.mktemp("ca"))
    ca.issue("kms")
    return ca


@pytest.fixture
async def start_kms(dev_ca: DevCA) -> AsyncIterator[StartKMS]:
    issued = dev_ca.issue("kms")
    servers: list[TestServer] = []

    async def start(data_dir: Path, master_key: bytes = MASTER_KEY) -> TestServer:
        server = TestServer(build_app(data_dir, master_key, TOKEN), host="127.0.0.1")
        await server.start_server(ssl=server_context(issued.cert, issued.key))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


def client_for(server: TestServer, ca: DevCA, token: str = TOKEN) -> hvac.Client:
    return hvac.Client(url=str(server.make_url("")), token=token, verify=str(ca.cert_path))


@pytest.fixture
async def vault(start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA) -> hvac.Client:
    return client_for(await start_kms(tmp_path / "kms"), dev_ca)


async def encrypt(vault: hvac.Client, name: str, plaintext: bytes) -> str:
    response = await call(vault.secrets.transit.encrypt_data, name, b64(plaintext))
    return str(response["data"]["ciphertext"])


async def decrypt(vault: hvac.Client, name: str, ciphertext: str) -> bytes:
    response = await call(vault.secrets.transit.decrypt_data, name, ciphertext)
    return base64.b64decode(response["data"]["plaintext"])


async def test_encrypt_then_decrypt_round_trips(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    ciphertext = await encrypt(vault, "pii", b"Maria da Silva")
    assert ciphertext.startswith("vault:v1:")
    assert b"Maria" not in base64.b64decode(ciphertext.split(":")[2])
    assert await decrypt(vault, "pii", ciphertext) == b"Maria da Silva"
    assert await encrypt(vault, "pii", b"Maria da Silva") != ciphertext


async def test_tampered_ciphertext_is_rejected(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    raw = bytearray(base64.b64decode((await encrypt(vault, "pii", b"secret")).split(":")[2]))
    raw[-1] ^= 1
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        await decrypt(vault, "pii", f"vault:v1:{b64(bytes(raw))}")


async def test_rotated_key_encrypts_with_new_version_and_decrypts_old(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    old = await encrypt(vault, "pii", b"before rotation")
    await call(vault.secrets.transit.rotate_key, "pii")
    new = await encrypt(vault, "pii", b"after rotation")
    assert new.startswith("vault:v2:")
    assert await decrypt(vault, "pii", old) == b"before rotation"
    assert await decrypt(vault, "pii", new) == b"after rotation"
    info = await call(vault.secrets.transit.read_key, "pii")
    assert info["data"]["latest_version"] == 2
    assert set(info["data"]["keys"]) == {"1", "2"}


async def test_rewrap_moves_ciphertext_to_latest_version(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    old = await encrypt(vault, "pii", b"long-lived record")
    await call(vault.secrets.transit.rotate_key, "pii")
    response = await call(vault.secrets.transit.rewrap_data, "pii", old)
    rewrapped = response["data"]["ciphertext"]
    assert rewrapped.startswith("vault:v2:")
    assert await decrypt(vault, "pii", rewrapped) == b"long-lived record"


async def test_min_decryption_version_refuses_older_ciphertext(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    old = await encrypt(vault, "pii", b"old")
    await call(vault.secrets.transit.rotate_key, "pii")
    new = await encrypt(vault, "pii", b"new")
    await call(vault.secrets.transit.update_key_configuration, "pii", min_decryption_version=2)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="disallowed by policy"):
        await decrypt(vault, "pii", old)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="disallowed by policy"):
        await call(vault.secrets.transit.rewrap_data, "pii", old)
    assert await decrypt(vault, "pii", new) == b"new"
    with pytest.raises(hvac.exceptions.InvalidRequest, match="above the latest"):
        await call(vault.secrets.transit.update_key_configuration, "pii", min_decryption_version=3)


async def test_plaintext_datakey_decrypts_from_its_wrapped_form(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "customer-keys")
    response = await call(vault.secrets.transit.generate_data_key, "customer-keys", "plaintext")
    plaintext = base64.b64decode(response["data"]["plaintext"])
    assert len(plaintext) == 32
    assert await decrypt(vault, "customer-keys", response["data"]["ciphertext"]) == plaintext
    wrapped = await call(vault.secrets.transit.generate_data_key, "customer-keys", "wrapped")
    assert "plaintext" not in wrapped["data"]
    assert len(await decrypt(vault, "customer-keys", wrapped["data"]["ciphertext"])) == 32


async def test_hmac_verifies_and_tampered_input_does_not(vault: hvac.Client) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "events")
    mac = (await call(transit.generate_hmac, "events", b64(b"evt_1|100|BRL")))["data"]["hmac"]
    assert mac.startswith("vault:v1:")
    valid = await call(transit.verify_signed_data, "events", b64(b"evt_1|100|BRL"), hmac=mac)
    assert valid["data"]["valid"] is True
    tampered = await call(transit.verify_signed_data, "events", b64(b"evt_1|900|BRL"), hmac=mac)
    assert tampered["data"]["valid"] is False
    suffixed = await call(
        transit.verify_signed_data,
        "events",
        b64(b"evt_1|100|BRL"),
        hmac=mac,
        hash_algorithm="sha2-256",
    )
    assert suffixed["data"]["valid"] is True


async def test_exported_hmac_keys_reproduce_server_hmacs(vault: hvac.Client) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "events", exportable=True)
    await call(transit.rotate_key, "events")
    exported = await call(transit.export_key, "events", key_type="hmac-key")
    keys = {int(v): base64.b64decode(k) for v, k in exported["data"]["keys"].items()}
    assert set(keys) == {1, 2}
    mac = (await call(transit.generate_hmac, "events", b64(b"payload")))["data"]["hmac"]
    local = hmac.digest(keys[2], b"payload", hashlib.sha256)
    assert mac == f"vault:v2:{b64(local)}"
    latest = await call(transit.export_key, "events", key_type="hmac-key", version="latest")
    assert list(latest["data"]["keys"]) == ["2"]


async def test_export_of_non_exportable_key_is_refused(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not exportable"):
        await call(vault.secrets.transit.export_key, "pii", key_type="encryption-key")


async def test_batch_encrypt_and_decrypt(vault: hvac.Client) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "pii")
    batch = [{"plaintext": b64(b"a")}, {"plaintext": b64(b"b")}]
    encrypted = await call(transit.encrypt_data, "pii", "", batch_input=batch)
    ciphertexts = [{"ciphertext": r["ciphertext"]} for r in encrypted["data"]["batch_results"]]
    decrypted = await call(transit.decrypt_data, "pii", "", batch_input=ciphertexts)
    plaintexts = [base64.b64decode(r["plaintext"]) for r in decrypted["data"]["batch_results"]]
    assert plaintexts == [b"a", b"b"]


async def test_derived_key_needs_the_same_context(vault: hvac.Client) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "per-customer", derived=True)
    response = await call(transit.encrypt_data, "per-customer", b64(b"x"), context=b64(b"cus_1"))
    ciphertext = response["data"]["ciphertext"]
    decrypted = await call(transit.decrypt_data, "per-customer", ciphertext, context=b64(b"cus_1"))
    assert base64.b64decode(decrypted["data"]["plaintext"]) == b"x"
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await call(transit.decrypt_data, "per-customer", ciphertext, context=b64(b"cus_2"))


async def test_reading_unknown_key_is_404(vault: hvac.Client) -> None:
    with pytest.raises(hvac.exceptions.InvalidPath):
        await call(vault.secrets.transit.read_key, "missing")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not found"):
        await encrypt(vault, "missing", b"x")


async def test_bad_token_gets_bare_permission_denied(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA
) -> None:
    server = await start_kms(tmp_path / "kms")
    await call(client_for(server, dev_ca).secrets.transit.create_key, "pii")
    base = str(server.make_url("/v1/transit"))
    bodies = set()
    for path in ("/encrypt/pii", "/encrypt/no-such-key", "/keys/pii"):
        for headers in ({}, {"X-Vault-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
            response = await call(
                requests.post,
                base + path,
                json={"plaintext": b64(b"x")},
                headers=headers,
                verify=str(dev_ca.cert_path),
                timeout=5,
            )
            assert response.status_code == 403
            bodies.add(response.content)
    assert [json.loads(body) for body in bodies] == [{"errors": ["permission denied"]}]
    ok = await call(
        requests.post,
        base + "/encrypt/pii",
        json={"plaintext": b64(b"x")},
        headers={"Authorization": f"Bearer {TOKEN}"},
        verify=str(dev_ca.cert_path),
        timeout=5,
    )
    assert ok.status_code == 200
    with pytest.raises(hvac.exceptions.Forbidden):
        await call(client_for(server, dev_ca, "wrong").secrets.transit.read_key, "pii")


async def test_health_needs_no_token(start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA) -> None:
    server = await start_kms(tmp_path / "kms")
    status = await call(client_for(server, dev_ca, "").sys.read_health_status, method="GET")
    assert status["initialized"] is True
    assert status["sealed"] is False


async def test_keys_survive_a_restart(start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA) -> None:
    data_dir = tmp_path / "kms"
    first = await start_kms(data_dir)
    vault = client_for(first, dev_ca)
    await call(vault.secrets.transit.create_key, "pii")
    await call(vault.secrets.transit.rotate_key, "pii")
    await call(vault.secrets.transit.update_key_configuration, "pii", min_decryption_version=2)
    ciphertext = await encrypt(vault, "pii", b"durable")
    await first.close()

    vault = client_for(await start_kms(data_dir), dev_ca)
    assert await decrypt(vault, "pii", ciphertext) == b"durable"
    info = (await call(vault.secrets.transit.read_key, "pii"))["data"]
    assert (info["latest_version"], info["min_decryption_version"]) == (2, 2)


async def test_key_file_holds_no_plaintext_key_material(vault: hvac.Client, tmp_path: Path) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "exportable", exportable=True)
    await call(transit.rotate_key, "exportable")
    materials: list[bytes] = []
    for kind in ("encryption-key", "hmac-key"):
        exported = await call(transit.export_key, "exportable", key_type=kind)
        materials += [base64.b64decode(k) for k in exported["data"]["keys"].values()]
    assert len(set(materials)) == 4
    key_file = tmp_path / "kms" / KEY_FILE
    content = key_file.read_bytes()
    for material in materials:
        for encoding in (material, material.hex().encode(), b64(material).encode()):
            assert encoding not in content
        assert material[:16] not in content
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_wrong_master_key_cannot_open_the_keyring(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA
) -> None:
    data_dir = tmp_path / "kms"
    server = await start_kms(data_dir)
    await call(client_for(server, dev_ca).secrets.transit.create_key, "pii")
    with pytest.raises(KeyringError, match="master key does not open"):
        build_app(data_dir, os.urandom(32), TOKEN)


def test_cli_refuses_to_start_without_master_key(
    tmp_path: Path,
    dev_ca: DevCA,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    issued = dev_ca.issue("kms")
    argv = [
        "--data-dir",
        str(tmp_path / "kms"),
        "--cert",
        str(issued.cert),
        "--key",
        str(issued.key),
    ]
    argv += ["--token-file", str(token_file), "--master-key-file", str(tmp_path / "absent")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "refusing to start" in capsys.readouterr().err
    assert not (tmp_path / "kms").exists()


def test_cli_refuses_to_start_without_token_file(
    tmp_path: Path, dev_ca: DevCA, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = dev_ca.issue("kms")
    argv = [
        "--data-dir",
        str(tmp_path / "kms"),
        "--cert",
        str(issued.cert),
        "--key",
        str(issued.key),
    ]
    argv += ["--token-file", str(tmp_path / "absent")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "root token file" in capsys.readouterr().err


# ------------------------------------------------ associated data, strictness, token, metrics


async def test_associated_data_round_trips_and_wrong_or_missing_data_fails(
    vault: hvac.Client,
) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "pii")
    aad = b64(b"customers/email/cus_1")
    sealed = await call(transit.encrypt_data, "pii", b64(b"ana@example.com"), associated_data=aad)
    ciphertext = sealed["data"]["ciphertext"]
    opened = await call(transit.decrypt_data, "pii", ciphertext, associated_data=aad)
    assert base64.b64decode(opened["data"]["plaintext"]) == b"ana@example.com"
    for wrong in (b64(b"customers/email/cus_2"), None):
        with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
            await call(transit.decrypt_data, "pii", ciphertext, associated_data=wrong)
    plain = await encrypt(vault, "pii", b"no aad")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        await call(transit.decrypt_data, "pii", plain, associated_data=aad)
    # As in Vault, rewrap takes no associated data: it cannot open this ciphertext.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        await call(transit.rewrap_data, "pii", ciphertext)


async def test_associated_data_in_batches_is_per_item(vault: hvac.Client) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "pii")
    items = [
        {"plaintext": b64(b"a"), "associated_data": b64(b"row-1")},
        {"plaintext": b64(b"b"), "associated_data": b64(b"row-2")},
    ]
    sealed = await call(transit.encrypt_data, "pii", "", batch_input=items)
    ciphertexts = [r["ciphertext"] for r in sealed["data"]["batch_results"]]
    swapped = [
        {"ciphertext": ciphertexts[0], "associated_data": b64(b"row-1")},
        {"ciphertext": ciphertexts[1], "associated_data": b64(b"row-1")},
    ]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="authentication failed"):
        await call(transit.decrypt_data, "pii", "", batch_input=swapped)
    matched = [
        {"ciphertext": ciphertexts[0], "associated_data": b64(b"row-1")},
        {"ciphertext": ciphertexts[1], "associated_data": b64(b"row-2")},
    ]
    opened = await call(transit.decrypt_data, "pii", "", batch_input=matched)
    plaintexts = [base64.b64decode(r["plaintext"]) for r in opened["data"]["batch_results"]]
    assert plaintexts == [b"a", b"b"]


async def test_associated_data_that_is_not_base64_is_refused(vault: hvac.Client) -> None:
    await call(vault.secrets.transit.create_key, "pii")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="associated_data"):
        await call(
            vault.secrets.transit.encrypt_data, "pii", b64(b"x"), associated_data="not base64!"
        )


@pytest.mark.parametrize(
    ("operation", "kwargs"),
    [
        ("update_key_configuration", {"auto_rotate_period": "24h"}),
        ("create_key", {"auto_rotate_period": "1h"}),
        ("encrypt_data", {"plaintext": b64(b"x"), "nonce": b64(b"0" * 12)}),
        ("decrypt_data", {"ciphertext": "vault:v1:AAAA", "nonce": b64(b"0" * 12)}),
        ("rewrap_data", {"ciphertext": "vault:v1:AAAA", "nonce": b64(b"0" * 12)}),
        ("generate_data_key", {"key_type": "plaintext", "nonce": b64(b"0" * 12)}),
        ("verify_signed_data", {"hash_input": b64(b"x"), "signature": "vault:v1:AAAA"}),
        (
            "verify_signed_data",
            {"hash_input": b64(b"x"), "hmac": "vault:v1:AAAA", "context": b64(b"c")},
        ),
    ],
)
async def test_fields_the_kms_does_not_implement_are_refused_never_ignored(
    vault: hvac.Client, operation: str, kwargs: dict[str, Any]
) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "pii")
    before = (await call(transit.read_key, "pii"))["data"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
        await call(getattr(transit, operation), "pii", **kwargs)
    message = str(refused.value)
    assert "not supported" in message or "unsupported" in message, message
    assert (await call(transit.read_key, "pii"))["data"] == before


async def test_auto_rotation_off_is_accepted_because_it_is_what_happens(
    vault: hvac.Client,
) -> None:
    transit = vault.secrets.transit
    await call(transit.create_key, "pii", auto_rotate_period="0")
    await call(transit.update_key_configuration, "pii", auto_rotate_period="0s")
    assert (await call(transit.read_key, "pii"))["data"]["auto_rotate_period"] == 0


async def test_unknown_query_parameters_and_raw_fields_are_refused(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA
) -> None:
    server = await start_kms(tmp_path / "kms")
    await call(client_for(server, dev_ca).secrets.transit.create_key, "pii")
    headers = {"X-Vault-Token": TOKEN}
    verify = str(dev_ca.cert_path)
    encrypt_url = str(server.make_url("/v1/transit/encrypt/pii"))
    cases = [
        (encrypt_url + "?version=2", {"plaintext": b64(b"x")}, "version"),
        (encrypt_url, {"plaintext": b64(b"x"), "partial_failure_response_code": 400}, "partial"),
        (encrypt_url, {"batch_input": [{"plaintext": b64(b"x"), "nonce": "AA=="}]}, "nonce"),
        (encrypt_url, {"plaintext": b64(b"x"), "name": "other"}, "name"),
    ]
    for url, body, named in cases:
        response = await call(
            requests.post, url, json=body, headers=headers, verify=verify, timeout=5
        )
        assert response.status_code == 400, (url, body, response.text)
        assert named in response.json()["errors"][0]


async def test_token_lookup_self_makes_hvac_see_an_authenticated_client(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA
) -> None:
    server = await start_kms(tmp_path / "kms")
    good = client_for(server, dev_ca)
    assert await call(good.is_authenticated) is True
    looked_up = await call(good.auth.token.lookup_self)
    assert looked_up["data"]["id"] == TOKEN
    assert looked_up["data"]["policies"] == ["root"]
    assert await call(client_for(server, dev_ca, "wrong").is_authenticated) is False


@pytest.fixture(scope="module")
def promtool() -> str:
    return bootstrap_promtool()


async def test_metrics_count_requests_by_path_and_status_and_pass_promtool(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA, promtool: str
) -> None:
    server = await start_kms(tmp_path / "kms")
    vault = client_for(server, dev_ca)
    await call(vault.secrets.transit.create_key, "pii")
    ciphertext = await encrypt(vault, "pii", b"x")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        await call(vault.secrets.transit.decrypt_data, "pii", ciphertext + "A")
    url = str(server.make_url("/v1/sys/metrics"))
    verify = str(dev_ca.cert_path)
    response = await call(
        requests.get,
        url,
        params={"format": "prometheus"},
        headers={"X-Vault-Token": TOKEN},
        verify=verify,
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.text
    assert (
        'lastro_kms_requests_total{method="POST",path="/v1/transit/encrypt/{name}",status="200"}'
        " 1.0" in text
    )
    assert (
        'lastro_kms_requests_total{method="POST",path="/v1/transit/decrypt/{name}",status="400"}'
        " 1.0" in text
    )
    assert 'lastro_kms_request_duration_seconds_count{method="POST",path="/v1/transit/' in text
    lint = await call(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    unauthenticated = await call(
        requests.get, url, params={"format": "prometheus"}, verify=verify, timeout=5
    )
    assert unauthenticated.status_code == 403
    other_format = await call(
        requests.get, url, headers={"X-Vault-Token": TOKEN}, verify=verify, timeout=5
    )
    assert other_format.status_code == 400


async def test_every_kms_answer_carries_the_security_headers(
    start_kms: StartKMS, tmp_path: Path, dev_ca: DevCA
) -> None:
    server = await start_kms(tmp_path / "kms")
    verify = str(dev_ca.cert_path)
    for path, headers in (
        ("/v1/sys/health", {}),
        ("/v1/transit/keys/pii", {}),
        ("/v1/transit/keys/missing", {"X-Vault-Token": TOKEN}),
        ("/v1/nowhere", {"X-Vault-Token": TOKEN}),
    ):
        response = await call(
            requests.get, str(server.make_url(path)), headers=headers, verify=verify, timeout=5
        )
        assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Server"] == "lastro"

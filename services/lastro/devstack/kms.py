"""The development KMS: the subset of HashiCorp Vault's Transit HTTP API that Lastro uses.

hvac talks to it exactly as to Vault (``/v1/transit/...`` on the default mount and
``/v1/sys/health``), so production only points ``LASTRO_VAULT_ADDR`` at Vault or OpenBao.
Served endpoints: ``keys/:name`` (create, read), ``keys/:name/rotate``,
``keys/:name/config``, ``encrypt``, ``decrypt``, ``rewrap`` (all with ``batch_input``),
``datakey/plaintext|wrapped``, ``hmac``, ``verify`` (HMAC) and ``export`` of encryption
and HMAC keys. Key material handling is in :mod:`lastro.devstack.kms_keyring`.

Guarantees:
- Every ``/v1/transit`` request needs the root token (``X-Vault-Token`` or
  ``Authorization: Bearer``), compared in constant time. Without it the answer is 403
  ``{"errors": ["permission denied"]}`` before any key is looked up, so it says nothing
  about which keys exist.
- Errors are Vault's shape, ``{"errors": [...]}``: 400 for bad input or a policy refusal
  (such as a ciphertext older than ``min_decryption_version``), 404 for reading or
  exporting an unknown key.
- Stricter than Vault in one way: encrypting with a missing key does not create it, so a
  misspelt key name fails here instead of silently creating a new key.

Run: ``python -m lastro.devstack.kms --data-dir DIR --cert CERT --key KEY
--token-file FILE --master-key-file FILE`` (or the master key in ``LASTRO_KMS_MASTER_KEY``).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from lastro.core.security.tls import server_context
from lastro.devstack.kms_keyring import (
    HASH_ALGORITHMS,
    MASTER_KEY_BYTES,
    Keyring,
    KeyringError,
    KMSError,
    TransitKey,
    b64decode,
    b64encode,
)

MASTER_KEY_ENV: Final = "LASTRO_KMS_MASTER_KEY"
TRANSIT: Final = "/v1/transit"
DATA_KEY_BITS: Final = (128, 256, 512)

KEYRING = web.AppKey("keyring", Keyring)
ROOT_TOKEN = web.AppKey("root_token", bytes)

log = logging.getLogger("lastro.devstack.kms")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Body = Mapping[str, Any]


class StartupError(RuntimeError):
    """The KMS cannot start; the message says what is missing."""


def _errors(status: int, *messages: str) -> web.Response:
    return web.json_response({"errors": list(messages)}, status=status)


def _data(data: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(
        {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": data,
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        },
        status=status,
    )


def _presented_token(request: web.Request) -> str:
    token = request.headers.get("X-Vault-Token", "")
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            token = value.strip()
    return token


@web.middleware
async def _vault_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate first, then map refusals to Vault's error shape."""
    if request.path != "/v1/sys/health":
        presented = _presented_token(request).encode()
        if not hmac.compare_digest(presented, request.app[ROOT_TOKEN]):
            return _errors(403, "permission denied")
    try:
        return await handler(request)
    except KMSError as exc:
        return _errors(exc.status, exc.message)
    except web.HTTPNotFound:
        return _errors(404, "unsupported path")
    except web.HTTPMethodNotAllowed:
        return _errors(405, "unsupported operation")


async def _body(request: web.Request) -> Body:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise KMSError("failed to parse JSON input") from None
    if not isinstance(body, dict):
        raise KMSError("request body must be a JSON object")
    return body


def _int(body: Body, name: str, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise KMSError(f"'{name}' must be an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise KMSError(f"'{name}' must be an integer") from None


def _bool(body: Body, name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise KMSError(f"'{name}' must be a boolean")


def _context(key: TransitKey, item: Body) -> bytes | None:
    """The derivation context; as in Vault, it only matters for derived keys."""
    if not key.derived or item.get("context") in (None, ""):
        return None
    return b64decode(item["context"], "context")


def _key_version(item: Body) -> int:
    """The requested key version; 0 means the latest."""
    return _int(item, "key_version", 0) or 0


def _sealed(ciphertext: str) -> dict[str, Any]:
    return {"ciphertext": ciphertext, "key_version": int(ciphertext.split(":")[1][1:])}


def _batch(body: Body, operation: Callable[[Body], dict[str, Any]]) -> web.Response:
    """One item, or ``batch_input``: per-item results, 400 if any item failed (as Vault)."""
    items = body.get("batch_input")
    if items is None:
        return _data(operation(body))
    if not isinstance(items, list) or not items:
        raise KMSError("'batch_input' must be a non-empty list")
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    for item in items:
        try:
            if not isinstance(item, dict):
                raise KMSError("each batch item must be a JSON object")
            result = operation(item)
        except KMSError as exc:
            result = {"error": exc.message}
            failures.append(exc.message)
        if isinstance(item, dict) and "reference" in item:
            result["reference"] = item["reference"]
        results.append(result)
    if failures:
        return web.json_response(
            {"errors": failures, "data": {"batch_results": results}}, status=400
        )
    return _data({"batch_results": results})


def _key(request: web.Request) -> TransitKey:
    return request.app[KEYRING].get(request.match_info["name"])


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    if body.get("type", "aes256-gcm96") != "aes256-gcm96":
        raise KMSError(f"unsupported key type {body['type']!r}: only aes256-gcm96")
    if _bool(body, "convergent_encryption"):
        raise KMSError("convergent encryption is not supported")
    key = request.app[KEYRING].create(
        request.match_info["name"],
        derived=bool(_bool(body, "derived")),
        exportable=bool(_bool(body, "exportable")),
        backup=bool(_bool(body, "allow_plaintext_backup")),
    )
    return _data(key.metadata())


async def read_key(request: web.Request) -> web.Response:
    key = request.app[KEYRING].find(request.match_info["name"])
    if key is None:
        raise KMSError("key not found", status=404)
    return _data(key.metadata())


async def rotate_key(request: web.Request) -> web.Response:
    key = _key(request)
    key.rotate()
    request.app[KEYRING].save()
    return _data(key.metadata())


async def configure_key(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)
    key.configure(
        min_decryption_version=_int(body, "min_decryption_version"),
        min_encryption_version=_int(body, "min_encryption_version"),
        exportable=_bool(body, "exportable"),
        deletion_allowed=_bool(body, "deletion_allowed"),
        allow_plaintext_backup=_bool(body, "allow_plaintext_backup"),
    )
    request.app[KEYRING].save()
    return _data(key.metadata())


async def encrypt(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        if "plaintext" not in item:
            raise KMSError("missing plaintext to encrypt")
        plaintext = b64decode(item["plaintext"], "plaintext")
        return _sealed(key.encrypt(plaintext, _context(key, item), _key_version(item)))

    return _batch(body, one)


async def decrypt(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        plaintext = key.decrypt(item.get("ciphertext"), _context(key, item))
        return {"plaintext": b64encode(plaintext)}

    return _batch(body, one)


async def rewrap(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        context = _context(key, item)
        plaintext = key.decrypt(item.get("ciphertext"), context)
        return _sealed(key.encrypt(plaintext, context, _key_version(item)))

    return _batch(body, one)


async def datakey(request: web.Request) -> web.Response:
    body = await _body(request)
    kind = request.match_info["kind"]
    if kind not in ("plaintext", "wrapped"):
        raise KMSError("datakey type must be 'plaintext' or 'wrapped'")
    key = _key(request)
    bits = _int(body, "bits", 256)
    if bits not in DATA_KEY_BITS:
        raise KMSError("'bits' must be 128, 256 or 512")
    fresh = os.urandom(bits // 8)
    data = _sealed(key.encrypt(fresh, _context(key, body)))
    if kind == "plaintext":
        data["plaintext"] = b64encode(fresh)
    return _data(data)


def _algorithm(request: web.Request, body: Body, field: str) -> str:
    """The hash from the URL suffix, else the body field, else sha2-256 (Vault's default)."""
    algorithm = request.match_info.get("algorithm") or body.get(field) or "sha2-256"
    if algorithm not in HASH_ALGORITHMS:
        raise KMSError(f"unsupported algorithm {algorithm!r}")
    return str(algorithm)


async def generate_hmac(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)
    algorithm = _algorithm(request, body, "algorithm")
    data = b64decode(body.get("input"), "input")
    return _data({"hmac": key.hmac(data, algorithm, _key_version(body))})


async def verify(request: web.Request) -> web.Response:
    body = await _body(request)
    key = _key(request)
    if "hmac" not in body:
        raise KMSError("only HMAC verification ('hmac') is supported for aes256-gcm96 keys")
    algorithm = _algorithm(request, body, "hash_algorithm")
    data = b64decode(body.get("input"), "input")
    return _data({"valid": key.verify_hmac(data, body["hmac"], algorithm)})


async def export_key(request: web.Request) -> web.Response:
    key = request.app[KEYRING].find(request.match_info["name"])
    if key is None:
        raise KMSError("key not found", status=404)
    exported = key.export(request.match_info["kind"], request.match_info.get("version"))
    return _data(
        {
            "name": key.name,
            "type": "aes256-gcm96",
            "keys": {str(v): b64encode(material) for v, material in exported.items()},
        }
    )


async def health(_: web.Request) -> web.Response:
    return web.json_response(
        {
            "initialized": True,
            "sealed": False,
            "standby": False,
            "performance_standby": False,
            "replication_performance_mode": "disabled",
            "replication_dr_mode": "disabled",
            "server_time_utc": int(time.time()),
            "version": "lastro-dev-kms",
            "cluster_name": "lastro-dev",
        }
    )


def build_app(data_dir: Path, master_key: bytes, root_token: str) -> web.Application:
    """The KMS application over the keyring in ``data_dir``.

    Raises KeyringError when the key file exists but the master key does not open it.
    """
    if not root_token:
        raise StartupError("the root token must not be empty")
    app = web.Application(middlewares=[_vault_api])
    app[KEYRING] = Keyring(data_dir, master_key)
    app[ROOT_TOKEN] = root_token.encode()
    name = "{name:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}}"
    app.router.add_get("/v1/sys/health", health)
    app.router.add_post(f"{TRANSIT}/keys/{name}", create_key)
    app.router.add_get(f"{TRANSIT}/keys/{name}", read_key)
    app.router.add_post(f"{TRANSIT}/keys/{name}/rotate", rotate_key)
    app.router.add_post(f"{TRANSIT}/keys/{name}/config", configure_key)
    app.router.add_post(f"{TRANSIT}/encrypt/{name}", encrypt)
    app.router.add_post(f"{TRANSIT}/decrypt/{name}", decrypt)
    app.router.add_post(f"{TRANSIT}/rewrap/{name}", rewrap)
    app.router.add_post(f"{TRANSIT}/datakey/{{kind}}/{name}", datakey)
    app.router.add_post(f"{TRANSIT}/hmac/{name}", generate_hmac)
    app.router.add_post(f"{TRANSIT}/hmac/{name}/{{algorithm}}", generate_hmac)
    app.router.add_post(f"{TRANSIT}/verify/{name}", verify)
    app.router.add_post(f"{TRANSIT}/verify/{name}/{{algorithm}}", verify)
    app.router.add_get(f"{TRANSIT}/export/{{kind}}/{name}", export_key)
    app.router.add_get(f"{TRANSIT}/export/{{kind}}/{name}/{{version}}", export_key)
    return app


def load_master_key(path: Path | None, env: Mapping[str, str]) -> bytes:
    """The master key from ``LASTRO_KMS_MASTER_KEY`` or else the file (base64 of 32 bytes)."""
    encoded = env.get(MASTER_KEY_ENV, "")
    source = MASTER_KEY_ENV
    if not encoded:
        if path is None or not path.is_file():
            raise StartupError(
                f"no master key: master key file {path} does not exist and {MASTER_KEY_ENV} "
                "is not set (`lastro dev up` creates the file)"
            )
        encoded, source = path.read_text().strip(), str(path)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise StartupError(f"master key in {source} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise StartupError(f"master key in {source} must be {MASTER_KEY_BYTES} bytes")
    return key


def _read_required(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StartupError(f"{what} {path} does not exist (`lastro dev up` creates it)")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lastro.devstack.kms",
        description="Local KMS serving the Vault Transit HTTP API subset Lastro uses.",
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--master-key-file", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        token_file = _read_required(args.token_file, "root token file")
        root_token = token_file.read_text().strip()
        master_key = load_master_key(args.master_key_file, os.environ)
        ssl_context = server_context(
            _read_required(args.cert, "certificate"), _read_required(args.key, "private key")
        )
        app = build_app(args.data_dir, master_key, root_token)
    except (StartupError, KeyringError) as exc:
        parser.exit(2, f"lastro-kms: refusing to start: {exc}\n")
    log.info("lastro-kms serving https://%s:%d (keys in %s)", args.host, args.port, args.data_dir)
    web.run_app(app, host=args.host, port=args.port, ssl_context=ssl_context, print=None)


if __name__ == "__main__":
    main()

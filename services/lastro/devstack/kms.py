"""The development KMS: the subset of HashiCorp Vault's Transit HTTP API that Lastro uses.

hvac talks to it exactly as to Vault (``/v1/transit/...`` on the default mount,
``/v1/sys/health``, ``/v1/auth/token/lookup-self``), so production only points
``LASTRO_VAULT_ADDR`` at Vault or OpenBao. Served endpoints: ``keys/:name`` (create,
read), ``keys/:name/rotate``, ``keys/:name/config``, ``encrypt``, ``decrypt``, ``rewrap``
(all with ``batch_input``), ``datakey/plaintext|wrapped``, ``hmac``, ``verify`` (HMAC),
``export`` of encryption and HMAC keys, ``auth/token/lookup-self`` (so
``hvac.Client.is_authenticated()`` works) and ``sys/metrics?format=prometheus``
(requests by route, method and status, and latency). Key material handling is in
:mod:`lastro.devstack.kms_keyring`.

Guarantees:
- Every path but ``/v1/sys/health`` needs the root token (``X-Vault-Token`` or
  ``Authorization: Bearer``), compared in constant time. Without it the answer is 403
  ``{"errors": ["permission denied"]}`` before any key is looked up, so it says nothing
  about which keys exist.
- Errors are Vault's shape, ``{"errors": [...]}``: 400 for bad input or a policy refusal
  (such as a ciphertext older than ``min_decryption_version``), 404 for reading or
  exporting an unknown key.
- ``associated_data`` (base64) on ``encrypt`` and ``decrypt`` is authenticated by
  AES-GCM as Vault does for ``aes256-gcm96`` keys: decrypting with other associated
  data, or none, fails with 400 ``cipher: message authentication failed``.
- Stricter than Vault in two ways, so a caller never relies on something that is not
  there: encrypting with a missing key does not create it (a misspelt key name fails
  instead of silently creating a new key), and a body field or query parameter this
  KMS does not implement (``auto_rotate_period`` other than 0, ``nonce``,
  ``partial_failure_response_code``, a field of another endpoint...) is a 400 naming
  it, where Vault would honour it or ignore it with a warning.
- Every response carries the platform's security headers (``core/security/headers.py``).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.exposition import generate_latest

from lastro.core.security.headers import security_headers
from lastro.core.security.tls import server_context
from lastro.devstack.kms_keyring import (
    HASH_ALGORITHMS,
    KEY_TYPE,
    MASTER_KEY_BYTES,
    Keyring,
    KeyringError,
    KMSError,
    TransitKey,
    b64decode,
    b64encode,
)
from lastro.devstack.kms_protocol import (
    Body,
    Handler,
    batch,
    bool_field,
    envelope,
    errors,
    int_field,
    metrics_middleware,
    only,
    presented_token,
    read_body,
)

MASTER_KEY_ENV: Final = "LASTRO_KMS_MASTER_KEY"
TRANSIT: Final = "/v1/transit"
DATA_KEY_BITS: Final = (128, 256, 512)

KEYRING = web.AppKey("keyring", Keyring)
ROOT_TOKEN = web.AppKey("root_token", bytes)
METRICS = web.AppKey("metrics", CollectorRegistry)
TOKEN_CREATED = web.AppKey("token_created", int)

log = logging.getLogger("lastro.devstack.kms")


class StartupError(RuntimeError):
    """The KMS cannot start; the message says what is missing."""


@web.middleware
async def _vault_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate first, then map refusals to Vault's error shape."""
    if request.path != "/v1/sys/health":
        presented = presented_token(request).encode()
        if not hmac.compare_digest(presented, request.app[ROOT_TOKEN]):
            return errors(403, "permission denied")
    try:
        return await handler(request)
    except KMSError as exc:
        return errors(exc.status, exc.message)
    except web.HTTPNotFound:
        return errors(404, "unsupported path")
    except web.HTTPMethodNotAllowed:
        return errors(405, "unsupported operation")


def _context(key: TransitKey, item: Body) -> bytes | None:
    """The derivation context; as in Vault, it only matters for derived keys."""
    if not key.derived or item.get("context") in (None, ""):
        return None
    return b64decode(item["context"], "context")


def _associated_data(item: Body) -> bytes | None:
    """AES-GCM associated data (base64); empty or absent means none, as in Vault."""
    if item.get("associated_data") in (None, ""):
        return None
    return b64decode(item["associated_data"], "associated_data")


def _no_convergence(item: Body) -> None:
    if item.get("type", KEY_TYPE) != KEY_TYPE:
        raise KMSError(f"unsupported key type {item['type']!r}: only {KEY_TYPE}")
    if bool_field(item, "convergent_encryption"):
        raise KMSError("convergent encryption is not supported")


def _auto_rotation_off(body: Body) -> None:
    """``auto_rotate_period`` is accepted only as 0 (off), which is what happens."""
    value = body.get("auto_rotate_period")
    if value in (None, 0, "0", "0s", "0m", "0h"):
        return
    raise KMSError("automatic key rotation is not supported: 'auto_rotate_period' must be 0")


def _key_version(item: Body) -> int:
    """The requested key version; 0 means the latest."""
    return int_field(item, "key_version", 0) or 0


def _sealed(ciphertext: str) -> dict[str, Any]:
    return {"ciphertext": ciphertext, "key_version": int(ciphertext.split(":")[1][1:])}


def _key(request: web.Request) -> TransitKey:
    return request.app[KEYRING].get(request.match_info["name"])


CREATE_FIELDS: Final = frozenset(
    {"type", "convergent_encryption", "derived", "exportable", "allow_plaintext_backup"}
    | {"auto_rotate_period"}
)
CONFIG_FIELDS: Final = frozenset(
    {
        "min_decryption_version",
        "min_encryption_version",
        "exportable",
        "deletion_allowed",
        "allow_plaintext_backup",
        "auto_rotate_period",
    }
)
ENCRYPT_ITEM_FIELDS: Final = frozenset(
    {"plaintext", "context", "key_version", "associated_data", "reference"}
)
ENCRYPT_FIELDS: Final = ENCRYPT_ITEM_FIELDS | {"batch_input", "type", "convergent_encryption"}
DECRYPT_ITEM_FIELDS: Final = frozenset({"ciphertext", "context", "associated_data", "reference"})
DECRYPT_FIELDS: Final = DECRYPT_ITEM_FIELDS | {"batch_input"}
REWRAP_ITEM_FIELDS: Final = frozenset({"ciphertext", "context", "key_version", "reference"})
REWRAP_FIELDS: Final = REWRAP_ITEM_FIELDS | {"batch_input"}
DATAKEY_FIELDS: Final = frozenset({"context", "bits"})
HMAC_FIELDS: Final = frozenset({"input", "key_version", "algorithm"})
VERIFY_FIELDS: Final = frozenset({"input", "hmac", "hash_algorithm"})
HEALTH_PARAMETERS: Final = frozenset(
    {
        "standbyok",
        "perfstandbyok",
        "activecode",
        "standbycode",
        "drsecondarycode",
        "performancestandbycode",
        "sealedcode",
        "uninitcode",
    }
)


async def create_key(request: web.Request) -> web.Response:
    body = await read_body(request, CREATE_FIELDS)
    _no_convergence(body)
    _auto_rotation_off(body)
    key = request.app[KEYRING].create(
        request.match_info["name"],
        derived=bool(bool_field(body, "derived")),
        exportable=bool(bool_field(body, "exportable")),
        backup=bool(bool_field(body, "allow_plaintext_backup")),
    )
    return envelope(key.metadata())


async def read_key(request: web.Request) -> web.Response:
    await read_body(request)
    key = request.app[KEYRING].find(request.match_info["name"])
    if key is None:
        raise KMSError("key not found", status=404)
    return envelope(key.metadata())


async def rotate_key(request: web.Request) -> web.Response:
    await read_body(request)
    key = _key(request)
    key.rotate()
    request.app[KEYRING].save()
    return envelope(key.metadata())


async def configure_key(request: web.Request) -> web.Response:
    body = await read_body(request, CONFIG_FIELDS)
    _auto_rotation_off(body)
    key = _key(request)
    key.configure(
        min_decryption_version=int_field(body, "min_decryption_version"),
        min_encryption_version=int_field(body, "min_encryption_version"),
        exportable=bool_field(body, "exportable"),
        deletion_allowed=bool_field(body, "deletion_allowed"),
        allow_plaintext_backup=bool_field(body, "allow_plaintext_backup"),
    )
    request.app[KEYRING].save()
    return envelope(key.metadata())


async def encrypt(request: web.Request) -> web.Response:
    body = await read_body(request, ENCRYPT_FIELDS)
    _no_convergence(body)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        if "plaintext" not in item:
            raise KMSError("missing plaintext to encrypt")
        plaintext = b64decode(item["plaintext"], "plaintext")
        sealed = key.encrypt(
            plaintext, _context(key, item), _key_version(item), _associated_data(item)
        )
        return _sealed(sealed)

    return batch(body, one, ENCRYPT_ITEM_FIELDS)


async def decrypt(request: web.Request) -> web.Response:
    body = await read_body(request, DECRYPT_FIELDS)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        context, aad = _context(key, item), _associated_data(item)
        return {"plaintext": b64encode(key.decrypt(item.get("ciphertext"), context, aad))}

    return batch(body, one, DECRYPT_ITEM_FIELDS)


async def rewrap(request: web.Request) -> web.Response:
    """As in Vault, rewrap takes no associated data: a ciphertext sealed with some
    cannot be rewrapped (it fails authentication)."""
    body = await read_body(request, REWRAP_FIELDS)
    key = _key(request)

    def one(item: Body) -> dict[str, Any]:
        context = _context(key, item)
        plaintext = key.decrypt(item.get("ciphertext"), context)
        return _sealed(key.encrypt(plaintext, context, _key_version(item)))

    return batch(body, one, REWRAP_ITEM_FIELDS)


async def datakey(request: web.Request) -> web.Response:
    body = await read_body(request, DATAKEY_FIELDS)
    kind = request.match_info["kind"]
    if kind not in ("plaintext", "wrapped"):
        raise KMSError("datakey type must be 'plaintext' or 'wrapped'")
    key = _key(request)
    bits = int_field(body, "bits", 256)
    if bits not in DATA_KEY_BITS:
        raise KMSError("'bits' must be 128, 256 or 512")
    fresh = os.urandom(bits // 8)
    data = _sealed(key.encrypt(fresh, _context(key, body)))
    if kind == "plaintext":
        data["plaintext"] = b64encode(fresh)
    return envelope(data)


def _algorithm(request: web.Request, body: Body, field: str) -> str:
    """The hash from the URL suffix, else the body field, else sha2-256 (Vault's default)."""
    algorithm = request.match_info.get("algorithm") or body.get(field) or "sha2-256"
    if algorithm not in HASH_ALGORITHMS:
        raise KMSError(f"unsupported algorithm {algorithm!r}")
    return str(algorithm)


async def generate_hmac(request: web.Request) -> web.Response:
    body = await read_body(request, HMAC_FIELDS)
    key = _key(request)
    algorithm = _algorithm(request, body, "algorithm")
    data = b64decode(body.get("input"), "input")
    return envelope({"hmac": key.hmac(data, algorithm, _key_version(body))})


async def verify(request: web.Request) -> web.Response:
    body = await read_body(request, (*VERIFY_FIELDS, "signature"))
    key = _key(request)
    if "hmac" not in body:
        raise KMSError("signature verification is not supported: aes256-gcm96 keys verify 'hmac'")
    algorithm = _algorithm(request, body, "hash_algorithm")
    data = b64decode(body.get("input"), "input")
    return envelope({"valid": key.verify_hmac(data, body["hmac"], algorithm)})


async def export_key(request: web.Request) -> web.Response:
    await read_body(request)
    key = request.app[KEYRING].find(request.match_info["name"])
    if key is None:
        raise KMSError("key not found", status=404)
    exported = key.export(request.match_info["kind"], request.match_info.get("version"))
    return envelope(
        {
            "name": key.name,
            "type": "aes256-gcm96",
            "keys": {str(v): b64encode(material) for v, material in exported.items()},
        }
    )


async def health(request: web.Request) -> web.Response:
    """Always initialized, unsealed and active: of Vault's status-code parameters only
    ``activecode`` can apply, the others name states this KMS is never in."""
    only(request.query, HEALTH_PARAMETERS, "query parameter(s)")
    status = int_field(request.query, "activecode", 200)
    if status is None or not 100 <= status <= 599:
        raise KMSError("'activecode' must be an HTTP status code")
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
        },
        status=status,
    )


async def lookup_self(request: web.Request) -> web.Response:
    """The presented (root) token, as Vault describes a root token; it never expires."""
    await read_body(request)
    return envelope(
        {
            "accessor": "",
            "creation_time": request.app[TOKEN_CREATED],
            "creation_ttl": 0,
            "display_name": "root",
            "entity_id": "",
            "expire_time": None,
            "explicit_max_ttl": 0,
            "id": request.app[ROOT_TOKEN].decode(),
            "meta": None,
            "num_uses": 0,
            "orphan": True,
            "path": "auth/token/root",
            "policies": ["root"],
            "renewable": False,
            "ttl": 0,
            "type": "service",
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition; Vault's other formats are not served."""
    only(request.query, ("format",), "query parameter(s)")
    if request.query.get("format") != "prometheus":
        raise KMSError("only format=prometheus is supported")
    body = generate_latest(request.app[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(data_dir: Path, master_key: bytes, root_token: str) -> web.Application:
    """The KMS application over the keyring in ``data_dir``.

    Raises KeyringError when the key file exists but the master key does not open it.
    """
    if not root_token:
        raise StartupError("the root token must not be empty")
    registry = CollectorRegistry()
    app = web.Application(middlewares=[security_headers, metrics_middleware(registry), _vault_api])
    app[KEYRING] = Keyring(data_dir, master_key)
    app[ROOT_TOKEN] = root_token.encode()
    app[METRICS] = registry
    app[TOKEN_CREATED] = int(time.time())
    name = "{name:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}}"
    app.router.add_get("/v1/sys/health", health)
    app.router.add_get("/v1/sys/metrics", metrics)
    app.router.add_get("/v1/auth/token/lookup-self", lookup_self)
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

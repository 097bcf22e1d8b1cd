"""Key material and persistence for the development KMS (see :mod:`lastro.devstack.kms`).

A :class:`TransitKey` is what Vault's Transit engine calls a named key: numbered versions,
each with its own 256-bit AES-GCM encryption key and its own 256-bit HMAC key, plus the
policy (minimum decryption/encryption version, exportability).

Guarantees:
- Key material never reaches disk in plaintext. Each version's keys are sealed with
  AES-256-GCM under the master key, with the key name and version as associated data, so
  a sealed blob moved to another name or version does not open.
- The key file is replaced atomically (temporary file, fsync, ``os.replace``): after a
  crash it holds the previous keyring or the new one, never a torn one.
- Ciphertexts are ``vault:v<N>:base64(nonce || ciphertext || tag)`` with a random 96-bit
  nonce, exactly Vault's layout for ``aes256-gcm96`` keys; associated data, when given,
  is authenticated by the tag and not stored.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_TYPE: Final = "aes256-gcm96"
KEY_FILE: Final = "transit-keys.json"
MASTER_KEY_BYTES: Final = 32
HASH_ALGORITHMS: Final[dict[str, str]] = {
    "sha2-224": "sha224",
    "sha2-256": "sha256",
    "sha2-384": "sha384",
    "sha2-512": "sha512",
}
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
_KEY_BYTES: Final = 32
_FILE_FORMAT: Final = 1
_VERSIONED = re.compile(r"vault:v([1-9][0-9]{0,8}):([A-Za-z0-9+/]*={0,2})")


class KMSError(Exception):
    """A request the KMS refuses; ``status`` is the HTTP status Vault would answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class KeyringError(RuntimeError):
    """The key file cannot be read or opened with the given master key."""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(value: object, field_name: str) -> bytes:
    """Strict base64 of a request field; anything else is a 400 naming the field."""
    if not isinstance(value, str):
        raise KMSError(f"'{field_name}' must be a base64-encoded string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise KMSError(f"unable to decode '{field_name}' as base64") from None


def parse_versioned(value: object, what: str) -> tuple[int, bytes]:
    """Split ``vault:vN:<base64>`` into ``(N, raw bytes)``."""
    match = _VERSIONED.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise KMSError(f"invalid {what}: expected vault:v<version>:<base64>")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except ValueError:
        raise KMSError(f"invalid {what}: could not decode base64") from None
    return int(match.group(1)), raw


@dataclass(frozen=True)
class KeyVersion:
    created: int
    encryption_key: bytes
    hmac_key: bytes

    @classmethod
    def generate(cls) -> KeyVersion:
        return cls(int(time.time()), os.urandom(_KEY_BYTES), os.urandom(_KEY_BYTES))


@dataclass
class TransitKey:
    name: str
    derived: bool = False
    exportable: bool = False
    allow_plaintext_backup: bool = False
    deletion_allowed: bool = False
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    versions: dict[int, KeyVersion] = field(default_factory=dict)

    @property
    def latest_version(self) -> int:
        return max(self.versions)

    def rotate(self) -> None:
        self.versions[self.latest_version + 1] = KeyVersion.generate()

    def configure(
        self,
        min_decryption_version: int | None,
        min_encryption_version: int | None,
        exportable: bool | None,
        deletion_allowed: bool | None,
        allow_plaintext_backup: bool | None,
    ) -> None:
        """Apply a config update all-or-nothing: an invalid value changes nothing."""
        latest = self.latest_version
        new_min_dec = self.min_decryption_version
        if min_decryption_version is not None and min_decryption_version > 0:
            if min_decryption_version > latest:
                raise KMSError("cannot set min_decryption_version above the latest version")
            new_min_dec = min_decryption_version
        new_min_enc = self.min_encryption_version
        if min_encryption_version is not None:
            if not 0 <= min_encryption_version <= latest:
                raise KMSError("min_encryption_version must be 0 (latest) or an existing version")
            new_min_enc = min_encryption_version
        if new_min_enc and new_min_enc < new_min_dec:
            raise KMSError("min_encryption_version must be at least min_decryption_version")
        if exportable is False and self.exportable:
            raise KMSError("export cannot be disabled on a key that already has it enabled")
        self.min_decryption_version = new_min_dec
        self.min_encryption_version = new_min_enc
        self.exportable = self.exportable or bool(exportable)
        if deletion_allowed is not None:
            self.deletion_allowed = deletion_allowed
        if allow_plaintext_backup:
            self.allow_plaintext_backup = True

    def metadata(self) -> dict[str, Any]:
        """What ``GET keys/:name`` answers; never any key material."""
        return {
            "name": self.name,
            "type": KEY_TYPE,
            "derived": self.derived,
            "exportable": self.exportable,
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "deletion_allowed": self.deletion_allowed,
            "keys": {str(v): kv.created for v, kv in sorted(self.versions.items())},
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "supports_encryption": True,
            "supports_decryption": True,
            "supports_derivation": True,
            "supports_signing": False,
            "auto_rotate_period": 0,
            "imported_key": False,
            **({"kdf": "hkdf_sha256"} if self.derived else {}),
        }

    def _write_version(self, requested: int) -> int:
        version = requested or self.latest_version
        if version not in self.versions:
            raise KMSError("invalid key version")
        if version < self.min_encryption_version:
            raise KMSError("requested version is below the key's min_encryption_version")
        return version

    def _read_version(self, version: int) -> KeyVersion:
        if version not in self.versions:
            raise KMSError("invalid key version")
        if version < self.min_decryption_version:
            raise KMSError("ciphertext or signature version is disallowed by policy (too old)")
        return self.versions[version]

    def _aead(self, key_version: KeyVersion, context: bytes | None) -> AESGCM:
        if not self.derived:
            return AESGCM(key_version.encryption_key)
        if not context:
            raise KMSError("missing 'context' for key derivation: the key was created derived")
        derived = HKDF(hashes.SHA256(), _KEY_BYTES, salt=None, info=context)
        return AESGCM(derived.derive(key_version.encryption_key))

    def encrypt(
        self,
        plaintext: bytes,
        context: bytes | None,
        key_version: int = 0,
        associated_data: bytes | None = None,
    ) -> str:
        """Seal under ``key_version`` (0: latest); ``associated_data`` is authenticated
        too and must be given again, identical, to decrypt."""
        version = self._write_version(key_version)
        nonce = os.urandom(_NONCE_BYTES)
        aead = self._aead(self.versions[version], context)
        sealed = aead.encrypt(nonce, plaintext, associated_data or None)
        return f"vault:v{version}:{b64encode(nonce + sealed)}"

    def decrypt(
        self, ciphertext: object, context: bytes | None, associated_data: bytes | None = None
    ) -> bytes:
        """The plaintext; KMSError if the ciphertext, the context or the associated data
        differ from what was sealed."""
        version, raw = parse_versioned(ciphertext, "ciphertext")
        aead = self._aead(self._read_version(version), context)
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise KMSError("invalid ciphertext: too short")
        try:
            return aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], associated_data or None)
        except InvalidTag:
            raise KMSError("cipher: message authentication failed") from None

    def hmac(self, data: bytes, algorithm: str, key_version: int = 0) -> str:
        version = self._write_version(key_version)
        digest = hmac.digest(self.versions[version].hmac_key, data, _hash_name(algorithm))
        return f"vault:v{version}:{b64encode(digest)}"

    def verify_hmac(self, data: bytes, mac: object, algorithm: str) -> bool:
        version, given = parse_versioned(mac, "hmac")
        key = self._read_version(version).hmac_key
        return hmac.compare_digest(hmac.digest(key, data, _hash_name(algorithm)), given)

    def export(self, kind: str, version: str | None) -> dict[int, bytes]:
        """Per-version key material; only for exportable keys and readable versions."""
        if not self.exportable:
            raise KMSError("key is not exportable")
        if kind not in ("encryption-key", "hmac-key"):
            raise KMSError(f"export of {kind!r} is not supported for {KEY_TYPE} keys")
        if version is None:
            wanted = [v for v in self.versions if v >= self.min_decryption_version]
        elif version == "latest":
            wanted = [self.latest_version]
        else:
            number = version.removeprefix("v")
            if not number.isascii() or not number.isdigit():
                raise KMSError("invalid key version")
            wanted = [int(number)]
            self._read_version(wanted[0])
        if kind == "hmac-key":
            return {v: self.versions[v].hmac_key for v in sorted(wanted)}
        return {v: self.versions[v].encryption_key for v in sorted(wanted)}


def _hash_name(algorithm: str) -> str:
    try:
        return HASH_ALGORITHMS[algorithm]
    except KeyError:
        raise KMSError(f"unsupported algorithm {algorithm!r}") from None


def _seal_aad(name: str, version: int) -> bytes:
    return f"lastro-kms/{name}/v{version}".encode()


class Keyring:
    """All named keys, loaded from and saved to ``<data_dir>/transit-keys.json``.

    Mutations happen in memory and are followed by :meth:`save`; the HTTP layer calls both
    without awaiting in between, so concurrent requests never see a half-applied change.
    """

    def __init__(self, data_dir: Path, master_key: bytes) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise KeyringError(f"master key must be {MASTER_KEY_BYTES} bytes")
        self.path = data_dir / KEY_FILE
        self._master = AESGCM(master_key)
        self._keys: dict[str, TransitKey] = {}
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            self._load()

    def find(self, name: str) -> TransitKey | None:
        return self._keys.get(name)

    def get(self, name: str) -> TransitKey:
        key = self._keys.get(name)
        if key is None:
            raise KMSError("encryption key not found")
        return key

    def create(self, name: str, *, derived: bool, exportable: bool, backup: bool) -> TransitKey:
        """Create the key with version 1; an existing key is returned unchanged (as Vault does)."""
        existing = self._keys.get(name)
        if existing is not None:
            return existing
        key = TransitKey(
            name, derived=derived, exportable=exportable, allow_plaintext_backup=backup
        )
        key.versions[1] = KeyVersion.generate()
        self._keys[name] = key
        self.save()
        return key

    def save(self) -> None:
        document = {
            "format": _FILE_FORMAT,
            "keys": {name: self._dump(key) for name, key in sorted(self._keys.items())},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".transit-keys.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(document, out, indent=1, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _dump(self, key: TransitKey) -> dict[str, Any]:
        versions = {}
        for number, kv in key.versions.items():
            nonce = os.urandom(_NONCE_BYTES)
            material = kv.encryption_key + kv.hmac_key
            sealed = self._master.encrypt(nonce, material, _seal_aad(key.name, number))
            versions[str(number)] = {"created": kv.created, "sealed": b64encode(nonce + sealed)}
        return {
            "derived": key.derived,
            "exportable": key.exportable,
            "allow_plaintext_backup": key.allow_plaintext_backup,
            "deletion_allowed": key.deletion_allowed,
            "min_decryption_version": key.min_decryption_version,
            "min_encryption_version": key.min_encryption_version,
            "versions": versions,
        }

    def _load(self) -> None:
        try:
            document = json.loads(self.path.read_text())
            if document.get("format") != _FILE_FORMAT:
                raise KeyringError(f"{self.path}: unknown key file format")
            for name, entry in document["keys"].items():
                key = TransitKey(
                    name,
                    derived=entry["derived"],
                    exportable=entry["exportable"],
                    allow_plaintext_backup=entry["allow_plaintext_backup"],
                    deletion_allowed=entry["deletion_allowed"],
                    min_decryption_version=entry["min_decryption_version"],
                    min_encryption_version=entry["min_encryption_version"],
                )
                for number, sealed in entry["versions"].items():
                    raw = base64.b64decode(sealed["sealed"], validate=True)
                    material = self._master.decrypt(
                        raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _seal_aad(name, int(number))
                    )
                    key.versions[int(number)] = KeyVersion(
                        sealed["created"], material[:_KEY_BYTES], material[_KEY_BYTES:]
                    )
                self._keys[name] = key
        except InvalidTag:
            raise KeyringError(
                f"{self.path}: the master key does not open this keyring "
                "(wrong LASTRO_KMS_MASTER_KEY or master key file?)"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyringError(f"{self.path}: corrupt key file ({exc})") from None

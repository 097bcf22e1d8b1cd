"""Encryption at rest for personal data: envelope encryption with per-subject data keys.

How a subject's (e.g. a customer's) fields are protected:

* :meth:`SubjectKeys.create_subject_key` asks the KMS for a fresh 256-bit data key. Its
  wrapped form (``vault:vN:...``, encrypted by the Transit key, ``lastro-pii`` by default)
  is stored beside the subject row; the plaintext key lives in memory only, in a small
  bounded cache with a TTL (:class:`UnwrappedKeyCache`), and is never logged or stored.
* :class:`FieldCipher` seals each field with AES-256-GCM under the subject's data key into
  an ``lf1:<base64(nonce || ciphertext || tag)>`` token. The associated data binds the token
  to its table, column and row id: a token copied to another row or column, or altered in
  any bit, does not open (:class:`FieldDecryptionError`). Tokens reveal the plaintext's
  length, nothing else.
* :class:`BlindIndex` turns a normalised value into ``bi<version>:<hex HMAC-SHA256>`` with a
  key exported from the KMS, separated per purpose, for exact-match lookups. Lookups never
  use plaintext.

KMS key rotation: :meth:`SubjectKeys.rewrap` (or :meth:`SubjectKeys.rewrap_all` for a whole
table) moves a wrapped key to the newest KMS key version. The data key itself does not
change, so sealed fields stay valid and are never re-encrypted.

Erasure by crypto-shredding, which is the caller's job: delete (or overwrite) the subject's
wrapped key and its blind index values, and call :meth:`SubjectKeys.forget` so this process
drops the unwrapped key at once (other processes drop it within the cache TTL). From then
on no sealed field of that subject can be opened and no lookup finds it. A database backup
taken before the erasure still holds the wrapped key: backups must expire before the KMS
key versions that wrapped them are retired (rotate, rewrap, raise ``min_decryption_version``)
for the erasure to reach them too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.security.transit import DataKey, TransitClient

PII_KEY: Final = "lastro-pii"
BLIND_INDEX_KEY: Final = "lastro-blind-index"
SEALED_PREFIX: Final = "lf1:"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_AAD_LABEL: Final = b"lastro-field-v1"
_WRAPPED_VERSION = re.compile(r"vault:v([1-9][0-9]*):")


class FieldDecryptionError(Exception):
    """A sealed field did not open: tampered with, moved from another row or column, sealed
    under another subject's key, or not a sealed field at all."""


def _length_prefixed(*parts: str) -> bytes:
    encoded = [part.encode("utf-8") for part in parts]
    return b"".join(struct.pack(">I", len(part)) + part for part in encoded)


def field_binding(table: str, column: str, row_id: str) -> bytes:
    """The associated data of a sealed field; unambiguous (length-prefixed) so that no two
    different (table, column, row id) triples share it."""
    return _AAD_LABEL + _length_prefixed(table, column, row_id)


class FieldCipher:
    """Seals and opens fields with one subject's data key (AES-256-GCM, random 96-bit nonce).

    Random nonces are safe here: a per-subject key seals a few fields per update, far below
    the 2**32 messages per key where nonce collisions become a concern."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a field key is {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "FieldCipher(<key hidden>)"

    def seal(self, plaintext: str | bytes, *, table: str, column: str, row_id: str) -> str:
        """An ``lf1:`` token that opens only with this key and this table, column and row."""
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data, field_binding(table, column, row_id))
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, token: str, *, table: str, column: str, row_id: str) -> bytes:
        """The sealed bytes; FieldDecryptionError unless the token is intact, was sealed with
        this key and is read from the same table, column and row it was sealed for."""
        where = f"sealed field {table}.{column} of row {row_id!r}"
        if not token.startswith(SEALED_PREFIX):
            raise FieldDecryptionError(f"{where} is not an {SEALED_PREFIX} token")
        try:
            raw = base64.b64decode(token[len(SEALED_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FieldDecryptionError(f"{where} is not valid base64") from exc
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise FieldDecryptionError(f"{where} is truncated")
        try:
            return self._aead.decrypt(
                raw[:NONCE_BYTES], raw[NONCE_BYTES:], field_binding(table, column, row_id)
            )
        except InvalidTag:
            raise FieldDecryptionError(
                f"{where} does not open: tampered, moved from another row or column, "
                "or sealed under another key"
            ) from None

    def open_text(self, token: str, *, table: str, column: str, row_id: str) -> str:
        """:meth:`open` for a field sealed from a ``str``."""
        data = self.open(token, table=table, column=column, row_id=row_id)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FieldDecryptionError(f"sealed field {table}.{column} is not text") from exc


class UnwrappedKeyCache:
    """Unwrapped data keys by wrapped ciphertext: least recently used evicted beyond
    ``max_entries``, every entry dropped ``ttl_s`` seconds after it was stored."""

    def __init__(
        self,
        max_entries: int = 1024,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("the key cache needs max_entries >= 1 and ttl_s > 0")
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"UnwrappedKeyCache({len(self._entries)} entries)"

    def get(self, wrapped: str) -> bytes | None:
        entry = self._entries.get(wrapped)
        if entry is None:
            return None
        expires_at, key = entry
        if self._clock() >= expires_at:
            del self._entries[wrapped]
            return None
        self._entries.move_to_end(wrapped)
        return key

    def put(self, wrapped: str, key: bytes) -> None:
        self._entries[wrapped] = (self._clock() + self._ttl, key)
        self._entries.move_to_end(wrapped)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, wrapped: str) -> None:
        self._entries.pop(wrapped, None)


def wrapped_key_version(wrapped: str) -> int:
    """The KMS key version a wrapped key is encrypted under (``vault:v3:...`` -> 3)."""
    match = _WRAPPED_VERSION.match(wrapped)
    if match is None:
        raise ValueError("not a wrapped key (expected vault:vN:...)")
    return int(match.group(1))


class SubjectKeys:
    """Per-subject data keys wrapped by one Transit key (``lastro-pii`` unless told).

    The Transit key must exist (``await transit.ensure_key(name)`` at startup). KMS failures
    surface as TransitError / TransitUnavailable from :mod:`lastro.core.security.transit`."""

    def __init__(
        self,
        transit: TransitClient,
        key_name: str = PII_KEY,
        cache: UnwrappedKeyCache | None = None,
    ) -> None:
        self._transit = transit
        self._name = key_name
        self._cache = cache if cache is not None else UnwrappedKeyCache()

    async def create_subject_key(self) -> DataKey:
        """A fresh data key: store ``.ciphertext`` with the subject, seal with ``.plaintext``."""
        data_key = await self._transit.datakey(self._name)
        self._cache.put(data_key.ciphertext, data_key.plaintext)
        return data_key

    async def unwrap(self, wrapped: str) -> bytes:
        """The subject's data key, from the cache or unwrapped by the KMS (which refuses a
        tampered wrapped key or one below the key's ``min_decryption_version``)."""
        key = self._cache.get(wrapped)
        if key is None:
            key = await self._transit.decrypt(self._name, wrapped)
            if len(key) != KEY_BYTES:
                raise ValueError(f"wrapped data key unwraps to {len(key)} bytes, not {KEY_BYTES}")
            self._cache.put(wrapped, key)
        return key

    async def cipher(self, wrapped: str) -> FieldCipher:
        """A :class:`FieldCipher` for the subject whose wrapped data key this is."""
        return FieldCipher(await self.unwrap(wrapped))

    async def rewrap(self, wrapped: str) -> str:
        """The same data key wrapped under the newest KMS key version; the plaintext key
        never leaves the KMS and sealed fields stay valid."""
        return await self._transit.rewrap(self._name, wrapped)

    def forget(self, wrapped: str) -> None:
        """Drop the unwrapped key from this process's cache (part of crypto-shredding)."""
        self._cache.forget(wrapped)

    async def rewrap_all(
        self, engine: AsyncEngine, table: Table, column: str, *, batch_size: int = 200
    ) -> int:
        """Move every wrapped key in ``table.column`` to the newest KMS key version, in
        batches in primary-key order; returns how many rows were moved.

        Each batch is read, rewrapped by the KMS outside any database transaction, then
        written in one short transaction with guarded updates (``WHERE column = old``):
        a key shredded or replaced meanwhile is never brought back. NULLs (shredded keys)
        are skipped. Safe to rerun; rows already at the newest version are left alone.
        The table needs a single-column primary key."""
        (pk,) = table.primary_key.columns
        wrapped_col = table.c[column]
        newest = 0
        moved = 0
        last: Any = None
        while True:
            query = select(pk, wrapped_col).where(wrapped_col.is_not(None))
            if last is not None:
                query = query.where(pk > last)
            async with engine.connect() as conn:
                rows = (await conn.execute(query.order_by(pk).limit(batch_size))).all()
            if not rows:
                return moved
            last = rows[-1][0]
            changes: list[tuple[Any, str, str]] = []
            for row_id, old in rows:
                if newest and wrapped_key_version(old) >= newest:
                    continue
                new = await self.rewrap(old)
                newest = max(newest, wrapped_key_version(new))
                if wrapped_key_version(new) > wrapped_key_version(old):
                    changes.append((row_id, old, new))
            if changes:
                async with engine.begin() as conn:
                    for row_id, old, new in changes:
                        result = await conn.execute(
                            update(table)
                            .where(pk == row_id, wrapped_col == old)
                            .values({column: new})
                        )
                        moved += result.rowcount


def _normalise_email(value: str) -> str:
    return value.strip().lower()


def _normalise_document(value: str) -> str:
    return "".join(ch for ch in value if ch.isalnum()).upper()


def _normalise_phone(value: str) -> str:
    # Digits only, so "+55 (11) 91234-5678" and "55 11 912345678" match; callers pass
    # numbers in international form (country code first).
    return "".join(ch for ch in value if ch.isdigit())


NORMALISERS: Final[Mapping[str, Callable[[str], str]]] = {
    "email": _normalise_email,
    "document": _normalise_document,
    "phone": _normalise_phone,
    "iban": _normalise_document,
}


def normalise(value: str, *, purpose: str) -> str:
    """The canonical form a blind index is computed over: e-mail stripped and lower-cased,
    documents and IBANs without spaces or punctuation and upper-cased, phones as digits only; all
    after Unicode NFKC. ValueError for an unknown purpose or a value that normalises to
    nothing (it would match every other empty value)."""
    normaliser = NORMALISERS.get(purpose)
    if normaliser is None:
        raise ValueError(f"unknown blind index purpose {purpose!r}")
    canonical = normaliser(unicodedata.normalize("NFKC", value))
    if not canonical:
        raise ValueError(f"value is empty once normalised for {purpose!r}")
    return canonical


class BlindIndex:
    """Keyed, purpose-separated HMAC-SHA256 indexes for exact-match lookups of PII.

    New values use the newest key version and carry it (``bi<version>:<hex>``); lookups
    match any version through :meth:`candidates`, so rotating the index key needs no
    downtime. The same value gives unrelated indexes for different purposes, and without
    the key an index reveals nothing but equality."""

    def __init__(self, keys: Mapping[int, bytes]) -> None:
        if not keys:
            raise ValueError("a blind index needs at least one key version")
        self._versions = sorted(keys, reverse=True)
        # One key per version and purpose, derived once rather than on every lookup.
        self._purpose_keys = {
            (version, purpose): hmac.digest(
                key, b"lastro-blind-index-v1\x00" + purpose.encode(), hashlib.sha256
            )
            for version, key in keys.items()
            for purpose in NORMALISERS
        }

    def __repr__(self) -> str:
        return f"BlindIndex(versions={sorted(self._versions)})"

    @classmethod
    async def from_transit(cls, transit: TransitClient, name: str = BLIND_INDEX_KEY) -> BlindIndex:
        """Keys exported from the exportable Transit key ``name`` (created if missing)."""
        await transit.ensure_key(name, exportable=True)
        return cls(await transit.export_hmac_keys(name))

    def _digest(self, version: int, canonical: str, purpose: str) -> str:
        purpose_key = self._purpose_keys[(version, purpose)]
        mac = hmac.digest(purpose_key, canonical.encode("utf-8"), hashlib.sha256)
        return f"bi{version}:{mac.hex()}"

    def compute(self, value: str, *, purpose: str) -> str:
        """The index to store for ``value``, under the newest key version."""
        return self._digest(self._versions[0], normalise(value, purpose=purpose), purpose)

    def candidates(self, value: str, *, purpose: str) -> list[str]:
        """Every index ``value`` may be stored under (one per key version), newest first;
        look rows up with ``WHERE column = ANY(candidates)``."""
        canonical = normalise(value, purpose=purpose)
        return [self._digest(version, canonical, purpose) for version in self._versions]

"""Personal data at rest: sealed per subject, erasable by crypto-shredding.

Every address and rendered message a delivery holds, and the notice address of a
webhook endpoint, is sealed with AES-256-GCM under the data key of its *subject* (the
customer it is about, or the endpoint's owner), bound to its table, column and row
(``core.security.fields``). The data key is stored only wrapped by the KMS
(``subject_keys``). Erasing a subject deletes its wrapped key: from then on nothing
sealed for it opens, in this database or in any backup once the KMS key versions
that wrapped it are retired.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.db import Tx, in_transaction, read
from lastro.core.security.binding import bind_rows
from lastro.core.security.fields import FieldCipher, FieldDecryptionError, SubjectKeys
from lastro.core.security.transit import TransitClient
from lastro.notifications import store


class SubjectErased(Exception):
    """The subject's data key is gone: its sealed fields can no longer be opened."""


class Sealer:
    def __init__(self, engine: AsyncEngine, keys: SubjectKeys) -> None:
        self._engine = engine
        self._keys = keys

    async def cipher(self, subject_id: str) -> FieldCipher:
        """The subject's cipher, creating its data key on first use (race-safe: two
        creators keep the first key stored)."""
        wrapped = await read(self._engine, lambda conn: store.subject_key(conn, subject_id))
        return await self.cipher_from(subject_id, wrapped)

    async def cipher_from(self, subject_id: str, wrapped: str | None) -> FieldCipher:
        """:meth:`cipher` when the subject's wrapped key (or None) was already read."""
        if wrapped is None:
            fresh = await self._keys.create_subject_key()

            async def keep(tx: Tx) -> str:
                return await store.insert_subject_key(
                    tx, subject_id, fresh.ciphertext, datetime.now(UTC)
                )

            wrapped = await in_transaction(self._engine, keep)
        return await self._keys.cipher(wrapped)

    async def opened(self, subject_id: str, wrapped: str | None) -> FieldCipher:
        """:meth:`existing` when the subject's wrapped key (or None) was already read."""
        if wrapped is None:
            raise SubjectErased(subject_id)
        return await self._keys.cipher(wrapped)

    async def existing(self, tx: Tx, subject_id: str) -> FieldCipher:
        """The cipher of a subject that has a key; SubjectErased when it has none."""
        return await self.opened(subject_id, await store.subject_key(tx, subject_id))

    async def shred(self, tx: Tx, subject_id: str) -> bool:
        """Delete the subject's data key in ``tx`` and drop it from this process's
        cache; True if it had one (other replicas drop theirs within the cache TTL)."""
        wrapped = await store.delete_subject_key(tx, subject_id)
        if wrapped is not None:
            self._keys.forget(wrapped)
        return wrapped is not None


def seal_text(cipher: FieldCipher, value: str, *, table: str, column: str, row_id: str) -> str:
    return cipher.seal(value, table=table, column=column, row_id=row_id)


def seal_json(
    cipher: FieldCipher, value: Mapping[str, Any], *, table: str, column: str, row_id: str
) -> str:
    text = json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False)
    return cipher.seal(text, table=table, column=column, row_id=row_id)


def open_text(cipher: FieldCipher, token: str, *, table: str, column: str, row_id: str) -> str:
    try:
        return cipher.open_text(token, table=table, column=column, row_id=row_id)
    except FieldDecryptionError as error:
        raise SubjectErased(str(error)) from error


def open_json(
    cipher: FieldCipher, token: str, *, table: str, column: str, row_id: str
) -> dict[str, Any]:
    value = json.loads(open_text(cipher, token, table=table, column=column, row_id=row_id))
    assert isinstance(value, dict)
    return value


WEBHOOK_SECRETS_KEY = "notifications-webhook-secrets"


class WebhookSecrets:
    """Webhook signing secrets, stored as Transit ciphertexts (the signer needs them
    in clear, so they are encrypted, not hashed); decrypted secrets are kept in memory
    by secret id (a secret never changes, it is only replaced).

    Each ciphertext is bound to its row: the secret's id is the encryption's
    associated data, so a ciphertext copied into another endpoint's row (by someone
    who can write the table) does not open there and that endpoint's deliveries fail
    rather than being signed with another endpoint's secret. Rows written before the
    binding existed are bound when the service starts (:meth:`bind_older`)."""

    def __init__(self, transit: TransitClient, key_name: str = WEBHOOK_SECRETS_KEY) -> None:
        self._transit = transit
        self._key = key_name
        self._clear: dict[str, str] = {}

    async def prepare(self) -> None:
        await self._transit.ensure_key(self._key)

    async def encrypt(self, secret_id: str, secret: str) -> str:
        return await self._transit.encrypt(
            self._key, secret.encode(), associated_data=_row_of(secret_id)
        )

    async def reveal(self, secret_id: str, ciphertext: str, bound: bool = True) -> str:
        secret = self._clear.get(secret_id)
        if secret is None:
            aad = _row_of(secret_id) if bound else None
            clear = await self._transit.decrypt(self._key, ciphertext, associated_data=aad)
            secret = clear.decode()
            self._clear[secret_id] = secret
        return secret

    async def bind_older(self, engine: AsyncEngine) -> int:
        """Re-encrypt the secrets stored before ciphertexts were bound to their row;
        how many this process bound (``core.security.binding``: replicas starting
        together split the work; a secret the KMS refuses is left as it is, and its
        deliveries say why)."""

        async def reseal(row: tuple[str, str]) -> str:
            secret_id, ciphertext = row
            return await self._transit.bind(self._key, ciphertext, _row_of(secret_id))

        async def swap(tx: Tx, row: tuple[str, str], sealed: str) -> bool:
            return await store.bind_secret(tx, secret_id=row[0], was=row[1], bound=sealed)

        def name(row: tuple[str, str]) -> str:
            return f"webhook secret {row[0]}"

        older = await read(engine, store.unbound_secrets)
        return await bind_rows(engine, older, reseal=reseal, swap=swap, name=name)

    def forget(self, secret_ids: Iterable[str]) -> None:
        for secret_id in secret_ids:
            self._clear.pop(secret_id, None)


def _row_of(secret_id: str) -> bytes:
    return f"webhook_secrets:{secret_id}".encode()

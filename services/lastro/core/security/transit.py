"""Client for the Transit secrets engine: Vault, OpenBao, or the dev KMS.

Everything goes through hvac, which is synchronous, so each call runs in a worker thread
(``asyncio.to_thread``) and never blocks the event loop. Every call has a timeout.

Guarantees:
- Keys never leave the KMS except through :meth:`TransitClient.export_hmac_keys`, which
  works only for keys created exportable (used for signing events locally).
- Failures are one of two exceptions, never hvac's: :class:`TransitUnavailable` when the
  KMS cannot be reached or fails (retry, trip a breaker), :class:`TransitError` when it
  refuses the request (unknown key, tampered or too-old ciphertext, bad input: do not retry).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import hvac
import hvac.exceptions
import requests

from lastro.core.config import Settings

DEFAULT_TIMEOUT_S: Final = 5.0
HMAC_ALGORITHM: Final = "sha2-256"
_VERSIONED = re.compile(r"vault:v[1-9][0-9]*:[A-Za-z0-9+/]*={0,2}")


class TransitError(Exception):
    """The KMS refused the request; retrying the same request will not help."""


class TransitUnavailable(TransitError):
    """The KMS could not be reached, timed out or failed on its side; safe to retry."""


@dataclass(frozen=True, repr=False)
class DataKey:
    """A fresh data key: use ``plaintext`` in memory only; store ``ciphertext``."""

    plaintext: bytes
    ciphertext: str

    def __repr__(self) -> str:
        return f"DataKey(ciphertext={self.ciphertext!r})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _data(response: Any) -> dict[str, Any]:
    if not isinstance(response, dict) or not isinstance(response.get("data"), dict):
        raise TransitError("unexpected response from the KMS")
    data: dict[str, Any] = response["data"]
    return data


class TransitClient:
    """Async facade over ``hvac.Client().secrets.transit`` for one mount point."""

    def __init__(self, client: hvac.Client, mount_point: str = "transit") -> None:
        self._client = client
        self._transit = client.secrets.transit
        self._mount = mount_point

    @classmethod
    def from_settings(cls, settings: Settings, timeout: float = DEFAULT_TIMEOUT_S) -> TransitClient:
        # requests takes fractional seconds; types-hvac declares the timeout an int.
        seconds: Any = timeout
        client = hvac.Client(
            url=settings.vault_addr,
            token=settings.vault_token,
            verify=str(settings.ca_file),
            timeout=seconds,
        )
        return cls(client)

    async def close(self) -> None:
        await asyncio.to_thread(self._client.adapter.close)

    async def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(method, mount_point=self._mount, **kwargs)
        except (
            hvac.exceptions.InternalServerError,
            hvac.exceptions.VaultDown,
            hvac.exceptions.BadGateway,
            hvac.exceptions.RateLimitExceeded,
            requests.RequestException,
        ) as exc:
            raise TransitUnavailable(f"KMS unavailable: {exc}") from exc
        except hvac.exceptions.VaultError as exc:
            raise TransitError(f"KMS refused the request: {exc}") from exc

    async def ensure_key(self, name: str, exportable: bool = False) -> None:
        """Create the key if missing; existing versions are kept. With ``exportable`` the
        key is made exportable too (a one-way switch in Transit)."""
        await self._call(self._transit.create_key, name=name, exportable=exportable)
        if exportable:
            info = _data(await self._call(self._transit.read_key, name=name))
            if not info.get("exportable"):
                await self._call(self._transit.update_key_configuration, name=name, exportable=True)

    async def encrypt(
        self,
        name: str,
        plaintext: bytes,
        context: bytes | None = None,
        *,
        associated_data: bytes | None = None,
    ) -> str:
        """Authenticated encryption under the key's latest version (``vault:vN:...``).

        ``associated_data`` (AES-GCM AAD, e.g. the id of the row the ciphertext belongs
        to) is authenticated, not stored: decrypting needs the same bytes again. As in
        Vault, :meth:`rewrap` cannot carry it: such a ciphertext is re-encrypted by
        decrypting and encrypting again."""
        response = await self._call(
            self._transit.encrypt_data,
            name=name,
            plaintext=_b64(plaintext),
            context=None if context is None else _b64(context),
            associated_data=None if associated_data is None else _b64(associated_data),
        )
        return str(_data(response)["ciphertext"])

    async def decrypt(
        self,
        name: str,
        ciphertext: str,
        context: bytes | None = None,
        *,
        associated_data: bytes | None = None,
    ) -> bytes:
        """The plaintext, or TransitError if the ciphertext was tampered with, belongs to
        another key, was sealed with other associated data, or its version is below the
        key's ``min_decryption_version``."""
        response = await self._call(
            self._transit.decrypt_data,
            name=name,
            ciphertext=ciphertext,
            context=None if context is None else _b64(context),
            associated_data=None if associated_data is None else _b64(associated_data),
        )
        return base64.b64decode(_data(response)["plaintext"])

    async def bind(self, name: str, ciphertext: str, associated_data: bytes) -> str:
        """``ciphertext``, written without associated data, encrypted again bound to
        ``associated_data`` (decrypt, then encrypt: :meth:`rewrap` cannot add it)."""
        plaintext = await self.decrypt(name, ciphertext)
        return await self.encrypt(name, plaintext, associated_data=associated_data)

    async def rewrap(self, name: str, ciphertext: str) -> str:
        """The same plaintext re-encrypted under the latest version, never exposed here."""
        response = await self._call(self._transit.rewrap_data, name=name, ciphertext=ciphertext)
        return str(_data(response)["ciphertext"])

    async def rotate(self, name: str) -> None:
        """Add a new key version; new encryptions use it, old ciphertexts still decrypt."""
        await self._call(self._transit.rotate_key, name=name)

    async def datakey(self, name: str) -> DataKey:
        """A fresh 256-bit data key and its ciphertext under ``name`` (envelope encryption)."""
        response = await self._call(
            self._transit.generate_data_key, name=name, key_type="plaintext", bits=256
        )
        data = _data(response)
        return DataKey(base64.b64decode(data["plaintext"]), str(data["ciphertext"]))

    async def hmac(self, name: str, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` under the latest version, as ``vault:vN:<base64>``."""
        response = await self._call(
            self._transit.generate_hmac,
            name=name,
            hash_input=_b64(data),
            algorithm=HMAC_ALGORITHM,
        )
        return str(_data(response)["hmac"])

    async def verify_hmac(self, name: str, data: bytes, mac: str) -> bool:
        """True only if ``mac`` is the key's HMAC of ``data``; a malformed ``mac`` is False.

        Raises TransitError if the key is unknown or the mac's version is disallowed."""
        if not _VERSIONED.fullmatch(mac):
            return False
        response = await self._call(
            self._transit.verify_signed_data,
            name=name,
            hash_input=_b64(data),
            hmac=mac,
            hash_algorithm=HMAC_ALGORITHM,
        )
        return _data(response).get("valid") is True

    async def export_hmac_keys(self, name: str) -> dict[int, bytes]:
        """Every readable version's HMAC key (the key must have been created exportable)."""
        response = await self._call(self._transit.export_key, name=name, key_type="hmac-key")
        keys = _data(response)["keys"]
        return {int(version): base64.b64decode(key) for version, key in keys.items()}

    async def local_hmac_key(self, name: str) -> bytes:
        """The newest HMAC key of ``name`` (created exportable if missing), for signing
        locally where a KMS round trip per message would be too slow (events, audit)."""
        await self.ensure_key(name, exportable=True)
        keys = await self.export_hmac_keys(name)
        return keys[max(keys)]

    async def healthy(self) -> bool:
        """True if the KMS answers, is initialized and unsealed; never raises."""
        try:
            status = await asyncio.to_thread(self._client.sys.read_health_status, method="GET")
        except (hvac.exceptions.VaultError, requests.RequestException):
            return False
        return (
            isinstance(status, dict)
            and status.get("initialized") is True
            and status.get("sealed") is False
        )

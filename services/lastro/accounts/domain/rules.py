"""Rules on request fields every resource shares (ids, descriptions, metadata,
currencies, amounts)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from lastro.accounts.domain.errors import (
    InvalidAmount,
    InvalidRequest,
    ReservedExternalId,
    UnknownCurrency,
)
from lastro.core import money

MAX_EXTERNAL_ID_LENGTH: Final = 255
DERIVED_PREFIX: Final = "lastro:"
"""External ids the ledger derives itself begin with this; callers' never do, so no
caller can take the id of a hold's posting or of a reversal before the ledger does."""
MAX_DESCRIPTION_LENGTH: Final = 1000
MAX_METADATA_KEYS: Final = 50
MAX_METADATA_KEY_LENGTH: Final = 40
MAX_METADATA_VALUE_LENGTH: Final = 500
_PRINTABLE: Final = re.compile(r"[^\x00-\x1f\x7f]+")


def validate_external_id(external_id: str) -> None:
    """1..255 characters, no control characters; raises InvalidRequest."""
    if not isinstance(external_id, str) or not _PRINTABLE.fullmatch(external_id):
        raise InvalidRequest("external_id must be non-empty printable text", field="external_id")
    if len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        raise InvalidRequest(
            f"external_id is longer than {MAX_EXTERNAL_ID_LENGTH}", field="external_id"
        )


def validate_caller_external_id(external_id: str) -> None:
    """An external id a caller chose: :func:`validate_external_id`, and not in the
    ledger's own namespace (:data:`DERIVED_PREFIX`); raises ReservedExternalId."""
    validate_external_id(external_id)
    if external_id.startswith(DERIVED_PREFIX):
        raise ReservedExternalId(
            f"external_id must not begin with {DERIVED_PREFIX!r}: the ledger derives such ids"
            " itself (a hold's posting, a reversal)",
            field="external_id",
        )


def derived_external_id(*parts: str) -> str:
    """The external id of a posting the ledger derives (``lastro:reversal:<posting
    id>``, ``lastro:hold:<hold id>:post``): unique per origin, never a caller's."""
    return DERIVED_PREFIX + ":".join(parts)


def _storable(text: object) -> bool:
    """Text PostgreSQL can store: ``text`` and ``jsonb`` refuse the NUL character."""
    return isinstance(text, str) and "\x00" not in text


def validate_description(description: str) -> None:
    if not _storable(description) or len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(
            f"description must be text (no NUL) of at most {MAX_DESCRIPTION_LENGTH} characters",
            field="description",
        )


def validate_metadata(metadata: Mapping[str, str]) -> None:
    """Stripe's limits: at most 50 string keys (1..40 chars) with string values (≤500)."""
    if not isinstance(metadata, Mapping) or len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest(
            f"metadata must be a map of at most {MAX_METADATA_KEYS} keys", field="metadata"
        )
    for key, value in metadata.items():
        if not _storable(key) or not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            raise InvalidRequest(
                f"metadata keys must be 1..{MAX_METADATA_KEY_LENGTH} characters, no NUL",
                field="metadata",
            )
        if not _storable(value) or len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidRequest(
                f"metadata values must be text (no NUL) of at most"
                f" {MAX_METADATA_VALUE_LENGTH} characters",
                field=f"metadata.{key}",
            )


def validate_currency(currency: str, *, field: str = "currency") -> None:
    try:
        money.Currency.of(currency)
    except money.UnknownCurrency:
        raise UnknownCurrency(f"unknown currency {currency!r}", field=field) from None


def validate_amount(amount: int, *, field: str = "amount") -> None:
    """A positive ``int`` (not bool, not float) that fits a BIGINT; raises InvalidAmount."""
    if type(amount) is not int or not 0 < amount <= money.MAX_MINOR_UNITS:
        raise InvalidAmount(f"{amount!r} is not a positive integer of minor units", field=field)

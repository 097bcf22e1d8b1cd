"""Customers: personal data (held in clear only in memory), their statuses and
what a customer may change."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from lastro.accounts.domain.accounts import Account

ACTIVE: Final = "active"
ERASED: Final = "erased"
CONTACT_FIELDS: Final = frozenset({"email", "phone", "address"})


@dataclass(frozen=True)
class PersonalData:
    """A customer's personal data in clear; only ever held in memory."""

    name: str
    email: str
    document_number: str
    phone: str | None = None
    address: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Customer:
    """A customer as its owner sees it; ``data`` is None once erased."""

    id: str
    owner: str
    status: str
    data: PersonalData | None
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None


@dataclass(frozen=True)
class Contact:
    """Where a customer can be reached, for the notification service: the owner
    (the user or client whose customer it is), e-mail and phone; nothing else."""

    customer_id: str
    owner: str
    email: str
    phone: str | None


@dataclass(frozen=True)
class CustomerExport:
    """Everything held about a customer (GDPR art. 15/20): personal data and accounts."""

    customer: Customer
    accounts: list[Account]
    exported_at: datetime

"""Customers: personal data sealed per customer, blind-indexed, erasable by crypto-shredding.

Storage (table ``customers`` in the service schema, created by migration 0002):

* every personal field (name, e-mail, phone, document number, address) is an
  ``lf1:`` token sealed with AES-256-GCM under the customer's own data key
  (:class:`~lastro.core.security.fields.FieldCipher`); the associated data binds
  each token to ``customers.<column>.<customer id>``, so a token copied to another
  row or column does not open;
* the data key is stored only wrapped by the KMS (``data_key``, ``vault:vN:...``);
* e-mail and document number have HMAC blind indexes for exact-match lookups; the
  e-mail index is unique (two live customers never share an e-mail address).

Guarantees: no plaintext personal data reaches the database, events or the audit
log (they carry ids and field names only). Every change is one transaction with
its outbox event and audit record. :meth:`Customers.erase` crypto-shreds: the
wrapped key and the blind indexes are wiped in one transaction (a CHECK constraint
refuses an erased row that keeps either), the row stays as a tombstone with
status ``erased``, and the customer's accounts and ledger history are untouched.

Ownership: a customer belongs to the user (token ``sub``) who created it. Reads
and writes take the caller's subject and answer UnknownCustomer for anybody
else's customer, exactly as for an id that does not exist; ``owner=None`` is for
administrators and services.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.accounts import domain
from lastro.accounts.service import ACCOUNTS_TOPIC, Caller, Clock, Ledger, utc_now
from lastro.accounts.store import Account
from lastro.core.db import constraint_name, in_transaction
from lastro.core.security.fields import BlindIndex, FieldCipher, SubjectKeys

TABLE: Final = "customers"
ACTIVE: Final = "active"
ERASED: Final = "erased"
SEALED_COLUMNS: Final = ("name", "email", "phone", "document_number", "address")
CONTACT_FIELDS: Final = frozenset({"email", "phone", "address"})
EMAIL_INDEX_CONSTRAINT: Final = "customers_email_bi_key"


class UnknownCustomer(domain.LedgerError):
    slug = "unknown-customer"
    title = "Customer does not exist"


class CustomerErased(domain.LedgerError):
    slug = "customer-erased"
    title = "Customer's personal data was erased"


class EmailTaken(domain.LedgerError):
    slug = "email-taken"
    title = "Another customer uses this e-mail address"


def customers_table(metadata: MetaData) -> Table:
    """The customers table in ``metadata``'s schema (see the module docstring)."""
    return Table(
        TABLE,
        metadata,
        Column("id", String(40), primary_key=True),
        Column("owner", String(255), nullable=False),
        Column("status", String(16), nullable=False),
        Column("data_key", Text),
        Column("name", Text, nullable=False),
        Column("email", Text, nullable=False),
        Column("phone", Text),
        Column("document_number", Text, nullable=False),
        Column("address", Text),
        Column("email_bi", String(80)),
        Column("document_bi", String(80)),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("erased_at", DateTime(timezone=True)),
        UniqueConstraint("email_bi", name=EMAIL_INDEX_CONSTRAINT),
        CheckConstraint("status IN ('active', 'erased')", name="customers_status_known"),
        CheckConstraint(
            "(status = 'active' AND data_key IS NOT NULL AND email_bi IS NOT NULL"
            " AND document_bi IS NOT NULL AND erased_at IS NULL)"
            " OR (status = 'erased' AND data_key IS NULL AND email_bi IS NULL"
            " AND document_bi IS NULL AND erased_at IS NOT NULL)",
            name="customers_erasure_complete",
        ),
        Index("customers_owner_idx", "owner"),
        Index("customers_document_bi_idx", "document_bi"),
    )


def customers_metadata(schema: str) -> MetaData:
    """MetaData holding only the customers table of ``schema`` (for migration 0002)."""
    metadata = MetaData(schema=schema)
    customers_table(metadata)
    return metadata


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


def _seal(cipher: FieldCipher, customer_id: str, data: PersonalData) -> dict[str, str | None]:
    clear: dict[str, str | None] = {
        "name": data.name,
        "email": data.email,
        "phone": data.phone,
        "document_number": data.document_number,
        "address": None if data.address is None else json.dumps(dict(data.address)),
    }
    return {
        column: None
        if value is None
        else cipher.seal(value, table=TABLE, column=column, row_id=customer_id)
        for column, value in clear.items()
    }


def _open(cipher: FieldCipher, row: Row[Any]) -> PersonalData:
    def text(column: str) -> str | None:
        token = getattr(row, column)
        if token is None:
            return None
        return cipher.open_text(token, table=TABLE, column=column, row_id=row.id)

    address = text("address")
    return PersonalData(
        name=text("name") or "",
        email=text("email") or "",
        document_number=text("document_number") or "",
        phone=text("phone"),
        address=None if address is None else json.loads(address),
    )


def _index(index: BlindIndex, value: str, purpose: str, field: str) -> str:
    try:
        return index.compute(value, purpose=purpose)
    except ValueError:
        raise domain.InvalidRequest(f"{field} has no usable characters", field=field) from None


class Customers:
    """Customer use cases over one service schema (the ledger's ``schema``).

    ``keys`` wraps per-customer data keys with the PII Transit key, ``index``
    computes blind indexes; events and audit records go through
    :meth:`Ledger.record_change` to the ledger's outbox and audit chain.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        ledger: Ledger,
        keys: SubjectKeys,
        index: BlindIndex,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._keys = keys
        self._index = index
        self._clock = clock
        self.table = customers_table(MetaData(schema=ledger.tables.schema))

    # ------------------------------------------------------------ plumbing

    async def _record(
        self,
        conn: AsyncConnection,
        caller: Caller,
        fact: str,
        customer_id: str,
        details: dict[str, Any],
        now: datetime,
    ) -> None:
        """The outbox event ``lastro.customer.<fact>`` and its audit record; ids and
        field names only, never personal data."""
        await self._ledger.record_change(
            conn,
            caller,
            f"customer.{fact}",
            customer_id,
            {"customer_id": customer_id, **details},
            now,
            event_type=f"lastro.customer.{fact}",
            topic=ACCOUNTS_TOPIC,
            key=customer_id,
        )

    async def _row(
        self, conn: AsyncConnection, customer_id: str, owner: str | None, *, lock: bool = False
    ) -> Row[Any]:
        c = self.table
        query = select(c).where(c.c.id == customer_id)
        if owner is not None:
            query = query.where(c.c.owner == owner)
        row = (await conn.execute(query.with_for_update() if lock else query)).one_or_none()
        if row is None:
            raise UnknownCustomer(f"customer {customer_id} does not exist", field="customer_id")
        return row

    async def _view(self, row: Row[Any]) -> Customer:
        data = None
        if row.status == ACTIVE:
            data = _open(await self._keys.cipher(row.data_key), row)
        return Customer(
            row.id, row.owner, row.status, data, row.created_at, row.updated_at, row.erased_at
        )

    async def _email_in_use(
        self, conn: AsyncConnection, email: str, except_id: str | None = None
    ) -> None:
        c = self.table
        query = select(c.c.id).where(
            c.c.email_bi.in_(self._index.candidates(email, purpose="email"))
        )
        if except_id is not None:
            query = query.where(c.c.id != except_id)
        if (await conn.execute(query.limit(1))).first() is not None:
            raise EmailTaken("another customer uses this e-mail address", field="email")

    # ------------------------------------------------------------ use cases

    async def create(self, owner: str, data: PersonalData, caller: Caller) -> Customer:
        """A new active customer owned by ``owner``, personal data sealed under a fresh
        data key. Atomic with ``lastro.customer.created`` and its audit record.
        Raises EmailTaken, InvalidRequest (a value with nothing to index); a KMS
        failure raises TransitError/TransitUnavailable before anything is written."""
        now = self._clock()
        customer_id = domain.new_customer_id(now)
        email_bi = _index(self._index, data.email, "email", "email")
        document_bi = _index(self._index, data.document_number, "document", "document_number")
        data_key = await self._keys.create_subject_key()
        sealed = _seal(FieldCipher(data_key.plaintext), customer_id, data)

        async def work(conn: AsyncConnection) -> Customer:
            await self._email_in_use(conn, data.email)
            await conn.execute(
                insert(self.table).values(
                    id=customer_id,
                    owner=owner,
                    status=ACTIVE,
                    data_key=data_key.ciphertext,
                    email_bi=email_bi,
                    document_bi=document_bi,
                    created_at=now,
                    updated_at=now,
                    **sealed,
                )
            )
            await self._record(conn, caller, "created", customer_id, {"owner": owner}, now)
            return Customer(customer_id, owner, ACTIVE, data, now, now, None)

        return await self._write(work)

    async def _write(self, work: Callable[[AsyncConnection], Awaitable[Customer]]) -> Customer:
        try:
            result: Customer = await in_transaction(self._engine, work)
        except IntegrityError as error:
            if constraint_name(error) == EMAIL_INDEX_CONSTRAINT:
                raise EmailTaken(
                    "another customer uses this e-mail address", field="email"
                ) from None
            raise
        return result

    async def get(self, customer_id: str, owner: str | None) -> Customer:
        """The customer with its personal data opened; UnknownCustomer if it does not
        exist or belongs to someone else, CustomerErased after erasure."""
        async with self._engine.connect() as conn:
            row = await self._row(conn, customer_id, owner)
        if row.status == ERASED:
            raise CustomerErased(f"customer {customer_id} was erased")
        return await self._view(row)

    async def update_contact(
        self, customer_id: str, owner: str | None, changes: Mapping[str, Any], caller: Caller
    ) -> Customer:
        """Change e-mail, phone and/or address (``None`` clears phone or address).
        Atomic with ``lastro.customer.updated`` (naming the changed fields) and its
        audit record; re-seals only the changed fields. Raises UnknownCustomer,
        CustomerErased, EmailTaken, InvalidRequest."""
        unknown = set(changes) - CONTACT_FIELDS
        if unknown:
            raise domain.InvalidRequest("only contact data can change", field=min(unknown))
        if "email" in changes and changes["email"] is None:
            raise domain.InvalidRequest("email cannot be removed", field="email")

        async def work(conn: AsyncConnection) -> Customer:
            now = self._clock()
            row = await self._row(conn, customer_id, owner, lock=True)
            if row.status == ERASED:
                raise CustomerErased(f"customer {customer_id} was erased")
            cipher = await self._keys.cipher(row.data_key)
            current = _open(cipher, row)
            updated = replace(current, **changes)
            sealed = _seal(cipher, customer_id, updated)
            values: dict[str, Any] = {name: sealed[name] for name in changes}
            if "email" in changes:
                values["email_bi"] = _index(self._index, updated.email, "email", "email")
                await self._email_in_use(conn, updated.email, except_id=customer_id)
            c = self.table
            await conn.execute(
                update(c).where(c.c.id == customer_id).values(updated_at=now, **values)
            )
            await self._record(
                conn, caller, "updated", customer_id, {"fields": sorted(changes)}, now
            )
            return Customer(customer_id, row.owner, ACTIVE, updated, row.created_at, now, None)

        return await self._write(work)

    async def erase(self, customer_id: str, owner: str | None, caller: Caller) -> Customer:
        """Crypto-shred the customer's personal data.

        Guarantee: in one transaction the wrapped data key and both blind indexes
        are wiped, the row becomes an ``erased`` tombstone, ``lastro.customer.erased``
        and an audit record are written; this process then drops the unwrapped key
        from its cache (others within the cache TTL). The sealed fields stay as
        unreadable ciphertext; accounts, postings and balances are not touched.
        Idempotent: erasing an erased customer returns the tombstone, writes nothing.
        """
        wiped: list[str] = []

        async def work(conn: AsyncConnection) -> Customer:
            wiped.clear()
            now = self._clock()
            row = await self._row(conn, customer_id, owner, lock=True)
            if row.status == ERASED:
                return await self._view(row)
            c = self.table
            await conn.execute(
                update(c)
                .where(c.c.id == customer_id)
                .values(
                    status=ERASED,
                    data_key=None,
                    email_bi=None,
                    document_bi=None,
                    erased_at=now,
                    updated_at=now,
                )
            )
            await self._record(
                conn, caller, "erased", customer_id, {"erased_at": now.isoformat()}, now
            )
            wiped.append(row.data_key)
            return Customer(customer_id, row.owner, ERASED, None, row.created_at, now, now)

        erased = await in_transaction(self._engine, work)
        for wrapped in wiped:
            self._keys.forget(wrapped)
        return erased

    async def contact(self, customer_id: str) -> Contact:
        """The customer's owner, e-mail and phone (for notifications; services only).
        Raises UnknownCustomer, or CustomerErased once the data is shredded."""
        customer = await self.get(customer_id, None)
        assert customer.data is not None
        return Contact(customer.id, customer.owner, customer.data.email, customer.data.phone)

    async def export(self, customer_id: str, owner: str | None) -> CustomerExport:
        """The customer's personal data in clear and their accounts with balances.
        Raises UnknownCustomer or CustomerErased (nothing personal is left to export)."""
        customer = await self.get(customer_id, owner)
        accounts = await self._ledger.list_accounts(customer_id)
        return CustomerExport(customer, accounts, self._clock())

    async def find_by_email(self, email: str) -> list[str]:
        """Ids of live customers with this e-mail address (blind-index lookup)."""
        return await self._find("email_bi", email, "email")

    async def find_by_document(self, document_number: str) -> list[str]:
        """Ids of live customers with this document number (blind-index lookup)."""
        return await self._find("document_bi", document_number, "document")

    async def _find(self, column: str, value: str, purpose: str) -> list[str]:
        c = self.table
        candidates = self._index.candidates(value, purpose=purpose)
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(c.c.id).where(c.c[column].in_(candidates)))
            return [row.id for row in rows]

    async def owned_ids(self, owner: str) -> list[str]:
        """Ids of every customer ``owner`` created (erased ones included: their
        accounts stay theirs), oldest first."""
        c = self.table
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(c.c.id).where(c.c.owner == owner).order_by(c.c.id))
            return [row.id for row in rows]

    async def owns(self, owner: str, customer_ids: Sequence[str | None]) -> bool:
        """True when every id in ``customer_ids`` is a customer of ``owner``."""
        wanted = {cid for cid in customer_ids if cid is not None}
        if not wanted or len(wanted) != len(customer_ids):
            return False
        c = self.table
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(c.c.id).where(c.c.owner == owner, c.c.id.in_(sorted(wanted)))
            )
            return {row.id for row in rows} == wanted

    async def require_active(self, customer_id: str, owner: str | None) -> None:
        """Raise UnknownCustomer (absent or not ``owner``'s) or CustomerErased."""
        async with self._engine.connect() as conn:
            row = await self._row(conn, customer_id, owner)
        if row.status == ERASED:
            raise CustomerErased(f"customer {customer_id} was erased")

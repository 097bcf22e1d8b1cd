"""Customers: personal data sealed per customer, blind-indexed, erasable by crypto-shredding.

Storage (table ``customers`` in the service schema, queries in ``store/customers.py``):

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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from lastro.accounts import domain, events
from lastro.accounts.domain import (
    ACTIVE,
    CONTACT_FIELDS,
    ERASED,
    Contact,
    Customer,
    CustomerExport,
    PersonalData,
)
from lastro.accounts.postings import utc_now
from lastro.accounts.service import Ledger
from lastro.accounts.store import CUSTOMERS, CustomerQueries, SealedCustomer
from lastro.core.changes import Caller
from lastro.core.db import Engine, Tx, in_transaction, read
from lastro.core.security.fields import BlindIndex, FieldCipher, SubjectKeys

Clock = Callable[[], datetime]
TABLE: Final = CUSTOMERS


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


def _open(cipher: FieldCipher, stored: SealedCustomer) -> PersonalData:
    def text(column: str) -> str | None:
        token = stored.sealed[column]
        if token is None:
            return None
        return cipher.open_text(token, table=TABLE, column=column, row_id=stored.id)

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
    """Customer use cases over the ledger's schema.

    ``keys`` wraps per-customer data keys with the PII Transit key, ``index``
    computes blind indexes; events and audit records go through the ledger's
    :class:`~lastro.core.changes.ChangeRecorder` to its outbox and audit chain.
    """

    def __init__(
        self,
        engine: Engine,
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
        self._q = CustomerQueries(ledger.tables)
        self.table = ledger.tables.customers

    async def _record(
        self,
        conn: Tx,
        caller: Caller,
        fact: str,
        customer_id: str,
        details: dict[str, Any],
        now: datetime,
    ) -> None:
        """The outbox event ``lastro.customer.<fact>`` and its audit record; ids and
        field names only, never personal data."""
        await self._ledger.changes.record(
            conn,
            caller,
            action=f"customer.{fact}",
            target=customer_id,
            data=events.customer_changed(customer_id, **details),
            event_type=f"lastro.customer.{fact}",
            topic=events.ACCOUNTS_TOPIC,
            key=customer_id,
            now=now,
        )

    async def _view(self, stored: SealedCustomer) -> Customer:
        data = None
        if stored.status == ACTIVE:
            assert stored.data_key is not None
            data = _open(await self._keys.cipher(stored.data_key), stored)
        return Customer(
            stored.id,
            stored.owner,
            stored.status,
            data,
            stored.created_at,
            stored.updated_at,
            stored.erased_at,
        )

    async def _refuse_taken_email(self, conn: Tx, email: str, except_id: str | None = None) -> None:
        candidates = self._index.candidates(email, purpose="email")
        if await self._q.email_in_use(conn, candidates, except_id):
            raise domain.EmailTaken("another customer uses this e-mail address", field="email")

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

        async def work(conn: Tx) -> Customer:
            await self._refuse_taken_email(conn, data.email)
            await self._q.insert(
                conn,
                {
                    "id": customer_id,
                    "owner": owner,
                    "status": ACTIVE,
                    "data_key": data_key.ciphertext,
                    "email_bi": email_bi,
                    "document_bi": document_bi,
                    "created_at": now,
                    "updated_at": now,
                    **sealed,
                },
            )
            await self._record(conn, caller, "created", customer_id, {"owner": owner}, now)
            return Customer(customer_id, owner, ACTIVE, data, now, now, None)

        return await in_transaction(self._engine, work)

    async def _live(
        self, conn: Tx, customer_id: str, owner: str | None, lock: bool = False
    ) -> SealedCustomer:
        stored = await self._q.load(conn, customer_id, owner, lock=lock)
        if stored.status == ERASED:
            raise domain.CustomerErased(f"customer {customer_id} was erased")
        return stored

    async def stored(self, conn: Tx, customer_id: str) -> SealedCustomer:
        """The row as stored (sealed; a tombstone once erased); UnknownCustomer."""
        return await self._q.load(conn, customer_id, None)

    async def others_live(self, conn: Tx, owner: str, except_id: str) -> int:
        """How many live customers ``owner`` has besides ``except_id``."""
        return await self._q.others_live(conn, owner, except_id)

    async def get(self, customer_id: str, owner: str | None) -> Customer:
        """The customer with its personal data opened; UnknownCustomer if it does not
        exist or belongs to someone else, CustomerErased after erasure."""
        stored = await read(self._engine, lambda conn: self._live(conn, customer_id, owner))
        return await self._view(stored)

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

        async def work(conn: Tx) -> Customer:
            now = self._clock()
            stored = await self._live(conn, customer_id, owner, lock=True)
            assert stored.data_key is not None
            cipher = await self._keys.cipher(stored.data_key)
            updated = replace(_open(cipher, stored), **changes)
            sealed = _seal(cipher, customer_id, updated)
            values: dict[str, Any] = {name: sealed[name] for name in changes}
            if "email" in changes:
                values["email_bi"] = _index(self._index, updated.email, "email", "email")
                await self._refuse_taken_email(conn, updated.email, except_id=customer_id)
            await self._q.update(conn, customer_id, {"updated_at": now, **values})
            await self._record(
                conn, caller, "updated", customer_id, {"fields": sorted(changes)}, now
            )
            return Customer(
                customer_id, stored.owner, ACTIVE, updated, stored.created_at, now, None
            )

        return await in_transaction(self._engine, work)

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

        async def work(conn: Tx) -> Customer:
            wiped.clear()
            now = self._clock()
            stored = await self._q.load(conn, customer_id, owner, lock=True)
            if stored.status == ERASED:
                return await self._view(stored)
            await self._q.erase(conn, customer_id, now)
            await self._record(
                conn, caller, "erased", customer_id, {"erased_at": now.isoformat()}, now
            )
            assert stored.data_key is not None
            wiped.append(stored.data_key)
            return Customer(customer_id, stored.owner, ERASED, None, stored.created_at, now, now)

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
        candidates = self._index.candidates(value, purpose=purpose)
        return await self._read(lambda conn: self._q.ids_by_index(conn, column, candidates))

    async def _read(self, work: Callable[[Tx], Awaitable[list[str]]]) -> list[str]:
        return await read(self._engine, work)

"""The account service's privacy API (``core/privacy.py``, docs/privacy.md).

Data classes this service holds
    ``accounts.customers``  name, e-mail, phone, document number and address, sealed
                            under the customer's own data key (``customers.py``)
    ``accounts.accounts``   the customer's accounts: currency, status, balances, metadata
    ``accounts.holds``      holds on those accounts (counterparty ids, amounts,
                            description, metadata)
    ``accounts.postings``   postings touching those accounts: their description and
                            metadata (the free text a caller wrote about a movement)
                            and the customer's entries

Erasure crypto-shreds the customer (:meth:`Customers.erase`: the wrapped data key and
the blind indexes are wiped, the sealed fields can never be opened again). Accounts,
holds, postings, entries and balances are not touched: the ledger is the legal
record of money and stays intact and balanced (GDPR art. 17(3)(b)); it holds ids
and amounts, and the platform's callers write no personal data into descriptions.

Retention (``purge``): ``accounts.closed_customers`` ``crypto-shred`` erases the
customers whose every account was closed before the cutoff;
``accounts.audit_records`` ``purge`` deletes the audit records older than the cutoff
from the start of the chain and anchors it there
(``core.privacy.purge_audit_records``);
``accounts.published_events`` ``purge`` deletes the outbox rows published before the
cutoff (``core.privacy.purge_published_events``). Nothing else of this service is
purged by age.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from lastro.accounts import domain
from lastro.accounts.customers import Customers
from lastro.accounts.domain import ERASED
from lastro.accounts.postings import utc_now
from lastro.accounts.service import Ledger
from lastro.accounts.store.privacy import PrivacyQueries
from lastro.core import privacy
from lastro.core.changes import Caller
from lastro.core.db import Engine, Tx, in_transaction, read
from lastro.core.privacy import Erased, Erasure, Purge, Purged, Records, Subject

SERVICE: Final = "accounts"
CUSTOMERS: Final = "accounts.customers"
ACCOUNTS: Final = "accounts.accounts"
HOLDS: Final = "accounts.holds"
POSTINGS: Final = "accounts.postings"
CLOSED_CUSTOMERS: Final = "accounts.closed_customers"
SHARED: Final = privacy.SharedClasses(SERVICE)
PURGEABLE: Final[Mapping[str, frozenset[str]]] = {
    CLOSED_CUSTOMERS: frozenset({"crypto-shred"}),
    **SHARED.actions,
}
RETENTION_REASON: Final = "retention: every account closed past the retention period"


def customer_record(customer: domain.Customer) -> dict[str, Any]:
    data = customer.data
    return {
        "id": customer.id,
        "owner": customer.owner,
        "status": customer.status,
        "name": None if data is None else data.name,
        "email": None if data is None else data.email,
        "phone": None if data is None else data.phone,
        "document_number": None if data is None else data.document_number,
        "address": None if data is None or data.address is None else dict(data.address),
        "created_at": customer.created_at.isoformat(),
        "erased_at": None if customer.erased_at is None else customer.erased_at.isoformat(),
    }


class Privacy:
    """accounts' :class:`~lastro.core.privacy.PrivacyPort`."""

    service = SERVICE

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        customers: Customers,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._customers = customers
        self._queries = PrivacyQueries(ledger.tables)
        self._clock = clock

    async def _customer(self, customer_id: str) -> domain.Customer:
        """The customer with personal data opened, or its tombstone once erased."""
        try:
            return await self._customers.get(customer_id, None)
        except domain.CustomerErased:
            stored = await read(
                self._engine, lambda conn: self._customers.stored(conn, customer_id)
            )
            return domain.Customer(
                stored.id,
                stored.owner,
                ERASED,
                None,
                stored.created_at,
                stored.updated_at,
                stored.erased_at,
            )

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """The customer (opened), accounts, holds and postings; UnknownCustomer for
        an id this service never held. The read is audited (``privacy.exported``)."""
        customer = await self._customer(subject.customer_id)

        async def work(tx: Tx) -> Records:
            accounts = await self._queries.accounts_of(tx, customer.id)
            ids = [a["id"] for a in accounts]
            records: Records = {
                CUSTOMERS: [customer_record(customer)],
                ACCOUNTS: accounts,
                HOLDS: await self._queries.holds_of(tx, ids),
                POSTINGS: await self._queries.postings_of(tx, ids),
            }
            await self._ledger.changes.audit(
                tx,
                caller,
                action=privacy.EXPORTED,
                target=customer.id,
                details={name: len(items) for name, items in records.items()},
                now=self._clock(),
            )
            return records

        return await in_transaction(self._engine, work)

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Crypto-shred the customer (``customer.erased``, see ``customers.py``) and
        audit ``privacy.erased`` with the request id; the ledger is not touched.
        Idempotent: a second call shreds nothing and reports 0."""
        customer_id = erasure.subject.customer_id
        before = await self._customer(customer_id)
        erased = await self._customers.erase(customer_id, None, caller)
        counts = {CUSTOMERS: int(before.status != ERASED)}
        at = erased.erased_at or self._clock()

        async def work(tx: Tx) -> None:
            await self._ledger.changes.audit(
                tx,
                caller,
                action=privacy.ERASED,
                target=customer_id,
                details={
                    "erased": counts,
                    "privacy_request_id": erasure.request_id,
                    "ledger_retained": "legal record of money movements",
                },
                now=self._clock(),
            )

        await in_transaction(self._engine, work)
        return Erased(counts, at)

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """``accounts.closed_customers``/``crypto-shred``: erase every customer whose
        accounts all closed before the cutoff (each erasure audited
        ``customer.erased``; the run ``privacy.purged``). A dry run only counts.
        ``accounts.audit_records`` and ``accounts.published_events``/``purge``: see the
        module docstring; never the ledger."""
        privacy.check_purge(SERVICE, PURGEABLE, purge)
        shared = await SHARED.purge(
            self._engine, self._ledger.changes, purge, caller, now=self._clock()
        )
        if shared is not None:
            return shared
        due = await read(
            self._engine, lambda conn: self._queries.closed_customers(conn, purge.cutoff)
        )
        if not purge.dry_run:
            shredding = replace(caller, reason=RETENTION_REASON)
            for customer_id in due:
                await self._customers.erase(customer_id, None, shredding)

        changes, now = self._ledger.changes, self._clock()
        await in_transaction(
            self._engine,
            lambda tx: privacy.audit_purged(tx, changes, caller, purge, len(due), now),
        )
        return Purged(purge.data_class, purge.action, purge.cutoff, len(due))

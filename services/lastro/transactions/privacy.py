"""The privacy API's use cases (docs/interfaces.md, "Privacy API"): export, erase, purge.

Data classes this service holds
    ``transactions.transactions``         a customer's transactions: amounts, states,
                                          accounts, descriptions, screening decisions
    ``transactions.payout_destinations``  where payouts went: the holder's name and the
                                          IBAN, sealed under a data key of their own
    ``transactions.card_fingerprints``    the fingerprint of the card behind each card
                                          payment a merchant accepted (also its
                                          screening counterparty)
    ``transactions.request_context``      the device, IP address, country and place each
                                          request came from
    ``transactions.idempotency_keys``     stored responses of money requests (24 h)

Erasure forgets the counterparty names and IBANs of the customer's payouts, the card
fingerprints of its card payments and the context of its requests. Amounts, states,
account ids, the ledger and its postings stay: they are financial records the law
requires to keep (GDPR art. 17(3)(b)), and the account service owns the ledger.
Erasing twice changes nothing the second time. Every call is audited.

Retention (``purge``): ``transactions.request_context`` (``purge`` or ``anonymize``:
both clear it) and ``transactions.card_fingerprints`` (``anonymize``) for transactions
at rest created before the cutoff; ``transactions.payout_destinations``
(``anonymize`` clears name, IBAN and data key; ``crypto-shred`` drops the data key);
``transactions.idempotency_keys`` (``purge``: stored responses past their 24 h);
``transactions.audit_records`` (``purge``: the audit records older than the cutoff
at the start of the chain, which is then anchored, ``core.privacy.purge_audit_records``);
``transactions.published_events`` ``purge`` deletes the outbox rows published before
the cutoff (``core.privacy.purge_published_events``).
``transactions.transactions`` is never purged (financial records): 422.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core import privacy
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Tx, in_transaction
from lastro.core.privacy import Erased, Erasure, Purge, Purged, Records, Subject
from lastro.core.security.fields import FieldCipher, SubjectKeys
from lastro.transactions.store import privacy as queries
from lastro.transactions.store.tables import Tables

SERVICE: Final = "transactions"
TRANSACTIONS: Final = "transactions.transactions"
PAYOUT_DESTINATIONS: Final = "transactions.payout_destinations"
CARD_FINGERPRINTS: Final = "transactions.card_fingerprints"
REQUEST_CONTEXT: Final = "transactions.request_context"
IDEMPOTENCY_KEYS: Final = "transactions.idempotency_keys"
SHARED: Final = privacy.SharedClasses(SERVICE)
PURGEABLE: Final[Mapping[str, frozenset[str]]] = {
    REQUEST_CONTEXT: frozenset({"purge", "anonymize"}),
    CARD_FINGERPRINTS: frozenset({"anonymize"}),
    PAYOUT_DESTINATIONS: frozenset({"anonymize", "crypto-shred"}),
    IDEMPOTENCY_KEYS: frozenset({"purge"}),
    **SHARED.actions,
}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def transaction_record(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {key: _plain(value) for key, value in row.items()}
    record["type"] = record.pop("kind")
    return record


class Privacy:
    """transactions' :class:`~lastro.core.privacy.PrivacyPort`."""

    service = SERVICE

    def __init__(
        self,
        engine: AsyncEngine,
        tables: Tables,
        recorder: ChangeRecorder,
        subject_keys: SubjectKeys,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._t = tables
        self._recorder = recorder
        self._keys = subject_keys
        self._clock = clock

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """Everything held about the customer, payout names and IBANs unsealed; the
        read is audited (``privacy.exported``)."""
        customer_id = subject.customer_id
        t = self._t

        async def read(tx: Tx) -> tuple[list[dict[str, Any]], list[Any]]:
            rows = await queries.transactions_of(tx, t, customer_id)
            return rows, list(await queries.payout_destinations_of(tx, t, customer_id))

        rows, destinations = await in_transaction(self._engine, read)
        mine = [r for r in rows if r["customer_id"] == customer_id]
        records = {
            TRANSACTIONS: [transaction_record(r) for r in rows],
            PAYOUT_DESTINATIONS: [await self._destination(d) for d in destinations],
            CARD_FINGERPRINTS: [
                {"transaction_id": r["id"], "fingerprint": r["card"]["fingerprint"]}
                for r in mine
                if r["kind"] == "card_payment" and (r["card"] or {}).get("fingerprint")
            ],
            REQUEST_CONTEXT: [
                {"transaction_id": r["id"], **r["context"]} for r in mine if r["context"]
            ],
        }

        async def audit(tx: Tx) -> None:
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.EXPORTED,
                target=customer_id,
                details={name: len(items) for name, items in records.items()},
            )

        await in_transaction(self._engine, audit)
        return records

    async def _destination(self, row: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "transaction_id": row.transaction_id,
            "iban_last4": row.iban_last4,
            "country": row.country,
            "holder_name": None,
            "iban": None,
            "created_at": row.created_at.isoformat(),
        }
        if row.wrapped_key is None:  # erased, or shredded by retention
            return record
        cipher = FieldCipher(await self._keys.unwrap(row.wrapped_key))
        table = self._t.payout_destinations.name
        for column in ("holder_name", "iban"):
            sealed = getattr(row, column)
            if sealed is not None:
                record[column] = cipher.open_text(
                    sealed, table=table, column=column, row_id=row.transaction_id
                )
        return record

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Forget the personal fields of the customer's transactions (module
        docstring), in one transaction; audited ``privacy.erased``. Returns the
        counts per data class and the time."""
        customer_id = erasure.subject.customer_id
        at = self._clock()
        t = self._t

        async def work(tx: Tx) -> dict[str, int]:
            erased = {
                TRANSACTIONS: 0,
                PAYOUT_DESTINATIONS: await queries.erase_payout_destinations(tx, t, customer_id),
                CARD_FINGERPRINTS: await queries.erase_card_fingerprints(tx, t, customer_id),
                REQUEST_CONTEXT: await queries.erase_request_context(tx, t, customer_id),
            }
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.ERASED,
                target=customer_id,
                details={
                    **erased,
                    "privacy_request_id": erasure.request_id,
                    "transactions_retained": "financial records",
                },
            )
            return erased

        return Erased(await in_transaction(self._engine, work), at)

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """Apply the retention ``action`` to ``data_class`` older than the cutoff;
        audited ``privacy.purged`` (a dry run counts and changes nothing)."""
        privacy.check_purge(SERVICE, PURGEABLE, purge)
        data_class, cutoff, action, dry_run = (
            purge.data_class,
            purge.cutoff,
            purge.action,
            purge.dry_run,
        )
        now = self._clock()
        t = self._t
        shared = await SHARED.purge(self._engine, self._recorder, purge, caller, now=now)
        if shared is not None:
            return shared

        async def work(tx: Tx) -> int:
            if data_class == REQUEST_CONTEXT:
                affected = await queries.age_out_request_context(tx, t, cutoff, dry_run)
            elif data_class == CARD_FINGERPRINTS:
                affected = await queries.age_out_card_fingerprints(tx, t, cutoff, dry_run)
            elif data_class == PAYOUT_DESTINATIONS:
                affected = await queries.age_out_payout_destinations(
                    tx, t, cutoff, shred_only=action == "crypto-shred", dry_run=dry_run
                )
            else:
                affected = await queries.age_out_idempotency_keys(tx, t, cutoff, now, dry_run)
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.PURGED,
                target=data_class,
                details={
                    "action": action,
                    "cutoff": cutoff.isoformat(),
                    "dry_run": dry_run,
                    "affected": affected,
                },
            )
            return affected

        affected = await in_transaction(self._engine, work)
        return Purged(data_class, action, cutoff, affected)

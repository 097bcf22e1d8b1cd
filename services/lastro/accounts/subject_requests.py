"""Data-subject requests across every service: one export bundle, one erasure.

The account service hosts them because it owns the data subject (the customer and
the user who owns it, ``customers.owner``). The fan-out goes to every service
``core/registry.py`` lists with ``holds_personal_data`` over their privacy API, so a
service joins without a change here; this service's own part is asked in-process
(the same :class:`~lastro.core.privacy.PrivacyPort` its privacy API answers with).

* :meth:`SubjectRequests.export` asks each service's ``/internal/v1/privacy/export``
  and returns one bundle (``domain/subject_requests.py``) signed by the KMS (Transit
  ``hmac``). It is all or nothing: a service that cannot answer fails the export
  (503) rather than yield a bundle that silently lacks its data.
* :meth:`SubjectRequests.erase` writes an erasure certificate, then asks each
  service to erase (request id = the certificate id, so a repeat is idempotent per
  service), recording each outcome; the certificate is ``partial`` until every
  service confirmed and :meth:`retry` asks again only those that did not. Each
  version of the certificate is signed by the KMS.

Every request is audited in this service's chain (``privacy.bundle_exported``,
``privacy.erasure_requested``, ``privacy.erasure_retried``) with actor, reason and
request id; the per-service records are in each service's own chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Row, insert, select, update

from lastro.accounts.customers import Customers
from lastro.accounts.domain import subject_requests as sr
from lastro.accounts.service import Ledger
from lastro.core import ids
from lastro.core.changes import Caller
from lastro.core.db import Engine, Tx, in_transaction, read
from lastro.core.errors import DependencyUnavailable, NotFound
from lastro.core.privacy import Erasure, PrivacyPort, Subject, erased_view
from lastro.core.privacy_client import PrivacyCallFailed, PrivacyClient
from lastro.core.registry import ServiceSpec
from lastro.core.security.transit import TransitClient

log = logging.getLogger(__name__)

EXPORT_ID_PREFIX: Final = "dsx"
CERTIFICATE_ID_PREFIX: Final = "erc"


class UnknownCertificate(NotFound):
    slug = "unknown-erasure-certificate"
    title = "No such erasure certificate"


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    """A privacy API body: an unknown ``user_id`` is left out, not sent as null."""
    return {key: value for key, value in body.items() if value is not None}


def _now() -> datetime:
    return datetime.now(UTC)


class SubjectRequests:
    """Export and erasure of one data subject across ``services``."""

    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        customers: Customers,
        transit: TransitClient,
        client: PrivacyClient,
        services: Sequence[ServiceSpec],
        *,
        local: PrivacyPort,
        key_name: str,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self._customers = customers
        self._transit = transit
        self._client = client
        self._services = tuple(services)
        self._local = local
        self._key = key_name
        self._clock = clock
        self._table = ledger.tables.erasure_certificates

    async def _owner(self, customer_id: str) -> str:
        """The user (or client) owning the customer, also once erased (the
        tombstone keeps it); UnknownCustomer otherwise."""
        stored = await read(self._engine, lambda conn: self._customers.stored(conn, customer_id))
        return stored.owner

    async def _user_to_erase(self, customer_id: str, owner: str) -> str | None:
        others = await read(
            self._engine, lambda conn: self._customers.others_live(conn, owner, customer_id)
        )
        return sr.user_to_erase(owner, others)

    async def _ask(
        self,
        spec: ServiceSpec,
        operation: str,
        body: dict[str, Any],
        caller: Caller,
        request_id: str | None,
    ) -> dict[str, Any]:
        """One service's answer to ``export`` or ``erase`` (this service's own part
        in-process, every other over its privacy API); PrivacyCallFailed otherwise."""
        if spec.name != self._local.service:
            return await self._client.call(spec, operation, body, request_id=request_id)
        subject = Subject(body["customer_id"], body.get("user_id"))
        if operation == "export":
            return {"records": await self._local.export(subject, caller)}
        erased = await self._local.erase(
            Erasure(subject, body["reason"], body["request_id"]), caller
        )
        return erased_view(spec.name, erased)

    async def _sign(self, document: dict[str, Any]) -> dict[str, Any]:
        mac = await self._transit.hmac(self._key, sr.signed_content(document))
        return sr.with_signature(document, self._key, mac)

    async def verify(self, document: dict[str, Any]) -> bool:
        """True only if the document's signature is the KMS's HMAC of its content."""
        signature = document.get("signature")
        if not isinstance(signature, dict) or signature.get("key") != self._key:
            return False
        return await self._transit.verify_hmac(
            self._key, sr.signed_content(document), str(signature.get("hmac", ""))
        )

    # ------------------------------------------------------------ export

    async def export(self, customer_id: str, caller: Caller) -> dict[str, Any]:
        """The signed bundle of everything every service holds about the customer.
        Raises UnknownCustomer, or DependencyUnavailable naming the service that
        could not answer (nothing partial is returned)."""
        user_id = sr.user_of(await self._owner(customer_id))
        request_id = ids.new_id(EXPORT_ID_PREFIX)
        body = _without_none({"customer_id": customer_id, "user_id": user_id})
        sections: dict[str, dict[str, list[Any]]] = {}
        for spec in self._services:
            try:
                answer = await self._ask(spec, "export", body, caller, request_id)
            except PrivacyCallFailed as failure:
                raise DependencyUnavailable(f"export incomplete: {failure}") from failure
            sections[spec.name] = answer["records"]
        bundle = sr.unsigned_bundle(request_id, customer_id, user_id, self._clock(), sections)
        signed = await self._sign(bundle)

        async def work(tx: Tx) -> None:
            await self._ledger.changes.audit(
                tx,
                caller,
                action="privacy.bundle_exported",
                target=customer_id,
                details={
                    "privacy_request_id": request_id,
                    "services": {
                        name: entry["total"]
                        for name, entry in bundle["manifest"]["services"].items()
                    },
                },
            )

        await in_transaction(self._engine, work)
        return signed

    # ------------------------------------------------------------ erasure

    async def erase(self, customer_id: str, reason: str, caller: Caller) -> dict[str, Any]:
        """Erase the customer everywhere and return the signed certificate (status
        ``complete``, or ``partial`` naming the services to retry). Raises
        UnknownCustomer before anything is asked. The owning user is erased too
        unless they own another live customer (``domain.user_to_erase``)."""
        user_id = await self._user_to_erase(customer_id, await self._owner(customer_id))
        now = self._clock()
        certificate = sr.Certificate(
            id=ids.new_id(CERTIFICATE_ID_PREFIX),
            customer_id=customer_id,
            user_id=user_id,
            reason=reason,
            requested_by=caller.actor,
            request_id=caller.request_id,
            services=sr.pending(s.name for s in self._services),
            created_at=now,
            updated_at=now,
        )

        async def record(tx: Tx) -> None:
            await tx.execute(insert(self._table).values(**self._row(certificate)))
            await self._ledger.changes.audit(
                tx,
                caller,
                action="privacy.erasure_requested",
                target=customer_id,
                details={
                    "certificate_id": certificate.id,
                    "services": list(certificate.services),
                },
                now=now,
            )

        await in_transaction(self._engine, record)
        return await self._fan_out(certificate, caller)

    async def retry(self, certificate_id: str, caller: Caller) -> dict[str, Any]:
        """Ask again every service whose erasure the certificate does not confirm
        (idempotent per service); a complete certificate is returned unchanged."""
        certificate = await self._load(certificate_id)
        if certificate.status == sr.COMPLETE:
            return certificate.document()

        async def audit(tx: Tx) -> None:
            await self._ledger.changes.audit(
                tx,
                caller,
                action="privacy.erasure_retried",
                target=certificate.customer_id,
                details={
                    "certificate_id": certificate.id,
                    "services": sr.to_retry(certificate.services),
                },
            )

        await in_transaction(self._engine, audit)
        return await self._fan_out(certificate, caller)

    async def certificate(self, certificate_id: str) -> dict[str, Any]:
        return (await self._load(certificate_id)).document()

    async def _fan_out(self, certificate: sr.Certificate, caller: Caller) -> dict[str, Any]:
        by_name = {s.name: s for s in self._services}
        outcomes = dict(certificate.services)
        for name in sr.to_retry(outcomes):
            spec = by_name.get(name)
            if spec is None:
                outcomes[name] = outcomes[name].failed("service no longer registered")
                continue
            body = _without_none(
                {
                    "customer_id": certificate.customer_id,
                    "user_id": certificate.user_id,
                    "reason": certificate.reason,
                    "request_id": certificate.id,
                }
            )
            try:
                answer = await self._ask(spec, "erase", body, caller, caller.request_id)
            except PrivacyCallFailed as failure:
                log.warning("erasure %s: %s", certificate.id, failure)
                outcomes[name] = outcomes[name].failed(str(failure))
                continue
            outcomes[name] = outcomes[name].succeeded(answer["erased"], answer["erased_at"])
        unsigned = replace(certificate, services=outcomes, updated_at=self._clock(), signature=None)
        signed_document = await self._sign(unsigned.document())
        signature = signed_document["signature"]

        async def store(tx: Tx) -> None:
            row = self._row(unsigned)
            await tx.execute(
                update(self._table)
                .where(self._table.c.id == certificate.id)
                .values(
                    status=row["status"],
                    services=row["services"],
                    updated_at=row["updated_at"],
                    signature=signature,
                )
            )

        await in_transaction(self._engine, store)
        return signed_document

    def _row(self, certificate: sr.Certificate) -> dict[str, Any]:
        return {
            "id": certificate.id,
            "customer_id": certificate.customer_id,
            "user_id": certificate.user_id,
            "reason": certificate.reason,
            "requested_by": certificate.requested_by,
            "request_id": certificate.request_id,
            "status": certificate.status,
            "services": {n: o.view() for n, o in certificate.services.items()},
            "signature": None if certificate.signature is None else dict(certificate.signature),
            "created_at": certificate.created_at,
            "updated_at": certificate.updated_at,
        }

    async def _load(self, certificate_id: str) -> sr.Certificate:
        query = select(self._table).where(self._table.c.id == certificate_id)

        async def load(conn: Tx) -> Row[Any] | None:
            return (await conn.execute(query)).one_or_none()

        row = await read(self._engine, load)
        if row is None:
            raise UnknownCertificate(f"no erasure certificate {certificate_id}", field="id")
        return sr.Certificate(
            id=row.id,
            customer_id=row.customer_id,
            user_id=row.user_id,
            reason=row.reason,
            requested_by=row.requested_by,
            request_id=row.request_id,
            services=sr.parse_services(row.services),
            created_at=row.created_at,
            updated_at=row.updated_at,
            signature=row.signature,
        )

"""The privacy API every service holding personal data answers (docs/interfaces.md).

``POST /internal/v1/privacy/export``, ``/erase`` and ``/purge``, for a service token
whose audience is the service and whose scope is ``privacy:admin`` (the contract in
the service's ``openapi.yaml`` declares both; ``core/http.py`` enforces them and
validates the body before a handler runs). A service joins by:

1. implementing :class:`PrivacyPort` (its ``privacy.py``: what it holds, per data
   class, and how each class is exported, erased and purged);
2. calling :func:`add_privacy_routes` on its route table, storing the port under
   :data:`PRIVACY_KEY`, and adding the three operations to its ``openapi.yaml``
   (``docs/privacy.md`` shows the block to copy);
3. setting ``holds_personal_data=True`` on its entry in ``core/registry.py``: the
   data-subject orchestrator (``lastro gdpr``) then fans out to it.

This module holds what is the same for every service: the request and answer
shapes, the retention cutoff and the data-class/action check with their errors,
the audit actions (``privacy.exported``, ``privacy.erased``, ``privacy.purged``;
details carry ids, counts and the request id, never personal data), the handlers,
and the two data classes every service holds alike (:func:`shared_classes`,
:func:`purge_shared`): its own audit log (``<service>.audit_records``, action
``purge``: :func:`purge_audit_records`) and the events its outbox already published
(``<service>.published_events``, action ``purge``: :func:`purge_published_events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Protocol

from aiohttp import web
from sqlalchemy import and_, delete, func, select

from lastro.core.audit import AuditChainBroken
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.db import Engine, Tx, in_transaction, snapshot
from lastro.core.errors import DomainError
from lastro.core.http import caller_of, json_body, json_response

EXPORTED: Final = "privacy.exported"
ERASED: Final = "privacy.erased"
PURGED: Final = "privacy.purged"
ACTIONS: Final = ("purge", "anonymize", "crypto-shred")

Records = dict[str, list[dict[str, Any]]]


class UnsupportedDataClass(DomainError):
    slug = "unsupported-data-class"
    title = "This service holds no such data class"


class UnsupportedAction(DomainError):
    slug = "unsupported-retention-action"
    title = "Retention action not supported for this data class"


class InvalidCutoff(DomainError):
    slug = "invalid-cutoff"
    title = "Invalid retention cutoff"


class AuditChainTampered(DomainError):
    slug = "audit-chain-broken"
    title = "The audit chain fails verification; nothing was purged"
    status = 409


@dataclass(frozen=True)
class Subject:
    """Whom a request is about: the customer and, when known, the user who owns it
    (the identity service and a user's own resources are keyed by user)."""

    customer_id: str
    user_id: str | None = None


@dataclass(frozen=True)
class Erasure:
    """An erasure request: idempotent per ``request_id`` (erasing twice changes
    nothing the second time); ``reason`` goes into the audit record."""

    subject: Subject
    reason: str
    request_id: str


@dataclass(frozen=True)
class Erased:
    """What one service erased, per data class, and when."""

    counts: dict[str, int]
    at: datetime


@dataclass(frozen=True)
class Purge:
    """A retention run: apply ``action`` to ``data_class`` older than ``cutoff``
    (a dry run counts and changes nothing)."""

    data_class: str
    cutoff: datetime
    action: str
    dry_run: bool = False


@dataclass(frozen=True)
class Purged:
    data_class: str
    action: str
    cutoff: datetime
    affected: int


class PrivacyPort(Protocol):
    """One service's privacy use cases; every method audits what it did."""

    service: str

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """Everything held about the subject, per data class, readable by them."""
        ...

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Erase (or crypto-shred) the subject's personal data here; idempotent."""
        ...

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """Apply a retention rule (see :func:`check_purge`); only expired rows."""
        ...


PRIVACY_KEY: Final = web.AppKey("privacy_port", PrivacyPort)


def parse_cutoff(text: str, field: str = "older_than") -> datetime:
    """An RFC 3339 time with its offset; InvalidCutoff otherwise."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidCutoff(f"{field} is not an RFC 3339 time", field=field) from None
    if moment.tzinfo is None:
        raise InvalidCutoff(f"{field} needs a UTC offset", field=field)
    return moment


def check_purge(service: str, purgeable: Mapping[str, frozenset[str]], purge: Purge) -> None:
    """UnsupportedDataClass for a class ``service`` does not purge, UnsupportedAction
    for an action it cannot apply to that class (both 422, nothing changed)."""
    allowed = purgeable.get(purge.data_class)
    if allowed is None:
        raise UnsupportedDataClass(
            f"{service} holds no data class {purge.data_class!r}; it holds "
            + ", ".join(sorted(purgeable)),
            field="data_class",
        )
    if purge.action not in allowed:
        raise UnsupportedAction(
            f"{purge.data_class} supports {', '.join(sorted(allowed))}, not {purge.action!r}",
            field="action",
        )


AUDIT_RECORDS_ACTIONS: Final = frozenset({"purge"})
PUBLISHED_EVENTS_ACTIONS: Final = frozenset({"purge"})
PUBLISHED_EVENTS_BATCH: Final = 5_000
"""Outbox rows deleted per transaction by :func:`purge_published_events`."""


def audit_records_class(service: str) -> str:
    """The data class of ``service``'s own audit log (``identity.audit_records``)."""
    return f"{service}.audit_records"


def published_events_class(service: str) -> str:
    """The data class of the events ``service``'s outbox already published to Kafka
    (``transactions.published_events``)."""
    return f"{service}.published_events"


def shared_classes(service: str) -> dict[str, frozenset[str]]:
    """The data classes every service holds alike, with their actions: its audit log
    and its published events (merged into each service's purgeable classes)."""
    return {
        audit_records_class(service): AUDIT_RECORDS_ACTIONS,
        published_events_class(service): PUBLISHED_EVENTS_ACTIONS,
    }


async def purge_shared(
    engine: Engine,
    changes: ChangeRecorder,
    purge: Purge,
    caller: Caller,
    *,
    now: datetime,
    keep_topics: tuple[str, ...] = (),
) -> Purged | None:
    """Run ``purge`` when its data class is one of :func:`shared_classes` (checked by
    :func:`check_purge` first); None when it is one of the service's own."""
    service = purge.data_class.partition(".")[0]
    if purge.data_class == audit_records_class(service):
        return await purge_audit_records(engine, changes, purge, caller, now=now)
    if purge.data_class == published_events_class(service):
        return await purge_published_events(
            engine, changes, purge, caller, now=now, keep_topics=keep_topics
        )
    return None


async def purge_published_events(
    engine: Engine,
    changes: ChangeRecorder,
    purge: Purge,
    caller: Caller,
    *,
    now: datetime,
    keep_topics: tuple[str, ...] = (),
) -> Purged:
    """``<service>.published_events``/``purge``: delete the outbox rows Kafka
    acknowledged before the cutoff. Kafka holds the events for its own retention;
    without this the outbox keeps a second, unbounded copy of every payload.

    A row still pending (``published_at`` unset) is never deleted, however old: the
    relay has not delivered it. Rows of ``keep_topics`` stay (fraud's rules log, whose
    first rows tell a starting replica the shipped rules were seeded). Deleted in
    batches of :data:`PUBLISHED_EVENTS_BATCH`, each its own transaction, so a first
    run over months of events holds no long transaction; the run is audited
    (``privacy.purged``) once done. A cutoff later than ``now`` is refused
    (InvalidCutoff). A dry run counts and changes nothing but its audit record."""
    if purge.cutoff > now:
        raise InvalidCutoff("older_than must not be in the future", field="older_than")
    outbox = changes.outbox
    published = outbox.c.published_at
    expired = and_(published.is_not(None), published < purge.cutoff)
    if keep_topics:
        expired = and_(expired, outbox.c.topic.not_in(keep_topics))

    async def count(tx: Tx) -> int:
        return int(await tx.scalar(select(func.count()).select_from(outbox).where(expired)) or 0)

    async def delete_batch(tx: Tx) -> int:
        batch = select(outbox.c.id).where(expired).order_by(outbox.c.id)
        done = await tx.execute(
            delete(outbox).where(
                outbox.c.id.in_(batch.limit(PUBLISHED_EVENTS_BATCH).scalar_subquery())
            )
        )
        return int(done.rowcount)

    if purge.dry_run:
        affected = await in_transaction(engine, count)
    else:
        affected = 0
        while (deleted := await in_transaction(engine, delete_batch)) > 0:
            affected += deleted
            if deleted < PUBLISHED_EVENTS_BATCH:
                break

    async def audited(tx: Tx) -> None:
        await changes.audit(
            tx,
            caller,
            action=PURGED,
            target=purge.data_class,
            details={
                "action": purge.action,
                "cutoff": purge.cutoff.isoformat(),
                "dry_run": purge.dry_run,
                "affected": affected,
            },
            now=now,
        )

    await in_transaction(engine, audited)
    return Purged(purge.data_class, purge.action, purge.cutoff, affected)


async def purge_audit_records(
    engine: Engine, changes: ChangeRecorder, purge: Purge, caller: Caller, *, now: datetime
) -> Purged:
    """``<service>.audit_records``/``purge``: delete the audit records older than the
    cutoff from the start of the service's chain, anchor the chain there (signed) and
    audit the run (``privacy.purged``, appended after the anchor), in one transaction.

    Only a prefix goes: the purge stops at the first record at or after the cutoff.
    A cutoff later than ``now`` is refused (InvalidCutoff), so the run's own record is
    never due; a chain that fails verification is refused (AuditChainTampered, 409)
    with nothing changed. The whole chain is verified first from a snapshot, without
    blocking appends; under the head lock only what was appended since is walked. A
    dry run counts and changes nothing but its audit record.
    """
    if purge.cutoff > now:
        raise InvalidCutoff("older_than must not be in the future", field="older_than")
    async with snapshot(engine) as conn:
        before = await changes.verify_audit(conn)
    if not before.ok or before.verified is None:
        raise AuditChainTampered(
            f"audit chain broken at seq {before.first_bad_seq}: {before.reason}; "
            "nothing purged, run `lastro audit verify`"
        )
    verified = before.verified

    async def work(tx: Tx) -> int:
        try:
            affected = await changes.purge_audit(
                tx, purge.cutoff, dry_run=purge.dry_run, verified=verified
            )
        except AuditChainBroken as error:
            raise AuditChainTampered(str(error)) from None
        await changes.audit(
            tx,
            caller,
            action=PURGED,
            target=purge.data_class,
            details={
                "action": purge.action,
                "cutoff": purge.cutoff.isoformat(),
                "dry_run": purge.dry_run,
                "affected": affected,
            },
            now=now,
        )
        return affected

    affected = await in_transaction(engine, work)
    return Purged(purge.data_class, purge.action, purge.cutoff, affected)


def subject_of(body: Mapping[str, Any]) -> Subject:
    user_id = body.get("user_id")
    return Subject(str(body["customer_id"]), None if user_id is None else str(user_id))


def erased_view(service: str, erased: Erased) -> dict[str, Any]:
    return {"service": service, "erased": erased.counts, "erased_at": erased.at.isoformat()}


def purged_view(service: str, purged: Purged) -> dict[str, Any]:
    return {
        "service": service,
        "data_class": purged.data_class,
        "action": purged.action,
        "cutoff": purged.cutoff.isoformat(),
        "affected": purged.affected,
    }


async def _export(request: web.Request) -> web.Response:
    port = request.app[PRIVACY_KEY]
    subject = subject_of(await json_body(request))
    records = await port.export(subject, caller_of(request))
    return json_response(
        {"service": port.service, "customer_id": subject.customer_id, "records": records}
    )


async def _erase(request: web.Request) -> web.Response:
    port = request.app[PRIVACY_KEY]
    body = await json_body(request)
    erasure = Erasure(subject_of(body), str(body["reason"]), str(body["request_id"]))
    caller = replace(caller_of(request), reason=erasure.reason)
    return json_response(erased_view(port.service, await port.erase(erasure, caller)))


async def _purge(request: web.Request) -> web.Response:
    port = request.app[PRIVACY_KEY]
    body = await json_body(request)
    purge = Purge(
        str(body["data_class"]),
        parse_cutoff(str(body["older_than"])),
        str(body["action"]),
        bool(body.get("dry_run", False)),
    )
    return json_response(purged_view(port.service, await port.purge(purge, caller_of(request))))


def add_privacy_routes(routes: web.RouteTableDef) -> None:
    """Add the three routes to a service's table; they answer with the port the app
    stores under :data:`PRIVACY_KEY`."""
    routes.post("/internal/v1/privacy/export")(_export)
    routes.post("/internal/v1/privacy/erase")(_erase)
    routes.post("/internal/v1/privacy/purge")(_purge)

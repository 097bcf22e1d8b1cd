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
and the data classes services hold alike (:class:`SharedClasses`), each with action
``purge``: a service's own audit log
(``<service>.audit_records``, :func:`purge_audit_records`), the events its outbox
already published (``<service>.published_events``, :func:`purge_published_events`)
and, for a service that consumes events, the inbox's record of the events it applied
(``<service>.applied_events``, :func:`purge_applied_events`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from aiohttp import web
from sqlalchemy import ColumnElement, Table, and_, delete, func, select, tuple_

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
EVENT_ROWS_ACTIONS: Final = frozenset({"purge"})
EVENT_ROWS_BATCH: Final = 5_000
"""Outbox or inbox rows deleted per transaction by the event-row purges."""
REDELIVERY_WINDOW: Final = timedelta(days=7)
"""How long Kafka may deliver an event again: the platform's topic retention (the dev
broker's ``log.retention.hours=168``, Kafka's default). An inbox forgets an event only
after it: a consumer group whose offsets expired starts again from the earliest
record it can still read, and the inbox is what makes that a no-op."""


def audit_records_class(service: str) -> str:
    """The data class of ``service``'s own audit log (``identity.audit_records``)."""
    return f"{service}.audit_records"


async def audit_purged(
    tx: Tx, changes: ChangeRecorder, caller: Caller, purge: Purge, affected: int, now: datetime
) -> None:
    """Append the audit record of a retention run (``privacy.purged``: its action,
    cutoff, dry run and count; the caller's request id), dry runs included."""
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


def published_events_class(service: str) -> str:
    """The data class of the events ``service``'s outbox already published to Kafka
    (``transactions.published_events``)."""
    return f"{service}.published_events"


def applied_events_class(service: str) -> str:
    """The data class of the event ids ``service``'s inbox recorded as applied
    (``notifications.applied_events``)."""
    return f"{service}.applied_events"


@dataclass(frozen=True)
class SharedClasses:
    """The data classes a service holds the way every service does, stated once per
    service: its audit log, the events its outbox published (rows of ``keep_topics``
    stay) and, given the ``inbox`` of a service that consumes events, the events it
    applied. :attr:`actions` goes into the service's purgeable classes and
    :meth:`purge` runs a retention rule on any of them."""

    service: str
    keep_topics: tuple[str, ...] = ()
    inbox: Table | None = None

    @property
    def actions(self) -> dict[str, frozenset[str]]:
        """Each shared class with the actions it takes (only ``purge``)."""
        classes = {
            audit_records_class(self.service): AUDIT_RECORDS_ACTIONS,
            published_events_class(self.service): EVENT_ROWS_ACTIONS,
        }
        if self.inbox is not None:
            classes[applied_events_class(self.service)] = EVENT_ROWS_ACTIONS
        return classes

    async def purge(
        self,
        engine: Engine,
        changes: ChangeRecorder,
        purge: Purge,
        caller: Caller,
        *,
        now: datetime,
    ) -> Purged | None:
        """Run ``purge`` when its data class is one of :attr:`actions` (checked by
        :func:`check_purge` first); None when it is one of the service's own."""
        if purge.data_class == audit_records_class(self.service):
            return await purge_audit_records(engine, changes, purge, caller, now=now)
        if purge.data_class == published_events_class(self.service):
            return await purge_published_events(
                engine, changes, purge, caller, now=now, keep_topics=self.keep_topics
            )
        if self.inbox is not None and purge.data_class == applied_events_class(self.service):
            return await purge_applied_events(engine, changes, self.inbox, purge, caller, now=now)
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
    first rows tell a starting replica the shipped rules were seeded). A cutoff later
    than ``now`` is refused (InvalidCutoff). Batches and audit: :func:`_purge_rows`."""
    if purge.cutoff > now:
        raise InvalidCutoff("older_than must not be in the future", field="older_than")
    outbox = changes.outbox
    published = outbox.c.published_at
    expired = and_(published.is_not(None), published < purge.cutoff)
    if keep_topics:
        expired = and_(expired, outbox.c.topic.not_in(keep_topics))
    return await _purge_rows(engine, changes, purge, caller, now, outbox, expired)


async def purge_applied_events(
    engine: Engine,
    changes: ChangeRecorder,
    inbox: Table,
    purge: Purge,
    caller: Caller,
    *,
    now: datetime,
) -> Purged:
    """``<service>.applied_events``/``purge``: delete the inbox's record of events
    applied before the cutoff. One row per consumed event: without this the inbox
    grows with every event the service ever read.

    A cutoff within :data:`REDELIVERY_WINDOW` of ``now`` is refused (InvalidCutoff):
    Kafka may still deliver such an event again, and only its inbox row keeps that
    from being applied twice. Batches and audit: :func:`_purge_rows`."""
    if purge.cutoff > now - REDELIVERY_WINDOW:
        raise InvalidCutoff(
            f"older_than must be at least {REDELIVERY_WINDOW.days} days ago: Kafka may"
            " deliver a younger event again, and its inbox row keeps it from being"
            " applied twice",
            field="older_than",
        )
    expired = inbox.c.applied_at < purge.cutoff
    return await _purge_rows(engine, changes, purge, caller, now, inbox, expired)


async def _purge_rows(
    engine: Engine,
    changes: ChangeRecorder,
    purge: Purge,
    caller: Caller,
    now: datetime,
    table: Table,
    expired: ColumnElement[bool],
) -> Purged:
    """Delete ``table``'s rows matching ``expired`` in batches of
    :data:`EVENT_ROWS_BATCH` (by primary key), each its own transaction, so a first
    run over months of events holds no long transaction; then audit the run
    (``privacy.purged``). A dry run counts and changes nothing but its audit record."""
    key = tuple_(*table.primary_key.columns)

    async def count(tx: Tx) -> int:
        return int(await tx.scalar(select(func.count()).select_from(table).where(expired)) or 0)

    async def delete_batch(tx: Tx) -> int:
        batch = select(*table.primary_key.columns).where(expired).limit(EVENT_ROWS_BATCH)
        return int((await tx.execute(delete(table).where(key.in_(batch)))).rowcount)

    if purge.dry_run:
        affected = await in_transaction(engine, count)
    else:
        affected = 0
        while (deleted := await in_transaction(engine, delete_batch)) > 0:
            affected += deleted
            if deleted < EVENT_ROWS_BATCH:
                break

    await in_transaction(engine, lambda tx: audit_purged(tx, changes, caller, purge, affected, now))
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
        await audit_purged(tx, changes, caller, purge, affected, now)
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

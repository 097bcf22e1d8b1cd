"""The privacy API's use cases (docs/interfaces.md): export, erase, purge.

Data classes this service holds
    ``fraud.profiles``    a customer's behaviour profile in Redis: the devices, IPs and
                          payees it used (as 64-bit digests), the countries, the last
                          place (latitude, longitude) and time, amount statistics
    ``fraud.screenings``  each screening request (device id, IP, country, location, the
                          payee) with the decision, score, rule-set version and reasons
    ``fraud.alerts``      alerts about the customer: typology, evidence (numbers and
                          countries), who resolved them and how

Erasure deletes the profile and clears the request of every screening (device,
IP, place, payee); the decision, its reasons and the rule-set version stay, as
do the alerts: they are records of suspected fraud that anti-money-laundering law
requires to keep (GDPR art. 17(3)(b)); they hold ids and numbers, no contact data.
Erasing twice changes nothing the second time. Every call is audited.

Retention (``purge``): ``fraud.profiles`` ``purge``/``anonymize`` delete profiles not
updated since the cutoff; ``fraud.screenings`` ``purge`` deletes decisions screened
before it, ``anonymize`` clears their requests; ``fraud.alerts`` ``purge`` deletes
alerts resolved before it (open ones are never purged); ``fraud.audit_records``
``purge`` deletes the audit records older than the cutoff from the start of the chain
and anchors it there (``core.privacy.purge_audit_records``);
``fraud.published_events`` ``purge`` deletes the outbox rows published before the
cutoff, except the rules log (``core.privacy.purge_published_events``);
``fraud.applied_events`` ``purge`` deletes the inbox's record of events applied before
the cutoff, at least a week ago (``core.privacy.purge_applied_events``).
``crypto-shred`` is refused: nothing here is sealed with a per-customer key.
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
from lastro.fraud.domain.alerts import AlertCase
from lastro.fraud.domain.profiles import CustomerProfile, Flows, Seen
from lastro.fraud.domain.screening import ScreeningRecord
from lastro.fraud.events import RULES_TOPIC
from lastro.fraud.store import queries
from lastro.fraud.store.profiles import ProfileStore
from lastro.fraud.store.tables import inbox

SERVICE: Final = "fraud"
PROFILES: Final = "fraud.profiles"
SCREENINGS: Final = "fraud.screenings"
ALERTS: Final = "fraud.alerts"
SHARED: Final = privacy.SharedClasses(SERVICE, keep_topics=(RULES_TOPIC,), inbox=inbox)
PURGEABLE: Final[Mapping[str, frozenset[str]]] = {
    PROFILES: frozenset({"purge", "anonymize"}),
    SCREENINGS: frozenset({"purge", "anonymize"}),
    ALERTS: frozenset({"purge"}),
    **SHARED.actions,
}


def _seen(seen: Seen) -> list[dict[str, Any]]:
    return [
        {
            "id": key,
            "first_seen": _time(entry[0]),
            "last_seen": _time(entry[1]),
            "times": entry[2],
        }
        for key, entry in sorted(seen.entries.items(), key=lambda item: item[1][0])
    ]


def _time(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _flows(flows: Flows) -> dict[str, Any]:
    return {
        "transactions": flows.total,
        "parties": _seen(flows.parties),
        "currencies": {
            currency: {
                "transactions": flow.stats.n,
                "typical_amount": round(flow.stats.typical),
                "largest_amount": flow.stats.max,
            }
            for currency, flow in flows.currencies.items()
        },
    }


def profile_record(profile: CustomerProfile) -> dict[str, Any]:
    """A profile as its subject may read it (identifiers are the stored digests)."""
    place = profile.last_place
    return {
        "customer_id": profile.owner,
        "first_seen": _time(profile.first_at),
        "last_transaction_at": _time(profile.last_at),
        "devices": _seen(profile.devices),
        "ips": _seen(profile.ips),
        "countries": _seen(profile.countries),
        "last_place": None
        if place is None
        else {
            "at": _time(place.at),
            "country": place.country,
            "lat": place.lat,
            "lon": place.lon,
            "transaction_id": place.transaction_id,
        },
        "payments_out": _flows(profile.outgoing),
        "payments_in": _flows(profile.incoming),
    }


def screening_record(record: ScreeningRecord) -> dict[str, Any]:
    return {
        **record.response(),
        "request": record.request,
        "erased": record.request is None,
    }


def alert_record(case: AlertCase) -> dict[str, Any]:
    alert = case.alert
    return {
        "id": case.id,
        "typology": alert.typology,
        "severity": alert.severity.value,
        "transaction_id": alert.transaction_id,
        "account_id": alert.account_id,
        "evidence": alert.evidence,
        "status": case.status.value,
        "resolution": None if case.resolution is None else case.resolution.value,
        "created_at": case.created_at.isoformat(),
    }


class Privacy:
    """fraud's :class:`~lastro.core.privacy.PrivacyPort`."""

    service = SERVICE

    def __init__(
        self,
        engine: AsyncEngine,
        recorder: ChangeRecorder,
        profiles: ProfileStore,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._engine = engine
        self._recorder = recorder
        self._profiles = profiles
        self._clock = clock

    async def export(self, subject: Subject, caller: Caller) -> Records:
        """Everything held about the customer; the read is audited (``privacy.exported``)."""
        customer_id = subject.customer_id
        profile = await self._profiles.customer(customer_id)

        async def work(tx: Tx) -> dict[str, list[dict[str, Any]]]:
            screenings = await queries.screenings_of_customer(tx, customer_id)
            alerts = await queries.alerts_of_customer(tx, customer_id)
            records = {
                PROFILES: [] if profile is None else [profile_record(profile)],
                SCREENINGS: [screening_record(s) for s in screenings],
                ALERTS: [alert_record(a) for a in alerts],
            }
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.EXPORTED,
                target=customer_id,
                details={name: len(items) for name, items in records.items()},
            )
            return records

        return await in_transaction(self._engine, work)

    async def erase(self, erasure: Erasure, caller: Caller) -> Erased:
        """Delete the profile and clear the screening requests (see the module
        docstring); audited ``privacy.erased``. Returns the counts and the time."""
        customer_id = erasure.subject.customer_id
        at = self._clock()
        profiles = await self._profiles.erase(customer_id)

        async def work(tx: Tx) -> dict[str, int]:
            erased = {
                PROFILES: profiles,
                SCREENINGS: await queries.anonymize_screenings(tx, customer_id, at),
                ALERTS: 0,
            }
            await self._recorder.audit(
                tx,
                caller,
                action=privacy.ERASED,
                target=customer_id,
                details={
                    **erased,
                    "privacy_request_id": erasure.request_id,
                    "alerts_retained": "anti-money-laundering record",
                },
            )
            return erased

        return Erased(await in_transaction(self._engine, work), at)

    async def purge(self, purge: Purge, caller: Caller) -> Purged:
        """Apply the retention ``action`` to ``data_class`` older than the cutoff;
        audited ``privacy.purged`` (a dry run counts and changes nothing)."""
        privacy.check_purge(SERVICE, PURGEABLE, purge)
        shared = await SHARED.purge(self._engine, self._recorder, purge, caller, now=self._clock())
        if shared is not None:
            return shared
        data_class, cutoff, action, dry_run = (
            purge.data_class,
            purge.cutoff,
            purge.action,
            purge.dry_run,
        )
        redis_count = 0
        if data_class == PROFILES:
            redis_count = await self._profiles.age_out(int(cutoff.timestamp()), dry_run=dry_run)

        async def work(tx: Tx) -> int:
            if data_class == PROFILES:
                affected = redis_count
            elif data_class == SCREENINGS:
                affected = await queries.age_out_screenings(
                    tx, cutoff, remove=action == "purge", dry_run=dry_run
                )
            else:
                affected = await queries.age_out_alerts(tx, cutoff, dry_run=dry_run)
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

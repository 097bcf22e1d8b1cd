"""Features: the numbers rules and detectors judge a transaction by.

:func:`compute_features` reads the customer's profile (and the receiving side's,
when known) as it was *before* the transaction, so every feature describes the
transaction against history: "the 5th payment this minute", "8 times the usual
amount", "a device never seen". The :class:`Features` fields are the ``features``
variable of rule expressions; their names, types and meanings are the contract
for rule authors (docs/interfaces.md), and the CEL type checker rejects a rule
that names a field not listed here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Final

from lastro.fraud.domain.profiles import (
    DEFAULT_THRESHOLDS,
    CounterpartyProfile,
    CustomerProfile,
    Thresholds,
    digest,
)
from lastro.fraud.domain.transactions import Transaction

EARTH_RADIUS_KM: Final = 6371.0088
MIN_TRAVEL_SECONDS: Final = 60
"""Speeds are computed over at least a minute, so two payments in one second are not ∞ km/h."""
DAY: Final = 86400
MAX_ZSCORE: Final = 1000.0


@dataclass(frozen=True, slots=True)
class Features:
    """One transaction against its parties' history (amounts in the transaction's currency)."""

    count_1m: int
    """Outgoing payments by the customer in the minute before this one."""
    count_10m: int
    count_1h: int
    count_24h: int
    sum_1h: int
    """Minor units paid out in the last hour, in this transaction's currency."""
    sum_24h: int
    history_count: int
    """Outgoing payments in this currency the amount statistics were built from."""
    amount_typical: float
    """The customer's typical amount: the (weighted) geometric mean, in minor units."""
    amount_log_std: float
    """Standard deviation of ln(amount) over the customer's history."""
    amount_zscore: float
    """(ln amount - mean ln amount) / amount_log_std; 0 without history, capped at ±1000."""
    amount_ratio: float
    """amount / amount_typical; 0 without history."""
    max_amount: int
    """Largest earlier outgoing amount in this currency."""
    profile_age_days: float
    new_device: bool
    """The device was never used by a customer who has used others."""
    new_ip: bool
    new_country: bool
    new_counterparty: bool
    """The customer never paid this counterparty before."""
    devices_seen: int
    ips_seen: int
    countries_seen: int
    counterparties_seen: int
    distinct_counterparties_24h: int
    new_counterparties_1h: int
    """Counterparties first paid within the last hour."""
    counterparty_payments: int
    """Earlier payments from this customer to this counterparty."""
    counterparty_max_amount: int
    counterparty_first_paid_hours: float
    """Hours since the customer first paid this counterparty; -1 when never (or no longer
    remembered; below 0 only for an event older than that first payment). A scam
    escalates: a victim pays the same new payee again within hours."""
    seconds_since_last: int
    """Seconds since the customer's previous transaction; -1 for the first."""
    distance_km: float
    """Great-circle distance from the last transaction with a known location; 0 if unknown."""
    speed_kmh: float
    """distance_km over the time since that transaction (at least one minute)."""
    hour_utc: int
    near_threshold: bool
    """The amount is just under the currency's reporting threshold."""
    near_threshold_72h: int
    """Earlier just-under-threshold amounts in the last 72 hours."""
    in_count_24h: int
    """Payments received in the last 24 hours."""
    in_sum_24h: int
    in_senders_24h: int
    """Distinct parties that paid the customer in the last 24 hours."""
    in_baseline_per_day: float
    """Payments received per day before the last 24 hours (the customer's normal)."""
    out_in_ratio_24h: float
    """(paid out in 24 h + this amount) / received in 24 h; 0 when nothing was received."""
    declined_24h: int
    cp_known: bool
    """The receiving side has been paid through the platform before."""
    cp_senders_24h: int
    """Distinct customers who paid the receiving side in the last 24 hours."""
    cp_in_count_24h: int
    cp_age_days: float
    """Days since the receiving side was first paid; -1 when unknown."""
    cp_amount_typical: float
    """The receiving side's typical amount received (geometric mean, minor units of this
    transaction's currency); 0 when it has received none."""
    cp_senders_7d: int
    """Distinct customers who paid the receiving side in the last 7 days (a scam's mule
    account is young and paid by several victims who do not know each other)."""
    cp_sender_lift: float
    """How many times their own typical amount the receiving side's senders typically
    paid it (geometric mean over the payments whose sender had a history); 0 when none
    had one. A mule account collects victims' savings (many times each victim's usual),
    a collection for a neighbour gifts of a few times each giver's usual."""


FEATURE_TYPES: Final[dict[str, type]] = {
    f.name: {"int": int, "float": float, "bool": bool}[str(f.type)] for f in fields(Features)
}
"""Feature name → Python type (int, float or bool); the CEL schema is built from it."""


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in kilometres between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _travel(profile: CustomerProfile, txn: Transaction, at: int) -> tuple[int, float, float]:
    """Seconds since the last transaction; km and km/h from the last known place."""
    elapsed = -1 if profile.last_at is None else max(at - profile.last_at, 0)
    place = profile.last_place
    if place is None or txn.location is None:
        return elapsed, 0.0, 0.0
    km = haversine_km(place.lat, place.lon, txn.location.lat, txn.location.lon)
    hours = max(at - place.at, MIN_TRAVEL_SECONDS) / 3600
    return elapsed, km, km / hours


def _new(seen_any: int, known: bool, present: bool) -> bool:
    return present and seen_any > 0 and not known


def compute_features(
    customer: CustomerProfile,
    txn: Transaction,
    counterparty: CounterpartyProfile | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Features:
    """The features of ``txn`` against the profiles as they were before it."""
    at = txn.epoch_seconds
    out, inc = customer.outgoing, customer.incoming
    stats = out.stats(txn.currency)
    std = stats.std
    zscore = 0.0
    if stats.n > 0:
        deviation = math.log(txn.amount) - stats.mean
        if deviation:
            raw = deviation / std if std > 0 else math.copysign(MAX_ZSCORE, deviation)
            zscore = max(-MAX_ZSCORE, min(MAX_ZSCORE, raw))
    party = txn.other_party
    party_entry = out.parties.get(digest(party)) if party else None
    elapsed, km, speed = _travel(customer, txn, at)
    in_24h = inc.count("24h", at)
    in_sum = inc.sum("24h", at, txn.currency)
    out_sum = out.sum("24h", at, txn.currency) + (0 if txn.is_incoming else txn.amount)
    before_window = inc.total - in_24h
    baseline_days = 0.0 if inc.first_at is None else (at - DAY - inc.first_at) / DAY
    cp_first = counterparty.incoming.first_at if counterparty else None
    return Features(
        count_1m=out.count("1m", at),
        count_10m=out.count("10m", at),
        count_1h=out.count("1h", at),
        count_24h=out.count("24h", at),
        sum_1h=out.sum("1h", at, txn.currency),
        sum_24h=out.sum("24h", at, txn.currency),
        history_count=stats.n,
        amount_typical=stats.typical,
        amount_log_std=std,
        amount_zscore=zscore,
        amount_ratio=txn.amount / stats.typical if stats.n else 0.0,
        max_amount=stats.max,
        profile_age_days=0.0 if customer.first_at is None else (at - customer.first_at) / DAY,
        new_device=_new(
            len(customer.devices),
            digest(txn.device_id or "") in customer.devices,
            bool(txn.device_id),
        ),
        new_ip=_new(len(customer.ips), digest(txn.ip or "") in customer.ips, bool(txn.ip)),
        new_country=_new(
            len(customer.countries), (txn.country or "") in customer.countries, bool(txn.country)
        ),
        new_counterparty=party is not None and party_entry is None,
        devices_seen=len(customer.devices),
        ips_seen=len(customer.ips),
        countries_seen=len(customer.countries),
        counterparties_seen=len(out.parties),
        distinct_counterparties_24h=out.parties.active_since(at - DAY),
        new_counterparties_1h=out.parties.first_seen_since(at - 3600),
        counterparty_payments=party_entry[2] if party_entry else 0,
        counterparty_max_amount=party_entry[3] if party_entry else 0,
        counterparty_first_paid_hours=(at - party_entry[0]) / 3600 if party_entry else -1.0,
        seconds_since_last=elapsed,
        distance_km=km,
        speed_kmh=speed,
        hour_utc=txn.occurred_at.hour,
        near_threshold=thresholds.just_under(txn.amount, txn.currency),
        near_threshold_72h=sum(1 for t in customer.near_threshold if t > at - 3 * DAY),
        in_count_24h=in_24h,
        in_sum_24h=in_sum,
        in_senders_24h=inc.parties.active_since(at - DAY),
        in_baseline_per_day=before_window / baseline_days if baseline_days >= 1 else 0.0,
        out_in_ratio_24h=out_sum / in_sum if in_sum > 0 else 0.0,
        declined_24h=customer.declined.total(at)[0],
        cp_known=counterparty is not None and counterparty.incoming.total > 0,
        cp_senders_24h=counterparty.incoming.parties.active_since(at - DAY) if counterparty else 0,
        cp_in_count_24h=counterparty.incoming.count("24h", at) if counterparty else 0,
        cp_age_days=-1.0 if cp_first is None else (at - cp_first) / DAY,
        cp_amount_typical=counterparty.incoming.stats(txn.currency).typical
        if counterparty
        else 0.0,
        cp_senders_7d=counterparty.incoming.parties.active_since(at - 7 * DAY)
        if counterparty
        else 0,
        cp_sender_lift=counterparty.lift.typical if counterparty else 0.0,
    )

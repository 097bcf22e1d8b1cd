"""Streaming typologies: patterns that one transaction alone cannot show.

Each detector looks at one posted transaction against the profile of the party
it concerns *before* the transaction (the payer for outgoing patterns, the
receiver for incoming ones) and returns an :class:`Alert` with the numbers that
made it fire, or None. :func:`observe` runs them in event order, applies the
event to the profiles afterwards, and keeps one alert per typology and customer
per cool-down period, so a burst of twelve payments raises one alert, not seven.

Thresholds live in :class:`DetectorConfig`; they were chosen on the evaluation
harness's seed 1 (``lastro fraud evaluate --seed 1``) and checked on other seeds.
A ``high`` or ``critical`` alert asks the service to freeze the account
(:attr:`Alert.freezes_account`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from lastro.fraud.domain.decision import Severity
from lastro.fraud.domain.features import Features, compute_features
from lastro.fraud.domain.profiles import (
    DEFAULT_THRESHOLDS,
    MOVED,
    CounterpartyProfile,
    CustomerProfile,
    Thresholds,
)
from lastro.fraud.domain.transactions import Transaction, TransactionEvent

EvidenceValue = int | float | str | bool


class Typology(StrEnum):
    VELOCITY_BURST = "velocity_burst"
    AMOUNT_SPIKE = "amount_spike"
    NEW_DEVICE = "new_device"
    IMPOSSIBLE_TRAVEL = "impossible_travel"
    STRUCTURING = "structuring"
    MULE = "mule"
    ROUND_TRIPPING = "round_tripping"


@dataclass(frozen=True, slots=True)
class Alert:
    """A detected pattern: what, how serious, about whom, and the numbers behind it."""

    typology: Typology
    severity: Severity
    customer_id: str
    account_id: str | None
    transaction_id: str
    detector_id: str
    evidence: dict[str, EvidenceValue]
    rule_ids: tuple[str, ...] = ()
    related: tuple[str, ...] = ()
    """Other transactions that are part of the pattern (the previous place, for travel)."""

    @property
    def freezes_account(self) -> bool:
        """High and critical alerts ask the account service to freeze the account."""
        return self.severity.rank >= Severity.HIGH.rank


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detectors' thresholds (amount ratios are against the payer's own mean)."""

    burst_count_10m: int = 6
    burst_count_1m: int = 5
    burst_new_payee_share: float = 0.5
    burst_slow_count_10m: int = 5
    """A slower run (payments tens of seconds apart) is a burst with fewer payments when
    nearly all of them go to new payees (``burst_slow_new_payee_share``)."""
    burst_slow_new_payee_share: float = 0.8
    spike_min_history: int = 10
    spike_ratio: float = 10.0
    spike_zscore: float = 2.0
    spike_young_payee_days: float = 7.0
    """A payee first paid (by anyone) less than this long ago is young: a scam's mule
    account is paid by several victims within days of its first payment."""
    spike_young_payee_ratio: float = 5.0
    """The amount ratio that suffices for a young payee others pay large sums to."""
    spike_young_payee_lift: float = 10.0
    """...when the payee's senders typically paid it at least this many times their own
    typical amount (``cp_sender_lift``): each of a mule's victims sent it what, to a
    payee nobody knows, would already be an amount spike (``spike_ratio``); givers to a
    collection for a neighbour send a few times their usual."""
    spike_repeat_hours: float = 12.0
    """A payee the customer first paid less than this long ago is still new to them: a
    scam escalates within the day, the victim paying the same account again while the
    scammer keeps them on the line (a planned instalment, such as a car's balance, is
    usually paid on another day)."""
    spike_repeat_ratio: float = 5.0
    """The amount ratio that suffices for that repeat payment, when the earlier payment
    to the payee was at least this many times the customer's typical amount too."""
    new_device_min_history: int = 5
    new_device_ratio: float = 2.0
    travel_min_km: float = 500.0
    travel_max_kmh: float = 700.0
    structuring_count_72h: int = 3
    mule_min_senders: int = 5
    mule_baseline_factor: float = 3.0
    mule_payout_share: float = 0.6
    round_trip_window: int = 96 * 3600
    round_trip_tolerance: float = 0.15
    round_trip_min_amount: int = 100_000
    cooldown: dict[Typology, int] = field(
        default_factory=lambda: {
            Typology.VELOCITY_BURST: 3600,
            Typology.AMOUNT_SPIKE: 0,
            Typology.NEW_DEVICE: 6 * 3600,
            Typology.IMPOSSIBLE_TRAVEL: 6 * 3600,
            Typology.STRUCTURING: 72 * 3600,
            Typology.MULE: 24 * 3600,
            Typology.ROUND_TRIPPING: 24 * 3600,
        }
    )


DEFAULT_CONFIG: Final = DetectorConfig()


@dataclass(frozen=True, slots=True)
class Observation:
    """One transaction seen from one party: its profile before, and its features."""

    txn: Transaction
    profile: CustomerProfile
    features: Features


def _alert(
    typology: Typology,
    severity: Severity,
    seen: Observation,
    account_id: str | None,
    evidence: dict[str, EvidenceValue],
    related: tuple[str, ...] = (),
) -> Alert:
    return Alert(
        typology,
        severity,
        seen.profile.owner,
        account_id,
        seen.txn.transaction_id,
        f"detector:{typology.value}",
        evidence,
        related=related,
    )


def velocity_burst(seen: Observation, config: DetectorConfig) -> Alert | None:
    """Many payments in minutes, mostly to payees never paid before (card testing, takeover).

    Fast (``burst_count_1m`` in a minute) or many (``burst_count_10m`` in ten minutes)
    with at least ``burst_new_payee_share`` new payees; or a slower run of
    ``burst_slow_count_10m`` in ten minutes almost all to new payees (testers pace
    their attempts over a minute or two).
    """
    f = seen.features
    count_10m, count_1m = f.count_10m + 1, f.count_1m + 1
    new_payees = f.new_counterparties_1h + int(f.new_counterparty)
    fast = count_1m >= config.burst_count_1m or count_10m >= config.burst_count_10m
    if fast and new_payees < config.burst_new_payee_share * count_10m:
        return None
    slow = (
        count_10m >= config.burst_slow_count_10m
        and new_payees >= config.burst_slow_new_payee_share * count_10m
    )
    if not (fast or slow):
        return None
    severity = Severity.HIGH if count_10m >= 2 * config.burst_count_10m else Severity.MEDIUM
    return _alert(
        Typology.VELOCITY_BURST,
        severity,
        seen,
        seen.txn.own_account,
        {"count_1m": count_1m, "count_10m": count_10m, "new_payees_1h": new_payees},
    )


def amount_spike(seen: Observation, config: DetectorConfig) -> Alert | None:
    """An amount far above the customer's own history, to a payee that is new or suspect.

    The customer pays from their usual device, the amount's z-score is at least
    ``spike_zscore``, and one of three shapes holds (:func:`_spike_payee`):

    - ``unknown``: the customer never paid the payee, nobody on the platform has,
      and the amount is at least ``spike_ratio`` times the customer's typical one;
    - ``young``: the customer never paid the payee, others first paid it less than
      ``spike_young_payee_days`` ago and typically paid it ``spike_young_payee_lift``
      times what each of them usually pays, and the amount is
      ``spike_young_payee_ratio`` times the customer's typical one (a mule account
      collecting from several scam victims);
    - ``repeat``: the customer first paid the payee less than ``spike_repeat_hours``
      ago, that payment and this one both at least ``spike_repeat_ratio`` times
      the customer's typical amount (a scam escalating: the victim pays again).
    """
    f, amount = seen.features, seen.txn.amount
    if f.history_count < config.spike_min_history or f.new_device:
        return None
    if f.amount_zscore < config.spike_zscore:
        return None
    payee_paid = f.cp_amount_typical / f.amount_typical if f.amount_typical else 0.0
    payee = _spike_payee(f, config)
    if payee is None:
        return None
    severity = Severity.HIGH if f.amount_ratio >= 3 * config.spike_ratio else Severity.MEDIUM
    return _alert(
        Typology.AMOUNT_SPIKE,
        severity,
        seen,
        seen.txn.own_account,
        {
            "amount": amount,
            "typical": round(f.amount_typical, 2),
            "ratio": round(f.amount_ratio, 2),
            "zscore": round(f.amount_zscore, 2),
            "previous_max": f.max_amount,
            "payee": payee,
            "payee_age_days": round(f.cp_age_days, 2),
            "payee_senders_7d": f.cp_senders_7d,
            "payee_paid_ratio": round(payee_paid, 2),
            "payee_sender_lift": round(f.cp_sender_lift, 2),
            "payee_first_paid_hours": round(f.counterparty_first_paid_hours, 2),
            "payee_previous_max": f.counterparty_max_amount,
        },
    )


def _spike_payee(f: Features, config: DetectorConfig) -> str | None:
    """Which of amount_spike's payee shapes the payment has, if its amount is enough for it."""
    if f.new_counterparty:
        young = f.cp_known and 0 <= f.cp_age_days < config.spike_young_payee_days
        if not f.cp_known:
            shape, needed = "unknown", config.spike_ratio
        elif young and f.cp_sender_lift >= config.spike_young_payee_lift:
            shape, needed = "young", config.spike_young_payee_ratio
        else:
            return None
    else:
        hours = f.counterparty_first_paid_hours
        earlier_large = f.counterparty_max_amount >= config.spike_repeat_ratio * f.amount_typical
        if not (0 <= hours < config.spike_repeat_hours and earlier_large):
            return None
        shape, needed = "repeat", config.spike_repeat_ratio
    return shape if f.amount_ratio >= needed else None


def new_device(seen: Observation, config: DetectorConfig) -> Alert | None:
    """A device and IP never used before, paying a new payee more than usual (takeover)."""
    f = seen.features
    if f.history_count < config.new_device_min_history or not f.new_device:
        return None
    if not (f.new_ip or f.new_country) or not f.new_counterparty:
        return None
    if f.amount_ratio < config.new_device_ratio:
        return None
    return _alert(
        Typology.NEW_DEVICE,
        Severity.HIGH,
        seen,
        seen.txn.own_account,
        {
            "new_device": True,
            "new_ip": f.new_ip,
            "new_country": f.new_country,
            "country": seen.txn.country or "",
            "ratio": round(f.amount_ratio, 2),
        },
    )


def impossible_travel(seen: Observation, config: DetectorConfig) -> Alert | None:
    """Two places further apart than anyone can travel in the time between them."""
    f = seen.features
    if f.distance_km < config.travel_min_km or f.speed_kmh < config.travel_max_kmh:
        return None
    last = seen.profile.last_place
    return _alert(
        Typology.IMPOSSIBLE_TRAVEL,
        Severity.HIGH,
        seen,
        seen.txn.own_account,
        {
            "distance_km": round(f.distance_km, 1),
            "seconds": f.seconds_since_last,
            "speed_kmh": round(f.speed_kmh, 1),
            "from_country": (last.country if last else None) or "",
            "to_country": seen.txn.country or "",
        },
        related=(last.transaction_id,) if last else (),
    )


def structuring(seen: Observation, config: DetectorConfig) -> Alert | None:
    """Several amounts just under the reporting threshold within 72 hours."""
    f = seen.features
    count = f.near_threshold_72h + 1
    if not f.near_threshold or count < config.structuring_count_72h:
        return None
    return _alert(
        Typology.STRUCTURING,
        Severity.MEDIUM,
        seen,
        seen.txn.own_account,
        {"just_under_threshold_72h": count, "amount": seen.txn.amount},
    )


def mule(seen: Observation, config: DetectorConfig) -> Alert | None:
    """Money from many senders, unusual for this account, paid out again within a day."""
    f = seen.features
    if f.in_senders_24h < config.mule_min_senders:
        return None
    if f.in_senders_24h < config.mule_baseline_factor * max(f.in_baseline_per_day, 1.0):
        return None
    if f.out_in_ratio_24h < config.mule_payout_share:
        return None
    return _alert(
        Typology.MULE,
        Severity.HIGH,
        seen,
        seen.txn.own_account,
        {
            "senders_24h": f.in_senders_24h,
            "received_24h": f.in_sum_24h,
            "baseline_per_day": round(f.in_baseline_per_day, 2),
            "paid_out_share": round(f.out_in_ratio_24h, 2),
        },
    )


def round_tripping(seen: Observation, config: DetectorConfig) -> Alert | None:
    """Money coming back to the customer who sent a similar amount out shortly before."""
    txn = seen.txn
    if txn.amount < config.round_trip_min_amount:
        return None
    since = txn.epoch_seconds - config.round_trip_window
    for sent in seen.profile.outgoing.within(since):
        close = abs(txn.amount - sent.amount) <= config.round_trip_tolerance * sent.amount
        if sent.currency == txn.currency and close:
            return _alert(
                Typology.ROUND_TRIPPING,
                Severity.MEDIUM,
                seen,
                txn.destination_account_id,
                {
                    "sent": sent.amount,
                    "returned": txn.amount,
                    "hours": round((txn.epoch_seconds - sent.at) / 3600, 1),
                },
            )
    return None


Detector = Callable[[Observation, DetectorConfig], Alert | None]
Detectors = tuple[tuple[Typology, Detector], ...]
PAYER_DETECTORS: Final[Detectors] = (
    (Typology.MULE, mule),
    (Typology.STRUCTURING, structuring),
    (Typology.IMPOSSIBLE_TRAVEL, impossible_travel),
    (Typology.NEW_DEVICE, new_device),
    (Typology.VELOCITY_BURST, velocity_burst),
    (Typology.AMOUNT_SPIKE, amount_spike),
)
"""Detectors run for the customer who pays, most specific first."""
DEPOSITOR_DETECTORS: Final[Detectors] = (
    (Typology.STRUCTURING, structuring),
    (Typology.ROUND_TRIPPING, round_tripping),
)
"""Detectors run for the customer who deposits money into their own account."""
RECEIVER_DETECTORS: Final[Detectors] = ((Typology.ROUND_TRIPPING, round_tripping),)
"""Detectors run for the customer who receives an internal transfer."""


def _run(detectors: Detectors, seen: Observation, config: DetectorConfig) -> list[Alert]:
    """At most one alert per party and transaction: the most specific pattern that holds.

    A pattern still cooling down for this customer claims the transaction without a
    new alert (the open alert already covers it), so a mule's second payout is not
    raised again as an amount spike.
    """
    at = seen.txn.epoch_seconds
    for typology, detect in detectors:
        alert = detect(seen, config)
        if alert is None:
            continue
        last = seen.profile.alerted.get(typology.value)
        if last is not None and at - last < config.cooldown[typology]:
            return []
        seen.profile.alerted[typology.value] = at
        return [alert]
    return []


def observe(
    event: TransactionEvent,
    payer: CustomerProfile | None,
    receiver: CustomerProfile | None = None,
    counterparty: CounterpartyProfile | None = None,
    config: DetectorConfig = DEFAULT_CONFIG,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> list[Alert]:
    """Detect patterns in ``event``, then apply it to the given profiles.

    ``payer`` is the profile of ``customer_id`` (for a deposit, the depositor, who
    is also the receiver);
    ``receiver`` the profile of ``counterparty_customer_id`` (internal transfers);
    ``counterparty`` the profile of the receiving side's stable id. Detectors run
    only for posted transactions (money moved); every event is applied. The
    profiles are updated in place, alert cool-downs included.
    """
    alerts: list[Alert] = []
    txn = event.transaction
    sender_typical = 0.0
    if payer is not None and not txn.is_incoming:
        stats = payer.outgoing.stats(txn.currency)
        sender_typical = stats.typical if stats.n >= config.spike_min_history else 0.0
    if event.status in MOVED:
        if payer is not None:
            features = compute_features(payer, txn, counterparty, thresholds)
            detectors = DEPOSITOR_DETECTORS if txn.is_incoming else PAYER_DETECTORS
            alerts += _run(detectors, Observation(txn, payer, features), config)
        if receiver is not None:
            features = compute_features(receiver, txn, None, thresholds)
            alerts += _run(RECEIVER_DETECTORS, Observation(txn, receiver, features), config)
    for profile in (payer, receiver):
        if profile is not None:
            profile.apply(event, thresholds)
    if counterparty is not None:
        counterparty.apply(event, sender_typical)
    return alerts

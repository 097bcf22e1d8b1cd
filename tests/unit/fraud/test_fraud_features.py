"""Features describe a transaction against its parties' history before it."""

from __future__ import annotations

import math

import pytest
from fraudkit import LISBON, MADRID, NEW_YORK, make_txn, posted

from lastro.fraud.domain.features import compute_features, haversine_km
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.transactions import Transaction, TransactionType


def _profile(*txns: Transaction) -> CustomerProfile:
    profile = CustomerProfile("cus_a")
    for txn in txns:
        profile.apply(posted(txn))
    return profile


def test_haversine_gives_known_great_circle_distances() -> None:
    assert haversine_km(LISBON.lat, LISBON.lon, MADRID.lat, MADRID.lon) == pytest.approx(503, abs=3)
    assert haversine_km(LISBON.lat, LISBON.lon, NEW_YORK.lat, NEW_YORK.lon) == pytest.approx(
        5417, abs=15
    )
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)


def test_a_first_transaction_has_no_history() -> None:
    features = compute_features(CustomerProfile("cus_a"), make_txn())
    assert features.count_24h == 0 and features.history_count == 0
    assert features.amount_ratio == 0 and features.amount_zscore == 0
    assert features.seconds_since_last == -1
    assert not features.new_device and not features.new_ip and not features.new_country
    assert features.new_counterparty


def test_velocity_counts_earlier_payments_per_window() -> None:
    profile = _profile(*(make_txn(offset) for offset in (-7200, -1800, -300, -30, -10)))
    features = compute_features(profile, make_txn(0))
    assert (features.count_1m, features.count_10m, features.count_1h) == (2, 3, 4)
    assert features.count_24h == 5
    assert features.sum_1h == 4 * 5_000
    assert features.seconds_since_last == 10


def test_amounts_are_compared_with_the_customers_typical_amount() -> None:
    profile = _profile(*(make_txn(-600 * n, amount=a) for n, a in enumerate([1000, 4000] * 5)))
    features = compute_features(profile, make_txn(0, amount=40_000))
    assert features.history_count == 10
    assert features.amount_typical == pytest.approx(2000)
    assert features.amount_ratio == pytest.approx(20)
    assert features.amount_log_std == pytest.approx(math.log(2))
    assert features.amount_zscore == pytest.approx(math.log(20) / math.log(2))
    assert features.max_amount == 4000


def test_new_device_ip_country_and_payee_are_relative_to_what_was_seen() -> None:
    profile = _profile(make_txn(-60))
    same = compute_features(profile, make_txn(0))
    assert not (same.new_device or same.new_ip or same.new_country or same.new_counterparty)
    assert same.counterparty_payments == 1
    other = compute_features(
        profile, make_txn(0, device_id="dev_x", ip="10.9.9.9", country="ES", counterparty="iban_x")
    )
    assert other.new_device and other.new_ip and other.new_country and other.new_counterparty


def test_travel_speed_uses_the_last_known_place() -> None:
    profile = _profile(make_txn(-3600, location=LISBON), make_txn(-60, location=None))
    features = compute_features(profile, make_txn(0, location=NEW_YORK))
    assert features.seconds_since_last == 60
    assert features.distance_km == pytest.approx(5417, abs=15)
    assert features.speed_kmh == pytest.approx(features.distance_km, rel=1e-6)  # in one hour
    same_second = compute_features(_profile(make_txn(0)), make_txn(0, location=MADRID))
    assert math.isfinite(same_second.speed_kmh)  # at least a minute, never a division by zero


def test_amounts_just_under_the_threshold_are_counted_over_72_hours() -> None:
    just_under = 950_000
    profile = _profile(
        make_txn(-4 * 86400, amount=just_under),
        make_txn(-86400, amount=just_under),
        make_txn(-3600, amount=1_000_000),
    )
    features = compute_features(profile, make_txn(0, amount=just_under))
    assert features.near_threshold
    assert features.near_threshold_72h == 1
    assert not compute_features(profile, make_txn(0, amount=800_000)).near_threshold


def test_incoming_features_describe_money_received_and_paid_out() -> None:
    profile = CustomerProfile("cus_m")
    for n in range(6):
        profile.apply(posted(make_txn(-3600 + n, customer_id=f"cus_{n}", amount=10_000,
                                      counterparty_customer_id="cus_m")))  # fmt: skip
    payout = make_txn(0, customer_id="cus_m", amount=48_000, counterparty="iban_out")
    features = compute_features(profile, payout)
    assert features.in_count_24h == 6 and features.in_senders_24h == 6
    assert features.in_sum_24h == 60_000
    assert features.out_in_ratio_24h == pytest.approx(0.8)
    assert features.in_baseline_per_day == 0


def test_counterparty_features_describe_the_receiving_side() -> None:
    payee = CounterpartyProfile("iban_new")
    for n in range(3):
        payee.apply(posted(make_txn(-7200 + n, customer_id=f"cus_{n}", counterparty="iban_new")))
    features = compute_features(
        CustomerProfile("cus_a"), make_txn(0, counterparty="iban_new"), payee
    )
    assert features.cp_known and features.cp_senders_24h == 3 and features.cp_in_count_24h == 3
    assert features.cp_age_days == pytest.approx(7200 / 86400, rel=1e-3)
    unknown = compute_features(CustomerProfile("cus_a"), make_txn(0), None)
    assert not unknown.cp_known and unknown.cp_age_days == -1


def test_a_deposit_does_not_count_as_paying_out() -> None:
    profile = CustomerProfile("cus_a")
    deposit = make_txn(0, type=TransactionType.DEPOSIT, amount=9_000)
    assert compute_features(profile, deposit).out_in_ratio_24h == 0

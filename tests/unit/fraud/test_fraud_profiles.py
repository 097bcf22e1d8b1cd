"""Profile state: sliding windows, amount statistics, bounded sets, serialisation."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

import pytest
from fraudkit import T0, make_txn, posted
from hypothesis import given, settings
from hypothesis import strategies as st

from lastro.fraud.domain.profiles import (
    CAPS,
    EWMA_MIN_ALPHA,
    AmountStats,
    CounterpartyProfile,
    CustomerProfile,
    ProfileDecodeError,
    Seen,
    Window,
    digest,
)
from lastro.fraud.domain.transactions import Status, TransactionEvent, TransactionType

AT = int(T0.timestamp())


def test_a_window_counts_what_falls_inside_its_span_to_one_bucket() -> None:
    window = Window(span=60, step=5)
    for offset in (0, 10, 30, 55):
        window.add(AT + offset, 100)
    assert window.total(AT + 55) == (4, 400)
    # 70 s later the first two are more than a bucket past the span.
    assert window.total(AT + 80) == (2, 200)
    assert window.total(AT + 200) == (0, 0)


@given(
    st.lists(st.integers(min_value=0, max_value=7200), max_size=60),
    st.integers(min_value=0, max_value=4000),
    st.sampled_from([(60, 5), (600, 60), (3600, 300)]),
)
def test_a_window_count_is_exact_to_one_bucket_width(
    offsets: list[int], later: int, shape: tuple[int, int]
) -> None:
    span, step = shape
    window = Window(span, step)
    for offset in sorted(offsets):
        window.add(AT + offset, 1)
    now = AT + max(offsets, default=0) + later
    inside = sum(1 for o in offsets if AT + o > now - span)
    within_a_bucket_more = sum(1 for o in offsets if AT + o > now - span - step)
    assert inside <= window.total(now)[0] <= within_a_bucket_more


def test_a_window_forgets_stale_buckets_so_it_stays_bounded() -> None:
    window = Window(span=60, step=5)
    for second in range(0, 3600, 3):
        window.add(AT + second, 1)
    assert len(window.buckets) <= 60 // 5 + 1


@given(st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=64))
def test_amount_statistics_are_welford_over_log_amounts_while_few(amounts: list[int]) -> None:
    stats = AmountStats()
    for amount in amounts:
        stats.add(amount)
    logs = [math.log(a) for a in amounts]
    assert stats.n == len(amounts)
    assert stats.mean == pytest.approx(statistics.fmean(logs), rel=1e-9, abs=1e-9)
    assert stats.var == pytest.approx(statistics.pvariance(logs), rel=1e-6, abs=1e-9)
    assert stats.max == max(amounts)
    assert stats.typical == pytest.approx(math.exp(statistics.fmean(logs)))


def test_amount_statistics_follow_a_changed_habit_after_the_warm_up() -> None:
    stats = AmountStats()
    for _ in range(500):
        stats.add(1_000)
    for _ in range(200):
        stats.add(100_000)
    # An all-history geometric mean would sit near 3 700; the old level's weight has
    # decayed to (1 - alpha) ** 200 since the habit changed.
    old = (1 - EWMA_MIN_ALPHA) ** 200
    expected = math.exp(old * math.log(1_000) + (1 - old) * math.log(100_000))
    assert stats.typical == pytest.approx(expected, rel=1e-9)
    assert stats.typical > 80_000


@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=2, max_size=300))
def test_amount_variance_is_never_negative(amounts: list[int]) -> None:
    stats = AmountStats()
    for amount in amounts:
        stats.add(amount)
    assert stats.var >= 0 and stats.std >= 0


def test_a_seen_set_evicts_the_least_recently_seen_when_full() -> None:
    seen = Seen(cap=3)
    for n, key in enumerate(("a", "b", "c")):
        seen.add(key, AT + n)
    seen.add("a", AT + 10)
    seen.add("d", AT + 11)
    assert set(seen.entries) == {"a", "c", "d"}
    assert seen.entries["a"][2] == 2  # times seen


def test_a_customer_profile_learns_only_from_posted_money() -> None:
    profile = CustomerProfile("cus_a")
    profile.apply(TransactionEvent(Status.RECEIVED, make_txn()))
    assert profile.outgoing.total == 0
    profile.apply(posted(make_txn(device_id="dev_x")))
    assert profile.outgoing.total == 1
    assert digest("dev_x") in profile.devices
    assert profile.last_place is not None and profile.last_place.country == "PT"


def test_declines_are_counted_but_not_learnt_as_spending() -> None:
    profile = CustomerProfile("cus_a")
    profile.apply(TransactionEvent(Status.DECLINED, make_txn()))
    assert profile.declined.total(AT)[0] == 1
    assert profile.outgoing.total == 0


def test_the_receiver_of_an_internal_transfer_learns_its_incoming_money() -> None:
    receiver = CustomerProfile("cus_b")
    receiver.apply(posted(make_txn(counterparty_customer_id="cus_b", counterparty="acc_b")))
    assert receiver.incoming.total == 1
    assert digest("cus_a") in receiver.incoming.parties
    assert receiver.outgoing.total == 0


def test_a_deposit_is_incoming_for_the_depositor() -> None:
    profile = CustomerProfile("cus_a")
    profile.apply(posted(make_txn(type=TransactionType.DEPOSIT, counterparty="cash_atm_1")))
    assert profile.incoming.total == 1 and profile.outgoing.total == 0


def test_card_payments_a_merchant_accepts_are_its_incoming_money() -> None:
    merchant = CustomerProfile("cus_a")
    for n in range(6):
        sale = make_txn(n, type=TransactionType.CARD_PAYMENT, counterparty=f"fp_card_{n}")
        merchant.apply(
            posted(replace(sale, source_account_id=None, destination_account_id="acc_a"))
        )
    assert merchant.incoming.total == 6
    assert merchant.outgoing.total == 0
    assert merchant.outgoing.count("10m", AT + 10) == 0


def test_a_counterparty_profile_counts_distinct_payers() -> None:
    shop = CounterpartyProfile("iban_shop")
    for n in range(5):
        shop.apply(posted(make_txn(n, customer_id=f"cus_{n % 3}", counterparty="iban_shop")))
    shop.apply(posted(make_txn(6, counterparty="iban_elsewhere")))
    assert shop.incoming.total == 5
    assert len(shop.incoming.parties) == 3


def _busy_profile(events: int) -> CustomerProfile:
    profile = CustomerProfile("cus_a")
    for n in range(events):
        profile.apply(
            posted(
                make_txn(
                    n * 37,
                    amount=1 + n * 7919 % 10**7,
                    counterparty=f"iban_{n}",
                    device_id=f"dev_{n}",
                    ip=f"10.{n // 250 % 250}.{n % 250}.1",
                    country=f"{chr(65 + n % 26)}{chr(65 + n // 26 % 26)}",
                    currency=("EUR", "USD", "GBP", "CHF", "JPY", "SEK")[n % 6],
                )
            )
        )
        profile.apply(posted(make_txn(n * 37 + 1, customer_id=f"cus_{n}",
                                      counterparty_customer_id="cus_a")))  # fmt: skip
    return profile


def test_profiles_stay_bounded_however_many_distinct_things_they_see() -> None:
    profile = _busy_profile(3000)
    assert len(profile.devices) == CAPS["devices"]
    assert len(profile.ips) == CAPS["ips"]
    assert len(profile.countries) == CAPS["countries"]
    assert len(profile.outgoing.parties) == CAPS["counterparties"]
    assert len(profile.incoming.parties) == CAPS["senders"]
    assert len(profile.outgoing.currencies) == 4
    assert len(profile.to_bytes()) < 32 * 1024


def test_a_profile_survives_serialisation_unchanged() -> None:
    profile = _busy_profile(200)
    raw = profile.to_bytes()
    assert raw.startswith(b'{"v":1,')
    assert CustomerProfile.from_bytes(raw) == profile
    shop = CounterpartyProfile("iban_shop")
    shop.apply(posted(make_txn(counterparty="iban_shop")), sender_typical=2_500.0)
    assert shop.lift.n == 1
    assert CounterpartyProfile.from_bytes(shop.to_bytes()) == shop


def test_a_counterparty_profile_written_before_the_senders_lift_reads_without_it() -> None:
    shop = CounterpartyProfile("iban_shop")
    shop.apply(posted(make_txn(counterparty="iban_shop")))
    data = json.loads(shop.to_bytes())
    del data["l"]
    old = CounterpartyProfile.from_bytes(json.dumps(data).encode())
    assert old.incoming == shop.incoming
    assert old.lift.n == 0 and old.lift.typical == 0.0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * 86400),
            st.integers(min_value=1, max_value=10**8),
            st.sampled_from(["iban_1", "iban_2", "iban_3", None]),
            st.sampled_from([None, "dev_1", "dev_2"]),
        ),
        max_size=40,
    )
)
def test_any_event_history_round_trips(
    events: list[tuple[int, int, str | None, str | None]],
) -> None:
    profile = CustomerProfile("cus_a")
    for offset, amount, counterparty, device in sorted(events, key=lambda e: e[0]):
        profile.apply(posted(make_txn(offset, amount=amount, counterparty=counterparty,
                                      device_id=device)))  # fmt: skip
    assert CustomerProfile.from_bytes(profile.to_bytes()) == profile


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"v":2,"k":"c"}',
        b'{"v":1,"k":"p","o":"x","i":{}}',
        b'{"v":1,"k":"c","o":"cus_a"}',
    ],
)
def test_unreadable_bytes_are_a_decode_error(raw: bytes) -> None:
    with pytest.raises(ProfileDecodeError):
        CustomerProfile.from_bytes(raw)

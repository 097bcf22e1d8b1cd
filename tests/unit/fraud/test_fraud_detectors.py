"""Each streaming typology fires on its pattern and stays quiet on its look-alike."""

from __future__ import annotations

import pytest
from fraudkit import LISBON, NEW_YORK, Stream, make_txn

from lastro.fraud.domain.decision import Severity
from lastro.fraud.domain.detectors import Typology
from lastro.fraud.domain.transactions import Status, TransactionType

HOUR = 3600
DAY = 86400


def history(
    stream: Stream, customer: str = "cus_a", payments: int = 12, amount: int = 5_000
) -> None:
    """A month of ordinary payments from the customer's phone to three usual payees."""
    for n in range(payments):
        stream.post(
            make_txn(
                -30 * DAY + n * 2 * DAY,
                customer_id=customer,
                amount=amount + 100 * (n % 3),
                counterparty=f"iban_usual_{n % 3}",
            )
        )


# --- velocity burst -------------------------------------------------------------------------


def test_a_burst_of_payments_to_new_merchants_raises_one_velocity_alert() -> None:
    stream = Stream()
    history(stream)
    for n in range(9):
        stream.post(make_txn(n * 15, type=TransactionType.CARD_PAYMENT, amount=300,
                             counterparty=f"mer_new_{n}"))  # fmt: skip
    assert stream.typologies() == ["velocity_burst"]
    alert = stream.alerts[0]
    assert alert.evidence["count_1m"] == 5 and alert.severity is Severity.MEDIUM
    assert alert.detector_id == "detector:velocity_burst"
    assert alert.customer_id == "cus_a" and alert.account_id == "acc_a"


def test_five_payments_to_new_merchants_paced_over_two_minutes_are_a_burst() -> None:
    stream = Stream()
    history(stream)
    for n in range(5):
        stream.post(make_txn(n * 30, type=TransactionType.CARD_PAYMENT, amount=300,
                             counterparty=f"mer_new_{n}"))  # fmt: skip
    (alert,) = stream.alerts
    assert alert.typology is Typology.VELOCITY_BURST
    assert alert.evidence["count_10m"] == 5 and alert.evidence["count_1m"] < 5


def test_five_paced_payments_with_two_known_payees_are_not_a_burst() -> None:
    stream = Stream()
    history(stream)
    payees = ["mer_new_0", "iban_usual_0", "mer_new_1", "iban_usual_1", "mer_new_2"]
    for n, payee in enumerate(payees):
        stream.post(make_txn(n * 30, amount=300, counterparty=payee))
    assert stream.alerts == []


def test_payday_bills_to_known_payees_are_not_a_burst() -> None:
    stream = Stream()
    history(stream)
    for n in range(6):
        stream.post(make_txn(n * 60, amount=20_000, counterparty=f"iban_usual_{n % 3}"))
    assert stream.alerts == []


# --- amount spike ---------------------------------------------------------------------------


def test_a_large_payment_to_a_stranger_is_an_amount_spike() -> None:
    stream = Stream()
    history(stream)
    (alert,) = stream.post(make_txn(0, amount=150_000, counterparty="iban_stranger"))
    assert alert.typology is Typology.AMOUNT_SPIKE
    assert alert.evidence["ratio"] == pytest.approx(150_000 / 5_100, rel=0.05)
    assert alert.evidence["previous_max"] == 5_200


@pytest.mark.parametrize(
    "lookalike",
    ["known payee", "payee others pay", "modest amount", "too little history"],
)
def test_large_but_explained_payments_are_not_spikes(lookalike: str) -> None:
    stream = Stream()
    history(stream, payments=5 if lookalike == "too little history" else 12)
    payee = "iban_usual_0" if lookalike == "known payee" else "iban_big_shop"
    if lookalike == "payee others pay":
        stream.post(make_txn(-HOUR, customer_id="cus_other", counterparty=payee))
    amount = 30_000 if lookalike == "modest amount" else 150_000
    assert stream.post(make_txn(0, amount=amount, counterparty=payee)) == []


# --- new device -----------------------------------------------------------------------------


def test_a_new_device_on_a_new_network_paying_a_new_payee_is_a_takeover() -> None:
    stream = Stream()
    history(stream)
    (alert,) = stream.post(
        make_txn(
            0,
            device_id="dev_attacker",
            ip="203.0.113.9",
            amount=20_000,
            counterparty="iban_attacker",
            location=None,
        )
    )
    assert alert.typology is Typology.NEW_DEVICE
    assert alert.evidence["new_ip"] is True and alert.freezes_account


def test_a_new_phone_paying_the_usual_payees_is_not_a_takeover() -> None:
    stream = Stream()
    history(stream)
    stream.post(make_txn(0, device_id="dev_new_phone", amount=20_000, counterparty="iban_usual_1"))
    stream.post(make_txn(60, device_id="dev_new_phone", ip="10.0.0.1", amount=20_000,
                         counterparty="iban_friend"))  # fmt: skip
    assert stream.alerts == []


# --- impossible travel ----------------------------------------------------------------------


def test_two_places_too_far_apart_for_the_time_between_them() -> None:
    stream = Stream()
    home = make_txn(0, location=LISBON)
    stream.post(home)
    (alert,) = stream.post(make_txn(30 * 60, location=NEW_YORK, country="US"))
    assert alert.typology is Typology.IMPOSSIBLE_TRAVEL
    assert alert.evidence["speed_kmh"] == pytest.approx(5417 * 2, rel=0.01)
    assert alert.evidence["from_country"] == "PT" and alert.evidence["to_country"] == "US"
    assert alert.related == (home.transaction_id,)


def test_a_flight_abroad_is_not_impossible_travel() -> None:
    stream = Stream()
    stream.post(make_txn(0, location=LISBON))
    stream.post(make_txn(9 * HOUR, location=NEW_YORK, country="US"))  # about 600 km/h
    stream.post(make_txn(9 * HOUR + 60, location=None, country="US"))  # no place, no speed
    assert stream.alerts == []


# --- structuring ----------------------------------------------------------------------------


def deposit(offset: float, amount: int = 950_000) -> object:
    return make_txn(offset, type=TransactionType.DEPOSIT, amount=amount, counterparty="cash_atm",
                    location=None, device_id=None)  # fmt: skip


def test_a_third_deposit_just_under_the_threshold_within_72_hours_is_structuring() -> None:
    stream = Stream()
    for n in range(4):
        stream.post(deposit(n * 10 * HOUR))  # type: ignore[arg-type]
    assert stream.typologies() == ["structuring"]
    assert stream.alerts[0].evidence["just_under_threshold_72h"] == 3


@pytest.mark.parametrize("gap_hours", [40, 100])
def test_occasional_large_deposits_are_not_structuring(gap_hours: int) -> None:
    stream = Stream()
    count = 2 if gap_hours == 40 else 4
    for n in range(count):
        stream.post(deposit(n * gap_hours * HOUR))  # type: ignore[arg-type]
    stream.post(deposit(500 * HOUR, amount=1_200_000))  # type: ignore[arg-type]
    assert stream.alerts == []


# --- mule -----------------------------------------------------------------------------------


def pay_in(stream: Stream, offset: float, senders: int, receiver: str = "cus_m") -> None:
    for n in range(senders):
        stream.post(make_txn(offset + n * 60, customer_id=f"cus_s{n}", amount=20_000,
                             counterparty_customer_id=receiver, counterparty="acc_m",
                             location=None))  # fmt: skip


def test_many_senders_then_a_quick_payout_is_a_mule() -> None:
    stream = Stream()
    history(stream, customer="cus_m")
    pay_in(stream, -3 * HOUR, senders=7)
    (alert,) = stream.post(make_txn(0, customer_id="cus_m", source_account_id="acc_m",
                                    amount=120_000, counterparty="iban_cashout"))  # fmt: skip
    assert alert.typology is Typology.MULE and alert.freezes_account  # not also a spike
    assert alert.evidence["senders_24h"] == 7
    assert alert.evidence["paid_out_share"] == pytest.approx(120_000 / 140_000, abs=0.01)
    assert alert.account_id == "acc_m"


def test_a_shop_paid_by_many_customers_every_day_is_not_a_mule() -> None:
    stream = Stream()
    history(stream, customer="cus_m")
    for day in range(10, 0, -1):
        pay_in(stream, -day * DAY, senders=7)
        stream.post(make_txn(-day * DAY + HOUR, customer_id="cus_m", amount=100_000,
                             counterparty="iban_supplier"))  # fmt: skip
    pay_in(stream, -3 * HOUR, senders=7)
    payout = make_txn(0, customer_id="cus_m", amount=120_000, counterparty="iban_supplier")
    assert stream.post(payout) == []


# --- round-tripping ---------------------------------------------------------------------------


def test_money_that_comes_back_within_days_is_round_tripping() -> None:
    stream = Stream()
    stream.post(make_txn(0, amount=500_000, counterparty_customer_id="cus_b", counterparty="acc_b"))
    back = make_txn(30 * HOUR, customer_id="cus_b", source_account_id="acc_b", amount=480_000,
                    counterparty_customer_id="cus_a", counterparty="acc_a")  # fmt: skip
    alerts = stream.post(back)
    assert [a.typology for a in alerts] == [Typology.ROUND_TRIPPING]
    assert alerts[0].customer_id == "cus_a" and alerts[0].evidence["sent"] == 500_000


@pytest.mark.parametrize(("hours", "amount"), [(200, 480_000), (30, 300_000), (30, 50_000)])
def test_late_different_or_small_returns_are_not_round_tripping(hours: int, amount: int) -> None:
    stream = Stream()
    sent = amount if amount < 100_000 else 500_000
    stream.post(make_txn(0, amount=sent, counterparty_customer_id="cus_b", counterparty="acc_b"))
    stream.post(make_txn(hours * HOUR, customer_id="cus_b", amount=amount,
                         counterparty_customer_id="cus_a", counterparty="acc_a"))  # fmt: skip
    assert [a for a in stream.alerts if a.typology is Typology.ROUND_TRIPPING] == []


# --- the stream ---------------------------------------------------------------------------------


def test_only_posted_transactions_are_analysed_but_declines_are_remembered() -> None:
    stream = Stream()
    stream.post(make_txn(0, location=LISBON))
    far = make_txn(60, location=NEW_YORK)
    assert stream.post(far, Status.RECEIVED) == []
    assert stream.post(far, Status.DECLINED) == []
    assert stream.profile("cus_a").declined.total(int(far.occurred_at.timestamp()))[0] == 1


def test_an_alerted_typology_cools_down_per_customer() -> None:
    stream = Stream()
    stream.post(make_txn(0, location=LISBON))
    stream.post(make_txn(600, location=NEW_YORK))
    stream.post(make_txn(1200, location=LISBON))  # back again: same typology, same customer
    assert stream.typologies() == ["impossible_travel"]
    stream.post(make_txn(7 * HOUR, location=NEW_YORK))  # the six-hour cool-down has passed
    assert stream.typologies() == ["impossible_travel", "impossible_travel"]


def test_a_later_payout_of_an_alerted_mule_is_not_raised_again_as_a_spike() -> None:
    stream = Stream()
    history(stream, customer="cus_m")
    pay_in(stream, -3 * HOUR, senders=7)
    for n, amount in enumerate((90_000, 40_000)):
        stream.post(make_txn(n * 600, customer_id="cus_m", amount=amount,
                             counterparty=f"iban_cashout_{n}"))  # fmt: skip
    assert stream.typologies() == ["mule"]

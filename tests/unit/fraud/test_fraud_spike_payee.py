"""Amount spikes to a young payee other customers pay far more than their own usual
to (a scam's mule account), told apart from a collection many people give a few times
their usual to; and a scam escalating, the victim paying the same new payee a large
sum again within hours."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from fraudkit import T0, Stream, make_txn, posted

from lastro.fraud.domain.decision import Outcome
from lastro.fraud.domain.detectors import Typology
from lastro.fraud.domain.features import compute_features
from lastro.fraud.domain.profiles import CounterpartyProfile, CustomerProfile
from lastro.fraud.domain.rules import RuleSet
from lastro.fraud.rulefiles import load_rule_file
from lastro.fraud.synthetic import Scenario, generate

HOUR = 3600
DAY = 86400
RULE = Path(__file__).resolve().parents[3] / "policies/fraudrules/amount-spike-new-payee.yaml"


def history(stream: Stream, customer: str = "cus_a", amount: int = 5_000) -> None:
    """A month of ordinary payments (about 50 EUR) to three usual payees."""
    for n in range(12):
        payee, at = f"iban_usual_{n % 3}", -30 * DAY + n * 2 * DAY
        stream.post(make_txn(at, customer_id=customer, amount=amount + 100 * (n % 3),
                             counterparty=payee))  # fmt: skip


def others_pay(
    stream: Stream, payee: str, amounts: list[int], first: float = -HOUR, usual: int = 5_000
) -> None:
    """Other customers, each with a month of payments of about ``usual``, pay ``payee``."""
    for n, amount in enumerate(amounts):
        sender = f"cus_other_{payee}_{n}"
        history(stream, sender, usual)
        stream.post(make_txn(first + n * 60, customer_id=sender, amount=amount,
                             counterparty=payee))  # fmt: skip


def test_the_payees_week_and_typical_amount_received_are_features() -> None:
    payee = CounterpartyProfile("iban_mule")
    paid = [(-9 * DAY, 10_000), (-2 * DAY, 40_000), (-HOUR, 160_000)]
    for n, (offset, amount) in enumerate(paid):
        payee.apply(posted(make_txn(offset, customer_id=f"cus_{n}", amount=amount,
                                    counterparty="iban_mule")))  # fmt: skip
    features = compute_features(
        CustomerProfile("cus_a"), make_txn(0, counterparty="iban_mule"), payee
    )
    assert features.cp_senders_7d == 2  # the sender nine days ago is outside the week
    assert features.cp_amount_typical == pytest.approx(40_000, rel=1e-6)  # geometric mean
    unknown = compute_features(CustomerProfile("cus_a"), make_txn(0), None)
    assert unknown.cp_senders_7d == 0 and unknown.cp_amount_typical == 0


def test_what_senders_paid_a_payee_against_their_own_usual_is_a_feature() -> None:
    stream = Stream()
    history(stream, "cus_b", 5_000)
    history(stream, "cus_c", 20_000)
    stream.post(make_txn(-2 * HOUR, customer_id="cus_b", amount=100_000, counterparty="iban_x"))
    stream.post(make_txn(-HOUR, customer_id="cus_c", amount=100_000, counterparty="iban_x"))
    # a payer with no history (a customer new to the platform) says nothing about the payee
    stream.post(make_txn(-60, customer_id="cus_new", amount=900_000, counterparty="iban_x"))
    payee = stream.counterparties["iban_x"]
    assert payee.lift.n == 2
    features = compute_features(CustomerProfile("cus_a"), make_txn(0, counterparty="iban_x"), payee)
    # 19.6 and 5.0 times each sender's typical amount: geometric mean about 9.9
    assert features.cp_sender_lift == pytest.approx((100_000**2 / (5_100 * 20_100)) ** 0.5,
                                                    rel=0.02)  # fmt: skip
    unknown = compute_features(CustomerProfile("cus_a"), make_txn(0), None)
    assert unknown.cp_sender_lift == 0.0


def test_seven_times_the_usual_to_a_young_payee_others_pay_large_sums_is_a_spike() -> None:
    stream = Stream()
    history(stream)
    others_pay(stream, "iban_mule", [180_000, 220_000])
    (alert,) = stream.post(make_txn(0, amount=36_000, counterparty="iban_mule"))
    assert alert.typology is Typology.AMOUNT_SPIKE
    assert alert.evidence["payee"] == "young"
    assert alert.evidence["payee_senders_7d"] == 2
    assert alert.evidence["payee_paid_ratio"] == pytest.approx(199_000 / 5_100, rel=0.05)
    assert alert.evidence["payee_sender_lift"] == pytest.approx(199_000 / 5_100, rel=0.05)
    assert alert.evidence["ratio"] == pytest.approx(36_000 / 5_100, rel=0.05)


def test_a_mule_paid_by_victims_of_modest_means_is_young_for_a_richer_customer_too() -> None:
    """Victims whose usual payment is about 20 EUR each sent 400 EUR, twenty times it:
    the payee's typical amount received is under twice this customer's typical amount
    (250 EUR), but what its senders paid against their own habits is a mule's."""
    stream = Stream()
    history(stream, amount=25_000)
    others_pay(stream, "iban_mule", [40_000, 40_000, 41_000], usual=2_000)
    (alert,) = stream.post(make_txn(0, amount=150_000, counterparty="iban_mule"))
    assert alert.evidence["payee"] == "young"
    assert alert.evidence["payee_paid_ratio"] < 2
    assert alert.evidence["payee_sender_lift"] == pytest.approx(20, rel=0.05)


def test_a_collection_is_not_a_mule_for_a_poorer_donor() -> None:
    """Givers whose usual payment is about 100 EUR sent 300 EUR each, three times it; a
    donor whose usual is 5 EUR gives seven times theirs. The collection's typical amount
    received is sixty times this donor's own, but nobody paid it much over their habits."""
    stream = Stream()
    history(stream, amount=500)
    others_pay(stream, "iban_collection", [30_000, 31_000, 29_000, 30_500], usual=10_000)
    assert stream.post(make_txn(0, amount=3_500, counterparty="iban_collection")) == []


def test_the_same_payment_to_a_payee_nobody_paid_before_needs_ten_times_the_usual() -> None:
    stream = Stream()
    history(stream)
    assert stream.post(make_txn(0, amount=36_000, counterparty="iban_first")) == []
    (alert,) = stream.post(make_txn(60, amount=60_000, counterparty="iban_second"))
    assert alert.evidence["payee"] == "unknown" and alert.evidence["payee_senders_7d"] == 0


@pytest.mark.parametrize(
    ("lookalike", "amounts", "first", "amount"),
    [
        ("a collection others give small gifts to", [9_000, 12_000, 8_000], -HOUR, 36_000),
        ("a collection others give a lot to, as they can", [45_000, 40_000], -HOUR, 36_000),
        ("a payee paid large sums for weeks", [180_000, 220_000], -20 * DAY, 36_000),
        ("a young payee, but not much more than usual", [180_000, 220_000], -HOUR, 20_000),
    ],
)
def test_payments_to_young_or_established_payees_that_do_not_look_like_a_mule(
    lookalike: str, amounts: list[int], first: float, amount: int
) -> None:
    stream = Stream()
    history(stream)
    others_pay(stream, "iban_payee", amounts, first)
    assert stream.post(make_txn(0, amount=amount, counterparty="iban_payee")) == []


def test_the_screening_rule_reviews_the_same_two_shapes_the_detector_alerts_on() -> None:
    stream = Stream()
    history(stream)
    others_pay(stream, "iban_mule", [180_000, 220_000])
    others_pay(stream, "iban_collection", [9_000, 12_000, 8_000])
    rules = RuleSet.of(load_rule_file(RULE))
    profile = stream.profile("cus_a")
    outcomes = {}
    for payee, amount in [("iban_mule", 36_000), ("iban_collection", 36_000),
                          ("iban_never_paid", 60_000), ("iban_never_paid", 36_000)]:  # fmt: skip
        txn = make_txn(0, amount=amount, counterparty=payee)
        features = compute_features(profile, txn, stream.counterparties.get(payee))
        decision = rules.screen(txn, features, now=T0)
        outcomes[payee, amount] = decision.outcome
    assert outcomes == {
        ("iban_mule", 36_000): Outcome.REVIEW,
        ("iban_collection", 36_000): Outcome.APPROVE,
        ("iban_never_paid", 60_000): Outcome.REVIEW,
        ("iban_never_paid", 36_000): Outcome.APPROVE,
    }


def test_hours_since_the_customer_first_paid_the_payee_is_a_feature() -> None:
    stream = Stream()
    stream.post(make_txn(-5 * HOUR, counterparty="iban_new"))
    stream.post(make_txn(-HOUR, counterparty="iban_new"))
    profile = stream.profile("cus_a")
    again = compute_features(profile, make_txn(0, counterparty="iban_new"))
    assert again.counterparty_first_paid_hours == pytest.approx(5.0)  # the first, not the last
    assert again.counterparty_payments == 2
    never = compute_features(profile, make_txn(0, counterparty="iban_other"))
    assert never.counterparty_first_paid_hours == -1.0


def test_a_scam_escalating_is_caught_on_the_second_payment() -> None:
    stream = Stream()
    history(stream)
    # seven times the usual to a payee nobody paid: under the ten the first payment needs
    assert stream.post(make_txn(0, amount=36_000, counterparty="iban_scam")) == []
    (alert,) = stream.post(make_txn(3 * HOUR, amount=36_000, counterparty="iban_scam"))
    assert alert.typology is Typology.AMOUNT_SPIKE
    assert alert.evidence["payee"] == "repeat"
    assert alert.evidence["payee_first_paid_hours"] == pytest.approx(3.0)
    assert alert.evidence["payee_previous_max"] == 36_000
    assert alert.evidence["ratio"] >= 5.0


@pytest.mark.parametrize(
    ("lookalike", "first_amount", "hours", "amount"),
    [
        ("an instalment paid the next day", 36_000, 13, 36_000),
        ("a small first payment, then a large one", 5_000, 2, 36_000),
        ("a large first payment, then an ordinary one", 36_000, 2, 9_000),
    ],
)
def test_repeat_payments_that_do_not_look_like_a_scam_escalating(
    lookalike: str, first_amount: int, hours: int, amount: int
) -> None:
    stream = Stream()
    history(stream)
    stream.post(make_txn(0, amount=first_amount, counterparty="iban_payee"))
    assert stream.post(make_txn(hours * HOUR, amount=amount, counterparty="iban_payee")) == []


def test_a_repeat_payment_from_a_new_device_is_not_an_amount_spike() -> None:
    stream = Stream()
    history(stream)
    stream.post(make_txn(0, amount=36_000, counterparty="iban_scam"))
    repeat = make_txn(HOUR, amount=36_000, counterparty="iban_scam", device_id="dev_other")
    assert Typology.AMOUNT_SPIKE not in [alert.typology for alert in stream.post(repeat)]


def test_the_screening_rule_reviews_a_scam_escalating_as_the_detector_does() -> None:
    rules = RuleSet.of(load_rule_file(RULE))
    outcomes = {}
    for hours in (3, 13):
        stream = Stream()
        history(stream)
        stream.post(make_txn(0, amount=36_000, counterparty="iban_scam"))
        txn = make_txn(hours * HOUR, amount=36_000, counterparty="iban_scam")
        features = compute_features(
            stream.profile("cus_a"), txn, stream.counterparties.get("iban_scam")
        )
        outcomes[hours] = rules.screen(txn, features, now=txn.occurred_at).outcome
        alerted = stream.post(txn) != []
        assert alerted is (outcomes[hours] is Outcome.REVIEW)
    assert outcomes == {3: Outcome.REVIEW, 13: Outcome.APPROVE}


def test_scam_victims_share_mule_accounts_and_collections_have_many_donors() -> None:
    labelled = generate(5, Scenario(customers=200, shops=4, days=70, cases_per_typology=20))
    victims: dict[str, set[str]] = defaultdict(set)
    donors: dict[str, set[str]] = defaultdict(set)
    for label in labelled:
        payee = label.txn.counterparty or ""
        if label.typology is Typology.AMOUNT_SPIKE:
            victims[payee].add(label.txn.customer_id)
        if label.lookalike == "appeal":
            donors[payee].add(label.txn.customer_id)
    assert sum(len(cases) for cases in victims.values()) >= 20
    assert any(len(cases) >= 2 for cases in victims.values())
    assert any(len(cases) == 1 for cases in victims.values())
    assert len(donors) == 2 and all(len(people) >= 6 for people in donors.values())

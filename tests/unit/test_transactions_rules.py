"""FX arithmetic, the ledger postings each step asks for, and request rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lastro.core.money import CURRENCIES
from lastro.transactions.domain import errors, fx, ledger, requests
from lastro.transactions.domain.ledger import PostingSpec, SystemPurpose
from lastro.transactions.domain.machine import Purpose
from lastro.transactions.domain.model import (
    BatchStatus,
    CaptureMethod,
    FxLeg,
    Kind,
    Refund,
    RefundStatus,
    Status,
    Transaction,
    TransferBatch,
)

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


# ---------------------------------------------------------------- fx


def test_conversion_rounds_down_to_the_buy_currency_minor_unit() -> None:
    assert fx.convert(10_000, "EUR", Decimal("1.08345"), "USD") == 10_834  # 108.345 → 108.34
    assert fx.convert(10_000, "EUR", Decimal("162.457"), "JPY") == 16_245  # 16245.7 → 16245
    assert fx.convert(1_000, "JPY", Decimal("0.00205"), "KWD") == 2_050  # 2.050 KWD
    assert fx.customer_rate(Decimal("1.08345"), 50) == Decimal("1.07803275")


@given(
    buy=st.integers(1, 10**12),
    rate=st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("20000"), places=6),
    pair=st.tuples(st.sampled_from(sorted(CURRENCIES)), st.sampled_from(sorted(CURRENCIES))),
)
def test_selling_for_a_buy_amount_is_the_least_that_buys_it(
    buy: int, rate: Decimal, pair: tuple[str, str]
) -> None:
    sell_currency, buy_currency = pair
    sell = fx.sell_for(buy, buy_currency, rate, sell_currency)
    assert fx.convert(sell, sell_currency, rate, buy_currency) >= buy
    assert sell == 1 or fx.convert(sell - 1, sell_currency, rate, buy_currency) < buy


def quote(**changes: object) -> fx.Quote:
    made = fx.make_quote(
        quote_id="quo_1",
        scope="cli:usr",
        sell_currency="EUR",
        buy_currency="USD",
        sell_amount=10_000,
        buy_amount=None,
        provider_rate=Decimal("1.1"),
        rate_as_of=NOW,
        spread_bps=100,
        now=NOW,
        ttl=timedelta(seconds=60),
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def test_a_quote_fixes_both_amounts_at_the_spread_adjusted_rate() -> None:
    q = quote()
    assert (q.sell_amount, q.buy_amount, q.rate) == (10_000, 10_890, "1.08900000")
    assert q.expires_at == NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("scope", "amount", "destination", "at", "error"),
    [
        ("cli:other", 10_000, "USD", NOW, errors.UnknownQuote),
        ("cli:usr", 10_000, "USD", NOW + timedelta(seconds=60), errors.QuoteExpired),
        ("cli:usr", 10_000, "GBP", NOW, errors.QuoteMismatch),
        ("cli:usr", 9_999, "USD", NOW, errors.QuoteMismatch),
    ],
)
def test_a_transfer_refuses_a_foreign_expired_or_mismatching_quote(
    scope: str, amount: int, destination: str, at: datetime, error: type[Exception]
) -> None:
    with pytest.raises(error):
        fx.check_quote_for_transfer(
            quote(),
            scope=scope,
            amount=amount,
            currency="EUR",
            destination_currency=destination,
            now=at,
        )
    ok = fx.check_quote_for_transfer(
        quote(), scope="cli:usr", amount=10_000, currency="EUR", destination_currency="USD", now=NOW
    )
    assert ok.id == "quo_1"


# ---------------------------------------------------------------- postings

SYSTEM = {
    (purpose, currency): f"acc_{purpose.value}_{currency}"
    for purpose in SystemPurpose
    for currency in ("EUR", "USD")
}


def sums(spec: PostingSpec) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for leg in spec.legs:
        totals[leg.currency] += leg.amount if leg.direction == "credit" else -leg.amount
    return dict(totals)


def payment(**changes: object) -> Transaction:
    base = Transaction(
        id="txn_p",
        kind=Kind.CARD_PAYMENT,
        status=Status.POSTED,
        client_id="c",
        owner="o",
        amount=5_000,
        currency="EUR",
        created_at=NOW,
        updated_at=NOW,
        destination_account_id="acc_merchant",
        capture_method=CaptureMethod.MANUAL,
        captured_amount=4_000,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@given(amount=st.integers(1, 10**15), bought=st.integers(1, 10**15))
def test_every_posting_sums_to_zero_in_each_currency(amount: int, bought: int) -> None:
    transfer = payment(
        id="txn_t",
        kind=Kind.TRANSFER,
        amount=amount,
        source_account_id="acc_a",
        destination_account_id="acc_b",
    )
    exchange = replace(transfer, kind=Kind.FX_TRANSFER, fx=FxLeg("quo", "1.1", bought, "USD"))
    payout = replace(transfer, kind=Kind.PAYOUT, destination_account_id=None)
    deposit = replace(
        transfer,
        kind=Kind.DEPOSIT,
        source_account_id=None,
        metadata={
            "gross": str(amount),
            "fees": str(amount // 80),
            "net": str(amount - amount // 80),
        },
    )
    takes_back = replace(
        deposit, metadata={"gross": str(-amount), "fees": "1", "net": str(-amount - 1)}
    )
    card = payment(captured_amount=min(amount, 5_000))
    refund = Refund("re_1", card.id, 1, "EUR", RefundStatus.PENDING, NOW)
    specs = [
        ledger.posting_for(transfer, Purpose.MAIN, SYSTEM),
        ledger.posting_for(exchange, Purpose.MAIN, SYSTEM),
        ledger.posting_for(replace(exchange, hold_id="hold_1"), Purpose.MAIN, SYSTEM),
        ledger.posting_for(payout, Purpose.MAIN, SYSTEM),
        ledger.posting_for(deposit, Purpose.DEPOSIT, SYSTEM),
        ledger.posting_for(takes_back, Purpose.DEPOSIT, SYSTEM),
        ledger.posting_for(card, Purpose.CAPTURE, SYSTEM),
        ledger.posting_for(card, Purpose.REFUND, SYSTEM, refund),
    ]
    for spec in specs:
        assert all(total == 0 for total in sums(spec).values()), spec
        assert all(leg.amount > 0 for leg in spec.legs)
    fx_legs = specs[1].legs
    assert [leg.account_id for leg in fx_legs] == ["acc_a", "acc_fx_EUR", "acc_fx_USD", "acc_b"]
    assert specs[2].external_id == "txn_t:buy" and len(specs[2].legs) == 2


def test_external_ids_chain_from_the_transaction_id() -> None:
    card = payment()
    refund = Refund("re_9", card.id, 10, "EUR", RefundStatus.PENDING, NOW)
    assert ledger.posting_for(card, Purpose.CAPTURE, SYSTEM).external_id == "txn_p:capture"
    assert ledger.posting_for(card, Purpose.REFUND, SYSTEM, refund).external_id == "re_9"


def test_an_atomic_batch_funds_once_and_distributes_in_chunks_the_ledger_accepts() -> None:
    items = [
        payment(
            id=f"txn_{i:04d}",
            kind=Kind.TRANSFER,
            amount=i + 1,
            source_account_id="acc_src",
            destination_account_id=f"acc_{i}",
        )
        for i in range(1000)
    ]
    batch = TransferBatch(
        "bat_1",
        "c",
        "o",
        "acc_src",
        "EUR",
        True,
        1000,
        sum(i.amount for i in items),
        BatchStatus.RECEIVED,
        NOW,
        NOW,
    )
    funding = ledger.batch_funding(batch, "acc_clear")
    assert sums(funding) == {"EUR": 0} and funding.external_id == "bat_1:funding"
    chunks = ledger.batch_chunks(items)
    assert sum(len(c) for c in chunks) == 1000 and max(len(c) for c in chunks) == ledger.CHUNK
    for n, chunk in enumerate(chunks):
        spec = ledger.batch_distribution(batch, "acc_clear", chunk, n)
        assert len(spec.legs) <= ledger.MAX_LEGS and sums(spec) == {"EUR": 0}
    moved = sum(
        leg.amount
        for n, chunk in enumerate(chunks)
        for leg in ledger.batch_distribution(batch, "acc_clear", chunk, n).legs
        if leg.direction == "credit"
    )
    assert moved == batch.total


# ---------------------------------------------------------------- requests


@pytest.mark.parametrize("iban", ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"])
def test_valid_ibans_are_normalised(iban: str) -> None:
    assert requests.normalise_iban(iban) == iban.replace(" ", "")


@pytest.mark.parametrize("iban", ["GB82WEST12345698765433", "DE8937040044", "not an iban"])
def test_invalid_ibans_are_refused(iban: str) -> None:
    with pytest.raises(errors.InvalidTransaction):
        requests.normalise_iban(iban)


def test_captures_never_exceed_the_authorisation_and_refunds_never_the_capture() -> None:
    authorized = payment(status=Status.AUTHORIZED, captured_amount=0)
    assert requests.check_capture(authorized, None) == 5_000
    assert requests.check_capture(authorized, 1_234) == 1_234
    with pytest.raises(errors.AmountExceeded):
        requests.check_capture(authorized, 5_001)
    with pytest.raises(errors.InvalidState):
        requests.check_capture(payment(), 10)
    captured = payment(refunded_amount=1_000)
    assert requests.check_refund(captured, None, pending=0) == 3_000
    assert requests.check_refund(captured, 500, pending=2_000) == 500
    with pytest.raises(errors.AmountExceeded):
        requests.check_refund(captured, 1_001, pending=2_000)
    with pytest.raises(errors.AmountExceeded):
        requests.check_refund(payment(refunded_amount=4_000), None, pending=0)


def test_a_batch_is_one_currency_from_one_source_and_at_most_a_thousand() -> None:
    item = requests.BatchItem("acc_b", 100, "EUR", "", None)
    assert requests.check_batch("acc_a", "EUR", [item] * 3) == 300
    with pytest.raises(errors.InvalidTransaction):
        requests.check_batch("acc_a", "EUR", [item] * 1001)
    with pytest.raises(errors.CurrencyMismatch):
        requests.check_batch("acc_a", "EUR", [replace(item, currency="USD")])
    with pytest.raises(errors.InvalidTransaction):
        requests.check_batch("acc_a", "EUR", [replace(item, destination_account_id="acc_a")])
    with pytest.raises(errors.InvalidTransaction):
        requests.check_batch("acc_a", "EUR", [replace(item, reference="r")] * 2)

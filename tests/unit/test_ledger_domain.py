"""Rules of the ledger domain, one behaviour per test (no I/O)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from lastro.accounts import domain as d
from lastro.accounts.domain import AccountId, AccountKind, AccountStatus, Direction
from lastro.core import ids, money

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ALICE = AccountId("acc_alice")
BOB = AccountId("acc_bob")
EURO = AccountId("acc_euro")
SETTLEMENT = AccountId("acc_settlement")


def accounts(**overrides: d.AccountState) -> dict[AccountId, d.AccountState]:
    base = {
        ALICE: d.AccountState(ALICE, "USD", AccountKind.CUSTOMER, posted=1_000),
        BOB: d.AccountState(BOB, "USD", AccountKind.CUSTOMER),
        EURO: d.AccountState(EURO, "EUR", AccountKind.CUSTOMER, posted=500),
        SETTLEMENT: d.AccountState(SETTLEMENT, "USD", AccountKind.SYSTEM, posted=-1_000),
    }
    base.update({AccountId(k): v for k, v in overrides.items()})
    return base


def entry(account: str, direction: Direction, amount: object, currency: str = "USD"):
    return d.EntryRequest(AccountId(account), direction, amount, currency)  # type: ignore[arg-type]


def transfer(amount: int = 100, src: str = ALICE, dst: str = BOB, **kw) -> d.PostingRequest:
    return d.PostingRequest(
        external_id=kw.pop("external_id", "ext-1"),
        entries=(entry(src, Direction.DEBIT, amount), entry(dst, Direction.CREDIT, amount)),
        **kw,
    )


def hold_request(amount: int = 300, **kw) -> d.HoldRequest:
    fields = {
        "external_id": "auth-1",
        "account_id": ALICE,
        "counterparty_id": SETTLEMENT,
        "amount": amount,
        "currency": "USD",
        "expires_at": NOW + timedelta(days=7),
    }
    fields.update(kw)
    return d.HoldRequest(**fields)


def placed_hold(amount: int = 300) -> d.Hold:
    return d.place_hold(accounts(), hold_request(amount), d.HoldId("hold_1"), NOW).hold


# --- identifiers ---------------------------------------------------------------------


def test_ids_carry_their_prefix_and_a_ulid_body():
    acc = d.new_account_id(NOW)
    assert acc.startswith("acc_") and len(acc) == 4 + 26
    assert ids.has_prefix(acc, "acc")
    assert not ids.has_prefix(acc, "pst")
    assert d.new_posting_id(NOW).startswith("pst_")
    assert d.new_hold_id(NOW).startswith("hold_")
    assert d.new_customer_id(NOW).startswith("cus_")


def _bytes(value: int) -> Callable[[int], bytes]:
    return lambda n: value.to_bytes(n, "big")


def test_ids_sort_by_the_use_cases_clock_whatever_the_randomness():
    rng = random.Random(7)
    made = [
        d.new_posting_id(NOW + timedelta(milliseconds=ms), rng.randbytes)
        for ms in (0, 1, 2, 1_000, 86_400_000)
    ]
    assert made == sorted(made)
    late_low = d.new_posting_id(NOW + timedelta(milliseconds=1), _bytes(0))
    early_high = d.new_posting_id(NOW, _bytes(2**80 - 1))
    assert early_high < late_low


def test_id_generation_is_deterministic_given_the_random_source():
    assert d.new_account_id(NOW, _bytes(12345)) == d.new_account_id(NOW, _bytes(12345))
    assert d.new_account_id(NOW, _bytes(1)) != d.new_account_id(NOW, _bytes(2))


def test_malformed_ids_are_not_valid():
    assert not ids.has_prefix("acc_", "acc")
    assert not ids.has_prefix("acc_" + "U" * 26, "acc")  # U is not Crockford
    assert not ids.has_prefix("acc_" + "0" * 25, "acc")


# --- errors --------------------------------------------------------------------------


def test_every_error_has_a_distinct_stable_slug():
    classes = [
        cls
        for cls in vars(d).values()
        if isinstance(cls, type) and issubclass(cls, d.LedgerError) and cls is not d.LedgerError
    ]
    slugs = [cls.slug for cls in classes]
    assert len(slugs) == len(set(slugs)) >= 17
    assert all(slug.replace("-", "").isalpha() and slug.islower() for slug in slugs)
    assert d.InsufficientFunds.slug == "insufficient-funds"


def test_money_errors_are_catchable_as_core_money_errors():
    with pytest.raises(money.UnknownCurrency):
        d.validate_currency("XXX")
    assert issubclass(d.CurrencyMismatch, money.CurrencyMismatch)
    assert issubclass(d.InvalidAmount, money.InvalidAmount)


# --- accounts ------------------------------------------------------------------------


def test_open_account_starts_active_and_empty():
    acc = d.open_account(ALICE, "JPY", AccountKind.CUSTOMER, overdraft_limit=500)
    assert (acc.status, acc.posted, acc.pending, acc.available) == (AccountStatus.ACTIVE, 0, 0, 0)


@pytest.mark.parametrize("code", ["usd", "XXX", "US", ""])
def test_open_account_rejects_unknown_currency(code):
    with pytest.raises(d.UnknownCurrency):
        d.open_account(ALICE, code, AccountKind.CUSTOMER)


@pytest.mark.parametrize(
    ("kind", "limit"),
    [(AccountKind.CUSTOMER, -1), (AccountKind.CUSTOMER, 1.5), (AccountKind.SYSTEM, 10)],
)
def test_open_account_rejects_bad_overdraft(kind, limit):
    with pytest.raises(d.InvalidRequest) as caught:
        d.open_account(ALICE, "USD", kind, overdraft_limit=limit)
    assert caught.value.field == "overdraft_limit"


def test_freeze_and_unfreeze_are_idempotent():
    acc = accounts()[ALICE]
    frozen = d.freeze(acc)
    assert frozen.status is AccountStatus.FROZEN
    assert d.freeze(frozen) == frozen
    assert d.unfreeze(frozen) == acc
    assert d.unfreeze(acc) == acc


def test_close_requires_zero_posted_and_zero_pending():
    with pytest.raises(d.AccountNotEmpty):
        d.close(accounts()[ALICE])
    with pytest.raises(d.AccountNotEmpty):
        d.close(replace(accounts()[BOB], pending=1))
    closed = d.close(d.freeze(accounts()[BOB]))
    assert closed.status is AccountStatus.CLOSED


@pytest.mark.parametrize("action", [d.freeze, d.unfreeze, d.close])
def test_closed_account_rejects_lifecycle_changes(action):
    with pytest.raises(d.AccountClosed):
        action(replace(accounts()[BOB], status=AccountStatus.CLOSED))


# --- posting validation --------------------------------------------------------------


def test_valid_transfer_moves_money_between_customers():
    deltas = d.apply_posting(accounts(), transfer(100))
    assert deltas == {ALICE: d.BalanceDelta(posted=-100), BOB: d.BalanceDelta(posted=100)}


def test_entries_on_the_same_account_are_netted():
    request = d.PostingRequest(
        "ext",
        (
            entry(ALICE, Direction.DEBIT, 100),
            entry(BOB, Direction.CREDIT, 70),
            entry(ALICE, Direction.CREDIT, 30),
        ),
    )
    assert d.apply_posting(accounts(), request)[ALICE] == d.BalanceDelta(posted=-70)


@pytest.mark.parametrize("count", [0, 1])
def test_posting_needs_two_entries(count):
    request = d.PostingRequest("ext", transfer().entries[:count])
    with pytest.raises(d.TooFewEntries):
        d.validate_posting(request, accounts())


@pytest.mark.parametrize("amount", [0, -5, 1.0, "100", True, None, 2**63])
def test_amount_must_be_a_positive_bigint(amount):
    request = d.PostingRequest(
        "ext", (entry(ALICE, Direction.DEBIT, amount), entry(BOB, Direction.CREDIT, amount))
    )
    with pytest.raises(d.InvalidAmount) as caught:
        d.validate_posting(request, accounts())
    assert caught.value.field == "entries[0].amount"


def test_unbalanced_posting_is_rejected():
    request = d.PostingRequest(
        "ext", (entry(ALICE, Direction.DEBIT, 100), entry(BOB, Direction.CREDIT, 99))
    )
    with pytest.raises(d.UnbalancedPosting, match="debits exceed credits by 1"):
        d.validate_posting(request, accounts())


def test_balance_is_checked_per_currency_not_in_total():
    request = d.PostingRequest(
        "fx",
        (
            entry(ALICE, Direction.DEBIT, 100, "USD"),
            entry(EURO, Direction.CREDIT, 100, "EUR"),
        ),
    )
    with pytest.raises(d.UnbalancedPosting):
        d.validate_posting(request, accounts())


def test_cross_currency_posting_balances_through_fx_position_accounts():
    fx_usd, fx_eur = AccountId("acc_fx_usd"), AccountId("acc_fx_eur")
    book = accounts(
        acc_fx_usd=d.AccountState(fx_usd, "USD", AccountKind.SYSTEM),
        acc_fx_eur=d.AccountState(fx_eur, "EUR", AccountKind.SYSTEM),
    )
    request = d.PostingRequest(
        "fx",
        (
            entry(ALICE, Direction.DEBIT, 110, "USD"),
            entry(fx_usd, Direction.CREDIT, 110, "USD"),
            entry(fx_eur, Direction.DEBIT, 100, "EUR"),
            entry(EURO, Direction.CREDIT, 100, "EUR"),
        ),
    )
    deltas = d.apply_posting(book, request)
    assert deltas[fx_eur] == d.BalanceDelta(posted=-100)
    assert deltas[EURO] == d.BalanceDelta(posted=100)


def test_unknown_currency_is_rejected():
    request = d.PostingRequest(
        "ext", (entry(ALICE, Direction.DEBIT, 1, "ABC"), entry(BOB, Direction.CREDIT, 1, "ABC"))
    )
    with pytest.raises(d.UnknownCurrency):
        d.validate_posting(request, accounts())


def test_unknown_account_is_rejected_with_the_offending_field():
    with pytest.raises(d.UnknownAccount) as caught:
        d.validate_posting(transfer(dst="acc_nobody"), accounts())
    assert caught.value.field == "entries[1].account_id"


def test_entry_currency_must_match_the_account():
    request = d.PostingRequest(
        "ext", (entry(EURO, Direction.DEBIT, 1, "USD"), entry(BOB, Direction.CREDIT, 1, "USD"))
    )
    with pytest.raises(d.CurrencyMismatch):
        d.validate_posting(request, accounts())


def test_direction_must_be_the_enum():
    request = d.PostingRequest(
        "ext",
        (entry(ALICE, "debit", 1), entry(BOB, Direction.CREDIT, 1)),  # type: ignore[arg-type]
    )
    with pytest.raises(d.InvalidRequest):
        d.validate_posting(request, accounts())


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"external_id": ""}, "external_id"),
        ({"external_id": "x" * 256}, "external_id"),
        ({"external_id": "line\nbreak"}, "external_id"),
        ({"description": "x" * 1001}, "description"),
        ({"metadata": {"k": 1}}, "metadata.k"),
        ({"metadata": {"": "v"}}, "metadata"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
    ],
)
def test_malformed_request_fields_are_named(kw, field):
    with pytest.raises(d.InvalidRequest) as caught:
        d.validate_posting(transfer(**kw), accounts())
    assert caught.value.field == field


def test_frozen_account_rejects_debits_but_accepts_credits():
    book = accounts(acc_alice=d.freeze(accounts()[ALICE]), acc_bob=d.freeze(accounts()[BOB]))
    with pytest.raises(d.AccountFrozen):
        d.apply_posting(book, transfer(100, src=ALICE, dst=SETTLEMENT))
    deltas = d.apply_posting(book, transfer(100, src=SETTLEMENT, dst=BOB))
    assert deltas[BOB] == d.BalanceDelta(posted=100)


@pytest.mark.parametrize(("src", "dst"), [(BOB, SETTLEMENT), (SETTLEMENT, BOB)])
def test_closed_account_rejects_debits_and_credits(src, dst):
    book = accounts(acc_bob=replace(accounts()[BOB], status=AccountStatus.CLOSED))
    with pytest.raises(d.AccountClosed):
        d.apply_posting(book, transfer(1, src=src, dst=dst))


# --- spend rules ---------------------------------------------------------------------


def test_customer_cannot_spend_more_than_available():
    with pytest.raises(d.InsufficientFunds):
        d.apply_posting(accounts(), transfer(1_001))
    assert d.apply_posting(accounts(), transfer(1_000))[ALICE] == d.BalanceDelta(posted=-1_000)


def test_pending_holds_reduce_what_a_customer_can_spend():
    book = accounts(acc_alice=replace(accounts()[ALICE], pending=400))
    assert book[ALICE].available == 600
    with pytest.raises(d.InsufficientFunds):
        d.apply_posting(book, transfer(601))


def test_overdraft_limit_extends_spending_exactly_to_the_limit():
    book = accounts(acc_alice=replace(accounts()[ALICE], overdraft_limit=250))
    assert d.apply_posting(book, transfer(1_250))[ALICE].posted == -1_250
    with pytest.raises(d.InsufficientFunds):
        d.apply_posting(book, transfer(1_251))


def test_system_accounts_may_go_negative():
    deltas = d.apply_posting(accounts(), transfer(10**9, src=SETTLEMENT, dst=BOB))
    assert accounts()[SETTLEMENT].apply(deltas[SETTLEMENT]).posted == -1_000 - 10**9


def test_credit_to_an_overdrawn_account_is_always_accepted():
    overdrawn = replace(accounts()[BOB], posted=-50)  # e.g. overdraft limit lowered later
    deltas = d.apply_posting(accounts(acc_bob=overdrawn), transfer(10, src=SETTLEMENT, dst=BOB))
    assert overdrawn.apply(deltas[BOB]).posted == -40


def test_balances_may_not_leave_the_bigint_range():
    huge = replace(accounts()[BOB], posted=money.MAX_MINOR_UNITS)
    with pytest.raises(d.InvalidAmount):
        d.apply_posting(accounts(acc_bob=huge), transfer(1, src=SETTLEMENT, dst=BOB))


# --- idempotency and fingerprints ----------------------------------------------------


def test_fingerprint_ignores_entry_order():
    request = transfer()
    swapped = replace(request, entries=tuple(reversed(request.entries)))
    assert d.posting_fingerprint(request) == d.posting_fingerprint(swapped)
    assert len(d.posting_fingerprint(request)) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"external_id": "ext-2"},
        {"description": "rent"},
        {"metadata": {"order": "42"}},
        {"reverses": d.PostingId("pst_x")},
    ],
)
def test_fingerprint_covers_every_field(change):
    assert d.posting_fingerprint(transfer()) != d.posting_fingerprint(replace(transfer(), **change))


def test_fingerprint_distinguishes_amount_direction_and_account():
    base = d.posting_fingerprint(transfer(100))
    assert base != d.posting_fingerprint(transfer(101))
    assert base != d.posting_fingerprint(transfer(100, src=BOB, dst=ALICE))
    assert base != d.posting_fingerprint(transfer(100, dst=SETTLEMENT))


def test_same_external_id_with_same_content_replays_the_posting():
    posting = d.record_posting(transfer(), d.PostingId("pst_1"), NOW)
    retry = replace(transfer(), entries=tuple(reversed(transfer().entries)))
    assert d.replay_posting(posting, retry) is posting


def test_same_external_id_with_different_content_conflicts():
    posting = d.record_posting(transfer(100), d.PostingId("pst_1"), NOW)
    with pytest.raises(d.ExternalIdConflict):
        d.replay_posting(posting, transfer(101))


def test_hold_external_id_is_idempotent_too():
    hold = placed_hold(300)
    assert d.replay_hold(hold, hold_request(300)) is hold
    with pytest.raises(d.ExternalIdConflict):
        d.replay_hold(hold, hold_request(301))


# --- reversals -----------------------------------------------------------------------


def test_reversal_swaps_every_direction_and_references_the_original():
    posting = d.record_posting(transfer(100), d.PostingId("pst_1"), NOW)
    reversal = d.reverse(posting)
    assert reversal.reverses == "pst_1"
    assert [e.direction for e in reversal.entries] == [Direction.CREDIT, Direction.DEBIT]
    assert [(e.account_id, e.amount) for e in reversal.entries] == [(ALICE, 100), (BOB, 100)]
    forward = d.apply_posting(accounts(), transfer(100))
    after = {k: accounts()[k].apply(v) for k, v in forward.items()}
    backward = d.apply_posting({**accounts(), **after}, reversal)
    assert {k: forward[k] + backward[k] for k in forward} == {
        ALICE: d.BalanceDelta(),
        BOB: d.BalanceDelta(),
    }


def test_reversing_twice_replays_the_first_reversal():
    posting = d.record_posting(transfer(), d.PostingId("pst_1"), NOW)
    first = d.record_posting(d.reverse(posting), d.PostingId("pst_2"), NOW)
    assert d.replay_posting(first, d.reverse(posting)) is first


def test_derived_postings_are_keyed_where_callers_cannot_write():
    posting = d.record_posting(transfer(), d.PostingId("pst_1"), NOW)
    derived = [
        d.reverse(posting).external_id,
        d.post_hold(accounts(), placed_hold(300), 300, NOW).posting.external_id,  # type: ignore[union-attr]
    ]
    assert derived == ["lastro:reversal:pst_1", "lastro:hold:hold_1:post"]
    for external_id in (*derived, "lastro:", "lastro:anything"):
        with pytest.raises(d.ReservedExternalId) as refused:
            d.validate_caller_external_id(external_id)
        assert refused.value.field == "external_id" and refused.value.status == 422
        with pytest.raises(d.ReservedExternalId):
            d.place_hold(accounts(), hold_request(external_id=external_id), d.HoldId("h"), NOW)
    for allowed in ("hold_1:post", "reversal:pst_1", "Lastro:x", "order-lastro:1"):
        d.validate_caller_external_id(allowed)


def test_reversal_obeys_spend_rules():
    posting = d.record_posting(transfer(100, src=SETTLEMENT, dst=BOB), d.PostingId("pst_1"), NOW)
    with pytest.raises(d.InsufficientFunds):
        d.apply_posting(accounts(), d.reverse(posting))  # Bob never received the 100 here


# --- holds ---------------------------------------------------------------------------


def test_placing_a_hold_reserves_funds():
    transition = d.place_hold(accounts(), hold_request(300), d.HoldId("hold_1"), NOW)
    assert transition.hold.status is d.HoldStatus.PENDING
    assert transition.deltas == {ALICE: d.BalanceDelta(pending=300)}
    assert accounts()[ALICE].apply(transition.deltas[ALICE]).available == 700


def test_hold_cannot_exceed_available_funds():
    with pytest.raises(d.InsufficientFunds):
        d.place_hold(accounts(), hold_request(1_001), d.HoldId("hold_1"), NOW)


@pytest.mark.parametrize(
    ("kw", "error", "field"),
    [
        ({"expires_at": NOW}, d.InvalidRequest, "expires_at"),
        ({"expires_at": datetime(2030, 1, 1)}, d.InvalidRequest, "expires_at"),
        ({"counterparty_id": ALICE}, d.InvalidRequest, "counterparty_id"),
        ({"amount": 0}, d.InvalidAmount, "amount"),
        ({"currency": "EUR"}, d.CurrencyMismatch, "currency"),
        ({"currency": "ZZZ"}, d.UnknownCurrency, "currency"),
        ({"account_id": AccountId("acc_nobody")}, d.UnknownAccount, "account_id"),
        ({"counterparty_id": AccountId("acc_nobody")}, d.UnknownAccount, "counterparty_id"),
    ],
)
def test_hold_request_errors_name_the_hold_field(kw, error, field):
    with pytest.raises(error) as caught:
        d.place_hold(accounts(), hold_request(**kw), d.HoldId("hold_1"), NOW)
    assert caught.value.field == field


def test_frozen_account_cannot_place_a_hold_but_can_be_its_counterparty():
    book = accounts(acc_alice=d.freeze(accounts()[ALICE]))
    with pytest.raises(d.AccountFrozen):
        d.place_hold(book, hold_request(), d.HoldId("hold_1"), NOW)
    request = hold_request(account_id=SETTLEMENT, counterparty_id=ALICE)
    assert d.place_hold(book, request, d.HoldId("hold_2"), NOW).hold.status is d.HoldStatus.PENDING


def test_posting_a_hold_in_full_moves_the_money_and_releases_the_reservation():
    hold = placed_hold(300)
    transition = d.post_hold(accounts(), hold, 300, NOW + timedelta(hours=1))
    assert transition.hold.status is d.HoldStatus.POSTED
    assert transition.hold.posted_amount == 300
    assert transition.deltas == {
        ALICE: d.BalanceDelta(posted=-300, pending=-300),
        SETTLEMENT: d.BalanceDelta(posted=300),
    }
    assert transition.posting is not None
    assert transition.posting.external_id == "lastro:hold:hold_1:post"
    d.validate_posting(transition.posting, accounts())


def test_partial_post_releases_the_remainder():
    transition = d.post_hold(accounts(), placed_hold(300), 120, NOW)
    assert transition.deltas[ALICE] == d.BalanceDelta(posted=-120, pending=-300)
    assert transition.hold.posted_amount == 120


def test_posting_a_hold_never_fails_for_funds_it_reserved():
    reserved = replace(accounts()[ALICE], posted=300, pending=300, overdraft_limit=0)
    transition = d.post_hold(accounts(acc_alice=reserved), placed_hold(300), 300, NOW)
    assert reserved.apply(transition.deltas[ALICE]).available == 0


@pytest.mark.parametrize(("amount", "error"), [(301, d.HoldAmountExceeded), (0, d.InvalidAmount)])
def test_post_amount_must_be_positive_and_within_the_hold(amount, error):
    with pytest.raises(error):
        d.post_hold(accounts(), placed_hold(300), amount, NOW)


def test_hold_is_never_posted_twice():
    posted = d.post_hold(accounts(), placed_hold(), 100, NOW).hold
    with pytest.raises(d.HoldAlreadyPosted):
        d.post_hold(accounts(), posted, 100, NOW)
    with pytest.raises(d.HoldAlreadyPosted):
        d.void_hold(posted, NOW)
    with pytest.raises(d.HoldAlreadyPosted):
        d.expire_hold(posted, NOW + timedelta(days=30))


def test_voided_hold_releases_funds_and_is_final():
    transition = d.void_hold(placed_hold(300), NOW)
    assert transition.hold.status is d.HoldStatus.VOIDED
    assert transition.deltas == {ALICE: d.BalanceDelta(pending=-300)}
    assert transition.posting is None
    for attempt in (
        lambda: d.post_hold(accounts(), transition.hold, 1, NOW),
        lambda: d.void_hold(transition.hold, NOW),
    ):
        with pytest.raises(d.HoldAlreadyVoided):
            attempt()


def test_hold_past_its_expiry_cannot_be_posted_or_voided_even_before_the_sweep():
    hold = placed_hold()
    for attempt in (
        lambda: d.post_hold(accounts(), hold, 1, hold.expires_at),
        lambda: d.void_hold(hold, hold.expires_at),
    ):
        with pytest.raises(d.HoldExpired):
            attempt()


def test_expiry_releases_funds_only_once_the_hold_has_lapsed():
    hold = placed_hold(300)
    with pytest.raises(d.HoldNotExpired):
        d.expire_hold(hold, hold.expires_at - timedelta(microseconds=1))
    expired = d.expire_hold(hold, hold.expires_at)
    assert expired.hold.status is d.HoldStatus.EXPIRED
    assert expired.deltas == {ALICE: d.BalanceDelta(pending=-300)}
    with pytest.raises(d.HoldExpired):
        d.expire_hold(expired.hold, hold.expires_at)
    with pytest.raises(d.HoldExpired):
        d.post_hold(accounts(), expired.hold, 1, NOW)


def test_hold_not_pending_covers_every_final_state():
    for error in (d.HoldAlreadyPosted, d.HoldAlreadyVoided, d.HoldExpired):
        assert issubclass(error, d.HoldNotPending)


def test_frozen_account_cannot_post_a_hold_but_can_void_it():
    hold = placed_hold()
    book = accounts(acc_alice=d.freeze(accounts()[ALICE]))
    with pytest.raises(d.AccountFrozen):
        d.post_hold(book, hold, 100, NOW)
    assert d.void_hold(hold, NOW).hold.status is d.HoldStatus.VOIDED


# --- statements ----------------------------------------------------------------------


def test_statement_closing_is_opening_plus_credits_minus_debits():
    entries = [
        entry(ALICE, Direction.CREDIT, 500),
        entry(ALICE, Direction.DEBIT, 120),
        entry(ALICE, Direction.DEBIT, 80),
    ]
    totals = d.summarize_statement(1_000, entries)
    assert totals == d.StatementTotals(
        opening=1_000, total_debits=200, total_credits=500, closing=1_300, entry_count=3
    )


def test_empty_statement_closes_at_its_opening():
    assert d.summarize_statement(-40, []).closing == -40

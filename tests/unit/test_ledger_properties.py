"""Ledger invariants under random sequences of postings, holds and reversals.

An in-memory book driven only by the domain functions stands in for the store:
it applies exactly the deltas the domain returns, and keeps every posting so the
balances can be recomputed from the entries.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lastro.accounts import domain as d
from lastro.accounts.domain import AccountId, AccountKind, Direction

START = datetime(2024, 1, 1, tzinfo=UTC)
CURRENCIES = ("USD", "JPY")
# Per currency: two system accounts and three customers with different overdrafts.
LAYOUT = (
    ("settlement", AccountKind.SYSTEM, 0),
    ("fees", AccountKind.SYSTEM, 0),
    ("alice", AccountKind.CUSTOMER, 0),
    ("bob", AccountKind.CUSTOMER, 0),
    ("carol", AccountKind.CUSTOMER, 5_000),
)
ACCOUNT_IDS = [AccountId(f"acc_{name}_{cur.lower()}") for cur in CURRENCIES for name, *_ in LAYOUT]

amounts = st.integers(min_value=1, max_value=20_000)
legs = st.lists(
    st.tuples(st.sampled_from(range(len(LAYOUT))), st.sampled_from(range(len(LAYOUT))), amounts),
    min_size=1,
    max_size=3,
)


def account_id(currency: str, index: int) -> AccountId:
    return AccountId(f"acc_{LAYOUT[index][0]}_{currency.lower()}")


class LedgerBook(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.accounts = {
            account_id(cur, i): d.open_account(account_id(cur, i), cur, kind, overdraft)
            for cur in CURRENCIES
            for i, (_, kind, overdraft) in enumerate(LAYOUT)
        }
        self.postings: dict[str, d.Posting] = {}  # by external_id
        self.holds: dict[d.HoldId, d.Hold] = {}
        self.hold_posts: Counter[d.HoldId] = Counter()
        self.sequence = 0

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def _apply(self, deltas: dict[AccountId, d.BalanceDelta]) -> None:
        for account, delta in deltas.items():
            self.accounts[account] = self.accounts[account].apply(delta)

    def _post(self, request: d.PostingRequest) -> None:
        """Idempotent posting, as the service does it: replay, or apply and record."""
        existing = self.postings.get(request.external_id)
        if existing is not None:
            with contextlib.suppress(d.ExternalIdConflict):
                d.replay_posting(existing, request)
            return
        try:
            deltas = d.apply_posting(self.accounts, request)
        except d.LedgerError:
            return
        self._apply(deltas)
        posting_id = d.PostingId(f"pst_{self._next()}")
        self.postings[request.external_id] = d.record_posting(request, posting_id, self.now)

    @rule(currency=st.sampled_from(CURRENCIES), pairs=legs, reuse_external_id=st.booleans())
    def post_transfer(self, currency, pairs, reuse_external_id):
        entries = []
        for debit, credit, amount in pairs:
            entries.append(
                d.EntryRequest(account_id(currency, debit), Direction.DEBIT, amount, currency)
            )
            entries.append(
                d.EntryRequest(account_id(currency, credit), Direction.CREDIT, amount, currency)
            )
        external_id = "reused" if reuse_external_id else f"ext-{self._next()}"
        self._post(d.PostingRequest(external_id, tuple(entries)))

    @rule(currency=st.sampled_from(CURRENCIES), debit=st.integers(0, 4), amount=amounts)
    def attempt_unbalanced_posting(self, currency, debit, amount):
        request = d.PostingRequest(
            f"bad-{self._next()}",
            (
                d.EntryRequest(account_id(currency, debit), Direction.DEBIT, amount, currency),
                d.EntryRequest(account_id(currency, 0), Direction.CREDIT, amount + 1, currency),
            ),
        )
        before = dict(self.accounts)
        self._post(request)
        assert self.accounts == before

    @precondition(lambda self: self.postings)
    @rule(data=st.data())
    def reverse_a_posting(self, data):
        original = data.draw(st.sampled_from(sorted(self.postings.values(), key=lambda p: p.id)))
        self._post(d.reverse(original))

    @rule(
        currency=st.sampled_from(CURRENCIES),
        holder=st.integers(0, 4),
        counterparty=st.integers(0, 4),
        amount=amounts,
        lifetime=st.integers(1, 120),
    )
    def place_hold(self, currency, holder, counterparty, amount, lifetime):
        request = d.HoldRequest(
            external_id=f"auth-{self._next()}",
            account_id=account_id(currency, holder),
            counterparty_id=account_id(currency, counterparty),
            amount=amount,
            currency=currency,
            expires_at=self.now + timedelta(minutes=lifetime),
        )
        hold_id = d.HoldId(f"hold_{self._next()}")
        try:
            transition = d.place_hold(self.accounts, request, hold_id, self.now)
        except d.LedgerError:
            return
        self._apply(transition.deltas)
        self.holds[hold_id] = transition.hold

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), fraction=st.integers(1, 120))
    def post_a_hold(self, data, fraction):
        hold = data.draw(st.sampled_from(sorted(self.holds.values(), key=lambda h: h.id)))
        amount = max(1, hold.amount * fraction // 100)
        try:
            transition = d.post_hold(self.accounts, hold, amount, self.now)
        except d.HoldNotPending:
            assert hold.status is not d.HoldStatus.PENDING or self.now >= hold.expires_at
            return
        except (d.HoldAmountExceeded, d.AccountFrozen):
            return
        assert hold.status is d.HoldStatus.PENDING
        assert transition.posting is not None
        assert transition.posting.external_id not in self.postings
        self._apply(transition.deltas)
        self.holds[hold.id] = transition.hold
        self.hold_posts[hold.id] += 1
        posting_id = d.PostingId(f"pst_{self._next()}")
        self.postings[transition.posting.external_id] = d.record_posting(
            transition.posting, posting_id, self.now
        )

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void_a_hold(self, data):
        hold = data.draw(st.sampled_from(sorted(self.holds.values(), key=lambda h: h.id)))
        try:
            transition = d.void_hold(hold, self.now)
        except d.HoldNotPending:
            return
        self._apply(transition.deltas)
        self.holds[hold.id] = transition.hold

    @rule(minutes=st.integers(1, 90))
    def time_passes_and_expired_holds_are_swept(self, minutes):
        self.now += timedelta(minutes=minutes)
        for hold in list(self.holds.values()):
            if hold.status is d.HoldStatus.PENDING and hold.expires_at <= self.now:
                transition = d.expire_hold(hold, self.now)
                self._apply(transition.deltas)
                self.holds[hold.id] = transition.hold

    @rule(account=st.sampled_from(ACCOUNT_IDS), frozen=st.booleans())
    def freeze_or_unfreeze(self, account, frozen):
        change = d.freeze if frozen else d.unfreeze
        self.accounts[account] = change(self.accounts[account])

    @invariant()
    def every_currency_sums_to_zero(self):
        for currency in CURRENCIES:
            total = sum(a.posted for a in self.accounts.values() if a.currency == currency)
            assert total == 0

    @invariant()
    def every_balance_equals_the_sum_of_its_entries(self):
        for account in self.accounts.values():
            own = [
                e for p in self.postings.values() for e in p.entries if e.account_id == account.id
            ]
            assert d.summarize_statement(0, own).closing == account.posted

    @invariant()
    def pending_equals_the_open_holds(self):
        for account in self.accounts.values():
            held = sum(
                h.amount
                for h in self.holds.values()
                if h.account_id == account.id and h.status is d.HoldStatus.PENDING
            )
            assert account.pending == held >= 0

    @invariant()
    def no_customer_spends_past_its_overdraft(self):
        for account in self.accounts.values():
            if account.kind is AccountKind.CUSTOMER:
                assert account.available >= -account.overdraft_limit

    @invariant()
    def no_hold_is_posted_twice(self):
        assert all(count <= 1 for count in self.hold_posts.values())
        for hold in self.holds.values():
            if hold.status is d.HoldStatus.POSTED:
                assert 0 < hold.posted_amount <= hold.amount
                assert self.hold_posts[hold.id] == 1


LedgerBook.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_ledger_invariants_hold_under_random_operations = LedgerBook.TestCase


entry_strategy = st.builds(
    d.EntryRequest,
    account_id=st.sampled_from(ACCOUNT_IDS),
    direction=st.sampled_from(Direction),
    amount=amounts,
    currency=st.sampled_from(CURRENCIES),
)


@given(entries=st.lists(entry_strategy, min_size=2, max_size=6), data=st.data())
def test_fingerprint_is_invariant_under_entry_permutation(entries, data):
    shuffled = data.draw(st.permutations(entries))
    original = d.PostingRequest("ext", tuple(entries))
    assert d.posting_fingerprint(original) == d.posting_fingerprint(
        d.PostingRequest("ext", tuple(shuffled))
    )


@given(entries=st.lists(entry_strategy, min_size=2, max_size=6))
def test_reversal_of_a_posting_cancels_it_exactly(entries):
    posting = d.record_posting(d.PostingRequest("ext", tuple(entries)), d.PostingId("pst_1"), START)
    reversal = d.reverse(posting)
    net: Counter[tuple[str, str]] = Counter()
    for e in (*posting.entries, *reversal.entries):
        net[(e.account_id, e.currency)] += d.signed_amount(e.direction, e.amount)
    assert set(net.values()) <= {0}


@given(
    opening=st.integers(-(10**12), 10**12),
    moves=st.lists(st.tuples(st.sampled_from(Direction), amounts), max_size=30),
    split=st.integers(0, 30),
)
def test_statements_chain_across_periods(opening, moves, split):
    entries = [d.EntryRequest(AccountId("acc_a"), dr, amt, "USD") for dr, amt in moves]
    first = d.summarize_statement(opening, entries[:split])
    second = d.summarize_statement(first.closing, entries[split:])
    whole = d.summarize_statement(opening, entries)
    assert second.closing == whole.closing
    assert whole.closing - opening == whole.total_credits - whole.total_debits

"""The rules log's records and the rule book they build (no broker: the pure parts)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lastro.fraud.domain.decision import Action
from lastro.fraud.domain.rules import InvalidRule, Rule
from lastro.fraud.domain.screening import fingerprint
from lastro.fraud.events import (
    RULE_DELETED,
    RULE_UPSERTED,
    RuleDeleted,
    RuleUpserted,
    UnknownRuleEvent,
    rule_change,
)
from lastro.fraud.rulebook import RuleBook

RULE: dict[str, Any] = {
    "id": "big-payments",
    "expression": "txn.amount > 100000",
    "action": "review",
    "mode": "shadow",
    "revision": "uid-1:1",
}


def test_an_upsert_record_carries_a_parsed_rule_and_a_deletion_its_id_and_revision() -> None:
    upsert = rule_change(RULE_UPSERTED, RULE)
    assert isinstance(upsert, RuleUpserted) and upsert.rule.revision == "uid-1:1"
    deletion = rule_change(RULE_DELETED, {"id": "big-payments", "revision": "uid-1:2"})
    assert deletion == RuleDeleted("big-payments", "uid-1:2")


@pytest.mark.parametrize(
    ("event_type", "data", "error"),
    [
        ("lastro.fraud.alert_raised", RULE, UnknownRuleEvent),
        (RULE_UPSERTED, {**RULE, "action": "explode"}, InvalidRule),
        (RULE_UPSERTED, {**RULE, "id": "Not A Label"}, InvalidRule),
        (RULE_DELETED, {"revision": "x"}, InvalidRule),
        (RULE_DELETED, {"id": 7}, InvalidRule),
    ],
)
def test_a_record_that_is_not_a_rule_change_is_refused(
    event_type: str, data: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        rule_change(event_type, data)


async def test_the_version_is_the_log_position_of_the_last_change_applied() -> None:
    book = RuleBook()
    assert book.current.version == 0
    await book.apply(rule_change(RULE_UPSERTED, RULE), position=0)
    assert book.current.version == 1
    await book.apply(rule_change(RULE_UPSERTED, {**RULE, "mode": "enforce"}), position=41)
    assert book.current.version == 42
    rule = book.current.get("big-payments")
    assert rule is not None and rule.mode.value == "enforce"
    await book.apply(RuleDeleted("big-payments", "uid-1:2"), position=57)
    assert book.current.version == 58 and book.current.get("big-payments") is None


async def test_an_invalid_rule_never_replaces_the_working_one() -> None:
    book = RuleBook()
    await book.apply(rule_change(RULE_UPSERTED, RULE), position=3)
    broken = RuleUpserted(Rule("big-payments", "features.nope > 1", Action.REVIEW))
    with pytest.raises(InvalidRule):
        await book.apply(broken, position=10)
    assert book.current.version == 4
    kept = book.current.get("big-payments")
    assert kept is not None and kept.expression == "txn.amount > 100000"


async def test_waiting_for_a_change_returns_the_set_once_it_holds_or_none_after_the_wait() -> None:
    book = RuleBook()
    assert await book.wait_for(lambda s: s.get("big-payments") is not None, 0.05) is None

    async def later() -> None:
        await asyncio.sleep(0.05)
        await book.apply(rule_change(RULE_UPSERTED, RULE), position=9)

    applying = asyncio.create_task(later())
    live = await book.wait_for(lambda s: s.get("big-payments") is not None, 5)
    await applying
    assert live is not None and live.version == 10


def test_a_request_fingerprint_ignores_key_order_and_sees_any_change() -> None:
    request = {"transaction_id": "txn_1", "amount": 100, "location": {"lat": 1.0, "lon": 2.0}}
    reordered = {"location": {"lon": 2.0, "lat": 1.0}, "amount": 100, "transaction_id": "txn_1"}
    assert fingerprint(request) == fingerprint(reordered)
    assert fingerprint(request) != fingerprint({**request, "amount": 101})

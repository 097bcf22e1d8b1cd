from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from lastro.core.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainHead,
    canonical_json,
    chain_hash,
    head_mac,
    verify_chain,
)

KEY = b"unit-test-audit-key"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def record(i: int) -> AuditRecord:
    return AuditRecord(
        actor=f"usr_{i}",
        action="transfer.posted",
        target=f"txn_{i}",
        outcome="success",
        source_ip="203.0.113.7",
        details={"amount": 1000 + i, "currency": "BRL", "tags": ["a", None, True]},
        occurred_at=T0 + timedelta(seconds=i),
    )


def build_chain(n: int, key: bytes = KEY) -> tuple[list[AuditEntry], ChainHead]:
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        digest = chain_hash(prev, seq, record(seq))
        entries.append(AuditEntry(seq=seq, record=record(seq), prev_hash=prev, hash=digest))
        prev = digest
    return entries, ChainHead(seq=n, hash=prev, mac=head_mac(key, n, prev))


def test_clean_chain_verifies() -> None:
    entries, head = build_chain(5)
    result = verify_chain(entries, head, KEY)
    assert result.ok and result.checked == 5
    assert result.first_bad_seq is None and result.reason is None


def test_empty_chain_verifies_with_or_without_a_head() -> None:
    assert verify_chain([], None, KEY).ok
    genesis = ChainHead(seq=0, hash=GENESIS_HASH, mac=head_mac(KEY, 0, GENESIS_HASH))
    assert verify_chain([], genesis, KEY).ok


def test_edited_record_is_pinpointed() -> None:
    entries, head = build_chain(5)
    edited = replace(entries[2].record, outcome="failure")
    entries[2] = replace(entries[2], record=edited)

    result = verify_chain(entries, head, KEY)

    assert not result.ok
    assert result.first_bad_seq == 3 and result.checked == 2
    assert result.reason is not None and "edited" in result.reason


def test_edited_details_are_pinpointed() -> None:
    entries, head = build_chain(4)
    entries[1] = replace(entries[1], record=replace(entries[1].record, details={"amount": 1}))
    assert verify_chain(entries, head, KEY).first_bad_seq == 2


def test_deleted_record_is_pinpointed() -> None:
    entries, head = build_chain(5)
    del entries[1]

    result = verify_chain(entries, head, KEY)

    assert not result.ok and result.first_bad_seq == 2 and result.checked == 1
    assert result.reason is not None and "missing" in result.reason


def test_deleted_and_renumbered_record_is_pinpointed() -> None:
    entries, head = build_chain(5)
    del entries[1]
    entries = [replace(e, seq=i) for i, e in enumerate(entries, start=1)]
    assert verify_chain(entries, head, KEY).first_bad_seq == 2


def test_reordered_records_are_pinpointed() -> None:
    entries, head = build_chain(5)
    second, third = entries[1], entries[2]
    # swap the positions of records 2 and 3, keeping each row's own hashes
    entries[1], entries[2] = replace(third, seq=2), replace(second, seq=3)

    result = verify_chain(entries, head, KEY)

    assert not result.ok and result.first_bad_seq == 2
    assert result.reason is not None and "does not follow" in result.reason


def test_rewritten_chain_is_caught_by_the_head_signature() -> None:
    entries, _ = build_chain(5)
    forged, forged_head = build_chain(5, key=b"attacker-key")
    forged[4] = replace(forged[4], record=replace(forged[4].record, outcome="failure"))
    forged_hash = chain_hash(forged[4].prev_hash, 5, forged[4].record)
    forged[4] = replace(forged[4], hash=forged_hash)
    forged_head = replace(
        forged_head, hash=forged_hash, mac=head_mac(b"attacker-key", 5, forged_hash)
    )

    result = verify_chain(forged, forged_head, KEY)

    assert not result.ok
    assert result.reason is not None and "signature" in result.reason
    assert verify_chain(entries, forged_head, KEY).ok is False


def test_truncated_tail_is_detected() -> None:
    entries, head = build_chain(5)
    result = verify_chain(entries[:3], head, KEY)
    assert not result.ok and result.first_bad_seq == 4 and result.checked == 3
    assert result.reason is not None and "truncated" in result.reason


def test_head_rolled_back_without_the_key_is_detected() -> None:
    entries, head = build_chain(5)
    rolled_back = ChainHead(seq=3, hash=entries[2].hash, mac=head.mac)
    result = verify_chain(entries[:3], rolled_back, KEY)
    assert not result.ok and result.reason is not None and "signature" in result.reason


def test_records_beyond_the_signed_head_are_detected() -> None:
    entries, _ = build_chain(5)
    _, head_at_3 = build_chain(3)
    result = verify_chain(entries, head_at_3, KEY)
    assert not result.ok and result.first_bad_seq == 4


def test_missing_head_over_records_is_detected() -> None:
    entries, _ = build_chain(2)
    assert verify_chain(entries, None, KEY).ok is False


def test_wrong_key_fails_verification() -> None:
    entries, head = build_chain(3)
    assert verify_chain(entries, head, b"another-key").ok is False


def test_canonical_json_is_stable_across_key_order_and_timezone() -> None:
    a = record(1)
    shifted = a.occurred_at.astimezone(timezone(timedelta(hours=-3)))
    b = replace(a, details=dict(reversed(list(a.details.items()))), occurred_at=shifted)
    assert canonical_json(7, a) == canonical_json(7, b)
    assert b'"seq":7' in canonical_json(7, a)
    assert canonical_json(7, a) != canonical_json(8, a)


def test_hash_depends_on_previous_hash_and_sequence() -> None:
    r = record(1)
    assert chain_hash(GENESIS_HASH, 1, r) != chain_hash(b"\x01" * 32, 1, r)
    assert chain_hash(GENESIS_HASH, 1, r) != chain_hash(GENESIS_HASH, 2, r)
    assert len(chain_hash(GENESIS_HASH, 1, r)) == 32


@pytest.mark.parametrize(
    "details",
    [{"amount": 12.5}, {"nested": {"x": [1.0]}}, {1: "int key"}, {"obj": object()}],
)
def test_records_reject_values_that_do_not_round_trip_exactly(
    details: dict[Any, Any],
) -> None:
    with pytest.raises(ValueError):
        replace(record(1), details=details)


def test_records_require_timezone_aware_times() -> None:
    with pytest.raises(ValueError):
        replace(record(1), occurred_at=datetime(2026, 1, 1))


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        head_mac(b"", 0, GENESIS_HASH)

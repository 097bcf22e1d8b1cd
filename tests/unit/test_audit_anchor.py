"""Verification of an audit chain whose oldest records a retention purge dropped: the
kept records are checked from the signed anchor (the last purged record's seq and
hash), never from the genesis."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from lastro.core.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainAnchor,
    ChainHead,
    ChainPosition,
    anchor_mac,
    chain_hash,
    head_mac,
    verify_chain,
)
from lastro.core.audit_chain import ChainWalker, anchored_walker

KEY = b"unit-test-audit-key"
T0 = datetime(2019, 1, 2, 3, 4, 5, tzinfo=UTC)


def record(i: int) -> AuditRecord:
    return AuditRecord(
        actor=f"usr_{i}",
        action="login.succeeded",
        target=f"usr_{i}",
        outcome="success",
        source_ip="203.0.113.9",
        details={"n": i},
        occurred_at=T0 + timedelta(days=i),
    )


def build_chain(n: int) -> tuple[list[AuditEntry], ChainHead]:
    entries: list[AuditEntry] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        digest = chain_hash(prev, seq, record(seq))
        entries.append(AuditEntry(seq, record(seq), prev, digest))
        prev = digest
    return entries, ChainHead(n, prev, head_mac(KEY, n, prev))


def purged(
    n: int, through: int, key: bytes = KEY
) -> tuple[list[AuditEntry], ChainHead, ChainAnchor]:
    """A chain of ``n`` records whose first ``through`` were purged, and its anchor."""
    entries, head = build_chain(n)
    last = entries[through - 1]
    anchor = ChainAnchor(through, last.hash, anchor_mac(key, through, last.hash))
    return entries[through:], head, anchor


def test_kept_records_verify_from_a_good_anchor() -> None:
    kept, head, anchor = purged(8, 5)

    result = verify_chain(kept, head, KEY, anchor=anchor)

    assert result.ok and result.anchor == 5 and result.checked == 8
    assert result.verified == ChainPosition(8, head.hash)


def test_everything_purged_up_to_the_head_verifies() -> None:
    kept, head, anchor = purged(4, 4)
    assert kept == []
    assert verify_chain(kept, head, KEY, anchor=anchor).ok


def test_a_purged_chain_without_its_anchor_is_missing_its_start() -> None:
    kept, head, _ = purged(8, 5)

    result = verify_chain(kept, head, KEY)

    assert not result.ok and result.first_bad_seq == 1
    assert result.reason is not None and "missing" in result.reason


def test_a_forged_anchor_is_refused() -> None:
    kept, head, anchor = purged(8, 5, key=b"attacker-key")

    result = verify_chain(kept, head, KEY, anchor=anchor)

    assert not result.ok
    assert result.reason is not None and "anchor signature" in result.reason


def test_an_anchor_moved_forward_without_the_key_is_refused() -> None:
    kept, head, anchor = purged(8, 5)
    entries, _ = build_chain(8)
    moved = ChainAnchor(6, entries[5].hash, anchor.mac)

    assert not verify_chain(kept[1:], head, KEY, anchor=moved).ok


def test_the_head_signature_never_signs_an_anchor() -> None:
    """A head row copied into the anchor would drop the whole chain: refused."""
    _, head = build_chain(5)
    copied = ChainAnchor(head.seq, head.hash, head.mac)

    result = verify_chain([], head, KEY, anchor=copied)

    assert not result.ok
    assert result.reason is not None and "anchor signature" in result.reason


def test_an_anchor_that_does_not_match_the_next_record_is_refused() -> None:
    kept, head, _ = purged(8, 5)
    elsewhere = bytes(range(32))
    anchor = ChainAnchor(5, elsewhere, anchor_mac(KEY, 5, elsewhere))

    result = verify_chain(kept, head, KEY, anchor=anchor)

    assert not result.ok and result.first_bad_seq == 6
    assert result.reason is not None and "does not follow" in result.reason


def test_a_purged_record_reinserted_before_the_anchor_is_tampering() -> None:
    entries, head = build_chain(8)
    _, _, anchor = purged(8, 5)

    result = verify_chain([entries[4], *entries[5:]], head, KEY, anchor=anchor)

    assert not result.ok and result.first_bad_seq == 5
    assert result.reason is not None and "before the signed anchor" in result.reason


def test_an_edited_record_before_the_anchor_is_tampering() -> None:
    entries, head = build_chain(8)
    _, _, anchor = purged(8, 5)
    edited = replace(entries[2], record=replace(entries[2].record, outcome="failure"))

    result = verify_chain([edited, *entries[5:]], head, KEY, anchor=anchor)

    assert not result.ok and result.first_bad_seq == 3


def test_a_hole_after_the_anchor_is_refused() -> None:
    kept, head, anchor = purged(8, 3)
    del kept[2]  # seq 6: a record deleted from the middle, not from the start

    result = verify_chain(kept, head, KEY, anchor=anchor)

    assert not result.ok and result.first_bad_seq == 6
    assert result.reason is not None and "missing" in result.reason


def test_an_edit_after_the_anchor_is_pinpointed() -> None:
    kept, head, anchor = purged(8, 3)
    kept[1] = replace(kept[1], record=replace(kept[1].record, target="usr_x"))

    result = verify_chain(kept, head, KEY, anchor=anchor)

    assert not result.ok and result.first_bad_seq == 5 and result.checked == 4


def test_a_truncated_tail_after_the_anchor_is_detected() -> None:
    kept, head, anchor = purged(8, 3)
    result = verify_chain(kept[:-2], head, KEY, anchor=anchor)
    assert not result.ok and result.first_bad_seq == 7


@pytest.mark.parametrize(("resume", "expected"), [(2, 5), (5, 5), (7, 7)])
def test_a_resumed_walk_starts_at_the_anchor_or_beyond(resume: int, expected: int) -> None:
    entries, _ = build_chain(8)
    _, _, anchor = purged(8, 5)
    start = ChainPosition(resume, entries[resume - 1].hash)

    walker = anchored_walker(anchor, KEY, start)

    assert isinstance(walker, ChainWalker)
    assert walker.checked == expected and walker.anchor == 5


def test_empty_key_is_refused_for_anchors_too() -> None:
    with pytest.raises(ValueError):
        anchor_mac(b"", 1, GENESIS_HASH)

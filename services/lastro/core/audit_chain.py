"""The audit chain's pure logic: the record, its canonical JSON, the hash chain, the
signed head, the signed start anchor left by a retention purge and the verification
walk (no I/O). :mod:`lastro.core.audit` stores and streams it; see its docstring for
the guarantees and docs/decisions/0007-audit-retention-anchor.md for the anchor."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

# The one audit vocabulary: actions are ``<resource>.<past participle>``
# (``account.opened``, ``login.failed``, ``key.rotated``) and outcomes one of these.
SUCCESS: Final = "success"
FAILURE: Final = "failure"
DENIED: Final = "denied"
OUTCOMES: Final = (SUCCESS, FAILURE, DENIED)

GENESIS_HASH: Final = bytes(32)


class AuditChainBroken(RuntimeError):
    """The chain head (or anchor) fails its signature check, or a purge found the chain
    tampered with; appending or purging would hide tampering."""


def _check_json(value: object, path: str) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a non-string key {key!r}")
            _check_json(item, f"{path}.{key}")
        return
    # floats do not survive JSONB exactly (1e20 comes back as an integer); money is never one
    raise ValueError(
        f"{path} must be str, int, bool, None, list or dict; got {type(value).__name__}"
    )


@dataclass(frozen=True)
class AuditRecord:
    """One audited action. ``details`` holds JSON values without floats."""

    actor: str
    action: str
    target: str
    outcome: str
    source_ip: str | None
    details: Mapping[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        for name in ("actor", "action", "target", "outcome"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        if self.source_ip is not None and not isinstance(self.source_ip, str):
            raise ValueError("source_ip must be a string or None")
        if not isinstance(self.details, dict):
            raise ValueError("details must be a dict")
        _check_json(self.details, "details")
        if not isinstance(self.occurred_at, datetime) or self.occurred_at.tzinfo is None:
            raise ValueError("occurred_at must be a timezone-aware datetime")
        object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))


@dataclass(frozen=True)
class AuditEntry:
    """A stored record with its chain position."""

    seq: int
    record: AuditRecord
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class ChainHead:
    seq: int
    hash: bytes
    mac: bytes


@dataclass(frozen=True)
class ChainAnchor:
    """Where the kept chain starts after a retention purge: the last purged record's
    seq and hash, signed (:func:`anchor_mac`) like the head."""

    seq: int
    hash: bytes
    mac: bytes


@dataclass(frozen=True)
class ChainPosition:
    """A record verified intact: its seq and hash (where a later verification resumes)."""

    seq: int
    hash: bytes


GENESIS: Final = ChainPosition(0, GENESIS_HASH)


@dataclass(frozen=True)
class VerifyResult:
    """``checked`` is the seq of the last record found intact (the count of intact
    records when verification started from the genesis and no purge anchored the
    chain); ``verified`` is the chain's end when it is intact; ``anchor`` is the seq
    the kept chain starts after (0 when nothing was ever purged), so the records
    verified are ``anchor + 1 .. checked``."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str | None
    verified: ChainPosition | None = None
    anchor: int = 0


def canonical_json(seq: int, record: AuditRecord) -> bytes:
    """The exact bytes hashed for a record: sorted keys, no whitespace, UTF-8."""
    document = {
        "seq": seq,
        "occurred_at": record.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": record.actor,
        "action": record.action,
        "target": record.target,
        "outcome": record.outcome,
        "source_ip": record.source_ip,
        "details": record.details,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def chain_hash(prev_hash: bytes, seq: int, record: AuditRecord) -> bytes:
    """``sha256(prev_hash || canonical_json(record with seq))``."""
    return hashlib.sha256(prev_hash + canonical_json(seq, record)).digest()


def head_mac(key: bytes, seq: int, hash_: bytes) -> bytes:
    """HMAC-SHA256 under ``key`` over the head's ``(seq, hash)``."""
    if not key:
        raise ValueError("the audit HMAC key must not be empty")
    message = b"lastro-audit-head\x00" + seq.to_bytes(8, "big") + hash_
    return hmac.new(key, message, hashlib.sha256).digest()


def head_is_authentic(head: ChainHead, key: bytes) -> bool:
    return hmac.compare_digest(head.mac, head_mac(key, head.seq, head.hash))


def anchor_mac(key: bytes, seq: int, hash_: bytes) -> bytes:
    """HMAC-SHA256 under ``key`` over the anchor's ``(seq, hash)``. Its own prefix
    keeps it apart from :func:`head_mac`: a copied head is never a valid anchor (which
    would let the whole chain be dropped)."""
    if not key:
        raise ValueError("the audit HMAC key must not be empty")
    message = b"lastro-audit-anchor\x00" + seq.to_bytes(8, "big") + hash_
    return hmac.new(key, message, hashlib.sha256).digest()


def anchor_is_authentic(anchor: ChainAnchor, key: bytes) -> bool:
    return hmac.compare_digest(anchor.mac, anchor_mac(key, anchor.seq, anchor.hash))


class ChainWalker:
    """Checks entries one at a time in seq order from ``start``; stops at the first bad
    one. ``anchor`` is the seq a purge anchored the chain at: no record may remain at
    or before it (a purged record put back, or a forged old one, is tampering)."""

    def __init__(self, start: ChainPosition = GENESIS, *, anchor: int = 0) -> None:
        self.checked = start.seq
        self.prev_hash = start.hash
        self.anchor = anchor

    def bad(self, seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(
            ok=False, checked=self.checked, first_bad_seq=seq, reason=reason, anchor=self.anchor
        )

    def before_anchor(self, seq: int) -> VerifyResult:
        return self.bad(
            seq,
            f"record {seq} is at or before the signed anchor {self.anchor} "
            "(a purged record reinserted or forged)",
        )

    def feed(self, entry: AuditEntry) -> VerifyResult | None:
        if entry.seq <= self.anchor:
            return self.before_anchor(entry.seq)
        expected = self.checked + 1
        if entry.seq > expected:
            return self.bad(expected, f"record {expected} is missing (deleted)")
        if entry.seq < expected:
            return self.bad(entry.seq, f"record {entry.seq} is out of order")
        if not hmac.compare_digest(entry.prev_hash, self.prev_hash):
            return self.bad(
                entry.seq,
                f"record {entry.seq} does not follow record {entry.seq - 1} "
                "(records reordered, replaced, inserted or deleted and renumbered)",
            )
        if not hmac.compare_digest(
            entry.hash, chain_hash(entry.prev_hash, entry.seq, entry.record)
        ):
            return self.bad(entry.seq, f"record {entry.seq} does not match its hash (edited)")
        self.checked += 1
        self.prev_hash = entry.hash
        return None

    def malformed(self, seq: int, problem: str) -> VerifyResult:
        """A stored row that is not even a valid record: report it in chain order."""
        expected = self.checked + 1
        if seq > expected:
            return self.bad(expected, f"record {expected} is missing (deleted)")
        return self.bad(seq, f"record {seq} is malformed (edited): {problem}")

    def finish(self, head: ChainHead | None, key: bytes) -> VerifyResult:
        last = self.checked
        if head is None:
            if last == 0:
                return VerifyResult(True, 0, None, None, GENESIS)
            return self.bad(None, "chain head is missing")
        if not head_is_authentic(head, key):
            return self.bad(None, "chain head signature is invalid (forged head or wrong key)")
        if head.seq > last:
            return self.bad(
                last + 1, f"records {last + 1}..{head.seq} are missing (tail truncated)"
            )
        if head.seq < last:
            return self.bad(head.seq + 1, f"records after {head.seq} are not covered by the head")
        if not hmac.compare_digest(head.hash, self.prev_hash):
            return self.bad(last or None, f"record {last} does not match the signed head")
        return VerifyResult(
            True, last, None, None, ChainPosition(last, self.prev_hash), anchor=self.anchor
        )


def anchored_walker(
    anchor: ChainAnchor | None, key: bytes, start: ChainPosition = GENESIS
) -> ChainWalker | VerifyResult:
    """The walker for a chain that starts after ``anchor`` (none: at the genesis),
    resuming at ``start`` when that is further on; the failure when the anchor's
    signature is invalid."""
    if anchor is None:
        return ChainWalker(start)
    if not anchor_is_authentic(anchor, key):
        return VerifyResult(
            ok=False,
            checked=0,
            first_bad_seq=None,
            reason="chain anchor signature is invalid (forged anchor or wrong key)",
        )
    if start.seq <= anchor.seq:
        start = ChainPosition(anchor.seq, anchor.hash)
    return ChainWalker(start, anchor=anchor.seq)


def verify_chain(
    entries: Iterable[AuditEntry],
    head: ChainHead | None,
    key: bytes,
    *,
    anchor: ChainAnchor | None = None,
) -> VerifyResult:
    """Verify entries (in seq order) against each other, the signed head and, when a
    purge dropped the chain's start, the signed ``anchor`` they must follow; no I/O."""
    walker = anchored_walker(anchor, key)
    if isinstance(walker, VerifyResult):
        return walker
    for entry in entries:
        bad = walker.feed(entry)
        if bad is not None:
            return bad
    return walker.finish(head, key)

"""A screening as recorded: the decision, the rule-set version and why, per transaction.

Screening is idempotent on ``transaction_id``: the first decision is recorded with
a fingerprint of the request, a retry with the same content is answered the
recorded decision, and other content under the same id is a conflict.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lastro.fraud.domain.decision import Decision, Outcome


def fingerprint(request: Mapping[str, Any]) -> str:
    """SHA-256 of the request's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ScreeningRecord:
    """One recorded decision. ``request`` is None once the personal fields were
    erased or purged; the decision and its reasons stay."""

    id: str
    transaction_id: str
    customer_id: str
    fingerprint: str
    request: dict[str, Any] | None
    outcome: Outcome
    score: int
    ruleset_version: int
    reasons: list[dict[str, Any]]
    shadow: list[dict[str, Any]]
    failed: tuple[str, ...]
    shadow_outcome: Outcome
    screened_at: datetime

    @classmethod
    def of(
        cls,
        screening_id: str,
        request: Mapping[str, Any],
        customer_id: str,
        decision: Decision,
        at: datetime,
    ) -> ScreeningRecord:
        body = decision.to_json()
        return cls(
            id=screening_id,
            transaction_id=str(request["transaction_id"]),
            customer_id=customer_id,
            fingerprint=fingerprint(request),
            request=dict(request),
            outcome=decision.outcome,
            score=decision.score,
            ruleset_version=decision.ruleset_version,
            reasons=body["reasons"],
            shadow=body["shadow"],
            failed=decision.failed,
            shadow_outcome=decision.shadow_outcome,
            screened_at=at,
        )

    @property
    def enforced_rules(self) -> list[str]:
        return [str(reason["rule_id"]) for reason in self.reasons]

    @property
    def shadow_rules(self) -> list[str]:
        return [str(reason["rule_id"]) for reason in self.shadow]

    def response(self) -> dict[str, Any]:
        """The screening contract's answer (docs/interfaces.md)."""
        return {
            "screening_id": self.id,
            "transaction_id": self.transaction_id,
            "decision": self.outcome.value,
            "score": self.score,
            "ruleset_version": self.ruleset_version,
            "reasons": self.reasons,
            "shadow": self.shadow,
            "screened_at": self.screened_at.isoformat(),
        }

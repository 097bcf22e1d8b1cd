"""Kubernetes-style status conditions (``metav1.Condition``), computed without I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def condition(
    kind: str, status: ConditionStatus, reason: str, message: str, generation: int
) -> dict[str, Any]:
    """One condition; ``lastTransitionTime`` is filled in by :func:`merge_conditions`."""
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "observedGeneration": generation,
    }


def merge_conditions(
    existing: Iterable[Mapping[str, Any]] | None,
    updates: Iterable[Mapping[str, Any]],
    now: datetime,
) -> list[dict[str, Any]]:
    """``existing`` with ``updates`` applied by type.

    A condition whose status did not change keeps its ``lastTransitionTime`` (that is
    what the field means); one that changed, or is new, gets ``now``. Types not in
    ``updates`` are kept as they were.
    """
    merged = {str(c["type"]): dict(c) for c in existing or ()}
    for update in updates:
        kind = str(update["type"])
        previous = merged.get(kind)
        transition = (
            previous["lastTransitionTime"]
            if previous is not None
            and previous.get("status") == update["status"]
            and "lastTransitionTime" in previous
            else timestamp(now)
        )
        merged[kind] = {**update, "lastTransitionTime": transition}
    return sorted(merged.values(), key=lambda c: str(c["type"]))


def is_true(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions or ())

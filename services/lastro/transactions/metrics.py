"""The worker's metrics: transactions finished and failed, effects performed and
how long a transaction takes from acceptance to its first resting state
(docs/runbooks/observability.md names them)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from lastro.core.observability import metrics_registry
from lastro.transactions.domain.model import (
    Screening,
    Status,
    Transaction,
    TransferBatch,
    is_resting,
)

FINISHED = Counter(
    "lastro_transactions_finished",
    "Transactions that reached a final status, by type and status.",
    ["type", "status"],
    registry=metrics_registry(),
)
FAILURES = Counter(
    "lastro_transaction_failures",
    "Transactions declined or failed, by type and reason.",
    ["type", "reason"],
    registry=metrics_registry(),
)
EFFECTS = Counter(
    "lastro_transaction_effects",
    "Effects performed by the workers, by effect and outcome.",
    ["effect", "outcome"],
    registry=metrics_registry(),
)
SCREENING_FALLBACKS = Counter(
    "lastro_transaction_screening_fallbacks",
    "Transactions the fraud service did not screen in time, which took the documented "
    "fallback: approved unscreened, or failed screening_unavailable.",
    ["outcome"],
    registry=metrics_registry(),
)
# Present from the start, so a fallback ratio has both terms before the first event.
for _outcome in ("approved", "failed"):
    SCREENING_FALLBACKS.labels(_outcome)
EFFECTS.labels("Screen", "Screening")

ACCEPT_TO_FINAL = Histogram(
    "lastro_transaction_accept_to_final_seconds",
    "Seconds from acceptance to the first resting state (final, or awaiting a person).",
    ["type", "status"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=metrics_registry(),
)


def fell_back(screening: Screening | None) -> None:
    """Count a fallback decision (``screening`` None: no fallback for the amount)."""
    SCREENING_FALLBACKS.labels("failed" if screening is None else "approved").inc()


def measure(stage: str, txn: Transaction | TransferBatch) -> None:
    """Count finished and failed transactions and time acceptance to rest (an observer)."""
    if stage != "changed" or not isinstance(txn, Transaction):
        return
    if txn.final and txn.compensation is None:
        FINISHED.labels(txn.kind.value, txn.status.value).inc()
        if txn.status in (Status.DECLINED, Status.FAILED):
            FAILURES.labels(txn.kind.value, txn.reason or "unknown").inc()
    if is_resting(txn):
        elapsed = (txn.updated_at - txn.created_at).total_seconds()
        ACCEPT_TO_FINAL.labels(txn.kind.value, txn.status.value).observe(elapsed)

"""The fraud service's Prometheus metrics (served at ``/metrics`` by both processes)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

from lastro.core.observability import metrics_registry

DECISIONS: Final = Counter(
    "lastro_fraud_decisions_total",
    "Screening decisions by outcome (replayed answers are not counted)",
    ["outcome"],
    registry=metrics_registry(),
)
RULE_HITS: Final = Counter(
    "lastro_fraud_rule_hits_total",
    "Rules that fired in screening, by rule and mode (shadow or enforce)",
    ["rule", "mode"],
    registry=metrics_registry(),
)
RULE_FAILURES: Final = Counter(
    "lastro_fraud_rule_failures_total",
    "Rule expressions that failed to evaluate on a transaction (they did not fire)",
    ["rule"],
    registry=metrics_registry(),
)
ALERTS: Final = Counter(
    "lastro_fraud_alerts_total",
    "Alerts raised, by typology and severity",
    ["typology", "severity"],
    registry=metrics_registry(),
)
SCREENING_SECONDS: Final = Histogram(
    "lastro_fraud_screening_seconds",
    "In-service screening latency: validated request to recorded decision",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.3, 1.0),
    registry=metrics_registry(),
)
EFFECTS: Final = Counter(
    "lastro_fraud_effects_total",
    "Calls to other services on an alert's behalf (freeze, review_outcome) by outcome",
    ["effect", "outcome"],
    registry=metrics_registry(),
)

"""The notification service's own metrics (the HTTP, outbox and consumer metrics
come from ``core``); the names are the dashboards' and alert rules' contract
(docs/interfaces.md)."""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from lastro.core.observability import metrics_registry

ATTEMPTS: Final = Counter(
    "lastro_notifications_attempts",
    "Delivery attempts by channel and outcome (delivered, failed, timeout, unreachable, "
    "refused, interrupted).",
    ["channel", "outcome"],
    registry=metrics_registry(),
)
DELIVERIES: Final = Counter(
    "lastro_notifications_deliveries",
    "Deliveries that reached a final state, by channel and outcome (delivered, dead).",
    ["channel", "outcome"],
    registry=metrics_registry(),
)
ATTEMPT_SECONDS: Final = Histogram(
    "lastro_notifications_attempt_duration_seconds",
    "Time one delivery attempt took, by channel.",
    ["channel"],
    registry=metrics_registry(),
)
DELIVERY_LAG: Final = Histogram(
    "lastro_notifications_delivery_lag_seconds",
    "From planning a delivery to its success (quiet hours included), by channel.",
    ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400),
    registry=metrics_registry(),
)
RETRY_QUEUE: Final = Gauge(
    "lastro_notifications_retry_queue_depth",
    "Deliveries waiting for a retry (pending after at least one attempt), by channel.",
    ["channel"],
    registry=metrics_registry(),
)
DEAD_LETTERS: Final = Gauge(
    "lastro_notifications_dead_letters",
    "Dead-lettered deliveries not replayed yet (the DLQ size), by channel.",
    ["channel"],
    registry=metrics_registry(),
)
EVENTS_SKIPPED: Final = Counter(
    "lastro_notifications_events_skipped",
    "Consumed events that told no customer, by reason (malformed, stale).",
    ["reason"],
    registry=metrics_registry(),
)

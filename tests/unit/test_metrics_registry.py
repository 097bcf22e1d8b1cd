"""Every platform metric is served by /metrics, which exposes the one shared registry."""

from prometheus_client import generate_latest

import lastro.core.db
import lastro.core.events  # noqa: F401 - importing registers the counters
from lastro.core.observability import metrics_registry


def test_event_and_database_counters_are_in_the_registry_metrics_serves() -> None:
    exposed = generate_latest(metrics_registry()).decode()
    for name in (
        "lastro_events_published_total",
        "lastro_events_applied_total",
        "lastro_events_duplicate_total",
        "lastro_events_rejected_total",
        "lastro_events_ignored_total",
        "lastro_outbox_relay_failures_total",
        "lastro_db_transaction_retries_total",
    ):
        assert f"# TYPE {name} counter" in exposed, name

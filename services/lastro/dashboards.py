"""The Grafana dashboards the chart ships, as code (grafana-foundation-sdk builders).

`lastro dashboards build` writes :data:`DASHBOARDS` to
``charts/lastro/files/grafana/<uid>.json`` (the chart's ConfigMap carries every file
there); `lastro dashboards build --check` fails when a committed file differs from
what this module builds, and a test asks the local Prometheus to evaluate every
expression, so a panel never queries a typo. Never edit the JSON by hand.

The money path dashboard reads the metrics docs/interfaces.md lists ("Metrics each
service exports"): throughput and outcomes, accept-to-outcome latency, failures by
reason, fraud decisions, rule hits and alerts, notification outcomes and the
dead-letter queue, the event pipeline (outbox age, consumer lag), the HTTP APIs,
breakers and dependencies, and the integrity signals (audit chains, certificates).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode, TimeZoneUtc
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DATASOURCE: Final = DataSourceRef(type_val="prometheus", uid="${datasource}")
SERVICE: Final = 'lastro_service=~"$service"'


def _query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def _series(title: str, unit: str, *queries: tuple[str, str], description: str = "") -> Timeseries:
    """A time-series panel of ``(expression, legend)`` queries."""
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    if description:
        panel = panel.description(description)
    for index, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _stat(title: str, unit: str, expr: str, legend: str, description: str) -> Stat:
    return (
        Stat()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .height(5)
        .span(6)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_query(expr, legend))
    )


def _rate(metric: str, by: str, selector: str = "") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return f"sum by ({by}) (rate({metric}{matchers}[$__rate_interval]))"


def _quantile(q: float, metric: str, by: str, selector: str = "") -> str:
    matchers = f"{{{selector}}}" if selector else ""
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({metric}_bucket{matchers}[$__rate_interval])))"
    )


def _money_path() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Money path (transactions)")
    yield _stat(
        "Failed transactions, last hour",
        "percentunit",
        "lastro:transactions_failed:ratio_rate1h",
        "failed",
        "Share of finished transactions that ended failed; the SLO allows 0.5 %.",
    )
    yield _stat(
        "Slower than 2.5 s, last hour",
        "percentunit",
        "lastro:transactions_slow:ratio_rate1h",
        "slow",
        "Share of transactions that took over 2.5 s from acceptance to their first resting "
        "state; the SLO allows 1 %.",
    )
    yield _stat(
        "Finished per second",
        "reqps",
        "sum(rate(lastro_transactions_finished_total[$__rate_interval]))",
        "finished",
        "Transactions reaching a final status, every type.",
    )
    yield _stat(
        "Declined, last hour",
        "short",
        'sum(increase(lastro_transactions_finished_total{status="declined"}[1h]))',
        "declined",
        "Transactions declined in the last hour (fraud, funds, limits, the acquirer).",
    )
    yield _series(
        "Throughput by type",
        "reqps",
        (_rate("lastro_transactions_finished_total", "type"), "{{type}}"),
        description="Transactions finishing per second, by type.",
    )
    yield _series(
        "Outcomes",
        "reqps",
        (_rate("lastro_transactions_finished_total", "status"), "{{status}}"),
        description="Transactions reaching each final status per second.",
    )
    yield _series(
        "Accept to outcome latency",
        "s",
        (_quantile(0.5, "lastro_transaction_accept_to_final_seconds", "type"), "p50 {{type}}"),
        (_quantile(0.95, "lastro_transaction_accept_to_final_seconds", "type"), "p95 {{type}}"),
        (_quantile(0.99, "lastro_transaction_accept_to_final_seconds", "type"), "p99 {{type}}"),
        description="From acceptance (202) to the first resting state (final, or waiting "
        "for a person).",
    )
    yield _series(
        "Failures and declines by reason",
        "reqps",
        (_rate("lastro_transaction_failures_total", "type, reason"), "{{type}}: {{reason}}"),
    )


def _fraud() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Fraud")
    yield _series(
        "Screening decisions",
        "reqps",
        (_rate("lastro_fraud_decisions_total", "outcome"), "{{outcome}}"),
    )
    yield _series(
        "Screening latency",
        "s",
        (
            "histogram_quantile(0.5, sum by (le) "
            "(rate(lastro_fraud_screening_seconds_bucket[$__rate_interval])))",
            "p50",
        ),
        (
            "histogram_quantile(0.99, sum by (le) "
            "(rate(lastro_fraud_screening_seconds_bucket[$__rate_interval])))",
            "p99",
        ),
        description="In the fraud service; the caller gives up after 300 ms.",
    )
    yield _series(
        "Rule hits (top 10)",
        "reqps",
        (
            "topk(10, " + _rate("lastro_fraud_rule_hits_total", "rule, mode") + ")",
            "{{rule}} ({{mode}})",
        ),
        description="Enforced and shadow rules that fired, per second.",
    )
    yield _series(
        "Alerts raised by typology",
        "short",
        (
            "sum by (typology) (increase(lastro_fraud_alerts_total[$__rate_interval]))",
            "{{typology}}",
        ),
    )


def _notifications() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Notifications")
    yield _series(
        "Deliveries by outcome",
        "reqps",
        (
            _rate("lastro_notifications_deliveries_total", "channel, outcome"),
            "{{channel}} {{outcome}}",
        ),
        description="Deliveries reaching a final state: delivered, or dead (dead-lettered).",
    )
    yield _series(
        "Attempts by outcome",
        "reqps",
        (
            _rate("lastro_notifications_attempts_total", "channel, outcome"),
            "{{channel}} {{outcome}}",
        ),
    )
    yield _series(
        "Dead-letter queue and retry queue",
        "short",
        (
            "max by (channel) (lastro_notifications_dead_letters)",
            "dead letters {{channel}}",
        ),
        (
            "max by (channel) (lastro_notifications_retry_queue_depth)",
            "waiting for retry {{channel}}",
        ),
    )
    yield _series(
        "Delivery lag p95 (planned to delivered)",
        "s",
        (_quantile(0.95, "lastro_notifications_delivery_lag_seconds", "channel"), "{{channel}}"),
    )


def _pipeline() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Event pipeline")
    yield _series(
        "Oldest unpublished outbox event",
        "s",
        ("max by (outbox) (lastro_outbox_oldest_pending_age_seconds)", "{{outbox}}"),
        ("max by (outbox) (lastro_outbox_pending_events)", "pending {{outbox}}"),
        description="Age of the oldest outbox row each relay has not published yet.",
    )
    yield _series(
        "Consumer lag",
        "short",
        (
            "max by (consumer, topic) (lastro_consumer_lag_records)",
            "{{consumer}} on {{topic}}",
        ),
        description="Records after each group's committed offsets (every replica reports "
        "the group's whole lag: max, not sum).",
    )
    yield _series(
        "Events published and applied",
        "reqps",
        (_rate("lastro_events_published_total", "topic", SERVICE), "published {{topic}}"),
        (_rate("lastro_events_applied_total", "consumer", SERVICE), "applied {{consumer}}"),
    )
    yield _series(
        "Relay failures and rejected events",
        "short",
        (
            f"sum by (lastro_service) (increase(lastro_outbox_relay_failures_total{{{SERVICE}}}"
            "[$__rate_interval]))",
            "relay failures {{lastro_service}}",
        ),
        (
            f"sum by (consumer, reason) (increase(lastro_events_rejected_total{{{SERVICE}}}"
            "[$__rate_interval]))",
            "rejected by {{consumer}}: {{reason}}",
        ),
    )


def _apis() -> Iterator[Row | Timeseries | Stat]:
    yield Row("HTTP APIs")
    yield _series(
        "Requests per second",
        "reqps",
        (_rate("lastro_http_requests_total", "lastro_service", SERVICE), "{{lastro_service}}"),
    )
    yield _series(
        "Failed requests (5xx) ratio",
        "percentunit",
        (f"lastro_service:http_error_ratio:rate5m{{{SERVICE}}}", "{{lastro_service}}"),
    )
    yield _series(
        "Latency p50 / p99",
        "s",
        (
            _quantile(0.5, "lastro_http_request_duration_seconds", "lastro_service", SERVICE),
            "p50 {{lastro_service}}",
        ),
        (
            _quantile(0.99, "lastro_http_request_duration_seconds", "lastro_service", SERVICE),
            "p99 {{lastro_service}}",
        ),
    )
    yield _series(
        "Rate-limit rejections (429)",
        "reqps",
        (
            _rate("lastro_rate_limit_rejections_total", "route_class, policy", SERVICE),
            "{{route_class}} {{policy}}",
        ),
    )
    yield _series(
        "Garbage-collector pauses",
        "s",
        (
            _quantile(0.99, "lastro_gc_pause_seconds", "lastro_service", SERVICE),
            "p99 {{lastro_service}}",
        ),
        (
            _rate("lastro_gc_pause_seconds_sum", "lastro_service", SERVICE),
            "seconds paused per second {{lastro_service}}",
        ),
        description="While the collector runs a process serves nothing: a latency tail that "
        "lines up with these pauses is the collector's (core/collector.py).",
    )


def _dependencies() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Dependencies")
    yield _series(
        "Circuit breakers (0 closed, 1 half-open, 2 open)",
        "short",
        (
            f"max by (lastro_service, name) (lastro_circuit_breaker_state{{{SERVICE}}})",
            "{{lastro_service}} → {{name}}",
        ),
    )
    yield _series(
        "Dependency calls by outcome",
        "reqps",
        (_rate("lastro_dependency_calls_total", "name, outcome", SERVICE), "{{name}} {{outcome}}"),
    )
    yield _series(
        "Database transaction retries",
        "reqps",
        (
            _rate("lastro_db_transaction_retries_total", "lastro_service", SERVICE),
            "{{lastro_service}}",
        ),
    )


def _integrity() -> Iterator[Row | Timeseries | Stat]:
    yield Row("Integrity")
    yield _series(
        "Audit chains intact (1) or broken (0)",
        "short",
        ("min by (schema) (lastro_audit_chain_intact)", "{{schema}}"),
        ("max by (schema) (lastro_audit_chain_records)", "records {{schema}}"),
    )
    yield _series(
        "Days until certificates expire",
        "d",
        (
            "min by (lastro_service, certificate) "
            "(lastro_tls_certificate_expiry_timestamp_seconds - time()) / 86400",
            "{{lastro_service}} {{certificate}}",
        ),
    )


def money_path() -> Dashboard:
    """Lastro / money path: every section above, filtered by ``$service`` where the
    panel is per service."""
    dashboard = (
        Dashboard("Lastro / money path")
        .uid("lastro-money-path")
        .description(
            "Transactions, fraud, notifications, the event pipeline, APIs, dependencies and "
            "integrity of every Lastro service. Generated by lastro.dashboards; do not edit."
        )
        .tags(["lastro", "generated"])
        .timezone(TimeZoneUtc)
        .readonly()
        .refresh("30s")
        .time("now-3h", "now")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            QueryVariable("service")
            .label("Service")
            .datasource(DATASOURCE)
            .query("label_values(lastro_http_requests_total, lastro_service)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .multi(True)
            .all_value(".+")
        )
    )
    sections: list[Callable[[], Iterator[Row | Timeseries | Stat]]] = [
        _money_path,
        _fraud,
        _notifications,
        _pipeline,
        _apis,
        _dependencies,
        _integrity,
    ]
    items = [item for section in sections for item in section()]
    for number, item in enumerate(items, start=1):
        item = item.id(number)  # stable ids: links to a panel survive regeneration
        dashboard = (
            dashboard.with_row(item) if isinstance(item, Row) else dashboard.with_panel(item)
        )
    return dashboard


DASHBOARDS: Final[dict[str, Callable[[], Dashboard]]] = {"lastro-money-path": money_path}


def render(build: Callable[[], Dashboard]) -> str:
    """The dashboard as the chart's file holds it: sorted keys, two-space indents."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def output_dir() -> Path:
    """``charts/lastro/files/grafana`` of this checkout."""
    return Path(__file__).resolve().parents[2] / "charts" / "lastro" / "files" / "grafana"


def expressions(document: str) -> list[str]:
    """Every PromQL expression in a rendered dashboard (panel targets and variables)."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            expr = node.get("expr")
            if isinstance(expr, str):
                found.append(expr)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(document))
    return found

"""RetentionPolicy scheduling and purge requests, without a cluster or a service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lastro_operator.retentionpolicy import (
    PolicyError,
    due,
    failed_status,
    next_run,
    purge_request,
    retention_period,
    succeeded_status,
)

NOW = datetime(2026, 11, 30, 10, 0, 30, tzinfo=UTC)
CREATED = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
SPEC = {
    "service": "notifications",
    "dataClass": "notifications.deliveries",
    "retention": "90d",
    "action": "purge",
    "schedule": "15 2 * * *",
}


@pytest.mark.parametrize(
    ("text", "period"),
    [("90d", timedelta(days=90)), ("720h", timedelta(hours=720)), ("1h", timedelta(hours=1))],
)
def test_retention_periods_are_hours_or_days(text: str, period: timedelta) -> None:
    assert retention_period(text) == period


@pytest.mark.parametrize("text", ["0d", "90", "3w", "-1d", "1.5d", ""])
def test_other_retention_periods_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        retention_period(text)


def test_the_next_run_is_the_next_cron_tick_in_utc() -> None:
    assert next_run("15 2 * * *", NOW) == datetime(2026, 12, 1, 2, 15, tzinfo=UTC)
    assert next_run("0 4 * * 0", NOW) == datetime(2026, 12, 6, 4, 0, tzinfo=UTC)  # a Sunday
    assert next_run("* * * * *", NOW) == datetime(2026, 11, 30, 10, 1, tzinfo=UTC)


def test_a_bad_schedule_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="not a valid 5-field cron"):
        next_run("61 * * * *", NOW)


def test_a_run_is_due_once_a_tick_passed_since_the_last_run() -> None:
    last = datetime(2026, 11, 29, 2, 15, 5, tzinfo=UTC)
    check = due("15 2 * * *", last, CREATED, NOW, None, None)
    assert check.due
    assert check.next_run == datetime(2026, 12, 1, 2, 15, tzinfo=UTC)
    after_today = datetime(2026, 11, 30, 2, 15, 5, tzinfo=UTC)
    assert not due("15 2 * * *", after_today, CREATED, NOW, None, None).due


def test_a_new_policy_waits_for_its_first_tick_after_creation() -> None:
    created = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    check = due("15 2 * * *", None, created, NOW, None, None)
    assert not check.due
    assert check.next_run == datetime(2026, 12, 1, 2, 15, tzinfo=UTC)


def test_a_changed_run_request_annotation_makes_a_run_due_once() -> None:
    last = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert due("15 2 * * *", last, CREATED, NOW, "1", None).due
    assert not due("15 2 * * *", last, CREATED, NOW, "1", "1").due
    assert due("15 2 * * *", last, CREATED, NOW, "2", "1").due


def test_the_purge_request_asks_for_rows_older_than_the_retention() -> None:
    assert purge_request(SPEC, NOW) == {
        "data_class": "notifications.deliveries",
        "older_than": "2026-09-01T10:00:30Z",
        "action": "purge",
        "dry_run": False,
    }
    assert purge_request({**SPEC, "dryRun": True}, NOW)["dry_run"] is True


@pytest.mark.parametrize(
    "data_class", ["accounts.postings", "accounts.entries", "accounts.ledger", "accounts.holds"]
)
def test_the_ledger_is_never_purged_whatever_the_resource_says(data_class: str) -> None:
    with pytest.raises(PolicyError, match="never purged"):
        purge_request({**SPEC, "service": "accounts", "dataClass": data_class}, NOW)


def test_a_data_class_of_another_service_is_refused() -> None:
    with pytest.raises(PolicyError, match="does not belong"):
        purge_request({**SPEC, "service": "fraud"}, NOW)


def test_a_successful_run_records_counts_times_and_one_more_run() -> None:
    request = purge_request(SPEC, NOW)
    answer = {
        "service": "notifications",
        "data_class": "notifications.deliveries",
        "action": "purge",
        "cutoff": "2026-09-01T10:00:30Z",
        "affected": 42,
    }
    upcoming = datetime(2026, 12, 1, 2, 15, tzinfo=UTC)
    status = succeeded_status({"runs": 2}, 1, answer, request, NOW, upcoming, "7")
    assert status["lastResult"] == {
        "affected": 42,
        "cutoff": "2026-09-01T10:00:30Z",
        "action": "purge",
        "dataClass": "notifications.deliveries",
        "dryRun": False,
    }
    assert status["runs"] == 3
    assert status["lastRun"] == status["lastSuccessfulRun"] == "2026-11-30T10:00:30Z"
    assert status["nextRun"] == "2026-12-01T02:15:00Z"
    assert status["handledRunRequest"] == "7"
    assert status["conditions"][0]["status"] == "True"
    assert "affected 42 records" in status["conditions"][0]["message"]


def test_a_transient_failure_leaves_the_run_due_and_a_refusal_does_not() -> None:
    transient = failed_status({}, 1, "ServiceUnavailable", "timeout", NOW, attempted=False)
    assert "lastRun" not in transient
    assert transient["conditions"][0]["reason"] == "ServiceUnavailable"
    refused = failed_status({}, 1, "PurgeRefused", "422", NOW, attempted=True, handled_request="1")
    assert refused["lastRun"] == "2026-11-30T10:00:30Z"
    assert refused["handledRunRequest"] == "1"
    assert "lastSuccessfulRun" not in refused

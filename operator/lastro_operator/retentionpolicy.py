"""RetentionPolicy: purge one data class on its schedule through the owner's privacy API.

A timer looks at every policy every :data:`CHECK_SECONDS`; a run is due when the
policy's cron schedule (UTC) has a tick between its last run (or its creation) and
now, or when someone changed the ``lastro.io/run-requested`` annotation
(``kubectl annotate retentionpolicy X lastro.io/run-requested=$(date +%s) --overwrite``).
A run asks the owning service to act on rows older than ``now - retention``, records
the answer (``status.lastResult``, ``lastRun``, ``runs``) and posts a Kubernetes Event;
the service writes the audit record under the run's request id. A transient failure
is retried with backoff without moving ``lastRun``; a refusal (the service does not
hold that data class) is recorded and waits for the next tick.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import kopf
from cronsim import CronSim, CronSimError

from lastro_operator.clients import PrivacyAPI, Refused, Unavailable
from lastro_operator.conditions import condition, merge_conditions, parse_timestamp, timestamp

RESOURCE: Final = ("lastro.io", "v1alpha1", "retentionpolicies")
RUN_REQUESTED: Final = "lastro.io/run-requested"
CHECK_SECONDS: Final = 10.0
RETRY_UNAVAILABLE_SECONDS: Final = 60.0
# Never a data class, whatever the resource says: the ledger is kept for ever.
LEDGER: Final = re.compile(r"^accounts\.(ledger|entries|ledger_entries|postings|balances|holds)$")
_RETENTION: Final = re.compile(r"^([1-9][0-9]*)([hd])$")


class PolicyError(ValueError):
    """The policy cannot be run as written (a bad period or schedule, the ledger)."""


def retention_period(text: str) -> timedelta:
    """``90d`` or ``720h`` as a timedelta."""
    match = _RETENTION.fullmatch(text)
    if match is None:
        raise PolicyError(f"retention {text!r} is not <n>h or <n>d")
    amount, unit = int(match.group(1)), match.group(2)
    return timedelta(hours=amount) if unit == "h" else timedelta(days=amount)


def next_run(schedule: str, after: datetime) -> datetime:
    """The first tick of the 5-field cron ``schedule`` (UTC) strictly after ``after``."""
    try:
        return next(CronSim(schedule, after.astimezone(UTC).replace(second=0, microsecond=0)))
    except (CronSimError, StopIteration) as exc:
        raise PolicyError(f"schedule {schedule!r} is not a valid 5-field cron: {exc}") from exc


@dataclass(frozen=True)
class Due:
    due: bool
    why: str
    next_run: datetime


def due(
    schedule: str,
    last_run: datetime | None,
    created: datetime,
    now: datetime,
    requested: str | None,
    handled_request: str | None,
) -> Due:
    """Whether a run is due now, and when the scheduled one after it is."""
    basis = last_run or created
    scheduled = next_run(schedule, basis)
    if requested and requested != handled_request:
        return Due(True, f"run requested ({RUN_REQUESTED}={requested})", scheduled)
    if scheduled <= now:
        return Due(True, f"scheduled at {timestamp(scheduled)}", next_run(schedule, now))
    return Due(False, "", scheduled)


def purge_request(spec: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The privacy API's purge body for this policy at ``now``."""
    data_class = str(spec["dataClass"])
    if LEDGER.match(data_class):
        raise PolicyError(f"{data_class} is the ledger, which is never purged")
    if not data_class.startswith(f"{spec['service']}."):
        raise PolicyError(f"{data_class} does not belong to {spec['service']}")
    cutoff = now - retention_period(str(spec["retention"]))
    return {
        "data_class": data_class,
        "older_than": timestamp(cutoff),
        "action": spec["action"],
        "dry_run": bool(spec.get("dryRun", False)),
    }


def run_summary(affected: int, request: Mapping[str, Any]) -> str:
    verb = "would affect" if request["dry_run"] else "affected"
    return f"{request['action']} of {request['data_class']} {verb} {affected} records"


def succeeded_status(
    status: Mapping[str, Any],
    generation: int,
    answer: Mapping[str, Any],
    request: Mapping[str, Any],
    finished: datetime,
    upcoming: datetime,
    handled_request: str | None,
) -> dict[str, Any]:
    affected = int(answer.get("affected", 0))
    message = run_summary(affected, request)
    result = {
        "affected": affected,
        "cutoff": str(answer.get("cutoff") or request["older_than"]),
        "action": str(answer.get("action") or request["action"]),
        "dataClass": str(answer.get("data_class") or request["data_class"]),
        "dryRun": bool(request["dry_run"]),
    }
    return {
        "observedGeneration": generation,
        "lastRun": timestamp(finished),
        "lastSuccessfulRun": timestamp(finished),
        "nextRun": timestamp(upcoming),
        "lastResult": result,
        "runs": int(status.get("runs") or 0) + 1,
        "handledRunRequest": handled_request,
        "conditions": merge_conditions(
            status.get("conditions"),
            [condition("Ready", "True", "Purged", message, generation)],
            finished,
        ),
    }


def failed_status(
    status: Mapping[str, Any],
    generation: int,
    reason: str,
    message: str,
    now: datetime,
    *,
    attempted: bool,
    upcoming: datetime | None = None,
    handled_request: str | None = None,
) -> dict[str, Any]:
    """``attempted``: the run counts as done (refused); otherwise it stays due."""
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            status.get("conditions"),
            [condition("Ready", "False", reason, message, generation)],
            now,
        ),
    }
    if attempted:
        patch["lastRun"] = timestamp(now)
        patch["handledRunRequest"] = handled_request
        if upcoming is not None:
            patch["nextRun"] = timestamp(upcoming)
    return patch


def _now() -> datetime:
    return datetime.now(UTC)


@kopf.timer(*RESOURCE, interval=CHECK_SECONDS, initial_delay=1.0)
async def run_retention(
    name: str,
    namespace: str | None,
    uid: str,
    body: kopf.Body,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Run the policy when it is due; record the outcome in status and an Event."""
    generation = int(meta["generation"])
    now = _now()
    requested = meta.get("annotations", {}).get(RUN_REQUESTED)
    try:
        last_run = parse_timestamp(status["lastRun"]) if status.get("lastRun") else None
        check = due(
            spec["schedule"],
            last_run,
            parse_timestamp(meta["creationTimestamp"]),
            now,
            requested,
            status.get("handledRunRequest"),
        )
        request = purge_request(spec, now)
    except PolicyError as exc:
        patch.status.update(
            failed_status(status, generation, "InvalidPolicy", str(exc), now, attempted=False)
        )
        return
    if spec.get("suspend"):
        if status.get("nextRun") is not None:
            patch.status["nextRun"] = None
        return
    if not check.due:
        if status.get("nextRun") != timestamp(check.next_run):
            patch.status["nextRun"] = timestamp(check.next_run)
        return
    request_id = f"retention-{uid[:8]}-{uuid.uuid4().hex[:12]}"
    privacy: PrivacyAPI = memo.privacy(spec["service"])
    logger.info("retention run %s of %s: %s", request_id, name, check.why)
    try:
        answer = await privacy.purge(request, request_id)
    except Refused as exc:
        message = f"{spec['service']} refused the purge ({exc.status}): {exc.detail}"
        patch.status.update(
            failed_status(
                status,
                generation,
                "PurgeRefused",
                message,
                _now(),
                attempted=True,
                upcoming=check.next_run,
                handled_request=requested,
            )
        )
        kopf.warn(body, reason="RetentionRefused", message=f"{message} [request {request_id}]")
        return
    except Unavailable as exc:
        patch.status.update(
            failed_status(
                status, generation, "ServiceUnavailable", str(exc), _now(), attempted=False
            )
        )
        raise kopf.TemporaryError(str(exc), delay=RETRY_UNAVAILABLE_SECONDS) from exc
    finished = _now()
    new_status = succeeded_status(
        status, generation, answer, request, finished, check.next_run, requested
    )
    patch.status.update(new_status)
    ready = run_summary(new_status["lastResult"]["affected"], request)
    kopf.info(
        body,
        reason="RetentionRun",
        message=f"{ready}; cutoff {request['older_than']} [request {request_id}]",
    )
    logger.info("retention run %s of %s/%s: %s", request_id, namespace, name, ready)

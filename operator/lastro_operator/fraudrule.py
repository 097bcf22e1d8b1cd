"""FraudRule: validate, publish to the fraud service, wait for it to be live, report.

The rule id is ``metadata.name``; the revision the operator publishes is
``<uid>:<generation>``, so the fraud service's answer to ``GET /v1/rules/{id}`` says
without doubt whether this generation of this resource is live, and in which rule-set
version. A resource deleted and re-created under the same name gets a new uid, and
the finalizer never withdraws a rule whose revision names another uid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import kopf

from lastro_operator.clients import FraudAdmin, Refused, Unavailable
from lastro_operator.conditions import condition, is_true, merge_conditions

RESOURCE: Final = ("lastro.io", "v1alpha1", "fraudrules")
ACK_POLL_SECONDS: Final = 0.25
RETRY_UNAVAILABLE_SECONDS: Final = 10.0
RETRY_UNACKNOWLEDGED_SECONDS: Final = 5.0


class NotAcknowledged(Exception):
    """The fraud service did not show the expected state within the wait."""


def revision_of(uid: str, generation: int) -> str:
    return f"{uid}:{generation}"


def owned_by(uid: str, revision: str | None) -> bool:
    """True when ``revision`` was published for the resource with ``uid``."""
    return bool(revision) and str(revision).split(":", 1)[0] == uid


def rule_document(name: str, spec: Mapping[str, Any], revision: str) -> dict[str, Any]:
    """The fraud admin API's rule (docs/interfaces.md) for one FraudRule generation.

    Defaults are the CRD's, applied again so an object stored before a default
    existed publishes the same rule."""
    document: dict[str, Any] = {
        "id": name,
        "description": spec["description"],
        "expression": spec["expression"],
        "action": spec["action"],
        "severity": spec.get("severity", "medium"),
        "mode": spec.get("mode", "shadow"),
        "enabled": spec.get("enabled", True),
        "transaction_types": list(spec.get("transactionTypes") or []),
        "revision": revision,
    }
    if spec.get("weight") is not None:
        document["weight"] = spec["weight"]
    return document


def is_current(status: Mapping[str, Any], generation: int, revision: str) -> bool:
    """This generation is already live (or already judged invalid): nothing to do."""
    if status.get("observedGeneration") != generation:
        return False
    conditions = status.get("conditions")
    if is_true(conditions, "Invalid"):
        return True
    return status.get("appliedRevision") == revision and is_true(conditions, "Ready")


def applied_status(
    status: Mapping[str, Any],
    generation: int,
    revision: str,
    ruleset_version: int,
    mode: str,
    now: datetime,
) -> dict[str, Any]:
    message = f"live in rule set {ruleset_version} in {mode} mode"
    return {
        "observedGeneration": generation,
        "appliedVersion": ruleset_version,
        "appliedRevision": revision,
        "conditions": merge_conditions(
            status.get("conditions"),
            [
                condition("Ready", "True", "Applied", message, generation),
                condition("Invalid", "False", "Valid", "the fraud service accepted it", generation),
            ],
            now,
        ),
    }


def invalid_status(
    status: Mapping[str, Any], generation: int, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """Invalid: nothing was published; the rule set (and appliedVersion) is unchanged."""
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            status.get("conditions"),
            [
                condition("Ready", "False", reason, message, generation),
                condition("Invalid", "True", reason, message, generation),
            ],
            now,
        ),
    }


def pending_status(
    status: Mapping[str, Any], generation: int, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """Not live yet, for a reason that may pass; observedGeneration is not advanced."""
    return {
        "conditions": merge_conditions(
            status.get("conditions"),
            [condition("Ready", "False", reason, message, generation)],
            now,
        )
    }


async def wait_for_revision(
    fraud: FraudAdmin, rule_id: str, revision: str | None, wait_seconds: float
) -> dict[str, Any] | None:
    """Poll ``GET /v1/rules/{id}`` until it shows ``revision`` (None: until it is gone);
    returns what it showed. Raises NotAcknowledged after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while True:
        current = await fraud.get_rule(rule_id)
        seen = None if current is None else current.get("revision")
        if seen == revision:
            return current
        if time.monotonic() >= deadline:
            raise NotAcknowledged(
                f"after {wait_seconds:.0f}s the fraud service shows revision {seen!r},"
                f" not {revision!r}"
            )
        await asyncio.sleep(ACK_POLL_SECONDS)


def _now() -> datetime:
    return datetime.now(UTC)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
async def publish_rule(
    name: str,
    uid: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Make this generation of the rule live, or say in status why it is not."""
    generation = int(meta["generation"])
    revision = revision_of(uid, generation)
    if is_current(status, generation, revision):
        return
    document = rule_document(name, spec, revision)
    problem = memo.validator(document)
    if problem is not None:
        logger.warning("FraudRule %s is invalid and was not published: %s", name, problem)
        patch.status.update(
            invalid_status(status, generation, "InvalidExpression", problem, _now())
        )
        return
    fraud: FraudAdmin = memo.fraud
    try:
        await fraud.put_rule(document)
        live = await wait_for_revision(fraud, name, revision, memo.ack_timeout)
    except Refused as exc:
        logger.warning("the fraud service refused FraudRule %s: %s", name, exc.detail)
        patch.status.update(
            invalid_status(status, generation, "RejectedByFraudService", exc.detail, _now())
        )
        return
    except Unavailable as exc:
        patch.status.update(
            pending_status(status, generation, "FraudServiceUnavailable", str(exc), _now())
        )
        raise kopf.TemporaryError(str(exc), delay=RETRY_UNAVAILABLE_SECONDS) from exc
    except NotAcknowledged as exc:
        patch.status.update(
            pending_status(status, generation, "AwaitingAcknowledgement", str(exc), _now())
        )
        raise kopf.TemporaryError(str(exc), delay=RETRY_UNACKNOWLEDGED_SECONDS) from exc
    assert live is not None
    version = int(live["ruleset_version"])
    mode = str(live.get("mode", spec.get("mode", "shadow")))
    patch.status.update(applied_status(status, generation, revision, version, mode, _now()))
    logger.info("FraudRule %s generation %s is live in rule set %s", name, generation, version)


@kopf.on.delete(*RESOURCE)
async def withdraw_rule(
    name: str, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Remove the rule from the fraud service (behind the operator's finalizer)."""
    fraud: FraudAdmin = memo.fraud
    try:
        current = await fraud.get_rule(name)
        if current is None:
            return
        if not owned_by(uid, current.get("revision")):
            logger.info("rule %s is published by another resource; left in place", name)
            return
        await fraud.delete_rule(name)
        await wait_for_revision(fraud, name, None, memo.ack_timeout)
    except (Unavailable, NotAcknowledged) as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_UNAVAILABLE_SECONDS) from exc
    except Refused as exc:
        raise kopf.TemporaryError(
            f"the fraud service refused to delete {name}: {exc.detail}",
            delay=RETRY_UNAVAILABLE_SECONDS,
        ) from exc
    logger.info("rule %s withdrawn from the fraud service", name)

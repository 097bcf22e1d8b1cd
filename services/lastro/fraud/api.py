"""HTTP handlers of the fraud API: parse, call one use case, render.

Requests arrive authenticated and validated against ``openapi.yaml`` (scopes
included, ``core/http.py``); rule violations are DomainErrors the app factory
renders as problem+json.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from lastro.core.http import PARAMS_KEY, PRINCIPAL_KEY, caller_of, json_body, json_response
from lastro.fraud.domain.alerts import AlertCase, AlertStatus, Effect, Resolution
from lastro.fraud.domain.errors import InvalidCutoff
from lastro.fraud.domain.rules import Rule
from lastro.fraud.domain.screening import ScreeningRecord
from lastro.fraud.privacy import SERVICE, Privacy
from lastro.fraud.rulebook import Published, RulesAdmin
from lastro.fraud.service import Alerts, Screening
from lastro.fraud.store.queries import AlertFilter

SCREENING_KEY: Final = web.AppKey("screening", Screening)
RULES_KEY: Final = web.AppKey("rules_admin", RulesAdmin)
ALERTS_KEY: Final = web.AppKey("alerts", Alerts)
PRIVACY_KEY: Final = web.AppKey("privacy", Privacy)

REPLAYED_HEADER: Final = "Idempotent-Replayed"

routes = web.RouteTableDef()


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def alert_view(case: AlertCase) -> dict[str, Any]:
    alert = case.alert
    return {
        "id": case.id,
        "object": "alert",
        "typology": alert.typology,
        "severity": alert.severity.value,
        "source": alert.source.value,
        "status": case.status.value,
        "customer_id": alert.customer_id,
        "account_id": alert.account_id,
        "transaction_id": alert.transaction_id,
        "detector_id": alert.detector_id,
        "evidence": alert.evidence,
        "rule_ids": list(alert.rule_ids),
        "related": list(alert.related),
        "assignee": case.assignee,
        "assigned_at": _iso(case.assigned_at),
        "resolution": None if case.resolution is None else case.resolution.value,
        "resolved_by": case.resolved_by,
        "resolved_at": _iso(case.resolved_at),
        "note": case.note,
        "freeze": _effect(case.freeze, case.freeze_detail),
        "review_outcome": _effect(case.review, case.review_detail),
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
    }


def _effect(state: Effect, detail: str | None) -> dict[str, Any]:
    return {"state": state.value, "detail": detail}


def rule_view(rule: Rule, version: int | None) -> dict[str, Any]:
    return {**rule.to_json(), "ruleset_version": version, "live": version is not None}


def screening_view(record: ScreeningRecord) -> dict[str, Any]:
    return {
        **record.response(),
        "shadow_decision": record.shadow_outcome.value,
        "failed_rules": list(record.failed),
        "request": record.request,
    }


# ---------------------------------------------------------------- screening


@routes.post("/internal/v1/screenings")
async def screen(request: web.Request) -> web.Response:
    body = await json_body(request)
    screened = await request.app[SCREENING_KEY].screen(body, caller_of(request))
    headers = {REPLAYED_HEADER: "true"} if screened.replayed else None
    return json_response(screened.record.response(), headers=headers)


@routes.get("/v1/screenings/{transaction_id}")
async def get_screening(request: web.Request) -> web.Response:
    record = await request.app[SCREENING_KEY].get(request.match_info["transaction_id"])
    return json_response(screening_view(record))


# ---------------------------------------------------------------- rules


@routes.get("/v1/rules")
async def list_rules(request: web.Request) -> web.Response:
    ruleset = request.app[RULES_KEY].ruleset()
    rules = [compiled.rule.to_json() for compiled in ruleset.rules.values()]
    return json_response({"ruleset_version": ruleset.version, "rules": rules})


@routes.get("/v1/rules/stats")
async def rule_stats(request: web.Request) -> web.Response:
    since_text = request[PARAMS_KEY].get("since")
    since = None if since_text is None else _time(since_text, "since")
    admin = request.app[RULES_KEY]
    start, screenings, rows = await admin.stats(since)
    return json_response(
        {
            "since": start.isoformat(),
            "screenings": screenings,
            "ruleset_version": admin.ruleset().version,
            "rules": [
                {
                    "rule_id": row.rule_id,
                    "mode": row.mode,
                    "enforced_hits": row.enforced_hits,
                    "shadow_hits": row.shadow_hits,
                    "hit_rate": row.hit_rate,
                    "true_positives": row.true_positives,
                    "false_positives": row.false_positives,
                    "precision": row.precision,
                }
                for row in rows
            ],
        }
    )


@routes.get("/v1/rules/{id}")
async def get_rule(request: web.Request) -> web.Response:
    rule, version = request.app[RULES_KEY].get(request.match_info["id"])
    return json_response(rule_view(rule, version))


@routes.put("/v1/rules/{id}")
async def put_rule(request: web.Request) -> web.Response:
    body = await json_body(request)
    published = await request.app[RULES_KEY].put(request.match_info["id"], body, caller_of(request))
    return _published(published)


@routes.delete("/v1/rules/{id}")
async def delete_rule(request: web.Request) -> web.Response:
    published = await request.app[RULES_KEY].delete(request.match_info["id"], caller_of(request))
    return web.Response(status=204 if published.live else 202)


def _published(published: Published) -> web.Response:
    assert published.rule is not None
    return json_response(
        rule_view(published.rule, published.version), status=200 if published.live else 202
    )


# ---------------------------------------------------------------- alerts


@routes.get("/v1/alerts")
async def list_alerts(request: web.Request) -> web.Response:
    params = request[PARAMS_KEY]
    limit = params.get("limit", 20)
    status = params.get("status")
    which = AlertFilter(
        status=None if status is None else AlertStatus(status),
        typology=params.get("typology"),
        customer_id=params.get("customer_id"),
        assignee=params.get("assignee"),
    )
    page = await request.app[ALERTS_KEY].list(which, limit + 1, params.get("starting_after"))
    return json_response(
        {
            "object": "list",
            "data": [alert_view(case) for case in page[:limit]],
            "has_more": len(page) > limit,
        }
    )


@routes.get("/v1/alerts/{id}")
async def get_alert(request: web.Request) -> web.Response:
    case = await request.app[ALERTS_KEY].get(request.match_info["id"])
    return json_response(alert_view(case))


@routes.post("/v1/alerts/{id}/assign")
async def assign_alert(request: web.Request) -> web.Response:
    body = await json_body(request) or {}
    caller = caller_of(request)
    assignee = body.get("assignee") or request[PRINCIPAL_KEY].subject
    case = await request.app[ALERTS_KEY].assign(request.match_info["id"], assignee, caller)
    return json_response(alert_view(case))


@routes.post("/v1/alerts/{id}/resolve")
async def resolve_alert(request: web.Request) -> web.Response:
    body = await json_body(request)
    case = await request.app[ALERTS_KEY].resolve(
        request.match_info["id"],
        Resolution(body["resolution"]),
        body.get("note"),
        caller_of(request),
    )
    return json_response(alert_view(case))


# ---------------------------------------------------------------- privacy


@routes.post("/internal/v1/privacy/export")
async def export_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    records = await request.app[PRIVACY_KEY].export(body["customer_id"], caller_of(request))
    return json_response(
        {"service": SERVICE, "customer_id": body["customer_id"], "records": records}
    )


@routes.post("/internal/v1/privacy/erase")
async def erase_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    caller = replace(caller_of(request), reason=body["reason"])
    erased, at = await request.app[PRIVACY_KEY].erase(
        body["customer_id"], body["request_id"], caller
    )
    return json_response({"service": SERVICE, "erased": erased, "erased_at": at.isoformat()})


@routes.post("/internal/v1/privacy/purge")
async def purge_data(request: web.Request) -> web.Response:
    body = await json_body(request)
    purged = await request.app[PRIVACY_KEY].purge(
        body["data_class"],
        body["older_than"],
        body["action"],
        bool(body.get("dry_run", False)),
        caller_of(request),
    )
    return json_response(
        {
            "service": SERVICE,
            "data_class": purged.data_class,
            "action": purged.action,
            "cutoff": purged.cutoff.isoformat(),
            "affected": purged.affected,
        }
    )


def _time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidCutoff(f"{field} is not an RFC 3339 time", field=field) from None
    if parsed.tzinfo is None:
        raise InvalidCutoff(f"{field} needs a UTC offset", field=field)
    return parsed

"""Wiring of the fraud API: ``lastro serve fraud``.

On start (``cleanup_ctx``, in order): the database engine (the schema's
migrations) and the decision log's small driver-level pool, with asynchronous
commit, for screening decisions; the KMS (event signing and audit keys), Redis and
the profile store, the service token source and the HTTP clients, and the use
cases; the rules log reader (every replica reads ``lastro.fraud.rules`` from the
beginning) and the loader that marks the rule set ready (on an empty log in dev it
first publishes ``policies/fraudrules``); the outbox relay; the loop that reports
review outcomes to the transaction service. They close in reverse order.

``/readyz`` checks PostgreSQL, the KMS, Redis, Kafka and that the rule set is
loaded; until it is, screening answers 503 so the caller applies its fallback.
Rate limits (``core/ratelimit.py``) apply to the admin and alert routes; the
screening route is exempt: it is on the money path with one caller, which is
limited at its own edge, and the limiter would cost it a Redis round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.background import background, report_failure, wait_for_stop
from lastro.core.backoff import full_jitter
from lastro.core.changes import Caller, ChangeRecorder
from lastro.core.config import Settings
from lastro.core.db import StatementPool, open_statement_pool
from lastro.core.events import EventSigner
from lastro.core.http import ReadinessCheck
from lastro.core.http import create_app as create_service_app
from lastro.core.privacy import PRIVACY_KEY
from lastro.core.ratelimit import (
    EXEMPT,
    policies_from_settings,
    rate_limit_middleware,
    route_classifier,
)
from lastro.core.resources import database, outbox_relay, readiness, redis_client
from lastro.core.security.tls import client_context
from lastro.core.security.tokens import TokenVerifier
from lastro.core.security.transit import TransitClient
from lastro.fraud import api
from lastro.fraud.clients import Answer, ReviewReporter, ServiceTokens, Sibling, TokenSource
from lastro.fraud.domain.alerts import AlertCase
from lastro.fraud.effects import EffectKind, Effects
from lastro.fraud.events import SOURCE
from lastro.fraud.privacy import Privacy
from lastro.fraud.rulebook import RuleBook, RulesAdmin
from lastro.fraud.rulefiles import DEFAULT_DIRECTORY, RuleFileError, load_rule_files
from lastro.fraud.rulelog import RuleLog
from lastro.fraud.service import AlertRecorder, Alerts, Screening
from lastro.fraud.store import tables
from lastro.fraud.store.profiles import DEFAULT_PREFIX, ProfileStore

log = logging.getLogger(__name__)

NAME: Final = "fraud"
AUDIENCE: Final = "fraud"
OPENAPI: Final = Path(__file__).parent / "openapi.yaml"
SEED_ACTOR: Final = "service:fraud/rule-files"
SEED_WAIT_SECONDS: Final = 60.0

ENGINE_KEY: Final = web.AppKey("engine", AsyncEngine)
TRANSIT_KEY: Final = web.AppKey("transit", TransitClient)
REDIS_KEY: Final = web.AppKey("redis", Redis)
RULELOG_KEY: Final = web.AppKey("rulelog", RuleLog)
REVIEWS_KEY: Final = web.AppKey("review_reports", Effects)
DECISIONS_KEY: Final = web.AppKey("decision_log", StatementPool)
REVIEW_ACTOR: Final = "service:fraud/review-outcomes"


@dataclass(frozen=True)
class Wiring:
    """What tests replace; production takes every default.

    ``tokens``: the Authorization headers for calls to other services (default:
    this service's client credentials through the identity service);
    ``transactions_url``: where review outcomes go (default: the transaction
    service); ``seed_rules``: the FraudRule directory published when the rules log
    is empty (default: ``policies/fraudrules`` when ``LASTRO_FRAUD_SEED_RULES`` is
    on, else none)."""

    schema: str = tables.SCHEMA
    verifier: TokenVerifier | None = None
    redis_prefix: str = DEFAULT_PREFIX
    tokens: TokenSource | None = None
    transactions_url: str | None = None
    seed_rules: Path | None = None
    seed_from_settings: bool = True


def recorder_for(signer: EventSigner, audit_key: bytes) -> ChangeRecorder:
    """The ChangeRecorder of this schema: signed events and the audit chain."""
    return ChangeRecorder(
        source=SOURCE,
        outbox=tables.outbox,
        audit_tables=tables.audit,
        signer=signer,
        audit_key=audit_key,
    )


def decisions_database(
    key: web.AppKey[StatementPool], settings: Settings
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` for the decision log's pool: driver-level, connections of its
    own, asynchronous commit (:mod:`lastro.fraud.service`); the schema is migrated by
    the main pool's context, which runs first."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        app[key] = await open_statement_pool(
            settings,
            name="lastro-fraud-screening",
            server_settings={"synchronous_commit": "off"},
        )
        try:
            yield
        finally:
            await app[key].close()

    return context


def redis_probe(key: web.AppKey[Redis]) -> ReadinessCheck:
    async def redis_ready(app: web.Application) -> bool:
        return bool(await app[key].ping())

    return redis_ready


async def create_app(settings: Settings, wiring: Wiring | None = None) -> web.Application:
    """The fraud API application (see the module docstring)."""
    wiring = wiring or Wiring()
    config = settings.fraud
    seed = wiring.seed_rules
    if seed is None and wiring.seed_from_settings and config.seed_rules:
        seed = DEFAULT_DIRECTORY
    book = RuleBook()

    async def use_cases(app: web.Application) -> AsyncIterator[None]:
        engine = app[ENGINE_KEY]
        transit = TransitClient.from_settings(settings)
        tokens = ServiceTokens(settings) if wiring.tokens is None else None
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_context(settings.ca_file))
        )
        try:
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            recorder = recorder_for(signer, await transit.local_hmac_key(settings.audit_key_name))
            profiles = ProfileStore(
                app[REDIS_KEY],
                prefix=wiring.redis_prefix,
                profile_ttl_seconds=config.profile_ttl_days * 86400,
            )
            transactions = Sibling(
                "transactions",
                wiring.transactions_url or settings.service_url("transactions"),
                session,
                wiring.tokens or _required(tokens),
            )
            reporter = ReviewReporter(transactions)
            reviews = Effects(engine, recorder, review_outcomes(reporter), REVIEW_ACTOR)
            screening = Screening(
                engine,
                app[DECISIONS_KEY],
                wiring.schema,
                AlertRecorder(recorder),
                profiles,
                book,
                record_budget=config.record_budget_ms / 1000,
            )
            app[TRANSIT_KEY] = transit
            app[REVIEWS_KEY] = reviews
            app[RULELOG_KEY] = RuleLog(settings.kafka_bootstrap, signer, book)
            app[api.SCREENING_KEY] = screening
            app[api.RULES_KEY] = RulesAdmin(
                engine, recorder, book, wait_seconds=config.rule_wait_ms / 1000
            )
            app[api.ALERTS_KEY] = Alerts(engine, recorder, on_review_pending=reviews.wake.set)
            app[PRIVACY_KEY] = Privacy(engine, recorder, profiles)
            try:
                yield
            finally:
                await screening.aclose()  # decisions already queued are recorded
        finally:
            await session.close()
            if tokens is not None:
                await tokens.close()
            await transit.close()

    async def read_rules(app: web.Application, stop: asyncio.Event) -> None:
        await app[RULELOG_KEY].run(stop)

    async def load_rules(app: web.Application, stop: asyncio.Event) -> None:
        """Mark the rule set ready once the log is read (after seeding an empty log)."""
        rulelog = app[RULELOG_KEY]
        caught_up = asyncio.ensure_future(rulelog.caught_up.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([caught_up, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if stop.is_set():
            caught_up.cancel()
            return
        if seed is not None and rulelog.was_empty:
            await seed_rules(app[api.RULES_KEY], book, seed, stop)
        book.ready.set()
        log.info("rule set %d ready (%d rules)", book.current.version, len(book.current.rules))

    async def deliver_reviews(app: web.Application, stop: asyncio.Event) -> None:
        await app[REVIEWS_KEY].run(stop)

    async def rules_ready(app: web.Application) -> bool:
        return book.ready.is_set()

    limits = rate_limit_middleware(
        REDIS_KEY,
        policies_from_settings(settings),
        route_classifier({"/internal/v1/screenings": EXEMPT}),
        prefix=f"lastro:rl:{wiring.schema}",
    )
    return create_service_app(
        name=NAME,
        settings=settings,
        openapi_path=OPENAPI,
        routes=api.routes,
        readiness={
            **readiness(ENGINE_KEY, TRANSIT_KEY, kafka=settings),
            "redis": redis_probe(REDIS_KEY),
            "rules": rules_ready,
        },
        auth=wiring.verifier or TokenVerifier.from_settings(settings, audience=AUDIENCE),
        cleanup_ctx=[
            database(
                ENGINE_KEY,
                settings,
                name="lastro-fraud",
                schema=wiring.schema,
                migrations=tables.MIGRATIONS,
                bind=lambda engine: tables.bind_schema(engine, wiring.schema),
                pre_ping=False,  # every statement in in_transaction or read
            ),
            decisions_database(DECISIONS_KEY, settings),
            redis_client(REDIS_KEY, settings.redis_url),
            use_cases,
            background("fraud-rules-log", read_rules),
            background("fraud-rules-loader", load_rules),
            outbox_relay(ENGINE_KEY, tables.outbox, settings, name=NAME),
            background("fraud-review-outcomes", deliver_reviews),
        ],
        middlewares=[limits],
    )


def _required(tokens: ServiceTokens | None) -> ServiceTokens:
    assert tokens is not None
    return tokens


def review_outcomes(reporter: ReviewReporter) -> EffectKind:
    """Reporting a resolved alert's outcome for its held transaction (audited
    ``transaction.review_reported``; the alert id is the Idempotency-Key)."""

    async def call(case: AlertCase) -> Answer:
        assert case.alert.transaction_id is not None and case.resolution is not None
        return await reporter.report(
            case.alert.transaction_id, case.resolution.review_outcome, case.id
        )

    return EffectKind(
        column="review",
        name="review_outcome",
        action="transaction.review_reported",
        call=call,
        target=lambda case: case.alert.transaction_id or case.id,
    )


async def seed_rules(
    admin: RulesAdmin, book: RuleBook, directory: Path, stop: asyncio.Event
) -> None:
    """Publish the FraudRule files of ``directory`` to the empty rules log (once
    across replicas) and wait until this replica has them, or until a minute passed
    (the set is marked ready then anyway: screening with the rules it has beats
    refusing every screening). A failed attempt is retried until shutdown."""
    try:
        rules = load_rule_files(directory)
    except RuleFileError as exc:
        log.error("rule files not loaded: %s", exc)
        return
    failures = 0
    while not stop.is_set():
        try:
            published = await admin.seed(rules, Caller(SEED_ACTOR))
            break
        except Exception as error:
            failures += 1
            report_failure("publishing the rule files", error, "retrying")
            await wait_for_stop(stop, full_jitter(failures, base=0.5, cap=10.0))
    else:
        return
    live = await book.wait_for(
        lambda current: all(current.get(rule.id) is not None for rule in rules), SEED_WAIT_SECONDS
    )
    log.info(
        "%s %d rules from %s; %s",
        "published" if published else "another replica published",
        len(rules),
        directory,
        "live" if live is not None else "not all live yet",
    )

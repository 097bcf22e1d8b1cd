"""Tables and queries of the notification service (SQLAlchemy Core on the caller's
connection).

Tables are declared without a schema; :func:`bind_schema` maps them to the
service's schema (``schema_translate_map``), created by the revisions in
``migrations/``. Personal data is never stored in clear: addresses and rendered
messages are sealed per subject (``core.security.fields``) before they get here,
webhook secrets are Transit ciphertexts.

Concurrency: deliveries and occurrences are claimed with ``FOR UPDATE SKIP
LOCKED`` under a lease, so any number of replicas share the work and a claim left
by a crashed replica is taken over when its lease ends; results are recorded only
by the claim that made them (guarded on the attempt number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Time,
    UniqueConstraint,
    and_,
    any_,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from lastro.core.audit import audit_tables
from lastro.core.db import Tx
from lastro.core.events import inbox_table, outbox_table
from lastro.notifications.domain.delivery import (
    Attempt,
    AttemptResult,
    Delivery,
    DeliveryStatus,
    Outcome,
)
from lastro.notifications.domain.kinds import Channel, Kind, Occurrence
from lastro.notifications.domain.preferences import Preferences, QuietHours
from lastro.notifications.domain.webhooks import Endpoint, EndpointStatus, SecretVersion

SCHEMA: Final = "notifications"

metadata = MetaData()
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)
audit = audit_tables(metadata)

subject_keys = Table(
    "subject_keys",
    metadata,
    Column("subject_id", Text, primary_key=True),
    Column("data_key", Text, nullable=False),  # wrapped by Transit (vault:vN:...)
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("data_key LIKE 'vault:v%'", name="subject_keys_wrapped"),
)

customer_owners = Table(
    "customer_owners",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("learned_at", DateTime(timezone=True), nullable=False),
    Index("customer_owners_owner_idx", "owner"),
)

preferences = Table(
    "preferences",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("locale", Text, nullable=False),
    Column("timezone", Text, nullable=False),
    Column("quiet_start", Time),
    Column("quiet_end", Time),
    Column("channels", JSONB, nullable=False),
    Column("marketing_consent", Boolean, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("(quiet_start IS NULL) = (quiet_end IS NULL)", name="preferences_quiet_pair"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("status", Text, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("notice_email", Text),  # sealed with the owner's data key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    CheckConstraint("status IN ('enabled', 'disabled')", name="webhook_endpoints_status"),
    CheckConstraint("consecutive_failures >= 0", name="webhook_endpoints_failures"),
    Index("webhook_endpoints_owner_idx", "owner"),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("id", Text, primary_key=True),
    Column(
        "endpoint_id",
        Text,
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("secret", Text, nullable=False),  # Transit ciphertext of the whsec_ secret
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    CheckConstraint("secret LIKE 'vault:v%'", name="webhook_secrets_encrypted"),
    Index("webhook_secrets_endpoint_idx", "endpoint_id"),
)

occurrences = Table(
    "occurrences",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("customer_ids", ARRAY(Text), nullable=False),
    Column("user_id", Text),
    Column("facts", JSONB, nullable=False),
    Column("status", Text, nullable=False),
    Column("plan_attempts", Integer, nullable=False),
    Column("next_plan_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("planned_at", DateTime(timezone=True)),
    CheckConstraint("status IN ('pending', 'planned')", name="occurrences_status"),
    Index("occurrences_pending_idx", "next_plan_at", postgresql_where=text("status = 'pending'")),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("customer_id", Text),
    Column("endpoint_id", Text),
    Column("subject_id", Text),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("round_attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("address", Text),  # sealed
    Column("content", Text),  # sealed JSON of the rendered message
    Column("payload", JSONB),  # a webhook's body
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("event_id", "channel", "destination", name="deliveries_once_per_destination"),
    CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="deliveries_status"),
    CheckConstraint("channel IN ('webhook', 'email', 'sms')", name="deliveries_channel"),
    CheckConstraint(
        "attempts >= round_attempts AND round_attempts >= 0", name="deliveries_attempt_counts"
    ),
    Index("deliveries_due_idx", "next_attempt_at", postgresql_where=text("status = 'pending'")),
    Index("deliveries_endpoint_idx", "endpoint_id", "id"),
    Index("deliveries_customer_idx", "customer_id", "id"),
    Index("deliveries_created_idx", "created_at"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("delivery_id", Text, ForeignKey("deliveries.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", Text),
    Column("status_code", Integer),
    Column("latency_ms", Integer),
    Column("error", Text),
    CheckConstraint("number >= 1", name="delivery_attempts_number"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("delivery_id", Text, ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False),
    Column("reason", Text, nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=False),
    Column("replayed_at", DateTime(timezone=True)),
    Index("dead_letters_open_idx", "delivery_id", postgresql_where=text("replayed_at IS NULL")),
)


def bind_schema(engine: AsyncEngine, schema: str = SCHEMA) -> AsyncEngine:
    """``engine`` with every table above mapped to ``schema`` (same pool)."""
    return engine.execution_options(schema_translate_map={None: schema})


# ---------------------------------------------------------------- mapping


def _endpoint(row: Row[Any]) -> Endpoint:
    return Endpoint(
        id=row.id,
        owner=row.owner,
        url=row.url,
        description=row.description,
        event_types=frozenset(Kind(t) for t in row.event_types),
        status=EndpointStatus(row.status),
        consecutive_failures=row.consecutive_failures,
        notice_email=row.notice_email is not None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        disabled_at=row.disabled_at,
        disabled_reason=row.disabled_reason,
    )


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(
        id=row.id,
        event_id=row.event_id,
        kind=Kind(row.kind),
        channel=Channel(row.channel),
        destination=row.destination,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        round_attempts=row.round_attempts,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        customer_id=row.customer_id,
        endpoint_id=row.endpoint_id,
        subject_id=row.subject_id,
        address=row.address,
        content=row.content,
        payload=row.payload,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


def _attempt(row: Row[Any]) -> Attempt:
    return Attempt(
        number=row.number,
        started_at=row.started_at,
        finished_at=row.finished_at,
        outcome=None if row.outcome is None else Outcome(row.outcome),
        status_code=row.status_code,
        latency_ms=row.latency_ms,
        error=row.error,
    )


def _occurrence(row: Row[Any]) -> Occurrence:
    return Occurrence(
        event_id=row.event_id,
        kind=Kind(row.kind),
        occurred_at=row.occurred_at,
        facts=row.facts,
        customer_ids=tuple(row.customer_ids),
        user_id=row.user_id,
    )


def _preferences(row: Row[Any]) -> Preferences:
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        quiet = QuietHours(row.quiet_start, row.quiet_end)
    return Preferences(
        customer_id=row.customer_id,
        locale=row.locale,
        timezone=row.timezone,
        quiet_hours=quiet,
        channels={Kind(k): frozenset(Channel(c) for c in v) for k, v in row.channels.items()},
        marketing_consent=row.marketing_consent,
        updated_at=row.updated_at,
    )


# ---------------------------------------------------------------- subjects and owners


async def subject_key(tx: Tx, subject_id: str) -> str | None:
    """The wrapped data key of ``subject_id``, if it has one."""
    k = subject_keys
    return await tx.scalar(select(k.c.data_key).where(k.c.subject_id == subject_id))


async def insert_subject_key(tx: Tx, subject_id: str, wrapped: str, now: datetime) -> str:
    """Store ``wrapped`` unless the subject has a key already; returns the one kept."""
    k = subject_keys
    await tx.execute(
        pg_insert(k)
        .values(subject_id=subject_id, data_key=wrapped, created_at=now)
        .on_conflict_do_nothing()
    )
    kept = await subject_key(tx, subject_id)
    assert kept is not None
    return kept


async def delete_subject_key(tx: Tx, subject_id: str) -> str | None:
    """Drop a subject's key (crypto-shredding); returns the wrapped key dropped."""
    k = subject_keys
    return await tx.scalar(delete(k).where(k.c.subject_id == subject_id).returning(k.c.data_key))


async def record_owner(tx: Tx, customer_id: str, owner: str, now: datetime) -> None:
    o = customer_owners
    await tx.execute(
        pg_insert(o)
        .values(customer_id=customer_id, owner=owner, learned_at=now)
        .on_conflict_do_update(index_elements=[o.c.customer_id], set_={"owner": owner})
    )


async def owner_of(tx: Tx, customer_id: str) -> str | None:
    o = customer_owners
    return await tx.scalar(select(o.c.owner).where(o.c.customer_id == customer_id))


async def customers_of(tx: Tx, owner: str) -> list[str]:
    o = customer_owners
    rows = await tx.execute(
        select(o.c.customer_id).where(o.c.owner == owner).order_by(o.c.customer_id)
    )
    return [row.customer_id for row in rows]


async def forget_owner(tx: Tx, customer_id: str) -> int:
    o = customer_owners
    return (await tx.execute(delete(o).where(o.c.customer_id == customer_id))).rowcount


# ---------------------------------------------------------------- preferences


async def get_preferences(tx: Tx, customer_id: str) -> Preferences | None:
    p = preferences
    row = (await tx.execute(select(p).where(p.c.customer_id == customer_id))).one_or_none()
    return None if row is None else _preferences(row)


async def put_preferences(tx: Tx, prefs: Preferences, channels: Mapping[str, list[str]]) -> None:
    p = preferences
    quiet = prefs.quiet_hours
    values: dict[str, Any] = {
        "locale": prefs.locale,
        "timezone": prefs.timezone,
        "quiet_start": None if quiet is None else quiet.start,
        "quiet_end": None if quiet is None else quiet.end,
        "channels": dict(channels),
        "marketing_consent": prefs.marketing_consent,
        "updated_at": prefs.updated_at,
    }
    await tx.execute(
        pg_insert(p)
        .values(customer_id=prefs.customer_id, **values)
        .on_conflict_do_update(index_elements=[p.c.customer_id], set_=values)
    )


async def delete_preferences(tx: Tx, customer_id: str) -> int:
    p = preferences
    return (await tx.execute(delete(p).where(p.c.customer_id == customer_id))).rowcount


# ---------------------------------------------------------------- endpoints


async def insert_endpoint(
    tx: Tx, endpoint: Endpoint, sealed_notice: str | None, secret_id: str, secret: str
) -> None:
    await tx.execute(
        webhook_endpoints.insert().values(
            id=endpoint.id,
            owner=endpoint.owner,
            url=endpoint.url,
            description=endpoint.description,
            event_types=sorted(k.value for k in endpoint.event_types),
            status=endpoint.status.value,
            consecutive_failures=0,
            notice_email=sealed_notice,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )
    )
    await insert_secret(tx, endpoint.id, secret_id, secret, endpoint.created_at)


async def get_endpoint(
    tx: Tx, endpoint_id: str, owner: str | None = None, *, lock: bool = False
) -> Endpoint | None:
    e = webhook_endpoints
    query = select(e).where(e.c.id == endpoint_id)
    if owner is not None:
        query = query.where(e.c.owner == owner)
    row = (await tx.execute(query.with_for_update() if lock else query)).one_or_none()
    return None if row is None else _endpoint(row)


async def sealed_notice_email(tx: Tx, endpoint_id: str) -> str | None:
    e = webhook_endpoints
    return await tx.scalar(select(e.c.notice_email).where(e.c.id == endpoint_id))


async def list_endpoints(tx: Tx, owner: str) -> list[Endpoint]:
    e = webhook_endpoints
    rows = await tx.execute(select(e).where(e.c.owner == owner).order_by(e.c.id))
    return [_endpoint(row) for row in rows]


async def endpoints_of(tx: Tx, owners: Sequence[str]) -> list[Endpoint]:
    """Every enabled endpoint of ``owners``."""
    if not owners:
        return []
    e = webhook_endpoints
    rows = await tx.execute(
        select(e)
        .where(e.c.owner.in_(sorted(set(owners))), e.c.status == EndpointStatus.ENABLED.value)
        .order_by(e.c.id)
    )
    return [_endpoint(row) for row in rows]


async def update_endpoint(tx: Tx, endpoint_id: str, values: Mapping[str, Any]) -> None:
    e = webhook_endpoints
    await tx.execute(update(e).where(e.c.id == endpoint_id).values(**values))


async def delete_endpoint(tx: Tx, endpoint_id: str) -> None:
    e = webhook_endpoints
    await tx.execute(delete(e).where(e.c.id == endpoint_id))


async def clear_notice_emails(tx: Tx, owner: str, now: datetime) -> int:
    e = webhook_endpoints
    result = await tx.execute(
        update(e)
        .where(e.c.owner == owner, e.c.notice_email.is_not(None))
        .values(notice_email=None, updated_at=now)
    )
    return int(result.rowcount)


async def count_endpoint_failure(tx: Tx, endpoint_id: str, failed: bool) -> int:
    """Reset (success) or bump (failure) the endpoint's run of failures; returns it."""
    e = webhook_endpoints
    value = e.c.consecutive_failures + 1 if failed else 0
    result = await tx.scalar(
        update(e)
        .where(e.c.id == endpoint_id)
        .values(consecutive_failures=value)
        .returning(e.c.consecutive_failures)
    )
    return int(result or 0)


async def insert_secret(
    tx: Tx, endpoint_id: str, secret_id: str, secret: str, now: datetime
) -> None:
    await tx.execute(
        webhook_secrets.insert().values(
            id=secret_id, endpoint_id=endpoint_id, secret=secret, created_at=now
        )
    )


async def secret_versions(tx: Tx, endpoint_id: str) -> list[SecretVersion]:
    s = webhook_secrets
    rows = await tx.execute(
        select(s.c.id, s.c.created_at, s.c.expires_at)
        .where(s.c.endpoint_id == endpoint_id)
        .order_by(s.c.created_at)
    )
    return [SecretVersion(r.id, r.created_at, r.expires_at) for r in rows]


async def expire_secrets(tx: Tx, expiries: Mapping[str, datetime]) -> None:
    s = webhook_secrets
    for secret_id, at in expiries.items():
        await tx.execute(update(s).where(s.c.id == secret_id).values(expires_at=at))


async def active_secrets(tx: Tx, endpoint_id: str, now: datetime) -> list[tuple[str, str]]:
    """(id, ciphertext) of the endpoint's secrets valid at ``now``, newest first."""
    s = webhook_secrets
    rows = await tx.execute(
        select(s.c.id, s.c.secret)
        .where(
            s.c.endpoint_id == endpoint_id,
            or_(s.c.expires_at.is_(None), s.c.expires_at > now),
        )
        .order_by(s.c.created_at.desc())
    )
    return [(row.id, row.secret) for row in rows]


async def purge_expired_secrets(tx: Tx, now: datetime) -> int:
    s = webhook_secrets
    result = await tx.execute(delete(s).where(s.c.expires_at <= now))
    return int(result.rowcount)


# ---------------------------------------------------------------- occurrences


async def insert_occurrence(tx: Tx, occurrence: Occurrence, now: datetime) -> None:
    await tx.execute(
        pg_insert(occurrences)
        .values(
            event_id=occurrence.event_id,
            kind=occurrence.kind.value,
            occurred_at=occurrence.occurred_at,
            customer_ids=list(occurrence.customer_ids),
            user_id=occurrence.user_id,
            facts=dict(occurrence.facts),
            status="pending",
            plan_attempts=0,
            next_plan_at=now,
            received_at=now,
        )
        .on_conflict_do_nothing()
    )


async def claim_occurrences(
    tx: Tx, now: datetime, lease_until: datetime, limit: int
) -> list[tuple[Occurrence, int]]:
    """Pending occurrences due at ``now``, leased until ``lease_until``, with the
    number of planning attempts made so far (this one included)."""
    o = occurrences
    due = (
        select(o.c.event_id)
        .where(o.c.status == "pending", o.c.next_plan_at <= now)
        .order_by(o.c.next_plan_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = await tx.execute(
        update(o)
        .where(o.c.event_id.in_(due))
        .values(next_plan_at=lease_until, plan_attempts=o.c.plan_attempts + 1)
        .returning(o)
    )
    return [(_occurrence(row), row.plan_attempts) for row in rows]


async def occurrence_planned(tx: Tx, event_id: str, now: datetime) -> bool:
    """Mark planned and drop the facts (the deliveries hold what they need); False
    when another claim planned it first."""
    o = occurrences
    result = await tx.execute(
        update(o)
        .where(o.c.event_id == event_id, o.c.status == "pending")
        .values(status="planned", planned_at=now, facts={})
    )
    return bool(result.rowcount)


async def defer_occurrence(tx: Tx, event_id: str, at: datetime) -> None:
    o = occurrences
    await tx.execute(
        update(o).where(o.c.event_id == event_id, o.c.status == "pending").values(next_plan_at=at)
    )


async def erase_occurrences_of(tx: Tx, customer_id: str, now: datetime) -> int:
    """Pending occurrences about the customer are settled without telling anyone."""
    o = occurrences
    result = await tx.execute(
        update(o)
        .where(o.c.status == "pending", literal(customer_id) == any_(o.c.customer_ids))
        .values(status="planned", planned_at=now, facts={})
    )
    return int(result.rowcount)


# ---------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class NewDelivery:
    id: str
    event_id: str
    kind: Kind
    channel: Channel
    destination: str
    next_attempt_at: datetime
    customer_id: str | None = None
    endpoint_id: str | None = None
    subject_id: str | None = None
    address: str | None = None
    content: str | None = None
    payload: Mapping[str, Any] | None = None


async def insert_deliveries(tx: Tx, new: Sequence[NewDelivery], now: datetime) -> list[str]:
    """Insert each delivery unless one exists for its (event, channel, destination);
    returns the ids inserted now."""
    inserted = []
    for d in new:
        result = await tx.scalar(
            pg_insert(deliveries)
            .values(
                id=d.id,
                event_id=d.event_id,
                kind=d.kind.value,
                channel=d.channel.value,
                destination=d.destination,
                customer_id=d.customer_id,
                endpoint_id=d.endpoint_id,
                subject_id=d.subject_id,
                status=DeliveryStatus.PENDING.value,
                attempts=0,
                round_attempts=0,
                next_attempt_at=d.next_attempt_at,
                address=d.address,
                content=d.content,
                payload=None if d.payload is None else dict(d.payload),
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(constraint="deliveries_once_per_destination")
            .returning(deliveries.c.id)
        )
        if result is not None:
            inserted.append(result)
    return inserted


async def claim_deliveries(
    tx: Tx, now: datetime, lease_until: datetime, limit: int
) -> list[Delivery]:
    """Due pending deliveries, leased until ``lease_until``, each with its attempt
    counters already raised and the new attempt row started; an earlier attempt
    left unfinished (its sender died) is closed as ``interrupted``."""
    d = deliveries
    due = (
        select(d.c.id)
        .where(
            d.c.status == DeliveryStatus.PENDING.value,
            d.c.next_attempt_at <= now,
            or_(d.c.lease_until.is_(None), d.c.lease_until <= now),
        )
        .order_by(d.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    rows = (
        await tx.execute(
            update(d)
            .where(d.c.id.in_(due))
            .values(
                lease_until=lease_until,
                attempts=d.c.attempts + 1,
                round_attempts=d.c.round_attempts + 1,
                updated_at=now,
            )
            .returning(d)
        )
    ).all()
    if not rows:
        return []
    a = delivery_attempts
    ids = [row.id for row in rows]
    await tx.execute(
        update(a)
        .where(a.c.delivery_id.in_(ids), a.c.outcome.is_(None))
        .values(outcome=Outcome.INTERRUPTED.value, finished_at=now)
    )
    await tx.execute(
        a.insert(),
        [{"delivery_id": row.id, "number": row.attempts, "started_at": now} for row in rows],
    )
    return [_delivery(row) for row in rows]


async def finish_attempt(
    tx: Tx,
    delivery: Delivery,
    result: AttemptResult,
    *,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    finished_at: datetime,
    latency_ms: int | None,
) -> bool:
    """Record the attempt's result and the delivery's next state; False (nothing
    written) when the claim was lost (the lease ran out and another replica took
    the delivery over)."""
    d, a = deliveries, delivery_attempts
    values: dict[str, Any] = {
        "status": status.value,
        "lease_until": None,
        "updated_at": finished_at,
        "last_error": result.error,
    }
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if status is DeliveryStatus.DELIVERED:
        values["delivered_at"] = finished_at
    updated = await tx.execute(
        update(d)
        .where(
            d.c.id == delivery.id,
            d.c.attempts == delivery.attempts,
            d.c.status == DeliveryStatus.PENDING.value,
        )
        .values(**values)
    )
    if not updated.rowcount:
        return False
    await tx.execute(
        update(a)
        .where(a.c.delivery_id == delivery.id, a.c.number == delivery.attempts)
        .values(
            finished_at=finished_at,
            outcome=result.outcome.value,
            status_code=result.status_code,
            latency_ms=latency_ms,
            error=result.error,
        )
    )
    return True


async def dead_letter(tx: Tx, delivery_id: str, reason: str, now: datetime) -> None:
    await tx.execute(
        dead_letters.insert().values(delivery_id=delivery_id, reason=reason, dead_at=now)
    )


async def kill_pending(
    tx: Tx,
    reason: str,
    now: datetime,
    *,
    endpoint_id: str | None = None,
    customer_id: str | None = None,
) -> list[str]:
    """Dead-letter every pending delivery of an endpoint or a customer; returns ids."""
    d = deliveries
    where = [d.c.status == DeliveryStatus.PENDING.value]
    if endpoint_id is not None:
        where.append(and_(d.c.endpoint_id == endpoint_id, d.c.channel == Channel.WEBHOOK.value))
    if customer_id is not None:
        where.append(and_(d.c.customer_id == customer_id, d.c.channel != Channel.WEBHOOK.value))
    ids = list(
        (
            await tx.execute(
                update(d)
                .where(*where)
                .values(status=DeliveryStatus.DEAD.value, lease_until=None, updated_at=now)
                .returning(d.c.id)
            )
        ).scalars()
    )
    for delivery_id in ids:
        await dead_letter(tx, delivery_id, reason, now)
    return ids


async def replay(tx: Tx, delivery_id: str, now: datetime) -> bool:
    """Put a dead delivery back to pending, due now, with a fresh round of attempts."""
    d, q = deliveries, dead_letters
    result = await tx.execute(
        update(d)
        .where(d.c.id == delivery_id, d.c.status == DeliveryStatus.DEAD.value)
        .values(
            status=DeliveryStatus.PENDING.value,
            round_attempts=0,
            next_attempt_at=now,
            lease_until=None,
            updated_at=now,
        )
    )
    if not result.rowcount:
        return False
    await tx.execute(
        update(q)
        .where(q.c.delivery_id == delivery_id, q.c.replayed_at.is_(None))
        .values(replayed_at=now)
    )
    return True


async def get_delivery(tx: Tx, delivery_id: str, *, lock: bool = False) -> Delivery | None:
    d = deliveries
    query = select(d).where(d.c.id == delivery_id)
    row = (await tx.execute(query.with_for_update() if lock else query)).one_or_none()
    return None if row is None else _delivery(row)


async def attempts_of(tx: Tx, delivery_ids: Sequence[str]) -> dict[str, list[Attempt]]:
    a = delivery_attempts
    found: dict[str, list[Attempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return found
    rows = await tx.execute(
        select(a)
        .where(a.c.delivery_id.in_(list(delivery_ids)))
        .order_by(a.c.delivery_id, a.c.number)
    )
    for row in rows:
        found[row.delivery_id].append(_attempt(row))
    return found


async def dead_reason(tx: Tx, delivery_id: str) -> str | None:
    q = dead_letters
    return await tx.scalar(
        select(q.c.reason)
        .where(q.c.delivery_id == delivery_id, q.c.replayed_at.is_(None))
        .order_by(q.c.id.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class DeliveryFilter:
    """Deliveries to the endpoints of ``owner`` or to customers it owns; optionally
    narrowed. ``after`` is the last id of the previous page (newest first)."""

    owner: str | None
    endpoint_id: str | None = None
    customer_id: str | None = None
    event_id: str | None = None
    status: DeliveryStatus | None = None
    before: str | None = None
    limit: int = 50


async def list_deliveries(tx: Tx, f: DeliveryFilter) -> list[Delivery]:
    d = deliveries
    query = select(d)
    if f.owner is not None:
        e, o = webhook_endpoints, customer_owners
        owned_endpoints = select(e.c.id).where(e.c.owner == f.owner)
        owned_customers = select(o.c.customer_id).where(o.c.owner == f.owner)
        query = query.where(
            or_(
                and_(d.c.channel == Channel.WEBHOOK.value, d.c.endpoint_id.in_(owned_endpoints)),
                and_(d.c.channel != Channel.WEBHOOK.value, d.c.customer_id.in_(owned_customers)),
                and_(
                    d.c.kind == Kind.ENDPOINT_DISABLED.value, d.c.endpoint_id.in_(owned_endpoints)
                ),
            )
        )
    if f.endpoint_id is not None:
        query = query.where(d.c.endpoint_id == f.endpoint_id)
    if f.customer_id is not None:
        query = query.where(d.c.customer_id == f.customer_id)
    if f.event_id is not None:
        query = query.where(d.c.event_id == f.event_id)
    if f.status is not None:
        query = query.where(d.c.status == f.status.value)
    if f.before is not None:
        query = query.where(d.c.id < f.before)
    rows = await tx.execute(query.order_by(d.c.id.desc()).limit(f.limit))
    return [_delivery(row) for row in rows]


async def deliveries_of_customer(tx: Tx, customer_id: str) -> list[Delivery]:
    d = deliveries
    rows = await tx.execute(
        select(d)
        .where(d.c.customer_id == customer_id, d.c.channel != Channel.WEBHOOK.value)
        .order_by(d.c.id)
    )
    return [_delivery(row) for row in rows]


async def anonymize_customer_deliveries(tx: Tx, customer_id: str) -> int:
    d = deliveries
    result = await tx.execute(
        update(d)
        .where(
            d.c.customer_id == customer_id,
            d.c.channel != Channel.WEBHOOK.value,
            or_(d.c.address.is_not(None), d.c.content.is_not(None)),
        )
        .values(address=None, content=None)
    )
    return int(result.rowcount)


# ---------------------------------------------------------------- retention


FINISHED: Final = (DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value)


async def purge_deliveries(tx: Tx, cutoff: datetime, *, dry_run: bool) -> int:
    """Delete finished deliveries created before ``cutoff`` (attempts and dead
    letters go with them); pending ones are still in flight and stay."""
    d = deliveries
    where = and_(d.c.created_at < cutoff, d.c.status.in_(FINISHED))
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    return int((await tx.execute(delete(d).where(where))).rowcount)


async def anonymize_deliveries(tx: Tx, cutoff: datetime, *, dry_run: bool) -> int:
    """Clear address, message and webhook body of finished deliveries before ``cutoff``."""
    d = deliveries
    where = and_(
        d.c.created_at < cutoff,
        d.c.status.in_(FINISHED),
        or_(d.c.address.is_not(None), d.c.content.is_not(None), d.c.payload.is_not(None)),
    )
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    result = await tx.execute(
        update(d).where(where).values(address=None, content=None, payload=None)
    )
    return int(result.rowcount)


async def clear_delivery_column(tx: Tx, column: str, cutoff: datetime, *, dry_run: bool) -> int:
    """NULL ``column`` (address, content or payload) of finished deliveries created
    before ``cutoff``."""
    d = deliveries
    where = and_(d.c.created_at < cutoff, d.c.status.in_(FINISHED), d.c[column].is_not(None))
    if dry_run:
        return int(await tx.scalar(select(func.count()).select_from(d).where(where)) or 0)
    result = await tx.execute(update(d).where(where).values({column: None}))
    return int(result.rowcount)


# ---------------------------------------------------------------- metrics


async def queue_depths(tx: Tx) -> tuple[dict[str, int], dict[str, int]]:
    """(retries waiting per channel, dead letters not replayed per channel)."""
    d, q = deliveries, dead_letters
    waiting = await tx.execute(
        select(d.c.channel, func.count())
        .where(d.c.status == DeliveryStatus.PENDING.value, d.c.attempts > 0)
        .group_by(d.c.channel)
    )
    dead = await tx.execute(
        select(d.c.channel, func.count(func.distinct(q.c.delivery_id)))
        .select_from(q.join(d, d.c.id == q.c.delivery_id))
        .where(q.c.replayed_at.is_(None))
        .group_by(d.c.channel)
    )
    return {row[0]: row[1] for row in waiting}, {row[0]: row[1] for row in dead}

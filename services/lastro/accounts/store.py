"""Tables and queries of the account service's ledger (SQLAlchemy Core, PostgreSQL).

The database repeats every money invariant the domain checks, so no code path
(a bug, a migration, a hand-written ``psql`` session) can bypass them:

* ``entries``: explicit ``direction`` (debit | credit), ``amount > 0``, the entry
  currency equal to its account's (composite foreign key), rows immutable, and a
  DEFERRABLE INITIALLY DEFERRED constraint trigger that rejects, at commit, any
  posting whose entries do not sum to zero per currency (SQLSTATE 23514);
* ``accounts``: ``pending >= 0``, ``overdraft_limit >= 0`` (always 0 on system
  accounts), a customer account's ``posted - pending >= -overdraft_limit``, and a
  closed account holds nothing;
* ``holds``: ``0 <= posted_amount <= amount``, known statuses only.

Queries that a use case needs in one round trip live here as prepared text
statements (one lock statement, one writable-CTE write per posting).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    DDL,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    MetaData,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    event,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lastro.accounts import domain
from lastro.accounts.domain import (
    AccountId,
    AccountKind,
    AccountState,
    AccountStatus,
    BalanceDelta,
    Direction,
    EntryRequest,
    Hold,
    HoldId,
    HoldStatus,
    Posting,
    PostingId,
)
from lastro.core.audit import AuditTables, audit_tables
from lastro.core.db import migrate
from lastro.core.events import inbox_table, outbox_table

MIGRATIONS: Final = Path(__file__).parent / "migrations"
ID = String(40)
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _sql(schema: str, *parts: str) -> TextClause:
    """The statement ``parts`` with ``{s}`` replaced by the schema name, which must be
    a plain lower-case identifier (the only text ever spliced into these statements)."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema name {schema!r} is not a plain identifier")
    return text("".join(parts).replace("{s}", schema))


def _ddl(statement: str) -> DDL:
    return DDL(statement)  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy


def _in(column: str, values: Sequence[str]) -> str:
    quoted = ", ".join("'" + value + "'" for value in values)
    return f"{column} IN ({quoted})"


@dataclass(frozen=True)
class LedgerTables:
    """Every table of one ledger schema, plus the statements prepared for it."""

    metadata: MetaData
    accounts: Table
    postings: Table
    entries: Table
    holds: Table
    outbox: Table
    inbox: Table
    audit: AuditTables

    @property
    def schema(self) -> str:
        assert self.metadata.schema is not None
        return self.metadata.schema


def ledger_tables(schema: str = "accounts") -> LedgerTables:
    """The ledger's tables in ``schema`` (tests pass a throwaway schema)."""
    metadata = MetaData(schema=schema)
    accounts = Table(
        "accounts",
        metadata,
        Column("id", ID, primary_key=True),
        Column("customer_id", ID, index=True),
        Column("currency", String(3), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("overdraft_limit", BigInteger, nullable=False, server_default="0"),
        Column("posted", BigInteger, nullable=False, server_default="0"),
        Column("pending", BigInteger, nullable=False, server_default="0"),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("id", "currency", name="accounts_id_currency_key"),
        CheckConstraint(_in("kind", list(AccountKind)), name="accounts_kind_known"),
        CheckConstraint(_in("status", list(AccountStatus)), name="accounts_status_known"),
        CheckConstraint("overdraft_limit >= 0", name="accounts_overdraft_non_negative"),
        CheckConstraint(
            "kind = 'customer' OR overdraft_limit = 0", name="accounts_system_no_overdraft"
        ),
        CheckConstraint("pending >= 0", name="accounts_pending_non_negative"),
        CheckConstraint(
            "kind <> 'customer' OR posted - pending >= -overdraft_limit",
            name="accounts_within_overdraft",
        ),
        CheckConstraint(
            "status <> 'closed' OR (posted = 0 AND pending = 0)", name="accounts_closed_empty"
        ),
    )
    postings = Table(
        "postings",
        metadata,
        Column("id", ID, primary_key=True),
        Column("external_id", String(domain.MAX_EXTERNAL_ID_LENGTH), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("description", Text, nullable=False, server_default=""),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("reverses", ID, ForeignKey("postings.id")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("external_id", name="postings_external_id_key"),
        UniqueConstraint("reverses", name="postings_reverses_key"),
    )
    entries = Table(
        "entries",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("posting_id", ID, ForeignKey("postings.id"), nullable=False, index=True),
        Column("account_id", ID, nullable=False),
        Column("direction", String(6), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="entries_account_currency_fkey",
        ),
        CheckConstraint("direction IN ('debit', 'credit')", name="entries_direction_known"),
        CheckConstraint("amount > 0", name="entries_amount_positive"),
        Index("entries_account_history_idx", "account_id", "id"),
    )
    holds = Table(
        "holds",
        metadata,
        Column("id", ID, primary_key=True),
        Column("external_id", String(domain.MAX_EXTERNAL_ID_LENGTH), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("account_id", ID, nullable=False, index=True),
        Column("counterparty_id", ID, nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("status", String(16), nullable=False),
        Column("posted_amount", BigInteger, nullable=False, server_default="0"),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("description", Text, nullable=False, server_default=""),
        Column("metadata", JSONB, nullable=False, server_default="{}"),
        Column("posting_id", ID, ForeignKey("postings.id")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("resolved_at", DateTime(timezone=True)),
        UniqueConstraint("external_id", name="holds_external_id_key"),
        ForeignKeyConstraint(
            ["account_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="holds_account_currency_fkey",
        ),
        ForeignKeyConstraint(
            ["counterparty_id", "currency"],
            ["accounts.id", "accounts.currency"],
            name="holds_counterparty_currency_fkey",
        ),
        CheckConstraint(_in("status", list(HoldStatus)), name="holds_status_known"),
        CheckConstraint("amount > 0", name="holds_amount_positive"),
        CheckConstraint(
            "posted_amount >= 0 AND posted_amount <= amount", name="holds_posted_within_amount"
        ),
        CheckConstraint(
            "(status = 'pending') = (resolved_at IS NULL)", name="holds_resolved_when_final"
        ),
        Index("holds_due_idx", "expires_at", postgresql_where=text("status = 'pending'")),
    )
    _attach_entry_triggers(entries)
    return LedgerTables(
        metadata=metadata,
        accounts=accounts,
        postings=postings,
        entries=entries,
        holds=holds,
        outbox=outbox_table(metadata),
        inbox=inbox_table(metadata),
        audit=audit_tables(metadata),
    )


def ledger_metadata(schema: str = "accounts") -> MetaData:
    """The ledger's MetaData (tables, constraints, triggers) for ``schema``."""
    return ledger_tables(schema).metadata


def _attach_entry_triggers(entries: Table) -> None:
    """Zero-sum per posting and currency, checked at commit; entries never change."""
    zero_sum = "%(schema)s.entries_zero_sum_check"
    immutable = "%(schema)s.entries_reject_change"
    for statement in (
        "CREATE FUNCTION %(schema)s.entries_zero_sum_check() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ "
        "DECLARE bad record; BEGIN "
        "SELECT e.currency, sum(CASE e.direction WHEN 'credit' THEN e.amount "
        "ELSE -e.amount END) AS total INTO bad FROM %(fullname)s e "
        "WHERE e.posting_id = NEW.posting_id GROUP BY e.currency "
        "HAVING sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) <> 0 "
        "LIMIT 1; "
        "IF FOUND THEN RAISE EXCEPTION USING ERRCODE = 'check_violation', "
        "CONSTRAINT = 'entries_zero_sum', "
        "MESSAGE = 'posting ' || NEW.posting_id || ' does not sum to zero in ' "
        "|| bad.currency || ' (credits - debits = ' || bad.total || ')'; END IF; "
        "RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER entries_zero_sum AFTER INSERT ON %(fullname)s "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {zero_sum}()",
        "CREATE FUNCTION %(schema)s.entries_reject_change() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION USING ERRCODE = 'restrict_violation', "
        "MESSAGE = 'ledger entries are immutable: ' || TG_OP || ' rejected'; END $$",
        "CREATE TRIGGER entries_immutable BEFORE UPDATE OR DELETE ON %(fullname)s "
        f"FOR EACH ROW EXECUTE FUNCTION {immutable}()",
        "CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON %(fullname)s "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {immutable}()",
    ):
        event.listen(entries, "after_create", _ddl(statement))
    for function in (zero_sum, immutable):
        event.listen(entries, "after_drop", _ddl(f"DROP FUNCTION IF EXISTS {function}()"))


async def migrate_accounts(engine: AsyncEngine, schema: str = "accounts") -> None:
    """Upgrade ``schema`` to the newest ledger revision (idempotent)."""
    await migrate(engine, schema, MIGRATIONS)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Account:
    """An account row: the domain state plus what the API shows."""

    state: AccountState
    customer_id: str | None
    metadata: Mapping[str, str]
    created_at: datetime
    updated_at: datetime

    @property
    def id(self) -> AccountId:
        return self.state.id


@dataclass(frozen=True)
class Entry:
    """One stored ledger entry (a :class:`domain.Movement`)."""

    id: int
    posting_id: PostingId
    account_id: AccountId
    direction: Direction
    amount: int
    currency: str
    created_at: datetime


def _state(row: Any) -> AccountState:
    return AccountState(
        id=AccountId(row.id),
        currency=row.currency,
        kind=AccountKind(row.kind),
        status=AccountStatus(row.status),
        overdraft_limit=row.overdraft_limit,
        posted=row.posted,
        pending=row.pending,
    )


def account_from_row(row: Any) -> Account:
    return Account(
        state=_state(row),
        customer_id=row.customer_id,
        metadata=row.metadata,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def entry_from_row(row: Any) -> Entry:
    return Entry(
        id=row.id,
        posting_id=PostingId(row.posting_id),
        account_id=AccountId(row.account_id),
        direction=Direction(row.direction),
        amount=row.amount,
        currency=row.currency,
        created_at=row.created_at,
    )


def hold_from_row(row: Any) -> Hold:
    return Hold(
        id=HoldId(row.id),
        external_id=row.external_id,
        account_id=AccountId(row.account_id),
        counterparty_id=AccountId(row.counterparty_id),
        amount=row.amount,
        currency=row.currency,
        expires_at=row.expires_at,
        description=row.description,
        metadata=row.metadata,
        created_at=row.created_at,
        fingerprint=row.fingerprint,
        status=HoldStatus(row.status),
        posted_amount=row.posted_amount,
        resolved_at=row.resolved_at,
    )


# ---------------------------------------------------------------- cursors


def encode_cursor(entry_id: int) -> str:
    """Opaque pagination cursor for "entries older than ``entry_id``"."""
    return base64.urlsafe_b64encode(f"e1:{entry_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The entry id inside a cursor; raises InvalidRequest for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, value = raw.partition(":")
        entry_id = int(value)
        if version != "e1" or entry_id <= 0 or str(entry_id) != value:
            raise ValueError(raw)
    except (ValueError, UnicodeDecodeError):
        raise domain.InvalidRequest("cursor is not valid", field="cursor") from None
    return entry_id


# ---------------------------------------------------------------- ledger statements


_APPLY_DELTAS: Final = (
    " UPDATE {s}.accounts a SET posted = a.posted + d.posted,"
    " pending = a.pending + d.pending, updated_at = CAST(:now AS timestamptz)"
    " FROM unnest(CAST(:d_accounts AS text[]), CAST(:d_posted AS bigint[]),"
    " CAST(:d_pending AS bigint[])) AS d(id, posted, pending) WHERE a.id = d.id"
)


_LOCK_ACCOUNTS: Final = (
    " FROM {s}.accounts a WHERE a.id = ANY(CAST(:ids AS text[])) ORDER BY a.id FOR UPDATE OF a"
)
"""Every use case locks accounts in this one order, so concurrent ones wait for each
other instead of deadlocking."""
_ACCOUNT_STATE: Final = "a.id, a.currency, a.kind, a.status, a.overdraft_limit, a.posted, a.pending"


class LedgerQueries:
    """The hot-path statements of one schema, built once and prepared per connection.

    A batch of postings (one, or many group-committed) costs one locking read
    (:meth:`lock_for_batch`) and one write (:meth:`write_postings`): the posting
    rows, their entries and every balance change go in a single writable-CTE
    statement.
    """

    def __init__(self, tables: LedgerTables) -> None:
        self.tables = tables
        schema = tables.schema
        self._lock_accounts = _sql(schema, "SELECT ", _ACCOUNT_STATE, _LOCK_ACCOUNTS)
        self._apply_deltas = _sql(schema, _APPLY_DELTAS)
        self._lock_for_batch = _sql(
            schema,
            "WITH existing AS MATERIALIZED (SELECT p.external_id, p.id FROM {s}.postings p"
            " WHERE p.external_id = ANY(CAST(:external_ids AS text[])))"
            " SELECT ",
            _ACCOUNT_STATE,
            ", (SELECT array_agg(x.external_id ORDER BY x.id) FROM existing x)"
            " AS existing_external,"
            " (SELECT array_agg(x.id ORDER BY x.id) FROM existing x) AS existing_ids",
            _LOCK_ACCOUNTS,
        )
        self._postings_by_external = _sql(
            schema,
            "SELECT p.external_id, p.id FROM {s}.postings p"
            " WHERE p.external_id = ANY(CAST(:external_ids AS text[]))",
        )
        self._write_postings = _sql(
            schema,
            "WITH posting AS (INSERT INTO {s}.postings"
            " (id, external_id, fingerprint, description, metadata, reverses, created_at)"
            " SELECT p.id, p.external_id, p.fingerprint, p.description,"
            " CAST(p.metadata AS jsonb), p.reverses, p.created_at"
            " FROM unnest(CAST(:p_ids AS text[]), CAST(:p_external_ids AS text[]),"
            " CAST(:p_fingerprints AS text[]), CAST(:p_descriptions AS text[]),"
            " CAST(:p_metadata AS text[]), CAST(:p_reverses AS text[]),"
            " CAST(:p_created AS timestamptz[])) WITH ORDINALITY"
            " AS p(id, external_id, fingerprint, description, metadata, reverses, created_at, n)"
            " ORDER BY p.n),"
            " entry AS (INSERT INTO {s}.entries"
            " (posting_id, account_id, direction, amount, currency, created_at)"
            " SELECT e.posting_id, e.account_id, e.direction, e.amount, e.currency, e.created_at"
            " FROM unnest(CAST(:e_postings AS text[]), CAST(:e_accounts AS text[]),"
            " CAST(:e_directions AS text[]), CAST(:e_amounts AS bigint[]),"
            " CAST(:e_currencies AS text[]), CAST(:e_created AS timestamptz[])) WITH ORDINALITY"
            " AS e(posting_id, account_id, direction, amount, currency, created_at, n)"
            " ORDER BY e.n)",
            _APPLY_DELTAS,
        )

    async def lock_accounts(
        self, conn: AsyncConnection, ids: Sequence[str]
    ) -> dict[AccountId, AccountState]:
        """Lock ``ids`` (those that exist) in id order, FOR UPDATE."""
        rows = await conn.execute(self._lock_accounts, {"ids": sorted(set(ids))})
        return {AccountId(row.id): _state(row) for row in rows}

    async def lock_for_batch(
        self, conn: AsyncConnection, ids: Sequence[str], external_ids: Sequence[str]
    ) -> tuple[dict[AccountId, AccountState], dict[str, PostingId]]:
        """Lock ``ids`` (those that exist) in id order, FOR UPDATE, like
        :meth:`lock_accounts`; also return the postings already recorded under any of
        ``external_ids`` (external_id → posting id), in the same round trip."""
        params = {"ids": sorted(set(ids)), "external_ids": sorted(set(external_ids))}
        rows = (await conn.execute(self._lock_for_batch, params)).all()
        pairs: Iterable[tuple[str, str]]
        if rows:
            pairs = zip(rows[0].existing_external or (), rows[0].existing_ids or (), strict=True)
        else:
            pairs = (await conn.execute(self._postings_by_external, params)).all()
        states = {AccountId(row.id): _state(row) for row in rows}
        return states, {external: PostingId(posting) for external, posting in pairs}

    async def posting_id_for(self, conn: AsyncConnection, external_id: str) -> str | None:
        p = self.tables.postings
        found: str | None = await conn.scalar(select(p.c.id).where(p.c.external_id == external_id))
        return found

    async def write_postings(
        self,
        conn: AsyncConnection,
        postings: Sequence[Posting],
        deltas: Mapping[AccountId, BalanceDelta],
    ) -> None:
        """Insert ``postings`` (in order) with their entries and apply the summed
        ``deltas``, in one statement. Entry ids ascend in posting and entry order."""
        entries = [(p, e) for p in postings for e in p.entries]
        await conn.execute(
            self._write_postings,
            {
                "p_ids": [p.id for p in postings],
                "p_external_ids": [p.external_id for p in postings],
                "p_fingerprints": [p.fingerprint for p in postings],
                "p_descriptions": [p.description for p in postings],
                "p_metadata": [json.dumps(dict(p.metadata)) for p in postings],
                "p_reverses": [p.reverses for p in postings],
                "p_created": [p.created_at for p in postings],
                "e_postings": [p.id for p, _ in entries],
                "e_accounts": [e.account_id for _, e in entries],
                "e_directions": [e.direction.value for _, e in entries],
                "e_amounts": [e.amount for _, e in entries],
                "e_currencies": [e.currency for _, e in entries],
                "e_created": [p.created_at for p, _ in entries],
                "now": max(p.created_at for p in postings),
                **_delta_params(deltas),
            },
        )

    async def apply_deltas(
        self, conn: AsyncConnection, deltas: Mapping[AccountId, BalanceDelta], now: datetime
    ) -> None:
        """Apply balance changes without a posting (placing or releasing a hold)."""
        await conn.execute(self._apply_deltas, {"now": now, **_delta_params(deltas)})

    async def load_posting(self, conn: AsyncConnection, posting_id: str) -> Posting | None:
        p, e = self.tables.postings, self.tables.entries
        row = (await conn.execute(select(p).where(p.c.id == posting_id))).one_or_none()
        if row is None:
            return None
        entries = (
            await conn.execute(select(e).where(e.c.posting_id == posting_id).order_by(e.c.id))
        ).all()
        return Posting(
            id=PostingId(row.id),
            external_id=row.external_id,
            entries=tuple(
                EntryRequest(AccountId(x.account_id), Direction(x.direction), x.amount, x.currency)
                for x in entries
            ),
            description=row.description,
            metadata=row.metadata,
            reverses=None if row.reverses is None else PostingId(row.reverses),
            created_at=row.created_at,
            fingerprint=row.fingerprint,
        )


def _delta_params(deltas: Mapping[AccountId, BalanceDelta]) -> dict[str, list[Any]]:
    ids = sorted(deltas)
    return {
        "d_accounts": list(ids),
        "d_posted": [deltas[i].posted for i in ids],
        "d_pending": [deltas[i].pending for i in ids],
    }


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class BalanceMismatch:
    account_id: str
    stored: int
    recomputed: int


@dataclass(frozen=True)
class LedgerReport:
    """What :func:`verify_ledger` found; ``ok`` when every list is empty."""

    accounts: int
    postings: int
    entries: int
    unbalanced_postings: list[tuple[str, str, int]]
    """(posting id, currency, credits - debits) for every posting that does not net to 0."""
    currency_totals: dict[str, int]
    """Sum of posted balances per currency; every value must be 0."""
    posted_mismatches: list[BalanceMismatch]
    pending_mismatches: list[BalanceMismatch]

    @property
    def ok(self) -> bool:
        return (
            not self.unbalanced_postings
            and not any(self.currency_totals.values())
            and not self.posted_mismatches
            and not self.pending_mismatches
        )


async def verify_ledger(conn: AsyncConnection, tables: LedgerTables | None = None) -> LedgerReport:
    """Prove the ledger's invariants over every row, from the caller's snapshot.

    Checks that every posting sums to zero per currency, each currency's posted
    balances sum to zero across accounts, every stored ``posted`` equals the sum
    of the account's entries and every stored ``pending`` the total of its pending
    holds. Run it in a REPEATABLE READ transaction (``lastro accounts verify``
    does) so concurrent postings cannot look like a mismatch.
    """
    t = tables or ledger_tables()

    async def rows(template: str) -> list[Any]:
        return list((await conn.execute(_sql(t.schema, template))).all())

    counts = (
        await rows(
            "SELECT (SELECT count(*) FROM {s}.accounts) AS accounts,"
            " (SELECT count(*) FROM {s}.postings) AS postings,"
            " (SELECT count(*) FROM {s}.entries) AS entries"
        )
    )[0]
    unbalanced = await rows(
        "SELECT e.posting_id, e.currency,"
        " sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) AS total"
        " FROM {s}.entries e GROUP BY e.posting_id, e.currency"
        " HAVING sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) <> 0"
        " ORDER BY e.posting_id, e.currency"
    )
    totals = await rows("SELECT currency, sum(posted) AS total FROM {s}.accounts GROUP BY currency")
    posted = await rows(
        "SELECT a.id, a.posted AS stored, coalesce(x.total, 0) AS recomputed"
        " FROM {s}.accounts a LEFT JOIN (SELECT e.account_id,"
        " sum(CASE e.direction WHEN 'credit' THEN e.amount ELSE -e.amount END) AS total"
        " FROM {s}.entries e GROUP BY e.account_id) x ON x.account_id = a.id"
        " WHERE a.posted <> coalesce(x.total, 0) ORDER BY a.id"
    )
    pending = await rows(
        "SELECT a.id, a.pending AS stored, coalesce(x.total, 0) AS recomputed"
        " FROM {s}.accounts a LEFT JOIN (SELECT account_id, sum(amount) AS total"
        " FROM {s}.holds WHERE status = 'pending' GROUP BY account_id) x"
        " ON x.account_id = a.id WHERE a.pending <> coalesce(x.total, 0) ORDER BY a.id"
    )
    return LedgerReport(
        accounts=counts.accounts,
        postings=counts.postings,
        entries=counts.entries,
        unbalanced_postings=[(r.posting_id, r.currency, int(r.total)) for r in unbalanced],
        currency_totals={r.currency: int(r.total) for r in totals},
        posted_mismatches=[BalanceMismatch(r.id, r.stored, int(r.recomputed)) for r in posted],
        pending_mismatches=[BalanceMismatch(r.id, r.stored, int(r.recomputed)) for r in pending],
    )

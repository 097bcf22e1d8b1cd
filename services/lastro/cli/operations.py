"""Operator commands: `lastro accounts verify`, `lastro audit verify`, `lastro reconcile`,
`lastro keys …`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from lastro.core.config import Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from lastro.core.security.transit import TransitClient


def register(sub: Any) -> None:
    accounts = sub.add_parser("accounts", help="account service operations")
    accounts.add_argument("action", choices=["verify"], help="prove the ledger's invariants")
    accounts.add_argument("--schema", default="accounts")
    accounts.set_defaults(func=verify_ledger)

    audit = sub.add_parser("audit", help="verify the services' hash-chained audit logs")
    audit.add_argument("action", choices=["verify"])
    which = audit.add_mutually_exclusive_group(required=True)
    which.add_argument("--schema", help="one service's schema, e.g. accounts")
    which.add_argument(
        "--all", action="store_true", help="every registered service's schema (core/registry.py)"
    )
    audit.set_defaults(func=verify_audit)

    reconcile = sub.add_parser(
        "reconcile", help="transactions against the ledger and the acquirer, for a period"
    )
    reconcile.add_argument("--since", help="RFC 3339 (default: 24 hours ago)")
    reconcile.add_argument("--until", help="RFC 3339 (default: now)")
    reconcile.add_argument("--schema", help="the transaction service's schema")
    reconcile.set_defaults(func=reconcile_transactions)

    keys = sub.add_parser("keys", help="rotate keys (signing keys, customer data keys)")
    keys.add_argument("action", choices=["rotate-signing-key", "rotate-pii-key"])
    keys.add_argument(
        "--publish-ahead",
        type=int,
        default=360,
        help="rotate-signing-key: seconds the new key is published before it signs (default:"
        " identity replicas reload keys every 60 s, verifiers cache the JWKS for 300 s)",
    )
    keys.set_defaults(func=rotate_keys)


@asynccontextmanager
async def with_audit_key(
    settings: Settings, name: str, pool_size: int = 1
) -> AsyncIterator[tuple[AsyncEngine, TransitClient, bytes]]:
    """``core.db.engine_for`` plus a KMS client and the audit log's HMAC key, closed
    together."""
    from lastro.core.db import engine_for
    from lastro.core.security.transit import TransitClient

    transit = TransitClient.from_settings(settings)
    try:
        async with engine_for(settings, name, pool_size) as engine:
            yield engine, transit, await transit.local_hmac_key(settings.audit_key_name)
    finally:
        await transit.close()


def verify_audit(args: argparse.Namespace) -> int:
    """Verify one schema's audit chain, or with ``--all`` every registered service's;
    prints the first broken link of each chain. Exit 0 when every chain verified is
    intact, 1 when one is tampered, 2 when ``--schema`` names a schema without a log."""
    import asyncio

    from sqlalchemy.exc import ProgrammingError

    from lastro.core import registry
    from lastro.core.audit import verify_schema

    settings = load_settings()
    every = getattr(args, "all", False)
    schemas = [s for s in registry.schemas() if s != registry.PLATFORM_SCHEMA] if every else []

    async def run() -> int:
        worst = 0
        async with with_audit_key(settings, "lastro-audit") as (engine, _, key):
            for schema in schemas or [args.schema]:
                try:
                    result = await verify_schema(engine, schema, key)
                except ProgrammingError:
                    if every:
                        print(f"audit log of {schema}: none (service not deployed or migrated)")
                        continue
                    print(f"schema {schema!r} has no audit log", file=sys.stderr)
                    return 2
                if result.ok:
                    anchored = (
                        f" (seq {result.anchor + 1}..{result.checked} after the retention "
                        f"anchor at seq {result.anchor})"
                        if result.anchor
                        else ""
                    )
                    print(
                        f"audit log of {schema}: {result.checked - result.anchor} records"
                        f"{anchored}, chain intact"
                    )
                    continue
                print(
                    f"audit log of {schema}: TAMPERED at seq {result.first_bad_seq}: "
                    f"{result.reason}"
                )
                worst = 1
        return worst

    return asyncio.run(run())


def verify_ledger(args: argparse.Namespace) -> int:
    import asyncio

    from lastro.accounts.store import ledger_tables
    from lastro.accounts.store import verify_ledger as verify
    from lastro.core.db import engine_for

    settings = load_settings()

    async def run() -> int:
        async with engine_for(settings, "lastro-verify") as engine:
            snapshot = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with snapshot.connect() as conn:
                report = await verify(conn, ledger_tables(args.schema))
        print(
            f"ledger {args.schema}: {report.accounts} accounts, {report.postings} postings, "
            f"{report.entries} entries; currency totals {report.currency_totals or '{}'}"
        )
        if report.ok:
            print("every posting balances and every stored balance equals its entries")
            return 0
        for posting, currency, total in report.unbalanced_postings:
            print(f"UNBALANCED posting {posting} in {currency}: credits - debits = {total}")
        for mismatch in [*report.posted_mismatches, *report.pending_mismatches]:
            print(f"MISMATCH {mismatch}")
        return 1

    return asyncio.run(run())


def reconcile_transactions(args: argparse.Namespace) -> int:
    """Every mismatch between transactions, ledger postings and acquirer records."""
    import asyncio
    import dataclasses
    from datetime import UTC, datetime, timedelta

    from lastro.transactions import reconciliation

    settings = load_settings()
    if args.schema:
        config = dataclasses.replace(settings.transactions, schema=args.schema)
        settings = dataclasses.replace(settings, transactions=config)
    now = datetime.now(UTC)
    try:
        since = datetime.fromisoformat(args.since) if args.since else now - timedelta(days=1)
        until = datetime.fromisoformat(args.until) if args.until else now
    except ValueError as error:
        print(f"--since/--until: {error}", file=sys.stderr)
        return 2
    if since.tzinfo is None or until.tzinfo is None:
        print("--since/--until need a UTC offset", file=sys.stderr)
        return 2
    report = asyncio.run(reconciliation.run(settings, since, until))
    print("\n".join(reconciliation.render(report)))
    return 1 if report.mismatches else 0


def rotate_keys(args: argparse.Namespace) -> int:
    """Key rotation, as an operator runs it (docs/runbooks/identity-and-keys.md)."""
    import asyncio
    from datetime import timedelta

    from lastro.core.security.fields import PII_KEY, SubjectKeys

    settings = load_settings()

    async def run() -> int:
        from lastro.core.changes import Caller
        from lastro.core.events import EventSigner

        async with with_audit_key(settings, "lastro-keys", 2) as (engine, transit, audit_key):
            signer = await EventSigner.from_transit(transit, settings.events_key_name)
            if args.action == "rotate-signing-key":
                from lastro.identity import service, store
                from lastro.identity.keys import SigningKeys

                changes = service.recorder_for(signer, audit_key)
                keys = SigningKeys(store.bind_schema(engine, "identity"), transit, changes)
                kid = await keys.rotate(
                    publish_ahead=timedelta(seconds=args.publish_ahead), actor="operator:cli"
                )
                print(
                    f"new signing key {kid}; signs from now + {args.publish_ahead}s"
                    " (with a new RS256 key for ID tokens)"
                )
                return 0
            from lastro.accounts.service import recorder_for
            from lastro.accounts.store import ledger_tables

            await transit.rotate(PII_KEY)
            tables = ledger_tables("accounts")
            moved = await SubjectKeys(transit).rewrap_all(engine, tables.customers, "data_key")
            async with engine.begin() as conn:
                await recorder_for(tables, signer, audit_key).audit(
                    conn,
                    Caller("operator:cli"),
                    action="key.rotated",
                    target=PII_KEY,
                    details={"rewrapped": moved},
                )
            print(f"{PII_KEY} rotated; {moved} customer data keys rewrapped to the newest version")
            return 0

    return asyncio.run(run())

"""The `lastro` command: the local stack, services, audit verification, benchmarks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from lastro.core.config import ConfigError, Settings, load_settings
from lastro.devstack.processes import StartError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from lastro.core.security.transit import TransitClient


def _dev(args: argparse.Namespace) -> int:
    from lastro.devstack import stack

    if args.action == "bootstrap":
        from lastro.devstack.bootstrap import bootstrap

        bootstrap(browser=args.browser)
        if args.k8s:
            from lastro.devstack.kubetools import ensure_tools

            ensure_tools(load_settings())
        return 0
    settings = load_settings()
    if args.action == "up":
        stack.up(settings, kubernetes=args.k8s)
        print(stack.render_status(stack.status(settings)))
        return 0
    if args.action == "down":
        stack.down(settings)
        return 0
    if args.action == "restart":
        if not args.component:
            print("restart needs a component, e.g. `lastro dev restart accounts`", file=sys.stderr)
            return 2
        target = stack.component(settings, args.component)
        target.stop()
        target.start()
        print(f"{target.name} restarted at {target.address()}")
        return 0
    if args.action == "status":
        rows = stack.status(settings)
        print(stack.render_status(rows))
        return 0 if all(r.healthy for r in rows) else 1
    print(stack.logs(settings, args.component, args.lines))
    return 0


@asynccontextmanager
async def _engine(settings: Settings, name: str, pool_size: int = 1) -> AsyncIterator[AsyncEngine]:
    """A small pool for one operator command, disposed when the command ends."""
    from lastro.core.db import create_engine

    engine = create_engine(settings, pool_size=pool_size, max_overflow=0, name=name)
    try:
        yield engine
    finally:
        await engine.dispose()


@asynccontextmanager
async def _with_audit_key(
    settings: Settings, name: str, pool_size: int = 1
) -> AsyncIterator[tuple[AsyncEngine, TransitClient, bytes]]:
    """``_engine`` plus a KMS client and the audit log's HMAC key, closed together."""
    from lastro.core.security.transit import TransitClient

    transit = TransitClient.from_settings(settings)
    try:
        async with _engine(settings, name, pool_size) as engine:
            yield engine, transit, await transit.local_hmac_key(settings.audit_key_name)
    finally:
        await transit.close()


def _audit(args: argparse.Namespace) -> int:
    import asyncio

    from sqlalchemy.exc import ProgrammingError

    from lastro.core.audit import verify_schema

    settings = load_settings()

    async def run() -> int:
        async with _with_audit_key(settings, "lastro-audit") as (engine, _, key):
            try:
                result = await verify_schema(engine, args.schema, key)
            except ProgrammingError:
                print(f"schema {args.schema!r} has no audit log", file=sys.stderr)
                return 2
        if result.ok:
            print(f"audit log of {args.schema}: {result.checked} records, chain intact")
            return 0
        print(
            f"audit log of {args.schema}: TAMPERED at seq {result.first_bad_seq}: {result.reason}"
        )
        return 1

    return asyncio.run(run())


# Each service module exposes `create_app(settings) -> aiohttp.web.Application`.
SERVICES = {
    "identity": "lastro.identity.app",
    "accounts": "lastro.accounts.app",
}


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import importlib

    from lastro.core.http import serve
    from lastro.core.observability import configure_logging, setup_tracing
    from lastro.devstack.ca import DevCA

    if args.service == "operator":  # Kopf, not an HTTP app: operator/lastro_operator
        from lastro_operator.main import run

        settings = load_settings(data_plane=False)
        configure_logging(args.service, settings.log_level)
        run(settings)
        return 0
    settings = load_settings()
    module = importlib.import_module(SERVICES[args.service])
    if settings.tls_cert_file and settings.tls_key_file:
        cert, key = settings.tls_cert_file, settings.tls_key_file
    else:  # dev/test: a certificate from the dev CA
        issued = DevCA(settings.dev_dir / "ca").issue(args.service)
        cert, key = issued.cert, issued.key

    configure_logging(args.service, settings.log_level)
    exporter = None
    if settings.otlp_endpoint:  # an OpenTelemetry collector (the chart points at one)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    setup_tracing(f"lastro-{args.service}", exporter)

    async def run() -> None:
        app = await module.create_app(settings)
        await serve(app, settings, cert, key, settings.service_ports[args.service])

    asyncio.run(run())
    return 0


def _accounts(args: argparse.Namespace) -> int:
    import asyncio

    from lastro.accounts.store import ledger_tables, verify_ledger

    settings = load_settings()

    async def run() -> int:
        async with _engine(settings, "lastro-verify") as engine:
            snapshot = engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with snapshot.connect() as conn:
                report = await verify_ledger(conn, ledger_tables(args.schema))
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


def _keys(args: argparse.Namespace) -> int:
    """Key rotation, as an operator runs it (see docs/runbooks/key-rotation.md)."""
    import asyncio
    from datetime import timedelta

    from sqlalchemy import MetaData

    from lastro.core.security.fields import PII_KEY, SubjectKeys

    settings = load_settings()

    async def run() -> int:
        async with _with_audit_key(settings, "lastro-keys", 2) as (engine, transit, audit_key):
            if args.action == "rotate-signing-key":
                from lastro.identity import store
                from lastro.identity.keys import SigningKeys

                keys = SigningKeys(store.bind_schema(engine, "identity"), transit, audit_key)
                kid = await keys.rotate(
                    publish_ahead=timedelta(seconds=args.publish_ahead), actor="operator:cli"
                )
                print(f"new signing key {kid}; signs from now + {args.publish_ahead}s")
                return 0
            from lastro.accounts.customers import customers_table
            from lastro.core.audit import AuditRecord, append, audit_tables

            await transit.rotate(PII_KEY)
            metadata = MetaData(schema="accounts")
            table = customers_table(metadata)
            moved = await SubjectKeys(transit).rewrap_all(engine, table, "data_key")
            record = AuditRecord(
                "operator:cli", "key.rotated", PII_KEY, "success", None, {"rewrapped": moved}
            )
            async with engine.begin() as conn:
                await append(conn, audit_tables(metadata), record, audit_key)
            print(f"{PII_KEY} rotated; {moved} customer data keys rewrapped to the newest version")
            return 0

    return asyncio.run(run())


BENCHMARKS = {"ledger": "ledger_bench.py"}


def _bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / BENCHMARKS[args.name]
    if not script.exists():
        print(f"{script} not found: benchmarks run from a source checkout", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.options])  # noqa: S603


def _demo(args: argparse.Namespace) -> int:
    import asyncio

    from lastro.demo import DemoFailed, run_demo

    try:
        asyncio.run(run_demo(load_settings()))
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    checks = [_accounts(argparse.Namespace(schema="accounts"))]
    checks += [_audit(argparse.Namespace(schema=schema)) for schema in ("accounts", "identity")]
    return max(checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lastro", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="the local stack under .dev/")
    dev.add_argument("action", choices=["bootstrap", "up", "down", "status", "logs", "restart"])
    dev.add_argument("component", nargs="?", help="for logs: one component")
    dev.add_argument("-n", "--lines", type=int, default=40)
    dev.add_argument(
        "--browser", action="store_true", help="for bootstrap: also Chromium and its driver"
    )
    dev.add_argument(
        "--k8s",
        action="store_true",
        help="bootstrap: build Helm, the Kubernetes control plane and kwok, install etcd"
        " and promtool; up: also start them (fake nodes, no kubelet) under .dev/k8s",
    )
    dev.set_defaults(func=_dev)

    serve = sub.add_parser("serve", help="run one service over HTTPS")
    serve.add_argument("service", choices=sorted([*SERVICES, "operator"]))
    serve.set_defaults(func=_serve)

    accounts = sub.add_parser("accounts", help="account service operations")
    accounts.add_argument("action", choices=["verify"], help="prove the ledger's invariants")
    accounts.add_argument("--schema", default="accounts")
    accounts.set_defaults(func=_accounts)

    keys = sub.add_parser("keys", help="rotate keys (signing keys, customer data keys)")
    keys.add_argument("action", choices=["rotate-signing-key", "rotate-pii-key"])
    keys.add_argument(
        "--publish-ahead",
        type=int,
        default=360,
        help="rotate-signing-key: seconds the new key is published before it signs (default:"
        " identity replicas reload keys every 60 s, verifiers cache the JWKS for 300 s)",
    )
    keys.set_defaults(func=_keys)

    bench = sub.add_parser("bench", help="run a benchmark (see docs/benchmarks.md)")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("options", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(func=_bench)

    demo = sub.add_parser("demo", help="walk through the running platform as its users would")
    demo.set_defaults(func=_demo)

    audit = sub.add_parser("audit", help="verify a service's hash-chained audit log")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("--schema", required=True, help="the service schema, e.g. accounts")
    audit.set_defaults(func=_audit)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"lastro: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

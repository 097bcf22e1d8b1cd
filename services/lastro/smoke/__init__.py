"""`python -m lastro.smoke`: is a deployed Lastro alive, end to end? Exit 0 if so.

The same script checks the local stack (tests/e2e/test_smoke.py) and a cluster
(.github/workflows/e2e-kind.yml), through HTTPS only, with real OAuth2 tokens:

1. sign in: the identity service's bootstrap admin client (``--admin-credentials``,
   a ``client_id:secret`` file; default: the local stack's) registers a payments
   service client and a wallet app; a new user signs up and signs in (authorization
   code + PKCE, driven like a browser, as ``lastro demo`` does);
2. open two accounts: the user's EUR account (customer API) and a settlement account
   (the payments service's system account);
3. then each check in :data:`CHECKS`, in order:

   - ``ledger_transfer``: a ledger transfer from settlement to the user, sent twice
     with the same idempotency key (the accounts postings API is idempotent on
     ``external_id``, docs/interfaces.md: the key is sent as that), which must be
     replayed, not posted twice; the same key with another amount must be refused;
     the balances read back must show the transfer once.
   - ``transaction_transfer``: the user moves money to a second account of theirs
     through the transaction service (``POST /v1/transfers``), twice with one
     ``Idempotency-Key``: one transfer (the retry replayed), which the worker screens
     and posts; the balances show it once.
   - ``webhook_notification``: a webhook endpoint the user registers with the
     notification service receives the signed ``transaction.succeeded`` notification
     of a new transfer (Standard Webhooks signature checked with the endpoint's
     secret), once, and the deliveries API records it delivered.

The webhook receiver is a tiny HTTPS server inside the smoke process, because only a
receiver proves what a merchant gets (the body, the ``webhook-*`` headers, a signature
that verifies); the deliveries API alone shows what the service thinks it sent. The
notification service must reach it and trust its certificate: ``--webhook-host`` is
the address it is reached at (default 127.0.0.1, the local stack; in a cluster the
runner's address on the cluster's network, allowed by the notification service's
``webhook_allow_cidrs``) and ``--webhook-cert``/``--webhook-key`` its certificate
(default: issued by the local stack's dev CA, which the services trust).

A check is one ``async def check(world: World) -> str`` (what it proved) appended to
:data:`CHECKS`; a failed expectation raises :class:`SmokeFailed`, and the script exits
1 with the step and what was seen, e.g. ``smoke FAILED in ledger_transfer: POST
/internal/v1/postings: expected 200, got 503: {...}``.

``--base-url`` is where every route the smoke uses is served (a gateway); ``--url
accounts=https://…`` (or ``transactions=``, ``notifications=``) sends one service's
routes elsewhere (the local stack, or port-forwards: the chart's Ingress publishes no
``/internal`` route).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp

from lastro.demo import Api, DemoFailed
from lastro.smoke.money import transaction_transfer, webhook_notification
from lastro.smoke.steps import ledger_transfer, open_accounts, sign_in_users
from lastro.smoke.world import TIMEOUT_SECONDS, SmokeFailed, WebhookReceiver, World

SERVICES: Final = ("identity", "accounts", "transactions", "notifications")
__all__ = ["CHECKS", "SERVICES", "SmokeFailed", "World", "main", "parse_args", "run_smoke"]


Check = Callable[[World], Awaitable[str]]
# What the smoke proves once signed in with two accounts; a new check is one entry.
CHECKS: Final[tuple[Check, ...]] = (ledger_transfer, transaction_transfer, webhook_notification)


def _client_context(ca: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    return context


async def run_smoke(
    urls: dict[str, str],
    admin: tuple[str, str],
    ca: Path | None,
    say: Callable[[str], None] = print,
    checks: Sequence[Check] = CHECKS,
    receiver: WebhookReceiver | None = None,
) -> None:
    """Every step in order; raises SmokeFailed naming the step that failed."""
    connector = aiohttp.TCPConnector(ssl=_client_context(ca))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        world = World(
            http, {s: Api(http, u.rstrip("/")) for s, u in urls.items()}, secrets.token_hex(4)
        )
        if receiver is not None:
            await receiver.start()
            world.receiver = receiver
        try:
            await _steps(world, admin, say, checks)
        finally:
            if receiver is not None:
                await receiver.stop()


async def _steps(
    world: World, admin: tuple[str, str], say: Callable[[str], None], checks: Sequence[Check]
) -> None:
    async def signed_in(w: World) -> str:
        return await sign_in_users(w, *admin)

    steps: list[tuple[str, Check]] = [("sign_in", signed_in), ("open_accounts", open_accounts)]
    steps += [(check.__name__, check) for check in checks]
    for name, step in steps:
        try:
            say(f"smoke: {name}: {await step(world)}")
        except (SmokeFailed, DemoFailed) as exc:
            raise SmokeFailed(f"{name}: {exc}") from exc
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise SmokeFailed(f"{name}: {type(exc).__name__}: {exc}") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lastro.smoke",
        description="Sign in, open two accounts, move money idempotently (ledger and"
        " transaction service), receive the transfer's webhook; exit 0 if it works.",
    )
    parser.add_argument("--base-url", required=True, help="where every route is served")
    parser.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="SERVICE=URL",
        help=f"one service's routes elsewhere ({', '.join(SERVICES)}); repeatable",
    )
    parser.add_argument("--ca", type=Path, help="CA bundle the servers' certificates chain to")
    parser.add_argument(
        "--admin-credentials",
        type=Path,
        help="file holding the identity admin client as client_id:secret"
        " (default: the local stack's .dev/secrets/identity_admin_secret)",
    )
    parser.add_argument(
        "--webhook-host",
        default="127.0.0.1",
        help="address the notification service reaches this process's webhook receiver at",
    )
    parser.add_argument("--webhook-cert", type=Path, help="the receiver's certificate (PEM)")
    parser.add_argument(
        "--webhook-key",
        type=Path,
        help="its key (default for both: issued by the local stack's dev CA)",
    )
    return parser.parse_args(argv)


def service_urls(base_url: str, overrides: Sequence[str]) -> dict[str, str]:
    urls = dict.fromkeys(SERVICES, base_url)
    for item in overrides:
        service, sep, url = item.partition("=")
        if not sep or service not in SERVICES or not url.startswith("https://"):
            raise SmokeFailed(f"--url {item!r}: expected one of {', '.join(SERVICES)}=https://…")
        urls[service] = url
    return urls


def admin_credentials(path: Path | None) -> tuple[str, str]:
    if path is None:
        from lastro.core.config import load_settings
        from lastro.identity.app import admin_secret_file

        path = admin_secret_file(load_settings(data_plane=False))
    try:
        client_id, sep, secret = path.read_text().strip().partition(":")
    except OSError as exc:
        raise SmokeFailed(f"admin credentials: {exc}") from exc
    if not (sep and client_id and secret):
        raise SmokeFailed(f"admin credentials: {path} does not hold client_id:secret")
    return client_id, secret


def webhook_receiver(host: str, cert: Path | None, key: Path | None) -> WebhookReceiver:
    """The receiver, with the given certificate or one the local stack's dev CA issues."""
    if cert is None or key is None:
        if cert is not None or key is not None:
            raise SmokeFailed("--webhook-cert and --webhook-key go together")
        from lastro.core.config import load_settings
        from lastro.devstack.ca import DevCA

        issued = DevCA(load_settings(data_plane=False).dev_dir / "ca").issue(
            "smoke-webhook-receiver", (host, "localhost")
        )
        cert, key = issued.cert, issued.key
    return WebhookReceiver(host, cert, key)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        urls = service_urls(args.base_url, args.url)
        admin = admin_credentials(args.admin_credentials)
        receiver = webhook_receiver(args.webhook_host, args.webhook_cert, args.webhook_key)
        asyncio.run(run_smoke(urls, admin, args.ca, receiver=receiver))
    except SmokeFailed as exc:
        print(f"smoke FAILED in {exc}", file=sys.stderr)
        return 1
    print("smoke: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

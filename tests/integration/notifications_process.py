"""The notification service as its own process, for the crash test: the real app
(``create_app``) on a given schema, consumer group and port, trusting the test's
token issuer (its JWKS in a file). Delivery knobs come from the environment
(``LASTRO_NOTIFICATIONS_*``), exactly as in production. Killed with SIGKILL by the
test; started again to show what a restarted replica does."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from lastro.core.config import load_settings
from lastro.core.http import serve
from lastro.core.security.tokens import StaticKeySet, TokenVerifier
from lastro.devstack.ca import DevCA
from lastro.notifications.app import Wiring, create_app


async def no_contacts() -> dict[str, str]:
    raise AssertionError("the crash test involves no customer")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schema", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jwks", type=Path, required=True)
    args = parser.parse_args()
    settings = load_settings()
    verifier = TokenVerifier.from_key_source(
        StaticKeySet(json.loads(args.jwks.read_text())),
        issuer="https://identity.test",
        audience="notifications",
    )
    app = await create_app(
        settings,
        Wiring(
            schema=args.schema,
            verifier=verifier,
            contacts_auth=no_contacts,
            consumer_group=args.group,
        ),
    )
    cert = DevCA(settings.dev_dir / "ca").issue("notifications-tests")
    await serve(app, settings, cert.cert, cert.key, args.port)


if __name__ == "__main__":
    asyncio.run(main())

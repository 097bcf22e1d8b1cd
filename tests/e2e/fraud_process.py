"""The real fraud service as a process of its own, for the transaction service's tests.

    python tests/e2e/fraud_process.py --port 17004 --schema fraud_e2e_1 \
        --redis-prefix lastro:fraud:e2e1 --transactions-url https://127.0.0.1:17003

runs ``lastro.fraud.app.create_app`` (the screening API, rules admin, alerts, the
review-outcome reporter) over HTTPS with a dev-CA certificate, on a throwaway schema
and Redis prefix (empty profiles, so only the rules a test adds and the default
rules that need no history decide), reporting review outcomes to the transaction
API under test. The rule set is the stack's (``lastro.fraud.rules``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "services"))

from lastro.core.config import load_settings
from lastro.core.http import serve
from lastro.core.observability import configure_logging
from lastro.devstack.ca import DevCA
from lastro.fraud.app import Wiring, create_app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--redis-prefix", required=True)
    parser.add_argument("--transactions-url", required=True)
    args = parser.parse_args()
    settings = load_settings()
    configure_logging("fraud", settings.log_level)
    cert = DevCA(settings.dev_dir / "ca").issue("fraud")
    wiring = Wiring(
        schema=args.schema,
        redis_prefix=args.redis_prefix,
        transactions_url=args.transactions_url,
        seed_from_settings=False,
    )

    async def run() -> None:
        app = await create_app(settings, wiring)
        await serve(app, settings, cert.cert, cert.key, args.port)

    asyncio.run(run())


if __name__ == "__main__":
    main()
